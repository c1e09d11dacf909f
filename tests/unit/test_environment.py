"""The pins in pyproject.toml and environment.yml agree; the package reads its own architecture table."""

import tomllib
from pathlib import Path

import pytest
import yaml

from reapkit.model.discover import architecture_for
from reapkit.model.records import ARCHITECTURES, Architecture, register_architecture

ROOT = Path(__file__).resolve().parents[2]


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = set(extras["dev"])
    assert "reapkit[eval]" in dev  # the test environment has lm-eval: tests/integration/test_lm_eval.py runs in CI
    pins = set(project["dependencies"]) | (dev - {"reapkit[eval]"}) | set(extras["eval"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if not p.startswith("-e")} == pins
    assert all("==" in p for p in pins)
    assert "torch==2.13.0" in pins
    docs = {"mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python"}  # make docs, test_docs.py
    assert docs <= {p.split("==")[0] for p in dev}
    assert f"python{project['requires-python']}" in env["dependencies"]  # the same Python versions


def test_every_built_in_architecture_has_a_tiny_test_model():
    from tiny_models import ARCHS

    from reapkit.model.records import VERIFIED

    assert sorted(VERIFIED) == ARCHS and {"qwen3_moe", "llama4_text"} <= set(ARCHITECTURES)


def test_register_architecture():
    from transformers import LlamaConfig

    with pytest.raises(ValueError, match="already registered"):
        register_architecture(Architecture("qwen3_moe", num_experts_key="num_experts"))
    with pytest.raises(ValueError, match="does not know"):
        architecture_for(LlamaConfig())
    try:
        register_architecture(Architecture("llama", num_experts_key="num_experts"))
        assert architecture_for(LlamaConfig()).model_type == "llama"
    finally:
        ARCHITECTURES.pop("llama")
