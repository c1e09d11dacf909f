"""`make lab`: JupyterLab on the notebooks with the project's kernel; and whether a notebook runs live.

    show_explorer(P.interactive)     # in a notebook's last cell: build its explorer here?
    live_session({"JPY_SESSION_NAME": "notebooks/01_saliency.ipynb"})
    True
    live_session({"JPY_SESSION_NAME": "notebooks/01_saliency.ipynb", "REAPKIT_BATCH": "1"})
    False
    register_kernel()                 # kernel "reapkit": this interpreter, this checkout

``python -m reapkit.run.lab [--port N] [--ip ADDR] [--no-browser]`` is what `make lab` runs (the
same without make, e.g. in the conda environment of environment.yml): it
registers the kernel, starts JupyterLab in the repository with the file browser on `notebooks/`
(jupytext pairing on), waits until it answers, and prints its address and the ssh port forward
that reaches it from a laptop when it runs on a remote GPU machine.

**Live or batch.** A Jupyter server (JupyterLab, Notebook 7) starts the kernel of a notebook a person
opened with the environment variable ``JPY_SESSION_NAME`` set to the notebook's path (jupyter_server
does it for every session; ipykernel reads it); papermill, nbclient and plain ``python`` do not.
reapkit's own batch runs (:func:`reapkit.run.execute.run_notebook`: `make demo`, sweeps, the tests)
also remove that variable from the kernel's environment and set ``REAPKIT_BATCH=1``, so a batch run
started from inside a JupyterLab kernel is still a batch run. A notebook's explorer is built when
its `interactive` parameter is True, or None (the default) in a live session; under papermill
nothing is built and nothing waits for a frontend.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from reapkit.errors import InvalidInput
from reapkit.run.notebook import NOTEBOOKS_DIR, cores

__all__ = [
    "KERNEL",
    "BATCH",
    "live_session",
    "show_explorer",
    "widgets_saved_as_text",
    "register_kernel",
    "lab_command",
    "free_port",
    "wait_until_ready",
    "main",
]

#: The kernel `make lab` registers and the notebooks name in their metadata.
KERNEL = "reapkit"
#: Set to "1" in the environment of every kernel reapkit's batch runs start.
BATCH = "REAPKIT_BATCH"
SESSION = "JPY_SESSION_NAME"
WIDGET = "application/vnd.jupyter.widget-view+json"
ROOT = NOTEBOOKS_DIR.parent


def live_session(environ=None) -> bool:
    """True in a kernel a Jupyter server started for an open notebook, outside reapkit's batch runs.

    live_session({})     # papermill, nbclient, python
    False
    """
    environ = os.environ if environ is None else environ
    return bool(environ.get(SESSION)) and not environ.get(BATCH)


def show_explorer(interactive) -> bool:
    """Whether a notebook builds its explorer: `interactive` True or False decides; None: :func:`live_session`.

    show_explorer(True), show_explorer(False)
    (True, False)
    """
    return live_session() if interactive is None else bool(interactive)


def widgets_saved_as_text(model, **kwargs) -> None:
    """Jupyter pre-save hook of `make lab`: a widget's output is saved as its text only. A widget cannot
    outlive its kernel; saved as a widget, a notebook opened again would show "Error displaying widget:
    model not found" where the explorer was, and now shows the explorer's one line until the cell runs again."""
    if model.get("type") != "notebook":
        return
    for cell in model["content"].get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET in data and data.get("text/plain"):
                del data[WIDGET]


def register_kernel(prefix=None, *, root=ROOT) -> Path:
    """Write the kernel spec "reapkit" into `prefix`/share/jupyter/kernels (default `sys.prefix`: the
    project's venv); returns its folder. The kernel runs this interpreter, imports the checkout at
    `root` first, draws figures inline whatever MPLBACKEND the shell that started JupyterLab set, and
    leaves a core to JupyterLab and the browser as `make demo` leaves one (torch threads: OMP_NUM_THREADS
    when set, else one less than the cores; oversubscribed threads run several times slower)."""
    from ipykernel.kernelspec import install

    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores() - 1))
    env = {"PYTHONPATH": str(root), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    path = install(kernel_name=KERNEL, display_name=KERNEL, prefix=str(prefix or sys.prefix), env=env)
    return Path(path)


def lab_command(*, port: int, token: str, ip: str = "127.0.0.1", root=ROOT, browser: bool = False) -> list[str]:
    """The `jupyter lab` command line of `make lab`, e.g. ``lab_command(port=8888, token=secrets.token_hex(16))``:
    the repository as root, opening on `notebooks/`,
    jupytext's contents manager on (the .ipynb / .py pairs save together), widgets saved as their text
    (:func:`widgets_saved_as_text`), no network calls."""
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.jpserver_extensions=jupyterlab_jupytext=True",
        "--ContentsManager.pre_save_hook=reapkit.run.lab.widgets_saved_as_text",
        "--LabApp.default_url=/lab/tree/notebooks",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--log-level=WARN",
    ]
    if not browser:
        command.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return command


def free_port(ip: str = "127.0.0.1", start: int = 8888, tries: int = 100) -> int:
    """The first port from `start` nobody listens on (0 for `start`: any free port)."""
    for port in range(start, start + tries) if start else [0]:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise InvalidInput(f"no free port in {start}-{start + tries - 1} on {ip}; pass --port")


def wait_until_ready(url: str, token: str, server: subprocess.Popen, timeout: float = 300) -> float:
    """Poll `url`/api/status until the server answers; returns the seconds waited. Raises when it exits first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                return time.monotonic() - start
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {server.returncode} before it answered") from None
            time.sleep(0.2)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def _remote() -> bool:
    """On a machine reached over ssh, or without a display, no browser can open here."""
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"):
        return True
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def banner(url: str, *, port: int, ip: str, kernel: Path, seconds: float) -> str:
    """What `make lab` prints once JupyterLab answers: the address, and how to reach it from a laptop."""
    host = socket.gethostname()
    local = "localhost" if ip in ("127.0.0.1", "localhost", "::1") else ip
    return "\n".join(
        [
            "",
            f"reapkit lab: JupyterLab is ready ({seconds:.0f} s), notebooks open with kernel {KERNEL!r} "
            f"({kernel / 'kernel.json'})",
            f"    {url}",
            f"On a remote GPU machine (this one is {host}): forward the port from your laptop, then open the",
            "address above there (Jupyter runs with --no-browser on a machine without a display):",
            f"    ssh -N -L {port}:{local}:{port} {getpass.getuser()}@{host}",
            "Stop with Ctrl-C.",
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reapkit.run.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="port to serve on (default: the first free one from 8888)")
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1: reach it by ssh)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser (the default over ssh)")
    parser.add_argument("--register", action="store_true", help="only register the kernel, start nothing")
    parser.add_argument("--prefix", help="where the kernel spec goes (default: this environment, sys.prefix)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    kernel = register_kernel(args.prefix)
    if args.register:
        print(f"kernel {KERNEL!r} registered in {kernel}")
        return 0
    port = args.port or free_port(args.ip)
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(16)
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    url = f"http://{host}:{port}/lab/tree/notebooks?token={token}"
    browser = not (args.no_browser or _remote())
    command = lab_command(port=port, token=token, ip=args.ip, browser=browser)
    server = subprocess.Popen(command, cwd=ROOT, start_new_session=True)  # Ctrl-C reaches this process only

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, stop)
    try:
        wait_until_ready(f"http://{host}:{port}", token, server)
        print(banner(url, port=port, ip=args.ip, kernel=kernel, seconds=time.monotonic() - start), flush=True)
        return server.wait()
    except KeyboardInterrupt:
        print("\nreapkit lab: stopping JupyterLab", file=sys.stderr)
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
