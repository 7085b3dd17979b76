"""The `modelium` command. `serve` runs the daemon; `analyze` and `init` work offline;
everything else talks to a running daemon over HTTP (no daemon logic is duplicated here)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer

from modelium.cli.output import console, print_json, show
from modelium.config import (
    ConfigError,
    ModeliumSettings,
    default_settings_yaml,
    load_settings,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Modelium: drop a model folder in, get an inference endpoint out.")

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", "-c", help="config file (default: $MODELIUM_CONFIG, else ./modelium.yaml)")]
UrlOption = Annotated[str | None, typer.Option(
    "--url", help="gateway URL (default: from the config's gateway host and port)")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", help="API key, if the gateway needs one")]


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


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (a daemon's message may span lines), then exit ``code``."""
    typer.echo(" ".join(message.split()), err=True)
    raise typer.Exit(code)


def _call(client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The daemon's JSON answer, or one line and exit 1 (unreachable, or an HTTP error)."""
    from modelium.cli.client import GatewayError

    try:
        return client.request(method, path, body)
    except GatewayError as exc:
        _fail(str(exc))


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
    except Exception as exc:
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


JsonOption = Annotated[bool, typer.Option("--json", help="print machine JSON only (no tables, no colour)")]


def _model_path(model: str) -> str:
    return f"/models/{quote(model, safe='')}"


@app.command()
def models(config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
           as_json: JsonOption = False) -> None:
    """List every model the daemon knows: state, runtime, device, memory, why it failed."""
    rows = _call(_client(config, url, api_key), "GET", "/models").get("models") or []
    if as_json:
        print_json(rows)
        return
    from modelium.cli.tables import models_table

    show(models_table(rows))


@app.command()
def ps(config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
       as_json: JsonOption = False) -> None:
    """Loaded (and loading) models: memory, idle time and when idle unloading could take them."""
    from modelium.cli.tables import ps_json, ps_table

    client = _client(config, url, api_key)
    rows = _call(client, "GET", "/models").get("models") or []
    daemon_config = _call(client, "GET", "/status").get("config")
    now = time.time()
    if as_json:
        print_json(ps_json(rows, daemon_config, now))
        return
    show(ps_table(rows, daemon_config, now))


@app.command()
def status(config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
           as_json: JsonOption = False) -> None:
    """Devices with memory bars, reservations, runtimes' health, the scheduler's work,
    quarantined drops. `--json` prints GET /status as it is."""
    client = _client(config, url, api_key)
    answer = _call(client, "GET", "/status")
    if as_json:
        print_json(answer)
        return
    from modelium.cli.client import GatewayError
    from modelium.cli.status_view import bar_width_for, status_view

    rows = _call(client, "GET", "/models").get("models") or []
    try:
        health = client.probe("/health")[1]  # 503 while degraded: still worth showing
    except GatewayError:
        health = None
    out = console()
    out.print(status_view(answer, rows, health if isinstance(health, dict) else None,
                          bar_width_for(out.width)))


@app.command()
def logs(
    model: Annotated[str, typer.Argument(help="model name")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines until Ctrl-C")] = False,
    lines: Annotated[int | None, typer.Option("--lines", "-n", min=0,
                                                 help="only the last LINES lines kept (default: all)")] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="seconds between polls with -f")] = 1.0,
    config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A model's log lines, oldest first; `-f` follows; `--json` prints one JSON line each."""
    from modelium.cli.client import GatewayError
    from modelium.cli.follow import follow_lines, kept_lines
    from modelium.cli.tables import log_line

    def emit(line: dict[str, Any]) -> None:
        if as_json:
            print_json(line, lines=True)
        else:
            typer.echo(log_line(line))

    client = _client(config, url, api_key)
    try:
        first, after = kept_lines(client, model, lines)
        for line in first:
            emit(line)
        if follow:
            for line in follow_lines(client, model, after, interval=interval):
                emit(line)
    except GatewayError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="model name")],
    inputs: Annotated[list[str], typer.Argument(help="one or more input texts")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="KEY=VALUE (VALUE parsed as JSON when it can be)")] = None,
    config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send one prediction request and print the answer (JSON either way)."""
    parameters: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param expects KEY=VALUE, got {item!r}", 2)
        try:
            parameters[key] = json.loads(value)
        except ValueError:
            parameters[key] = value
    body = {"inputs": inputs[0] if len(inputs) == 1 else inputs, "parameters": parameters}
    print_json(_call(_client(config, url, api_key), "POST", f"/predict/{quote(model, safe='')}", body))


@app.command()
def load(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
         as_json: JsonOption = False) -> None:
    """Load (or retry a failed) model now, showing its state until it is ready."""
    from modelium.cli.fmt import human_duration
    from modelium.cli.follow import load_with_progress

    client = _client(config, url, api_key)
    out = console()
    try:
        if as_json:
            outcome = load_with_progress(client, model, lambda state, elapsed: None)
        elif out.is_terminal:
            with out.status(f"loading {model}...") as spinner:
                outcome = load_with_progress(client, model, lambda state, elapsed: spinner.update(
                    f"loading {model}: {state} ({human_duration(elapsed)})"))
        else:
            seen: list[str] = []

            def plain(state: str, elapsed: float) -> None:
                if not seen or seen[-1] != state:
                    seen.append(state)
                    typer.echo(f"{model}: {state} ({human_duration(elapsed)})")

            outcome = load_with_progress(client, model, plain)
    except KeyboardInterrupt:
        _fail(f"interrupted; {model} goes on loading in the daemon (`modelium ps` shows it)", 130)
    record = outcome.record or {}
    if as_json and outcome.error is None:
        print_json(record)
    took = human_duration(outcome.seconds)
    if outcome.error is not None:
        reason = record.get("reason") if record.get("state") == "failed" else None
        _fail(f"{model}: {reason or outcome.error} (after {took})")
    if not outcome.ok:
        _fail(f"{model}: {record.get('state', '?')} after {took}: {record.get('reason') or 'not ready'}")
    if not as_json:
        where = ", ".join(str(v) for v in (record.get("runtime"), record.get("device")) if v)
        typer.echo(f"{model}: ready in {took}" + (f" ({where})" if where else ""))


def _act(model: str, action: str, config: Path | None, url: str | None, api_key: str | None,
         as_json: bool) -> None:
    """POST /models/NAME/ACTION and say what the model is now."""
    record = _call(_client(config, url, api_key), "POST", f"{_model_path(model)}/{action}")
    if as_json:
        print_json(record)
        return
    pinned = " (pinned)" if record.get("pinned") else ""
    done = {"unload": "unloaded", "pin": "pinned", "unpin": "unpinned"}.get(action, action)
    typer.echo(f"{model}: {done}, now {record.get('state', '?')}{pinned}")


@app.command()
def unload(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
           as_json: JsonOption = False) -> None:
    """Unload a model (it is loaded again on its next request)."""
    _act(model, "unload", config, url, api_key, as_json)


@app.command()
def pin(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
        as_json: JsonOption = False) -> None:
    """Pin a model: never evicted or unloaded for idleness."""
    _act(model, "pin", config, url, api_key, as_json)


@app.command()
def unpin(model: str, config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
          as_json: JsonOption = False) -> None:
    """Unpin a model."""
    _act(model, "unpin", config, url, api_key, as_json)


@app.command()
def decisions(
    model: Annotated[str | None, typer.Argument(help="only this model")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    config: ConfigOption = None, url: UrlOption = None, api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """What the brain decided recently, newest first, and why."""
    query = f"/decisions?limit={limit}" + (f"&model={quote(model, safe='')}" if model else "")
    entries = _call(_client(config, url, api_key), "GET", query).get("decisions") or []
    if as_json:
        print_json(entries)
        return
    from modelium.cli.tables import decisions_table

    show(decisions_table(entries))


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
