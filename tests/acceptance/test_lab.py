"""`make lab`: the kernel it registers, JupyterLab answering at the address it prints; live or batch in real kernels."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from reapkit.run.lab import BATCH, KERNEL, SESSION, lab_command, live_session, register_kernel, show_explorer

ROOT = Path(__file__).resolve().parents[2]


def test_live_session_is_a_kernel_a_jupyter_server_started_outside_batch_runs(monkeypatch):
    assert live_session({SESSION: "/repo/notebooks/01_saliency.ipynb"})
    assert not live_session({}) and not live_session({SESSION: ""})
    assert not live_session({SESSION: "/repo/notebooks/01_saliency.ipynb", BATCH: "1"})
    monkeypatch.delenv(SESSION, raising=False)
    monkeypatch.delenv(BATCH, raising=False)
    assert show_explorer(True) and not show_explorer(False) and not show_explorer(None)
    monkeypatch.setenv(SESSION, "01_saliency.ipynb")
    assert show_explorer(None) and not show_explorer(False)


def test_make_lab_sets_up_then_runs_the_lab_module_and_setup_registers_the_kernel():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lab: setup\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "-m reapkit.run.lab" in recipe[1]
    assert "-m reapkit.run.lab --register" in re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M)[1]
    nb = nbformat.read(str(ROOT / "notebooks" / "01_saliency.ipynb"), as_version=4)
    assert nb.metadata.kernelspec.name == KERNEL  # the notebooks open in it, no choice to make


def test_the_kernel_runs_this_interpreter_and_this_checkout(tmp_path):
    folder = register_kernel(tmp_path, root=ROOT)
    spec = json.loads((folder / "kernel.json").read_text())
    assert folder == tmp_path / "share" / "jupyter" / "kernels" / KERNEL
    assert spec["argv"][0] == sys.executable and spec["display_name"] == KERNEL
    assert spec["env"]["PYTHONPATH"] == str(ROOT) and "inline" in spec["env"]["MPLBACKEND"]
    command = lab_command(port=8999, token="t", root=ROOT)
    assert "--ServerApp.jpserver_extensions=jupyterlab_jupytext=True" in command  # pairing on
    assert "--LabApp.default_url=/lab/tree/notebooks" in command and "--no-browser" in command
    assert "--ContentsManager.pre_save_hook=reapkit.run.lab.widgets_saved_as_text" in command


def test_widgets_are_saved_as_their_text():
    from reapkit.run.lab import widgets_saved_as_text

    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "CostExplorer (...): run"}
    image = {"image/png": "iVBOR", "text/plain": "<Figure>"}
    model = {"type": "notebook", "content": {"cells": [{"outputs": [{"data": dict(view)}, {"data": dict(image)}]}]}}
    widgets_saved_as_text(model)
    assert [o["data"] for o in model["content"]["cells"][0]["outputs"]] == [
        {"text/plain": "CostExplorer (...): run"},
        image,
    ]
    other = {"type": "file", "content": "text"}
    widgets_saved_as_text(other)
    assert other == {"type": "file", "content": "text"}


@pytest.mark.slow
def test_lab_prints_an_address_that_answers_and_stops_cleanly(tmp_path):
    """What `make lab` runs, with the kernel spec in a folder of the test: ready, the address it printed works,
    the kernel it names is there, and Ctrl-C (here SIGTERM) stops JupyterLab."""
    from reapkit.run.lab import free_port

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JUPYTER_PATH": str(tmp_path / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_TOKEN": "lab-test",
        "SSH_CONNECTION": "10.0.0.1 50000 10.0.0.2 22",  # as on a remote GPU machine: no browser
    }
    start = time.monotonic()
    lab = subprocess.Popen(
        [sys.executable, "-m", "reapkit.run.lab", "--port", str(port), "--prefix", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        for line in lab.stdout:
            lines.append(line)
            if line.startswith("Stop with Ctrl-C"):
                break
        ready = time.monotonic() - start
        text = "".join(lines)
        url = re.search(r"http://127\.0\.0\.1:\d+/lab/tree/notebooks\?token=lab-test", text)
        assert url and f":{port}/" in url[0], text
        assert f"ssh -N -L {port}:localhost:{port} " in text and "JupyterLab is ready" in text
        with urllib.request.urlopen(url[0], timeout=10) as page:
            assert page.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token=lab-test", timeout=10) as r:
            specs = json.loads(r.read())["kernelspecs"]
        assert specs[KERNEL]["spec"]["argv"][0] == sys.executable
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/notebooks?token=lab-test", timeout=10) as r:
            listed = {item["name"] for item in json.loads(r.read())["content"]}
        assert "01_saliency.ipynb" in listed  # served from the repository, on notebooks/
        print(f"make lab: ready in {ready:.1f} s (kernel registered, JupyterLab answering)")
    finally:
        lab.send_signal(signal.SIGTERM)
        assert lab.wait(timeout=30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)


@pytest.mark.slow
def test_batch_runs_build_no_explorer_and_a_jupyter_server_kernel_does(tmp_path, monkeypatch):
    """In a real kernel: run_notebook (make demo, sweeps) is batch even when started from a JupyterLab kernel;
    a kernel started as a Jupyter server starts it (JPY_SESSION_NAME) is live."""
    from nbclient import NotebookClient

    from reapkit.run.execute import run_notebook

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("interactive = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("from reapkit.run.lab import show_explorer\nshow_explorer(interactive)"),
    ]
    nbformat.write(nb, str(tmp_path / "probe.ipynb"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv(SESSION, str(tmp_path / "outer.ipynb"))  # as inside a JupyterLab kernel

    def shown(path):
        cell = nbformat.read(str(path), as_version=4).cells[-1]
        return cell.outputs[0]["data"]["text/plain"]

    assert shown(run_notebook(tmp_path / "probe.ipynb", {}, tmp_path / "batch")) == "False"
    assert os.environ[SESSION] == str(tmp_path / "outer.ipynb") and BATCH not in os.environ  # restored
    live = nbformat.read(str(tmp_path / "probe.ipynb"), as_version=4)
    NotebookClient(live, kernel_name="python3", timeout=120).execute(env={**os.environ, SESSION: "probe.ipynb"})
    assert live.cells[-1].outputs[0]["data"]["text/plain"] == "True"
