"""Runtime-agnostic inference for Hugging Face model folders.

Why a separate class: the same load/validate/predict logic runs inside a Ray Serve
replica today and a Triton python-backend model later.  Keeping it free of any
serving framework means each runtime is a thin adapter, and request validation
(and therefore the 422-vs-500 split) is identical everywhere.

Contract:

* ``TransformersPredictor(model_dir, task, device)`` loads strictly from local files
  (``local_files_only=True``); it never touches the network.
* ``predict(inputs, parameters)`` takes a string or a list of strings and returns
  plain JSON types (dict/list/str/int/float/bool).  A string input gives one result,
  a list gives a list of results in the same order.
* Chat (text-generation only): with ``parameters["chat"] = True`` the inputs are one
  conversation, a list of ``{"role": "system"|"user"|"assistant", "content": str}``
  messages (or a list of such conversations); it is rendered with the tokenizer's chat
  template (``add_generation_prompt=True``) and the reply has the text-generation shape.
* ``parameters["count_prompt_tokens"] = True`` (generation tasks) adds
  ``"num_prompt_tokens"`` to each result (the OpenAI adapter reports it as usage); for
  feature-extraction each result becomes ``{"embedding": <the vector>,
  "num_prompt_tokens": N}`` (N: the tokens the model saw, special ones included), which
  ``/v1/embeddings`` reports as usage.
* Client mistakes raise :class:`~modelium.runtimes.errors.BadRequestError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelium.runtimes import transformers_batch
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.predictor_requests import (
    validate_conversations,
    validate_inputs,
    validate_parameters,
)

# Belt and braces: local_files_only already avoids the Hub, but some code paths
# (e.g. optional remote-code lookups) only honour the environment variable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

JSONValue = Any  # dict | list | str | int | float | bool | None, recursively

DEFAULT_MAX_NEW_TOKENS = 32

# task -> model class used to load it.  text2text-generation is here even though
# transformers 5 dropped its pipeline: we drive generate() ourselves for it.
_MODEL_CLASSES: dict[str, type] = {
    "text-generation": AutoModelForCausalLM,
    "fill-mask": AutoModelForMaskedLM,
    "text-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "feature-extraction": AutoModel,
    "text2text-generation": AutoModelForSeq2SeqLM,
}
_NO_PIPELINE_TASKS = frozenset({"text2text-generation"})


def supported_tasks() -> list[str]:
    """Tasks this predictor can serve, sorted (used by discovery to pick a runtime)."""
    return sorted(_MODEL_CLASSES)


def _to_jsonable(value: Any) -> JSONValue:
    """Recursively turn numpy/torch scalars and arrays into plain Python values."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- predictor


class TransformersPredictor:
    """Load one local model folder for one task and answer requests for it.

    Thread-safe: Ray Serve may run several requests of one replica concurrently and
    neither pipelines nor ``generate`` are safe to share across threads, so calls
    are serialised with a lock. Batching is the serving layer's choice: it hands
    the rows it gathered to :meth:`predict_batch` (one forward pass).
    """

    def __init__(self, model_dir: str, task: str, device: str = "cpu") -> None:
        if task not in _MODEL_CLASSES:
            raise ValueError(f"unsupported task {task!r}; supported: {supported_tasks()}")
        path = Path(model_dir)
        if not path.is_dir():
            # Refuse hub ids outright: a name that is not a folder would mean a download.
            raise ValueError(f"model_dir {model_dir!r} is not a local directory")
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from exc

        self.model_dir = str(path)
        self.task = task
        self._lock = threading.Lock()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = _MODEL_CLASSES[task].from_pretrained(self.model_dir, local_files_only=True)
        self._model.to(self.device).eval()
        self._pipeline = None
        if task not in _NO_PIPELINE_TASKS:
            self._pipeline = pipeline(task, model=self._model, tokenizer=self._tokenizer, device=self.device)

    def __repr__(self) -> str:
        return f"TransformersPredictor(model_dir={self.model_dir!r}, task={self.task!r}, device={str(self.device)!r})"

    def predict(self, inputs: str | list[str], parameters: dict[str, Any] | None = None) -> JSONValue:
        """Run the task; see the module docstring and ``_predict_*`` for output shapes."""
        params = validate_parameters(self.task, parameters)
        if params.pop("chat", False):
            return self._predict_chat(inputs, params)
        texts, single = validate_inputs(inputs)
        handler = {
            "text-generation": self._predict_text_generation,
            "text2text-generation": self._predict_text2text,
            "fill-mask": self._predict_fill_mask,
            "text-classification": self._predict_text_classification,
            "token-classification": self._predict_token_classification,
            "feature-extraction": self._predict_feature_extraction,
        }[self.task]
        with self._lock, torch.inference_mode():
            # One call per input: pipelines unwrap single-element lists inconsistently
            # across tasks, and per-input calls keep every output shape predictable.
            results = [_to_jsonable(handler(text, params)) for text in texts]
        return results[0] if single else results

    def predict_batch(self, texts: list[str], parameters: dict[str, Any] | None = None) -> list[JSONValue]:
        """One result per text, like ``predict(texts)``, but the encoder tasks run every
        text in ONE padded forward pass (:mod:`.transformers_batch`): what Triton's
        python-backend model calls with all rows of all requests of one ``execute()``."""
        params = validate_parameters(self.task, parameters)
        if params.get("chat") or not transformers_batch.can_batch(self.task, self._tokenizer):
            return self.predict(list(texts), parameters)
        rows, _ = validate_inputs(list(texts))
        if self.task == "fill-mask":
            for text in rows:
                self._check_mask(text)
        with self._lock, torch.inference_mode():
            if self.task == "feature-extraction":
                results = transformers_batch.feature_rows(self._model, self._tokenizer, self.device, rows,
                                                          params.get("pooling", "mean"))
                if params.get("count_prompt_tokens", False):  # /v1/embeddings' usage, as predict() gives it
                    counts = [len(ids) for ids in self._tokenizer(rows, truncation=True)["input_ids"]]
                    results = [{"embedding": r, "num_prompt_tokens": n} for r, n in zip(results, counts, strict=True)]
            elif self.task == "fill-mask":
                top_k = min(params.get("top_k", 5), len(self._tokenizer))
                results = transformers_batch.pipeline_rows(self._pipeline, rows, top_k=top_k)
            elif self.task == "text-classification":
                top_k = min(params.get("top_k", 1), self._model.config.num_labels)
                results = [[r] if isinstance(r, dict) else r for r in
                           transformers_batch.pipeline_rows(self._pipeline, rows, top_k=top_k, truncation=True)]
            else:  # token-classification
                results = transformers_batch.pipeline_rows(
                    self._pipeline, rows, aggregation_strategy=params.get("aggregation_strategy", "none"))
            return [_to_jsonable(r) for r in results]

    # ---- generation ------------------------------------------------------------------

    def _generate_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """Greedy by default (reproducible); passing temperature/top_p implies sampling."""
        kwargs: dict[str, Any] = {"max_new_tokens": params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)}
        wants_sampling = "temperature" in params or "top_p" in params
        kwargs["do_sample"] = params.get("do_sample", wants_sampling)
        if kwargs["do_sample"]:
            for name in ("temperature", "top_p"):
                if name in params:
                    kwargs[name] = params[name]
        if self._tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = self._tokenizer.pad_token_id
        return kwargs

    def _finish(self, new_ids: list[int], max_new_tokens: int) -> dict[str, Any]:
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        stopped = bool(new_ids) and new_ids[-1] in eos_ids
        return {
            "generated_text": self._tokenizer.decode(new_ids, skip_special_tokens=True),
            "num_generated_tokens": len(new_ids),
            "finish_reason": "stop" if stopped or len(new_ids) < max_new_tokens else "length",
        }

    def _predict_text_generation(self, text: str, params: dict[str, Any]) -> dict[str, Any]:
        """-> {"generated_text": str, "num_generated_tokens": int, "finish_reason": "stop"|"length"}."""
        # True keeps e.g. Llama's BOS, which is what such models were trained with.
        result = self._generate_from_text(text, params, add_special_tokens=True)
        if params.get("return_full_text", False):
            result["generated_text"] = text + result["generated_text"]
        return result

    def _generate_from_text(self, text: str, params: dict[str, Any], *, add_special_tokens: bool) -> dict[str, Any]:
        kwargs = self._generate_kwargs(params)
        # Tokenize exactly as the pipeline will (we pass add_special_tokens to it too), so
        # we know where the prompt ends in the returned ids.
        prompt_ids = self._tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if limit and len(prompt_ids) + kwargs["max_new_tokens"] > limit:
            raise BadRequestError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({kwargs['max_new_tokens']}) "
                f"exceeds the model context of {limit} tokens"
            )
        # return_tensors gives token ids, so token counts are exact rather than
        # estimated by re-tokenizing decoded text.
        [out] = self._pipeline(text, return_tensors=True, add_special_tokens=add_special_tokens, **kwargs)
        new_ids = list(out["generated_token_ids"])[len(prompt_ids) :]
        result = self._finish(new_ids, kwargs["max_new_tokens"])
        if params.get("count_prompt_tokens", False):
            result["num_prompt_tokens"] = len(prompt_ids)
        return result

    def _predict_chat(self, inputs: Any, params: dict[str, Any]) -> JSONValue:
        """Chat mode (see the module docstring): same output shape as text generation."""
        if self.task != "text-generation":  # the parameter spec already limits chat to it
            raise BadRequestError(f"chat needs a text-generation model, this one is {self.task}")
        if params.get("return_full_text", False):
            raise BadRequestError("parameter 'return_full_text' cannot be used with chat")
        if not getattr(self._tokenizer, "chat_template", None):
            raise BadRequestError("model has no chat template; use plain text generation instead")
        conversations, single = validate_conversations(inputs)
        prompts = []
        for messages in conversations:
            try:
                prompts.append(self._tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True))
            except Exception as exc:  # noqa: BLE001 - e.g. a template's raise_exception("roles must alternate")
                raise BadRequestError(f"the model's chat template rejected the messages: {exc}") from exc
        with self._lock, torch.inference_mode():
            # The rendered template already holds the special tokens (BOS...) it wants.
            results = [_to_jsonable(self._generate_from_text(prompt, params, add_special_tokens=False))
                       for prompt in prompts]
        return results[0] if single else results

    def _predict_text2text(self, text: str, params: dict[str, Any]) -> dict[str, Any]:
        """Same shape as text-generation (transformers 5 has no text2text pipeline)."""
        kwargs = self._generate_kwargs(params)
        encoded = self._tokenizer(text, return_tensors="pt", truncation=True).to(self.device)
        sequence = self._model.generate(**encoded, **kwargs)[0].tolist()
        # Encoder-decoder output starts with the decoder start token, which is not generated.
        result = self._finish(sequence[1:], kwargs["max_new_tokens"])
        if params.get("count_prompt_tokens", False):
            result["num_prompt_tokens"] = int(encoded["input_ids"].shape[1])
        return result

    # ---- encoder tasks ---------------------------------------------------------------

    def _predict_fill_mask(self, text: str, params: dict[str, Any]) -> list[Any]:
        """-> [{"token": int, "token_str": str, "score": float, "sequence": str}, ...] best first.

        With several mask tokens in one input the pipeline returns one such list per
        mask, i.e. a list of lists.
        """
        self._check_mask(text)
        top_k = min(params.get("top_k", 5), len(self._tokenizer))
        return self._pipeline(text, top_k=top_k)

    def _check_mask(self, text: str) -> None:
        mask = self._tokenizer.mask_token
        if mask is None or mask not in text:
            raise BadRequestError(f"fill-mask input must contain the mask token {mask!r}")

    def _predict_text_classification(self, text: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """-> [{"label": str, "score": float}, ...] best first; length top_k (default 1)."""
        top_k = min(params.get("top_k", 1), self._model.config.num_labels)
        result = self._pipeline(text, top_k=top_k, truncation=True)
        return [result] if isinstance(result, dict) else result

    def _predict_token_classification(self, text: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """-> [{"entity"|"entity_group": str, "score": float, "word": str, "start": int, "end": int}, ...]."""
        return self._pipeline(text, aggregation_strategy=params.get("aggregation_strategy", "none"))

    def _predict_feature_extraction(self, text: str, params: dict[str, Any]) -> list[Any]:
        """-> list[float] (hidden size) for mean/cls pooling, list[list[float]] per token for
        "none"; with ``count_prompt_tokens`` ``{"embedding": that, "num_prompt_tokens": N}``.

        Mean pooling covers every token including [CLS]/[SEP]; with one input per
        call there is no padding to mask out.
        """
        hidden = self._pipeline(text, truncation=True, return_tensors=True)[0]  # (tokens, hidden)
        pooling = params.get("pooling", "mean")
        if pooling == "none":
            vector = hidden.tolist()
        else:
            vector = (hidden[0] if pooling == "cls" else hidden.mean(dim=0)).tolist()
        if params.get("count_prompt_tokens", False):
            return {"embedding": vector, "num_prompt_tokens": int(hidden.shape[0])}
        return vector
