"""Property-based tests of the parsers a drop feeds: any bytes in gives a result or an
InvalidModelError (PbtxtError for the pbtxt parser), nothing else, within a time bound
(hypothesis' deadline). The safetensors checks are also compared with the reference
reader: a header we refuse, the `safetensors` library refuses too."""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from modelium.analysis import InvalidModelError, analyze_folder, estimate_memory
from modelium.analysis.files import parse_json
from modelium.analysis.pbtxt import PbtxtError, parse_pbtxt, read_triton_config
from modelium.analysis.safetensors_header import DTYPE_BITS, parse_header

FAST = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=120, deadline=4000, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
SIZE_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size", "max_position_embeddings", "head_dim", "n_embd",
             "n_layer", "n_head", "d_model", "num_layers", "num_heads", "d_kv", "d_ff", "dim",
             "n_layers", "hidden_dim", "n_positions", "ffn_dim", "num_labels", "num_experts",
             "num_local_experts", "moe_intermediate_size", "decoder_sparse_step",
             "shared_expert_intermediate_size", "word_embed_proj_dim", "type_vocab_size"]
# Mostly plausible sizes (so the formulas run), sometimes the edges and any JSON at all.
edges = st.one_of(st.integers(-3, 2**40), st.sampled_from([0, 2**31, 2**31 + 1, 10**30]), json_values)
sizes = st.integers(0, 19).flatmap(lambda n: edges if n == 0 else st.integers(1, 512) if n < 6
                                   else st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 256]))
FAMILY_KEYS = {
    "llama": ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size"],
    "qwen2_moe": ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "vocab_size", "num_experts", "moe_intermediate_size", "decoder_sparse_step",
                  "shared_expert_intermediate_size"],
    "gpt2": ["n_embd", "n_layer", "n_head", "vocab_size", "n_positions"],
    "bert": ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size", "max_position_embeddings"],
    "t5": ["d_model", "num_layers", "num_heads", "d_kv", "d_ff", "vocab_size"],
    "opt": ["hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "vocab_size",
            "max_position_embeddings", "word_embed_proj_dim"],
}
class_names = st.lists(st.sampled_from(["LlamaForCausalLM", "BertModel", "T5EncoderModel", "GPT2LMHeadModel",
                                       "BertForSequenceClassification", "OPTForCausalLM"]), min_size=1, max_size=2)



@st.composite
def configs(draw):
    family = draw(st.sampled_from([*FAMILY_KEYS, "mixtral", "qwen3", "gemma2", "distilbert", "foo", 7]))
    keys = FAMILY_KEYS.get(family, FAMILY_KEYS["llama"])
    odd = draw(st.integers(0, 9)) == 0  # one config in ten gets any JSON as architectures
    config = {"model_type": family, "architectures": draw(json_values if odd else class_names)}
    config.update({key: draw(sizes) for key in keys})
    config.update(draw(st.dictionaries(st.sampled_from(SIZE_KEYS), sizes, max_size=3)))
    config.update(draw(st.fixed_dictionaries({}, optional={
        "text_config": st.dictionaries(st.sampled_from(SIZE_KEYS), sizes, max_size=6),
        "mlp_only_layers": st.one_of(st.lists(st.integers(-2, 600), max_size=4), json_values),
        "tie_word_embeddings": json_values, "id2label": json_values,
        "torch_dtype": st.sampled_from(["bfloat16", "float32", "auto", "F4", 3])})))
    return config


def _analyze_config(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_bytes(raw)
        try:
            profile = analyze_folder(Path(tmp), "m")
        except InvalidModelError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        estimate_memory(profile, device_kind="gpu", batch_size=4)  # the numbers stay usable
        assert 0 <= profile.parameters <= 10**24


@FAST
@given(st.binary(max_size=2000))
def test_any_bytes_as_json_parse_or_give_a_reason(raw: bytes) -> None:
    try:
        parse_json(raw, "config.json")
    except InvalidModelError as exc:
        assert str(exc).startswith("config.json")


@FAST
@given(st.binary(max_size=500))
def test_any_bytes_as_config_json_give_a_profile_or_a_reason(raw: bytes) -> None:
    _analyze_config(raw)


@SLOW
@given(configs())
def test_any_config_shape_gives_a_profile_or_a_reason(config: dict) -> None:
    _analyze_config(json.dumps(config).encode())


@FAST
@given(st.integers(1, 200_000), st.sampled_from("[{"))
def test_nesting_of_any_depth_is_a_reason(depth: int, opener: str) -> None:
    text = (opener + '"a":' if opener == "{" else opener) * depth
    closer = "}" if opener == "{" else "]"
    raw = (text + "1" + closer * depth).encode()
    try:
        parse_json(raw, "config.json")
        assert depth <= 64
    except InvalidModelError as exc:
        assert depth > 64 and "nests JSON" in str(exc)


@FAST
@given(st.binary(max_size=3000), st.integers(0, 10**6))
def test_any_bytes_as_a_safetensors_header_parse_or_give_a_reason(raw: bytes, data_size: int) -> None:
    try:
        tensors = parse_header(raw, data_size, "x.safetensors")
    except InvalidModelError as exc:
        assert str(exc).startswith("x.safetensors")
        return
    assert sum(t.nbytes for t in tensors.values()) == data_size


entries = st.fixed_dictionaries({
    "dtype": st.sampled_from([*DTYPE_BITS, "Q4", "F128", "f32"]),
    "shape": st.lists(st.integers(0, 6), max_size=3),
}, optional={"extra": json_values})


@st.composite
def headers(draw):
    """Mostly-valid headers (tiled offsets), then one random lie, or none."""
    tensors, offset = {}, 0
    for i, entry in enumerate(draw(st.lists(entries, max_size=4))):
        bits = math.prod(entry["shape"]) * DTYPE_BITS.get(entry["dtype"], 32)
        size = -(-bits // 8)
        tensors[f"t{i}"] = {**entry, "data_offsets": [offset, offset + size]}
        offset += size
    data_size = offset + draw(st.sampled_from([0, 0, 0, 1, -1]))
    if tensors and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(tensors)))
        field = draw(st.sampled_from(["data_offsets", "shape", "dtype"]))
        tensors[name][field] = draw(st.one_of(json_values, st.lists(st.integers(-2, 40), max_size=3)))
    if draw(st.booleans()):
        tensors["__metadata__"] = draw(st.one_of(st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
                                                 json_values))
    padding = draw(st.sampled_from(["", " ", "\n", "  \t"]))
    return tensors, max(0, data_size), padding


@SLOW
@given(headers())
def test_headers_we_refuse_the_reference_reader_refuses(case) -> None:
    header, data_size, padding = case
    raw = (padding + json.dumps(header) + padding).encode()
    try:
        parse_header(raw, data_size, "x.safetensors")
        ours = None
    except InvalidModelError as exc:
        ours = str(exc)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "x.safetensors"
        file.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_size)
        try:
            with safe_open(str(file), framework="numpy") as handle:
                handle.keys()
            reference = None
        except Exception as exc:  # noqa: BLE001
            reference = str(exc)
    if ours is not None:
        assert reference is not None, f"we refused a header safetensors accepts: {ours}"


@FAST
@given(st.text(max_size=400))
def test_any_text_as_pbtxt_parses_or_gives_a_reason(text: str) -> None:
    try:
        parse_pbtxt(text)
        read_triton_config(text)
    except PbtxtError as exc:
        assert str(exc)


pb_scalars = st.one_of(st.integers(-5, 5).map(str), st.sampled_from(["KIND_CPU", "true", "1.5e3", "-inf"]),
                       st.text(st.characters(codec="ascii", exclude_characters='"\\\n'), max_size=8)
                       .map(lambda s: f'"{s}"'))
pb_names = st.sampled_from(["name", "count", "kind", "dims", "input", "backend", "instance_group", "x_1"])


def _pb_message(children):
    return st.lists(st.tuples(pb_names, children), max_size=4).map(
        lambda fields: " ".join(f"{k}: {v}" if not v.startswith(("{", "[")) else f"{k} {v}"
                                for k, v in fields))


pb_values = st.recursive(pb_scalars, lambda children: st.one_of(
    _pb_message(children).map(lambda body: "{ " + body + " }"),
    st.lists(pb_scalars, max_size=3).map(lambda vs: "[ " + ", ".join(vs) + " ]"),
), max_leaves=12)


@FAST
@given(st.lists(st.tuples(pb_names, pb_values), max_size=6), st.sampled_from(["\n", " ", ", ", "; "]),
       st.booleans())
def test_well_formed_pbtxt_always_parses(fields, separator: str, comments: bool) -> None:
    parts = [f"{k}: {v}" if not v.startswith(("{", "[")) else f"{k} {v}" for k, v in fields]
    text = separator.join(parts) + ("\n# a trailing comment {[\n" if comments else "")
    message = parse_pbtxt(text)
    assert set(message) == {k for k, _ in fields}
