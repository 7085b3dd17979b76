"""Brain: runtime rules and packing (pure functions); victims: test_brain_victims.py."""

from __future__ import annotations

import dataclasses

import pytest

from modelium.analysis import ModelProfile
from modelium.brain import (
    RUNTIME_RAY_SERVE,
    RUNTIME_TRITON,
    RUNTIME_VLLM,
    choose_runtime,
    place,
    usable_bytes,
)
from modelium.hardware import GIB, Device, Inventory

ALL = (RUNTIME_RAY_SERVE, RUNTIME_VLLM, RUNTIME_TRITON)


def profile(name: str = "m", *, fmt: str = "safetensors", arch: str | None = "LlamaForCausalLM",
            task: str = "text-generation") -> ModelProfile:
    return ModelProfile(
        name=name, path=f"/models/{name}", format=fmt, architecture=arch, model_type="llama",
        task=task, parameters=1_000_000, weight_bytes=2_000_000, dtype="bfloat16",
        parameters_source="safetensors-header",
    )


LLAMA = profile("llama")
BERT = profile("bert", arch="BertForSequenceClassification", task="text-classification")
ONNX = profile("resnet", fmt="onnx", arch=None, task="image-classification")


# --- runtime choice -------------------------------------------------------------------


def test_causal_lm_falls_back_to_ray_serve_when_vllm_disabled() -> None:
    c = choose_runtime(LLAMA, enabled=[RUNTIME_RAY_SERVE])
    assert (c.runtime, c.reason_code) == (RUNTIME_RAY_SERVE, "causal-lm-fallback")
    assert "text-generation" in c.reason and "LlamaForCausalLM" in c.reason
    assert "vllm is not enabled" in c.reason


def test_causal_lm_falls_back_when_vllm_enabled_but_not_implemented() -> None:
    c = choose_runtime(LLAMA, enabled=ALL)  # default implemented = ray_serve only
    assert c.runtime == RUNTIME_RAY_SERVE and c.reason_code == "causal-lm-fallback"
    assert "vllm is not implemented yet" in c.reason


def test_causal_lm_uses_vllm_when_enabled_and_implemented() -> None:
    c = choose_runtime(LLAMA, enabled=ALL, implemented=ALL)
    assert (c.runtime, c.reason_code) == (RUNTIME_VLLM, "causal-lm-vllm")
    assert "LlamaForCausalLM" in c.reason


def test_causal_lm_falls_back_when_vllm_is_not_installed() -> None:
    why = "vllm is enabled but not installed (no interpreter at .venvs/vllm/bin/python)"
    c = choose_runtime(LLAMA, enabled=ALL, implemented=ALL, unavailable={RUNTIME_VLLM: why})
    assert c.runtime == RUNTIME_RAY_SERVE and c.reason_code == "causal-lm-fallback"
    assert why in c.reason


def test_vllm_architecture_filter() -> None:
    c = choose_runtime(LLAMA, enabled=ALL, implemented=ALL,
                       vllm_architectures={"MistralForCausalLM"})
    assert (c.runtime, c.reason_code) == (RUNTIME_RAY_SERVE, "causal-lm-fallback")
    assert "LlamaForCausalLM is not served by vLLM" in c.reason
    ok = choose_runtime(LLAMA, enabled=ALL, implemented=ALL,
                        vllm_architectures={"LlamaForCausalLM"})
    assert ok.runtime == RUNTIME_VLLM


def test_causal_lm_with_nothing_usable() -> None:
    c = choose_runtime(LLAMA, enabled=[RUNTIME_TRITON], implemented=ALL)
    assert (c.runtime, c.reason_code) == (None, "no-runtime")
    assert "vllm is not enabled" in c.reason and "ray_serve is not enabled" in c.reason


def test_encoder_goes_to_triton_when_usable_else_ray_serve() -> None:
    t = choose_runtime(BERT, enabled=ALL, implemented=ALL)
    assert (t.runtime, t.reason_code) == (RUNTIME_TRITON, "hf-model-triton")
    assert "text-classification" in t.reason and "BertForSequenceClassification" in t.reason
    r = choose_runtime(BERT, enabled=ALL)
    assert (r.runtime, r.reason_code) == (RUNTIME_RAY_SERVE, "hf-model-fallback")
    assert "triton is not implemented yet" in r.reason
    none = choose_runtime(BERT, enabled=[RUNTIME_VLLM], implemented=ALL)
    assert (none.runtime, none.reason_code) == (None, "no-runtime")


def test_onnx_needs_triton() -> None:
    t = choose_runtime(ONNX, enabled=ALL, implemented=ALL)
    assert (t.runtime, t.reason_code) == (RUNTIME_TRITON, "triton-native")
    assert "onnx" in t.reason and "image-classification" in t.reason
    n = choose_runtime(ONNX, enabled=[RUNTIME_RAY_SERVE])
    assert (n.runtime, n.reason_code) == (None, "no-runtime")
    assert "triton is not enabled" in n.reason and "cannot serve ONNX" in n.reason


def test_triton_native_format_too() -> None:
    c = choose_runtime(profile(fmt="triton", arch=None, task="unknown"),
                       enabled=ALL, implemented=ALL)
    assert c.reason_code == "triton-native"


def test_override_accepted() -> None:
    c = choose_runtime(BERT, enabled=ALL, implemented=ALL, override=RUNTIME_RAY_SERVE)
    assert (c.runtime, c.reason_code) == (RUNTIME_RAY_SERVE, "override")
    assert "models.bert.runtime" in c.reason


def test_override_disabled_or_unimplemented_is_refused() -> None:
    c = choose_runtime(LLAMA, enabled=[RUNTIME_RAY_SERVE], override=RUNTIME_VLLM)
    assert c.runtime is None and c.reason_code == "no-runtime"
    assert "models.llama.runtime is 'vllm' but vllm is not enabled" in c.reason
    u = choose_runtime(LLAMA, enabled=ALL, override=RUNTIME_VLLM)
    assert u.runtime is None and "vllm is not implemented yet" in u.reason


def test_config_only_profile_still_gets_a_choice() -> None:
    c = choose_runtime(profile(fmt="config-only"), enabled=[RUNTIME_RAY_SERVE])
    assert c.runtime == RUNTIME_RAY_SERVE


# --- placement ------------------------------------------------------------------------


def gpu(i: int, total_gib: float, used_gib: float = 0) -> Device:
    return Device(id=f"gpu:{i}", kind="gpu", index=i, total_bytes=int(total_gib * GIB),
                  name="sim", used_bytes_outside=int(used_gib * GIB))


def inv(*devices: Device) -> Inventory:
    return Inventory(devices=tuple(devices), source="configured")


def test_usable_bytes() -> None:
    assert usable_bytes(gpu(0, 10), 0.9) == int(9 * GIB)
    assert usable_bytes(gpu(0, 10, used_gib=2), 0.9) == int(9 * GIB) - 2 * GIB
    assert usable_bytes(gpu(0, 10, used_gib=12), 0.9) == 0  # floored
    cpu = Device(id="cpu", kind="cpu", index=None, total_bytes=100, name="host RAM",
                 used_bytes_outside=50)
    assert usable_bytes(cpu, 0.5) == 50  # host RAM ignores used_bytes_outside


def test_best_fit_picks_tightest_device() -> None:
    inventory = inv(gpu(0, 80), gpu(1, 80), gpu(2, 24))
    reserved = {"gpu:0": 10 * GIB, "gpu:1": 60 * GIB}
    d = place(int(3.2 * GIB), inventory, reserved, max_utilization=1.0)
    # free: gpu:0 70, gpu:1 20, gpu:2 24 -> tightest fitting is gpu:1
    assert d.device is not None and d.device.id == "gpu:1"
    assert d.reason_code == "best-fit"
    assert d.free_bytes_after == 20 * GIB - int(3.2 * GIB)
    assert "gpu:1" in d.reason and "3.20 GiB" in d.reason and "20.00 GiB free" in d.reason


def test_spread_picks_emptiest_device() -> None:
    inventory = inv(gpu(0, 80), gpu(1, 80), gpu(2, 24))
    d = place(GIB, inventory, {"gpu:0": 10 * GIB}, max_utilization=1.0, strategy="spread")
    assert d.device is not None and d.device.id == "gpu:1"
    assert d.reason_code == "spread"


def test_ties_go_to_lowest_index() -> None:
    inventory = inv(gpu(10, 24), gpu(2, 24))
    for strategy in ("best-fit", "spread"):
        d = place(GIB, inventory, {}, strategy=strategy)
        assert d.device is not None and d.device.id == "gpu:2"


def test_used_outside_counts_against_free() -> None:
    inventory = inv(gpu(0, 24, used_gib=20), gpu(1, 24))
    d = place(5 * GIB, inventory, {}, max_utilization=1.0)
    assert d.device.id == "gpu:1"  # type: ignore[union-attr]


def test_no_fit_when_eviction_could_help() -> None:
    inventory = inv(gpu(0, 10), gpu(1, 10))
    d = place(5 * GIB, inventory, {"gpu:0": 8 * GIB, "gpu:1": 6 * GIB}, max_utilization=1.0)
    assert d.device is None and d.reason_code == "no-fit" and d.free_bytes_after is None
    assert d.required_bytes == 5 * GIB
    assert "gpu:0 2.00 GiB free of 10.00 GiB usable" in d.reason
    assert "gpu:1 4.00 GiB free of 10.00 GiB usable" in d.reason


def test_too_large_when_no_device_could_ever_hold_it() -> None:
    inventory = inv(gpu(0, 10), gpu(1, 12))
    d = place(20 * GIB, inventory, {}, max_utilization=0.9)
    assert d.device is None and d.reason_code == "too-large"
    assert "20.00 GiB" in d.reason and "gpu:0" in d.reason and "gpu:1" in d.reason
    assert place(GIB, inv(), {}).reason_code == "too-large"


def test_pinned_placement() -> None:
    inventory = inv(gpu(0, 80), gpu(1, 24))
    d = place(GIB, inventory, {}, pinned_device="gpu:0")
    assert d.device.id == "gpu:0" and d.reason_code == "pinned"  # type: ignore[union-attr]
    full = place(5 * GIB, inventory, {"gpu:1": 20 * GIB}, max_utilization=1.0,
                 pinned_device="gpu:1")
    assert full.device is None and full.reason_code == "pinned-no-fit"
    assert "4.00 GiB free" in full.reason
    unknown = place(GIB, inventory, {}, pinned_device="gpu:7")
    assert unknown.device is None and unknown.reason_code == "pinned-unknown-device"
    assert "gpu:7" in unknown.reason and "gpu:0, gpu:1" in unknown.reason
    huge = place(50 * GIB, inventory, {}, pinned_device="gpu:1")
    assert huge.reason_code == "too-large"


def test_bad_strategy_rejected() -> None:
    with pytest.raises(ValueError):
        place(1, inv(gpu(0, 1)), {}, strategy="random")


def test_decisions_are_frozen() -> None:
    c = choose_runtime(LLAMA, enabled=ALL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.runtime = "x"  # type: ignore[misc]
