from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelium.config import (
    ConfigError,
    GpuSpec,
    ModeliumSettings,
    ModelOverride,
    default_settings_yaml,
    load_settings,
    settings_from_dict,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_CONFIG = REPO_ROOT / "modelium.yaml"


def load(data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> ModeliumSettings:
    return settings_from_dict(data, base_dir=tmp_path, env=env or {}, source="/x/modelium.yaml")


def problems(data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(data, tmp_path, env)
    return str(info.value)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "modelium.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and the shipped config ----------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load({}, tmp_path)
    assert settings.gateway.port == 8000
    assert settings.gateway.api_keys == []
    assert settings.gpus == "auto"
    assert settings.ray.address == "auto" and settings.ray.temp_dir is None
    assert settings.vllm.enabled is True and settings.triton.enabled is True
    assert settings.triton.endpoint == "auto"
    assert settings.vllm.python == "auto" and settings.vllm.default_settings.max_num_seqs == 16
    assert settings.orchestration.placement == "best-fit"
    assert settings.orchestration.auto_unload_after_seconds == 600
    assert isinstance(settings.orchestration.auto_unload_after_seconds, float)
    assert settings.metrics.port == 9090
    assert settings.discovery.settle_seconds == 2.0
    assert settings.models == {}
    assert settings.incoming_dir == tmp_path / "models" / "incoming"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load({}, tmp_path)
    with pytest.raises(ValidationError, match="frozen"):
        settings.gateway.port = 1  # type: ignore[misc]


def test_root_config_loads_and_equals_defaults() -> None:
    settings = load_settings(ROOT_CONFIG, env={})
    assert settings == settings_from_dict({}, base_dir=REPO_ROOT, env={})
    assert settings.incoming_dir == REPO_ROOT / "models" / "incoming"
    assert settings.state_dir == REPO_ROOT / ".modelium"


def test_default_yaml_lists_every_key_with_its_default() -> None:
    shipped = yaml.safe_load(default_settings_yaml())
    assert shipped == ModeliumSettings().model_dump(mode="json")


def test_default_settings_yaml_equals_root_config() -> None:
    assert default_settings_yaml() == ROOT_CONFIG.read_text(encoding="utf-8")


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.gateway.port == 8000
    assert settings.incoming_dir == tmp_path / "models" / "incoming"


def test_cwd_config_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, "gateway: {port: 8123}\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).gateway.port == 8123


def test_modelium_config_env_picks_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "gateway: {port: 8124}\n")
    assert load_settings(env={"MODELIUM_CONFIG": str(path)}).gateway.port == 8124


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "# only a comment\n")
    assert load_settings(path, env={}) == settings_from_dict({}, base_dir=tmp_path, env={})


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "gateway:\nmodels:\n")
    settings = load_settings(path, env={})
    assert settings.gateway.port == 8000 and settings.models == {}


# --- file errors ------------------------------------------------------------------------


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_settings(missing, env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(env={"MODELIUM_CONFIG": str(missing)})


def test_bad_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "gateway:\n  port: 8000\nmodels: [a\nlog_level: INFO\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(f"invalid YAML in {path} at line 4, column 10:")


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "gateway:\n  port: 8000\n  port: 8001\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'port'.*line 2"):
        load_settings(path, env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_config(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(path, env={})


# --- validation messages ----------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "incomming_dir: x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid config {path}:"
    assert lines[1].strip().startswith("incomming_dir: unknown key")
    assert "did you mean 'incoming_dir'" in lines[1]


def test_unknown_nested_key(tmp_path: Path) -> None:
    message = problems({"gateway": {"prot": 8001}, "models": {"gpt2": {"pined": True}}}, tmp_path)
    assert "gateway.prot: unknown key" in message
    assert "models.gpt2.pined: unknown key" in message


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    message = problems({"gateway": {"port": 70000}}, tmp_path)
    assert (
        "gateway.port: Input should be less than or equal to 65535 (got 70000)" in message
    )


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load({"gateway": {"port": 0}, "metrics": {"qps_window_seconds": -1}, "log_format": "xml"},
             tmp_path)
    assert len(info.value.problems) == 3
    assert {p.split(":")[0] for p in info.value.problems} == {
        "gateway.port", "metrics.qps_window_seconds", "log_format"
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"orchestration": {"max_gpu_memory_utilization": 0}}, "orchestration.max_gpu_memory_utilization"),
        ({"orchestration": {"max_gpu_memory_utilization": 1.5}}, "orchestration.max_gpu_memory_utilization"),
        ({"orchestration": {"placement": "random"}}, "orchestration.placement"),
        ({"metrics": {"port": 0}}, "metrics.port"),
        ({"ray": {"num_cpus": 0}}, "ray.num_cpus"),
        ({"ray": {"address": "localhost"}}, "ray.address"),
        ({"triton": {"endpoint": "nohost"}}, "triton.endpoint"),
        ({"gateway": {"api_keys": ["ok", ""]}}, "gateway.api_keys.1"),
        ({"discovery": {"rescan_interval_seconds": 0}}, "discovery.rescan_interval_seconds"),
        ({"incoming_dir": ""}, "incoming_dir"),
        ({"vllm": {"startup_timeout_seconds": ".nan"}}, "vllm.startup_timeout_seconds"),
    ],
)
def test_invalid_values(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert f"{expected}:" in problems(data, tmp_path)


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load({"log_level": "debug"}, tmp_path).log_level == "DEBUG"


def test_metrics_port_may_be_null(tmp_path: Path) -> None:
    assert load({"metrics": {"port": None}}, tmp_path).metrics.port is None


def test_port_clash_is_an_error(tmp_path: Path) -> None:
    message = problems({"metrics": {"port": 8000}}, tmp_path)
    assert "metrics.port: port 8000 is already used by gateway.port" in message
    # A disabled component's port does not count.
    assert load({"metrics": {"enabled": False, "port": 8000}}, tmp_path).metrics.port == 8000


def test_drop_folders_must_not_overlap(tmp_path: Path) -> None:
    message = problems({"model_repository": "models/incoming/repo"}, tmp_path)
    assert "model_repository:" in message and "overlaps incoming_dir" in message


# --- gpus ---------------------------------------------------------------------------------


def test_gpus_auto_and_list(tmp_path: Path) -> None:
    assert load({"gpus": "auto"}, tmp_path).gpus == "auto"
    settings = load({"gpus": [{"id": 0, "memory_gb": 80}, {"id": 1, "memory_gb": 24, "name": "L4"}]},
                    tmp_path)
    assert settings.gpus == [GpuSpec(id=0, memory_gb=80), GpuSpec(id=1, memory_gb=24, name="L4")]
    assert settings.gpus[0].name == "simulated"


def test_gpus_invalid(tmp_path: Path) -> None:
    assert "gpus: should be 'auto' or a list" in problems({"gpus": "all"}, tmp_path)
    message = problems(
        {"gpus": [{"id": 0, "memory_gb": 8}, {"id": 0, "memory_gb": 8}]}, tmp_path
    )
    assert "gpus.1.id: duplicate GPU id 0" in message
    message = problems({"gpus": [{"id": 0, "memory_gb": -4}, {"memory_gb": 1}]}, tmp_path)
    assert "gpus.0.memory_gb: Input should be greater than 0 (got -4)" in message
    assert "gpus.1.id: required key is missing" in message
    assert "list[" not in message and "literal[" not in message


# --- per-model overrides ----------------------------------------------------------------------


def test_model_overrides(tmp_path: Path) -> None:
    settings = load(
        {"gpus": [{"id": 0, "memory_gb": 16}],
         "models": {"gpt2": {"runtime": "vllm", "gpu": 0, "pinned": True, "batch_size": 4}}},
        tmp_path,
    )
    assert settings.models["gpt2"] == ModelOverride(runtime="vllm", gpu=0, pinned=True, batch_size=4)
    assert settings.override_for("missing") == ModelOverride()


def test_model_override_bad_runtime(tmp_path: Path) -> None:
    message = problems({"models": {"gpt2": {"runtime": "onnx"}}}, tmp_path)
    assert "models.gpt2.runtime:" in message and "(got 'onnx')" in message


def test_model_override_gpu_not_configured(tmp_path: Path) -> None:
    data = {"gpus": [{"id": 0, "memory_gb": 16}, {"id": 1, "memory_gb": 16}],
            "models": {"gpt2": {"gpu": 3}}}
    assert "models.gpt2.gpu: GPU 3 is not among the configured gpus [0, 1]" in problems(data, tmp_path)
    # With gpus: auto the index cannot be checked yet, so it is accepted.
    assert load({"models": {"gpt2": {"gpu": 3}}}, tmp_path).models["gpt2"].gpu == 3


def test_model_names_must_be_valid(tmp_path: Path) -> None:
    message = problems(
        {"models": {"GPT2": {}, "ok": {"runtime": "bad"}},
         "orchestration": {"always_loaded": ["fine", "Not Fine"]}},
        tmp_path,
    )
    assert "models.GPT2: not a valid model name" in message and "'gpt2'" in message
    assert "models.ok.runtime:" in message  # reported together with the bad name
    assert "orchestration.always_loaded.1: not a valid model name" in message


# --- environment overrides ------------------------------------------------------------------


def test_env_overrides_types_and_nesting(tmp_path: Path) -> None:
    settings = load(
        {},
        tmp_path,
        env={
            "MODELIUM_GATEWAY__PORT": "8001",
            "MODELIUM_VLLM__ENABLED": "true",
            "MODELIUM_GATEWAY__API_KEYS": "[k1, k2]",
            "MODELIUM_MODELS__GPT2__PINNED": "true",
            "MODELIUM_METRICS__PORT": "null",
            "MODELIUM_INCOMING_DIR": "/srv/drop",
            "MODELIUM_GPUS": "[{id: 0, memory_gb: 24}]",
            "HOME_UNRELATED": "x",
        },
    )
    assert settings.gateway.port == 8001
    assert settings.vllm.enabled is True
    assert settings.gateway.api_keys == ["k1", "k2"]
    assert settings.models["gpt2"].pinned is True
    assert settings.metrics.port is None
    assert settings.incoming_dir == Path("/srv/drop")
    assert settings.gpus == [GpuSpec(id=0, memory_gb=24)]


def test_env_wins_over_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "gateway:\n  port: 8050\n  host: 127.0.0.2\n")
    settings = load_settings(path, env={"MODELIUM_GATEWAY__PORT": "8051"})
    assert settings.gateway.port == 8051
    assert settings.gateway.host == "127.0.0.2"  # untouched keys come from the file


def test_specific_env_var_wins_over_section_var(tmp_path: Path) -> None:
    env = {"MODELIUM_GATEWAY__PORT": "8002", "MODELIUM_GATEWAY": "{port: 8003, host: 127.0.0.2}"}
    settings = load({}, tmp_path, env=env)
    assert (settings.gateway.port, settings.gateway.host) == (8002, "127.0.0.2")


def test_env_unknown_key_names_the_variable(tmp_path: Path) -> None:
    message = problems({}, tmp_path, env={"MODELIUM_GATEWAY__PROT": "8001"})
    assert "MODELIUM_GATEWAY__PROT (gateway.prot): unknown key" in message


def test_env_bad_value_names_the_variable(tmp_path: Path) -> None:
    message = problems({}, tmp_path, env={"MODELIUM_GATEWAY__PORT": "70000"})
    assert "MODELIUM_GATEWAY__PORT (gateway.port):" in message and "(got 70000)" in message


def test_env_cannot_nest_under_a_scalar(tmp_path: Path) -> None:
    message = problems({"gpus": "auto"}, tmp_path, env={"MODELIUM_GPUS__0__ID": "1"})
    assert "MODELIUM_GPUS__0__ID (gpus.0.id): cannot set a key inside gpus" in message


def test_env_non_yaml_value_is_a_string(tmp_path: Path) -> None:
    settings = load({}, tmp_path, env={"MODELIUM_VLLM__PYTHON": "@weird/path"})
    assert settings.vllm.python == "@weird/path"


def test_modelium_config_is_not_a_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    settings = load_settings(path, env={"MODELIUM_CONFIG": "/elsewhere.yaml"})
    assert settings.gateway.port == 8000


# --- paths and public dump ---------------------------------------------------------------------


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    path = write_config(
        config_dir,
        "incoming_dir: drops\nmodel_repository: ../repo\nfailed_dir: /abs/failed\n"
        "ray:\n  temp_dir: raytmp\n",
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    settings = load_settings(path, env={"MODELIUM_STATE_DIR": "state"})
    assert settings.incoming_dir == config_dir / "drops"
    assert settings.model_repository == tmp_path / "repo"
    assert settings.failed_dir == Path("/abs/failed")
    assert settings.state_dir == config_dir / "state"
    assert settings.ray.temp_dir == config_dir / "raytmp"
    assert settings.incoming_dir.is_absolute()


def test_to_public_dict_hides_api_keys(tmp_path: Path) -> None:
    settings = load({"gateway": {"api_keys": ["secret-1", "secret-2"]}}, tmp_path)
    public = settings.to_public_dict()
    assert public["gateway"]["api_keys"] == ["***", "***"]
    assert "secret-1" not in repr(public)
    assert public["incoming_dir"] == str(tmp_path / "models" / "incoming")
    assert settings.gateway.api_keys == ["secret-1", "secret-2"]  # the settings are untouched
    import json

    json.dumps(public)  # JSON-able


def test_vllm_per_model_override_merges_over_defaults(tmp_path: Path) -> None:
    settings = load({"vllm": {"default_settings": {"max_model_len": 512}},
                     "models": {"llm": {"vllm": {"max_num_seqs": 4}}}}, tmp_path)
    merged = settings.vllm.settings_for(settings.override_for("llm").vllm)
    assert (merged.max_model_len, merged.max_num_seqs) == (512, 4)
    assert settings.vllm.settings_for(None).max_num_seqs == 16
    message = problems({"models": {"llm": {"vllm": {"max_num_seq": 4}}}}, tmp_path)
    assert "models.llm.vllm.max_num_seq" in message


def test_an_open_bind_without_keys_is_refused_unless_opted_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gateway.host: 0.0.0.0 is reachable .* gateway.allow_unauthenticated"):
        load({"gateway": {"host": "0.0.0.0"}}, tmp_path)
    with pytest.raises(ConfigError, match="metrics.host: 10.1.2.3: the metrics endpoint has no authentication"):
        load({"metrics": {"host": "10.1.2.3"}}, tmp_path)
    assert load({"gateway": {"host": "0.0.0.0", "api_keys": ["k"]}, "metrics": {"port": None}},
                tmp_path).gateway.host == "0.0.0.0"
    opted = load({"gateway": {"host": "0.0.0.0", "allow_unauthenticated": True}, "metrics": {"host": "0.0.0.0"}},
                 tmp_path)
    assert opted.gateway.allow_unauthenticated


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load({}, tmp_path, env={"MODELIUM_GATEWAY__API_KEYS": "s3cr3t-value"})
    assert "s3cr3t-value" not in str(info.value) and "gateway.api_keys" in str(info.value)
    settings = load({"gateway": {"api_keys": ["k1"]}, "vllm": {"extra_args": ["--api-key", "hush"]},
                     "metrics": {"prometheus_url": "http://user:pw@prom:9091"}}, tmp_path)
    public = str(settings.to_public_dict())
    assert "k1" not in public and "hush" not in public and "pw@" not in public and "prom:9091" in public
