"""One error type: what a user can fix is a `ReapkitError` (one line, naming the fix); the rest is a bug.

A guard that reads reapkit's source and refuses a built-in exception whose message names a fix (in the
files of `USER_ERROR_FILES`), and `user_message` on real errors. Each refusal raising its class: test_refusals.py.
"""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

from reapkit import errors
from reapkit.errors import ReapkitError, user_message

ROOT = Path(__file__).resolve().parents[2]

#: Where a built-in exception may not carry a fix: the whole package.
USER_ERROR_FILES = ["reapkit"]

#: Built-in exceptions a user mistake used to be raised as (TypeError stays: a wrong type is a caller's bug).
BUILTIN_ERRORS = {
    "Exception",
    "ValueError",
    "LookupError",
    "KeyError",
    "IndexError",
    "RuntimeError",
    "OSError",
    "FileNotFoundError",
    "FileExistsError",
    "IsADirectoryError",
    "NotADirectoryError",
    "PermissionError",
    "ImportError",
    "ModuleNotFoundError",
}

#: A message that tells the user what to do: "...; pass --force", "... . Choose another folder", "...: use a .json".
FIX_HINT = re.compile(
    r"[;:.]\s+(?:pass|use|give|choose|run|write|call|build|install|check|set|add|put|register|rename|"
    r"re-?tokeni[sz]e|compare|include|drop|free|convert|name|observe)\b",
    re.IGNORECASE,
)


def builtin_raises_with_a_fix(source: str) -> list[tuple[int, str, str]]:
    """(line, exception, message text) of each `raise <built-in>(...)` whose message literal names a fix."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
            continue
        name = getattr(node.exc.func, "id", None)
        if name not in BUILTIN_ERRORS:
            continue
        text = "".join(
            c.value for c in ast.walk(node.exc.args[0]) if isinstance(c, ast.Constant) and isinstance(c.value, str)
        )
        if FIX_HINT.search(text):
            found.append((node.lineno, name, text))
    return found


def guarded_files() -> list[Path]:
    paths = [ROOT / entry for entry in USER_ERROR_FILES]
    return sorted(p for path in paths for p in ([path] if path.suffix == ".py" else path.rglob("*.py")))


def test_every_guarded_path_exists():
    missing = [entry for entry in USER_ERROR_FILES if not (ROOT / entry).exists()]
    assert not missing, f"USER_ERROR_FILES names paths that do not exist: {missing}"
    assert len(guarded_files()) > len(USER_ERROR_FILES)


def test_user_mistakes_in_guarded_files_are_reapkit_errors():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: raise {name}({text[:70]!r}...)"
        for path in guarded_files()
        for line, name, text in builtin_raises_with_a_fix(path.read_text())
    ]
    assert not offenders, "raise a class of reapkit.errors for these user mistakes:\n" + "\n".join(offenders)


def test_the_guard_finds_a_user_mistake_raised_as_a_builtin():
    source = """
def f(ratio, path, a):
    if ratio > 1:
        raise ValueError(f"ratio {ratio} is too large; pass e.g. --ratio 0.25")
    if not path:
        raise FileNotFoundError(f"{path} does not exist. Choose an existing folder")
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")   # an invariant: stays
    raise InvalidInput(f"{path}: use a .json file")                        # already a ReapkitError
"""
    assert [(line, name) for line, name, _ in builtin_raises_with_a_fix(source)] == [
        (4, "ValueError"),
        (6, "FileNotFoundError"),
    ]


# --------------------------------------------------------------------------------------------
# user_message: the one place an exception becomes a line
# --------------------------------------------------------------------------------------------

CLASSES = [
    (errors.InvalidInput, ValueError),
    (errors.MissingInput, FileNotFoundError),
    (errors.OutputExists, FileExistsError),
    (errors.OutputUnwritable, OSError),
    (errors.Mismatch, ValueError),
    (errors.MissingStatistic, ValueError),
    (errors.UnknownArchitectureError, ValueError),
    (errors.CheckpointError, ValueError),
    (errors.ParameterError, ValueError),
    (errors.SweepError, ValueError),
    (errors.MissingDependency, ImportError),
]


@pytest.mark.parametrize("cls, builtin", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_each_class_is_a_reapkit_error_and_the_builtin_callers_expect(cls, builtin):
    with pytest.raises(builtin) as caught:
        raise cls("plan.json was made on another model;\npass the model it was made on")
    assert isinstance(caught.value, ReapkitError)
    assert user_message(caught.value) == "plan.json was made on another model; pass the model it was made on"


def test_every_class_of_errors_is_checked():
    exported = {getattr(errors, name) for name in errors.__all__} - {user_message, ReapkitError}
    assert exported == {cls for cls, _ in CLASSES}


def test_a_full_disk_is_one_line():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as caught:
            os.write(fd, b"reapkit")
    finally:
        os.close(fd)
    assert caught.value.errno == errno.ENOSPC
    message = user_message(caught.value)
    assert message.startswith("could not write: the disk is full") and "write elsewhere" in message


def test_a_path_the_system_refuses_is_one_line_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        open(tmp_path / "no_such_folder" / "plan.json")
    message = user_message(caught.value)
    assert str(tmp_path / "no_such_folder" / "plan.json") in message and "check that the path exists" in message


def test_a_value_error_from_inside_numpy_is_a_bug():
    with pytest.raises(ValueError) as caught:
        np.arange(6).reshape(4, 2)
    assert user_message(caught.value) is None
    with pytest.raises(KeyError) as caught:
        {}["count"]
    assert user_message(caught.value) is None
