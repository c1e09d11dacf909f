"""Observations: the per-layer, per-expert, per-domain statistics of one calibration pass.

    >>> obs = Observations.load("runs/obs")       # as `reapkit observe --out runs/obs` saved it
    >>> obs.domains, obs.layers
    (['code', 'math', 'prose', 'tools'], [0, 1, 2, 3])
    >>> pooled = obs.pooled()                     # summed over domains
    >>> from reapkit.observe import observe
    >>> both = observe(model, batches[:2]) + observe(model, batches[2:])   # additive: shards of the data
    >>> both.pooled()["count"].equal(pooled["count"])
    True
    >>> obs.coselection(["code"]).shape           # [layers, experts, experts]: tokens that chose both i and j
    (4, 16, 16)

Saved as a directory: `statistics.safetensors` (tensors) and `observations.json` (metadata).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reapkit.atomic import atomic_directory

STATS_FILE = "statistics.safetensors"
META_FILE = "observations.json"
FORMAT = "reapkit-observations/1"


def fingerprint(model) -> dict:
    """What identifies a model for observations: type, shapes and a hash of every router's weights."""
    from accelerate.utils import align_module_device

    from reapkit.model.discover import architecture_for

    arch = architecture_for(model)
    digest = hashlib.sha256()
    blocks = list(arch.moe_blocks(model))
    for index, block in blocks:
        with align_module_device(
            arch.router_of(block)
        ):  # weights a device map offloaded to disk are read in for the moment
            weight = arch.router_weight_of(block).detach()
            digest.update(f"{index}:{tuple(weight.shape)}".encode())
            digest.update(weight.float().cpu().numpy().tobytes())
    config = model.config.get_text_config()
    return {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_experts": [arch.experts_of(b).num_experts for _, b in blocks],
        "router_sha256": digest.hexdigest()[:20],
    }


@dataclass
class Observations:
    """`stats[domain][name]`: tensors [moe layers, experts] (`output_sum`: [.., .., hidden];
    `coselect`: [.., .., experts]; `tokens`: [layers])."""

    stats: dict[str, dict[str, torch.Tensor]]
    meta: dict

    @property
    def domains(self) -> list[str]:
        return sorted(self.stats)

    @property
    def layers(self) -> list[int]:
        """Decoder-layer index of each MoE layer, in the order of the statistics' first axis."""
        return list(self.meta["layers"])

    @property
    def num_experts(self) -> list[int]:
        return list(self.meta["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    def provenance(self, **extra) -> dict:
        """Where a plan made from these observations comes from: model fingerprint, calibration,
        architecture, then `extra` (e.g. ``domains=..., seed=...``)."""
        meta = self.meta
        return {
            "observations": meta["fingerprint"],
            "calibration": meta["calibration"],
            "architecture": meta["architecture"],
            **extra,
        }

    def pooled(self, domains=None, names=None) -> dict[str, torch.Tensor]:
        """Statistics summed over `domains`: None (all), a list (restrict), or {domain: weight}.

        Sums are weighted; `max_activation` takes the maximum over the domains with weight > 0.
        `names` limits the statistics pooled (e.g. skip the large `output_sum`).
        """
        if domains is None:
            domains = self.domains
        weights = domains if isinstance(domains, dict) else {d: 1.0 for d in domains}
        unknown = sorted(set(weights) - set(self.stats))
        if unknown or not weights:
            raise ValueError(
                f"unknown calibration domain(s) {unknown or '(none given)'}; these observations hold {self.domains}"
            )
        out: dict[str, torch.Tensor] = {}
        for domain, weight in weights.items():
            for name, value in self.stats[domain].items():
                if names is not None and name not in names:
                    continue
                if name == "max_activation":
                    value = value if weight > 0 else torch.zeros_like(value)
                    out[name] = value.clone() if name not in out else torch.maximum(out[name], value)
                else:
                    out[name] = value * weight if name not in out else out[name] + value * weight
        return out

    def lacks(self, *names) -> list[str]:
        """The statistics among `names` that some domain of these observations does not hold."""
        return [n for n in names if any(n not in self.stats[d] for d in self.stats)]

    def require(self, *names, purpose: str) -> None:
        """Raise a ValueError naming each statistic of `names` these observations lack, why, and how to
        record it: ``obs.require("prob_sum", purpose="criterion 'soft_frequency'")``."""
        lacking = self.lacks(*names)
        if not lacking:
            return
        source = self.meta.get("source") or {}
        which = f"observations imported from {source['tool']}" if source.get("tool") else "these observations"
        reasons = self.meta.get("missing") or {}
        what = "; ".join(f"'{n}'" + (f" ({reasons[n]})" if n in reasons else "") for n in lacking)
        plural = "s" if len(lacking) > 1 else ""
        raise ValueError(
            f"{purpose} needs the statistic{plural} {what}, which {which} do not hold; "
            f"observe the model with reapkit (`reapkit observe`) to record {'them' if plural else 'it'}"
        )

    def coselection(self, domains=None):
        """Top-k co-selection counts as a numpy array [moe layers, experts, experts]: entry (i, j)
        counts the calibration tokens that selected both expert i and expert j (the diagonal is
        each expert's token count); `domains` as in `pooled`.

            >>> c = obs.coselection()[0]; round(float(c[3, 5] / c[3, 3]), 3)   # share of expert 3's tokens also sent to 5
            0.233
        """
        self.require("coselect", purpose="co-selection counts")
        return self.pooled(domains, names=("coselect",))["coselect"].double().numpy()

    def __add__(self, other: Observations) -> Observations:
        if self.meta["fingerprint"] != other.meta["fingerprint"]:
            raise ValueError(
                "cannot add observations of different models: fingerprints "
                f"{self.meta['fingerprint']} and {other.meta['fingerprint']} differ"
            )
        stats = {d: {k: v.clone() for k, v in s.items()} for d, s in self.stats.items()}
        for domain, theirs in other.stats.items():
            if domain not in stats:
                stats[domain] = {k: v.clone() for k, v in theirs.items()}
                continue
            for name, value in theirs.items():
                mine = stats[domain][name]
                stats[domain][name] = torch.maximum(mine, value) if name == "max_activation" else mine + value
        meta = dict(self.meta)
        meta["calibration"] = {"parts": _parts(self.meta["calibration"]) + _parts(other.meta["calibration"])}
        return Observations(stats, meta)

    def save(self, path, *, force: bool = False) -> Path:
        """Write to directory `path` (whole or not at all); an existing one needs `force=True`."""
        with atomic_directory(path, force=force) as tmp:
            tensors = {
                f"{name}/{i}": value.contiguous()
                for i, d in enumerate(self.domains)
                for name, value in self.stats[d].items()
            }
            save_file(tensors, str(tmp / STATS_FILE))
            meta = {"format": FORMAT, **self.meta, "domains": self.domains}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return Path(path)

    @classmethod
    def load(cls, path, model=None) -> Observations:
        """Read observations saved by `save`; with `model`, check they were made on it."""
        path = Path(path)
        meta_path, stats_path = path / META_FILE, path / STATS_FILE
        if not meta_path.is_file() or not stats_path.is_file():
            raise FileNotFoundError(
                f"{path} is not a reapkit observations directory (expected {META_FILE} and {STATS_FILE}); "
                "create one with `reapkit observe MODEL --data SPEC --out DIR`"
            )
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(stats_path))
        except Exception as error:  # corrupted or foreign files
            raise ValueError(
                f"{path} holds unreadable observations ({type(error).__name__}: {error}); observe the model again"
            ) from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{meta_path} is not a reapkit observations file (format {found!r}, expected {FORMAT!r})")
        try:
            domains = meta.pop("domains")
            meta.pop("format")
            stats: dict[str, dict[str, torch.Tensor]] = {d: {} for d in domains}
            for key, value in tensors.items():
                name, index = key.rsplit("/", 1)
                stats[domains[int(index)]][name] = value
            missing = [f for f in ("fingerprint", "layers", "num_experts", "top_k", "calibration") if f not in meta]
            if missing:
                raise KeyError(f"metadata lacks {missing}")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"{path} holds incomplete or inconsistent observations ({type(error).__name__}: {error}); "
                "observe the model again"
            ) from error
        obs = cls(stats, meta)
        if model is not None:
            obs.check_model(model)
        return obs

    def check_model(self, model) -> None:
        """Raise if these observations were not made on `model` (router weights and shapes differ).

        Observations without a fingerprint (imported without the model, see `reapkit.observe.importers`) can
        only be checked for their MoE layers and expert counts.
        """
        mine = self.meta["fingerprint"]
        if mine is None:
            from reapkit.model.discover import architecture_for

            arch = architecture_for(model)
            blocks = list(arch.moe_blocks(model))
            theirs = ([i for i, _ in blocks], [arch.experts_of(b).num_experts for _, b in blocks])
            if (self.layers, self.num_experts) != theirs:
                raise ValueError(
                    f"these observations hold MoE layers {self.layers} with {self.num_experts} experts, but the model "
                    f"has MoE layers {theirs[0]} with {theirs[1]} experts; use the model they were recorded on"
                )
            return
        theirs = fingerprint(model)
        if mine != theirs:
            diff = {k: (mine.get(k), theirs.get(k)) for k in theirs if mine.get(k) != theirs.get(k)}
            raise ValueError(
                f"these observations were recorded on a different model (differences, observed vs given: {diff}); "
                "observe this model again with `reapkit observe`, or load it as it was observed (same --dtype)"
            )


def _parts(calibration: dict) -> list:
    return list(calibration["parts"]) if "parts" in calibration else [calibration]
