"""lm-evaluation-harness scores a plan in memory (masked) exactly as it scores the saved pruned checkpoint.

The tasks are written here: a rolling log-likelihood task and a multiple-choice task on a few held-out
texts of the built-in domains, read from local jsonl files (nothing is downloaded).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

pytest.importorskip("lm_eval", reason="lm-eval is part of the test environment: pip install -e '.[dev]'")

from reapkit import plot  # noqa: E402
from reapkit.data import DOMAINS, calibration_batches, domain_texts  # noqa: E402
from reapkit.measure.evaluate import lm_eval  # noqa: E402
from reapkit.measure.schema import long_results, wide_results
from reapkit.model.demo import DEMO_PATH  # noqa: E402
from reapkit.model.loading import load_model  # noqa: E402
from reapkit.observe.recorder import observe  # noqa: E402
from reapkit.run.cli import main  # noqa: E402
from reapkit.select.plan import PruningPlan  # noqa: E402
from reapkit.study.tables import curve_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["held_out_text", "second_half", "which_ending"]
LIMIT = 4  # documents per task

ROLLING = """\
task: held_out_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""

CONTINUATION = """\
task: second_half
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{ending}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

CHOICE = """\
task: which_ending
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A folder of three lm-eval tasks (loglikelihood_rolling, loglikelihood, multiple_choice), written as a user
    would: YAML files and jsonl documents."""
    folder = tmp_path_factory.mktemp("tasks")
    texts = [domain_texts(d, "validation")[0][:160] for d in DOMAINS]
    docs = [{"text": t} for t in texts]
    halves = [{"context": t[:80], "ending": t[80:]} for t in texts]
    endings = [{"context": t[:80], "endings": [u[80:] for u in texts], "label": i} for i, t in enumerate(texts)]
    for name, records, template in (
        ("held_out_text", docs, ROLLING),
        ("second_half", halves, CONTINUATION),
        ("which_ending", endings, CHOICE),
    ):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        (folder / f"{name}.yaml").write_text(template.format(data=json.dumps(str(data))))
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model, its observations (saved, for the CLI) and a 50% REAP plan."""
    if not (DEMO_PATH / "config.json").is_file():
        pytest.skip("the bundled demo model is not built (python -m reapkit.model.demo train)")
    model, tokenizer = load_model("demo")
    obs = observe(model, calibration_batches("code:4,prose:4", tokenizer, max_length=48), progress=False)
    obs_dir = obs.save(tmp_path_factory.mktemp("obs") / "obs")
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.5)
    return dict(model=model, tokenizer=tokenizer, obs=obs, obs_dir=obs_dir, plan=plan)


@pytest.fixture(scope="module")
def masked(demo, tasks):
    return lm_eval(demo["model"], demo["plan"], TASKS, tokenizer=demo["tokenizer"], include_path=tasks, limit=LIMIT)


def _scores(rows: pd.DataFrame) -> dict:
    return {(r.domain, r.metric): r.value for r in rows.itertuples()}


def test_masked_score_equals_the_saved_checkpoint_and_differs_from_unpruned(demo, tasks, masked, tmp_path):
    from transformers import AutoModelForCausalLM

    from reapkit.compress.stream import stream_prune

    stream_prune(DEMO_PATH, demo["plan"], tmp_path / "pruned")  # the checkpoint `reapkit prune` writes
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert pruned.config.num_experts == 8
    saved = lm_eval(pruned, None, TASKS, tokenizer=demo["tokenizer"], include_path=tasks, limit=LIMIT)
    unpruned = lm_eval(demo["model"], None, TASKS, tokenizer=demo["tokenizer"], include_path=tasks, limit=LIMIT)
    assert set(_scores(masked)) == {
        ("held_out_text", "bits_per_byte"),
        ("second_half", "perplexity"),
        ("second_half", "acc"),
        ("which_ending", "acc"),
    }
    assert _scores(masked) == pytest.approx(_scores(saved), rel=1e-5, abs=1e-6)
    for task in ("held_out_text", "second_half"):  # the plan was applied
        metric = "bits_per_byte" if task == "held_out_text" else "perplexity"
        assert abs(_scores(masked)[task, metric] - _scores(unpruned)[task, metric]) > 1e-3, task
    assert masked.samples.tolist() == [LIMIT] * 4

    # the rows carry the plan's provenance and live in one table with reapkit's own metrics
    row = masked[masked.domain == "which_ending"].set_index("metric").loc["acc"]
    assert (row.method, row.criterion, row.label, row.ratio, row.seed) == ("prune", "reap", "reap", 0.5, 0)
    assert row.observations == demo["obs"].meta["fingerprint"]["router_sha256"]
    assert row.value_lo == pytest.approx(row.value - 1.96 * row.stderr, abs=1e-3) and row.stderr > 0
    assert unpruned.ratio.eq(0).all() and unpruned.criterion.eq("unpruned").all()
    own = pd.DataFrame(
        [dict(ratio=0.0, criterion="unpruned", domain="all", loss=3.0, loss_lo=2.9, loss_hi=3.1)]
        + [dict(ratio=0.5, criterion="reap", domain="all", loss=3.5, loss_lo=3.4, loss_hi=3.6)]
    )
    table = pd.concat([own, unpruned, masked], ignore_index=True)
    curve = curve_table(table[table.domain == "which_ending"], "acc", hue="criterion")
    assert curve[["ratio", "mean"]].values.tolist() == [[0.0, _scores(unpruned)[("which_ending", "acc")]]] + [
        [0.5, _scores(masked)[("which_ending", "acc")]]
    ]
    assert curve.band.eq("ci").all()
    assert curve_table(table, "loss", hue="criterion")["mean"].tolist() == [3.0, 3.5]
    wide = wide_results(table)
    assert {"acc", "acc_lo", "acc_hi", "acc_stderr", "bits_per_byte", "perplexity", "loss"} <= set(wide.columns)
    assert len(long_results(wide)) == len(long_results(table)) == 2 + len(unpruned) + len(masked)

    # the figures draw the one table: reapkit's loss per domain, a panel per lm-eval task and metric
    fig = plot.loss_vs_ratio_by_domain(table, metric="loss")
    assert [ax.get_title() for ax in fig.axes if ax.lines] == ["all"]
    fig = plot.scores_figure(table)
    assert sorted(ax.get_title("left") or ax.get_title() for ax in fig.axes if ax.lines) == [
        "acc\nsecond_half",
        "acc\nwhich_ending",
        "bits_per_byte\nheld_out_text",
        "perplexity\nsecond_half",
    ]
    assert all(len(ax.lines[0].get_xdata()) == 2 for ax in fig.axes if ax.lines)  # ratio 0 and 0.5


def test_device_mapped_model_scores_the_same(demo, tasks, masked, tmp_path):
    mapped, _ = load_model("demo", device_map="auto", max_memory={"cpu": "1KB"}, offload_folder=tmp_path / "off")
    assert set(mapped.hf_device_map.values()) == {"disk"} and mapped.device.type == "meta"
    rows = lm_eval(mapped, demo["plan"], TASKS, tokenizer=demo["tokenizer"], include_path=tasks, limit=LIMIT)
    assert _scores(rows) == pytest.approx(_scores(masked), rel=1e-5, abs=1e-6)


def test_cli_evaluate_as_a_user_would(demo, tasks, masked, tmp_path):
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "reapkit", "evaluate", "demo", "--observations", str(demo["obs_dir"])]
    command += ["--criterion", "reap", "--ratio", "0.5", "--tasks", ",".join(TASKS), "--include-path", str(tasks)]
    command += ["--limit", str(LIMIT), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "which_ending" in done.stdout and "bits_per_byte" in done.stdout
    rows = pd.read_csv(out)
    assert _scores(rows) == pytest.approx(_scores(masked), rel=1e-6)
    assert set(rows.model) == {"demo"} and set(rows.criterion) == {"reap"}


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown task", "unknown lm-eval task(s) nope in the task folder"),
        (
            "unknown task in the demo suite",
            "nope in reapkit's demo suite (--include-path demo); its tasks are reapkit_",
        ),
        ("no task folder", "does not exist"),
        ("ratio out of range", "ratio must be in [0, 1)"),
        ("plan options without observations", "add --observations"),
        ("criterion needs a missing statistic", "needs the statistic 'max_activation'"),
        ("output exists", "already exists"),
        ("output is a folder", "is a folder; this command writes one file"),
        ("lm-eval not installed", "install it with `pip install -e '.[eval]'`"),
    ],
)
def test_bad_input_is_one_clear_line(demo, tasks, tmp_path, capsys, monkeypatch, case, message):
    from reapkit.observe.observations import Observations

    obs = demo["obs"]
    partial = Observations(
        {d: {k: v for k, v in s.items() if k != "max_activation"} for d, s in obs.stats.items()}, obs.meta
    )
    partial_dir = partial.save(tmp_path / "partial")
    out = tmp_path / "scores.csv"
    args = ["evaluate", "demo", "--tasks", TASKS[0], "--include-path", str(tasks), "--out", str(out)]
    args += {
        "unknown task": ["--tasks", "nope"],
        "unknown task in the demo suite": ["--tasks", "nope", "--include-path", "demo"],
        "no task folder": ["--include-path", str(tmp_path / "missing")],
        "ratio out of range": ["--observations", str(demo["obs_dir"]), "--ratio", "1.5"],
        "plan options without observations": ["--ratio", "0.5"],
        "criterion needs a missing statistic": ["--observations", str(partial_dir), "--criterion", "max_activation"],
        "output exists": [],
        "output is a folder": ["--force"],
        "lm-eval not installed": [],
    }[case]
    if case == "lm-eval not installed":
        monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails as without the extra
    if case == "output exists":
        out.write_text("mine\n")
    if case == "output is a folder":
        out.mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reapkit evaluate: error: ") and message in err and "\n" not in err
    if case == "output is a folder":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert (out.read_text() == "mine\n") if case == "output exists" else not out.exists()


@pytest.mark.slow
def test_lm_eval_sweep_runs(demo, tmp_path, monkeypatch):
    """sweeps/lm_eval.yaml, one run of its grid, shrunk: lm-eval rows join notebook 03's results table."""
    from reapkit.run.sweep import run_sweep

    quick = {"ratios": [0.5], "calibration": "code:4,prose:4", "evaluation": "code:2,prose:2", "max_length": 48}
    quick.update(lm_eval_limit=2, cache_dir=str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # runs/lm_eval/ lands here
    summary = run_sweep(ROOT / "sweeps" / "lm_eval.yaml", overrides=quick, limit=1, jobs=1, progress=False)
    assert list(summary.status) == ["ok"], summary.error.tolist()
    results = pd.read_csv(tmp_path / "runs" / "lm_eval" / "results.csv")
    scores = results.dropna(subset=["metric"])
    assert set(scores.domain) == {"reapkit_heldout", "reapkit_continuation"}
    assert set(scores.ratio) == {0.0, 0.5} and set(scores.criterion) == {"unpruned", "reap"}
    assert (scores.samples == 2).all() and results.loss.notna().sum() == 3 * 2  # (unpruned + plan) x (code, prose, all)
    run = next((tmp_path / "runs" / "lm_eval").glob("*/figures/lm_eval_vs_ratio.png")).parent.parent
    notebook = nbformat.read(str(run / "03_pruning.ipynb"), as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    inline = sum("image/png" in o.get("data", {}) for o in outputs)
    assert inline >= len(list((run / "figures").glob("*.png"))) > 0  # every saved figure, lm-eval's too, shows
    reading = [
        o["data"]["text/markdown"] for o in outputs if "**bits_per_byte** on reapkit_heldout" in str(o.get("data"))
    ]
    assert reading and "unpruned" in reading[0]  # the computed reading under the lm-eval figure


@pytest.mark.slow
def test_readme_lm_eval_block_runs_as_written(demo, tmp_path):
    """The README's "Benchmark a plan with lm-eval" commands, line by line, in a fresh folder."""
    from doc_blocks import as_subprocess, readme_block

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for line in readme_block("## Benchmark a plan with lm-eval"):
        run = subprocess.run(as_subprocess(line), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"README line failed: {line}\n{run.stderr[-3000:]}"
    unpruned, pruned = pd.read_csv(tmp_path / "unpruned.csv"), pd.read_csv(tmp_path / "reap-0.5.csv")
    assert set(unpruned.domain) == set(pruned.domain) == {"reapkit_heldout", "reapkit_continuation"}
    bpb = ("reapkit_heldout", "bits_per_byte")
    assert _scores(pruned)[bpb] > _scores(unpruned)[bpb]  # half the experts gone: the held-out text costs more bits
