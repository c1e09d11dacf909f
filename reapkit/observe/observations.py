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

Saved as a directory: `statistics.safetensors` (tensors) and `observations.json` (metadata). What each
statistic is, its shape and how two shards combine is declared in `reapkit.observe.statistics`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reapkit.atomic import atomic_directory
from reapkit.errors import InvalidInput, Mismatch, MissingInput, MissingStatistic
from reapkit.model.layer import moe_layers
from reapkit.observe.statistics import STATISTICS, check, how_to_record

STATS_FILE = "statistics.safetensors"
META_FILE = "observations.json"
FORMAT = "reapkit-observations/1"


def fingerprint(model) -> dict:
    """What identifies a model for observations: type, shapes and a hash of every router's weights."""
    from accelerate.utils import align_module_device

    digest = hashlib.sha256()
    layers = moe_layers(model)
    for layer in layers:
        with align_module_device(layer.router):  # weights a device map offloaded to disk are read in for the moment
            weight = layer.router_weight.detach()
            digest.update(f"{layer.index}:{tuple(weight.shape)}".encode())
            digest.update(weight.float().cpu().numpy().tobytes())
    config = model.config.get_text_config()
    return {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_experts": [layer.num_experts for layer in layers],
        "router_sha256": digest.hexdigest()[:20],
    }


def model_shape(model) -> dict:
    """Architecture, fingerprint, MoE layers, experts per layer and routing of `model`: what every
    `Observations.meta` records of the model it describes, however the statistics were made."""
    from reapkit.model.discover import architecture_for

    arch = architecture_for(model)
    layers = moe_layers(model, arch)
    config = model.config.get_text_config()
    return {
        "architecture": arch.model_type,
        "fingerprint": fingerprint(model),
        "layers": [layer.index for layer in layers],
        "num_experts": [layer.num_experts for layer in layers],
        "top_k": arch.top_k(config),
        "n_group": arch.n_group(config),
        "topk_group": arch.topk_group(config),
    }


def fingerprint_differences(expected: dict, model) -> dict:
    """{key: (expected, found)} where `model`'s fingerprint differs from `expected`; {} when it is that model.

    >>> fingerprint_differences(fingerprint(model), model)
    {}
    """
    found = fingerprint(model)
    return {k: (expected.get(k), found.get(k)) for k in found if expected.get(k) != found.get(k)}


@dataclass
class Observations:
    """`stats[domain][name]`: the statistics of `reapkit.observe.statistics.STATISTICS` recorded for
    each calibration domain (every domain holds the same ones); `meta["missing"]`: `{name: why}` of
    those not held."""

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

        Sums are weighted; a maximum (`max_activation`) is taken over the domains with weight > 0.
        `names` limits the statistics pooled (e.g. skip the large `output_sum`).
        """
        if domains is None:
            domains = self.domains
        weights = domains if isinstance(domains, dict) else {d: 1.0 for d in domains}
        unknown = sorted(set(weights) - set(self.stats))
        if unknown or not weights:
            raise InvalidInput(
                f"unknown calibration domain(s) {unknown or '(none given)'}; these observations hold {self.domains}"
            )
        out: dict[str, torch.Tensor] = {}
        for domain, weight in weights.items():
            for name, value in self.stats[domain].items():
                if names is not None and name not in names:
                    continue
                if STATISTICS[name].combine == "max":
                    value = value if weight > 0 else torch.zeros_like(value)
                else:
                    value = value * weight
                out[name] = value.clone() if name not in out else STATISTICS[name].combined(out[name], value)
        return out

    def lacks(self, *names) -> list[str]:
        """The statistics among `names` that some domain of these observations does not hold."""
        return [n for n in names if any(n not in self.stats[d] for d in self.stats)]

    def require(self, *names, purpose: str) -> None:
        """Raise `MissingStatistic` naming each statistic of `names` these observations lack, why, and how
        to record it: ``obs.require("prob_sum", purpose="criterion 'soft_frequency'")``."""
        lacking = self.lacks(*names)
        if not lacking:
            return
        source = self.meta.get("source") or {}
        which = f"observations imported from {source['tool']}" if source.get("tool") else "these observations"
        reasons = self.meta.get("missing") or {}
        what = "; ".join(f"'{n}'" + (f" ({reasons[n]})" if n in reasons else "") for n in lacking)
        plural = "s" if len(lacking) > 1 else ""
        raise MissingStatistic(
            f"{purpose} needs the statistic{plural} {what}, which {which} do not hold; {how_to_record(*lacking)}"
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
        """The observations of both calibration sets; a statistic only one side holds is left out."""
        if self.meta["fingerprint"] != other.meta["fingerprint"]:
            raise Mismatch(
                "cannot add observations of different models: fingerprints "
                f"{self.meta['fingerprint']} and {other.meta['fingerprint']} differ; add observations of one model"
            )
        both = [n for n in STATISTICS if not self.lacks(n) and not other.lacks(n)]
        stats = {}
        for domain in sorted({*self.stats, *other.stats}):
            mine, theirs = self.stats.get(domain), other.stats.get(domain)
            stats[domain] = {
                n: (mine or theirs)[n].clone() if not (mine and theirs) else STATISTICS[n].combined(mine[n], theirs[n])
                for n in both
            }
        missing = {**(other.meta.get("missing") or {}), **(self.meta.get("missing") or {})}
        for n in {n for side in (self, other) for d in side.stats.values() for n in d} - set(both):
            missing.setdefault(n, "not held by every part added")
        meta = dict(self.meta)
        meta["missing"] = {n: why for n, why in sorted(missing.items()) if n not in both}
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
            raise MissingInput(
                f"{path} is not a reapkit observations directory (expected {META_FILE} and {STATS_FILE}); "
                "create one with `reapkit observe MODEL --data SPEC --out DIR`"
            )
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(stats_path))
        except Exception as error:  # corrupted or foreign files
            raise InvalidInput(
                f"{path} holds unreadable observations ({type(error).__name__}: {error}); observe the model again"
            ) from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise InvalidInput(
                f"{meta_path} is not a reapkit observations file (format {found!r}, expected {FORMAT!r})"
            )
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
            raise InvalidInput(
                f"{path} holds incomplete or inconsistent observations ({type(error).__name__}: {error}); "
                "observe the model again"
            ) from error
        names = {tuple(sorted(held)) for held in stats.values()}
        if len(names) > 1:
            raise Mismatch(f"{path} holds different statistics in different domains; observe the model again")
        for held in stats.values():
            check(held, len(meta["layers"]), max(meta["num_experts"]), where=str(path))
        obs = cls(stats, meta)
        if model is not None:
            obs.check_model(model)
        return obs

    def check_model(self, model) -> None:
        """Raise `Mismatch` if these observations were not made on `model` (router weights and shapes differ).

        Observations without a fingerprint (imported without the model, see `reapkit.observe.importers`) can
        only be checked for their MoE layers and expert counts.
        """
        mine = self.meta["fingerprint"]
        if mine is None:
            layers = moe_layers(model)
            theirs = ([layer.index for layer in layers], [layer.num_experts for layer in layers])
            if (self.layers, self.num_experts) != theirs:
                raise Mismatch(
                    f"these observations hold MoE layers {self.layers} with {self.num_experts} experts, but the model "
                    f"has MoE layers {theirs[0]} with {theirs[1]} experts; use the model they were recorded on"
                )
            return
        diff = fingerprint_differences(mine, model)
        if diff:
            raise Mismatch(
                f"these observations were recorded on a different model (differences, observed vs given: {diff}); "
                "observe this model again with `reapkit observe`, or load it as it was observed (same --dtype)"
            )


def _parts(calibration: dict) -> list:
    return list(calibration["parts"]) if "parts" in calibration else [calibration]
