"""Every `>>>` example in reapkit's docstrings runs, and prints what it shows.

Each module of the package is found (`pkgutil.walk_packages`); the examples of its docstrings (module,
functions, classes, methods) run in the names of `doctest_namespace` (the demo model, its observations,
a plan, a small study ...), in a folder of their own that holds `doctest_namespace`'s input files. An
example that cannot run here (a hub checkpoint, a GPU, torchrun, a browser) is written as a plain code
block instead (an indented ``::`` block), which the docs show the same way.
"""

import copy
import doctest
import importlib
import pkgutil
import shutil

import pytest
from doctest_namespace import build

import reapkit
from reapkit.select import criteria

#: Every module of the package (`__main__` modules run a command when imported).
MODULES = ["reapkit"] + sorted(
    info.name
    for info in pkgutil.walk_packages(reapkit.__path__, "reapkit.")
    if info.name.rsplit(".", 1)[-1] != "__main__"
)

#: Modules whose examples need an optional extra: skipped without it.
EXTRAS = {"reapkit.measure.harness": "lm_eval", "reapkit.plot.widgets": "ipywidgets"}

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(scope="session")
def namespace(tmp_path_factory):
    """The shared names (see `doctest_namespace`), built once, and the folder of input files each module copies."""
    inputs = tmp_path_factory.mktemp("doctest_inputs")
    return build(inputs), inputs


def test_every_module_is_found():
    assert {"reapkit", "reapkit.select.criteria", "reapkit.run.cli"} <= set(MODULES)
    assert len(MODULES) > 50


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, namespace, tmp_path, monkeypatch):
    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name])
    import matplotlib.pyplot as plt

    names, inputs = namespace
    module = importlib.import_module(name)
    # each module gets its own copy of the model: its examples may remove or merge experts
    globs = {**vars(module), **names, "model": copy.deepcopy(names["model"])}
    tests = [t for t in doctest.DocTestFinder().find(module, name, globs=globs) if t.examples]
    if not tests:
        return
    shutil.copytree(inputs, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    registered = set(criteria.CRITERIA_NAMES)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    try:
        for test in tests:
            runner.run(test, out=report.append)
    finally:
        for criterion in set(criteria.CRITERIA_NAMES) - registered:  # examples may register criteria
            criteria._REGISTRY.pop(criterion)
        plt.close("all")
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed:\n" + "".join(report)
    assert result.attempted > 0, f"{name}: every `>>>` example is skipped; run it, or write it as a plain code block"
