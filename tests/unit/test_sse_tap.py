"""The relay's byte-level stream watcher and its usage request (modelium/gateway/sse_tap.py),
on the bytes vLLM 0.32 writes (``model_dump_json``: no spaces) and on spaced JSON."""

from __future__ import annotations

import json

import pytest

from modelium.gateway.sse_tap import StreamTap, ask_for_usage


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def text_event(text: str) -> bytes:
    return event({"id": "c", "object": "text_completion", "choices": [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": None}]})


USAGE = event({"id": "c", "object": "text_completion", "choices": [],
               "usage": {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}})
DONE = b"data: [DONE]\n\n"


def relay(tap: StreamTap, chunks: list[bytes]) -> bytes:
    return b"".join(tap.feed(c) for c in chunks) + tap.pending


# --------------------------------------------------------------------------- ask_for_usage


def test_usage_is_inserted_without_touching_the_rest() -> None:
    raw = b'  {"model": "m",  "prompt": "hi", "stream": true}'
    sent, ours = ask_for_usage(raw, json.loads(raw))
    assert ours is True
    assert sent == b'  {"stream_options":{"include_usage":true},"model": "m",  "prompt": "hi", "stream": true}'
    assert json.loads(sent)["stream_options"] == {"include_usage": True}


def test_client_asking_for_usage_keeps_its_bytes() -> None:
    raw = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    assert ask_for_usage(raw, json.loads(raw)) == (raw, False)


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False, "continuous_usage_stats": True}])
def test_stream_options_without_usage_are_merged(options: object) -> None:
    body = {"model": "m", "stream": True, "stream_options": options}
    sent, ours = ask_for_usage(json.dumps(body).encode(), body)
    assert ours is True
    assert json.loads(sent) == {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": False}}


def test_invalid_stream_options_go_upstream_as_they_are() -> None:
    body = {"model": "m", "stream": True, "stream_options": "yes"}
    raw = json.dumps(body).encode()
    assert ask_for_usage(raw, body) == (raw, False)


# --------------------------------------------------------------------------- StreamTap


def test_own_usage_chunk_is_cut_and_counted() -> None:
    tap = StreamTap(0.0, strip_usage=True)
    out = relay(tap, [text_event("a"), text_event("b"), USAGE, DONE])
    assert out == text_event("a") + text_event("b") + DONE
    assert tap.tokens == 7 and tap.done and not tap.failed
    assert tap.first_text_seconds is not None


def test_usage_chunk_the_client_asked_for_is_relayed() -> None:
    tap = StreamTap(0.0, strip_usage=False)
    chunks = [text_event("a"), USAGE + DONE]  # arrived together
    assert relay(tap, chunks) == b"".join(chunks)
    assert tap.tokens == 7


def test_usage_split_across_reads_is_still_cut() -> None:
    tap = StreamTap(0.0, strip_usage=True)
    stream = text_event("a") + USAGE + DONE
    pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]
    relayed = [tap.feed(p) for p in pieces]
    assert b"".join(relayed) + tap.pending == text_event("a") + DONE
    assert all(not r or r.endswith(b"\n\n") for r in relayed)  # whole events only
    assert tap.tokens == 7


def test_spaced_json_and_crlf_endings() -> None:
    tap = StreamTap(0.0, strip_usage=True)
    spaced = b'data: {"choices": [], "usage": {"completion_tokens": 3}}\r\n\r\n'
    first = b'data: {"choices": [{"text": "x"}]}\r\n\r\n'
    assert relay(tap, [first, spaced + b"data: [DONE]\r\n\r\n"]) == first + b"data: [DONE]\r\n\r\n"
    assert tap.tokens == 3 and tap.first_text_seconds is not None


def test_first_text_is_not_chats_empty_role_event() -> None:
    tap = StreamTap(0.0, strip_usage=False)
    role = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    tap.feed(role)
    assert tap.first_text_seconds is None
    tap.feed(event({"choices": [{"index": 0, "delta": {"content": "hi"}}]}))
    assert tap.first_text_seconds is not None


def test_quoted_lookalikes_inside_text_do_not_count() -> None:
    tap = StreamTap(0.0, strip_usage=True)
    tricky = text_event('say "usage":{"completion_tokens": 99} and "error"')
    assert tap.feed(tricky) == tricky
    assert tap.usage_tokens is None and not tap.failed


def test_without_usage_tokens_are_counted_events() -> None:
    tap = StreamTap(0.0, strip_usage=True)
    relay(tap, [text_event("a"), text_event("b") + text_event("c"), DONE])
    assert tap.tokens == 3


def test_in_stream_error_is_seen() -> None:
    tap = StreamTap(0.0, strip_usage=True)
    tap.feed(event({"error": {"message": "boom", "type": "InternalServerError", "code": 500}}))
    assert tap.failed


def test_continuous_usage_keeps_the_newest_count() -> None:
    tap = StreamTap(0.0, strip_usage=False)
    chunk = b"".join(event({"choices": [{"text": t}], "usage": {"completion_tokens": n}})
                     for n, t in enumerate("abc", start=1))
    assert tap.feed(chunk) == chunk
    assert tap.tokens == 3
