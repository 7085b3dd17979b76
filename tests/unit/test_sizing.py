"""size_for_runtime reserves one copy per model copy the runtime really loads."""

from __future__ import annotations

import json
from pathlib import Path

from modelium.analysis import analyze_folder, estimate_memory
from modelium.config import ModeliumSettings, ModelOverride
from modelium.orchestrator.sizing import copies_for_runtime, size_for_runtime

BERT = dict(architectures=["BertModel"], model_type="bert", hidden_size=64, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=128, vocab_size=1000,
            max_position_embeddings=128, torch_dtype="float32")
LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=2, intermediate_size=128, vocab_size=1000,
             max_position_embeddings=256, torch_dtype="float32")


def _folder(tmp_path: Path, config: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_triton_reserves_one_copy_per_instance(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_bytes(b"x" * 10_000)
    (tmp_path / "config.pbtxt").write_text(
        'name: "m"\nbackend: "python"\ninstance_group [ { count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU } ]\n')
    profile = analyze_folder(tmp_path)
    memory, _ = size_for_runtime(profile, "triton", ModeliumSettings(), ModelOverride(), device_kind="cpu")
    single = estimate_memory(profile, device_kind="cpu")
    assert memory.copies == 3 and memory.total_bytes == 3 * single.total_bytes


def test_ray_serve_reserves_one_copy_per_replica(tmp_path: Path) -> None:
    profile = analyze_folder(_folder(tmp_path, BERT))
    override = ModelOverride(num_replicas=4)
    memory, options = size_for_runtime(profile, "ray_serve", ModeliumSettings(), override, device_kind="cpu")
    assert memory.copies == 4 and options == {}
    assert memory.total_bytes == 4 * estimate_memory(profile, device_kind="cpu").total_bytes
    assert copies_for_runtime(profile, "ray_serve", ModelOverride()) == 1


def test_vllm_is_one_engine_whatever_the_replicas(tmp_path: Path) -> None:
    profile = analyze_folder(_folder(tmp_path, LLAMA))
    memory, _ = size_for_runtime(profile, "vllm", ModeliumSettings(), ModelOverride(num_replicas=3),
                                 device_kind="cpu")
    assert memory.copies == 1
    assert copies_for_runtime(profile, "vllm", ModelOverride(num_replicas=3)) == 1
