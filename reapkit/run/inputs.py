"""What a command checks before any work, and how it loads the model it names.

    >>> check_limit(8.0), check_limit(0.5)               # --limit: documents per task, or a fraction of them
    (8, 0.5)
    >>> check_model_name("./nosuch")
    Traceback (most recent call last):
    ...
    reapkit.errors.MissingInput: model folder ./nosuch does not exist; check the path, or pass a hub name (org/name) or `demo`

`check_output(out, force, *inputs)` refuses an output that exists (without --force), cannot be
written, or lies inside an input (or holds one); `load(args)` loads the model with the placement
options. Each refusal is a `reapkit.errors` class whose message names the problem and the fix, so
that the command stops with one line before it loads a model or writes a byte.
"""

from __future__ import annotations

import os
from pathlib import Path

from reapkit.atomic import check_new_output, check_separate
from reapkit.errors import InvalidInput, MissingInput
from reapkit.model.demo import DEMO, resolve_name

__all__ = ["check_output", "check_model_name", "load", "check_limit", "from_weights", "read_observations"]


def check_output(out, force: bool, *inputs, file: bool = False) -> None:
    """The output is new (or `force`), writable, and apart from every input; with `file`, not an
    existing folder (a file cannot replace one)."""
    check_separate(out, *inputs, what="output")
    check_new_output(out, force=force)
    if file and Path(out).is_dir():
        raise InvalidInput(
            f"output {out} is a folder; this command writes one file: give a file path inside or beside it"
        )


def check_model_name(name: str) -> None:
    """`name` is `demo` (built), a folder holding config.json, or something shaped like a hub name (org/name)."""
    path = Path(resolve_name(name)).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InvalidInput(
                f"{name} is not a model folder (no config.json in it); pass a folder written by "
                f"save_pretrained, a hub name (org/name) or `{DEMO}`"
            )
    elif name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise MissingInput(
            f"model folder {name} does not exist; check the path, or pass a hub name (org/name) or `{DEMO}`"
        )


def load(args, device="cpu"):
    """`load_model(args.model)` with the placement options (--dtype, --device-map, --max-memory,
    --offload-folder), and one clear line for a path that is no model or a hub name that cannot be fetched."""
    from reapkit.model.loading import load_model, parse_max_memory

    check_model_name(args.model)
    try:
        return load_model(
            args.model,
            dtype=args.dtype,
            device=device,
            device_map=args.device_map,
            max_memory=parse_max_memory(args.max_memory),
            offload_folder=args.offload_folder,
        )
    except OSError as error:
        if isinstance(error, (FileNotFoundError, PermissionError)) and getattr(error, "filename", None):
            raise
        offline = (
            " (HF_HUB_OFFLINE is set, so nothing is downloaded)"
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
            else ""
        )
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInput(
            f"cannot load model {args.model!r} from a local folder or the Hugging Face hub{offline}: {reason} "
            f"Pass a local checkpoint folder, `{DEMO}`, or a hub name you can download"
        ) from None


def check_limit(limit: float | None) -> int | float | None:
    """`--limit` as lm-eval takes it: a whole number of documents per task (>= 1), or a fraction of them in (0, 1).

    >>> check_limit(8.0), check_limit(0.5), check_limit(None)
    (8, 0.5, None)
    """
    if limit is None:
        return None
    if 0 < limit < 1:
        return limit
    if limit >= 1 and float(limit).is_integer():
        return int(limit)
    raise InvalidInput(
        f"--limit must be a whole number of documents per task (1, 2, ...) or a fraction of them in (0, 1), "
        f"got {limit:g}; e.g. --limit 8 or --limit 0.5, or leave it out to score every document"
    )


def from_weights(criterion: str | None) -> bool:
    """Whether `criterion` is scored from a checkpoint's weights (aimer) rather than from observations."""
    from reapkit.observe.statistics import FROM_WEIGHTS
    from reapkit.select.criteria import statistics_of

    return criterion is not None and set(statistics_of(criterion)) <= set(FROM_WEIGHTS)


def read_observations(path, criterion: str | None = None):
    """The `Observations` saved at `path`; for a weight-only criterion (aimer), those of the checkpoint folder
    `path` (or `demo`), read from its expert weights."""
    from reapkit.observe.observations import Observations

    if from_weights(criterion):
        from reapkit.observe.weights import weight_statistics

        return weight_statistics(resolve_name(str(path)))
    return Observations.load(path)
