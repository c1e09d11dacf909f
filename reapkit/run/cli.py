"""The `reapkit` command line (also `python -m reapkit`).

    reapkit observe MODEL --data code:128,tools:64 --out runs/obs
    reapkit observe MODEL --data SPEC --out runs/obs --save-every 200 [--resume]   # running sums in runs/obs.partial
    reapkit combine runs/obs-shard0 runs/obs-shard1 --out runs/obs      # observations add up
    reapkit scores runs/obs --criterion reap --csv scores.csv
    reapkit plan runs/obs --criterion reap (--ratio 0.25 | --keep 12 | --global-budget 0.25 [--margin 1]) --out plan.json
    reapkit prune MODEL --observations runs/obs --criterion reap --ratio 0.25 --out pruned/
    reapkit prune MODEL --plan plan.json --out pruned/   # a local folder streams shard by shard (--in-memory to load)
    reapkit merge MODEL --observations runs/obs --method hc_smoe (--keep 8 | --ratio 0.5) --out merged/
    reapkit merge MODEL --plan merged/merge_plan.json --out merged-again/
    reapkit recover pruned/ --out recovered/ [--teacher MODEL] --data code:64 --steps 64 --lr 1e-3   # router KD
    reapkit import reap-observer observations.pt --out runs/imported   # saliency from other tools
    reapkit import llm-compressor reap_report.json --model MODEL --out plan.json
    reapkit evaluate MODEL (--observations runs/obs --ratio 0.5 | --plan plan.json) --tasks T1,T2 --include-path tasks/
    reapkit ablate MODEL [--layers 3] [--limit 4096] [--plan plan.json] --out costs.csv   # ground truth per expert
    reapkit demo                      # notebooks on the bundled demo model, figures in figures/
    reapkit sweep sweeps/study.yaml   # papermill runs over a parameter grid

A mistake the user can fix (a `reapkit.errors.ReapkitError`, a full disk, a path the system refuses)
ends the command with one line, ``reapkit <command>: error: <message>``, and exit code 2; anything
else is a bug and keeps its traceback. An interrupt (Ctrl-C, SIGTERM) removes unfinished outputs and
exits 130.
"""

from __future__ import annotations

import gc
import signal
import sys

from reapkit.atomic import terminate_as_interrupt
from reapkit.errors import user_message
from reapkit.run.parser import build_parser
from reapkit.run.plugins import load_plugins

__all__ = ["main"]


def _release_quietly(error: BaseException) -> None:
    """Free the frames an interrupt cut short, and with them objects it left half-built (e.g. a progress
    bar stopped inside its constructor), without the noise their finalisers print ("Exception ignored")."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        while error is not None:
            error.__traceback__, error = None, error.__context__
        gc.collect()
    finally:
        sys.unraisablehook = hook


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = terminate_as_interrupt()  # SIGTERM cleans up like Ctrl-C: temporary outputs are removed
    try:
        load_plugins(args.plugin)
        args.func(args)
    except KeyboardInterrupt as error:
        reason = str(error) or "Ctrl-C"
        _release_quietly(error)
        print(
            f"reapkit {args.command}: interrupted ({reason}); outputs not finished were removed, "
            "nothing half-written is left",
            file=sys.stderr,
        )
        return 130
    except Exception as error:
        message = user_message(error)  # None: a bug, shown with its traceback
        if message is None:
            raise
        print(f"reapkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
