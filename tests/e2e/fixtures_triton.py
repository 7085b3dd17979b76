"""Model folders for the Triton tests, built offline in a second or less.

* ``make_onnx_model(dir)``: ``dir/model.onnx``, a Linear 4 -> 2 exported from torch (fixed
  seed), input ``INPUT`` float32 [batch, 4], output ``OUTPUT`` float32 [batch, 2], dynamic
  batch. ``onnx_reference(x)`` gives what it must answer.
* ``make_python_model_with_config(dir, name)``: a folder with its own config.pbtxt and
  ``1/model.py`` that answers ``OUTPUT0 = INPUT0 + 1`` (float32, dims [-1], KIND_CPU).
* ``make_failing_python_model(dir, name)``: same layout, but ``initialize`` raises
  ``RuntimeError("deliberately broken")`` so Triton's load fails with that message.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np

ONNX_SEED = 1234
ONNX_IN_FEATURES = 4
ONNX_OUT_FEATURES = 2
FAILING_MESSAGE = "deliberately broken"


def _linear():
    import torch

    torch.manual_seed(ONNX_SEED)
    return torch.nn.Linear(ONNX_IN_FEATURES, ONNX_OUT_FEATURES).eval()


def make_onnx_model(directory: Path) -> Path:
    """Export the Linear model to ``directory/model.onnx``; returns ``directory``."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # dynamo=False: the TorchScript exporter needs only `onnx`, not onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _linear(),
            (torch.zeros(2, ONNX_IN_FEATURES),),
            str(directory / "model.onnx"),
            input_names=["INPUT"],
            output_names=["OUTPUT"],
            dynamic_axes={"INPUT": {0: "batch"}, "OUTPUT": {0: "batch"}},
            dynamo=False,
        )
    return directory


def onnx_reference(x: np.ndarray) -> np.ndarray:
    """What the ONNX model answers for ``x`` ([batch, 4] float32), computed with torch."""
    import torch

    with torch.inference_mode():
        return _linear()(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }}
]
output [
  {{
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

_ADD_ONE = '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''

_FAILING = f'''\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("{FAILING_MESSAGE}")

    def execute(self, requests):
        return []
'''


def _python_model(directory: Path, name: str, source: str) -> Path:
    directory = Path(directory)
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(_CONFIG.format(name=name), encoding="utf-8")
    (directory / "1" / "model.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return directory


def make_python_model_with_config(directory: Path, name: str) -> Path:
    """An "add one" python-backend model with its own config.pbtxt; returns ``directory``."""
    return _python_model(directory, name, _ADD_ONE)


def make_failing_python_model(directory: Path, name: str) -> Path:
    """A python-backend model whose initialize raises RuntimeError("deliberately broken")."""
    return _python_model(directory, name, _FAILING)
