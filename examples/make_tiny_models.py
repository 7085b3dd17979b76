"""Build tiny random-weight Hugging Face model folders, fully offline.

Why this exists: Modelium's tests and demos need real model folders to drop into
the watched directory (config.json + model.safetensors + tokenizer files), but CI
and dev boxes often have no route to the Hugging Face Hub.  Everything here is
built locally: the weights are random (outputs are gibberish, which is fine for
exercising the plumbing) and the tokenizer is trained in well under a second on
generated text.  A fixed seed makes every run produce byte-identical weights.

Usage::

    python examples/make_tiny_models.py OUT_DIR [--kind llama --kind t5 ...]

or, from Python (the tests do this)::

    from examples.make_tiny_models import make_model
    make_model("llama", tmp_path / "llama")
"""

from __future__ import annotations

import os

# Set before transformers is imported so nothing ever tries the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

# "Writing model shards" bars for 1 MB files are just noise in CLI and test output.
hf_logging.disable_progress_bar()

SEED = 1234
VOCAB_SIZE = 2048
MAX_POSITIONS = 512
DEFAULT_KINDS = ("llama", "bert-classifier")

# A deliberately plain chat format: role markers are single special tokens so a
# random model can still "chat" (gibberish answers, but the template renders and
# the generation prompt ends exactly where the assistant reply starts).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

_WORDS = (
    "the a an model server request token batch queue memory gpu cpu fast slow good bad "
    "great terrible love hate happy sad movie film story plot actor scene music song "
    "drop folder watch load unload deploy serve route gateway latency throughput "
    "alice bob carol paris london tokyo monday friday red green blue one two three "
    "is was are were will can should not very really quite and or but because so "
    "hello world question answer translate summarize english german french python code"
).split()


def _corpus(n_sentences: int = 3000) -> list[str]:
    """Deterministic pseudo-English text, varied enough to fill the whole 2k vocabulary.

    The made-up syllable words matter: with only real words the BPE runs out of
    merges early, leaving model ids that decode to nothing.
    """
    rng = random.Random(SEED)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    invented = ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(1500)]
    vocabulary = list(_WORDS) + invented
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(4, 14))]
        sentence = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ":"])
        if rng.random() < 0.2:
            extra = rng.choice(["(x)", "[y]", "{z}", '"q"', "a-b", "c_d"])
            sentence += f" {rng.randint(0, 9999)} {extra}"
        lines.append(sentence)
    return lines


# --------------------------------------------------------------------------- tokenizers


def _byte_level_bpe(special_tokens: list[str], post_processor: processors.PostProcessor | None) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): every byte is in the alphabet, so no input is ever <unk>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = post_processor or processors.ByteLevel(trim_offsets=False)
    return tok


def _causal_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """Tokenizer for decoder-only LMs, with a chat template so chat-style serving works."""
    if kind == "gpt2":
        # GPT-2 convention: one <|endoftext|> doubles as bos/eos/unk; add an explicit pad.
        specials = ["<|endoftext|>", "<pad>", *CHAT_ROLE_TOKENS]
        named = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<pad>")
    else:
        specials = ["<unk>", "<s>", "</s>", "<pad>", *CHAT_ROLE_TOKENS]
        named = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    backend = _byte_level_bpe(specials, None)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=MAX_POSITIONS,
        padding_side="left",  # decoder-only batch generation needs left padding
        chat_template=CHAT_TEMPLATE,
        **named,
    )


def _t5_tokenizer() -> PreTrainedTokenizerFast:
    """T5 ids are fixed by convention: pad=0 (also decoder start), eos=1, unk=2; inputs end with </s>."""
    post = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    backend = _byte_level_bpe(["<pad>", "</s>", "<unk>"], post)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=MAX_POSITIONS,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased WordPiece with the [CLS] ... [SEP] post-processor that BERT heads expect."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=MAX_POSITIONS,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


# --------------------------------------------------------------------------- models


def _llama(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    # head_dim = 64 / 2 = 32: vLLM's CPU attention kernels reject head_dim < 32.
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _gpt2(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=MAX_POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def _bert_config(tok: PreTrainedTokenizerFast, **extra: object) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def _bert_classifier(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    labels = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    return BertForSequenceClassification(
        _bert_config(
            tok,
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    )


def _bert_ner(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    return BertForTokenClassification(
        _bert_config(
            tok,
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    )


def _t5(tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    config = T5Config(
        vocab_size=VOCAB_SIZE,
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


# kind -> (tokenizer factory, model factory)
_KINDS: dict[str, tuple[Callable[[], PreTrainedTokenizerFast], Callable[[PreTrainedTokenizerFast], PreTrainedModel]]] = {
    "llama": (lambda: _causal_tokenizer("llama"), _llama),
    "gpt2": (lambda: _causal_tokenizer("gpt2"), _gpt2),
    "bert-classifier": (_bert_tokenizer, _bert_classifier),
    "bert-mlm": (_bert_tokenizer, lambda tok: BertForMaskedLM(_bert_config(tok))),
    "bert-embedder": (_bert_tokenizer, lambda tok: BertModel(_bert_config(tok))),
    "bert-ner": (_bert_tokenizer, _bert_ner),
    "t5": (_t5_tokenizer, _t5),
}
KINDS: tuple[str, ...] = tuple(_KINDS)


def _patch_json(path: Path, updates: dict[str, object]) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_model(kind: str, out_dir: Path) -> Path:
    """Build one tiny model of ``kind`` into ``out_dir`` and return ``out_dir``.

    Deterministic: the same kind always yields the same weights and vocabulary.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    make_tokenizer, make_net = _KINDS[kind]

    tokenizer = make_tokenizer()
    torch.manual_seed(SEED)
    model = make_net(tokenizer).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    # transformers 5 writes "dtype"; older readers (vLLM pinned to transformers 4.x,
    # Triton images) look for "torch_dtype", so write both.
    _patch_json(out_dir / "config.json", {"torch_dtype": "float32", "dtype": "float32"})
    # Pin the generic fast-tokenizer class (loads in transformers 4.x and 5.x alike),
    # and inline the chat template: 5.x saves it as chat_template.jinja, which older
    # readers (e.g. vLLM on transformers 4.4x) do not look for.
    tok_updates: dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if tokenizer.chat_template:
        tok_updates["chat_template"] = tokenizer.chat_template
    _patch_json(out_dir / "tokenizer_config.json", tok_updates)
    return out_dir


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="models are written to OUT_DIR/<kind>")
    parser.add_argument(
        "--kind",
        action="append",
        choices=KINDS,
        help=f"repeatable; default: {' '.join(DEFAULT_KINDS)}",
    )
    args = parser.parse_args(argv)
    for kind in args.kind or DEFAULT_KINDS:
        start = time.perf_counter()
        path = make_model(kind, args.out_dir / kind)
        print(f"{kind:16s} {path}  {_folder_size(path) / 1e6:.2f} MB  {time.perf_counter() - start:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
