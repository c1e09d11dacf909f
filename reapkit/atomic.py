"""Outputs that appear whole or not at all.

    >>> with atomic_directory("out/pruned", force=False) as tmp:
    ...     model.save_pretrained(tmp)            # written into a temporary sibling
    >>> # renamed to out/pruned only when the block succeeds
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path, *, force: bool = False):
    """Yield a temporary sibling directory of `path`; on success rename it to `path`.

    An existing `path` is refused unless `force=True` (then replaced only after success).
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; choose another output directory or pass force=True (--force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
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
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path, text: str) -> Path:
    """Write a text file via a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
