"""Dynamic batching really batches: the python-backend HF model runs every row of every
request of one ``execute()`` in one forward pass of a tiny random-weight model, and each
row's answer equals what that row alone gives (``TransformersPredictor.predict``).

Forward passes are counted with a forward hook on the predictor's torch model (what the
pipelines and the feature-extraction path both call), recording each call's batch rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from examples.make_tiny_models import make_model
from modelium.runtimes.transformers_predictor import TransformersPredictor
from tests.unit import test_triton_model_repo as repo_tests
from tests.unit.test_triton_model_repo import FakeRequest, _write, strings, triton_args

load_template = repo_tests.load_template  # the fixture: imports 1/model.py with a fake pb_utils

KINDS = {
    "bert-mlm": "fill-mask",
    "bert-classifier": "text-classification",
    "bert-ner": "token-classification",
    "bert-embedder": "feature-extraction",
}
# Different lengths, so the batch really pads.
TEXTS = ["hello [MASK] world", "a much longer sentence with a [MASK] and many more words in it", "[MASK] ."]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch-models")
    return {kind: make_model(kind, root / kind) for kind in KINDS}


def count_forwards(predictor: TransformersPredictor) -> list[int]:
    """Rows of each forward call of the predictor's model, appended as they happen."""
    rows: list[int] = []

    def hook(_module, args, kwargs, _out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows.append(int(ids.shape[0]))

    predictor._model.register_forward_hook(hook, with_kwargs=True)
    return rows


def assert_close(a, b) -> None:
    """Equal structure and strings; floats equal up to float32 rounding (padding is masked,
    but sums over a padded batch round differently)."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    else:
        assert a == b


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_predict_batch_is_one_forward_with_row_by_row_results(model_dirs, kind):
    predictor = TransformersPredictor(str(model_dirs[kind]), KINDS[kind])
    rows = count_forwards(predictor)
    alone = [predictor.predict(text) for text in TEXTS]
    assert rows == [1, 1, 1]  # predict: one forward per text
    rows.clear()
    together = predictor.predict_batch(TEXTS)
    assert rows == [len(TEXTS)]
    assert_close(together, alone)


def test_template_runs_n_requests_of_m_rows_in_one_forward(model_dirs, tmp_path, load_template):
    entry = _write(tmp_path / "repo", "emb", model_dirs["bert-embedder"])
    model = load_template(entry).TritonPythonModel()
    model.initialize(triton_args(entry))
    rows = count_forwards(model.predictor)
    texts = [[f"request {n} row {m}" + " word" * (n + 2 * m) for m in range(2)] for n in range(3)]
    requests = [FakeRequest(TEXT=strings(*rs)) for rs in texts]
    responses = model.execute(requests)
    assert rows == [6]  # 3 requests x 2 rows, one forward
    direct = TransformersPredictor(str(model_dirs["bert-embedder"]), "feature-extraction")
    for response, rs in zip(responses, texts):
        assert response.error is None and response.outputs["OUTPUT"].shape == (2, 1)
        got = [json.loads(v[0]) for v in response.outputs["OUTPUT"]]
        expected = [direct.predict(text) for text in rs]
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-4, atol=1e-5)
        assert len(got[0]) == 64  # the tiny embedder's hidden size


def test_template_groups_rows_by_parameters(model_dirs, tmp_path, load_template):
    entry = _write(tmp_path / "repo", "cls", model_dirs["bert-classifier"])
    model = load_template(entry).TritonPythonModel()
    model.initialize(triton_args(entry))
    rows = count_forwards(model.predictor)
    top1 = FakeRequest(TEXT=strings("good movie", "bad movie"))
    top2 = FakeRequest(TEXT=strings("fine", "odd"), PARAMETERS=strings(json.dumps({"top_k": 2})))
    mixed = FakeRequest(TEXT=strings("x", "y"), PARAMETERS=strings("{}", json.dumps({"top_k": 2})))
    r1, r2, r3 = model.execute([top1, top2, mixed])
    assert sorted(rows) == [3, 3]  # {} : good, bad, x ; top_k 2 : fine, odd, y
    assert [len(json.loads(v[0])) for v in r1.outputs["OUTPUT"]] == [1, 1]
    assert [len(json.loads(v[0])) for v in r2.outputs["OUTPUT"]] == [2, 2]
    assert [len(json.loads(v[0])) for v in r3.outputs["OUTPUT"]] == [1, 2]
    direct = TransformersPredictor(str(model_dirs["bert-classifier"]), "text-classification")
    assert_close(json.loads(r3.outputs["OUTPUT"][1][0]), direct.predict("y", {"top_k": 2}))


def test_a_bad_row_fails_only_its_request(model_dirs, tmp_path, load_template):
    entry = _write(tmp_path / "repo", "mlm", model_dirs["bert-mlm"], task="fill-mask")
    model = load_template(entry).TritonPythonModel()
    model.initialize(triton_args(entry))
    rows = count_forwards(model.predictor)
    good = FakeRequest(TEXT=strings("a [MASK] b", "c [MASK]"))
    bad = FakeRequest(TEXT=strings("no mask here"))
    also_good = FakeRequest(TEXT=strings("[MASK] d"))
    r1, r2, r3 = model.execute([good, bad, also_good])
    assert r2.error is not None and r2.error.code == "INVALID_ARG" and "[MASK]" in r2.error.message()
    assert r1.error is None and r3.error is None
    assert r1.outputs["OUTPUT"].shape == (2, 1) and r3.outputs["OUTPUT"].shape == (1, 1)
    # The shared run stopped at the mask check (before any forward); then each request alone.
    assert rows == [2, 1]


@pytest.mark.parametrize("parameters", [{"pooling": "cls"}, {"pooling": "none"}, {"count_prompt_tokens": True}])
def test_feature_rows_keep_each_rows_own_tokens(model_dirs, parameters):
    predictor = TransformersPredictor(str(model_dirs["bert-embedder"]), "feature-extraction")
    rows = count_forwards(predictor)
    alone = [predictor.predict(text, parameters) for text in TEXTS]
    rows.clear()
    together = predictor.predict_batch(TEXTS, parameters)
    assert rows == [len(TEXTS)]
    assert_close(together, alone)  # "none": per-token lists of each row's own length
