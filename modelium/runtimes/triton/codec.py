"""KServe-v2 JSON tensors for Triton: ``/predict`` inputs -> an infer body, and the
answer back to JSON outputs. Pure (no I/O), so every mapping rule is unit-tested.

Text (a string or a list of strings) goes to a BYTES input (``TEXT`` of the generated HF
models, else the model's only BYTES input), one row per string; the generated models
also take request parameters as a per-row JSON ``PARAMETERS`` tensor. Named tensors
(``{"INPUT": nested list}``) are typed from the model's metadata, so a client never
spells Triton datatypes. Client mistakes raise BadRequestError (422), never reach Triton.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelium.runtimes.errors import BadRequestError

#: Triton datatype -> numpy dtype (BYTES handled apart).
NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": np.float32,
}
#: Inputs of the python-backend HF models that model_repo writes.
TEXT_INPUT = "TEXT"
PARAMETERS_INPUT = "PARAMETERS"


@dataclass(frozen=True)
class InferBody:
    """What to POST to ``/v2/models/NAME/infer`` and how to read the answer."""

    body: dict[str, Any]
    text_mode: bool
    single: bool


def infer_body(model: str, inputs: Any, parameters: dict[str, Any], metadata: dict[str, Any]) -> InferBody:
    """The infer request for ``inputs`` given the model's metadata (its declared inputs)."""
    declared = metadata.get("inputs") or []
    text_mode = isinstance(inputs, str) or (
        isinstance(inputs, list) and bool(inputs) and all(isinstance(x, str) for x in inputs))
    send_parameters = bool(parameters)
    if text_mode:
        spec = text_input(declared)
        if spec is None:
            raise BadRequestError(
                f"model {model} takes named tensors {[i.get('name') for i in declared]}, not text; "
                'send inputs as {"INPUT_NAME": nested list}')
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        rank = max(1, len(spec.get("shape") or [-1]))
        tensors = [{"name": spec["name"], "shape": [len(texts)] + [1] * (rank - 1), "datatype": "BYTES",
                    "data": texts}]
        params_spec = next((i for i in declared if i.get("name") == PARAMETERS_INPUT
                            and i.get("datatype") == "BYTES"), None)
        if parameters and params_spec is not None:  # the generated HF models: JSON per row
            p_rank = max(1, len(params_spec.get("shape") or [-1]))
            # one copy per row: Triton wants every input of a batched request at one batch size
            tensors.append({"name": PARAMETERS_INPUT, "shape": [len(texts)] + [1] * (p_rank - 1),
                            "datatype": "BYTES", "data": [json.dumps(parameters)] * len(texts)})
            send_parameters = False
    elif isinstance(inputs, dict):
        tensors = named_tensors(model, inputs, declared)
    else:
        raise BadRequestError("inputs must be a string, a list of strings, or {\"INPUT_NAME\": nested list}")
    body: dict[str, Any] = {"inputs": tensors}
    if send_parameters:
        bad = [k for k, v in parameters.items() if not isinstance(v, str | int | float | bool)]
        if bad:
            raise BadRequestError(f"Triton parameters must be scalars (string, number, bool): {bad}")
        body["parameters"] = dict(parameters)
    return InferBody(body=body, text_mode=text_mode, single=isinstance(inputs, str))


def decode_outputs(answer: dict[str, Any], request: InferBody) -> Any:
    """Triton's infer answer as JSON outputs (see :func:`text_outputs` for text mode)."""
    outputs = {out["name"]: out for out in answer.get("outputs", [])}
    if request.text_mode:
        return text_outputs(outputs, single=request.single)
    return {name: output_array(out) for name, out in outputs.items()}


def named_tensors(model: str, inputs: dict[str, Any], declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {spec["name"]: spec for spec in declared}
    unknown = sorted(set(inputs) - set(by_name))
    if unknown:
        raise BadRequestError(f"model {model} has no input(s) {unknown}; its inputs are {sorted(by_name)}")
    tensors = []
    for input_name, value in inputs.items():
        datatype = by_name[input_name]["datatype"]
        try:
            if datatype == "BYTES":
                array = np.asarray(value, dtype=object)
                if array.size and not all(isinstance(x, str) for x in array.flat):
                    raise ValueError("BYTES inputs must be strings")
                data = [str(x) for x in array.flat]
            else:
                array = np.asarray(value, dtype=NUMPY_TYPES[datatype])
                data = array.reshape(-1).tolist()
        except KeyError as exc:
            raise BadRequestError(f"input {input_name}: datatype {datatype} is not supported over JSON") from exc
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequestError(f"input {input_name} is not a valid {datatype} tensor: {exc}") from exc
        tensors.append({"name": input_name, "shape": list(array.shape), "datatype": datatype, "data": data})
    return tensors


def text_input(declared: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The BYTES input text goes to: ``TEXT`` (the generated HF models, which may also take
    an optional ``PARAMETERS``), else the model's only input when it is BYTES."""
    for spec in declared:
        if spec.get("name") == TEXT_INPUT and spec.get("datatype") == "BYTES":
            return spec
    if len(declared) == 1 and declared[0].get("datatype") == "BYTES":
        return declared[0]
    return None


def output_array(output: dict[str, Any]) -> Any:
    data = output.get("data", [])
    shape = output.get("shape") or [len(data)]
    if output.get("datatype") == "BYTES":
        return np.asarray(data, dtype=object).reshape(shape).tolist()
    return np.asarray(data).reshape(shape).tolist()


def text_outputs(outputs: dict[str, dict[str, Any]], *, single: bool) -> Any:
    """The generated python-backend models answer one BYTES tensor of JSON per item."""
    decoded: dict[str, list[Any]] = {}
    for out_name, out in outputs.items():
        items = list(np.asarray(out.get("data", []), dtype=object).reshape(-1)) \
            if out.get("datatype") == "BYTES" else None
        if items is None:
            decoded[out_name] = output_array(out)
            continue
        parsed = []
        for item in items:
            try:
                parsed.append(json.loads(item))
            except (TypeError, ValueError):
                parsed.append(item)
        decoded[out_name] = parsed
    if len(decoded) == 1:
        (values,) = decoded.values()
        if isinstance(values, list) and single and len(values) == 1:
            return values[0]
        return values
    if single:
        return {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in decoded.items()}
    return decoded
