"""CLI commands that work without a daemon: analyze and init."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from modelium.cli.main import app
from tests.unit.fakes import make_config_only_model

runner = CliRunner()


def test_analyze_json_has_the_promised_keys(tmp_path):
    folder = make_config_only_model(tmp_path / "Tiny Llama")
    config = tmp_path / "modelium.yaml"
    config.write_text("gpus: [{id: 0, memory_gb: 24}, {id: 1, memory_gb: 80}]\n"
                      "vllm: {python: /nonexistent/python}\n")
    result = runner.invoke(app, ["analyze", str(folder), "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("name", "architecture", "task", "parameters", "dtype", "weight_bytes",
                "runtime", "reason", "memory", "placement"):
        assert key in report
    assert report["name"] == "tiny-llama"
    assert report["architecture"] == "LlamaForCausalLM" and report["task"] == "text-generation"
    assert report["runtime"] == "ray_serve"
    assert "vllm is enabled but not installed" in report["reason"]
    assert report["memory"]["total_bytes"] > report["memory"]["weights_bytes"] > 0
    assert report["placement"]["fits"] and report["placement"]["device"] == "gpu:0"  # best fit


def test_analyze_text_output_and_refusal(tmp_path):
    folder = make_config_only_model(tmp_path / "m")
    config = tmp_path / "modelium.yaml"
    config.write_text("gpus: [{id: 0, memory_gb: 0.25}]\n")
    result = runner.invoke(app, ["analyze", str(folder), "--config", str(config)])
    assert result.exit_code == 1, result.output  # no device could hold it
    assert "text-generation" in result.output and "does not fit" in result.output


def test_analyze_invalid_folder_exits_2_with_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["analyze", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no config.json" in result.output


def test_bad_config_names_the_key(tmp_path):
    config = tmp_path / "modelium.yaml"
    config.write_text("gateway: {port: 70000}\n")
    result = runner.invoke(app, ["analyze", str(tmp_path), "--config", str(config)])
    assert result.exit_code == 2 and "gateway.port" in result.output


def test_init_writes_a_loadable_config_and_folders(tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "proj/modelium.yaml").exists()
    assert (tmp_path / "proj/models/incoming").is_dir()
    again = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert again.exit_code == 1 and "--force" in again.output


def test_analyze_reserves_every_replica(tmp_path):
    folder = make_config_only_model(tmp_path / "m")
    config = tmp_path / "modelium.yaml"
    config.write_text("gpus: [{id: 0, memory_gb: 80}]\nvllm: {enabled: false}\nmodels: {m: {num_replicas: 3}}\n")
    result = runner.invoke(app, ["analyze", str(folder), "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    memory = json.loads(result.output)["memory"]
    assert memory["copies"] == 3 and memory["total_bytes"] == 3 * memory["per_copy_bytes"]
    text = runner.invoke(app, ["analyze", str(folder), "--config", str(config)])
    assert "copies             x3 (the items above are per copy)" in text.output
