"""A family-independent view of a transformers `config.json`, validated.

Model families spell the same quantity differently (`hidden_size` / `n_embd` / `d_model` /
`dim`, ...) and multimodal or newer configs nest the language model under `text_config`.
Everything downstream (task, KV cache, memory, sanity checks) wants one spelling, so this
module resolves the aliases once and rejects configs that no runtime could instantiate,
with a reason a human can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelium.analysis.profile import InvalidModelError

_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_INTERMEDIATE = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim")
_CONTEXT = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
# No real model has a dimension, layer or head count anywhere near this (vocabularies are
# ~10^6, contexts ~10^7); a bigger number is a typo or an attack, and the memory math
# that multiplies these must stay in float range. A model that is merely too big for
# the hardware passes and is failed by the scheduler with the numbers.
MAX_DIMENSION = 2**31


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a config: `text_config` overlaid on the top level.

    Only used when the top level itself lacks a hidden size (e.g. Gemma-3 or Llava style
    wrappers), so plain configs are returned unchanged.
    """
    nested = config.get("text_config")
    if isinstance(nested, dict) and _first(config, _HIDDEN) is None:
        return {**config, **nested}
    return config


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return None


def _int_field(config: dict[str, Any], keys: tuple[str, ...], strict: bool = True) -> int | None:
    """First present alias as an int; non-integers and non-positive values are errors.

    Non-strict fields (intermediate size, context) are ignored when not a plain int,
    because some valid families store per-layer lists or other structures there.
    """
    value = _first(config, keys)
    if value is None:
        return None
    name = next(k for k in keys if config.get(k) is not None)
    if isinstance(value, bool) or not isinstance(value, int):
        if not strict:
            return None
        raise InvalidModelError(f"config.json: {name} must be an integer, got {value!r:.60}")
    if value <= 0:
        raise InvalidModelError(f"config.json: {name} must be positive, got {value}")
    if value > MAX_DIMENSION:
        if not strict:
            return None
        raise InvalidModelError(
            f"config.json: {name} is a {len(str(value))}-digit number, beyond any real "
            "model (at most 2^31)"
        )
    return value


@dataclass(frozen=True)
class ModelShape:
    """The sizes every family has, under one spelling. None means "not in the config"."""

    hidden_size: int | None
    num_layers: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    intermediate_size: int | None
    context_length: int | None
    decoder_layers: int | None  # encoder-decoder models: layers that keep a KV cache
    embedding_dim: int | None  # width of the input embedding (OPT may differ from hidden)


def read_shape(config: dict[str, Any]) -> ModelShape:
    """Resolve aliases and validate; raises InvalidModelError on contradictions."""
    cfg = text_config(config)
    hidden = _int_field(cfg, _HIDDEN)
    layers = _int_field(cfg, _LAYERS)
    heads = _int_field(cfg, _HEADS)
    kv_heads = _int_field(cfg, ("num_key_value_heads", "num_kv_heads", "n_kv_heads"))
    explicit_head_dim = _int_field(cfg, ("head_dim", "d_kv"))
    vocab = _int_field(cfg, ("vocab_size",))
    intermediate = _int_field(cfg, _INTERMEDIATE, strict=False)
    context = _int_field(cfg, _CONTEXT, strict=False)
    decoder_layers = _int_field(cfg, ("num_decoder_layers", "decoder_layers")) or layers
    embedding_dim = _int_field(cfg, ("word_embed_proj_dim",)) or hidden

    head_dim = explicit_head_dim
    if heads is not None and hidden is not None and head_dim is None:
        if hidden % heads:
            raise InvalidModelError(
                f"config.json: hidden size {hidden} is not divisible by {heads} attention "
                "heads and no head_dim is given"
            )
        head_dim = hidden // heads
    if kv_heads is not None and heads is not None:
        if kv_heads > heads:
            raise InvalidModelError(
                f"config.json: num_key_value_heads ({kv_heads}) exceeds "
                f"num_attention_heads ({heads})"
            )
        if heads % kv_heads:
            raise InvalidModelError(
                f"config.json: num_key_value_heads ({kv_heads}) does not divide "
                f"num_attention_heads ({heads})"
            )
    return ModelShape(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads if kv_heads is not None else heads,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=intermediate,
        context_length=context,
        decoder_layers=decoder_layers,
        embedding_dim=embedding_dim,
    )
