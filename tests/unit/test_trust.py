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


async def test_allow_code_false_quarantines_a_drop_with_code_and_files_one_without(tmp_path):
    import asyncio
    import json

    from modelium.analysis.isolated import check_drop
    from modelium.discovery import REASON_FILE
    from modelium.orchestrator import DropHandler
    from tests.unit.test_orchestrator import build

    orchestrator, _ = build(tmp_path, discovery={"allow_code": False})
    await orchestrator.start()
    incoming = tmp_path / "models/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 100, "intermediate_size": 128}
    for name, extra in (("pickled", "pytorch_model.bin"), ("clean", "model.safetensors")):
        (incoming / name).mkdir()
        (incoming / name / "config.json").write_text(json.dumps(config))
        if extra.endswith(".bin"):
            (incoming / name / extra).write_bytes(b"\x80\x04N.")  # a pickle of None
    handler = DropHandler(orchestrator, analyze=lambda path, name: asyncio.to_thread(check_drop, path, name))
    await handler("pickled", incoming / "pickled")
    await handler("clean", incoming / "clean")
    await orchestrator.quiesce()
    reason = (tmp_path / "models/failed/pickled" / REASON_FILE).read_text()
    assert "discovery.allow_code is false" in reason and "pytorch_model.bin" in reason, reason
    assert "pickled" not in orchestrator.table
    assert orchestrator.get("clean").path == tmp_path / "models/repository/clean"
