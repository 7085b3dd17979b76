"""Tiny Triton python models for orchestration tests: instant loads, controllable speed."""

from __future__ import annotations

import textwrap
from pathlib import Path

CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "SECONDS" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "SLEPT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
"""

SLEEPER = """\
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()
            time.sleep(float(seconds[0]))
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("SLEPT", seconds)]))
        return responses
"""


def make_sleeper(directory: Path, *, count: int = 1) -> Path:
    """A python-backend model that sleeps for its input SECONDS, then echoes it; ``count``
    instances (stub processes) serve requests in parallel, and each is reserved for."""
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(CONFIG.format(name=directory.name, count=count), encoding="utf-8")
    (directory / "1" / "model.py").write_text(textwrap.dedent(SLEEPER), encoding="utf-8")
    return directory


VERSIONED_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "SECONDS" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "VERSION" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

VERSIONED = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils

VERSION = {version!r}
BROKEN = {broken!r}


class TritonPythonModel:
    def initialize(self, args):
        if BROKEN:
            raise RuntimeError("corrupt weights in version " + VERSION)

    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()
            time.sleep(float(seconds[0]))
            out = np.array([VERSION.encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("VERSION", out)]))
        return responses
"""


def make_versioned(directory: Path, version: str, *, broken: bool = False) -> Path:
    """A python-backend model answering its ``version``; ``broken`` fails in initialize."""
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(VERSIONED_CONFIG.format(name=directory.name), encoding="utf-8")
    (directory / "1" / "model.py").write_text(VERSIONED.format(version=version, broken=broken),
                                             encoding="utf-8")
    return directory
