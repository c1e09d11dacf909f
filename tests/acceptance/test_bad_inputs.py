"""Bad input, as a new user makes it: one clear line naming the problem and the fix, exit code 2,
no traceback, nothing written where the output would go, the inputs unchanged.

Each row of `CASES` is one `reapkit ...` command line. They run through the real entry point
(`python -m reapkit`, i.e. `runpy` of `reapkit.__main__`) in forked children of one interpreter
that imported torch and transformers once, so forty commands cost seconds, not minutes; the cases
that need a fresh process (no network, a full disk) start a real `python -m reapkit` subprocess.
The notebooks' cases run the real notebooks with papermill.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures.notebooks import write_dummy_notebook
from tiny_models import tiny_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
}


def tree_digest(root: Path, skip: Path) -> str:
    """Hash of every file's path, bytes and mode under `root`, except under `skip`."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if skip in path.parents or path == skip:
            continue
        h.update(str(path.relative_to(root)).encode() + oct(path.stat().st_mode).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The inputs every case shares
# --------------------------------------------------------------------------------------------


def build_world(root: Path) -> dict:
    from reapkit.data import calibration_batches
    from reapkit.observe.recorder import observe
    from reapkit.select.merge import plan_merge
    from reapkit.select.plan import PruningPlan

    model_dir, spec = tiny_checkpoint(root, domains=("code",))
    tiny_model("qwen3_moe", seed=5).save_pretrained(root / "other")
    obs = observe(tiny_model("qwen3_moe"), calibration_batches(spec, batch_size=2), progress=False, statistics="all")
    obs.save(root / "obs")
    PruningPlan.from_observations(obs, "reap", ratio=0.25).save(root / "plan.json")
    plan_merge(tiny_model("qwen3_moe"), obs, method="hc_smoe", keep=4).save(root / "merge_plan.json")
    observe(tiny_model("qwen3_moe", seed=5), calibration_batches(spec, batch_size=2), progress=False).save(
        root / "obs_other"
    )
    (root / "corrupt_obs").mkdir()
    (root / "corrupt_obs" / "observations.json").write_text((root / "obs" / "observations.json").read_text())
    (root / "corrupt_obs" / "statistics.safetensors").write_bytes(b"not safetensors at all")
    files = {
        "malformed.jsonl": "[5, 6, 7]\n[8, 9]\n[10, 11\n",
        "empty.jsonl": "",
        "big_ids.jsonl": "[5, 6, 7]\n[8, 500, 9]\n",
        "negative.jsonl": "[5, -3, 7]\n",
        "floats.jsonl": "[5.5, 6]\n",
        "records.jsonl": '{"foo": 1, "bar": 2}\n{"foo": 3, "bar": 4}\n',
        "empty.json": "",
        "afile": "a regular file\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    notebook = write_dummy_notebook(root / "dummy.ipynb")
    runs = root / "out" / "runs"

    def sweep(name, **spec):
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "notebook": str(notebook), "runs_dir": str(runs), **spec}))
        return path

    sweep("failing", grid={"fail": [False, True]}, jobs=1)
    sweep("typo", grid={"value": [1]}, gird={"value": [2]})
    sweep("nojobs", grid={"value": [1]}, jobs=0)
    sweep("noparam", grid={"valu": [1]})
    (root / "inside.yaml").write_text(
        yaml.safe_dump({"name": root.name, "notebook": str(notebook), "runs_dir": str(root.parent)})
    )
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / "exists").mkdir()
    return {"root": root, "model": model_dir, "code": root / "code.jsonl"}


# (class, id, command line with {root} / {out} placeholders, fragments the message must hold, output path)
CASES = [
    # paths
    (
        "paths",
        "missing-model",
        "observe ./nosuch --data {root}/code.jsonl --out {out}",
        ["./nosuch does not exist", "hub name"],
    ),
    (
        "paths",
        "model-is-a-file",
        "observe {root}/afile --data {root}/code.jsonl --out {out}",
        ["not a model folder", "save_pretrained"],
    ),
    (
        "paths",
        "model-is-empty-folder",
        "observe {root}/corrupt_obs --data {root}/code.jsonl --out {out}",
        ["no config.json", "save_pretrained"],
    ),
    (
        "paths",
        "missing-observations",
        "prune {root}/model --observations {root}/nosuch --out {out}",
        ["not a reapkit observations directory", "reapkit observe"],
    ),
    (
        "paths",
        "combine-missing",
        "combine {root}/obs {root}/nosuch --out {out}",
        ["not a reapkit observations directory", "reapkit observe"],
    ),
    ("paths", "scores-of-a-model", "scores {root}/model", ["not a reapkit observations directory", "reapkit observe"]),
    ("paths", "missing-sweep-file", "sweep {root}/nosuch.yaml", ["sweep file", "does not exist"]),
    # calibration specs and data files
    (
        "calibration",
        "unknown-domain",
        "observe {root}/model --data nosuch:4 --out {out}",
        ["unknown built-in domain 'nosuch'", "known domains"],
    ),
    ("calibration", "zero-count", "observe {root}/model --data code:0 --out {out}", ["count 0", "positive integer"]),
    (
        "calibration",
        "count-not-integer",
        "observe {root}/model --data code:many --out {out}",
        ["'many'", "is not an integer", "code:64"],
    ),
    (
        "calibration",
        "empty-spec",
        ["observe", "{root}/model", "--data", "", "--out", "{out}"],
        ["empty calibration spec", "pass e.g."],
    ),
    (
        "calibration",
        "trailing-comma",
        "observe {root}/model --data {root}/code.jsonl, --out {out}",
        ["empty entry", "trailing comma"],
    ),
    (
        "calibration",
        "domain-twice",
        "observe {root}/model --data {root}/code.jsonl,{root}/code.jsonl --out {out}",
        ["names a domain twice", "name@source"],
    ),
    (
        "calibration",
        "missing-data-file",
        "observe {root}/model --data x@{root}/nosuch.jsonl:4 --out {out}",
        ["nosuch.jsonl does not exist", "check the path"],
    ),
    (
        "calibration",
        "malformed-line",
        "observe {root}/model --data {root}/malformed.jsonl --out {out}",
        ["malformed.jsonl:3:", "JSON list of integer token ids"],
    ),
    (
        "calibration",
        "empty-token-file",
        "observe {root}/model --data {root}/empty.jsonl --out {out}",
        ["empty.jsonl holds no sequences", "one JSON list"],
    ),
    (
        "calibration",
        "text-without-tokenizer",
        "observe {root}/model --data code:4 --out {out}",
        ["needs a tokenizer", ".jsonl file of token ids"],
    ),
    (
        "calibration",
        "wrong-schema",
        "observe demo --data recs@{root}/records.jsonl:2 --out {out}",
        ["no converter for a record with fields", "expected one of"],
    ),
    (
        "calibration",
        "empty-dataset-file",
        "observe demo --data e@{root}/empty.json:2 --out {out}",
        ["empty or holds only whitespace", "at least one record"],
    ),
    (
        "calibration",
        "max-length-too-short",
        "observe {root}/model --data {root}/code.jsonl --max-length 4 --out {out}",
        ["too short", "at least 8"],
    ),
    (
        "calibration",
        "batch-size-zero",
        "observe {root}/model --data {root}/code.jsonl --batch-size 0 --out {out}",
        ["batch_size must be a positive integer"],
    ),
    # token ids
    (
        "token ids",
        "id-beyond-vocabulary",
        "observe {root}/model --data {root}/big_ids.jsonl --out {out}",
        ["big_ids.jsonl:2: token id 500", "96 tokens", "re-tokenize"],
    ),
    (
        "token ids",
        "negative-id",
        "observe {root}/model --data {root}/negative.jsonl --out {out}",
        ["negative.jsonl:1: token id -3", "re-tokenize"],
    ),
    (
        "token ids",
        "float-ids",
        "observe {root}/model --data {root}/floats.jsonl --out {out}",
        ["floats.jsonl:1:", "integer token ids"],
    ),
    # plans and observations that do not fit the model
    (
        "plans",
        "observations-of-another-model",
        "prune {root}/other --observations {root}/obs --out {out}",
        ["different model", "observe this model again"],
    ),
    (
        "plans",
        "ratio-out-of-range",
        "prune {root}/model --observations {root}/obs --ratio 1.5 --out {out}",
        ["ratio must be in [0, 1)"],
    ),
    (
        "plans",
        "ratio-below-top-k",
        "prune {root}/model --observations {root}/obs --ratio 0.9 --out {out}",
        ["needs at least top-k"],
    ),
    (
        "plans",
        "keep-more-than-experts",
        "prune {root}/model --observations {root}/obs --keep 20 --out {out}",
        ["would keep 20 of 8 experts", "at most 8"],
    ),
    (
        "plans",
        "unknown-scoring-domain",
        "prune {root}/model --observations {root}/obs --domains math --out {out}",
        ["unknown calibration domain", "['code']"],
    ),
    (
        "plans",
        "unknown-criterion",
        "prune {root}/model --observations {root}/obs --criterion nope --out {out}",
        ["unknown criterion 'nope'"],
    ),
    (
        "plans",
        "combine-different-models",
        "combine {root}/obs {root}/obs_other --out {out}",
        ["different models", "fingerprints"],
    ),
    (
        "plans",
        "corrupt-observations",
        "prune {root}/model --observations {root}/corrupt_obs --out {out}",
        ["unreadable observations", "observe the model again"],
    ),
    (
        "plans",
        "plan-and-observations",
        "prune {root}/model --plan {root}/plan.json --observations {root}/obs --out {out}",
        ["--plan is a finished plan", "drop --observations"],
    ),
    (
        "plans",
        "not-a-plan",
        "prune {root}/model --plan {root}/afile --out {out}",
        ["is not a reapkit plan", "reapkit plan"],
    ),
    (
        "plans",
        "merge-plan-to-prune",
        "prune {root}/model --plan {root}/merge_plan.json --out {out}",
        ["is a merge plan", "reapkit merge"],
    ),
    (
        "plans",
        "plan-for-another-model",
        "prune {root}/other --plan {root}/plan.json --in-memory --out {out}",
        ["different model", "plan again"],
    ),
    (
        "plans",
        "pruning-plan-to-merge",
        "merge {root}/model --plan {root}/plan.json --out {out}",
        ["is a pruning plan", "reapkit prune"],
    ),
    (
        "plans",
        "merge-without-method",
        "merge {root}/model --observations {root}/obs --keep 4 --out {out}",
        ["no --method", "m_smoe"],
    ),
    (
        "plans",
        "merge-statistic-not-recorded",
        "merge {root}/other --observations {root}/obs_other --method hc_smoe_faithful --keep 4 --out {out}",
        ["all_output_sum", "reapkit observe --all-token-outputs"],
    ),
    (
        "plans",
        "merge-rule-not-offered",
        "merge {root}/model --observations {root}/obs --method m_smoe_faithful --keep 4 --rule ties --out {out}",
        ["merge rule 'ties'", "frequency, average, reap"],
    ),
    (
        "plans",
        "global-budget-out-of-range",
        "plan {root}/obs --global-budget 1.5 --out {out}",
        ["--global-budget must be in [0, 1)"],
    ),
    (
        "plans",
        "budget-search-unknown",
        "plan {root}/obs --global-budget 0.5 --budget-search greedy --out {out}",
        ["unknown budget search 'greedy'", "global, water, evolution"],
    ),
    (
        "plans",
        "budget-below-top-k",
        "plan {root}/obs --global-budget 0.9 --budget-search water --out {out}",
        ["outside [4, 16]", "at least 2 experts (top-k + margin)"],
    ),
    (
        "plans",
        "budget-search-evolution-without-model",
        "plan {root}/obs --global-budget 0.5 --budget-search evolution --out {out}",
        ["scores plans on the model", "reapkit prune MODEL"],
    ),
    (
        "paths",
        "missing-plan",
        "prune {root}/model --plan {root}/nosuch.json --out {out}",
        ["does not exist", "reapkit plan"],
    ),
    # lm-eval scoring
    (
        "evaluation",
        "limit-zero",
        "evaluate {root}/model --tasks reapkit_heldout --include-path demo --limit 0 --out {out}",
        ["--limit must be a whole number of documents", "fraction of them in (0, 1)", "got 0"],
    ),
    (
        "evaluation",
        "limit-not-whole",
        "evaluate {root}/model --tasks reapkit_heldout --include-path demo --limit 2.5 --out {out}",
        ["--limit must be a whole number of documents", "got 2.5"],
    ),
    # outputs
    (
        "outputs",
        "output-exists",
        "observe {root}/model --data {root}/code.jsonl --out {root}/out/exists",
        ["already exists", "--force"],
    ),
    (
        "outputs",
        "output-is-the-model",
        "prune {root}/model --observations {root}/obs --out {root}/model --force",
        ["is the input", "outside the inputs"],
    ),
    (
        "outputs",
        "output-inside-the-model",
        "prune {root}/model --observations {root}/obs --out {root}/model/pruned",
        ["lies inside the input"],
    ),
    (
        "outputs",
        "output-contains-the-model",
        "prune {root}/model --observations {root}/obs --out {root} --force",
        ["contains the input"],
    ),
    ("outputs", "combine-over-its-input", "combine {root}/obs {root}/obs --out {root}/obs --force", ["is the input"]),
    (
        "outputs",
        "observe-into-the-data-file",
        "observe {root}/model --data {root}/code.jsonl --out {root}/code.jsonl --force",
        ["is the input"],
    ),
    (
        "outputs",
        "scores-csv-inside-observations",
        "scores {root}/obs --csv {root}/obs/scores.csv",
        ["lies inside the input"],
    ),
    (
        "outputs",
        "output-under-a-file",
        "observe {root}/model --data {root}/code.jsonl --out {root}/afile/obs",
        ["is a file, not a folder"],
    ),
    (
        "outputs",
        "output-in-proc",
        "observe {root}/model --data {root}/code.jsonl --out /proc/reapkit-obs",
        ["nothing can be created", "folder you can write"],
    ),
    (
        "outputs",
        "demo-into-notebooks",
        f"demo --runs {ROOT}/notebooks/runs --figures {{out}}",
        ["lies inside the input", "notebooks"],
    ),
    (
        "outputs",
        "sweep-runs-contain-sweep-file",
        "sweep {root}/inside.yaml",
        ["contains the input", "outside the inputs"],
    ),
    # sweeps
    ("sweeps", "unknown-key", "sweep {root}/typo.yaml", ["unknown key(s) 'gird'", "allowed keys"]),
    ("sweeps", "jobs-zero", "sweep {root}/nojobs.yaml", ["jobs must be a positive integer"]),
    (
        "sweeps",
        "unknown-parameter",
        "sweep {root}/noparam.yaml",
        ["has no parameter(s) ['valu']", "its parameters are"],
    ),
    ("sweeps", "failing-run", "sweep {root}/failing.yaml", ["1 run(s) failed: 001-fail=True", "--resume"]),
]
FRESH = {"hub-name-offline", "disk-full-observe", "disk-full-prune"}  # need a process of their own


def case_argv(command, root: Path, out: Path) -> list[str]:
    parts = command.split() if isinstance(command, str) else command
    return [p.format(root=root, out=out) for p in parts]


DRIVER = """
import json, os, runpy, sys, threading, traceback
sys.path[:0] = [{tests!r}, {here!r}]  # tiny_models, and this module
from test_bad_inputs import tree_digest
from pathlib import Path
import reapkit.run.cli, reapkit.data, reapkit.observe.recorder, reapkit.observe.observations, reapkit.select.plan, reapkit.compress.prune, reapkit.run.sweep
import reapkit.observe.resume, reapkit.model.loading
from transformers import AutoModelForCausalLM, AutoTokenizer
AutoModelForCausalLM.from_pretrained({model!r})  # import the model classes once
cases, root = json.loads(Path(sys.argv[1]).read_text()), Path({root!r})
results = {{}}
for case in cases:
    before = tree_digest(root, root / "out")
    pipes = [os.pipe(), os.pipe()]
    pid = os.fork()
    if pid == 0:
        for (r, w), fd in zip(pipes, (1, 2)):
            os.close(r); os.dup2(w, fd)
        sys.stdout, sys.stderr = os.fdopen(1, "w"), os.fdopen(2, "w")
        sys.argv = ["reapkit", *case["argv"]]
        code = 0
        try:
            runpy.run_module("reapkit", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc(); code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    texts = []
    for r, w in pipes:
        os.close(w)
    readers = [threading.Thread(target=lambda r=r: texts.append((r, os.fdopen(r).read()))) for r, _ in pipes]
    [t.start() for t in readers]; [t.join() for t in readers]
    status = os.waitpid(pid, 0)[1]
    text = dict(texts)
    results[case["id"]] = {{"rc": os.waitstatus_to_exitcode(status), "stdout": text[pipes[0][0]], "stderr": text[pipes[1][0]],
                           "inputs_changed": before != tree_digest(root, root / "out")}}
Path(sys.argv[2]).write_text(json.dumps(results))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def cli_results(world):
    """Run every forked case once; {case id: rc, stdout, stderr, inputs_changed}."""
    root = world["root"]
    cases = [{"id": cid, "argv": case_argv(cmd, root, root / "out" / cid)} for _, cid, cmd, _ in CASES]
    (root.parent / "cases.json").write_text(json.dumps(cases))
    driver = DRIVER.format(tests=str(TESTS), here=str(Path(__file__).parent), model=str(world["model"]), root=str(root))
    run = subprocess.run(
        [sys.executable, "-c", driver, str(root.parent / "cases.json"), str(root.parent / "results.json")],
        env=ENV,
        capture_output=True,
        text=True,
        cwd=root.parent,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((root.parent / "results.json").read_text())


def assert_refused(result: dict, fragments, out: Path | None):
    err = result["stderr"]
    assert result["rc"] == 2, f"exit code {result['rc']}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("reapkit ") and ": error: " in line]
    assert len(lines) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not result.get("inputs_changed"), "an input file changed"
    if out is not None:
        assert not out.exists(), f"{out} was written"
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], (
            "a temporary sibling was left"
        )


@pytest.mark.parametrize("cls, cid, command, fragments", CASES, ids=[c[1] for c in CASES])
def test_cli_refuses(cli_results, world, cls, cid, command, fragments):
    out = world["root"] / "out" / cid
    result = cli_results[cid]
    if cid == "failing-run":  # the failing run is reported: its executed notebook stays, its results do not
        assert_refused(result, fragments, None)
        runs = world["root"] / "out" / "runs" / "failing"
        import pandas as pd

        table = pd.read_csv(runs / "runs.csv")
        assert list(table.status) == ["ok", "failed"]
        assert pd.read_csv(runs / "results.csv").value.tolist() == [1]
        assert (
            "asked to fail" in table.error[1] and "FAILED" in result["stderr"] and "001-fail=True" in result["stderr"]
        )
        return
    assert_refused(result, fragments, out if "{out}" in str(command) else None)


# --------------------------------------------------------------------------------------------
# Cases that need a process of their own: no network, a full disk
# --------------------------------------------------------------------------------------------


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


FRESH_CASES = [
    (
        "paths",
        "hub-name-offline",
        "observe nosuch-org/nosuch-model --data {root}/code.jsonl --out {out}",
        None,
        ["cannot load model 'nosuch-org/nosuch-model'", "HF_HUB_OFFLINE", "local checkpoint folder"],
    ),
    (
        "full disk",
        "disk-full-observe",
        "observe {root}/model --data {root}/code.jsonl --out {out}",
        500,  # default observations of the tiny model are about 1 kB
        ["disk is full or a file-size limit", "free space"],
    ),
    (
        "full disk",
        "disk-full-prune",
        "prune {root}/model --observations {root}/obs --out {out}",
        20000,
        ["disk is full or a file-size limit", "free space"],
    ),
]


@pytest.mark.parametrize("cls, cid, command, limit, fragments", FRESH_CASES, ids=[c[1] for c in FRESH_CASES])
def test_cli_refuses_in_a_fresh_process(world, cls, cid, command, limit, fragments):
    root = world["root"]
    out = root / "out" / cid
    before = tree_digest(root, root / "out")
    run = subprocess.run(
        [sys.executable, "-m", "reapkit", *case_argv(command, root, out)],
        env=ENV,
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(limit) if limit else None,
        cwd=root.parent,
    )
    result = {"rc": run.returncode, "stderr": run.stderr, "inputs_changed": before != tree_digest(root, root / "out")}
    assert_refused(result, fragments, out)


# --------------------------------------------------------------------------------------------
# Notebooks: the parameter check stops the run before anything is written
# --------------------------------------------------------------------------------------------

NOTEBOOK_CASES = [
    (
        "notebook parameters",
        "ratio-as-string",
        "02_clusters",
        {"ratio": "0.25"},
        ["parameter 'ratio'", "without quotes"],
    ),
    ("notebook parameters", "seed-as-string", "01_saliency", {"seed": "0"}, ["parameter 'seed'", "integer"]),
    (
        "notebook parameters",
        "cache-inside-model",
        "01_saliency",
        {"cache_dir": "{model}/cache"},
        ["'cache_dir'", "lies inside the input"],
    ),
    (
        "notebook parameters",
        "output-is-model",
        "03_pruning",
        {"output_dir": "{model}"},
        ["'output_dir'", "is the input"],
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("cls, cid, name, params, fragments", NOTEBOOK_CASES, ids=[c[1] for c in NOTEBOOK_CASES])
def test_notebook_refuses(world, tmp_path, cls, cid, name, params, fragments):
    import papermill as pm

    from reapkit.run.execute import run_notebook

    root = world["root"]
    before = tree_digest(root, root / "out")
    params = {k: v.format(model=world["model"]) if isinstance(v, str) else v for k, v in params.items()}
    full = {
        "model": str(world["model"]),
        "calibration": str(world["code"]),
        "max_length": 12,
        "batch_size": 2,
        "output_dir": str(tmp_path / "results"),
        "figures_dir": str(tmp_path / "figures"),
        "cache_dir": str(tmp_path / "cache"),
        **params,
    }
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(ROOT / "notebooks" / f"{name}.ipynb", full, tmp_path / "executed")
    assert info.value.ename == "ParameterError"
    for fragment in fragments:
        assert fragment in info.value.evalue
    for key in ("output_dir", "figures_dir", "cache_dir"):
        if key not in params:
            assert not Path(full[key]).exists(), f"{key} was written"
    assert before == tree_digest(root, root / "out"), "an input changed"


def test_every_class_has_cases():
    classes = {c[0] for c in CASES} | {c[0] for c in FRESH_CASES} | {c[0] for c in NOTEBOOK_CASES}
    assert classes == {
        "paths",
        "calibration",
        "token ids",
        "plans",
        "outputs",
        "full disk",
        "notebook parameters",
        "sweeps",
        "evaluation",
    }
    ids = [c[1] for c in CASES + FRESH_CASES + NOTEBOOK_CASES]
    assert len(ids) == len(set(ids)) >= 30
