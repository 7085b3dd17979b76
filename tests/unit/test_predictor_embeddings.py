"""feature-extraction with ``count_prompt_tokens`` (what /v1/embeddings asks for): each row
is ``{"embedding", "num_prompt_tokens"}``, the same from ``predict`` (one row at a time)
and ``predict_batch`` (one padded forward pass), with the tokenizer's own counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from examples.make_tiny_models import make_model
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.transformers_predictor import TransformersPredictor

TEXTS = ["the model server is fast and the queue is short", "hi"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformersPredictor, Path]:
    folder = make_model("bert-embedder", tmp_path_factory.mktemp("enc") / "bert")
    return TransformersPredictor(str(folder), "feature-extraction"), folder


def test_rows_carry_the_tokens_the_model_saw(encoder) -> None:
    predictor, folder = encoder
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    counts = [len(tokenizer(t, truncation=True)["input_ids"]) for t in TEXTS]
    assert counts[0] > counts[1] >= 3  # [CLS] hi [SEP] at least
    rows = predictor.predict(TEXTS, {"count_prompt_tokens": True})
    assert [r["num_prompt_tokens"] for r in rows] == counts
    plain = predictor.predict(TEXTS)
    assert [r["embedding"] for r in rows] == plain  # same vectors, only wrapped
    batched = predictor.predict_batch(TEXTS, {"count_prompt_tokens": True})
    assert [r["num_prompt_tokens"] for r in batched] == counts
    for one, many in zip(rows, batched, strict=True):
        assert many["embedding"] == pytest.approx(one["embedding"], rel=1e-4, abs=1e-5)


def test_count_prompt_tokens_must_be_a_boolean(encoder) -> None:
    predictor, _ = encoder
    with pytest.raises(BadRequestError, match="count_prompt_tokens"):
        predictor.predict("x", {"count_prompt_tokens": "yes"})
