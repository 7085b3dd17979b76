"""What every settings section shares: the strict base model, field types and the small
validators (paths, host:port, model names). Nothing here knows a particular section."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo

Port = Annotated[int, Field(ge=1, le=65535)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]


class ConfigProblems(ValueError):
    """One or more problems found by a validator, each at a key path relative to the field.

    Pydantic reports a validator's ValueError at the validated field (or model); this class
    lets a validator name the exact nested key instead (``gpus.1.id`` rather than ``gpus``).
    The loader expands it into one line per problem; its ``str()`` is readable on its own.
    """

    def __init__(self, problems: list[tuple[Any, ...]]) -> None:
        """``problems``: ``(loc, message)`` or ``(loc, message, offending_value)`` tuples."""
        self.errors: list[dict[str, Any]] = []
        for loc, msg, *value in problems:
            error = {"type": "value_error", "loc": tuple(loc), "msg": msg}
            if value:
                error["input"] = value[0]
            self.errors.append(error)
        super().__init__(
            "; ".join(
                (".".join(str(part) for part in err["loc"]) + ": " if err["loc"] else "")
                + err["msg"]
                for err in self.errors
            )
        )

    @classmethod
    def from_errors(cls, errors: list[dict[str, Any]]) -> ConfigProblems:
        """Wrap pydantic-style error dicts (``loc``, ``msg``, ``type``, ``input``)."""
        problems = cls([(tuple(err["loc"]), err["msg"], err.get("input")) for err in errors])
        problems.errors = list(errors)
        return problems


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )


def check_model_name(name: str) -> str | None:
    """Return why ``name`` is not a valid model name, or None when it is."""
    # Imported here: modelium.discovery pulls in watchdog, which settings do not need.
    from modelium.discovery import sanitize_model_name

    try:
        sanitized = sanitize_model_name(name)
    except ValueError:
        return "not a valid model name (use lowercase letters, digits, '.', '_' and '-')"
    if sanitized != name:
        return (
            "not a valid model name (use lowercase letters, digits, '.', '_' and '-'; "
            f"did you mean {sanitized!r}?)"
        )
    return None


_HOST_PORT = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d+)$")


def check_host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError("should be 'host:port' with a port in 1..65535")
    return value


def resolve_path(path: Path | None, info: ValidationInfo) -> Path | None:
    """Expand ``~`` and make a relative path absolute against the context's base_dir."""
    if path is None:
        return None
    if str(path).startswith("~"):
        path = path.expanduser()
    context = info.context if isinstance(info.context, dict) else {}
    base_dir = context.get("base_dir")
    if base_dir is not None and not path.is_absolute():
        path = Path(os.path.abspath(base_dir)) / path
    return Path(os.path.normpath(path)) if path.is_absolute() else path


def reject_empty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("path must not be empty")
    return value
