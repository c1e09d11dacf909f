"""The explorers in a real browser: JupyterLab started here, headless Chromium driven by Playwright.

Notebook 01 (a tiny checkpoint, `interactive=True`) is opened in JupyterLab and run; the test
moves the layer slider, the criterion dropdown and the ratio slider, and checks that the figures
redraw (the PNG bytes change) and that the kept-expert count the explorer shows is the plan's.
Needs Debian's `chromium` (`make test` installs it); Playwright's own browser download is not used.
"""

import base64
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from tiny_models import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "reapkit-browser-test"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason="needs /usr/bin/chromium (apt-get install chromium; make test installs it)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a tmp folder holding notebook 01 with the tiny model's parameters injected."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    root = tmp_path_factory.mktemp("lab")
    model, spec = tiny_checkpoint(root / "data")
    params = dict(
        model=str(model),
        calibration=spec,
        max_length=12,
        batch_size=4,
        criteria=["reap", "frequency"],
        ratios=[0.5],
        interactive=True,
        cache_dir=str(root / "cache"),
        output_dir=str(root / "out"),
        figures_dir=str(root / "figures"),
    )
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / "01_saliency.ipynb")), params)
    nbformat.write(nb, str(root / "explore.ipynb"))
    home = root / "jupyter"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    port = _free_port()
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {(root / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
        yield {"url": url, "root": root}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _images(page) -> list[bytes]:
    """PNG bytes of the figures in the explorer's output area."""
    sources = page.locator(".widget-output img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    return [base64.b64decode(s.split(",", 1)[1]) for s in sources if s and s.startswith("data:image/png")]


def _wait_for_new_images(page, before, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _images(page)
        if now and now != before and len(now) == len(before):
            return now
        page.wait_for_timeout(250)
    raise AssertionError("the explorer's figures did not redraw")


def _slider(page, description):
    return page.locator(".widget-hslider", has=page.locator(".widget-label", has_text=re.compile(f"^{description}$")))


def _drag(page, slider, fraction):
    """Drag the slider's handle to `fraction` of its track (a change is sent on release)."""
    track = slider.locator(".noUi-target").bounding_box()
    handle = slider.locator(".noUi-handle").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], track["y"] + track["height"] / 2, steps=8)
    page.mouse.up()


def _kept_shown(page) -> int:
    return int(page.locator("span.reapkit-kept").inner_text())


def _plan_kept(lab, criterion, ratio, layer) -> int:
    from reapkit.observe.observations import Observations
    from reapkit.select.plan import PruningPlan

    cached = [p.parent for p in Path(lab["root"], "cache").rglob("*.json")]
    obs = Observations.load(cached[0])
    return len(PruningPlan.from_observations(obs, criterion, ratio=ratio).kept[layer])


def test_explorer_redraws_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{lab['url']}/lab/tree/explore.ipynb?token={TOKEN}")
            page.locator(".jp-Notebook .jp-Cell").nth(10).wait_for()  # the notebook's cells are rendered
            page.get_by_text(re.compile(r"\| Idle")).first.wait_for()  # and its kernel is up
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            page.locator("span.reapkit-kept").wait_for(timeout=120_000)
            page.locator(".widget-output img").first.wait_for(timeout=60_000)
            images = _images(page)
            assert len(images) == 3  # saliency, clusters, mask

            # every inline figure of the notebook shows (not only the explorer's)
            shown = page.locator(".jp-OutputArea-output img").count()
            assert shown >= 5 + 3, f"{shown} images in the page"

            ratio = _slider(page, "removed")
            assert ratio.locator(".widget-readout").inner_text() == "50% (4/8)"
            assert _kept_shown(page) == _plan_kept(lab, "reap", 0.5, 0) == 4

            _drag(page, _slider(page, "layer"), 1.0)  # the last MoE layer
            images = _wait_for_new_images(page, images)

            page.locator(".widget-dropdown", has=page.locator("label", has_text="criterion")).locator(
                "select"
            ).select_option("frequency")
            images = _wait_for_new_images(page, images)

            _drag(page, ratio, 1.0)  # the most a plan can remove: 6 of 8 (each layer keeps top-k = 2)
            images = _wait_for_new_images(page, images)
            label = ratio.locator(".widget-readout").inner_text()
            assert label == "75% (6/8)", label
            assert (
                "removed by <b>frequency</b>"
                in page.locator(".widget-html-content", has=page.locator("span.reapkit-kept")).inner_html()
            )
            assert _kept_shown(page) == _plan_kept(lab, "frequency", 0.75, 1) == 2
        except Exception:
            page.screenshot(path=str(lab["root"] / "failure.png"), full_page=True)
            print(f"screenshot: {lab['root'] / 'failure.png'}")
            raise
        finally:
            browser.close()
    print(f"browser test: {time.perf_counter() - start:.1f} s in the browser")
