"""Make Modelium's loggers reach the root logger at INFO for one test, whatever earlier
tests did to them (a dictConfig with ``disable_existing_loggers`` switches them off; the
simulator in bench/ quiets ``modelium``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def modelium_logs_at_info(handler: logging.Handler) -> Iterator[logging.Handler]:
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    disabled = [logger for name, logger in logging.root.manager.loggerDict.items()
                if name.startswith("modelium") and isinstance(logger, logging.Logger) and logger.disabled]
    for logger in disabled:
        logger.disabled = False
    ours = logging.getLogger("modelium")
    our_level = ours.level
    ours.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        ours.setLevel(our_level)
        for logger in disabled:
            logger.disabled = True
        root.removeHandler(handler)
        root.setLevel(old_level)
