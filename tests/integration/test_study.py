"""The REAP study: compression study frame, calibration sensitivity, summary, figures, notebook 05."""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_checkpoint, tiny_model  # noqa: E402

from reapkit import plot  # noqa: E402
from reapkit.data import pad_batches  # noqa: E402
from reapkit.observe.recorder import observe  # noqa: E402
from reapkit.study import experiments, findings
from reapkit.study.sensitivity import calibration_sensitivity, layer_sensitivity

ROOT = Path(__file__).resolve().parents[2]
RATIOS = (0.0, 0.25, 0.5, 0.75)  # tiny model: 8 experts, top-2 -> keeps 8, 6, 4, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with other work: one torch thread is many times faster than two here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batches(n, domain, seed, length=16):
    g = torch.Generator().manual_seed(seed)
    return pad_batches([torch.randint(3, 96, (length - i % 3,), generator=g).tolist() for i in range(n)], domain, 4)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("qwen3_moe")
    calibration = _batches(8, "code", 1) + _batches(8, "prose", 2)
    evaluation = _batches(4, "code", 3) + _batches(4, "prose", 4)
    obs = observe(model, calibration, progress=False, statistics=["output_sum"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sequences = experiments.study_sequences(
            model, obs, evaluation, ratios=(*RATIOS, 0.875), budget_searches=["water", "evolution"],
            search_batches=calibration[::4], search_options={"generations": 1, "population": 2}, progress=False,
        )  # fmt: skip
    results = experiments.study_results(sequences, resamples=200)
    # two calibration samples: the first and the second half of each domain's calibration sequences
    repeats = [
        observe(model, calibration[0:1] + calibration[2:3], progress=False),
        observe(model, calibration[1:2] + calibration[3:4], progress=False),
    ]
    sensitivity = calibration_sensitivity(
        model,
        None,
        evaluation,
        domains=("code", "prose"),
        calibration=repeats,
        ratio=0.5,
        resamples=200,
        progress=False,
    )
    layers = layer_sensitivity(model, obs, evaluation, ratio=0.5, resamples=200, progress=False)
    return {
        "model": model,
        "calibration": calibration,
        "evaluation": evaluation,
        "obs": obs,
        "results": results,
        "sequences": sequences,
        "sensitivity": sensitivity,
        "layers": layers,
        "warnings": [str(w.message) for w in caught],
    }


def test_study_frame_columns_and_rows(setup):
    results, sequences = setup["results"], setup["sequences"]
    assert list(results.columns) == experiments.COLUMNS and list(sequences.columns) == experiments.SEQUENCE_COLUMNS
    # per ratio: 4 criteria + 3 random seeds + 2 merges + 3 budgets (global, water, evolution) = 12 variants,
    # x (code, prose, all)
    assert len(results) == len(RATIOS) * 12 * 3
    assert len(sequences) == len(RATIOS) * 12 * 8  # 8 evaluation sequences
    assert set(results.method) == {"prune", "merge", "global", "water", "evolution"}
    assert set(results.criterion) == {"reap", "frequency", "soft_frequency", "ean_mean", "random", "m_smoe", "hc_smoe"}
    assert set(results.domain) == {"code", "prose", "all"}
    assert sorted(results.ratio.unique()) == list(RATIOS)
    random = results[results.criterion == "random"]
    assert sorted(random.seed.unique()) == [0, 1, 2] and results[results.criterion != "random"].seed.isna().all()
    assert set(results[results.method == "global"].label) == {"global_reap"}


def test_results_carry_intervals_over_sequences(setup):
    results, sequences = setup["results"], setup["sequences"]
    for metric in ("loss", "kl", "agreement", "delta_loss"):
        lo, hi = results[f"{metric}_lo"], results[f"{metric}_hi"]
        assert ((lo <= results[metric] + 1e-9) & (results[metric] <= hi + 1e-9)).all(), metric
    pruned = results[results.ratio == 0.5]
    assert (pruned.loss_hi > pruned.loss_lo).all() and (pruned.delta_loss_lo > 0).any()
    # the domain rows are token-weighted means of the sequences, delta_loss = loss - unpruned loss of the same sequences
    one = sequences[(sequences.label == "reap") & (sequences.ratio == 0.5) & (sequences.domain == "code")]
    row = results[(results.label == "reap") & (results.ratio == 0.5) & (results.domain == "code")].iloc[0]
    assert row.loss == pytest.approx((one.loss * one.tokens).sum() / one.tokens.sum())
    unpruned = results[(results.ratio == 0) & (results.label == "reap") & (results.domain == "code")].iloc[0]
    assert row.delta_loss == pytest.approx(row.loss - unpruned.loss)
    # the paired interval of delta_loss is narrower than the loss interval it would get unpaired
    assert ((pruned.delta_loss_hi - pruned.delta_loss_lo) < (pruned.loss_hi - pruned.loss_lo)).mean() > 0.5


def test_study_jobs_are_the_variants():
    jobs, notes = experiments.study_jobs(
        _FakeObs(), ratios=[0.5, 0.875], criteria=["reap"], random_seeds=[1], merges=["m_smoe"]
    )
    assert [(j.method, j.label, j.seed, j.ratio) for j in jobs] == [
        ("prune", "reap", None, 0.5),
        ("prune", "random", 1, 0.5),
        ("merge", "m_smoe", None, 0.5),
        ("global", "global_reap", None, 0.5),
    ]
    assert len(notes) == 1 and "0.875" in notes[0]


class _FakeObs:
    """What study_jobs reads of Observations (no model pass needed to plan jobs)."""

    num_experts, top_k = [8, 8], 2


def test_impossible_ratio_is_skipped_with_a_note(setup):
    assert 0.875 not in set(setup["results"].ratio)
    notes = setup["results"].attrs["notes"]
    assert len(notes) == 1 and "0.875" in notes[0] and "top-k" in notes[0]
    assert any("0.875" in w for w in setup["warnings"])


def test_ratio_zero_is_the_unpruned_model_for_every_method(setup):
    results = setup["results"]
    zero = results[results.ratio == 0]
    assert len(zero) == 12 * 3
    assert (zero.kl.abs() < 1e-6).all() and (zero.agreement == 1).all()
    assert (zero[["delta_loss", "delta_loss_lo", "delta_loss_hi"]].to_numpy() == 0).all()
    assert np.isfinite(results[["loss", "perplexity", "kl", "agreement"]].to_numpy(float)).all()
    assert (results[results.ratio > 0].groupby("label").kl.max() > 0).all()  # every method changes the model
    pruned = results[results.method != "merge"]
    assert np.allclose(pruned[pruned.ratio == 0].kept_routing, 1) and (pruned.kept_routing <= 1 + 1e-9).all()
    assert results[results.method == "merge"].kept_routing.isna().all()


def test_merges_keep_as_many_experts_as_pruning_and_global_keeps_the_total(setup):
    results = setup["results"]
    for ratio, part in results.groupby("ratio"):
        prune = part[part.method == "prune"]
        assert prune.experts_kept.nunique() == 1
        kept = int(prune.experts_kept.iloc[0])
        assert kept == 8 - int(8 * ratio)
        assert (part[part.method == "merge"].experts_kept == kept).all()
        budgets = part[part.method.isin(["global", "water", "evolution"])]
        assert (budgets.experts_kept == 2 * kept).all()  # 2 MoE layers: the same total, spread unevenly
        if ratio > 0:
            assert set(budgets.label) == {"global_reap", "water_reap", "evolution_reap"}
        assert (part.experts_total == 2 * kept).all()


def test_global_plan_uses_the_same_total(setup):
    from reapkit.select.plan import PruningPlan

    plan = PruningPlan.from_global_budget(setup["obs"], "reap", total=8)
    assert sum(len(v) for v in plan.kept.values()) == 8


def test_layer_sensitivity_prunes_one_layer_at_a_time(setup):
    from reapkit.compress.prune import mask_experts
    from reapkit.measure.evaluate import evaluate
    from reapkit.select.plan import PruningPlan

    model, obs, evaluation = setup["model"], setup["obs"], setup["evaluation"]
    frame = setup["layers"]
    assert list(frame.columns[:4]) == ["layer", "criterion", "ratio", "experts_kept"]
    assert len(frame) == len(obs.layers) * 3 and (frame.experts_kept == 4).all()
    assert ((frame.delta_loss_lo <= frame.delta_loss) & (frame.delta_loss <= frame.delta_loss_hi)).all()
    full = PruningPlan.from_observations(obs, "reap", ratio=0.5)
    layer = obs.layers[1]
    only = PruningPlan(
        {i: full.kept[i] if i == layer else list(range(8)) for i in obs.layers}, full.num_experts, "reap"
    )
    with mask_experts(model, only):
        expected = evaluate(model, evaluation, progress=False).set_index("domain").loss
    got = frame[frame.layer == layer].set_index("domain")
    assert got.loss.tolist() == pytest.approx(expected.loc[got.index].tolist())
    unpruned = evaluate(model, evaluation, progress=False).set_index("domain").loss
    assert got.delta_loss.tolist() == pytest.approx((expected - unpruned).loc[got.index].tolist())
    nothing = layer_sensitivity(model, obs, evaluation, ratio=0.0, resamples=50, progress=False)
    assert (nothing[["delta_loss", "delta_loss_lo", "delta_loss_hi"]].to_numpy() == 0).all()


def test_calibration_sensitivity_with_repeats(setup):
    from reapkit.study.tables import expected_jaccard

    sens = setup["sensitivity"]
    matrix = sens.loss_matrix()
    assert list(matrix.columns) == ["unpruned", "code", "prose", "mix"] and list(matrix.index) == [
        "code",
        "prose",
        "all",
    ]
    assert np.isfinite(matrix.to_numpy()).all()
    loss = sens.loss
    assert ((loss.loss_lo <= loss.loss + 1e-9) & (loss.loss <= loss.loss_hi + 1e-9)).all()
    assert (loss[loss.calibration == "unpruned"].delta_loss == 0).all()
    assert set(sens.sequences.repeat) == {0, 1}
    overlap = sens.overlap
    assert list(overlap.columns) == [
        "calibration_a",
        "calibration_b",
        "jaccard",
        "jaccard_lo",
        "jaccard_hi",
        "chance",
        "repeats",
    ]
    assert overlap.chance.tolist() == pytest.approx([expected_jaccard(8, 4)] * len(overlap))
    same = overlap[overlap.calibration_a == overlap.calibration_b]
    assert (same.repeats == 1).all() and same.jaccard.between(0, 1).all()  # two samples of one set: their overlap
    pairs = overlap[overlap.calibration_a != overlap.calibration_b]
    assert (pairs.repeats == 2).all() and (
        (pairs.jaccard_lo <= pairs.jaccard) & (pairs.jaccard <= pairs.jaccard_hi)
    ).all()
    wide = sens.overlap_matrix()
    assert np.allclose(wide, wide.T, equal_nan=True) and list(wide.index) == ["code", "prose", "mix"]


def test_calibration_sensitivity_single_sample(setup):
    model, evaluation = setup["model"], setup["evaluation"]
    one = calibration_sensitivity(
        model,
        None,
        evaluation,
        domains=("code", "prose"),
        calibration=setup["calibration"],
        ratio=0.5,
        resamples=50,
        progress=False,
    )
    assert one.overlap[one.overlap.calibration_a == one.overlap.calibration_b].jaccard.isna().all()  # no second sample
    # per-domain statistics of one pass == observing each domain alone
    alone = calibration_sensitivity(
        model,
        None,
        evaluation,
        domains=("code",),
        calibration=setup["calibration"][:2],
        ratio=0.5,
        resamples=50,
        progress=False,
    )
    assert alone.loss_matrix().loc["all", "code"] == pytest.approx(one.loss_matrix().loc["all", "code"])
    with pytest.warns(UserWarning, match="'math'"):
        again = calibration_sensitivity(
            model,
            None,
            evaluation,
            domains=("code", "prose", "math"),
            calibration=setup["obs"],
            ratio=0.5,
            resamples=50,
            progress=False,
        )
    pd.testing.assert_frame_equal(again.loss_matrix(), one.loss_matrix())
    with pytest.raises(ValueError, match="needs a tokenizer"):
        calibration_sensitivity(model, None, evaluation)
    with pytest.raises(ValueError, match="none of the domains"):
        calibration_sensitivity(model, None, evaluation, domains=("math",), calibration=setup["obs"])


def test_summarise_mentions_every_method(setup):
    text = findings.summarise(setup["sequences"], setup["sensitivity"], setup["layers"], resamples=200)
    for name in (
        "frequency",
        "soft_frequency",
        "ean_mean",
        "random",
        "m_smoe",
        "hc_smoe",
        "global_reap",
        "prune",
        "merge",
        "global",
    ):
        assert f"`{name}`" in text or f"({name})" in text, name
    for ratio in ("25%", "50%", "75%"):
        assert ratio in text
    assert "Calibration" in text and "**code**" in text and "Jaccard" in text and "chance" in text
    assert "Per-layer sensitivity" in text and "[" in text
    assert "REAP" in findings.summarise(setup["sequences"])  # without the sensitivity part
    assert "not in these results" in findings.summarise(setup["sequences"][setup["sequences"].criterion != "reap"])
    with pytest.raises(ValueError, match="study_sequences"):
        findings.summarise(setup["results"])


def _synthetic_sequences(gaps: dict, noise: float, n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A study_sequences frame at one ratio: each label's loss = a shared per-sequence loss + its gap (+ noise)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 1.0, n)
    rows = []
    for label, gap in gaps.items():
        loss = base + gap + rng.normal(0, noise, n) * (label != "reap")
        rows.append(
            pd.DataFrame(
                {
                    "method": "prune",
                    "criterion": label,
                    "label": label,
                    "seed": pd.NA,
                    "ratio": 0.5,
                    "experts_kept": 4,
                    "experts_total": 8,
                    "kept_routing": 0.5,
                    "domain": "code",
                    "sequence": np.arange(n),
                    "tokens": 20,
                    "loss": loss,
                    "kl": gap + 0.1,
                    "agreement": 0.5,
                    "delta_loss": loss - base + 1.0,
                }
            )
        )
    frame = pd.concat(rows, ignore_index=True)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def test_summary_states_a_claim_only_when_its_interval_supports_it():
    """frequency is 0.5 nats worse on every sequence; ean_mean differs from REAP by noise only."""
    text = findings.summarise(_synthetic_sequences({"reap": 0.0, "frequency": 0.5, "ean_mean": 0.0}, noise=0.3))
    lines = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("- vs")}
    assert "REAP is better at 1 of 1 ratios" in lines["- vs `frequency`"]
    assert "REAP is better at 0 of 1 ratios, within noise at 50%" in lines["- vs `ean_mean`"]
    assert "beats `frequency`; within noise of `ean_mean`" in text
    assert "lowest loss is `reap`" in text or "lowest loss is `ean_mean`" in text
    assert "within noise of it: `ean_mean`" in text or "within noise of it: `reap`" in text
    # the same gaps with no noise at all: every difference is real
    sharp = findings.summarise(_synthetic_sequences({"reap": 0.0, "frequency": 0.5, "ean_mean": 0.01}, noise=0.0))
    assert "beats every baseline" in sharp


def test_results_table_is_what_notebook_04_reads(setup):
    table = experiments.results_table(setup["results"], model="tiny")
    assert {
        "ratio",
        "criterion",
        "label",
        "domain",
        "loss",
        "loss_lo",
        "kl",
        "agreement",
        "delta_loss",
        "model",
    } <= set(table.columns)
    assert {"global_reap", "m_smoe", "reap"} <= set(table.label)


def test_study_figures(setup, tmp_path):
    fig = plot.study_figure(setup["results"])
    assert len([a for a in fig.axes if a.get_visible()]) >= 2
    sens = setup["sensitivity"]
    fig2 = plot.calibration_figure(sens)
    paths = plot.save_figure(fig, tmp_path, "study", close=True) + plot.save_figure(fig2, tmp_path, "calib", close=True)
    assert all(p.stat().st_size > 0 for p in paths)


def test_bad_input(setup):
    with pytest.raises(ValueError, match="ratios"):
        experiments.compression_study(setup["model"], setup["obs"], setup["evaluation"], ratios=[1.0], progress=False)
    with pytest.raises(ValueError, match="unknown criterion"):
        experiments.compression_study(
            setup["model"], setup["obs"], setup["evaluation"], criteria=["nope"], progress=False
        )
    with pytest.raises(ValueError, match="unknown merge method"):
        experiments.compression_study(
            setup["model"], setup["obs"], setup["evaluation"], merges=["nope"], progress=False
        )
    with pytest.raises(ValueError, match="ratios"):
        layer_sensitivity(setup["model"], setup["obs"], setup["evaluation"], ratio=1.5)


# --------------------------------------------------------------------------------------------
# Notebook 05 under papermill (tiny qwen3_moe saved to disk, token-id files)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_05_study(tmp_path):
    from reapkit.run.sweep import run_notebook

    model, spec = tiny_checkpoint(tmp_path)
    params = dict(
        model=str(model),
        calibration=spec,
        evaluation=spec,
        max_length=12,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        ratios=[0, 0.5],
        random_seeds=[0, 1],
    )
    out = run_notebook(ROOT / "notebooks/05_study.ipynb", params, tmp_path / "run", threads=1)
    nb = nbformat.read(str(out), as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    figures = tmp_path / "run" / "figures"
    for name in ("study", "gaps_by_domain", "calibration_sensitivity"):
        assert (figures / f"{name}.png").stat().st_size > 0 and (figures / f"{name}.pdf").stat().st_size > 0
    results = pd.read_csv(tmp_path / "run" / "study.csv")
    assert len(results) == 2 * (7 + 2 + 4 + 3) * 3  # 7 criteria, 2 random seeds, 4 merges, 3 budgets
    assert {"hc_smoe_faithful", "m_smoe_faithful", "ream", "submoe"} == set(results[results.method == "merge"].label)
    assert {"agreement", "criterion"} <= set(pd.read_csv(tmp_path / "run" / "results.csv").columns)
    loss = pd.read_csv(tmp_path / "run" / "sensitivity_loss.csv")
    assert list(loss.columns) == ["eval_domain", "unpruned", "code", "prose", "mix"]
    assert "REAP" in (tmp_path / "run" / "summary.md").read_text()
    gaps = pd.read_csv(tmp_path / "run" / "gaps.csv")  # the paired gaps notebook 04 draws
    assert {"loss_gap", "loss_gap_lo", "loss_gap_hi"} <= set(gaps.columns) and "reap" not in set(gaps.label)


def test_notebook_05_bad_parameter(tmp_path):
    from reapkit.run.parameters import ParameterError, check_parameters

    good = dict(
        model="demo",
        calibration="code:4",
        evaluation="code:4",
        seed=0,
        max_length=16,
        batch_size=2,
        output_dir="o",
        figures_dir="f",
        cache_dir=None,
        interactive=False,
        ratios=[0, 0.5],
        criteria=["reap"],
        random_seeds=[],
        merges=[],
        global_budget=False,
        margin=0,
        sensitivity=True,
        sensitivity_ratio=0.5,
        sensitivity_criterion="reap",
    )
    assert check_parameters(good, "05_study").merges == []
    with pytest.raises(ParameterError, match="'merges'.*unknown merge method"):
        check_parameters({**good, "merges": ["zip"]}, "05_study")
    with pytest.raises(ParameterError, match="'global_budget'"):
        check_parameters({**good, "global_budget": "nope"}, "05_study")


def test_study_sweep_file_is_valid():
    from reapkit.run.sweep import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "study.yaml")
    assert sweep["notebook"].name == "05_study.ipynb" and len(sweep["runs"]) == 3
