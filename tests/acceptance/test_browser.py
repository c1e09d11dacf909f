"""The five notebooks as a person uses them: JupyterLab started the way `make lab` starts it, headless Chromium.

JupyterLab runs `reapkit.run.lab.lab_command` on a copy of notebooks/ (a tiny checkpoint and a few
tokens injected, as papermill injects parameters; `interactive` is left alone), with the kernel
"reapkit" registered by `register_kernel` in a folder of the test. For each notebook, in the order of
`make demo` (04 reads 05's tables), the test opens it, runs all cells from the Run menu and checks:
the notebook opened with kernel "reapkit" and no kernel choice; no error output and no error in the
browser console; every figure the notebook saved also shows inline; its explorer appears (figures,
not a blank box or a repr), and each of its controls redraws the figure; saving writes the paired
.py (jupytext), with the explorer saved as its one line of text, which notebook 01 shows when opened
again. A screenshot of each notebook's explorer goes to runs/browser/<notebook>.png.
Needs Debian's `chromium` (`make test` installs it); Playwright's own browser download is not used.
"""

import base64
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from tiny_models import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "runs" / "browser"
TOKEN = "reapkit-browser-test"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ORDER = ["01_saliency", "02_clusters", "03_pruning", "05_study", "04_paper_figures"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason="needs /usr/bin/chromium (apt-get install chromium; make test installs it)"
    ),
]


def _parameters(root: Path, model, spec) -> dict:
    """Per notebook: the tiny checkpoint and a few tokens; no `interactive`."""
    out = root / "out"
    common = dict(model=str(model), calibration=spec, max_length=12, batch_size=4, cache_dir=str(root / "cache"))
    each = {
        "01_saliency": dict(criteria=["reap", "frequency"], ratios=[0.5], evaluation=spec),
        "02_clusters": dict(n_clusters=3),
        "03_pruning": dict(
            evaluation=spec,
            criteria=["reap", "frequency"],
            ratios=[0.25, 0.5],
            max_new_tokens=0,
            recover_epochs=1,
            search_generations=1,
            search_population=2,
        ),
        "05_study": dict(
            evaluation=spec,
            ratios=[0, 0.25, 0.5],
            criteria=["reap", "frequency"],
            random_seeds=[],
            merges=[],
            search_generations=1,
            search_population=2,
        ),
        "04_paper_figures": dict(
            results=[str(out / "05_study" / "results.csv")],
            layer_sensitivity=str(out / "05_study" / "layer_sensitivity.csv"),
        ),
    }
    return {
        name: {**common, **extra, "output_dir": str(out / name), "figures_dir": str(root / "figures" / name)}
        for name, extra in each.items()
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab as `make lab` starts it, on a tmp copy of notebooks/ with the tiny model's parameters injected."""
    import jupytext
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from reapkit.run.lab import free_port, lab_command, register_kernel, wait_until_ready

    root = tmp_path_factory.mktemp("lab")
    model, spec = tiny_checkpoint(root / "data")
    (root / "notebooks").mkdir()
    for name, params in _parameters(root, model, spec).items():
        nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / f"{name}.ipynb")), params)
        nbformat.write(nb, str(root / "notebooks" / f"{name}.ipynb"))
        jupytext.write(nb, str(root / "notebooks" / f"{name}.py"), fmt="py:percent")  # the pair agrees
    kernel = register_kernel(root / "prefix", root=ROOT)  # imports the tree under test
    home = root / "jupyter"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # the server's save hook, from the tree under test
        "JUPYTER_PATH": str(root / "prefix" / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("JPY_SESSION_NAME", None)
    env.pop("REAPKIT_BATCH", None)
    port = free_port(start=0)
    log = open(root / "lab.log", "w")
    start = time.monotonic()
    server = subprocess.Popen(
        lab_command(port=port, token=TOKEN, root=root), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, TOKEN, server, timeout=120)
        print(f"JupyterLab ready in {time.monotonic() - start:.1f} s")
        yield {"url": url, "root": root, "kernel": kernel}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _api(lab, method: str, path: str):
    request = urllib.request.Request(f"{lab['url']}{path}?token={TOKEN}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


# --------------------------------------------------------------------------------------------
# What the page shows
# --------------------------------------------------------------------------------------------

EXPLORER = ".jp-Notebook .jp-Cell:last-child .jupyter-widgets.widget-vbox"


def _images(page) -> list[bytes]:
    """PNG bytes of the figures in the explorer's output area."""
    sources = page.locator(f"{EXPLORER} .widget-output img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    return [base64.b64decode(s.split(",", 1)[1]) for s in sources if s and s.startswith("data:image/png")]


def _wait_for_new_images(page, before, what, timeout=30) -> float:
    """Seconds until the explorer shows other figures than `before` (as many)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        now = _images(page)
        if now and now != before and len(now) == len(before):
            return time.monotonic() - start
        page.wait_for_timeout(100)
    raise AssertionError(f"the explorer's figures did not redraw after {what}")


def _texts(locator) -> list[str]:
    """textContent (innerText is empty for cells JupyterLab has not laid out: they are off screen)."""
    return locator.evaluate_all("els => els.map(e => e.textContent)")


def _prompts(page) -> list[str]:
    return _texts(page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"))


def _wait_until_run(page, timeout=600) -> float:
    """Seconds until every code cell has run (a number in its prompt), or raise at the first error."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        prompts = _prompts(page)
        if prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts):
            return time.monotonic() - start
        if any("Traceback" in t for t in _texts(page.locator(".jp-OutputArea-output"))):
            break
        page.wait_for_timeout(250)
    texts = _texts(page.locator(".jp-OutputArea-output"))
    raise AssertionError(f"the notebook did not run through; last outputs: {texts[-2:]}")


def _controls(page):
    """The explorer's controls: (kind, description, locator), in page order."""
    found = []
    for box in page.locator(f"{EXPLORER} .widget-inline-hbox").all():
        label = box.locator(".widget-label").first
        name = label.inner_text().strip() if label.count() else ""
        classes = box.get_attribute("class") or ""
        if "widget-dropdown" in classes:
            found.append(("dropdown", name, box))
        elif "widget-select-multiple" in classes:
            found.append(("multiple", name, box))
        elif "widget-hslider" in classes:
            found.append(("slider", name, box))
    return found


def _enabled(kind, box) -> bool:
    if kind == "slider":
        return (
            "disabled" not in (box.locator(".noUi-target").get_attribute("class") or "")
            and not box.locator(".noUi-target[disabled]").count()
        )
    return box.locator("select").is_enabled()


def _drag(page, slider, fraction):
    """Drag the slider's handle to `fraction` of its track (a change is sent on release)."""
    track = slider.locator(".noUi-target").bounding_box()
    handle = slider.locator(".noUi-handle").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], track["y"] + track["height"] / 2, steps=8)
    page.mouse.up()


def _change(page, kind, box) -> str:
    """Change one control to another value; returns what it now shows."""
    if kind == "dropdown":
        select = box.locator("select")
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("s => s.options[s.selectedIndex].text")
        choice = options[(options.index(current) + 1) % len(options)]
        select.select_option(label=choice)
        return choice
    if kind == "multiple":
        select = box.locator("select")
        first = select.locator("option").first.inner_text()
        select.select_option(label=[first])
        return first
    readout = box.locator(".widget-readout")
    before = readout.inner_text()
    _drag(page, box, 1.0)
    page.wait_for_timeout(150)
    if readout.inner_text() == before:  # at the end already: the other end
        _drag(page, box, 0.0)
        page.wait_for_timeout(150)
    return readout.inner_text()


def _exercise(page, name) -> dict[str, float]:
    """Change each control once (a control a figure does not read is enabled by changing the figure first);
    returns {control: seconds until the figure redrew}."""
    seconds, images = {}, _images(page)
    for _ in range(12):
        pending = [(k, n, b) for k, n, b in _controls(page) if n not in seconds]
        if not pending:
            break
        ready = [(k, n, b) for k, n, b in pending if _enabled(k, b)]
        if not ready:  # e.g. notebook 04: domain is read by the figures after the dendrogram
            kind, _, box = next(c for c in _controls(page) if c[1] == "figure")
            _change(page, kind, box)
            _wait_for_new_images(page, images, f"{name}: the figure dropdown")
            images = _images(page)
            continue
        kind, control, box = ready[0]
        shown = _change(page, kind, box)
        seconds[control] = round(_wait_for_new_images(page, images, f"{name}: {control} -> {shown}"), 2)
        images = _images(page)
    assert seconds and not [n for _, n, _ in _controls(page) if n not in seconds], f"{name}: controls left {seconds}"
    return seconds


def _saved_figures(lab, name) -> int:
    return len(list((lab["root"] / "figures" / name).glob("*.png")))


def _check_notebook(page, lab, name, console, *, reopen=False) -> dict:
    timings = {}
    start = time.monotonic()
    page.goto(f"{lab['url']}/lab/tree/notebooks/{name}.ipynb?reset&token={TOKEN}")
    page.locator(".jp-Notebook .jp-Cell").nth(3).wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=120_000)  # its kernel is up, no choice asked
    assert not page.locator(".jp-Dialog").count(), f"{name}: a dialog asks something before the notebook runs"
    kernel = page.locator(".jp-Toolbar-kernelName").first.inner_text().strip()
    assert kernel == "reapkit", f"{name} opened with kernel {kernel!r}"
    timings["open"] = round(time.monotonic() - start, 1)

    news = page.locator(".jp-toast-button", has_text=re.compile("^No$"))  # "notified about Jupyter news?"
    if news.count():
        news.first.click()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    timings["run all"] = round(_wait_until_run(page), 1)

    # the explorer: figures in a widget, not a blank box, not an object's text
    explorer = page.locator(EXPLORER).first
    explorer.locator(".widget-output img").first.wait_for(timeout=30_000)
    last = " ".join(_texts(page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-OutputArea")))
    assert "Error displaying widget" not in last and not re.search(r"Explorer\(|VBox\(|<reapkit", last), last[:300]
    widths = explorer.locator(".widget-output img").evaluate_all("els => els.map(e => e.naturalWidth)")
    assert widths and min(widths) > 200, f"{name}: explorer images {widths}"

    # every figure the notebook saved also shows inline (outside the explorer)
    inline = page.locator(".jp-OutputArea-output img").count() - page.locator(f"{EXPLORER} img").count()
    saved = _saved_figures(lab, name)
    assert saved and inline >= saved, f"{name}: {saved} figures saved, {inline} shown inline"

    timings["controls"] = _exercise(page, name)
    page.locator(".jp-Notebook .jp-Cell").last.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_function(f"() => [...document.querySelectorAll('{EXPLORER} img')].every(i => i.complete)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))

    # saved as a person saves: the .ipynb has no error output, and jupytext writes the paired .py
    py = lab["root"] / "notebooks" / f"{name}.py"
    before = py.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 20
    while py.stat().st_mtime_ns == before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert py.stat().st_mtime_ns != before, f"{name}: saving did not write the paired {py.name} (jupytext)"
    nb = nbformat.read(str(py.with_suffix(".ipynb")), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    saved = [o.get("data", {}) for o in nb.cells[-1].outputs]
    assert saved and not [d for d in saved if "application/vnd.jupyter.widget-view+json" in d]  # as its line
    if reopen:  # opened again (tomorrow): the explorer's line where it was, not "Error displaying widget"
        page.reload()
        page.locator(".jp-Notebook .jp-Cell").nth(3).wait_for(timeout=60_000)
        text = ""
        for _ in range(60):  # JupyterLab renders only the cells in view: scroll to the end until the last is there
            page.locator(".jp-WindowedPanel-outer").last.evaluate("e => { e.scrollTop = e.scrollHeight; }")
            last = page.locator(".jp-Notebook .jp-Cell").last
            text = (
                " ".join(_texts(last.locator(".jp-OutputArea")))
                if last.locator(".jp-OutputArea-output").count()
                else ""
            )
            if "run this cell in JupyterLab to explore" in text:
                break
            page.wait_for_timeout(500)
        assert "run this cell in JupyterLab to explore" in text and "Error displaying widget" not in text, text
    assert not console, f"{name}: browser console errors: {console[:5]}"
    return timings


def test_every_notebook_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    report, failures = {}, []
    for stale in SHOTS.glob("*.png"):
        stale.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            console = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(str(e)))
            for name in ORDER:
                console.clear()
                try:
                    report[name] = _check_notebook(page, lab, name, console, reopen=name == ORDER[0])
                except Exception as error:  # every notebook is checked; all failures reported
                    SHOTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SHOTS / f"{name}-failure.png"), full_page=True)
                    failures.append(f"{name}: {error} (screenshot {SHOTS / f'{name}-failure.png'})")
                finally:
                    for session in _api(lab, "GET", "/api/sessions"):  # the next notebook runs alone
                        _api(lab, "DELETE", f"/api/sessions/{session['id']}")
        finally:
            browser.close()
    for name, timings in report.items():
        print(f"{name}: {timings}")
    print(f"browser test: {time.perf_counter() - start:.1f} s in the browser; screenshots in {SHOTS}/")
    assert not failures, "\n".join(failures)
