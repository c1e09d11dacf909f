"""Outputs that appear whole or not at all, never over their own inputs, readable as the umask says.

    >>> check_separate("out/pruned", "models/qwen3")        # raises if one lies inside the other
    >>> with atomic_directory("out/pruned", force=False) as tmp:
    ...     model.save_pretrained(tmp)            # written into a temporary sibling
    >>> # renamed to out/pruned only when the block succeeds; an interrupt removes the sibling
    >>> atomic_write_text("out/table.csv", text)  # a unique temporary name per writer
    >>> with locked("runs/sweep"):                # one writer at a time (fcntl lock on the folder)
    ...     ...

An interrupt (Ctrl-C, or SIGTERM once :func:`terminate_as_interrupt` is installed) during the
final renames is held back until they are done, so an output is never half replaced. A process
killed outright (SIGKILL, power loss) cannot clean up: its temporary sibling carries its process id,
and the next write of the same output removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from reapkit.errors import InvalidInput, OutputExists, OutputUnwritable

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler: cleans up like Ctrl-C does (`finally` blocks run)."""


def terminate_as_interrupt():
    """Make SIGTERM raise :class:`Interrupted` in the main thread, so temporary outputs are removed.

    Returns the previous handler (give it to `signal.signal(signal.SIGTERM, ...)` to restore it).
    """

    def handler(signum, frame):
        raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, handler)
    return None


@contextlib.contextmanager
def signals_held():
    """Delay SIGINT / SIGTERM until the block ends (renames and clean-up are not cut in half)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def _public(path: Path, *, directory: bool) -> None:
    """Give `path` the mode a plain `mkdir` / `open` would have (mkdtemp / mkstemp make them private)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def _public_tree(root: Path) -> None:
    """`_public` for `root` and everything in it (safetensors 0.8 writes its files 0600)."""
    _public(root, directory=True)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            _public(Path(folder) / name, directory=True)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _public(Path(folder) / name, directory=False)


def check_separate(output, *inputs, what: str = "output") -> None:
    """Raise InvalidInput (a ValueError) if `output` is one of `inputs`, lies inside one, or contains one.

    Inputs that do not exist on disk (hub names, "demo") are skipped; symlinks are resolved.
    """
    if output is None:
        return
    out = Path(output).expanduser().resolve()
    for source in inputs:
        if source is None or str(source) == "":
            continue
        src = Path(source).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if out == src:
            relation = "is"
        elif src in out.parents:
            relation = "lies inside"
        elif out in src.parents:
            relation = "contains"
        else:
            continue
        raise InvalidInput(
            f"{what} {output} {relation} the input {source}; writing there could destroy the input. "
            "Choose an output folder outside the inputs"
        )


def check_new_output(path, *, force: bool = False, what: str = "output") -> None:
    """Refuse early an existing `path` (unless `force`) and a parent that cannot hold it."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExists(f"{what} {path} already exists; choose another output or pass --force to replace it")
    parent = next(p for p in [path.parent, *path.parent.parents] if p.exists() or p == p.parent)
    if not parent.is_dir():
        raise OutputUnwritable(
            f"cannot write {what} {path}: {parent} is a file, not a folder; choose another output path"
        )
    try:  # a real write test: os.access says yes to root even where nothing can be created
        os.rmdir(tempfile.mkdtemp(prefix=".reapkit-probe-", dir=parent))
    except OSError as error:
        raise OutputUnwritable(
            f"cannot write {what} {path}: nothing can be created in {parent} ({error.strerror}); "
            "choose a folder you can write to"
        ) from None


def _temp_prefix(path: Path) -> str:
    """`.NAME.tmp-PID-`: the writer's process id lets a later writer tell a dead one's leftovers."""
    return f".{path.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path) -> list[Path]:
    """Remove temporary siblings of `path` left by writers that were killed (their process is gone).

    >>> remove_stale_temporaries("out/pruned")    # e.g. [Path('out/.pruned.tmp-4242-x1y2')]
    """
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{path.name}.tmp-*-*"):
        pid = stale.name[len(f".{path.name}.tmp-") :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_directory(path, *, force: bool = False):
    """Yield a temporary sibling directory of `path`; on success rename it to `path`.

    An existing `path` is refused unless `force=True` (then replaced only after success). The
    new folder and its files get the modes `mkdir` / `open` would give them (the umask), not
    mkdtemp's private 0700 or safetensors' 0600.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExists(f"{path} already exists; choose another output directory or pass force=True (--force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = None
    try:
        with signals_held():  # an interrupt between creating the folder and this block would leave it behind
            tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
        yield tmp
        _public_tree(tmp)
        with signals_held():
            if path.exists():
                old = path.with_name(f".{path.name}.old-{tmp.name}")
                path.rename(old)
                try:
                    tmp.rename(path)
                except BaseException:
                    old.rename(path)  # put the previous output back
                    raise
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
            else:
                tmp.rename(path)
    except BaseException:
        if tmp is not None:
            with signals_held():
                shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary sibling file name of `path` (unique to this writer); rename it to `path` on success.

    >>> with atomic_file("figures/a.png") as tmp:
    ...     fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = None
    try:
        with signals_held():  # as in atomic_directory: the file exists only inside this try
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
            os.close(fd)
        yield Path(tmp)
        _public(Path(tmp), directory=False)
        with signals_held():
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with signals_held():
                Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> Path:
    """Write a text file via :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def locked(folder):
    """Hold an exclusive lock on `folder` (created if missing) while inside; other processes wait.

    Uses `fcntl.flock` on the folder itself, so no lock file is left behind.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def replacing_directory(path):
    """Yield `path` as a fresh empty folder; a previous one is kept aside until the block ends.

    On success the previous folder is deleted; on an error or interrupt the new one is removed and
    the previous one put back (for tools that must write to the final path, such as papermill runs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = None
    with signals_held():
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        path.mkdir()
    try:
        yield path
    except BaseException:
        with signals_held():
            shutil.rmtree(path, ignore_errors=True)
            if old is not None:
                (old / path.name).rename(path)
                old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
