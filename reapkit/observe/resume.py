"""Resumable calibration: the additive statistics saved every N batches, continued after a crash.

    >>> from reapkit.observe import observe
    >>> partial = PartialObservations("runs/obs.partial", every=2, resume=True)
    >>> obs = observe(model, batches, partial=partial)   # starts after the last saved batch
    >>> partial.remove()                                  # once the observations are saved

The partial observations are a folder (written whole or not at all) holding the running sums of every
domain and `progress.json`: batches done, and a key of the model fingerprint and the token ids
of all batches. Observations are sums over batches taken in order, so a resumed run gives
bit-identical statistics to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from reapkit.atomic import atomic_directory
from reapkit.errors import InvalidInput, Mismatch, OutputExists

STATS_FILE = "statistics.safetensors"
PROGRESS_FILE = "progress.json"


class PartialObservations:
    """Where and how often `observe` saves its running sums, and whether it resumes from them."""

    def __init__(self, path, *, every: int | None = None, resume: bool = False):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidInput(f"--save-every must be a positive number of batches, got {every!r}")
        self.path, self.every, self.resume = Path(path), every, resume
        self.key, self.total = None, 0

    def check(self) -> None:
        """Refuse to start over an interrupted run's partial observations unless resuming (cheap; call first)."""
        if self.path.exists() and not self.resume:
            raise OutputExists(
                f"{self.path} holds the partial observations of an interrupted run; pass --resume to continue "
                "from it, or delete it to start over"
            )

    def restore(self, recorder, model, batches) -> int:
        """Load saved sums into `recorder`; return the number of batches they cover (0: start).

        The key covers the model, the token ids, the domains and the statistics recorded, so a run
        with other data or other `--statistics` does not continue from these sums.
        """
        from safetensors.torch import load_file

        from reapkit.data import content_hash
        from reapkit.observe.observations import fingerprint

        self.check()
        self.total = len(batches)
        key = [fingerprint(model), content_hash(batches), [b.domain for b in batches], list(recorder.names)]
        key = json.dumps(key, sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:20]
        if not (self.resume and (self.path / PROGRESS_FILE).is_file()):
            return 0
        progress = json.loads((self.path / PROGRESS_FILE).read_text())
        if progress.get("key") != self.key:
            raise Mismatch(
                f"the partial observations {self.path} were made with another model, data or batch size, or other "
                "--statistics; run the same command as before to resume, or delete them to start over"
            )
        saved = load_file(str(self.path / STATS_FILE))
        for domain in {name.rsplit("/", 1)[0] for name in saved}:
            recorder.stats[domain] = {n: saved[f"{domain}/{n}"].to(recorder.device) for n in recorder.names}
        return int(progress["batches_done"])

    def after_batch(self, recorder, done: int) -> None:
        """Save the sums after batch number `done` (1-based) when it is a multiple of `every`."""
        if self.every and done % self.every == 0 and done < self.total:
            self.save(recorder.stats, done)

    def save(self, stats: dict, done: int) -> None:
        from safetensors.torch import save_file

        tensors = {
            f"{domain}/{name}": value.detach().cpu().contiguous()
            for domain, values in stats.items()
            for name, value in values.items()
        }
        with atomic_directory(self.path, force=True) as tmp:
            save_file(tensors, str(tmp / STATS_FILE))
            (tmp / PROGRESS_FILE).write_text(json.dumps({"key": self.key, "batches_done": done, "batches": self.total}))

    def remove(self) -> None:
        """Delete the partial observations (after the finished observations were saved)."""
        shutil.rmtree(self.path, ignore_errors=True)
