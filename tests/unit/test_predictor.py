"""TransformersPredictor against tiny random-weight models built offline.

Outputs of random models are gibberish, so these tests check the contract the
gateway relies on: JSON-able shapes, exact max_new_tokens accounting, and that
client mistakes surface as BadRequestError (HTTP 422) rather than crashes.
"""

from __future__ import annotations

import importlib.util
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.transformers_predictor import TransformersPredictor, supported_tasks

REPO_ROOT = Path(__file__).resolve().parents[2]

# model kind (see examples/make_tiny_models.py) -> task it is served as
KIND_TASKS: dict[str, str] = {
    "llama": "text-generation",
    "gpt2": "text-generation",
    "t5": "text2text-generation",
    "bert-mlm": "fill-mask",
    "bert-classifier": "text-classification",
    "bert-ner": "token-classification",
    "bert-embedder": "feature-extraction",
}
HIDDEN_SIZE = 64


def _load_make_model() -> Any:
    """examples/ is not a package, so import the script by path."""
    spec = importlib.util.spec_from_file_location("make_tiny_models", REPO_ROOT / "examples" / "make_tiny_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    make_model = _load_make_model()
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: make_model(kind, root / kind) for kind in KIND_TASKS}


@pytest.fixture(scope="module")
def predictors(model_dirs: dict[str, Path]) -> Iterator[dict[str, TransformersPredictor]]:
    """One predictor per kind, loaded with outbound connections forbidden."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        yield {kind: TransformersPredictor(str(path), KIND_TASKS[kind]) for kind, path in model_dirs.items()}


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("predictor tried to open a network connection")


@pytest.fixture(autouse=True)
def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _no_network)


def _roundtrip(result: Any) -> Any:
    """The gateway json.dumps results; any numpy/tensor leftovers would fail here."""
    return json.loads(json.dumps(result))


# --------------------------------------------------------------------------- models


def test_tiny_models_are_small_and_complete(model_dirs: dict[str, Path]) -> None:
    for kind, path in model_dirs.items():
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names, kind
        size = sum(p.stat().st_size for p in path.iterdir())
        assert size < 5_000_000, f"{kind} is {size} bytes"
    llama = json.loads((model_dirs["llama"] / "config.json").read_text())
    assert llama["hidden_size"] // llama["num_attention_heads"] >= 32  # vLLM CPU minimum head_dim
    assert "chat_template" in json.loads((model_dirs["llama"] / "tokenizer_config.json").read_text())


def test_tokenizer_fills_model_vocab(predictors: dict[str, TransformersPredictor]) -> None:
    """Every id a random model can emit must decode to something."""
    for kind, predictor in predictors.items():
        assert len(predictor._tokenizer) == predictor._model.config.vocab_size, kind


def test_chat_template_renders(predictors: dict[str, TransformersPredictor]) -> None:
    tok = predictors["llama"]._tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


# --------------------------------------------------------------------------- construction


def test_supported_tasks_cover_every_kind() -> None:
    assert set(KIND_TASKS.values()) <= set(supported_tasks())


def test_unsupported_task_rejected_at_init(model_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unsupported task"):
        TransformersPredictor(str(model_dirs["llama"]), "image-classification")


def test_non_directory_rejected_without_download() -> None:
    with pytest.raises(ValueError, match="not a local directory"):
        TransformersPredictor("gpt2", "text-generation")


# --------------------------------------------------------------------------- output shapes


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_generation_shape(predictors: dict[str, TransformersPredictor], kind: str) -> None:
    out = _roundtrip(predictors[kind].predict(["hello world", "the model"], {"max_new_tokens": 4}))
    assert isinstance(out, list) and len(out) == 2
    for item in out:
        assert isinstance(item["generated_text"], str)
        assert 1 <= item["num_generated_tokens"] <= 4
        assert item["finish_reason"] in {"stop", "length"}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("max_new_tokens", [1, 7])
def test_generation_respects_max_new_tokens(
    predictors: dict[str, TransformersPredictor], kind: str, max_new_tokens: int
) -> None:
    """Cross-check against generate() directly: same greedy tokens, never more than asked."""
    predictor = predictors[kind]
    out = predictor.predict("hello world", {"max_new_tokens": max_new_tokens})
    assert out["num_generated_tokens"] <= max_new_tokens

    tok, model = predictor._tokenizer, predictor._model
    ids = tok("hello world", return_tensors="pt")
    seq = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)[0]
    expected = seq[1:] if kind == "t5" else seq[ids["input_ids"].shape[1] :]
    assert out["num_generated_tokens"] == len(expected)
    assert out["generated_text"] == tok.decode(expected, skip_special_tokens=True)


def test_generation_sampling_and_full_text(predictors: dict[str, TransformersPredictor]) -> None:
    params = {"max_new_tokens": 3, "temperature": 0.8, "top_p": 0.9, "return_full_text": True}
    out = _roundtrip(predictors["llama"].predict("hello", params))
    assert out["generated_text"].startswith("hello")


def test_generation_rejects_prompt_beyond_context(predictors: dict[str, TransformersPredictor]) -> None:
    with pytest.raises(BadRequestError, match="context"):
        predictors["gpt2"].predict("hello " * 600, {"max_new_tokens": 8})


def test_fill_mask_shape(predictors: dict[str, TransformersPredictor]) -> None:
    out = _roundtrip(predictors["bert-mlm"].predict("hello [MASK] world", {"top_k": 3}))
    assert len(out) == 3
    for cand in out:
        assert set(cand) == {"score", "token", "token_str", "sequence"}
        assert isinstance(cand["score"], float) and isinstance(cand["token"], int)
    assert [c["score"] for c in out] == sorted((c["score"] for c in out), reverse=True)


def test_fill_mask_without_mask_names_the_token(predictors: dict[str, TransformersPredictor]) -> None:
    with pytest.raises(BadRequestError, match=r"\[MASK\]"):
        predictors["bert-mlm"].predict("no mask here", None)


def test_text_classification_shape(predictors: dict[str, TransformersPredictor]) -> None:
    predictor = predictors["bert-classifier"]
    single = _roundtrip(predictor.predict("great movie", None))
    assert len(single) == 1 and single[0]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    batch = _roundtrip(predictor.predict(["great movie", "bad plot"], {"top_k": 10}))
    assert len(batch) == 2
    for labels in batch:
        assert {d["label"] for d in labels} == {"NEGATIVE", "NEUTRAL", "POSITIVE"}  # top_k clamped to 3
        assert abs(sum(d["score"] for d in labels) - 1.0) < 1e-4


def test_token_classification_shape(predictors: dict[str, TransformersPredictor]) -> None:
    predictor = predictors["bert-ner"]
    for strategy, key in [("none", "entity"), ("simple", "entity_group")]:
        out = _roundtrip(predictor.predict("alice went to paris", {"aggregation_strategy": strategy}))
        assert isinstance(out, list)
        for ent in out:
            assert isinstance(ent[key], str) and isinstance(ent["score"], float)
            assert isinstance(ent["start"], int) and isinstance(ent["end"], int)


def test_feature_extraction_shapes(predictors: dict[str, TransformersPredictor]) -> None:
    predictor = predictors["bert-embedder"]
    pooled = _roundtrip(predictor.predict(["alice", "bob went to paris"], None))
    assert [len(v) for v in pooled] == [HIDDEN_SIZE, HIDDEN_SIZE]
    assert all(isinstance(x, float) for x in pooled[0])
    per_token = _roundtrip(predictor.predict("alice went home", {"pooling": "none"}))
    assert len(per_token) >= 3 and all(len(row) == HIDDEN_SIZE for row in per_token)
    cls = predictor.predict("alice went home", {"pooling": "cls"})
    assert cls == pytest.approx(per_token[0], abs=1e-5)


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("kind", "parameters"),
    [
        ("llama", {"max_tokens": 5}),  # unknown name (OpenAI spelling)
        ("llama", {"stop": ["\n"]}),  # not supported yet
        ("llama", {"max_new_tokens": "5"}),
        ("llama", {"max_new_tokens": True}),
        ("llama", {"max_new_tokens": 0}),
        ("llama", {"max_new_tokens": 10_000}),
        ("llama", {"temperature": 0}),
        ("llama", {"top_p": 1.5}),
        ("llama", {"do_sample": "yes"}),
        ("t5", {"return_full_text": True}),
        ("bert-mlm", {"top_k": 2.5}),
        ("bert-classifier", {"top_k": 0}),
        ("bert-classifier", {"max_new_tokens": 3}),
        ("bert-ner", {"aggregation_strategy": "bogus"}),
        ("bert-embedder", {"pooling": "max"}),
        ("bert-embedder", ["pooling"]),
    ],
)
def test_bad_parameters(predictors: dict[str, TransformersPredictor], kind: str, parameters: Any) -> None:
    text = "hello [MASK]" if kind == "bert-mlm" else "hello"
    with pytest.raises(BadRequestError):
        predictors[kind].predict(text, parameters)


@pytest.mark.parametrize("inputs", [42, [], ["ok", 3], None, {"text": "hi"}])
def test_bad_inputs(predictors: dict[str, TransformersPredictor], inputs: Any) -> None:
    with pytest.raises(BadRequestError):
        predictors["bert-classifier"].predict(inputs, None)


def test_bad_request_is_a_value_error() -> None:
    assert issubclass(BadRequestError, ValueError)
    assert BadRequestError("boom").message == "boom"
