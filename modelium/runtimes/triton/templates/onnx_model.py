"""Triton python-backend model that runs an ONNX graph with onnxruntime.

Written by Modelium into ``NAME/1/model.py`` next to the graph; config.pbtxt names the
graph (parameter ``onnx_file``, relative to this folder) and declares the graph's inputs
and outputs. KIND_GPU instances run on CUDAExecutionProvider with the instance's device id
(Triton does not narrow CUDA_VISIBLE_DEVICES per instance); a GPU placement with an
onnxruntime that has no CUDA provider fails the load instead of silently using the CPU.

With dynamic batching, requests whose inputs agree in everything but the batch dim are
concatenated into one onnxruntime run and split again; if that run fails, each request is
retried alone so an error (bad shape, bad dtype) is reported only to the request that
caused it, as INVALID_ARG (HTTP 400) with onnxruntime's message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _error(message: str, invalid_arg: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid_arg else "INTERNAL", None)
    if code is None:  # python backends older than 23.x take the message only
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(__file__).parent
        onnx_file = here / config["parameters"]["onnx_file"]["string_value"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        kind = args.get("model_instance_kind", "CPU")
        if kind == "GPU":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "placed on a GPU but this onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu in the Triton environment)"
                )
            device_id = int(args.get("model_instance_device_id", "0"))
            providers = [("CUDAExecutionProvider", {"device_id": device_id}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_file), providers=providers)

    def execute(self, requests):
        feeds = []
        responses = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                feeds.append((i, self._feed(request)))
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc), True))
        for group in self._groups(feeds):
            if len(group) > 1:
                try:
                    self._run_group(group, responses)
                    continue
                except Exception:  # noqa: BLE001 - retried one by one for precise errors
                    pass
            for item in group:
                self._run_group([item], responses)
        return responses

    def _feed(self, request):
        feed = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            feed[name] = tensor.as_numpy()
        return feed

    def _groups(self, feeds):
        """Requests that can share one run: same dtypes and same shapes past the batch dim."""
        if not self.batched:
            return [[item] for item in feeds]
        groups = {}
        for item in feeds:
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(item[1].items()))
            groups.setdefault(key, []).append(item)
        return list(groups.values())

    def _run_group(self, group, responses):
        if len(group) == 1:
            index, feed = group[0]
            try:
                outputs = self.session.run(self.output_names, feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                responses[index] = pb_utils.InferenceResponse(error=_error(str(exc), True))
                return
            responses[index] = self._response(outputs)
            return
        feed = {n: np.concatenate([f[n] for _, f in group], axis=0) for n in self.input_names}
        outputs = self.session.run(self.output_names, feed)
        start = 0
        for index, item_feed in group:
            size = next(iter(item_feed.values())).shape[0]
            responses[index] = self._response([o[start:start + size] for o in outputs])
            start += size

    def _response(self, outputs):
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value))
                   for name, value in zip(self.output_names, outputs)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self.session = None
