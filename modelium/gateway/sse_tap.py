"""What the relay learns from a vLLM event stream without parsing it: first text, token
count, ``[DONE]``, an in-stream error, and the usage chunk the gateway asked for itself.

The relay is on the hot path of every streamed token, so nothing here parses an event per
chunk: each chunk costs a few C-level byte searches (a regex for the first text only until
it is found; one for ``"usage":{``; ``[DONE]``; ``"error"``). JSON is parsed once per
stream, for the usage chunk. Patterns start with a quote, so text *inside* a JSON string
(where every quote is escaped as ``\\"``) can never match them.

Token counts come from ``usage.completion_tokens``. When the client did not ask for
usage, :func:`ask_for_usage` asks vLLM for it (``stream_options.include_usage``) and the
tap cuts that final ``"choices": []`` chunk out before it is relayed, so the client gets
the stream it asked for. To cut it cleanly the tap relays whole events only: a chunk that
ends inside an event (rare: vLLM writes one event per HTTP chunk) keeps the unfinished
tail until the rest arrives. Without a usage chunk (an upstream that ignores
``stream_options``) tokens fall back to the number of ``data:`` events.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

#: The first event carrying text (completions ``text``, chat ``delta.content`` or
#: ``reasoning_content``); an empty string (chat's first role-only event) is not text.
_TEXT = re.compile(rb'"(?:text|content|reasoning_content)":\s*"(?!")')
_USAGE = re.compile(rb'"usage":\s*\{')
_DONE = b"data: [DONE]"
_ERROR = b'"error"'
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
#: An unfinished event is held back at most this long (then relayed as is, unwatched).
MAX_HELD_BYTES = 4 * 1024 * 1024
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def ask_for_usage(raw: bytes, body: dict[str, Any]) -> tuple[bytes, bool]:
    """The streamed request body to send upstream, and whether the usage chunk in its
    answer is the gateway's own (to strip). The client's bytes are kept when it asked for
    usage itself; otherwise the option is inserted after the opening brace (the rest of
    the body untouched), or, when the client set ``stream_options`` without usage, the
    body is re-encoded with it."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return raw, False
    if "stream_options" not in body:
        start = len(raw) - len(raw.lstrip())
        if raw[start:start + 1] == b"{":
            return raw[:start + 1] + _INCLUDE_USAGE + raw[start + 1:], True
    if options is None or (isinstance(options, dict) and not options.get("include_usage")):
        # continuous_usage_stats only ever applies with include_usage: off, as the client had it.
        merged = {**(options or {}), "include_usage": True, "continuous_usage_stats": False}
        return json.dumps({**body, "stream_options": merged}).encode(), True
    return raw, False  # not an object: vLLM answers why


class StreamTap:
    """Watches (and, for the gateway's own usage chunk, filters) relayed SSE bytes."""

    __slots__ = (
        "_held",
        "_watching",
        "done",
        "events",
        "failed",
        "first_text_seconds",
        "started",
        "strip_usage",
        "usage_tokens",
    )

    def __init__(self, started: float, *, strip_usage: bool) -> None:
        self.started = started
        self.strip_usage = strip_usage
        self.first_text_seconds: float | None = None
        self.events = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.failed = False
        self._held = b""
        self._watching = True

    @property
    def tokens(self) -> int:
        if self.usage_tokens is not None:
            return self.usage_tokens
        return max(0, self.events - (1 if self.done else 0))

    @property
    def pending(self) -> bytes:
        """The unfinished event held back (relayed as is when the stream breaks)."""
        return self._held

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to relay now for ``chunk`` (possibly empty)."""
        if not self._watching:
            return chunk
        if self._held:
            chunk, self._held = self._held + chunk, b""
        if not chunk.endswith(_EVENT_ENDS):
            lf, crlf = chunk.rfind(b"\n\n"), chunk.rfind(b"\r\n\r\n")
            cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
            if len(chunk) - cut > MAX_HELD_BYTES:  # one huge event: stop watching, relay it
                self._watching = False
                return chunk
            chunk, self._held = chunk[:cut], chunk[cut:]
            if not chunk:
                return b""
        if self.first_text_seconds is None and _TEXT.search(chunk) is not None:
            self.first_text_seconds = time.perf_counter() - self.started
        self.events += chunk.count(b"data:")
        if _ERROR in chunk:
            self.failed = True
        if _DONE in chunk:
            self.done = True
        usage = None
        for usage in _USAGE.finditer(chunk):  # the last one is the newest count
            pass
        if usage is not None:
            chunk = self._usage(chunk, usage.start())
        return chunk

    def _usage(self, chunk: bytes, at: int) -> bytes:
        start = chunk.rfind(b"data:", 0, at)
        ends = [i + len(sep) for sep in _EVENT_ENDS if (i := chunk.find(sep, at)) >= 0]
        end = min(ends) if ends else len(chunk)
        try:
            payload = json.loads(chunk[start + 5:end])
        except ValueError:
            return chunk
        usage = payload.get("usage") if isinstance(payload, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            self.usage_tokens = tokens
        if self.strip_usage and start >= 0 and isinstance(payload, dict) and payload.get("choices") == []:
            self.events -= 1
            return chunk[:start] + chunk[end:]
        return chunk
