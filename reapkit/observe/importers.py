"""Saliency computed by other tools, brought into the workbench.

    >>> from reapkit.select.criteria import score
    >>> obs = read_reap_observer("observations_1024_cosine.pt", domain="code")
    >>> sorted(obs.meta["missing"])            # what that file does not hold, each with the reason
    ['all_output_sum', 'coselect', 'max_activation', 'output_sum', 'prob_sum', 'router_distance_sum', 'router_gram', 'sq_norm_sum']
    >>> score(obs, "reap").shape               # [moe layers, experts]: equals the file's own `reap`
    (4, 16)

Plans (no scores) from llm-compressor are read by `reapkit.select.imported`.

The format, as its source writes it:

- **REAP observer** (CerebrasResearch/reap, ``src/reap/observer.py``: ``MoETransformerObserver``,
  ``save_state`` and ``report_state``; ``src/reap/metrics.py``: ``OnlineStatsTracker``): one
  ``torch.save`` of ``{decoder layer index (int): {name: tensor}}``. Per layer and expert j, over the
  tokens routed to j (top-k of the router logits), with g = the softmax router probability
  (renormalised over the top-k when the run set ``renormalize_router_weights``) and f = the expert's
  output: ``expert_frequency`` int64 [E] (routed tokens), ``ean_sum`` float64 [E] (sum ||f||),
  ``weighted_ean_sum`` float64 [E] (sum g ||f||), ``weighted_expert_frequency_sum`` float64 [E]
  (sum g), ``ean_mean`` and ``reap`` float32 [E] (running means of ||f|| and g ||f||, so ``reap`` =
  ``weighted_ean_sum / expert_frequency``), ``max_activations`` float32 [E] (largest *signed* element
  of f), ``total_tokens`` int64 [] and ``pairwise_expert_frequency`` int64 [E, E] (= frequency[i] +
  frequency[j]); without ``record_pruning_metrics_only`` also running means such as
  ``routed_characteristic_activation`` float32 [E, H] (mean f over the routed tokens) and distance
  matrices for merging (``ttm_similarity_matrix``, ...), and running means over *all* tokens:
  ``characteristic_activation`` float32 [E, H] (mean f, every expert on every token) and
  ``router_logit_similiarity`` float32 [E, E] (per-batch 1 - cos of router-logit columns), which
  times ``total_tokens`` are reapkit's ``all_output_sum`` and ``router_distance_sum``.

Files are read with ``torch.load(weights_only=True)``: plain tensors only, no code runs.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from reapkit import __version__
from reapkit.errors import InvalidInput, Mismatch, MissingInput

__all__ = ["REAP_OBSERVER", "read_reap_observer", "file_digest"]

REAP_OBSERVER = "the REAP observer (CerebrasResearch/reap)"

#: reapkit statistic <- the REAP observer's sum of the same quantity (per layer, [E]).
SUMS = {
    "count": "expert_frequency",
    "norm_sum": "ean_sum",
    "reap_sum": "weighted_ean_sum",
    "gate_sum": "weighted_expert_frequency_sum",
}
#: reapkit statistic <- the observer's mean over routed tokens (x expert_frequency), when the sum is absent.
MEANS = {"norm_sum": "ean_mean", "reap_sum": "reap", "output_sum": "routed_characteristic_activation"}

#: reapkit statistic <- the observer's mean over *all* tokens (x total_tokens): what HC-SMoE and M-SMoE merge on.
TOKEN_MEANS = {"all_output_sum": "characteristic_activation", "router_distance_sum": "router_logit_similiarity"}

#: What reapkit records that the REAP observer does not, and why.
NOT_RECORDED = {
    "prob_sum": "the router probability summed over every token; the REAP observer sums it only over the tokens "
    "routed to each expert (weighted_expert_frequency_sum)",
    "coselect": "tokens that chose both expert i and expert j; the observer's pairwise_expert_frequency is "
    "expert_frequency[i] + expert_frequency[j]",
    "max_activation": "the largest |element| of each expert's output; the observer's max_activations is the "
    "largest signed element, a different quantity",
    "sq_norm_sum": "the squared output norm summed over each expert's routed tokens; the observer does not record it",
    "max_signed": "the largest signed output element over the routed tokens; this file has no max_activations",
    "output_sum": "each expert's output summed over its routed tokens; the observer records it "
    "(routed_characteristic_activation) only when run without record_pruning_metrics_only",
    "all_output_sum": "each expert's output summed over all tokens; the observer records it "
    "(characteristic_activation) only when run without record_pruning_metrics_only",
    "router_distance_sum": "the per-batch 1 - cos of router-logit columns; the observer records it "
    "(router_logit_similiarity) only when run without record_pruning_metrics_only",
    "router_gram": "the Gram matrix of the router logits; the observer does not record it",
}

#: Keys of the observer's state that have no reapkit statistic, and why they are left out.
UNMAPPED = {
    "pairwise_expert_frequency": NOT_RECORDED["coselect"],
}


def file_digest(path: Path) -> str:
    """The first 20 hex digits of the SHA-256 of a file, recorded as provenance."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def _load_tensors(path: Path) -> dict:
    if not path.is_file():
        raise MissingInput(f"{path} does not exist; pass the .pt file the REAP observer saved (save_state)")
    with open(path, "rb") as file:
        pickled = file.read(1) == b"\x80"  # torch.save's legacy format is a pickle stream
    if not (zipfile.is_zipfile(path) or pickled):
        raise InvalidInput(f"{path} is not a torch.save file; pass the .pt file the REAP observer saved (save_state)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidInput(
            f"{path} needs pickled Python objects to load, and reapkit reads only plain tensors "
            "(torch.load weights_only=True) so that no code from a file runs; save the observer's "
            "report_state() (tensors only) with torch.save and import that"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, EOFError) and error.errno is not None:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInput(
            f"{path} is not a torch.save file ({first}); pass the .pt file the REAP observer saved (save_state)"
        ) from None


def _layer_index(key) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, str)) or not str(key).isdigit():
        raise ValueError(f"key {key!r} is not a decoder layer index")
    return int(key)


def read_reap_observer(path, *, domain: str = "calibration", model=None, top_k: int | None = None):
    """`Observations` from the state the REAP observer saved (see the module docstring for the format).

    The whole file becomes one calibration `domain`. With `model` (the model it was recorded on) the
    observations get its fingerprint, architecture and routing, after checking the MoE layers and
    expert counts agree; without it the fingerprint is None (plans are then checked for layers and
    expert counts only) and `top_k` is read from expert_frequency / total_tokens unless given.
    What the file lacks is listed in ``meta["missing"]``; criteria that need it refuse, naming it.
    """
    from reapkit.observe.observations import Observations
    from reapkit.observe.statistics import STATISTICS

    path = Path(path)
    if not isinstance(domain, str) or not domain.isidentifier() or domain == "all":
        raise InvalidInput(
            f"domain {domain!r} must be a name such as code or calibration ('all' means every domain pooled)"
        )
    state = _load_tensors(path)
    where = f"{path} is not a REAP observer state"
    if not isinstance(state, dict) or not state:
        raise InvalidInput(f"{where}: expected a dict {{layer index: {{name: tensor}}}}, got {type(state).__name__}")
    layers, rows, unmapped = [], {}, {}
    for key in sorted(state, key=lambda k: (str(k).isdigit() and int(k), str(k))):
        try:
            layer = _layer_index(key)
        except ValueError as error:
            raise InvalidInput(f"{where}: {error} (the observer keys its state by layer index)") from None
        values = state[key]
        if not isinstance(values, dict) or "expert_frequency" not in values:
            raise InvalidInput(f"{where}: layer {key} has no expert_frequency (the tokens routed to each expert)")
        if not any(name in values for name in ("weighted_ean_sum", "reap")):
            raise InvalidInput(
                f"{where}: layer {key} has neither weighted_ean_sum nor reap, so it holds no REAP saliency"
            )
        layers.append(layer)
        rows[layer] = values
        unmapped.update({k: UNMAPPED.get(k, "no reapkit statistic") for k in values if k not in _READ})
    if len(set(layers)) != len(layers):
        raise InvalidInput(f"{where}: layer indices {layers} repeat")
    counts = [rows[layer]["expert_frequency"] for layer in layers]
    if any(not isinstance(c, torch.Tensor) or c.dim() != 1 for c in counts):
        raise InvalidInput(f"{where}: expert_frequency must be a 1-D tensor [experts] in every layer")
    num_experts = [int(c.numel()) for c in counts]
    width = max(num_experts)

    stats: dict[str, torch.Tensor] = {}
    missing = {}
    for name in ("count", "norm_sum", "reap_sum", "gate_sum", "output_sum", *TOKEN_MEANS):
        per_layer = [_statistic(rows[layer], name, layer, where) for layer in layers]
        if any(v is None for v in per_layer):
            missing[name] = NOT_RECORDED.get(name, f"this file has no {SUMS.get(name, MEANS.get(name))}")
            continue
        shape = (len(layers), width, *per_layer[0].shape[1:])
        stats[name] = torch.zeros(shape, dtype=STATISTICS[name].torch_dtype)
        for pos, value in enumerate(per_layer):
            if value.shape[0] != num_experts[pos] or value.shape[1:] != per_layer[0].shape[1:]:
                raise InvalidInput(
                    f"{where}: layer {layers[pos]} holds {tuple(value.shape)} values for {SUMS.get(name, name)} "
                    f"but {num_experts[pos]} experts"
                )
            stats[name][pos, : value.shape[0]] = value
    if all("total_tokens" in rows[layer] for layer in layers):
        stats["tokens"] = torch.tensor([float(rows[layer]["total_tokens"]) for layer in layers], dtype=torch.float64)
    peaks = _max_signed(rows, layers, num_experts, width, where)
    if peaks is None:
        missing["max_signed"] = NOT_RECORDED["max_signed"]
    else:
        stats["max_signed"] = peaks
    for name in ("prob_sum", "coselect", "max_activation", "sq_norm_sum", "router_gram"):
        missing[name] = NOT_RECORDED[name]

    reap_difference = _check_reap(rows, layers, stats, where)
    shape = _attach_model(model, layers, num_experts, stats, path) if model is not None else None
    top_k = _top_k(top_k, shape, stats, path)
    if "tokens" not in stats:  # every token is routed to exactly top-k experts
        stats["tokens"] = stats["count"].sum(1) / top_k
    meta = {
        "reapkit_version": __version__,
        "architecture": shape and shape["architecture"],
        "fingerprint": shape and shape["fingerprint"],
        "layers": layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "n_group": shape["n_group"] if shape else 1,
        "topk_group": shape and shape["topk_group"],
        "calibration": {
            "source": str(path),
            "sha256": file_digest(path),
            "tokens": {domain: int(stats["tokens"][0])},
        },
        "source": {
            "tool": REAP_OBSERVER,
            "file": str(path),
            "gate": "softmax of the router logits, renormalised over the top-k if the run set "
            "renormalize_router_weights (not recorded in the file)",
            "routing": "known from --model" if shape else "unknown: imported without the model (n_group taken as 1)",
            "reap_max_relative_difference": reap_difference,
            "unmapped": dict(sorted(unmapped.items())),
        },
        "missing": missing,
    }
    return Observations({domain: stats}, meta)


#: Keys of the observer's state that `read_reap_observer` reads.
_READ = {*SUMS.values(), *MEANS.values(), *TOKEN_MEANS.values(), "total_tokens", "max_activations"}


def _max_signed(rows: dict, layers: list[int], num_experts: list[int], width: int, where: str) -> torch.Tensor | None:
    """reapkit's `max_signed` [layers, experts] from the observer's ``max_activations``, None if a layer lacks it.

    The same quantity: CerebrasResearch/reap @1970473 ``src/reap/pruning_metrics.py`` starts
    ``max_activations`` at 0 (float32) and raises it to ``selected_activations.max()``, the largest
    signed element of the expert's unweighted output over the non-padding tokens routed to it; so it
    is floored at 0, as `max_signed` is.
    """
    peaks = torch.zeros(len(layers), width, dtype=torch.float64)
    for pos, layer in enumerate(layers):
        value = rows[layer].get("max_activations")
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (num_experts[pos],):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidInput(
                f"{where}: layer {layer} holds max_activations {shape} but {num_experts[pos]} experts; "
                "pass the state the observer saved, unchanged"
            )
        peaks[pos, : num_experts[pos]] = value.double()
    return peaks if all("max_activations" in rows[layer] for layer in layers) else None


def _statistic(values: dict, name: str, layer: int, where: str) -> torch.Tensor | None:
    """reapkit's `name` for one layer: the observer's sum, or its mean over routed tokens x the count."""
    count = values["expert_frequency"].double()
    source = SUMS.get(name)
    if source in values:
        tensor = values[source]
    elif MEANS.get(name) in values:
        source, mean = MEANS[name], values[MEANS[name]]
        if not isinstance(mean, torch.Tensor):
            raise InvalidInput(f"{where}: layer {layer} {source} is a {type(mean).__name__}, not a tensor")
        scale = count.reshape(-1, *([1] * (mean.dim() - 1)))
        tensor = mean.double() * scale if name != "output_sum" else mean.float() * scale.float()
    elif TOKEN_MEANS.get(name) in values and "total_tokens" in values:
        source, mean = TOKEN_MEANS[name], values[TOKEN_MEANS[name]]
        if not isinstance(mean, torch.Tensor):
            raise InvalidInput(f"{where}: layer {layer} {source} is a {type(mean).__name__}, not a tensor")
        tensor = mean.double() * float(values["total_tokens"])
    else:
        return None
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1 or not tensor.is_floating_point() and name != "count":
        kind = (
            type(tensor).__name__ if not isinstance(tensor, torch.Tensor) else f"{tensor.dtype} {tuple(tensor.shape)}"
        )
        raise InvalidInput(f"{where}: layer {layer} {source} is {kind}, expected a float tensor [experts]")
    return tensor.float() if name in ("output_sum", "all_output_sum") else tensor.double()


def _check_reap(rows: dict, layers: list[int], stats: dict, where: str) -> float | None:
    """The largest relative difference between the file's `reap` and weighted_ean_sum / expert_frequency."""
    if not all("reap" in rows[layer] and "weighted_ean_sum" in rows[layer] for layer in layers):
        return None
    worst = 0.0
    for pos, layer in enumerate(layers):
        count = stats["count"][pos, : rows[layer]["expert_frequency"].numel()]
        reap = rows[layer]["reap"]
        if not isinstance(reap, torch.Tensor) or reap.shape != count.shape:
            raise InvalidInput(f"{where}: layer {layer} reap is not a tensor [experts] like its expert_frequency")
        theirs = reap.double()[count > 0]
        mine = (stats["reap_sum"][pos, : count.numel()] / count.clamp_min(1))[count > 0]
        scale = mine.abs().max().clamp_min(1e-30) if mine.numel() else torch.tensor(1.0)
        worst = max(worst, float(((theirs - mine).abs() / scale).max()) if mine.numel() else 0.0)
    if worst > 1e-3:
        raise InvalidInput(
            f"{where} as documented: its reap differs from weighted_ean_sum / expert_frequency by up to "
            f"{worst:.2g} (relative); the file is inconsistent or from another tool"
        )
    return worst


def _attach_model(model, layers, num_experts, stats, path) -> dict:
    from reapkit.observe.observations import model_shape

    shape = model_shape(model)
    if (shape["layers"], shape["num_experts"]) != (layers, num_experts):
        raise Mismatch(
            f"{path} holds MoE layers {layers} with {num_experts} experts, but the model has MoE layers "
            f"{shape['layers']} with {shape['num_experts']} experts; pass the model the observer ran on"
        )
    if "output_sum" in stats and stats["output_sum"].shape[-1] != shape["fingerprint"]["hidden_size"]:
        raise Mismatch(
            f"{path} holds expert outputs of width {stats['output_sum'].shape[-1]}, but the model's hidden size is "
            f"{shape['fingerprint']['hidden_size']}; pass the model the observer ran on"
        )
    return shape


def _top_k(given, shape, stats, path) -> int:
    if shape is not None:
        if given is not None and given != shape["top_k"]:
            raise Mismatch(f"--top-k {given} disagrees with the model, which routes each token to {shape['top_k']}")
        return shape["top_k"]
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise InvalidInput(f"top-k must be a positive number of experts per token, got {given!r}")
        return given
    if "tokens" in stats and bool((stats["tokens"] > 0).all()):
        per_token = stats["count"].sum(1) / stats["tokens"]
        k = round(float(per_token[0]))
        if k >= 1 and bool(((per_token - k).abs() < 1e-9).all()):
            return k
    raise InvalidInput(
        f"cannot tell from {path} how many experts each token is routed to; pass --top-k K, or --model MODEL"
    )
