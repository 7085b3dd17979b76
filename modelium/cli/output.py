"""Where the CLI writes: a rich console for people, plain JSON for machines.

When stdout is not a terminal rich drops colour and the spinner by itself; we also widen
the page (``COLUMNS`` or 200) so a piped table keeps one row per line for grep and awk.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console, RenderableType

PIPE_WIDTH = 200


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    is_tty = stream.isatty()
    width = None if is_tty else int(os.environ.get("COLUMNS") or PIPE_WIDTH)
    return Console(file=stream, width=width, highlight=False, soft_wrap=False,
                   force_terminal=None if is_tty else False)


def show(renderable: RenderableType) -> None:
    console().print(renderable)


def render_text(renderable: RenderableType, width: int = 160) -> str:
    """The renderable as plain text (no colour): for tests and for docs."""
    out = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None,  # noqa: SIM115
                  force_terminal=False, highlight=False)
    out.print(renderable)
    out.file.close()
    return out.export_text()


def print_json(value: Any, *, lines: bool = False) -> None:
    """Machine output: indented JSON, or one compact document per line (``lines``)."""
    sys.stdout.write((json.dumps(value, separators=(",", ":")) if lines else json.dumps(value, indent=2)) + "\n")
    sys.stdout.flush()
