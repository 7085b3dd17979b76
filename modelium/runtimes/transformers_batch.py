"""Many rows, one forward pass: the batched path of ``TransformersPredictor.predict_batch``.

Why: Triton's dynamic batcher hands one ``execute()`` call every request it gathered;
running their rows one at a time (``predict`` does, for predictable shapes) makes dynamic
batching a mere queue. Here all rows go through the model together, padded to the
longest, and each row's result is cut back out, with the same shape ``predict`` gives
for that row alone (values equal up to float rounding: padding is masked out).

* fill-mask, text-classification, token-classification: the task's pipeline called with
  the list and ``batch_size=len(rows)`` (its DataLoader pads and runs one forward per
  batch; its post-processing drops the padding: special-token masks are padded with 1).
* feature-extraction: the pipeline would hand back padded hidden states (mean pooling
  would then average pad positions), so the model is run directly and every row keeps
  only its attention-mask positions before pooling.

A tokenizer without a pad token cannot pad: rows then run one by one (same results).
"""

from __future__ import annotations

from typing import Any

import torch

BATCHED_TASKS = frozenset({"fill-mask", "text-classification", "token-classification", "feature-extraction"})


def can_batch(task: str, tokenizer: Any) -> bool:
    return task in BATCHED_TASKS and getattr(tokenizer, "pad_token_id", None) is not None


def pipeline_rows(pipe: Any, texts: list[str], **kwargs: Any) -> list[Any]:
    """One pipeline call over every row (one forward pass); a list, one result per row."""
    if len(texts) == 1:  # some pipelines unwrap a one-element list: give them the row
        return [pipe(texts[0], **kwargs)]
    results = pipe(list(texts), batch_size=len(texts), **kwargs)
    if len(results) != len(texts):  # never seen; a silent mismatch would misroute answers
        raise RuntimeError(f"pipeline gave {len(results)} results for {len(texts)} rows")
    return list(results)


def feature_rows(model: Any, tokenizer: Any, device: torch.device, texts: list[str], pooling: str) -> list[Any]:
    """Hidden states of every row from one padded forward pass, pooled per row over its own
    tokens only (mean or cls) or returned per token ("none")."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
    hidden = model(**encoded)[0]  # (rows, padded tokens, hidden)
    mask = encoded["attention_mask"].bool()
    results = []
    for row in range(hidden.shape[0]):
        tokens = hidden[row][mask[row]]  # this row's tokens, padding dropped (either side)
        if pooling == "none":
            results.append(tokens.tolist())
        elif pooling == "cls":
            results.append(tokens[0].tolist())
        else:
            results.append(tokens.mean(dim=0).tolist())
    return results
