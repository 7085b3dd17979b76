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
instance_group [ {{ count: 4 kind: KIND_CPU }} ]
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


def make_sleeper(directory: Path) -> Path:
    """A python-backend model that sleeps for its input SECONDS, then echoes it."""
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(CONFIG.format(name=directory.name), encoding="utf-8")
    (directory / "1" / "model.py").write_text(textwrap.dedent(SLEEPER), encoding="utf-8")
    return directory
