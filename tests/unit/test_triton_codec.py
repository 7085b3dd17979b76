"""The KServe-v2 JSON codec for Triton: /predict inputs -> infer body -> outputs."""

from __future__ import annotations

import pytest

from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.triton.codec import decode_outputs, infer_body, named_tensors, text_input, text_outputs


def testnamed_tensors_typed_from_metadata() -> None:
    declared = [{"name": "X", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "S", "datatype": "BYTES", "shape": [-1]}]
    tensors = named_tensors("m", {"X": [[1, 2], [3, 4]], "S": ["a", "b"]}, declared)
    assert tensors[0] == {"name": "X", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
    assert tensors[1] == {"name": "S", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}
    with pytest.raises(BadRequestError, match="no input"):
        named_tensors("m", {"X": [1], "S": ["a"], "Z": [1]}, declared)
    assert [t["name"] for t in named_tensors("m", {"X": [1]}, declared)] == ["X"]  # Triton judges
    with pytest.raises(BadRequestError, match="not a valid FP32"):
        named_tensors("m", {"X": [["a"]], "S": ["a"]}, declared)
    with pytest.raises(BadRequestError, match="not a valid"):
        named_tensors("m", {"X": [[1, 2], [3]], "S": ["a"]}, declared)  # ragged


def testtext_outputs_decode_json_per_item() -> None:
    outputs = {"OUTPUT": {"name": "OUTPUT", "datatype": "BYTES", "shape": [2, 1],
                          "data": ['{"label": "a"}', '[1, 2]']}}
    assert text_outputs(outputs, single=False) == [{"label": "a"}, [1, 2]]
    one = {"OUTPUT": {"name": "OUTPUT", "datatype": "BYTES", "shape": [1, 1], "data": ['{"label": "a"}']}}
    assert text_outputs(one, single=True) == {"label": "a"}


def test_text_goes_to_TEXT_or_the_only_bytes_input() -> None:
    hf = [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]},
          {"name": "PARAMETERS", "datatype": "BYTES", "shape": [-1, 1]}]
    assert text_input(hf)["name"] == "TEXT"
    assert text_input([{"name": "Q", "datatype": "BYTES", "shape": [-1]}])["name"] == "Q"
    assert text_input([{"name": "X", "datatype": "FP32", "shape": [-1]}]) is None


HF_METADATA = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]},
                          {"name": "PARAMETERS", "datatype": "BYTES", "shape": [-1, 1]}]}


def test_text_rows_and_per_row_parameters() -> None:
    request = infer_body("m", ["a", "b"], {"top_k": 2}, HF_METADATA)
    assert request.text_mode and not request.single
    assert request.body == {"inputs": [
        {"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]},
        {"name": "PARAMETERS", "shape": [2, 1], "datatype": "BYTES", "data": ['{"top_k": 2}'] * 2},
    ]}
    answer = {"outputs": [{"name": "OUTPUT", "datatype": "BYTES", "shape": [1, 1], "data": ['{"x": 1}']}]}
    assert decode_outputs(answer, infer_body("m", "a", {}, HF_METADATA)) == {"x": 1}


def test_named_tensors_with_scalar_parameters() -> None:
    metadata = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}]}
    request = infer_body("m", {"X": [1, 2]}, {"scale": 2}, metadata)
    assert request.body["parameters"] == {"scale": 2} and not request.text_mode
    answer = {"outputs": [{"name": "Y", "datatype": "FP32", "shape": [2], "data": [2.0, 4.0]}]}
    assert decode_outputs(answer, request) == {"Y": [2.0, 4.0]}
    with pytest.raises(BadRequestError, match="scalars"):
        infer_body("m", {"X": [1]}, {"nested": {"a": 1}}, metadata)
    with pytest.raises(BadRequestError, match="not text"):
        infer_body("m", "text", {}, metadata)
    with pytest.raises(BadRequestError, match="inputs must be"):
        infer_body("m", 42, {}, metadata)
