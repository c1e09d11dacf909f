"""The table of architectures: every MoE type of transformers listed, docs/architectures.md in step, records minimal."""

import pytest
from tiny_models import tiny_model

from reapkit.model.discover import architecture_for, architecture_rows, architectures_markdown, moe_model_types
from reapkit.model.records import ARCHITECTURES, Architecture, explicit_fields
from reapkit.select.plan import feasible_group_counts


@pytest.fixture(scope="module")
def rows():
    return architecture_rows()


def test_every_moe_type_is_listed_supported_or_with_a_reason(rows):
    types = moe_model_types()
    assert len(types) == 64, "transformers 5.23 has 64 model types whose experts use the experts interface"
    listed = {r["model_type"]: r for r in rows}
    assert set(types) <= set(listed)
    for r in rows:
        assert (r["verified"] == "yes") != bool(r["why_not"]), r
        assert "\n" not in r["why_not"]
    assert sum(r["verified"] == "yes" for r in rows if r["model_type"] in types) >= 55


def test_architectures_page_holds_the_generated_table(rows):
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "architectures.md").read_text()
    block = page.split("<!-- architectures:begin -->\n")[1].split("<!-- architectures:end -->")[0]
    assert block == architectures_markdown(rows), (
        "run: python -m reapkit architectures --markdown, paste it into docs/architectures.md"
    )


def test_unsupported_type_is_refused_with_its_reason():
    from reapkit.model.discover import UnknownArchitectureError

    record = next(r for r in ARCHITECTURES.values() if r.unsupported)
    model = tiny_model("qwen3_moe")
    model.config.model_type = record.model_type
    with pytest.raises(UnknownArchitectureError, match="cannot prune"):
        architecture_for(model.config)


def test_explicit_records_name_only_what_cannot_be_read():
    """A record's hand-set fields, when the model can be read, must differ from what is read."""
    model = tiny_model("qwen3_moe")
    read = architecture_for(model)
    assert explicit_fields(ARCHITECTURES["qwen3_moe"]) == ["num_experts_key"]
    assert read.num_experts_key == "num_experts" and model.config.to_dict().get("num_experts") is None
    assert (read.layers, read.block, read.router, read.experts, read.scoring) == (
        "model.layers",
        "mlp",
        "gate",
        "experts",
        "softmax",
    )


@pytest.mark.parametrize(
    "name, scoring, bias",
    [
        ("minimax_m2", "sigmoid", "e_score_correction_bias"),
        ("deepseek_v3", "sigmoid", "gate.e_score_correction_bias"),
        ("mixtral", "softmax", None),
    ],
)
def test_scoring_and_bias_are_read(name, scoring, bias):
    arch = architecture_for(tiny_model(name))
    assert (arch.scoring, arch.correction_bias) == (scoring, bias)
    assert Architecture(name).scoring is None


def test_feasible_group_counts():
    assert feasible_group_counts(8, 2, top_k=2, topk_group=1) == [4, 6, 8]
    assert feasible_group_counts(16, 4, top_k=6, topk_group=2) == [12, 16]  # 3 per group x 2 groups >= 6
    assert feasible_group_counts(9, 2, top_k=2) == []


def test_cli_lists_all_types(capsys):
    from reapkit.run.cli import main

    assert main(["architectures"]) == 0
    out = capsys.readouterr().out
    assert "not supported:" in out and all(t in out for t in moe_model_types())
