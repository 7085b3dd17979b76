"""KServe v2 routes over a real orchestrator with fake runtimes: a pass-through runtime
(declares Capability.KSERVE_V2, like Triton) and an adapted one (like Ray Serve / vLLM);
plus the pure tensor codec (JSON and binary tensors)."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.gateway.kserve_tensors import (
    AdaptedRequest,
    adapted_request,
    decode_bytes_tensor,
    encode_answer,
    encode_bytes_tensor,
)
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator
from modelium.runtimes.base import Capability, ModelNotLoadedError, V2Answer
from modelium.runtimes.errors import BadRequestError
from tests.unit.fakes import FakeManager, make_config_only_model

TRITON_METADATA = {"name": "enc", "versions": ["1"], "platform": "python",
                   "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}],
                   "outputs": [{"name": "OUTPUT", "datatype": "BYTES", "shape": [-1, 1]}]}


class FakeKServe(FakeManager):
    """Triton stand-in: answers v2 infer bodies itself (records what it was sent)."""

    name = "triton"
    capabilities = frozenset({Capability.KSERVE_V2})

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[str, bytes, int | None]] = []
        self.lose_next = False

    async def v2_metadata(self, name: str) -> dict[str, Any]:
        if name not in self.loaded:
            raise ModelNotLoadedError(name)
        return dict(TRITON_METADATA, name=name)

    async def v2_infer(self, name: str, body: bytes, header_length: int | None) -> V2Answer:
        if name not in self.loaded:
            raise ModelNotLoadedError(name)
        if self.lose_next:  # the runtime lost the model: confirmed by loaded_models()
            self.lose_next = False
            self.loaded.pop(name)
            raise ModelNotLoadedError(f"{name} is gone")
        self.bodies.append((name, body, header_length))
        if b"bad" in body:
            raise BadRequestError("Triton rejected the request: unexpected datatype")
        if header_length is not None:  # echo the binary part back as OUTPUT
            raw = body[header_length:]
            head = json.dumps({"model_name": name, "outputs": [
                {"name": "OUTPUT", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}]}
            ).encode()
            return V2Answer(head + raw, "application/octet-stream", len(head))
        return V2Answer(json.dumps({"model_name": name, "outputs": [
            {"name": "OUTPUT", "datatype": "FP32", "shape": [1], "data": [len(body)]}]}).encode())


class FakeAdapted(FakeManager):
    """Ray Serve stand-in answering one result per text (the predictor's list shape)."""

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        await super().infer(name, inputs, parameters)
        return [{"label": text.upper(), "params": parameters} for text in inputs]


@pytest.fixture
def gateway(tmp_path: Path):
    stack = contextlib.ExitStack()

    def build(**config: Any) -> tuple[TestClient, Orchestrator, FakeKServe, FakeAdapted]:
        repo = tmp_path / "models/repository"
        make_config_only_model(repo / "enc", architectures=["BertModel"], model_type="bert")
        make_config_only_model(repo / "cls", architectures=["BertForSequenceClassification"], model_type="bert")
        config.setdefault("models", {"enc": {"runtime": "triton"}, "cls": {"runtime": "ray_serve"}})
        settings = settings_from_dict(config, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
        triton, ray = FakeKServe(), FakeAdapted()
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"triton": triton, "ray_serve": ray}, inventory, MemoryLedger(),
                                    metrics)
        client = stack.enter_context(TestClient(create_app(orchestrator, metrics)))
        client.portal.call(orchestrator.start)
        client.portal.call(orchestrator.quiesce)
        return client, orchestrator, triton, ray

    yield build
    stack.close()


def _text_infer(*texts: str, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}], **extra}


# --------------------------------------------------------------------------- routes


def test_health_server_metadata_and_readiness(gateway) -> None:
    client, orchestrator, _, _ = gateway()
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    assert client.get("/v2/models/enc/ready").json() == {"name": "enc", "ready": True}
    client.portal.call(orchestrator.unload, "enc")
    not_ready = client.get("/v2/models/enc/ready")
    assert not_ready.status_code == 400 and "unloaded" in not_ready.json()["error"]
    missing = client.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_ready_never_loads_an_unloaded_model(gateway) -> None:
    client, orchestrator, triton, _ = gateway()
    client.portal.call(orchestrator.unload, "enc")
    loads = triton.calls.count(("load", "enc"))
    for _ in range(3):
        assert client.get("/v2/models/enc/ready").status_code == 400
        assert client.get("/v2/models/enc").status_code == 400  # Triton metadata needs the model loaded
    client.portal.call(orchestrator.quiesce)
    assert triton.calls.count(("load", "enc")) == loads
    assert orchestrator.get("enc").state.value == "unloaded"


def test_metadata_is_the_runtimes_own_or_the_adapted_contract(gateway) -> None:
    client, _, _, _ = gateway()
    triton = client.get("/v2/models/enc").json()
    assert triton["inputs"] == TRITON_METADATA["inputs"] and triton["name"] == "enc"
    adapted = client.get("/v2/models/cls").json()
    assert adapted["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert adapted["outputs"][0]["name"] == "output" and adapted["platform"] == "modelium_ray_serve"


def test_pass_through_relays_json_and_binary_bodies_byte_for_byte(gateway) -> None:
    client, _, triton, _ = gateway()
    body = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]}]})
    answer = client.post("/v2/models/enc/infer", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [len(body)]
    assert triton.bodies[-1] == ("enc", body.encode(), None)

    raw = encode_bytes_tensor([b"hello"])
    head = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    binary = client.post("/v2/models/enc/infer", content=head + raw,
                         headers={"Inference-Header-Content-Length": str(len(head)),
                                  "content-type": "application/octet-stream"})
    assert binary.status_code == 200, binary.text
    assert triton.bodies[-1] == ("enc", head + raw, len(head))
    length = int(binary.headers["inference-header-content-length"])
    assert binary.content[length:] == raw and json.loads(binary.content[:length])["model_name"] == "enc"


def test_pass_through_error_is_v2_shaped_400_with_request_id(gateway) -> None:
    client, _, _, _ = gateway()
    bad = client.post("/v2/models/enc/infer", json={"inputs": [{"name": "bad", "shape": [1]}]},
                      headers={"X-Request-ID": "req-42"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "Triton rejected the request: unexpected datatype", "request_id": "req-42"}
    assert bad.headers["x-request-id"] == "req-42"


def test_unloaded_model_is_loaded_by_a_v2_infer(gateway) -> None:
    client, orchestrator, triton, _ = gateway()
    client.portal.call(orchestrator.unload, "enc")
    assert "enc" not in triton.loaded
    answer = client.post("/v2/models/enc/infer", json={"inputs": [{"name": "TEXT", "shape": [1], "data": ["x"]}]})
    assert answer.status_code == 200, answer.text
    assert "enc" in triton.loaded and orchestrator.get("enc").state.value == "ready"


def test_a_lost_model_is_reloaded_and_the_infer_tried_again(gateway) -> None:
    client, _, triton, _ = gateway()
    triton.lose_next = True
    answer = client.post("/v2/models/enc/infer", json={"inputs": [{"name": "TEXT", "shape": [1], "data": ["x"]}]})
    assert answer.status_code == 200, answer.text
    assert triton.calls.count(("load", "enc")) == 2


def test_adapted_infer_sends_text_rows_and_parameters(gateway) -> None:
    client, _, _, _ = gateway()
    answer = client.post("/v2/models/cls/infer", json=_text_infer(
        "a", "b", id="r1", parameters={"top_k": 2, "binary_data_output": False}))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "cls" and body["id"] == "r1"
    (output,) = body["outputs"]
    assert output["name"] == "output" and output["datatype"] == "BYTES" and output["shape"] == [2]
    assert [json.loads(d) for d in output["data"]] == [{"label": "A", "params": {"top_k": 2}},
                                                       {"label": "B", "params": {"top_k": 2}}]


def test_adapted_binary_request_and_binary_output(gateway) -> None:
    client, _, _, _ = gateway()
    raw = encode_bytes_tensor(["héllo".encode(), b"x"])
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    answer = client.post("/v2/models/cls/infer", content=head + raw,
                         headers={"Inference-Header-Content-Length": str(len(head))})
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.content[:length])
    assert "data" not in header["outputs"][0]
    documents = decode_bytes_tensor(answer.content[length:])
    assert [json.loads(d)["label"] for d in documents] == ["HÉLLO", "X"]


@pytest.mark.parametrize("body, fragment", [
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, '"text"'),
    ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "BYTES"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, "2 row"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]}]}, "strings"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
      "outputs": [{"name": "other"}]}, "output"),
])
def test_adapted_mistakes_are_400_and_load_nothing(gateway, body, fragment) -> None:
    client, orchestrator, _, ray = gateway()
    client.portal.call(orchestrator.unload, "cls")
    answer = client.post("/v2/models/cls/infer", json=body)
    assert answer.status_code == 400, answer.text
    assert fragment in answer.json()["error"]
    client.portal.call(orchestrator.quiesce)
    assert "cls" not in ray.loaded


def test_batch_limit_priority_header_and_malformed_header(gateway) -> None:
    client, _, _, _ = gateway(gateway={"max_batch_items": 2})
    too_many = client.post("/v2/models/cls/infer", json=_text_infer("a", "b", "c"))
    assert too_many.status_code == 400 and "max_batch_items" in too_many.json()["error"]
    rows = client.post("/v2/models/enc/infer", json={"inputs": [{"name": "TEXT", "shape": [3, 1], "data": []}]})
    assert rows.status_code == 400 and "at most 2 rows" in rows.json()["error"]
    priority = client.post("/v2/models/cls/infer", json=_text_infer("a"), headers={"X-Priority": "urgent"})
    assert priority.status_code == 400 and "X-Priority" in priority.json()["error"]
    length = client.post("/v2/models/cls/infer", content=b"{}", headers={"Inference-Header-Content-Length": "x"})
    assert length.status_code == 400 and "Inference-Header-Content-Length" in length.json()["error"]


def test_api_keys_guard_model_routes_but_not_health(gateway) -> None:
    client, _, _, _ = gateway(gateway={"api_keys": ["s3cret"]})
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/enc").status_code == 401
    assert client.post("/v2/models/cls/infer", json=_text_infer("a")).status_code == 401
    ok = client.post("/v2/models/cls/infer", json=_text_infer("a"), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text


def test_model_that_fails_is_409_in_v2_shape(gateway) -> None:
    client, orchestrator, _, ray = gateway()
    ray.fail_loads.add("cls")
    client.portal.call(orchestrator.unload, "cls")
    answer = client.post("/v2/models/cls/infer", json=_text_infer("a"))
    assert answer.status_code in (409, 503), answer.text
    assert isinstance(answer.json()["error"], str) and "cls" in answer.json()["error"]


# --------------------------------------------------------------------------- codec


def test_bytes_tensor_round_trip_and_truncation() -> None:
    items = ["", "a", "ünï", "x" * 300]
    raw = encode_bytes_tensor([s.encode() for s in items])
    assert raw[:4] == struct.pack("<I", 0) and decode_bytes_tensor(raw) == items
    with pytest.raises(BadRequestError, match="overruns"):
        decode_bytes_tensor(raw[:-1])
    with pytest.raises(BadRequestError, match="4-byte"):
        decode_bytes_tensor(b"\x01\x00")


def test_request_parsing_rules() -> None:
    nested = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}],
                         "parameters": {"max_new_tokens": 3, "binary_data_output": True}}).encode()
    parsed = adapted_request(nested, None)
    assert parsed.texts == ["a", "b"] and parsed.parameters == {"max_new_tokens": 3} and parsed.binary_output
    per_output = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
                             "parameters": {"binary_data_output": True},
                             "outputs": [{"name": "output", "parameters": {"binary_data": False}}]}).encode()
    assert adapted_request(per_output, None).binary_output is False
    with pytest.raises(BadRequestError, match="binary_data_size"):
        adapted_request(json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                "parameters": {"binary_data_size": 9}}]}).encode() + b"\0\0\0\0",
                        len(json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                    "parameters": {"binary_data_size": 9}}]})))
    with pytest.raises(BadRequestError, match="Inference-Header-Content-Length"):
        adapted_request(b"{}", 10)
    with pytest.raises(BadRequestError, match="JSON"):
        adapted_request(b"{nope", None)


def test_answer_encoding_json_and_binary() -> None:
    request = AdaptedRequest("id-1", ["a"], {}, binary_output=False)
    plain = encode_answer("m", request, [{"x": 1}])
    assert plain.header_length is None and plain.content_type == "application/json"
    assert json.loads(plain.content)["outputs"][0]["data"] == ['{"x":1}']
    binary = encode_answer("m", AdaptedRequest(None, ["a"], {}, binary_output=True), [[1.5, 2]])
    head = json.loads(binary.content[:binary.header_length])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(binary.content) - binary.header_length
    assert decode_bytes_tensor(binary.content[binary.header_length:]) == ["[1.5,2]"]
    assert "id" not in head


def test_version_one_is_the_model_any_other_is_404(gateway) -> None:
    client, _, _, _ = gateway()
    assert client.get("/v2/models/cls/versions/1").json()["name"] == "cls"
    assert client.get("/v2/models/cls/versions/1/ready").status_code == 200
    assert client.post("/v2/models/cls/versions/1/infer", json=_text_infer("a")).status_code == 200
    other = client.post("/v2/models/cls/versions/2/infer", json=_text_infer("a"))
    assert other.status_code == 404 and "version" in other.json()["error"]
    assert client.get("/v2/models/cls/versions/7/ready").status_code == 404
