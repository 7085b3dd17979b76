"""The `modelium` command. `serve` runs the daemon; `analyze` and `init` work offline;
everything else talks to a running daemon over HTTP (no daemon logic is duplicated here)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from modelium.config import ConfigError, ModeliumSettings, default_settings_yaml, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Modelium: drop a model folder in, get an inference endpoint out.")

ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="config file (default: $MODELIUM_CONFIG, else ./modelium.yaml)")]
UrlOption = Annotated[Optional[str], typer.Option(
    "--url", help="gateway URL (default: from the config's gateway host and port)")]
ApiKeyOption = Annotated[Optional[str], typer.Option("--api-key", help="API key, if the gateway needs one")]


def _settings(config: Path | None) -> ModeliumSettings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


def _client(config: Path | None, url: str | None, api_key: str | None):
    from modelium.cli.client import GatewayClient

    if url is None:
        gateway = _settings(config).gateway
        url = f"http://{gateway.host}:{gateway.port}"
        if api_key is None and gateway.api_keys:
            api_key = gateway.api_keys[0]
    return GatewayClient(url, api_key)


def _call(client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    from modelium.cli.client import GatewayError

    try:
        return client.request(method, path, body)
    except GatewayError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the daemon: watch incoming/, load models, serve the gateway."""
    settings = _settings(config)
    from modelium.daemon import serve as run_daemon
    from modelium.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    raise typer.Exit(run_daemon(settings))


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="a model folder (config-only folders work too)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Profile a folder: what it is, which runtime and why, memory, where it would fit.

    Exits 2 (one line) when the folder cannot be analysed, 1 (after the report) when the
    model would not fit on any device even with nothing else loaded.
    """
    from modelium.analysis import InvalidModelError
    from modelium.cli.report import analysis_report, render_report

    settings = _settings(config)
    try:
        report = analysis_report(path, settings)
    except (InvalidModelError, ValueError, OSError) as exc:
        typer.echo(f"cannot analyze {path}: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, even for a bug
        typer.echo(f"cannot analyze {path}: unexpected {type(exc).__name__}: {_one_line(exc)}",
                   err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(report, indent=2) if as_json else render_report(report))
    if not report["placement"]["fits"]:
        raise typer.Exit(1)


def _one_line(exc: BaseException) -> str:
    """The reason on one line (the daemon's REASON.txt may list entries on several)."""
    text = " ".join(str(exc).split())
    return text[:2000] if text else type(exc).__name__


@app.command()
def models(config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List models known to the running daemon."""
    rows = _call(_client(config, url, api_key), "GET", "/models")["models"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'NAME':<28} {'STATE':<10} {'RUNTIME':<10} {'DEVICE':<7} {'MEMORY':>9}  REASON")
    for row in rows:
        memory = row["memory"]["total_bytes"] / 2**30 if row.get("memory") else None
        typer.echo(f"{row['name']:<28} {row['state']:<10} {row['runtime'] or '-':<10} "
                   f"{row['device'] or '-':<7} {f'{memory:.2f} GiB' if memory else '-':>9}  "
                   f"{row['reason'] or row['runtime_reason'] or ''}")


@app.command()
def status(config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Show the daemon's devices, reservations, models and quarantined drops."""
    typer.echo(json.dumps(_call(_client(config, url, api_key), "GET", "/status"), indent=2))


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="model name")],
    inputs: Annotated[list[str], typer.Argument(help="one or more input texts")],
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", help="KEY=VALUE (VALUE parsed as JSON when it can be)")] = None,
    config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
) -> None:
    """Send one prediction request and print the answer."""
    parameters: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"--param expects KEY=VALUE, got {item!r}", err=True)
            raise typer.Exit(2)
        try:
            parameters[key] = json.loads(value)
        except ValueError:
            parameters[key] = value
    body = {"inputs": inputs[0] if len(inputs) == 1 else inputs, "parameters": parameters}
    typer.echo(json.dumps(_call(_client(config, url, api_key), "POST", f"/predict/{model}", body), indent=2))


@app.command()
def load(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Load (or retry a failed) model now."""
    typer.echo(json.dumps(_call(_client(config, url, api_key), "POST", f"/models/{model}/load"), indent=2))


@app.command()
def unload(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Unload a model (it is loaded again on its next request)."""
    typer.echo(json.dumps(_call(_client(config, url, api_key), "POST", f"/models/{model}/unload"), indent=2))


@app.command()
def pin(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Pin a model: never evicted or unloaded for idleness."""
    typer.echo(json.dumps(_call(_client(config, url, api_key), "POST", f"/models/{model}/pin"), indent=2))


@app.command()
def unpin(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Unpin a model."""
    typer.echo(json.dumps(_call(_client(config, url, api_key), "POST", f"/models/{model}/unpin"), indent=2))


@app.command()
def decisions(
    model: Annotated[Optional[str], typer.Argument(help="only this model")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
) -> None:
    """What the brain decided recently, newest first, and why."""
    query = f"/decisions?limit={limit}" + (f"&model={model}" if model else "")
    for entry in _call(_client(config, url, api_key), "GET", query)["decisions"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
        typer.echo(f"{stamp} {entry['action']:<15} {entry['model']:<24} {entry['reason']}")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="where to create modelium.yaml")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing modelium.yaml")] = False,
) -> None:
    """Write a default modelium.yaml and create the model folders."""
    target = directory / "modelium.yaml"
    if target.exists() and not force:
        typer.echo(f"{target} exists; use --force to overwrite", err=True)
        raise typer.Exit(1)
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(default_settings_yaml(), encoding="utf-8")
    settings = load_settings(target)
    for folder in (settings.incoming_dir, settings.model_repository):
        folder.mkdir(parents=True, exist_ok=True)
    typer.echo(f"wrote {target}; drop model folders into {settings.incoming_dir}")


def main() -> None:
    app()
