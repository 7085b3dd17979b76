"""Build :class:`ModeliumSettings` from ``modelium.yaml`` and ``MODELIUM_*`` variables.

Order of precedence: built-in defaults < the config file < environment variables.

Environment variables: every ``MODELIUM_*`` variable except ``MODELIUM_CONFIG`` names a key.
Strip the prefix, lowercase, and split nesting on ``__``: ``MODELIUM_GATEWAY__PORT=8001``
sets ``gateway.port``, ``MODELIUM_MODELS__GPT2__PINNED=true`` sets ``models.gpt2.pinned``
(model names are lowercase by definition, so lowercasing them loses nothing). Values are
read as YAML (``8001`` is an int, ``true`` a bool, ``[a, b]`` a list, ``null`` None); a
value that is not valid YAML is taken as a plain string, and an empty value is ``""``.

Every problem is reported at once in one :class:`ConfigError`, one line per problem.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .settings import ConfigProblems, GpuSpec, ModeliumSettings, ModelOverride

ENV_PREFIX = "MODELIUM_"
CONFIG_ENV_VAR = "MODELIUM_CONFIG"
DEFAULT_CONFIG_NAME = "modelium.yaml"

_MAX_SHOWN_INPUT = 80


class ConfigError(Exception):
    """The configuration cannot be used. ``str()`` is a human-readable report.

    The first line names the source (``invalid config /x/modelium.yaml:``), then one line per
    problem, each starting with the dotted key path (prefixed by the variable's name when an
    environment variable supplied it). ``problems`` holds those lines without indentation.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)


def default_settings_yaml() -> str:
    """The text of the default, commented ``modelium.yaml`` (what ``modelium init`` writes)."""
    return resources.files(__package__).joinpath("default.yaml").read_text(encoding="utf-8")


def load_settings(
    path: Path | None = None, *, env: Mapping[str, str] | None = None
) -> ModeliumSettings:
    """Load settings from ``path`` (or the default place) plus environment overrides.

    With ``path=None``: ``$MODELIUM_CONFIG`` if set, else ``./modelium.yaml`` if it exists,
    else built-in defaults (relative paths then resolve against the working directory).
    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError`.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None:
        from_env = environ.get(CONFIG_ENV_VAR, "")
        if from_env:
            path = Path(from_env)
        elif Path(DEFAULT_CONFIG_NAME).is_file():
            path = Path(DEFAULT_CONFIG_NAME)
        else:
            return settings_from_dict({}, base_dir=Path.cwd(), env=environ, source="<defaults>")
    path = Path(os.path.abspath(Path(path).expanduser()))
    data = _read_yaml(path)
    return settings_from_dict(data, base_dir=path.parent, env=environ, source=str(path))


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    source: str = "<dict>",
) -> ModeliumSettings:
    """Validate ``data`` (the parsed config file) with environment overrides applied.

    Relative paths are resolved against ``base_dir``. ``env`` defaults to ``os.environ``;
    pass ``{}`` to ignore the environment. ``source`` names the data in error messages.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"invalid config {source}: the top level must be a mapping of keys, "
            f"got {_type_name(data)}"
        )
    environ: Mapping[str, str] = os.environ if env is None else env
    merged = _plain(data)
    env_paths, problems = _apply_env(merged, environ)
    try:
        settings = ModeliumSettings.model_validate(merged, context={"base_dir": Path(base_dir)})
    except ValidationError as exc:
        problems += [_format_error(err, env_paths) for err in _flatten(exc.errors())]
    if problems:
        raise _config_error(source, problems)
    return settings


# --- reading the file -----------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; construct_mapping reports it properly
            duplicate = False
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first defined on line "
                f"{seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Mapping[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}{_yaml_position(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config {path}: the top level must be a mapping of keys, "
            f"got {_type_name(data)}"
        )
    return data


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: {detail}"


# --- environment overrides ------------------------------------------------------------


def _apply_env(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[tuple[str, ...], str], list[str]]:
    """Write ``MODELIUM_*`` overrides into ``data``; return {key path: variable} and problems."""
    overrides: list[tuple[tuple[str, ...], str, str]] = []
    problems: list[str] = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV_VAR:
            continue
        parts = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(parts):
            problems.append(f"{name}: malformed name (use MODELIUM_SECTION__KEY, e.g. "
                            "MODELIUM_GATEWAY__PORT)")
            continue
        overrides.append((parts, name, raw))
    # Shorter paths first, so MODELIUM_GATEWAY__PORT wins over a MODELIUM_GATEWAY mapping.
    overrides.sort(key=lambda item: (len(item[0]), item[1]))
    paths: dict[tuple[str, ...], str] = {}
    for parts, name, raw in overrides:
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                problems.append(
                    f"{name} ({'.'.join(parts)}): cannot set a key inside {where}, "
                    f"which is {_shown(child)} rather than a mapping"
                )
                break
            node = child
        else:
            node[parts[-1]] = _parse_env_value(raw)
            paths[parts] = name
    return paths, problems


def _parse_env_value(raw: str) -> Any:
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


# --- error formatting -----------------------------------------------------------------


def _flatten(errors: list[Any], prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Expand :class:`ConfigProblems` raised by validators into one error per problem."""
    flat: list[dict[str, Any]] = []
    for err in errors:
        loc = prefix + tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigProblems):
            flat += _flatten(cause.errors, loc)
        else:
            flat.append({**err, "loc": loc})
    return flat


def _format_error(err: dict[str, Any], env_paths: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(part) for part in loc) or "(top level)"
    kind = err.get("type")
    if kind == "extra_forbidden":
        message = "unknown key" + _suggestion(loc)
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if kind in ("value_error", "assertion_error") and cause is not None:
            message = str(cause)
        if "input" in err and not isinstance(err["input"], (Mapping, BaseModel)) and not _secret(loc):
            message += f" (got {_shown(err['input'])})"
    variable = _env_variable(loc, env_paths)
    return f"{variable} ({path}): {message}" if variable else f"{path}: {message}"


def _env_variable(loc: tuple[Any, ...], env_paths: Mapping[tuple[str, ...], str]) -> str | None:
    """The variable that supplied the value at ``loc`` (or a value under it), if any."""
    for size in range(len(loc), 0, -1):
        if loc[:size] in env_paths:
            return env_paths[loc[:size]]
    if loc:
        under = sorted(name for parts, name in env_paths.items() if parts[: len(loc)] == loc)
        if under:
            return ", ".join(under)
    return None


def _suggestion(loc: tuple[Any, ...]) -> str:
    import difflib

    known = _known_keys(loc[:-1])
    matches = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = None
    if not parent:
        model = ModeliumSettings
    elif len(parent) == 1:
        annotation = ModeliumSettings.model_fields.get(str(parent[0]))
        kind = annotation.annotation if annotation is not None else None
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            model = kind
    elif len(parent) == 2 and parent[0] == "gpus":
        model = GpuSpec
    elif len(parent) == 2 and parent[0] == "models":
        model = ModelOverride
    return list(model.model_fields) if model is not None else []


def _config_error(source: str, lines: list[str]) -> ConfigError:
    return ConfigError(
        f"invalid config {source}:\n" + "\n".join(f"  {line}" for line in lines), lines
    )


#: Keys whose values are never echoed in an error (they may be credentials).
_SECRET_KEYS = frozenset({"api_keys", "extra_args", "prometheus_url"})


def _secret(loc: tuple[Any, ...]) -> bool:
    return any(str(part) in _SECRET_KEYS for part in loc)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_INPUT else text[: _MAX_SHOWN_INPUT - 3] + "..."


def _type_name(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a bool"}
    return names.get(type(value), type(value).__name__)


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, mutable copy with every mapping turned into a plain dict."""
    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return copy.copy(value)

    return convert(data)
