"""No lost data: outputs readable as the umask says, interrupts leave whole outputs or none,
calibration resumes after a crash, sweeps resume and share a results table, runs are repeatable.

Real subprocesses are signalled (SIGINT, SIGTERM, SIGKILL) while they work and write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fixtures.notebooks import write_dummy_notebook
from tiny_models import tiny_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def reapkit(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "reapkit", *map(str, args)], capture_output=True, text=True, env=ENV, **kwargs
    )


def start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "reapkit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint, a long token file (many batches of one sequence) and its observations."""
    root = tmp_path_factory.mktemp("rel")
    model, spec = tiny_checkpoint(root, domains=("code",))
    g = torch.Generator().manual_seed(1)
    long = root / "long.jsonl"
    long.write_text("".join(json.dumps(torch.randint(3, 96, (24,), generator=g).tolist()) + "\n" for _ in range(600)))
    run = reapkit("observe", model, "--data", spec, "--out", root / "obs", "--batch-size", 2)
    assert run.returncode == 0, run.stderr
    return {"root": root, "model": model, "spec": spec, "long": long, "obs": root / "obs"}


# --------------------------------------------------------------------------------------------
# Defects: modes, concurrent writers, outputs over inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, batches, mask):
    from reapkit.atomic import atomic_directory, atomic_write_text
    from reapkit.observe.recorder import observe

    old = os.umask(mask)
    try:
        with atomic_directory(tmp_path / "model") as tmp:
            tiny_model("qwen3_moe").save_pretrained(tmp)
        observe(tiny_model("qwen3_moe"), batches, progress=False).save(tmp_path / "obs")
        atomic_write_text(tmp_path / "table.csv", "a,b\n")
    finally:
        os.umask(old)
    for folder in ("model", "obs"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o777 & ~mask
        for path in (tmp_path / folder).iterdir():
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name  # safetensors alone would give 0600
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o666 & ~mask


def test_concurrent_atomic_writes_never_share_a_temporary(tmp_path):
    from reapkit.atomic import atomic_write_text

    target, errors = tmp_path / "table.csv", []
    texts = [f"writer {i}\n" * 2000 for i in range(6)]

    def write(text):
        try:
            for _ in range(40):
                atomic_write_text(target, text)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert target.read_text() in texts
    assert os.listdir(tmp_path) == ["table.csv"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    # Two real writers stop inside atomic_directory: one is SIGKILLed (nothing of its own can clean
    # up), the other is still running. The next write of the same output removes only the dead one's.
    writer = (
        "import sys, time; from reapkit.atomic import atomic_directory\n"
        "with atomic_directory(sys.argv[1]) as tmp:\n"
        "    (tmp / 'part').write_text('half'); print(tmp.name, flush=True); time.sleep(600)\n"
    )
    out = tmp_path / "out"
    dead, alive = (
        subprocess.Popen([sys.executable, "-c", writer, out], stdout=subprocess.PIPE, text=True) for _ in "ab"
    )
    try:
        names = [dead.stdout.readline().strip(), alive.stdout.readline().strip()]
        dead.kill()
        dead.wait(timeout=60)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # the killed writer left its folder

        from reapkit.atomic import atomic_directory

        with atomic_directory(out) as tmp:
            (tmp / "whole").write_text("done")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", names[1]])  # the live one's kept
        assert os.listdir(out) == ["whole"]
    finally:
        alive.kill()
        alive.wait(timeout=60)


def test_output_overlapping_an_input_is_refused(tmp_path):
    from reapkit.atomic import check_separate

    (tmp_path / "model").mkdir()
    for out, relation in [("model", "is the input"), ("model/x", "lies inside"), (".", "contains")]:
        with pytest.raises(ValueError, match=relation):
            check_separate(tmp_path / out, tmp_path / "model")
    check_separate(tmp_path / "pruned", tmp_path / "model", "org/hub-name")  # apart, or not on disk: fine
    (tmp_path / "link").symlink_to(tmp_path / "model")
    with pytest.raises(ValueError, match="is the input"):
        check_separate(tmp_path / "link", tmp_path / "model")


# --------------------------------------------------------------------------------------------
# Interrupts: the complete output or none, and no temporary folders
# --------------------------------------------------------------------------------------------


def _signal_while_writing(process, folder: Path, name: str, signum, timeout=240):
    """Send `signum` as soon as a temporary sibling of `name` appears in `folder` (or the process ends)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if folder.is_dir() and any(p.name.startswith(f".{name}.") for p in folder.iterdir()):
            process.send_signal(signum)
            break
        time.sleep(0.002)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


@pytest.mark.parametrize(
    "command, signum", [("observe", signal.SIGINT), ("prune", signal.SIGTERM), ("combine", signal.SIGTERM)]
)
def test_interrupt_leaves_the_whole_output_or_none(tiny, tmp_path, command, signum):
    from reapkit.observe.observations import Observations

    out = tmp_path / "out"
    args = {
        "observe": ["observe", tiny["model"], "--data", tiny["long"], "--batch-size", 1, "--save-every", 5],
        "prune": ["prune", tiny["model"], "--observations", tiny["obs"], "--ratio", 0.5],
        "combine": ["combine", tiny["obs"], tiny["obs"]],
    }[command]
    # observe: signalled while it writes its partial observations; prune / combine: while they write the output
    watch = "out.partial" if command == "observe" else "out"
    code, err = _signal_while_writing(start(*args, "--out", out), tmp_path, watch, signum)
    assert "Traceback" not in err, err[-3000:]
    assert code in (0, 130), err[-2000:]
    if code == 130:
        assert "interrupted" in err and not out.exists()
    elif command == "prune":  # finished before the signal landed: then it is whole
        assert json.loads((out / "pruning_plan.json").read_text())["ratio"] == 0.5
    else:
        Observations.load(out)
    assert not hidden(tmp_path), hidden(tmp_path)


def test_interrupted_sweep_keeps_finished_runs_and_no_half_run(tmp_path):
    notebook = write_dummy_notebook(tmp_path / "dummy.ipynb")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "notebook": str(notebook),
                "runs_dir": str(tmp_path / "runs"),
                "grid": {"value": [1, 2, 3]},
                "jobs": 1,
            }
        )
    )
    process = start("sweep", sweep)
    root = tmp_path / "runs" / "s"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:  # stop it while run 2 executes
        if (root / "001-value=2").is_dir():
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    runs = pd.read_csv(root / "runs.csv")
    assert list(runs.run_id) == ["000-value=1"] and list(runs.status) == ["ok"]
    assert pd.read_csv(root / "results.csv").value.tolist() == [1]
    assert sorted(p.name for p in root.iterdir()) == ["000-value=1", "results.csv", "runs.csv"]

    # --resume runs only the two that did not finish
    run = reapkit("sweep", sweep, "--resume")
    assert run.returncode == 0, run.stderr
    assert "1 of 3 runs finished before" in run.stderr
    assert pd.read_csv(root / "results.csv").value.tolist() == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# Resumable calibration
# --------------------------------------------------------------------------------------------


def test_observe_resumes_after_sigkill_and_equals_an_uninterrupted_run(tiny, tmp_path):
    args = ["observe", tiny["model"], "--data", tiny["long"], "--batch-size", 1]
    whole = reapkit(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    out, progress = tmp_path / "resumed", tmp_path / "resumed.partial" / "progress.json"
    process = start(*args, "--out", out, "--save-every", 7)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if progress.is_file() and json.loads(progress.read_text())["batches_done"] >= 14:
            process.kill()  # SIGKILL: no clean-up runs at all
            break
        time.sleep(0.005)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = json.loads(progress.read_text())
    assert 0 < saved["batches_done"] < saved["batches"] == 600 and not out.exists()

    resumed = reapkit(*args, "--out", out, "--save-every", 7, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert files_of(out) == files_of(tmp_path / "whole")  # bit-identical statistics and metadata
    assert not (tmp_path / "resumed.partial").exists()


def test_resume_in_process_and_with_other_data(tmp_path, batches):
    from reapkit.observe.recorder import observe
    from reapkit.observe.resume import PartialObservations

    model = tiny_model("qwen3_moe")
    partial = PartialObservations(tmp_path / "c", every=1)
    original = partial.after_batch

    def crash_after_two(recorder, done):
        original(recorder, done)
        if done == 2:
            raise KeyboardInterrupt  # as a crash would stop it

    partial.after_batch = crash_after_two
    with pytest.raises(KeyboardInterrupt):
        observe(model, batches, progress=False, partial=partial)
    assert json.loads((tmp_path / "c" / "progress.json").read_text())["batches_done"] == 2
    resumed = observe(model, batches, progress=False, partial=PartialObservations(tmp_path / "c", every=1, resume=True))
    whole = observe(model, batches, progress=False)
    for d in whole.domains:
        for name in whole.stats[d]:
            assert torch.equal(resumed.stats[d][name], whole.stats[d][name]), (d, name)
    with pytest.raises(ValueError, match="another model, data or batch size"):
        observe(model, batches[:-1], progress=False, partial=PartialObservations(tmp_path / "c", every=1, resume=True))
    with pytest.raises(FileExistsError, match="--resume"):
        PartialObservations(tmp_path / "c", every=1).check()


# --------------------------------------------------------------------------------------------
# Sweeps shared by two writers
# --------------------------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
import pandas as pd
from reapkit.run.sweep import write_result
root, who = Path(sys.argv[1]), sys.argv[2]
for i in range(15):
    run = {"run_id": f"{who}-{i:02d}", "grid": {"value": i}}
    (root / run["run_id"]).mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"value": [i, i]}).to_csv(root / run["run_id"] / "results.csv", index=False)
    write_result(root, run, {"run_id": run["run_id"], "status": "ok", "error": "", "notebook": "", "parameters": "{}", "seconds": 0})
"""


def test_two_sweeps_writing_one_table_lose_no_rows(tmp_path):
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who], env=ENV, stderr=subprocess.PIPE, text=True)
        for who in ("a", "b")
    ]
    for w in writers:
        assert w.wait(timeout=300) == 0, w.stderr.read()
    results, runs = pd.read_csv(tmp_path / "results.csv"), pd.read_csv(tmp_path / "runs.csv")
    assert len(results) == 2 * 15 * 2 and len(runs) == 30 and runs.run_id.is_unique
    assert list(runs.run_id) == sorted(runs.run_id)
    assert not hidden(tmp_path)


# --------------------------------------------------------------------------------------------
# Determinism: the same command twice gives the same bytes
# --------------------------------------------------------------------------------------------


def test_observe_and_prune_are_bit_identical(tiny, tmp_path):
    run = reapkit("observe", tiny["model"], "--data", tiny["spec"], "--out", tmp_path / "obs", "--batch-size", 2)
    assert run.returncode == 0, run.stderr
    assert files_of(tmp_path / "obs") == files_of(tiny["obs"])  # the fixture ran the same command
    for i in (1, 2):
        run = reapkit(
            "prune",
            tiny["model"],
            "--observations",
            tiny["obs"],
            "--ratio",
            0.5,
            "--criterion",
            "random",
            "--seed",
            3,
            "--out",
            tmp_path / f"pruned{i}",
        )
        assert run.returncode == 0, run.stderr
    assert files_of(tmp_path / "pruned1") == files_of(tmp_path / "pruned2")  # weights, configs and the plan


def test_sweep_results_are_bit_identical(tmp_path):
    notebook = write_dummy_notebook(tmp_path / "dummy.ipynb")
    tables = []
    for i in (1, 2):
        sweep = tmp_path / f"s{i}.yaml"
        sweep.write_text(
            yaml.safe_dump(
                {
                    "name": "s",
                    "notebook": str(notebook),
                    "runs_dir": str(tmp_path / f"runs{i}"),
                    "grid": {"value": [1, 2]},
                    "jobs": 2,
                }
            )
        )
        run = reapkit("sweep", sweep)
        assert run.returncode == 0, run.stderr
        tables.append((tmp_path / f"runs{i}" / "s" / "results.csv").read_bytes())
    assert tables[0] == tables[1] and b"000-value=1" in tables[0]


@pytest.mark.slow
def test_notebook_is_bit_identical(tiny, tmp_path):
    from reapkit.run.sweep import run_notebook

    params = {
        "model": str(tiny["model"]),
        "calibration": tiny["spec"],
        "max_length": 12,
        "batch_size": 2,
        "ratios": [0.5],
        "criteria": ["reap", "frequency"],
        "evaluation": tiny["spec"],  # the ablation's held-out tokens: token files, like the calibration
    }
    for i in (1, 2):
        run_notebook(
            ROOT / "notebooks" / "01_saliency.ipynb",
            {**params, "cache_dir": str(tmp_path / f"cache{i}")},
            tmp_path / f"run{i}",
        )
    one, two = (files_of(tmp_path / f"run{i}") for i in (1, 2))
    for files in (one, two):
        files.pop("01_saliency.ipynb")  # the executed notebook holds timings and paths
    assert any(n.endswith(".png") for n in one) and any(n.endswith(".pdf") for n in one)
    assert one == two
