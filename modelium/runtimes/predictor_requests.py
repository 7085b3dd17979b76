"""What a request to :class:`~modelium.runtimes.transformers_predictor.TransformersPredictor`
may carry, checked before any model runs: per-task parameters with bounds, inputs (strings,
or chat conversations). Every client mistake is a ``BadRequestError`` (a 422 at the gateway),
the same on every runtime. Pure Python, no torch: cheap to import and to test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from modelium.runtimes.errors import BadRequestError

MAX_NEW_TOKENS_CAP = 4096
TOP_K_CAP = 1000

Validator = Callable[[str, Any], Any]


def _int_param(lo: int, hi: int) -> Validator:
    def check(name: str, value: Any) -> int:
        # bool is an int subclass; `true` for a token count is a client bug, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"parameter {name!r} must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise BadRequestError(f"parameter {name!r} must be between {lo} and {hi}, got {value}")
        return value

    return check


def _float_param(lo: float, hi: float, *, lo_inclusive: bool) -> Validator:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequestError(f"parameter {name!r} must be a number, got {type(value).__name__}")
        value = float(value)
        too_low = value < lo if lo_inclusive else value <= lo
        if math.isnan(value) or too_low or value > hi:
            bracket = "[" if lo_inclusive else "("
            raise BadRequestError(f"parameter {name!r} must be in {bracket}{lo}, {hi}], got {value}")
        return value

    return check


def _bool_param(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"parameter {name!r} must be a boolean, got {type(value).__name__}")
    return value


def _choice_param(*choices: str) -> Validator:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise BadRequestError(f"parameter {name!r} must be one of {list(choices)}, got {value!r}")
        return value

    return check


_GENERATION_PARAMS: dict[str, Validator] = {
    "max_new_tokens": _int_param(1, MAX_NEW_TOKENS_CAP),
    "temperature": _float_param(0.0, 100.0, lo_inclusive=False),
    "top_p": _float_param(0.0, 1.0, lo_inclusive=False),
    "do_sample": _bool_param,
    "count_prompt_tokens": _bool_param,
}

# Per task: accepted parameter names and how to validate each.  Anything else is a 422.
_PARAMETER_SPECS: dict[str, dict[str, Validator]] = {
    "text-generation": {**_GENERATION_PARAMS, "return_full_text": _bool_param, "chat": _bool_param},
    "text2text-generation": dict(_GENERATION_PARAMS),
    "fill-mask": {"top_k": _int_param(1, TOP_K_CAP)},
    "text-classification": {"top_k": _int_param(1, TOP_K_CAP)},
    "token-classification": {"aggregation_strategy": _choice_param("none", "simple", "first", "average", "max")},
    "feature-extraction": {"pooling": _choice_param("mean", "cls", "none"), "count_prompt_tokens": _bool_param},
}


def validate_parameters(task: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadRequestError(f"parameters must be an object, got {type(parameters).__name__}")
    spec = _PARAMETER_SPECS[task]
    unknown = sorted(set(parameters) - set(spec))
    if unknown:
        raise BadRequestError(f"unknown parameter(s) for {task}: {unknown}; accepted: {sorted(spec)}")
    return {name: spec[name](name, value) for name, value in parameters.items()}


def validate_inputs(inputs: Any) -> tuple[list[str], bool]:
    """Return (texts, was_single) so results can be unwrapped to match the input shape."""
    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs):
        return list(inputs), False
    raise BadRequestError("inputs must be a string or a non-empty list of strings")


CHAT_ROLES = ("system", "user", "assistant")
_CHAT_SHAPE_HINT = 'with chat, inputs must be a list of messages like [{"role": "user", "content": "..."}] (or a list of such lists)'


def validate_conversations(inputs: Any) -> tuple[list[list[dict[str, str]]], bool]:
    """Chat inputs -> (conversations, was_single); every message normalised to role + content."""
    if isinstance(inputs, list) and inputs and all(isinstance(m, dict) for m in inputs):
        return [_validate_messages(inputs, "messages")], True
    if isinstance(inputs, list) and inputs and all(isinstance(c, list) for c in inputs):
        return [_validate_messages(c, f"inputs[{i}]") for i, c in enumerate(inputs)], False
    raise BadRequestError(_CHAT_SHAPE_HINT)


def _validate_messages(messages: list[Any], where: str) -> list[dict[str, str]]:
    if not messages:
        raise BadRequestError(f"{where} is empty; a conversation needs at least one message")
    clean = []
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError(f"{at} must be an object with 'role' and 'content', got {type(message).__name__}")
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise BadRequestError(f"{at}: unsupported field(s) {extra}; messages have 'role' and 'content'")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise BadRequestError(f"{at}.role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if "content" not in message:
            raise BadRequestError(f"{at} has no 'content'")
        clean.append({"role": role, "content": _message_text(message["content"], f"{at}.content")})
    return clean


def _message_text(content: Any, at: str) -> str:
    """A string, or OpenAI content parts of type "text" (joined); anything else is a 422."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise BadRequestError(f"{at}[{j}] must be a text part like {{\"type\": \"text\", \"text\": \"...\"}}; "
                                      "only text content is supported")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequestError(f"{at} must be a string or a non-empty list of text parts, got {type(content).__name__}")
