"""Exact parameter counts from `config.json` alone.

Used when a drop has no weights yet (config-only) and to sanity-check headers. Each family
function mirrors the module tree transformers builds for that config, so the result equals
`model.num_parameters()` (which counts tied tensors once). Unknown decoder-looking
families get a generic Llama-style formula plus a warning; if even the basic sizes are
missing we return 0 and say so rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelium.analysis.config_shape import text_config
from modelium.analysis.profile import InvalidModelError

Config = dict[str, Any]


def _get(cfg: Config, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _num_labels(cfg: Config) -> int:
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return int(cfg.get("num_labels") or 2)


def _tied(cfg: Config, default: bool) -> bool:
    value = cfg.get("tie_word_embeddings")
    return default if value is None else bool(value)


# --- Llama-style decoders (Llama, Mistral, Qwen2/3, Gemma/2, Phi-3, Mixtral, Qwen MoE) ---

# model_type -> (q/k/v bias key or fixed bool, o_proj follows the same bias, q/k norm,
# norms per layer). Qwen2 hard-codes qkv bias; Qwen3 adds per-head RMSNorm on q and k;
# Gemma2 wraps both sublayers in pre- and post-norms.
_DECODER_TRAITS: dict[str, tuple[str | bool, bool, bool, int]] = {
    "llama": ("attention_bias", True, False, 2),
    "mistral": (False, False, False, 2),
    "mixtral": (False, False, False, 2),
    "qwen2": (True, False, False, 2),
    "qwen2_moe": ("qkv_bias", False, False, 2),
    "qwen3": ("attention_bias", True, True, 2),
    "qwen3_moe": ("attention_bias", True, True, 2),
    "gemma": ("attention_bias", True, False, 2),
    "gemma2": ("attention_bias", True, False, 4),
    "phi3": (False, False, False, 2),
}


def _gated_mlp(hidden: int, inner: int, bias: bool = False) -> int:
    """gate + up + down projections of a SwiGLU/GeGLU MLP."""
    return 2 * _linear(hidden, inner, bias) + _linear(inner, hidden, bias)


def _llama_style(cfg: Config, model_type: str, architecture: str = "") -> int:
    hidden = int(_get(cfg, "hidden_size"))
    layers = int(_get(cfg, "num_hidden_layers"))
    heads = int(_get(cfg, "num_attention_heads"))
    kv_heads = int(_get(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_get(cfg, "head_dim", default=hidden // heads))
    vocab = int(cfg["vocab_size"])
    inner = int(_get(cfg, "intermediate_size"))
    bias_spec, o_bias_too, qk_norm, norms = _DECODER_TRAITS.get(
        model_type, ("attention_bias", True, False, 2)
    )
    qkv_bias = bool(cfg.get(bias_spec, False)) if isinstance(bias_spec, str) else bias_spec
    if model_type == "qwen2_moe" and cfg.get("qkv_bias") is None:
        qkv_bias = True  # transformers' default for Qwen2-MoE

    attention = (
        _linear(hidden, heads * head_dim, qkv_bias)
        + 2 * _linear(hidden, kv_heads * head_dim, qkv_bias)
        + _linear(heads * head_dim, hidden, qkv_bias and o_bias_too)
        + (2 * head_dim if qk_norm else 0)
    )
    dense_mlp = _gated_mlp(hidden, inner, bool(cfg.get("mlp_bias", False)))
    total = vocab * hidden + hidden  # embeddings + final norm
    sparse, moe_block = _moe_layers(cfg, model_type, layers)
    total += layers * (attention + norms * hidden) + (layers - sparse) * dense_mlp
    total += sparse * moe_block
    return total + _decoder_head(cfg, architecture, model_type in ("gemma", "gemma2"))


def _decoder_head(cfg: Config, architecture: str, tied_by_default: bool) -> int:
    """The head on top of a Llama-style decoder; causal LM unless the name says otherwise."""
    hidden, vocab = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    if architecture.endswith("ForSequenceClassification"):
        return hidden * _num_labels(cfg)  # `score`, no bias
    if architecture.endswith("ForTokenClassification"):
        return _linear(hidden, _num_labels(cfg), True)
    if architecture.endswith("ForQuestionAnswering"):
        return _linear(hidden, 2, True)
    if architecture.endswith("Model") and not architecture.endswith("LMHeadModel"):
        return 0  # bare decoder, no head
    return 0 if _tied(cfg, default=tied_by_default) else vocab * hidden


def _moe_layers(cfg: Config, model_type: str, layers: int) -> tuple[int, int]:
    """(how many layers have a sparse MoE block, parameters of one such block: router +
    experts). Counted in closed form, not layer by layer: a config claiming 2^31 layers
    must cost no more time than a real one."""
    hidden = int(cfg["hidden_size"])
    experts = int(_get(cfg, "num_experts", "num_local_experts", default=0))
    if model_type == "mixtral":
        return layers, hidden * experts + experts * _gated_mlp(hidden, int(cfg["intermediate_size"]))
    if model_type not in ("qwen2_moe", "qwen3_moe") or experts <= 0:
        return 0, 0
    step = int(cfg.get("decoder_sparse_step") or 1)
    if step <= 0:
        raise ValueError(f"decoder_sparse_step must be positive, got {step}")
    dense_only = cfg.get("mlp_only_layers") or []
    if not isinstance(dense_only, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in dense_only
    ):
        raise TypeError("mlp_only_layers must be a list of layer indices")
    excluded = {n for n in dense_only if 0 <= n < layers and (n + 1) % step == 0}
    block = hidden * experts + experts * _gated_mlp(hidden, int(cfg["moe_intermediate_size"]))
    if model_type == "qwen2_moe":
        block += _gated_mlp(hidden, int(cfg["shared_expert_intermediate_size"])) + hidden
    return layers // step - len(excluded), block


# --- GPT-2 and OPT: LayerNorm with bias, biased linears, learned positions ------------


def _gpt2(cfg: Config, architecture: str) -> int:
    hidden = int(cfg["n_embd"])
    inner = int(_get(cfg, "n_inner", default=4 * hidden))
    vocab = int(cfg["vocab_size"])
    layer = (
        2 * 2 * hidden  # ln_1, ln_2
        + _linear(hidden, 3 * hidden, True)  # c_attn
        + _linear(hidden, hidden, True)  # attn c_proj
        + _linear(hidden, inner, True)
        + _linear(inner, hidden, True)
    )
    total = vocab * hidden + int(cfg["n_positions"]) * hidden + int(cfg["n_layer"]) * layer
    total += 2 * hidden  # ln_f
    if architecture.endswith("ForSequenceClassification"):
        return total + hidden * _num_labels(cfg)
    if architecture.endswith("ForTokenClassification"):
        return total + _linear(hidden, _num_labels(cfg), True)
    if _is_lm(architecture) and not _tied(cfg, default=True):
        total += vocab * hidden
    return total


def _opt(cfg: Config, architecture: str) -> int:
    hidden = int(cfg["hidden_size"])
    embed_dim = int(_get(cfg, "word_embed_proj_dim", default=hidden))
    vocab = int(cfg["vocab_size"])
    ffn = int(cfg["ffn_dim"])
    bias = bool(cfg.get("enable_bias", True))
    norm = 2 * hidden if cfg.get("layer_norm_elementwise_affine", True) else 0
    layer = 4 * _linear(hidden, hidden, bias) + _linear(hidden, ffn, bias)
    layer += _linear(ffn, hidden, bias) + 2 * norm
    total = vocab * embed_dim + (int(cfg["max_position_embeddings"]) + 2) * hidden
    total += int(cfg["num_hidden_layers"]) * layer
    if embed_dim != hidden:
        total += 2 * embed_dim * hidden  # project_in + project_out, no bias
    if cfg.get("do_layer_norm_before", True) and not cfg.get("_remove_final_layer_norm"):
        total += norm
    if architecture.endswith("ForSequenceClassification"):
        return total + embed_dim * _num_labels(cfg)
    if architecture.endswith("ForQuestionAnswering"):
        return total + _linear(hidden, 2, True)
    if _is_lm(architecture) and not _tied(cfg, default=True):
        total += vocab * embed_dim
    return total


# --- BERT family encoders ------------------------------------------------------------


def _bert_encoder(cfg: Config) -> int:
    hidden = int(cfg["hidden_size"])
    inner = int(cfg["intermediate_size"])
    layer = 4 * _linear(hidden, hidden, True) + _linear(hidden, inner, True)
    layer += _linear(inner, hidden, True) + 2 * 2 * hidden
    embeddings = (
        int(cfg["vocab_size"]) + int(cfg["max_position_embeddings"])
        + int(cfg.get("type_vocab_size") or 2)
    ) * hidden + 2 * hidden
    return embeddings + int(cfg["num_hidden_layers"]) * layer


def _bert(cfg: Config, architecture: str) -> int:
    """BERT and RoBERTa: same encoder, different heads (RoBERTa never uses the pooler)."""
    hidden = int(cfg["hidden_size"])
    vocab = int(cfg["vocab_size"])
    labels = _num_labels(cfg)
    roberta = cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert")
    total = _bert_encoder(cfg)
    pooler = _linear(hidden, hidden, True)
    lm_head = _linear(hidden, hidden, True) + 2 * hidden + vocab  # transform, LN, bias
    if not _tied(cfg, default=True):
        lm_head += vocab * hidden
    if architecture.endswith("ForMaskedLM") or architecture.endswith("LMHeadModel"):
        return total + lm_head
    if architecture.endswith("ForSequenceClassification"):
        if roberta:
            return total + _linear(hidden, hidden, True) + _linear(hidden, labels, True)
        return total + pooler + _linear(hidden, labels, True)
    if architecture.endswith("ForTokenClassification"):
        return total + _linear(hidden, labels, True)
    if architecture.endswith("ForQuestionAnswering"):
        return total + _linear(hidden, 2, True)
    if architecture.endswith("ForPreTraining"):
        return total + pooler + lm_head + _linear(hidden, 2, True)
    return total + pooler  # bare BertModel / RobertaModel keep the pooler


def _distilbert(cfg: Config, architecture: str) -> int:
    dim = int(cfg["dim"])
    inner = int(cfg["hidden_dim"])
    vocab = int(cfg["vocab_size"])
    layer = 4 * _linear(dim, dim, True) + _linear(dim, inner, True)
    layer += _linear(inner, dim, True) + 2 * 2 * dim
    total = (vocab + int(cfg["max_position_embeddings"])) * dim + 2 * dim
    total += int(cfg["n_layers"]) * layer
    if architecture.endswith("ForMaskedLM"):
        total += _linear(dim, dim, True) + 2 * dim + vocab
        return total + (0 if _tied(cfg, default=True) else vocab * dim)
    if architecture.endswith("ForSequenceClassification"):
        return total + _linear(dim, dim, True) + _linear(dim, _num_labels(cfg), True)
    if architecture.endswith("ForTokenClassification"):
        return total + _linear(dim, _num_labels(cfg), True)
    if architecture.endswith("ForQuestionAnswering"):
        return total + _linear(dim, 2, True)
    return total


# --- T5 ------------------------------------------------------------------------------


def _t5(cfg: Config, architecture: str) -> int:
    d_model = int(cfg["d_model"])
    inner = int(cfg["num_heads"]) * int(cfg["d_kv"])
    d_ff = int(cfg["d_ff"])
    vocab = int(cfg["vocab_size"])
    gated = bool(cfg.get("is_gated_act")) or str(cfg.get("feed_forward_proj", "")).startswith(
        "gated-"
    )
    attention = 2 * d_model * inner + 2 * inner * d_model  # q, k, v, o without bias
    ff = (3 if gated else 2) * d_model * d_ff
    rel_bias = int(cfg.get("relative_attention_num_buckets") or 32) * int(cfg["num_heads"])
    enc_layers = int(cfg["num_layers"])
    dec_layers = int(_get(cfg, "num_decoder_layers", default=enc_layers))
    encoder = enc_layers * (attention + ff + 2 * d_model) + rel_bias + d_model
    decoder = dec_layers * (2 * attention + ff + 3 * d_model) + rel_bias + d_model
    total = vocab * d_model + encoder  # shared embedding, tied into both stacks
    if architecture == "T5EncoderModel":
        return total
    total += decoder
    if architecture.endswith("ForConditionalGeneration") and not _tied(cfg, default=True):
        total += vocab * d_model
    return total


# --- dispatch --------------------------------------------------------------------------


def _is_lm(architecture: str) -> bool:
    return architecture.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))


_FAMILIES: dict[str, Callable[[Config, str], int]] = {
    "gpt2": _gpt2,
    "opt": _opt,
    "bert": _bert,
    "roberta": _bert,
    "distilbert": _distilbert,
    "t5": _t5,
}


def _generic_decoder(cfg: Config, architecture: str) -> int | None:
    """Llama-shaped estimate for unknown decoders; None when basic sizes are missing."""
    hidden = _get(cfg, "hidden_size", "n_embd", "d_model")
    layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(cfg, "num_attention_heads", "n_head", "num_heads")
    vocab = cfg.get("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        return None
    generic = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": _get(cfg, "num_key_value_heads", default=heads),
        "head_dim": _get(cfg, "head_dim", default=hidden // heads),
        "vocab_size": vocab,
        "intermediate_size": _get(cfg, "intermediate_size", "n_inner", "ffn_dim",
                                  default=hidden * 8 // 3),
        "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
    }
    return _llama_style(generic, "generic", architecture)


def parameters_from_config(
    config: Config, architecture: str | None = None
) -> tuple[int, list[str]]:
    """(parameter count, warnings) for `config`, as `num_parameters()` would report.

    `architecture` defaults to `config["architectures"][0]`; it selects the head (e.g.
    BertModel's pooler vs BertForMaskedLM's prediction head).
    """
    cfg = text_config(config)
    model_type = str(cfg.get("model_type") or "")
    if architecture is None:
        archs = config.get("architectures") or []
        architecture = str(archs[0]) if archs else ""
    try:
        if model_type in _DECODER_TRAITS:
            return _bounded(_llama_style(cfg, model_type, architecture)), []
        if model_type in _FAMILIES:
            return _bounded(_FAMILIES[model_type](cfg, architecture)), []
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:120]
        return 0, [f"config.json lacks a size needed to count {model_type} parameters ({detail})"]
    try:
        estimate = _generic_decoder(cfg, architecture)
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
        estimate = None
    if estimate is None:
        return 0, [f"cannot count parameters for model_type {model_type or '?'!r:.60} from config"]
    return _bounded(estimate), [
        f"parameter count for model_type {model_type or '?'!r:.60} is a generic decoder estimate"
    ]


# 10^24 parameters is a trillion times the largest models: anything above comes from
# absurd config values, and memory math on it would leave float range. Sizes merely
# beyond the hardware stay below and are failed by the scheduler with the numbers.
MAX_PARAMETERS = 10**24


def _bounded(parameters: int) -> int:
    if parameters < 0:
        raise InvalidModelError(
            "config.json sizes give a negative parameter count; check num_labels and the "
            "other sizes"
        )
    if parameters > MAX_PARAMETERS:
        raise InvalidModelError(
            f"config.json sizes imply about 10^{len(str(parameters)) - 1} parameters, "
            "beyond any real model; check hidden_size, intermediate_size and the layer count"
        )
    return parameters
