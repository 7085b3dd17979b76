"""The dashboard in a real browser against a real daemon.

A daemon with an API key, a real tritonserver and a private Ray cluster serves a BERT
classifier and an ONNX graph on Triton, a tiny llama on Ray Serve and a model whose Triton
load fails. Debian's headless chromium (``make chromium``), driven by Playwright, opens
``/dashboard``: the page asks for the key, fills the table from the daemon, shows every
model with its state and runtime, both runtimes healthy, the device bar and the
decisions; clicking a model follows its log tail; the unload and pin buttons change what
the daemon itself reports (``GET /models/NAME``); the page fits a phone's width (only the
table scrolls sideways). Screenshots at laptop and phone width go to the test's tmp dir,
or to ``$MODELIUM_DASHBOARD_SCREENSHOTS`` (``docs/img`` refreshes the docs' pictures).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import free_port, running_daemon, triton_only_config
from tests.e2e.fixtures_triton import make_failing_python_model, make_onnx_model

pytestmark = pytest.mark.e2e

KEY = "dashboard-e2e-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUNTIME_OF = {"tiny-bert": "triton", "tiny-onnx": "triton", "tiny-llama": "ray_serve"}
SETTLE_TIMEOUT = 240
PAGE_TIMEOUT_MS = 30_000
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _model(url: str, name: str) -> dict:
    response = requests.get(f"{url}/models/{name}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:  # a missing part fails the test: it is never skipped
        pytest.fail("no `chromium` on PATH: run `make chromium` (Debian's package; Playwright "
                    "drives it because its own browser download needs the network)")
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    config = triton_only_config(
        gateway={"port": free_port(), "api_keys": [KEY]},
        ray={"http_port": free_port(), "gcs_port": free_port(), "num_cpus": 2},
        orchestration={"decision_interval_seconds": 1},
    )
    with running_daemon(tmp_path_factory.mktemp("dashboard-daemon"), config) as running:
        made = tmp_path_factory.mktemp("made")
        make_model("bert-classifier", made / "tiny-bert")
        make_model("llama", made / "tiny-llama")
        make_onnx_model(made / "tiny-onnx")
        make_failing_python_model(made / "broken", "broken")
        for name in (*RUNTIME_OF, "broken"):
            shutil.copytree(made / name, running.home / "incoming" / name)
        for name in (*RUNTIME_OF, "broken"):
            running.wait_for(lambda n=name: requests.get(f"{running.url}/models/{n}", headers=AUTH,
                                                         timeout=5).json().get("state") in ("ready", "failed"),
                             SETTLE_TIMEOUT, f"{name} settled")
        for name, runtime in RUNTIME_OF.items():
            detail = _model(running.url, name)
            assert (detail["state"], detail["runtime"]) == ("ready", runtime), detail
        for text in ("great film", "awful film"):  # some traffic, so QPS is not all zero
            answer = requests.post(f"{running.url}/predict/tiny-bert", headers=AUTH,
                                   json={"inputs": [text]}, timeout=60)
            assert answer.status_code == 200, answer.text
        yield running


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("MODELIUM_DASHBOARD_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _row(page, name: str, state: str | None = None):
    selector = f'#models-body tr[data-model="{name}"]' + (f'[data-state="{state}"]' if state else "")
    return page.locator(selector)


def test_dashboard_drives_the_daemon(daemon, browser, shots):
    page = browser.new_page(viewport=LAPTOP)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    assert requests.get(f"{daemon.url}/dashboard", timeout=10).status_code == 200  # no key for the shell
    page.goto(f"{daemon.url}/dashboard")

    # The gateway answers 401 without the key: the page asks for it and keeps it.
    page.locator("#key-form").wait_for(state="visible")
    assert page.locator("#summary").get_attribute("data-ready") == "unauthorized"
    page.fill("#key-input", "wrong-key")
    page.click("#key-save")
    page.locator("#key-error", has_text="refused").wait_for()
    page.fill("#key-input", KEY)
    page.click("#key-save")
    page.locator('#summary[data-ready="ready"]').wait_for()
    assert page.evaluate("localStorage.getItem('modelium.apiKey')") == KEY

    # Every model with its state and runtime, as the daemon reports them.
    for name in (*RUNTIME_OF, "broken"):
        detail = _model(daemon.url, name)
        row = _row(page, name, detail["state"])
        row.wait_for()
        assert row.locator("td.runtime").inner_text() == (detail["runtime"] or "-")
        assert row.locator("td.device").inner_text() == (detail["device"] or "-")
    assert _row(page, "broken").get_attribute("data-state") == "failed"
    page.wait_for_function("Number(document.querySelector("
                           "'#models-body tr[data-model=\"tiny-bert\"] td.qps').textContent) > 0")
    for runtime in ("triton", "ray_serve"):
        page.locator(f'#runtimes li[data-runtime="{runtime}"][data-health="healthy"]').wait_for()
    bar = page.locator('#devices .bar[data-device="cpu"]')
    for name in RUNTIME_OF:
        assert bar.locator(f'.seg[data-model="{name}"]').count() == 1, name
    assert page.locator('#decisions li[data-model="tiny-llama"]').count() >= 1

    # Clicking a model follows its log tail (the daemon's lines about it).
    _row(page, "tiny-onnx").locator("td.name").click()
    page.locator('#log-lines[data-model="tiny-onnx"] .line').first.wait_for()
    lines_before = page.locator("#log-lines .line").count()
    assert "tiny-onnx" in page.locator("#log-lines").inner_text()
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    # Unload from the page: the daemon itself reports it, then the page shows it.
    _row(page, "tiny-onnx").locator('button[data-action="unload"]').click()
    daemon.wait_for(lambda: _model(daemon.url, "tiny-onnx")["state"] == "unloaded", 60,
                    "tiny-onnx unloaded by the page's button")
    _row(page, "tiny-onnx", "unloaded").wait_for()
    assert bar.locator('.seg[data-model="tiny-onnx"]').count() == 0
    page.wait_for_function(f"document.querySelectorAll('#log-lines .line').length > {lines_before}")
    assert "unload" in page.locator("#log-lines").inner_text()
    assert _row(page, "tiny-onnx").locator('button[data-action="load"]').count() == 1

    # Pin from the page.
    _row(page, "tiny-bert").locator('button[data-action="pin"]').click()
    daemon.wait_for(lambda: _model(daemon.url, "tiny-bert")["pinned"] is True, 30, "tiny-bert pinned")
    page.locator('#models-body tr[data-model="tiny-bert"] td.pinned[data-pinned="true"]').wait_for()

    # Phone width: the page fits, only the table scrolls sideways.
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(500)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    assert page.evaluate("(() => { const s = document.querySelector('#models-section .scroll');"
                         " return s.scrollWidth > s.clientWidth; })()")
    page.screenshot(path=str(shots / "dashboard-phone.png"), full_page=True)
    assert errors == [], errors
    page.close()
