"""Parameter counts from config.json and from safetensors headers vs transformers itself.

Each case builds a tiny random-init model, saves it, and requires that both our counts
equal `model.num_parameters()` exactly (the brief allows 1%; the formulas are exact).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

from modelium.analysis import analyze_folder  # noqa: E402
from modelium.analysis.config_formula import parameters_from_config  # noqa: E402

TINY: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    vocab_size=1000, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    pad_token_id=0,
)
GPT2 = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
OPT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
           vocab_size=1000, max_position_embeddings=128, word_embed_proj_dim=64,
           bos_token_id=1, eos_token_id=2, pad_token_id=0)
DISTIL = dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000,
              max_position_embeddings=128, pad_token_id=0)
T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=1000,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

# (id, config class, architecture, config kwargs, expected task)
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("llama", "LlamaConfig", "LlamaForCausalLM", dict(TINY, num_key_value_heads=2),
     "text-generation"),
    ("llama-tied-bias-headdim", "LlamaConfig", "LlamaForCausalLM",
     dict(TINY, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
          tie_word_embeddings=True, head_dim=32), "text-generation"),
    ("llama-seqcls", "LlamaConfig", "LlamaForSequenceClassification",
     dict(TINY, num_labels=3), "text-classification"),
    ("mistral", "MistralConfig", "MistralForCausalLM", dict(TINY, num_key_value_heads=2),
     "text-generation"),
    ("qwen2-tied", "Qwen2Config", "Qwen2ForCausalLM",
     dict(TINY, num_key_value_heads=2, tie_word_embeddings=True), "text-generation"),
    ("qwen3", "Qwen3Config", "Qwen3ForCausalLM",
     dict(TINY, num_key_value_heads=2, head_dim=32), "text-generation"),
    ("gemma", "GemmaConfig", "GemmaForCausalLM",
     dict(TINY, num_key_value_heads=1, head_dim=16), "text-generation"),
    ("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
     dict(TINY, num_key_value_heads=2, head_dim=16), "text-generation"),
    ("phi3", "Phi3Config", "Phi3ForCausalLM", dict(TINY, num_key_value_heads=2),
     "text-generation"),
    ("mixtral", "MixtralConfig", "MixtralForCausalLM",
     dict(TINY, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
     "text-generation"),
    ("qwen2-moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
     dict(TINY, num_key_value_heads=2, shared_expert_intermediate_size=96, **MOE),
     "text-generation"),
    ("qwen2-moe-sparse-step", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
     dict(TINY, num_hidden_layers=4, num_key_value_heads=4, shared_expert_intermediate_size=96,
          decoder_sparse_step=2, mlp_only_layers=[3], **MOE), "text-generation"),
    ("qwen3-moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
     dict(TINY, num_key_value_heads=2, **MOE), "text-generation"),
    ("gpt2", "GPT2Config", "GPT2LMHeadModel", GPT2, "text-generation"),
    ("gpt2-seqcls", "GPT2Config", "GPT2ForSequenceClassification", dict(GPT2, n_inner=100),
     "text-classification"),
    ("opt", "OPTConfig", "OPTForCausalLM", OPT, "text-generation"),
    ("opt-project", "OPTConfig", "OPTForCausalLM", dict(OPT, word_embed_proj_dim=32),
     "text-generation"),
    ("bert", "BertConfig", "BertModel", TINY, "feature-extraction"),
    ("bert-seqcls", "BertConfig", "BertForSequenceClassification", dict(TINY, num_labels=3),
     "text-classification"),
    ("bert-mlm", "BertConfig", "BertForMaskedLM", TINY, "fill-mask"),
    ("bert-tokcls", "BertConfig", "BertForTokenClassification", dict(TINY, num_labels=5),
     "token-classification"),
    ("bert-qa", "BertConfig", "BertForQuestionAnswering", TINY, "question-answering"),
    ("roberta-seqcls", "RobertaConfig", "RobertaForSequenceClassification",
     dict(TINY, max_position_embeddings=130), "text-classification"),
    ("roberta-mlm", "RobertaConfig", "RobertaForMaskedLM",
     dict(TINY, max_position_embeddings=130), "fill-mask"),
    ("distilbert-seqcls", "DistilBertConfig", "DistilBertForSequenceClassification", DISTIL,
     "text-classification"),
    ("distilbert-mlm", "DistilBertConfig", "DistilBertForMaskedLM", DISTIL, "fill-mask"),
    ("t5", "T5Config", "T5ForConditionalGeneration", dict(T5, num_decoder_layers=3),
     "text2text-generation"),
    ("t5-untied-gated", "T5Config", "T5ForConditionalGeneration",
     dict(T5, tie_word_embeddings=False, feed_forward_proj="gated-gelu"),
     "text2text-generation"),
    ("t5-encoder", "T5Config", "T5EncoderModel", T5, "feature-extraction"),
]


def save_tiny(case: tuple[str, str, str, dict[str, Any], str], folder: Path) -> int:
    """Build and save the case's model; return transformers' own parameter count."""
    _, config_class, architecture, kwargs, _ = case
    config = getattr(transformers, config_class)(**kwargs)
    config.architectures = [architecture]
    model = getattr(transformers, architecture)(config)
    model.save_pretrained(folder)
    return int(model.num_parameters())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_counts_match_transformers(case: tuple, tmp_path: Path) -> None:
    folder = tmp_path / case[0]
    expected = save_tiny(case, folder)
    config = json.loads((folder / "config.json").read_text())

    from_config, warnings = parameters_from_config(config)
    assert from_config == expected
    assert warnings == []

    profile = analyze_folder(folder)
    assert profile.parameters == expected
    assert profile.parameters_source == "safetensors-header"
    assert profile.format == "safetensors"
    assert profile.task == case[4]
    assert profile.name == case[0]
    assert profile.weight_bytes == 4 * expected  # float32 random init

    (folder / "model.safetensors").unlink()
    config_only = analyze_folder(folder)
    assert config_only.format == "config-only"
    assert config_only.parameters_source == "config-formula"
    assert config_only.parameters == expected


def test_profile_shapes_and_kv_for_decoder_and_encoder(tmp_path: Path) -> None:
    llama = save_tiny(CASES[0], tmp_path / "llama")
    profile = analyze_folder(tmp_path / "llama", name="my-llama")
    assert profile.name == "my-llama" and profile.parameters == llama
    assert (profile.hidden_size, profile.num_layers, profile.vocab_size) == (64, 2, 1000)
    assert profile.context_length == 128 and profile.dtype == "float32"
    assert profile.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4  # K,V x layers x kv x hd x f32
    assert profile.is_causal_lm

    save_tiny(CASES[17], tmp_path / "bert")
    assert analyze_folder(tmp_path / "bert").kv_bytes_per_token == 0

    t5_case = CASES[26]
    save_tiny(t5_case, tmp_path / "t5")
    t5 = analyze_folder(tmp_path / "t5")
    assert t5.kv_bytes_per_token == 2 * 3 * 4 * 16 * 4  # uses the 3 decoder layers
    assert t5.context_length is None


def test_sharded_checkpoint_counts_all_shards(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    config = transformers.LlamaConfig(**dict(TINY, num_key_value_heads=2))
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder, max_shard_size="300KB")
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").exists()
    assert analyze_folder(folder).parameters == model.num_parameters()


def test_llama3_8b_config_only_has_8_03b_params(tmp_path: Path) -> None:
    config = dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=8192, torch_dtype="bfloat16",
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    profile = analyze_folder(tmp_path)
    assert profile.parameters == 8_030_261_248
    assert round(profile.parameters / 1e9, 2) == 8.03
    assert profile.dtype == "bfloat16"
    assert profile.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_unknown_architecture_uses_generic_formula_with_warning() -> None:
    config = dict(architectures=["FooForCausalLM"], model_type="foo", hidden_size=64,
                  num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
                  intermediate_size=128)
    params, warnings = parameters_from_config(config)
    assert params > 0 and "generic" in warnings[0]

    params, warnings = parameters_from_config({"model_type": "mystery"})
    assert params == 0 and warnings
