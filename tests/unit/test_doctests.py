"""The `>>>` examples in the docstrings of these modules run, on a tiny model and the bundled demo tokenizer."""

import doctest
import importlib

import pytest
import torch
from tiny_models import tiny_model

from reapkit.data import pad_batches
from reapkit.model.demo import DEMO_PATH
from reapkit.observe.recorder import observe
from reapkit.select import criteria

#: Modules whose examples run; add a module here once its examples do.
MODULES = [
    "reapkit.model.hooks",
    "reapkit.select.criteria",
    "reapkit.model.demo",
    "reapkit.data",
    "reapkit.data.batches",
    "reapkit.data.domains",
    "reapkit.data.schemas",
    "reapkit.data.spec",
]


@pytest.fixture(scope="module")
def namespace():
    """What the examples may use: `obs` of a tiny qwen3_moe (2 MoE layers, 8 experts), the demo `tokenizer`."""
    from transformers import AutoTokenizer

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    batches = pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2)
    return {
        "obs": observe(tiny_model("qwen3_moe"), batches, progress=False),
        "tokenizer": AutoTokenizer.from_pretrained(str(DEMO_PATH)),
    }


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, namespace):
    module = importlib.import_module(name)
    registered = set(criteria.CRITERIA_NAMES)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    try:
        for test in doctest.DocTestFinder().find(module, name, globs={**vars(module), **namespace}):
            runner.run(test, out=report.append)
    finally:
        for criterion in set(criteria.CRITERIA_NAMES) - registered:  # examples may register criteria
            criteria._REGISTRY.pop(criterion)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted > 0, f"{name} has no examples that run; remove it from MODULES"
