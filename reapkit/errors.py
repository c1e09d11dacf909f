"""What a user can fix, as one family of exceptions; everything else is a bug and keeps its traceback.

    >>> try:
    ...     raise InvalidInput("ratio must be in [0, 1), got 1.5; pass e.g. --ratio 0.25")
    ... except ReapkitError as error:
    ...     print(user_message(error))
    ratio must be in [0, 1), got 1.5; pass e.g. --ratio 0.25

Each class also derives from the built-in exception Python code expects (`InvalidInput` is a
`ValueError`, `MissingInput` a `FileNotFoundError`, ...), so callers that catch those keep working.
The message of a `ReapkitError` names the problem and the fix, on one line. The command line prints
it as ``reapkit <command>: error: <message>`` and exits 2; `user_message` is the one place where an
exception becomes such a line. A full disk and a path the operating system refuses are the user's
to fix too, and read the same way; any other exception is shown with its traceback.
"""

from __future__ import annotations

import errno

__all__ = [
    "ReapkitError",
    "InvalidInput",
    "MissingInput",
    "OutputExists",
    "OutputUnwritable",
    "Mismatch",
    "MissingStatistic",
    "UnknownArchitectureError",
    "CheckpointError",
    "ParameterError",
    "SweepError",
    "MissingDependency",
    "user_message",
]


class ReapkitError(Exception):
    """A mistake the user can fix; the message says how."""


class InvalidInput(ReapkitError, ValueError):
    """A value, option or file content that reapkit cannot use."""


class MissingInput(ReapkitError, FileNotFoundError):
    """A path given as input that does not exist."""


class OutputExists(ReapkitError, FileExistsError):
    """An output that would overwrite something (pass --force, or another path)."""


class OutputUnwritable(ReapkitError, OSError):
    """An output path where nothing can be created: its parent is a file, or a folder that refuses writes."""


class Mismatch(InvalidInput):
    """Inputs that do not belong together: a plan or observations made on another model, ..."""


class MissingStatistic(InvalidInput):
    """A criterion or analysis needs a statistic the observations do not hold."""


class UnknownArchitectureError(InvalidInput):
    """A model type reapkit has no record for and cannot read."""


class CheckpointError(InvalidInput):
    """A checkpoint on disk that is incomplete or inconsistent (missing or truncated shard, bad index)."""


class ParameterError(InvalidInput):
    """A notebook parameter with a wrong type or value."""


class SweepError(InvalidInput):
    """A sweep file that cannot run as written."""


class MissingDependency(ReapkitError, ImportError):
    """An optional package that a feature needs is not installed (the message names the extra)."""


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_REFUSED = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST)


def user_message(error: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug."""
    if isinstance(error, ReapkitError):
        return " ".join(str(error).split("\n"))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        where = f" {error.filename}" if error.filename else ""
        return (
            f"could not write{where}: the disk is full or a file-size limit (ulimit -f) was reached; "
            "free space or write elsewhere and run again (nothing half-written was left)"
        )
    if isinstance(error, OSError) and error.errno in _REFUSED and error.filename:
        return f"{error.strerror}: {error.filename}; check that the path exists and that you may read / write it"
    if type(error).__name__ == "SafetensorError" and any(
        k in str(error) for k in ("FileTooLarge", "StorageFull", "No space", "File too large")
    ):
        return (
            "could not write a safetensors file: the disk is full or a file-size limit (ulimit -f) was reached; "
            "free space or write elsewhere and run again (nothing half-written was left)"
        )
    return None
