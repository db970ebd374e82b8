"""The shared report and the workbook as a reader sees them: Debian's chromium driven by Playwright
(``make test-browser``, which installs chromium when missing; never ``playwright install``).

The report of a small run is opened at 800 and 1280 pixels wide: no sideways scroll, every image
loaded and drawn at its own aspect ratio, no console error. Then JupyterLab runs notebook 04 on the
workbook's run (trained by the notebooks when missing): every cell, then the attention browser's
token slider is moved one step and its layer and head pickers are used. Screenshots are saved in
``$BROWSER_TEST_DIR`` (default ``runs/browser-test``) for a person to look at.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline_runs import SMALL

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or ""
OUT = Path(os.environ.get("BROWSER_TEST_DIR", REPO / "runs" / "browser-test"))

if not CHROMIUM:
    pytest.skip("no chromium: `make test-browser` installs Debian's", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _page(browser, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


def test_the_report_never_scrolls_sideways_and_shows_every_film_at_its_aspect_ratio(browser):
    from flamingo_lib.pipeline.steps import Pipeline
    from flamingo_lib.reporting.run_page import build_run_report

    run = OUT / "report-run"
    report = build_run_report(Pipeline(run_dir=str(run), **SMALL))
    for width in (800, 1280):
        page, errors = _page(browser, width)
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        scroll, viewport = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= viewport, f"{width} px: the page is {scroll} px wide"
        images = page.evaluate("""[...document.images].map(i => ({complete: i.complete, natural: [i.naturalWidth,
            i.naturalHeight], shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height]}))""")
        assert len(images) >= 4 and all(i["complete"] and i["natural"][0] > 0 for i in images)
        for image in images:
            natural = image["natural"][0] / image["natural"][1]
            shown = image["shown"][0] / image["shown"][1]
            assert abs(shown / natural - 1) < 0.02, f"{width} px: an image drawn at {shown:.2f}, its own {natural:.2f}"
        assert not errors, errors
        page.screenshot(path=str(run / f"report-{width}px.png"), full_page=True)
        page.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab():
    """JupyterLab on a free local port with a token, serving a copy of notebook 04 whose ``runs/``
    is the notebooks' own (the workbook's run is reused, not retrained)."""
    folder = OUT / "lab"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "04_attention_maps.ipynb", folder)
    (REPO / "notebooks" / "runs").mkdir(exist_ok=True)
    (folder / "runs").symlink_to(REPO / "notebooks" / "runs")
    settings = OUT / "lab-settings"  # beside the served folder, not in its file browser
    # every cell rendered (JupyterLab renders only the cells in view by default), no news prompt
    for name, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                         "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", f"--LabApp.workspaces_dir={folder}",
         f"--LabApp.user_settings_dir={settings}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # a container's root user
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/lab/tree/04_attention_maps.ipynb?token={token}", folder
    _stop(server, port, token)


def _stop(server: subprocess.Popen, port: int, token: str) -> None:
    """Shuts the server down through its API (kernels first, so none is left behind), then by signal.

    A SIGTERM alone has been seen to leave JupyterLab waiting on its kernel past any sane wait on a
    loaded machine; the test's verdict is already in, so a server that still lingers is killed."""
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(request, timeout=10)
    except OSError:
        server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


def _wait_for_notebook(page, timeout_s: float) -> None:
    """Until the last cell prints "ok"; fails at once on an error output."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        error = page.locator("[data-mime-type='application/vnd.jupyter.error']")
        if error.count():
            pytest.fail(f"a cell failed: {error.first.inner_text()[:2000]}")
        if page.locator(".jp-Cell").last.locator(".jp-OutputArea").inner_text().strip().endswith("ok"):
            return
        time.sleep(1)
    pytest.fail(f"notebook 04 did not finish in {timeout_s:.0f} s")


def _run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells on the notebook, until a cell has started (JupyterLab may still be wiring
    the kernel to the page when its status first reads idle, and then drop the request)."""
    started = ("() => [...document.querySelectorAll('.jp-InputPrompt')]"
               ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))")  # "[*]:" or "[1]:"
    for _ in range(attempts):
        page.locator(".jp-Notebook").first.click()  # the notebook is the current widget the command runs on
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(started, timeout=30_000)
            return
        except sync_api.TimeoutError:
            continue
    pytest.fail(f"Run All Cells started no cell in {attempts} tries")


def _heatmap_source(page) -> str:
    image = page.locator("img.widget-image").first
    image.wait_for(timeout=60_000)
    return image.get_attribute("src") or ""


def _wait_for_new_heatmap(page, before: str) -> str:
    page.wait_for_function("before => { const i = document.querySelector('img.widget-image');"
                           " return i && i.getAttribute('src') !== before; }", arg=before, timeout=60_000)
    return _heatmap_source(page)


def test_notebook_04_runs_in_jupyterlab_and_its_attention_browser_answers(browser, jupyterlab):
    url, folder = jupyterlab
    page, _ = _page(browser, 1280)
    start = time.monotonic()
    lap = lambda what: print(f"{what}: {time.monotonic() - start:.0f} s", flush=True)  # noqa: E731
    page.goto(url)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
    lap("kernel idle")
    _run_all_cells(page)
    _wait_for_notebook(page, timeout_s=600)
    lap("all cells run")
    page.screenshot(path=str(folder / "notebook-04.png"), full_page=True)

    slider = page.locator(".widget-slider .noUi-handle").first
    slider.scroll_into_view_if_needed()
    before = _heatmap_source(page)
    slider.focus()
    page.keyboard.press("ArrowRight")  # one token on
    after_slider = _wait_for_new_heatmap(page, before)
    assert after_slider != before
    lap("slider moved")
    page.screenshot(path=str(folder / "browser-token-moved.png"))

    layer, head = page.locator(".widget-dropdown select").nth(0), page.locator(".widget-dropdown select").nth(1)
    shown = "s => s.options[s.selectedIndex].text"
    assert layer.evaluate(shown) == "mean" and head.evaluate(shown) == "mean"  # not an empty box
    layer.select_option(label="0")
    after_layer = _wait_for_new_heatmap(page, after_slider)
    head.select_option(label="1")
    _wait_for_new_heatmap(page, after_layer)
    assert (layer.evaluate(shown), head.evaluate(shown)) == ("0", "1")
    layer.select_option(label="mean")
    page.wait_for_timeout(500)
    assert layer.evaluate(shown) == "mean"  # picked again, still shown
    page.screenshot(path=str(folder / "browser-layer-mean-head-1.png"))
