"""The README's runnable blocks (its tour), run as written in a fresh folder, and what they wrote.

The mechanism is shared with docs/*.md: tests/doc_blocks.py. `readme_block` and `as_subprocess` are
imported from here by tests/integration (the import and lm-eval pages' blocks).
"""

import json
import re

import pandas as pd
import pytest
from doc_blocks import README, ROOT, as_subprocess, blocks, readme_block, run_page

__all__ = ["as_subprocess", "readme_block"]


@pytest.mark.slow
def test_tour_runs_as_written(tmp_path):
    ran = run_page(README, tmp_path)
    assert [b.lang for b in ran] == ["bash", "python"]
    assert len(readme_block("## A short tour")) >= 8
    assert {"layer", "expert", "domain", "value"} <= set(pd.read_csv(tmp_path / "scores.csv").columns)
    combined = json.loads((tmp_path / "runs" / "obs-ab" / "observations.json").read_text())
    assert set(combined["domains"]) == {"code", "prose"}
    plan = json.loads((tmp_path / "pruned" / "pruning_plan.json").read_text())
    assert plan["criterion"] == "reap" and plan["ratio"] == 0.25
    from_python = json.loads((tmp_path / "pruned-python" / "pruning_plan.json").read_text())
    assert {len(kept) for kept in from_python["kept"].values()} == {12}  # 12 of the demo's 16 experts per layer
    assert json.loads((tmp_path / "pruned-python" / "config.json").read_text())["num_experts"] == 12
    assert (tmp_path / "runs" / "obs-python" / "statistics.safetensors").is_file()
    runs = pd.read_csv(tmp_path / "runs" / "ratios" / "runs.csv")
    assert list(runs.status) == ["ok"]
    searched = json.loads((tmp_path / "pruned-searched" / "pruning_plan.json").read_text())
    assert sum(len(kept) for kept in searched["kept"].values()) == 48  # the uniform plan's total, spread by the search
    recovered = json.loads((tmp_path / "recovered" / "pruning_plan.json").read_text())
    assert recovered["provenance"]["recovery"][0]["steps"] == 8
    costs = pd.read_csv(tmp_path / "costs.csv")
    assert len(costs) == 16 and set(costs.layer) == {3}
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["num_experts"] == 8


def test_front_page_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    verified = re.search(r"(\d+) of (\d+) model types verified", (ROOT / "docs" / "architectures.md").read_text())
    assert f"{verified[1]} of the {verified[2]} MoE model types" in text  # the count of the generated table
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", text))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages - {"index.md"} <= linked, f"README does not point to {sorted(pages - {'index.md'} - linked)}"


def test_every_runnable_block_of_the_readme_is_bash_or_python():
    assert all(b.lang in ("bash", "python") for b in blocks(README))
