"""What a drop carries that Modelium would run (the trust boundary of incoming/)."""

from __future__ import annotations

from modelium.orchestrator.trust import dropped_code
from tests.unit.fakes import make_config_only_model


def test_python_backend_models_and_pickles_are_code_safetensors_and_hf_scripts_are_not(tmp_path):
    triton = tmp_path / "triton"
    (triton / "1").mkdir(parents=True)
    (triton / "config.pbtxt").write_text('name: "t"\nbackend: "python"\n')
    (triton / "1" / "model.py").write_text("print('runs')\n")
    assert dropped_code(triton) == ["1/model.py (Triton python backend: runs in a stub process)"]

    onnx = tmp_path / "onnx"
    (onnx / "1").mkdir(parents=True)
    (onnx / "config.pbtxt").write_text('name: "o"\nplatform: "onnxruntime_onnx"\n')
    (onnx / "1" / "helper.py").write_text("")  # not the python backend: nothing runs it
    assert dropped_code(onnx) == []

    hf = make_config_only_model(tmp_path / "hf")
    (hf / "modeling_custom.py").write_text("")  # trust_remote_code is never set
    (hf / "model.safetensors").write_bytes(b"")
    assert dropped_code(hf) == []
    (hf / "pytorch_model.bin").write_bytes(b"")
    assert dropped_code(hf) == ["pytorch_model.bin (pickled weights: unpickling can run code)"]
