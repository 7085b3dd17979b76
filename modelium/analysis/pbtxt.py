"""Triton's ``config.pbtxt``: protobuf text format, parsed for real.

Modelium hands a folder's own config to Triton as given, so a config Triton cannot parse
would only fail at load time, with Triton's message in the daemon log. Parsing it here
turns that into a quarantine with the line that is wrong, and gives the numbers the
reservation needs (``instance_group`` counts) from the parsed message instead of from
regular expressions that comments, strings or nested blocks can fool.

This is the generic text format (fields, ``{}``/``<>`` messages, ``[]`` lists, strings,
numbers, enum identifiers, ``#`` comments, optional ``,``/``;`` separators), not
Triton's schema: unknown field names are Triton's to judge. Nesting is bounded, and every
input gives a message or a `PbtxtError`, nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64
INT32_MAX = 2**31 - 1

# A message: field name -> every value given for it, in order (repeated fields and list
# syntax both append). Scalars are str (strings unquoted, numbers and enums as written).
Message = dict[str, list[Any]]

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)[fFuUlL]*)
      |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<punct>[{}<>\[\]:,;/.\-])""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f",
                   "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}
_CLOSE = {"{": "}", "<": ">"}


class PbtxtError(ValueError):
    """The text is not protobuf text format; the message says where and why."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    line: int


def _tokens(text: str) -> list[_Token]:
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            char = text[pos]
            what = "an unterminated string" if char in "\"'" else f"unexpected character {char!r}"
            raise PbtxtError(f"line {line}: {what}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(), line))
        line += match.group().count("\n")
        pos = match.end()
    return tokens


def _unquote(literal: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x":
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return _SIMPLE_ESCAPES.get(code, code)

    return _ESCAPE.sub(one, literal[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise PbtxtError(f"line {last}: the text ends in the middle of a field")
        self.pos += 1
        return token

    def fail(self, token: _Token, expected: str) -> PbtxtError:
        return PbtxtError(f"line {token.line}: expected {expected}, found {token.text!r}")

    def message(self, depth: int, close: str | None) -> Message:
        if depth > MAX_DEPTH:
            raise PbtxtError(f"line {self.tokens[self.pos - 1].line}: messages nested "
                             f"more than {MAX_DEPTH} levels deep")
        fields: Message = {}
        while True:
            token = self.peek()
            if token is None:
                if close is not None:
                    last = self.tokens[-1].line if self.tokens else 1
                    raise PbtxtError(f"line {last}: a block is not closed ('{close}' missing)")
                return fields
            if close is not None and token.text == close:
                self.pos += 1
                return fields
            name = self.field_name()
            fields.setdefault(name, []).extend(self.field_value(name, depth))
            if (sep := self.peek()) is not None and sep.text in (",", ";"):
                self.pos += 1

    def field_name(self) -> str:
        token = self.take()
        if token.kind == "ident":
            return token.text
        if token.text == "[":  # an extension or Any type URL: [pkg.ext] or [url/pkg.Type]
            parts = []
            while (part := self.take()).text != "]":
                if part.kind != "ident" and part.text not in (".", "/"):
                    raise self.fail(part, "an extension name")
                parts.append(part.text)
            return "[" + "".join(parts) + "]"
        raise self.fail(token, "a field name")

    def field_value(self, name: str, depth: int) -> list[Any]:
        token = self.take()
        colon = token.text == ":"
        if colon:
            token = self.take()
        if token.text in _CLOSE:
            return [self.message(depth + 1, _CLOSE[token.text])]
        if token.text == "[":
            return self.list_values(name, depth)
        if not colon:
            raise self.fail(token, f"':' or '{{' after field name {name!r}")
        return [self.scalar(token)]

    def list_values(self, name: str, depth: int) -> list[Any]:
        values: list[Any] = []
        if (token := self.peek()) is not None and token.text == "]":
            self.pos += 1
            return values
        while True:
            token = self.take()
            if token.text in _CLOSE:
                values.append(self.message(depth + 1, _CLOSE[token.text]))
            else:
                values.append(self.scalar(token))
            token = self.take()
            if token.text == "]":
                return values
            if token.text != ",":
                raise self.fail(token, f"',' or ']' in the list of {name!r}")

    def scalar(self, token: _Token) -> str:
        if token.kind == "string":
            parts = [_unquote(token.text)]
            while (nxt := self.peek()) is not None and nxt.kind == "string":  # "a" "b" == "ab"
                parts.append(_unquote(self.take().text))
            return "".join(parts)
        if token.kind in ("number", "ident"):
            return token.text
        if token.text == "-" and (nxt := self.peek()) is not None and nxt.kind == "ident":
            return "-" + self.take().text  # -inf, -nan
        raise self.fail(token, "a value")


def parse_pbtxt(text: str) -> Message:
    """The top-level message of ``text``; raises PbtxtError for anything else."""
    return _Parser(text).message(0, None)


def _int_value(message: Message, field: str, where: str) -> int | None:
    values = message.get(field)
    if not values:
        return None
    value = values[0]
    if not isinstance(value, str) or not re.fullmatch(r"[+-]?[0-9]+", value):
        raise PbtxtError(f"{where}{field} must be an integer, got {value!r}")
    number = int(value)
    if not 0 <= number <= INT32_MAX:
        raise PbtxtError(f"{where}{field} must be between 0 and {INT32_MAX}, got {number}")
    return number


@dataclass(frozen=True)
class TritonConfig:
    """What Modelium reads from a parsed config.pbtxt."""

    backend: str | None  # `backend`, else `platform`
    instances: int


def read_triton_config(text: str) -> TritonConfig:
    """Parse and check the fields Modelium uses; raises PbtxtError naming the problem.

    Instances: the ``count`` of every top-level ``instance_group`` entry summed (an entry
    without one counts 1, Triton's default), 1 without any. Each instance is a copy of
    the model (for the python backend a stub process of its own), so the reservation
    scales with it. A KIND_GPU group listing several ``gpus`` makes ``count`` instances
    on *each*: not modelled, Modelium places a model on one device.
    """
    message = parse_pbtxt(text)
    _int_value(message, "max_batch_size", "")
    total = 0
    for group in message.get("instance_group", []):
        if not isinstance(group, dict):
            raise PbtxtError(f"instance_group must be a block {{ ... }}, got {group!r}")
        count = _int_value(group, "count", "instance_group ")
        total += 1 if count is None else count
    backend = None
    for field in ("backend", "platform"):
        values = message.get(field)
        if values:
            if not isinstance(values[0], str) or not values[0]:
                raise PbtxtError(f"{field} must be a non-empty string")
            backend = backend or values[0]
    return TritonConfig(backend=backend, instances=max(1, total))


def triton_instance_count(config_text: str) -> int:
    """Instances a config.pbtxt asks Triton for (see :func:`read_triton_config`); 1 when
    the text cannot be parsed (the analyzer reports that case, this only counts)."""
    try:
        return read_triton_config(config_text).instances
    except PbtxtError:
        return 1
