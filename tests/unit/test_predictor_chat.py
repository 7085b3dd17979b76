"""TransformersPredictor chat mode (``parameters["chat"] = True``) on tiny offline models.

The tiny llama has a plain chat template (examples/make_tiny_models.py); its answers are
gibberish, so the tests check the rendering, the token accounting against ``generate()``
and that malformed conversations are BadRequestErrors naming the problem.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.transformers_predictor import TransformersPredictor

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]


def _make_model(kind: str, out_dir: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny_models", REPO_ROOT / "examples" / "make_tiny_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_model(kind, out_dir)


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("predictor tried to open a network connection")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_model("llama", tmp_path_factory.mktemp("chat") / "llama")


@pytest.fixture(scope="module")
def llama(llama_dir: Path) -> Iterator[TransformersPredictor]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        yield TransformersPredictor(str(llama_dir), "text-generation")


@pytest.fixture(autouse=True)
def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _no_network)


def test_chat_matches_generate_on_the_rendered_template(llama: TransformersPredictor) -> None:
    out = llama.predict(CONVERSATION, {"chat": True, "max_new_tokens": 5, "count_prompt_tokens": True})
    assert set(out) == {"generated_text", "num_generated_tokens", "finish_reason", "num_prompt_tokens"}
    json.dumps(out)

    tok, model = llama._tokenizer, llama._model
    prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith(tok.bos_token) and prompt.endswith("<|assistant|>\n")
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    assert ids["input_ids"][0].tolist().count(tok.bos_token_id) == 1  # no doubled BOS
    seq = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)[0]
    expected = seq[ids["input_ids"].shape[1]:]
    assert out["num_prompt_tokens"] == ids["input_ids"].shape[1]
    assert out["num_generated_tokens"] == len(expected) <= 5
    assert out["generated_text"] == tok.decode(expected, skip_special_tokens=True)
    assert out["finish_reason"] in {"stop", "length"}


def test_chat_batch_and_text_parts(llama: TransformersPredictor) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}]
    plain = [{"role": "user", "content": "hello world"}]
    batch = llama.predict([parts, plain], {"chat": True, "max_new_tokens": 3})
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0] == batch[1]  # text parts are joined into the same prompt
    assert "num_prompt_tokens" not in batch[0]  # only when asked


def test_chat_false_is_plain_generation(llama: TransformersPredictor) -> None:
    assert llama.predict("hi", {"chat": False, "max_new_tokens": 2}) == llama.predict("hi", {"max_new_tokens": 2})


def test_prompt_token_count_for_plain_generation(llama: TransformersPredictor) -> None:
    out = llama.predict("hello world", {"max_new_tokens": 2, "count_prompt_tokens": True})
    assert out["num_prompt_tokens"] == len(llama._tokenizer("hello world")["input_ids"])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("hello", "list of messages"),
        ([], "list of messages"),
        ([[]], r"inputs\[0\] is empty"),
        ([{"role": "user", "content": "hi"}, "oops"], "list of messages"),
        ([{"role": "robot", "content": "hi"}], r"messages\[0\]\.role must be one of"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "only text content"),
        ([{"role": "user", "content": "hi", "tool_calls": []}], r"unsupported field\(s\) \['tool_calls'\]"),
        ([[{"role": "user", "content": "hi"}], [{"role": "user", "content": None}]],
         r"inputs\[1\]\[0\]\.content"),
    ],
)
def test_bad_conversations_name_the_problem(llama: TransformersPredictor, inputs: Any, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        llama.predict(inputs, {"chat": True, "max_new_tokens": 1})


def test_chat_parameter_checks(llama: TransformersPredictor) -> None:
    with pytest.raises(BadRequestError, match="'chat' must be a boolean"):
        llama.predict(CONVERSATION, {"chat": "yes"})
    with pytest.raises(BadRequestError, match="return_full_text"):
        llama.predict(CONVERSATION, {"chat": True, "return_full_text": True})
    with pytest.raises(BadRequestError, match="context"):
        llama.predict([{"role": "user", "content": "hello " * 600}], {"chat": True, "max_new_tokens": 8})


def test_model_without_chat_template(llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(llama_dir, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    predictor = TransformersPredictor(str(folder), "text-generation")
    assert not predictor._tokenizer.chat_template
    with pytest.raises(BadRequestError, match="model has no chat template"):
        predictor.predict(CONVERSATION, {"chat": True})


def test_chat_only_for_text_generation(tmp_path: Path) -> None:
    t5 = TransformersPredictor(str(_make_model("t5", tmp_path / "t5")), "text2text-generation")
    with pytest.raises(BadRequestError, match="unknown parameter"):
        t5.predict(CONVERSATION, {"chat": True})
    assert "num_prompt_tokens" in t5.predict("hello", {"max_new_tokens": 2, "count_prompt_tokens": True})
