"""``POST /predict`` for a vLLM model: the transformers predictor's parameters and answer
shape, mapped onto vLLM's ``/v1/completions`` and ``/v1/chat/completions``, so a client
cannot tell which runtime serves an LLM. Pure (no I/O): request validation, the sampling
body, and reading vLLM's answers and error bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from modelium.runtimes.base import RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.predictor_requests import validate_inputs

DEFAULT_MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS_CAP = 32768


@dataclass(frozen=True)
class PlannedCalls:
    """The vLLM requests one ``/predict`` becomes, and how their answers map back."""

    requests: list[tuple[str, dict[str, Any]]]  # (path, JSON body)
    chat: bool
    single: bool
    texts: list[str]
    full_text: bool

    def outputs(self, answers: list[dict[str, Any]]) -> Any:
        if self.chat:
            outputs = [result(body["choices"][0], body, chat=True) for body in answers]
        else:
            (body,) = answers
            choices = sorted(body.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(self.texts):
                raise RuntimeUnavailableError(f"vLLM answered {len(choices)} choices for {len(self.texts)} prompts")
            outputs = [result(choice, body if self.single else None) for choice in choices]
            if self.full_text:
                for text, output in zip(self.texts, outputs, strict=True):
                    output["generated_text"] = text + output["generated_text"]
        return outputs[0] if self.single else outputs


def plan_calls(model: str, inputs: Any, parameters: Any) -> PlannedCalls:
    """Validate a ``/predict`` request for the vLLM server serving ``model`` (its
    ``--served-model-name``): one completion for all prompts, or one chat completion per
    conversation (``chat: true``)."""
    params = validate_parameters(parameters)
    chat = params.pop("chat", False)
    if chat:
        conversations, single = validate_conversations(inputs)
        if params.get("return_full_text"):
            raise BadRequestError("parameter 'return_full_text' cannot be used with chat")
        requests = [("/v1/chat/completions", {"model": model, "messages": messages, **sampling(params)})
                    for messages in conversations]
        return PlannedCalls(requests, chat=True, single=single, texts=[], full_text=False)
    texts, single = validate_inputs(inputs)
    body = {"model": model, "prompt": texts[0] if single else texts, "return_token_ids": True, **sampling(params)}
    return PlannedCalls([("/v1/completions", body)], chat=False, single=single, texts=texts,
                        full_text=bool(params.get("return_full_text")))


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"parameter {name!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise BadRequestError(f"parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


def _check_float(name: str, value: Any, lo: float, hi: float, *, lo_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequestError(f"parameter {name!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or (value < lo if lo_inclusive else value <= lo) or value > hi:
        raise BadRequestError(f"parameter {name!r} must be in {'[' if lo_inclusive else '('}{lo}, {hi}], got {value}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"parameter {name!r} must be a boolean, got {type(value).__name__}")
    return value


_PARAMETERS = {
    "max_new_tokens": lambda n, v: _check_int(n, v, 1, MAX_NEW_TOKENS_CAP),
    "temperature": lambda n, v: _check_float(n, v, 0.0, 100.0, lo_inclusive=True),
    "top_p": lambda n, v: _check_float(n, v, 0.0, 1.0, lo_inclusive=False),
    "do_sample": _check_bool,
    "return_full_text": _check_bool,
    "chat": _check_bool,
}


def validate_parameters(parameters: Any) -> dict[str, Any]:
    """Same names as the transformers predictor's text-generation parameters."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadRequestError(f"parameters must be an object, got {type(parameters).__name__}")
    unknown = sorted(set(parameters) - set(_PARAMETERS))
    if unknown:
        raise BadRequestError(f"unknown parameter(s) for text-generation: {unknown}; accepted: {sorted(_PARAMETERS)}")
    return {key: _PARAMETERS[key](key, value) for key, value in parameters.items()}


def sampling(params: Mapping[str, Any]) -> dict[str, Any]:
    """Greedy unless sampling is asked for, like the transformers predictor: passing
    temperature/top_p implies sampling, ``do_sample: false`` forces greedy."""
    body: dict[str, Any] = {"max_tokens": params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)}
    wants_sampling = "temperature" in params or "top_p" in params
    if params.get("do_sample", wants_sampling):
        body["temperature"] = params.get("temperature", 1.0)
        if "top_p" in params:
            body["top_p"] = params["top_p"]
    else:
        body["temperature"] = 0.0
    return body


def validate_conversations(inputs: Any) -> tuple[list[list[dict[str, str]]], bool]:
    """chat inputs: one conversation (a list of {role, content}) or a list of them."""
    def is_message(m: Any) -> bool:
        return isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)

    if isinstance(inputs, list) and inputs and all(is_message(m) for m in inputs):
        return [[dict(m) for m in inputs]], True
    if (isinstance(inputs, list) and inputs and all(isinstance(c, list) and c for c in inputs)
            and all(is_message(m) for c in inputs for m in c)):
        return [[dict(m) for m in c] for c in inputs], False
    raise BadRequestError("with chat, inputs must be a list of {role, content} messages or a list of such lists")


def result(choice: Mapping[str, Any], body: Mapping[str, Any] | None, *, chat: bool = False) -> dict[str, Any]:
    """One vLLM choice in the transformers predictor's shape. Token counts come from
    ``token_ids`` (asked for with ``return_token_ids``) or, for one prompt, the usage."""
    if chat:
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    token_ids = choice.get("token_ids")
    if isinstance(token_ids, list):
        count = len(token_ids)
    elif body is not None:
        count = int((body.get("usage") or {}).get("completion_tokens") or 0)
    else:
        count = 0
    return {
        "generated_text": text,
        "num_generated_tokens": count,
        "finish_reason": "length" if choice.get("finish_reason") == "length" else "stop",
    }


def error_message(response: httpx.Response) -> str:
    """vLLM's message from ``{"error": {"message"}}`` or the older ``{"message"}``."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return str(data["detail"])
    return response.text[:500]
