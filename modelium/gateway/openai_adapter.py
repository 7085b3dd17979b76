"""The OpenAI routes for LLMs without an OpenAI server of their own (Ray Serve,
transformers): the request is adapted onto ``orchestrator.infer`` (chat via the
predictor's ``chat`` mode and the model's chat template).

``"stream": true`` is answered as Server-Sent Events too, but only once the whole text
exists: one content chunk, one finish chunk, ``data: [DONE]``. True token streaming is
vLLM-only for now. Fields the adapter cannot honour (``n`` > 1, ``logprobs``, ``stop``,
penalties, tools, vLLM extras...) are a 422 naming them; harmless ones (``n: 1``,
``stop: null``, ``user``...) are ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modelium.gateway.limits import unless_client_leaves
from modelium.orchestrator import Orchestrator, Serving
from modelium.orchestrator.records import ModelRecord
from modelium.runtimes.errors import BadRequestError

COMPLETIONS = "completions"
CHAT = "chat/completions"

#: OpenAI's default for /v1/completions.
DEFAULT_MAX_TOKENS = 16
#: Chat default for Ray-served models (OpenAI and vLLM go to the end of the context,
#: which is far too slow for transformers on a CPU).
DEFAULT_CHAT_MAX_TOKENS = 256
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: ``record(model_record, ttft_seconds, tokens, seconds, status)``: the handler's metrics.
Recorder = Callable[[ModelRecord, "float | None", "int | None", float, str], None]


def generated_token_count(outputs: Any) -> int | None:
    """Total ``num_generated_tokens`` of a predictor-shaped output (one result or a list),
    or None when the outputs are not generation results."""
    results = outputs if isinstance(outputs, list) else [outputs]
    counts = [r.get("num_generated_tokens") for r in results if isinstance(r, dict)]
    if not results or len(counts) != len(results):
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        return None
    return sum(counts)


async def adapt(orchestrator: Orchestrator, record_success: Recorder, http_request: Request, kind: str,
                body: dict[str, Any], serving: Serving, task: str | None, started: float,
                stream: bool) -> Response:
    """Answer one OpenAI request from ``orchestrator.infer`` (the caller releases ``serving``)."""
    record = serving.record
    request = adapter_request(kind, body, task or "text-generation")
    outputs = await unless_client_leaves(
        http_request, orchestrator.infer(serving, request.inputs, request.parameters))
    results = outputs if isinstance(outputs, list) and kind == COMPLETIONS and request.batch else [outputs]
    if not all(isinstance(r, dict) and isinstance(r.get("generated_text"), str) for r in results):
        raise RuntimeError(f"the runtime answered with no generated text: {str(outputs)[:200]}")
    seconds = time.perf_counter() - started
    tokens = generated_token_count(results) or 0
    record_success(record, seconds, tokens, seconds, "ok")
    usage: dict[str, int] = {"completion_tokens": tokens}
    prompt_counts = [r.get("num_prompt_tokens") for r in results]
    if all(isinstance(c, int) for c in prompt_counts):
        usage["prompt_tokens"] = sum(prompt_counts)  # type: ignore[arg-type]
        usage["total_tokens"] = usage["prompt_tokens"] + tokens
    texts = [
        (prompt + r["generated_text"]) if request.echo else r["generated_text"]
        for prompt, r in zip(request.prompts, results, strict=False)
    ] if kind == COMPLETIONS else [results[0]["generated_text"]]
    finishes = [r.get("finish_reason") or "stop" for r in results]
    created = int(time.time())
    if kind == COMPLETIONS:
        ident, obj = f"cmpl-{uuid.uuid4().hex}", "text_completion"
    else:
        ident, obj = f"chatcmpl-{uuid.uuid4().hex}", "chat.completion"
    head = {"id": ident, "object": obj, "created": created, "model": record.name}
    if stream:
        events = stream_events(kind, head, texts, finishes, usage if request.include_usage else None)
        return StreamingResponse(iter(events), media_type="text/event-stream", headers=SSE_HEADERS)
    if kind == COMPLETIONS:
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                   for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
    else:
        choices = [{"index": 0, "message": {"role": "assistant", "content": texts[0]},
                    "logprobs": None, "finish_reason": finishes[0]}]
    return JSONResponse({**head, "choices": choices, "usage": usage})


class AdapterRequest:
    def __init__(self, inputs: Any, parameters: dict[str, Any], *, prompts: list[str], batch: bool,
                 echo: bool, include_usage: bool) -> None:
        self.inputs, self.parameters = inputs, parameters
        self.prompts, self.batch, self.echo, self.include_usage = prompts, batch, echo, include_usage


def _any(_: Any) -> bool:
    return True


def _none_or(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or any(value == a and type(value) is type(a) for a in allowed)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


# Fields the adapter accepts without honouring them, when their value changes nothing.
_HARMLESS: dict[str, Callable[[Any], bool]] = {
    "n": _none_or(1),
    "best_of": _none_or(1),
    "stop": _empty,
    "user": _any,
    "metadata": _any,
    "store": _any,
    "service_tier": _any,
    "parallel_tool_calls": _any,
    "logprobs": _none_or(False),
    "top_logprobs": _none_or(0),
    "presence_penalty": _none_or(0, 0.0),
    "frequency_penalty": _none_or(0, 0.0),
    "logit_bias": _empty,
    "seed": lambda v: v is None,
    "suffix": lambda v: v is None or v == "",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "tools": _empty,
    "functions": _empty,
    "tool_choice": _none_or("none", "auto"),
    "function_call": _none_or("none", "auto"),
    "modalities": lambda v: v is None or v == ["text"],
}
_HONOURED = {
    COMPLETIONS: {"model", "prompt", "max_tokens", "temperature", "top_p", "stream", "stream_options", "echo"},
    CHAT: {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
           "stream", "stream_options"},
}


def adapter_request(kind: str, body: dict[str, Any], task: str) -> AdapterRequest:
    """OpenAI body -> predictor inputs and parameters; BadRequestError (422) names what is wrong."""
    rejected = sorted(
        key for key, value in body.items()
        if key not in _HONOURED[kind] and not (key in _HARMLESS and _HARMLESS[key](value))
    )
    if rejected:
        raise BadRequestError(
            f"not supported for model {body['model']!r} (served by transformers; only "
            f"vLLM-served models take them): {', '.join(rejected)}"
        )
    parameters: dict[str, Any] = {"count_prompt_tokens": True}
    default_max = DEFAULT_MAX_TOKENS
    if kind == CHAT:
        if task != "text-generation":
            raise BadRequestError(f"model {body['model']!r} is a {task} model; chat completions "
                                  "need a text-generation model with a chat template (use /v1/completions)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("messages: field required (a non-empty list of {\"role\", \"content\"} objects)")
        inputs: Any = messages
        prompts: list[str] = []
        batch = False
        parameters["chat"] = True
        default_max = DEFAULT_CHAT_MAX_TOKENS
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts, batch = [prompt], False
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts, batch = list(prompt), True
        elif prompt is None:
            raise BadRequestError("prompt: field required (a string or a list of strings)")
        else:
            raise BadRequestError("prompt must be a string or a non-empty list of strings "
                                  "(token-id prompts are only supported for vLLM-served models)")
        inputs = prompts if batch else prompts[0]
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    parameters["max_new_tokens"] = max_tokens

    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature  # OpenAI's default: sampling at 1
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequestError(f"temperature must be a number between 0 and 2, got {temperature!r}")
    top_p = body.get("top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise BadRequestError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if temperature == 0:
        parameters["do_sample"] = False  # greedy; top_p means nothing then
    else:
        parameters["do_sample"] = True
        parameters["temperature"] = float(temperature)
        if top_p is not None:
            parameters["top_p"] = float(top_p)

    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise BadRequestError(f"echo must be a boolean, got {echo!r}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequestError(f"stream_options must be an object, got {options!r}")
    include_usage = bool(options and options.get("include_usage"))
    return AdapterRequest(inputs, parameters, prompts=prompts, batch=batch, echo=bool(echo),
                           include_usage=include_usage)


def stream_events(kind: str, head: dict[str, Any], texts: list[str], finishes: list[str],
                   usage: dict[str, int] | None) -> list[bytes]:
    """The whole answer as SSE: a content chunk per choice, a finish chunk per choice,
    the usage chunk when asked for, ``[DONE]``."""
    if kind == CHAT:
        head = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if usage is not None else {}

    def choice(i: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if kind == COMPLETIONS:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if text is not None else {}
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [sse({**head, "choices": [choice(i, t, None)], **extra}) for i, t in enumerate(texts)]
    events += [sse({**head, "choices": [choice(i, None, f)], **extra}) for i, f in enumerate(finishes)]
    if usage is not None:
        events.append(sse({**head, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
