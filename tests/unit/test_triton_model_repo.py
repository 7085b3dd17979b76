"""Triton model-repository entries: config.pbtxt per case, and the python-backend
model.py templates run in-process against a fake ``triton_python_backend_utils``.

No Triton server is needed: the generated config.pbtxt is parsed back with a small
protobuf-text parser, and the templates are imported from the written entry.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.make_tiny_models import make_model
from modelium.analysis import analyze_folder
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.transformers_predictor import TransformersPredictor
from modelium.runtimes.triton.model_repo import (
    HF_SUBDIR,
    set_config_name,
    write_model_entry,
)
from tests.e2e.fixtures_triton import (
    FAILING_MESSAGE,
    make_failing_python_model,
    make_onnx_model,
    make_python_model_with_config,
    onnx_reference,
)

ort = pytest.importorskip("onnxruntime")


# --- a small protobuf text-format parser (enough for config.pbtxt) ----------------------------

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Every field -> list of values (repeated or not); messages are dicts the same way."""
    text = "\n".join(line.split("#", 1)[0] if '"' not in line else line for line in text.splitlines())
    tokens = _TOKEN.findall(text)
    pos = 0

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return json.loads(tok)
        try:
            return int(tok)
        except ValueError:
            return tok

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        return scalar(tok)

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        result: dict[str, list[Any]] = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            values = result.setdefault(name, [])
            if tokens[pos] == "[":
                pos += 1
                while tokens[pos] != "]":
                    if tokens[pos] == ",":
                        pos += 1
                        continue
                    values.append(value())
                pos += 1
            else:
                values.append(value())
        pos += 1  # the closing brace
        return result

    return message(None)


def one(msg: dict[str, list[Any]], field: str) -> Any:
    [v] = msg[field]
    return v


def tensors(cfg: dict, field: str) -> dict[str, dict[str, Any]]:
    return {
        one(t, "name"): {"data_type": one(t, "data_type"), "dims": t.get("dims", []),
                         "optional": t.get("optional", [False])[0]}
        for t in cfg.get(field, [])
    }


def instance_group(cfg: dict) -> tuple[str, list[int]]:
    [group] = cfg["instance_group"]
    return one(group, "kind"), group.get("gpus", [])


def triton_args(entry: Path, kind: str = "CPU", device_id: int = 0) -> dict[str, str]:
    """What Triton passes to initialize(): the config as JSON, instance kind and device."""
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    as_json = {
        "name": one(cfg, "name"),
        "max_batch_size": one(cfg, "max_batch_size"),
        "input": [{"name": n} for n in tensors(cfg, "input")],
        "output": [{"name": n} for n in tensors(cfg, "output")],
        "parameters": {one(p, "key"): {"string_value": one(one(p, "value"), "string_value")}
                       for p in cfg.get("parameters", [])},
    }
    return {
        "model_config": json.dumps(as_json),
        "model_instance_kind": kind,
        "model_instance_device_id": str(device_id),
        "model_repository": str(entry),
        "model_version": "1",
        "model_name": as_json["name"],
    }


# --- fake triton_python_backend_utils ------------------------------------------------------


class FakeTritonError(Exception):
    INTERNAL = "INTERNAL"
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, msg: str, code: str = "INTERNAL") -> None:
        super().__init__(msg)
        self._msg, self.code = msg, code

    def message(self) -> str:
        return self._msg


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeRequest:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = {k: FakeTensor(k, v) for k, v in inputs.items()}


class FakeResponse:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.TritonError = FakeTritonError
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    return module


@pytest.fixture
def load_template(monkeypatch):
    """Import an entry's 1/model.py the way the stub does, with the fake pb_utils."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())

    def load(entry: Path):
        spec = importlib.util.spec_from_file_location(
            f"triton_model_{uuid.uuid4().hex}", entry / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def strings(*values: str) -> np.ndarray:
    return np.array([[v.encode()] for v in values], dtype=np.object_)


# --- model folders (built once per module) ---------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return make_model("bert-classifier", tmp_path_factory.mktemp("hf") / "bert-classifier")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("onnx") / "linear")


def _write(repo: Path, name: str, src: Path, *, kind: str = "cpu", gpu: int | None = None,
           task: str | None = None, **kwargs) -> Path:
    profile = analyze_folder(src)
    return write_model_entry(repo, name, src, profile, device_kind=kind, gpu_index=gpu,
                             task=task or profile.task, **kwargs)


def _no_temp_dirs(repo: Path) -> bool:
    return not [p for p in repo.iterdir() if p.name.startswith(".")]


# --- analyzer on Triton-bound folders --------------------------------------------------------


def test_analyzer_profiles_onnx_and_own_config_folders(onnx_dir, tmp_path):
    onnx = analyze_folder(onnx_dir)
    assert (onnx.format, onnx.task) == ("onnx", "onnx")
    own = analyze_folder(make_python_model_with_config(tmp_path / "own", "own"))
    assert (own.format, own.task, own.model_type) == ("triton", "triton", "python")


# --- case 1: the folder's own config.pbtxt ---------------------------------------------------


def test_own_config_is_copied_with_name_rewritten(tmp_path):
    src = make_python_model_with_config(tmp_path / "src", "original-name")
    before = (src / "config.pbtxt").read_text()
    entry = _write(tmp_path / "repo", "served", src, kind="gpu", gpu=0)
    assert entry == tmp_path / "repo" / "served"
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert one(cfg, "name") == "served"
    assert set(tensors(cfg, "input")) == {"INPUT0"}  # nested names untouched
    assert instance_group(cfg) == ("KIND_CPU", [])  # the user's, not the placement
    assert (entry / "1" / "model.py").read_text() == (src / "1" / "model.py").read_text()
    assert (src / "config.pbtxt").read_text() == before  # never written through a link
    assert _no_temp_dirs(tmp_path / "repo")


def test_set_config_name_only_touches_the_top_level_name():
    text = ('# name: "comment"\nbackend: "python"\nname : "old"\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    new = set_config_name(text, "new")
    assert one(parse_pbtxt(new), "name") == "new"
    assert '# name: "comment"' in new and 'name: "x"' in new
    added = set_config_name('backend: "python"\n', "added")
    assert one(parse_pbtxt(added), "name") == "added"


def test_failing_model_fixture_raises_in_initialize(tmp_path, load_template):
    entry = _write(tmp_path / "repo", "broken", make_failing_python_model(tmp_path / "b", "b"))
    model = load_template(entry).TritonPythonModel()
    with pytest.raises(RuntimeError, match=FAILING_MESSAGE):
        model.initialize(triton_args(entry))


def test_own_config_add_one_fixture_runs(tmp_path, load_template):
    entry = _write(tmp_path / "repo", "addone", make_python_model_with_config(tmp_path / "a", "a"))
    model = load_template(entry).TritonPythonModel()
    model.initialize(triton_args(entry))
    [resp] = model.execute([FakeRequest(INPUT0=np.array([1.0, 2.5], dtype=np.float32))])
    np.testing.assert_allclose(resp.outputs["OUTPUT0"], [2.0, 3.5])


# --- case 2: ONNX ----------------------------------------------------------------------------


def test_onnx_config_matches_graph_with_dynamic_batching(onnx_dir, tmp_path):
    entry = _write(tmp_path / "repo", "linear", onnx_dir, kind="gpu", gpu=1, max_batch_size=16)
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert one(cfg, "name") == "linear"
    assert one(cfg, "backend") == "python"
    assert one(cfg, "max_batch_size") == 16
    assert "dynamic_batching" in cfg
    assert tensors(cfg, "input") == {"INPUT": {"data_type": "TYPE_FP32", "dims": [4], "optional": False}}
    assert tensors(cfg, "output") == {"OUTPUT": {"data_type": "TYPE_FP32", "dims": [2], "optional": False}}
    assert instance_group(cfg) == ("KIND_GPU", [1])
    assert (entry / "1" / "model.onnx").is_file() and (entry / "1" / "model.py").is_file()
    # Hard link, not a copy or a symlink.
    assert (entry / "1" / "model.onnx").stat().st_ino == (onnx_dir / "model.onnx").stat().st_ino
    assert not (entry / "1" / "model.onnx").is_symlink()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_fixed_shapes_and_int_types_without_batching(tmp_path):
    import torch

    class Pick(torch.nn.Module):
        def forward(self, x, idx):
            return x[:, :2] * 2, idx + 1

    src = tmp_path / "fixed"
    src.mkdir()
    torch.onnx.export(Pick(), (torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64)),
                      str(src / "model.onnx"), input_names=["x", "idx"],
                      output_names=["y", "idx_out"], dynamo=False)
    entry = _write(tmp_path / "repo", "fixed", src)
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert one(cfg, "max_batch_size") == 0
    assert "dynamic_batching" not in cfg
    assert tensors(cfg, "input")["x"]["dims"] == [3, 4]
    assert tensors(cfg, "input")["idx"] == {"data_type": "TYPE_INT64", "dims": [3], "optional": False}
    assert tensors(cfg, "output")["y"]["dims"] == [3, 2]
    assert instance_group(cfg) == ("KIND_CPU", [])


def test_onnx_template_matches_onnxruntime(onnx_dir, tmp_path, load_template):
    entry = _write(tmp_path / "repo", "linear", onnx_dir)
    model = load_template(entry).TritonPythonModel()
    model.initialize(triton_args(entry))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    bad = np.zeros((1, 3), dtype=np.float32)
    responses = model.execute([FakeRequest(INPUT=a), FakeRequest(INPUT=bad), FakeRequest(INPUT=b)])
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for resp, x in ((responses[0], a), (responses[2], b)):
        assert resp.error is None
        [expected] = session.run(["OUTPUT"], {"INPUT": x})
        np.testing.assert_allclose(resp.outputs["OUTPUT"], expected, rtol=1e-6)
        np.testing.assert_allclose(resp.outputs["OUTPUT"], onnx_reference(x), rtol=1e-5, atol=1e-6)
    assert isinstance(responses[1].error, FakeTritonError)
    assert responses[1].error.code == "INVALID_ARG"
    assert responses[1].error.message()


def test_onnx_template_refuses_gpu_without_cuda_provider(onnx_dir, tmp_path, load_template):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    entry = _write(tmp_path / "repo", "linear", onnx_dir, kind="gpu", gpu=0)
    model = load_template(entry).TritonPythonModel()
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        model.initialize(triton_args(entry, "GPU", 0))


# --- case 3: Hugging Face non-generative -----------------------------------------------------


@pytest.mark.parametrize(("kind", "gpu", "expected"), [
    ("cpu", None, ("KIND_CPU", [])),
    ("gpu", 2, ("KIND_GPU", [2])),
])
def test_transformers_config(bert_dir, tmp_path, kind, gpu, expected):
    entry = _write(tmp_path / "repo", "bert", bert_dir, kind=kind, gpu=gpu)
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert one(cfg, "backend") == "python"
    assert one(cfg, "max_batch_size") == 8
    assert "dynamic_batching" in cfg
    assert tensors(cfg, "input") == {
        "TEXT": {"data_type": "TYPE_STRING", "dims": [1], "optional": False},
        "PARAMETERS": {"data_type": "TYPE_STRING", "dims": [1], "optional": "true"},
    }
    assert tensors(cfg, "output") == {"OUTPUT": {"data_type": "TYPE_STRING", "dims": [1], "optional": False}}
    assert instance_group(cfg) == expected
    params = json.loads(triton_args(entry)["model_config"])["parameters"]
    assert params["task"] == {"string_value": "text-classification"}
    # The stub ignores PYTHONPATH; the template puts this on sys.path when needed.
    assert Path(params["modelium_root"]["string_value"], "modelium", "__init__.py").is_file()
    weights = entry / "1" / HF_SUBDIR / "model.safetensors"
    assert weights.stat().st_ino == (bert_dir / "model.safetensors").stat().st_ino


def test_transformers_template_classifies(bert_dir, tmp_path, load_template):
    entry = _write(tmp_path / "repo", "bert", bert_dir)
    model = load_template(entry).TritonPythonModel()
    model.initialize(triton_args(entry))
    direct = TransformersPredictor(str(bert_dir), "text-classification", "cpu")
    one_req = FakeRequest(TEXT=strings("good movie", "bad movie"))
    top2 = FakeRequest(TEXT=strings("good movie"), PARAMETERS=strings(json.dumps({"top_k": 2})))
    bad = FakeRequest(TEXT=strings("x"), PARAMETERS=strings(json.dumps({"bogus": 1})))
    not_json = FakeRequest(TEXT=strings("x"), PARAMETERS=strings("{nope"))
    r1, r2, r3, r4 = model.execute([one_req, top2, bad, not_json])
    rows = [json.loads(v[0]) for v in r1.outputs["OUTPUT"]]
    assert r1.outputs["OUTPUT"].shape == (2, 1)
    assert rows == json.loads(json.dumps(direct.predict(["good movie", "bad movie"])))
    assert {"label", "score"} <= set(rows[0][0])
    assert len(json.loads(r2.outputs["OUTPUT"][0][0])) == 2
    for resp in (r3, r4):
        assert isinstance(resp.error, FakeTritonError) and resp.error.code == "INVALID_ARG"
    assert "bogus" in r3.error.message()
    assert "JSON" in r4.error.message()


def test_transformers_template_device_and_error_mapping(bert_dir, tmp_path, load_template):
    entry = _write(tmp_path / "repo", "bert", bert_dir, kind="gpu", gpu=1)
    module = load_template(entry)
    seen = {}

    class FakePredictor:
        def __init__(self, model_dir, task, device):
            seen.update(model_dir=model_dir, task=task, device=device)

        def predict_batch(self, texts, params):
            if "bad" in texts:
                raise BadRequestError("no good")
            if "crash" in texts:
                raise KeyError("boom")
            return [{"echo": text, "params": params} for text in texts]

    module.TransformersPredictor = FakePredictor
    model = module.TritonPythonModel()
    model.initialize(triton_args(entry, "GPU", 1))
    assert seen == {"model_dir": str(entry / "1" / HF_SUBDIR), "task": "text-classification",
                    "device": "cuda:1"}
    ok, bad, crash, mismatch = model.execute([
        FakeRequest(TEXT=strings("a", "b"), PARAMETERS=strings('{"p": 1}', '{"p": 2}')),
        FakeRequest(TEXT=strings("bad")),
        FakeRequest(TEXT=strings("crash")),
        FakeRequest(TEXT=strings("a", "b", "c"), PARAMETERS=strings("{}", "{}")),
    ])
    assert [json.loads(v[0]) for v in ok.outputs["OUTPUT"]] == [
        {"echo": "a", "params": {"p": 1}}, {"echo": "b", "params": {"p": 2}}]
    assert (bad.error.code, bad.error.message()) == ("INVALID_ARG", "no good")
    assert crash.error.code == "INTERNAL" and "boom" in crash.error.message()
    assert mismatch.error.code == "INVALID_ARG"


# --- refusals and replacement ----------------------------------------------------------------


def test_generative_and_unservable_models_are_refused(bert_dir, tmp_path):
    profile = analyze_folder(bert_dir)
    repo = tmp_path / "repo"
    for task in ("text-generation", "text2text-generation"):
        with pytest.raises(ValueError, match="vLLM or Ray Serve"):
            write_model_entry(repo, "gen", bert_dir, profile, device_kind="cpu",
                              gpu_index=None, task=task)
    with pytest.raises(ValueError, match="question-answering"):
        write_model_entry(repo, "qa", bert_dir, profile, device_kind="cpu", gpu_index=None,
                          task="question-answering")
    with pytest.raises(ValueError, match="gpu_index"):
        write_model_entry(repo, "x", bert_dir, profile, device_kind="gpu", gpu_index=None,
                          task=profile.task)
    with pytest.raises(ValueError, match="name"):
        write_model_entry(repo, "../x", bert_dir, profile, device_kind="cpu", gpu_index=None,
                          task=profile.task)
    assert not repo.exists() or not list(repo.iterdir())


def test_rewrite_replaces_entry_and_failure_keeps_old(onnx_dir, tmp_path):
    repo = tmp_path / "repo"
    first = _write(repo, "m", onnx_dir, kind="gpu", gpu=0)
    second = _write(repo, "m", onnx_dir)
    assert first == second
    assert instance_group(parse_pbtxt((second / "config.pbtxt").read_text()))[0] == "KIND_CPU"
    assert sorted(p.name for p in repo.iterdir()) == ["m"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    profile = analyze_folder(broken)
    with pytest.raises(ValueError, match="ONNX"):
        write_model_entry(repo, "m", broken, profile, device_kind="cpu", gpu_index=None,
                          task=profile.task)
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # old entry kept, no temp dirs
    assert (repo / "m" / "1" / "model.onnx").stat().st_size == (onnx_dir / "model.onnx").stat().st_size


def test_entry_survives_the_source_folder_being_replaced(bert_dir, tmp_path):
    """Filing replaces models/repository/NAME by rename: the hard-linked entry keeps its files."""
    src = tmp_path / "repository" / "bert"
    src.parent.mkdir()
    shutil.copytree(bert_dir, src)
    entry = _write(tmp_path / "triton", "bert", src)
    os.rename(src, tmp_path / "old")
    shutil.rmtree(tmp_path / "old")
    (src).mkdir()
    (src / "config.json").write_text("{}")
    weights = entry / "1" / HF_SUBDIR / "model.safetensors"
    assert weights.stat().st_size == (bert_dir / "model.safetensors").stat().st_size
    assert json.loads((entry / "1" / HF_SUBDIR / "config.json").read_text())["architectures"]
