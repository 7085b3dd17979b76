"""KServe v2 infer bodies for the models the gateway adapts (vLLM, Ray Serve): parse a
request (JSON tensors, or the binary tensor extension) into text rows, and encode the
JSON answers as one BYTES output. Pure (no I/O), so every rule is unit-tested.

Triton models never come here: their bodies go to Triton byte for byte.

The adapted contract (what ``GET /v2/models/NAME`` says for such a model):

* input ``text``, ``BYTES``, shape ``[N]`` (or ``[N, 1]``): one string per row, UTF-8;
* output ``output``, ``BYTES``, shape ``[N]``: per row one JSON document, the runtime's
  answer for that text (what ``/predict`` returns as ``outputs``);
* request ``parameters`` other than the protocol's own (``binary_data_output``...) are
  the model's parameters (``max_new_tokens``, ``top_k``, ``pooling``...).

Binary tensor extension (Triton's ``binary_tensor_data``): the body is a JSON header of
``Inference-Header-Content-Length`` bytes, then each input whose ``parameters`` carry
``binary_data_size`` as raw bytes, in input order; a BYTES tensor is each element as a
4-byte little-endian length then its bytes. An output is answered in binary when it asks
(``outputs[i].parameters.binary_data``) or the request does
(``parameters.binary_data_output``, what ``tritonclient`` sends by default).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from modelium.runtimes.errors import BadRequestError

TEXT_INPUT = "text"
OUTPUT = "output"
#: Request parameters that belong to the protocol, never passed to the model.
PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "binary_data", "binary_data_size", "classification"})


@dataclass(frozen=True)
class AdaptedRequest:
    """A v2 infer request for an adapted model: its rows, the model's parameters, and how
    the answer must be written."""

    request_id: str | None
    texts: list[str]
    parameters: dict[str, Any]
    binary_output: bool


@dataclass(frozen=True)
class EncodedAnswer:
    content: bytes
    header_length: int | None  # None: plain JSON

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def adapted_metadata(name: str, platform: str) -> dict[str, Any]:
    """``GET /v2/models/NAME`` for an adapted model (see the module doc)."""
    return {
        "name": name,
        "versions": ["1"],
        "platform": platform,
        "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}],
    }


def split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header (an object) and the binary part after it."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequestError(f"Inference-Header-Content-Length is {header_length} but the body has "
                              f"{len(body)} bytes")
    raw = body if header_length is None else body[:header_length]
    try:
        header = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the infer request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequestError('the infer request must be a JSON object like {"inputs": [...]}')
    return header, b"" if header_length is None else body[header_length:]


def adapted_request(body: bytes, header_length: int | None) -> AdaptedRequest:
    """Parse a v2 infer request for an adapted model; BadRequestError names what is wrong."""
    header, binary = split_body(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError(f'inputs: required, a list with one tensor "{TEXT_INPUT}" (BYTES)')
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") != TEXT_INPUT:
        names = [i.get("name") if isinstance(i, dict) else i for i in inputs]
        raise BadRequestError(f'this model takes one input "{TEXT_INPUT}" (BYTES, one string per row); '
                              f"got {names}")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequestError(f'input "{TEXT_INPUT}" must have datatype BYTES, got {tensor.get("datatype")!r}')
    rows = _rows(tensor.get("shape"))
    tensor_parameters = tensor.get("parameters") or {}
    size = tensor_parameters.get("binary_data_size") if isinstance(tensor_parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size != len(binary):
            raise BadRequestError(f'input "{TEXT_INPUT}": binary_data_size {size!r} does not match the '
                                  f"{len(binary)} bytes after the JSON header")
        texts = decode_bytes_tensor(binary)
    else:
        if binary:
            raise BadRequestError("binary data follows the JSON header but no input has binary_data_size")
        texts = _json_texts(tensor.get("data"))
    if len(texts) != rows:
        raise BadRequestError(f'input "{TEXT_INPUT}": shape says {rows} row(s), data has {len(texts)}')
    if not texts:
        raise BadRequestError(f'input "{TEXT_INPUT}" is empty; send at least one string')
    raw_parameters = header.get("parameters") or {}
    if not isinstance(raw_parameters, dict):
        raise BadRequestError("parameters must be an object")
    parameters = {k: v for k, v in raw_parameters.items() if k not in PROTOCOL_PARAMETERS}
    request_id = header.get("id")
    return AdaptedRequest(
        request_id=request_id if isinstance(request_id, str) else None,
        texts=texts,
        parameters=parameters,
        binary_output=_wants_binary(header, raw_parameters),
    )


def encode_answer(model: str, request: AdaptedRequest, results: list[Any]) -> EncodedAnswer:
    """The v2 infer response: ``output`` = one JSON document per row."""
    documents = [json.dumps(r, separators=(",", ":")) for r in results]
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "BYTES", "shape": [len(documents)]}
    head: dict[str, Any] = {"model_name": model, "model_version": "1"}
    if request.request_id is not None:
        head["id"] = request.request_id
    if not request.binary_output:
        output["data"] = documents
        return EncodedAnswer(json.dumps({**head, "outputs": [output]}).encode(), None)
    raw = encode_bytes_tensor([d.encode() for d in documents])
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({**head, "outputs": [output]}).encode()
    return EncodedAnswer(header + raw, len(header))


def encode_bytes_tensor(items: list[bytes]) -> bytes:
    """BYTES elements as the binary extension lays them out: 4-byte LE length, bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_bytes_tensor(raw: bytes) -> list[str]:
    """The inverse of :func:`encode_bytes_tensor`, each element decoded as UTF-8."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadRequestError("binary BYTES tensor ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise BadRequestError(f"binary BYTES tensor: an element of {length} bytes overruns the data")
        try:
            items.append(raw[at:at + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"input {TEXT_INPUT!r} must be UTF-8 text ({exc})") from None
        at += length
    return items


def _rows(shape: Any) -> int:
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise BadRequestError(f'input "{TEXT_INPUT}": shape must be [N] or [N, 1], got {shape!r}')
    return shape[0]


def _json_texts(data: Any) -> list[str]:
    if isinstance(data, list) and all(isinstance(x, list) and len(x) == 1 for x in data):
        data = [x[0] for x in data]  # [[...], [...]] for a [N, 1] shape
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise BadRequestError(f'input "{TEXT_INPUT}": data must be a list of strings')
    return data


def _wants_binary(header: dict[str, Any], parameters: dict[str, Any]) -> bool:
    outputs = header.get("outputs")
    if isinstance(outputs, list):
        for out in outputs:
            if not isinstance(out, dict) or out.get("name") != OUTPUT:
                name = out.get("name") if isinstance(out, dict) else out
                raise BadRequestError(f'this model has one output "{OUTPUT}"; asked for {name!r}')
            params = out.get("parameters")
            if isinstance(params, dict) and "binary_data" in params:
                return bool(params["binary_data"])
    return bool(parameters.get("binary_data_output", False))
