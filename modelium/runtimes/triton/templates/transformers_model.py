"""Triton python-backend model serving a Hugging Face folder with TransformersPredictor.

Written by Modelium into ``NAME/1/model.py``; the model files are in ``NAME/1/<model_subdir>``
and config.pbtxt gives ``task``, ``model_subdir`` and ``modelium_root`` as parameters. The
stub does not honour PYTHONPATH (seen with pytriton 0.7.0's Triton 2.51), so when
``modelium`` is not importable, ``initialize`` puts ``modelium_root`` on ``sys.path`` first.

Request: ``TEXT`` [batch, 1] (one string per row) and optional ``PARAMETERS`` [batch, 1]
or [1, 1] (a JSON object per row, or one for all rows). Response: ``OUTPUT`` [batch, 1],
one JSON document per TEXT row (the predictor's result for that text). A client mistake
(BadRequestError, bad JSON, non-UTF-8 text) fails that request with INVALID_ARG, which
Triton's HTTP endpoint answers with 400 and the message; anything else is INTERNAL (500).

Batching: ``execute`` gets every request Triton's dynamic batcher gathered. All their rows
that share the same parameters go through ``TransformersPredictor.predict_batch`` together
(one padded forward pass for the encoder tasks), and the results are split back into one
response per request, in row order. If such a shared run fails, each of its requests is
run alone, so an error reaches only the request that caused it.

KIND_GPU instances run on ``cuda:<model_instance_device_id>``: Triton does not narrow
CUDA_VISIBLE_DEVICES per instance, so the stub sees the server's GPUs and the id is the
index among them.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from modelium.runtimes.errors import BadRequestError
    from modelium.runtimes.transformers_predictor import TransformersPredictor
except ImportError:  # imported in initialize(), once modelium_root is on sys.path
    BadRequestError = TransformersPredictor = None


def _import_modelium(root: str) -> None:
    global BadRequestError, TransformersPredictor
    if TransformersPredictor is not None:
        return
    if root and root not in sys.path:
        sys.path.insert(0, root)
    BadRequestError = importlib.import_module("modelium.runtimes.errors").BadRequestError
    TransformersPredictor = importlib.import_module(
        "modelium.runtimes.transformers_predictor").TransformersPredictor


def _error(message: str, invalid_arg: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid_arg else "INTERNAL", None)
    if code is None:  # python backends older than 23.x take the message only
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


def _strings(tensor, what: str) -> list[str]:
    values = tensor.as_numpy().reshape(-1)
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"{what} must be UTF-8 text ({exc})") from exc


def _parameters(raw: str) -> dict:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"PARAMETERS is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise BadRequestError("PARAMETERS must be a JSON object")
    return value


def _key(parameters: dict) -> str:
    return json.dumps(parameters, sort_keys=True)


def _error_response(exc: Exception):
    if isinstance(exc, BadRequestError):
        return pb_utils.InferenceResponse(error=_error(exc.message, True))
    return pb_utils.InferenceResponse(error=_error(f"{type(exc).__name__}: {exc}", False))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        _import_modelium(parameters.get("modelium_root", {}).get("string_value", ""))
        task = parameters["task"]["string_value"]
        model_dir = Path(__file__).parent / parameters["model_subdir"]["string_value"]
        if args.get("model_instance_kind", "CPU") == "GPU":
            device = f"cuda:{int(args.get('model_instance_device_id', '0'))}"
        else:
            device = "cpu"
        self.predictor = TransformersPredictor(str(model_dir), task, device)

    def execute(self, requests):
        responses = [None] * len(requests)
        rows = {}  # index -> (texts, parameters) of the requests that parsed
        for index, request in enumerate(requests):
            try:
                rows[index] = self._rows(request)
            except Exception as exc:  # noqa: BLE001 - reported to the client, not raised
                responses[index] = _error_response(exc)
        group = sorted(rows)
        try:
            if group:
                self._run(group, rows, responses)
        except Exception as exc:  # noqa: BLE001 - alone: its error; else each request alone
            if len(group) == 1:
                responses[group[0]] = _error_response(exc)
            else:
                for index in group:
                    try:
                        self._run([index], rows, responses)
                    except Exception as alone:  # noqa: BLE001 - reported to the client, not raised
                        responses[index] = _error_response(alone)
        return responses

    def _rows(self, request):
        """(texts, [parameters dict per row]) of one request; BadRequestError if malformed."""
        text_tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if text_tensor is None:
            raise BadRequestError("input TEXT is missing")
        texts = _strings(text_tensor, "TEXT")
        params_tensor = pb_utils.get_input_tensor_by_name(request, "PARAMETERS")
        raw_params = _strings(params_tensor, "PARAMETERS") if params_tensor is not None else [""]
        if len(raw_params) == 1:
            raw_params = raw_params * len(texts)
        elif len(raw_params) != len(texts):
            raise BadRequestError(
                f"PARAMETERS has {len(raw_params)} rows for {len(texts)} TEXT rows "
                "(give one, or one per row)")
        return texts, [_parameters(raw) for raw in raw_params]

    def _run(self, group, rows, responses):
        """Every row of the requests in ``group`` with one parameter set: one batched call
        per distinct parameter set, then one response per request."""
        by_params = {}  # canonical parameters -> [(request index, row index, text)]
        for index in group:
            texts, params = rows[index]
            for row, (text, param) in enumerate(zip(texts, params)):
                by_params.setdefault(_key(param), []).append((index, row, text))
        results = {index: [None] * len(rows[index][0]) for index in group}
        for key, members in by_params.items():
            outputs = self.predictor.predict_batch([text for _, _, text in members], json.loads(key))
            for (index, row, _), output in zip(members, outputs):
                results[index][row] = output
        for index in group:
            encoded = np.array([[json.dumps(r).encode("utf-8")] for r in results[index]], dtype=np.object_)
            responses[index] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", encoded)])

    def finalize(self):
        self.predictor = None
