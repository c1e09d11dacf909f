"""Every `>>>` example in reapkit's docstrings runs, and prints what it shows.

Every module of the package is found (`pkgutil.walk_packages`, so a new module is covered the day it
lands). The examples of its docstrings (module, functions, classes, methods) run in the names of
`doctest_namespace` (the demo model, its observations, a plan, a small study, ...), with a copy of
the model of their own, in a folder of their own holding `doctest_namespace`'s input files.

An example that cannot run here (a hub checkpoint, a GPU, torchrun, a kernel per notebook run) is
written as a plain code block instead (an indented ``::`` block), which the docs show as code too;
``# doctest: +SKIP`` is refused, so every `>>>` line runs.
"""

import copy
import doctest
import importlib
import pkgutil
import re
import shutil

import pytest
from doctest_namespace import build

import reapkit
from reapkit.model import records
from reapkit.select import criteria

#: Every module of the package (a `__main__` module runs a command when imported).
MODULES = ["reapkit"] + sorted(
    info.name
    for info in pkgutil.walk_packages(reapkit.__path__, "reapkit.")
    if info.name.rsplit(".", 1)[-1] != "__main__"
)

#: Modules whose examples need an optional extra: skipped without it.
EXTRAS = {"reapkit.measure.harness": "lm_eval"}

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(scope="session")
def namespace(tmp_path_factory):
    """The shared names (see `doctest_namespace`), built once, and the folder of input files each module copies."""
    inputs = tmp_path_factory.mktemp("doctest_inputs")
    return build(inputs), inputs


def test_every_module_is_found():
    assert {"reapkit", "reapkit.select.criteria", "reapkit.run.cli", "reapkit.plot.widgets"} <= set(MODULES)
    assert not [m for m in MODULES if m.endswith("__main__")]


class _Runner(doctest.DocTestRunner):
    """Reports each failure under the name of the docstring it is in (module, function, class or method)."""

    def __init__(self):
        super().__init__(optionflags=FLAGS)
        self.failed_in: list[str] = []

    def report_failure(self, out, test, example, got):
        self.failed_in.append(test.name)
        super().report_failure(out, test, example, got)

    def report_unexpected_exception(self, out, test, example, exc_info):
        self.failed_in.append(test.name)
        super().report_unexpected_exception(out, test, example, exc_info)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, namespace, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    names, inputs = namespace
    module = importlib.import_module(name)
    # the shared names hide what a module imports, not what it defines; each module gets a copy of the
    # model (its examples may remove or merge experts)
    own = {k: v for k, v in vars(module).items() if getattr(v, "__module__", None) == name}
    globs = {**vars(module), **names, **own, "model": copy.deepcopy(names["model"])}
    tests = [t for t in doctest.DocTestFinder().find(module, name, globs=globs) if t.examples]
    if not tests:  # no `>>>` lines: then an example that is not run, an indented code block
        doc = module.__doc__ or ""
        assert re.search(r"^ {4,}\S", doc, re.M), (
            f"{name}: its docstring shows no example; add one (`>>>`, or a code block)"
        )
        return
    skipped = [f"{t.name}: {e.source.strip()}" for t in tests for e in t.examples if e.options.get(doctest.SKIP)]
    assert not skipped, "examples marked +SKIP; run them, or write them as a plain code block:\n" + "\n".join(skipped)
    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name])
    shutil.copytree(inputs, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    registered, architectures = set(criteria.CRITERIA_NAMES), dict(records.ARCHITECTURES)
    runner, report = _Runner(), []
    try:
        for test in tests:
            runner.run(test, out=report.append)
    finally:  # examples may register criteria and architectures
        for criterion in set(criteria.CRITERIA_NAMES) - registered:
            criteria._REGISTRY.pop(criterion)
        records.ARCHITECTURES.clear()
        records.ARCHITECTURES.update(architectures)
        plt.close("all")
    result = runner.summarize(verbose=False)
    where = ", ".join(dict.fromkeys(runner.failed_in))
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples of {name} failed (in {where}):\n" + "".join(report)
    )
    assert result.attempted > 0
