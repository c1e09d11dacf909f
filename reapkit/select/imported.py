"""Pruning plans made by other tools, read as `PruningPlan`s.

    >>> imported = read_llmcompressor_report("reap_report.json", model=model)   # or num_experts=16, top_k=2
    >>> imported.kept[3], imported.criterion   # a PruningPlan, comparable with reapkit's own
    ([0, 3, 5, 7, 11, 12, 14, 15], 'reap')

The format, as its source writes it:

**llm-compressor 0.14** (``llmcompressor/modifiers/pruning/reap/base.py``: ``REAPPruningModifier``
  with ``report_path``): JSON ``{MoE block module name: [retained expert indices, ascending]}``,
  e.g. ``{"model.layers.0.mlp": [0, 2, 3, 5]}``; no scores.

"""

from __future__ import annotations

import json
import re
from pathlib import Path

from reapkit.errors import InvalidInput, Mismatch, MissingInput
from reapkit.observe.importers import file_digest
from reapkit.observe.observations import model_shape
from reapkit.select.plan import PruningPlan

__all__ = ["LLM_COMPRESSOR", "read_llmcompressor_report"]

LLM_COMPRESSOR = "llm-compressor's REAP report"


def read_llmcompressor_report(path, *, model=None, num_experts: int | None = None, top_k: int | None = None):
    """A `PruningPlan` from llm-compressor's REAP report (`REAPPruningModifier(report_path=...)`).

    The report holds only the retained experts of each MoE block (no scores), so the number of
    experts before pruning comes from `model` (which also gives the plan its fingerprint, checked
    when the plan prunes a checkpoint) or `num_experts` (every layer). Layer = the first number in
    the block's module name (``model.layers.3.mlp`` -> 3).
    """
    path = Path(path)
    where = f"{path} is not an llm-compressor REAP report"
    if not path.is_file():
        raise MissingInput(f"{path} does not exist; pass the .json file REAPPruningModifier wrote (report_path)")
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{where} (not JSON: {error}); pass the .json file REAPPruningModifier wrote") from None
    if not isinstance(report, dict) or not report:
        raise InvalidInput(f"{where}: expected {{module name: [retained expert indices]}}")
    if (model is None) == (num_experts is None):
        raise InvalidInput(
            "the report does not say how many experts each layer had; give the model (--model) or --num-experts, not both"
        )
    shape = model_shape(model) if model is not None else None
    if shape is not None:
        sizes = dict(zip(shape["layers"], shape["num_experts"]))
        top_k = shape["top_k"] if top_k is None else top_k
    elif isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise InvalidInput(f"--num-experts must be a positive number of experts per layer, got {num_experts!r}")
    kept, totals = {}, {}
    for name, retained in report.items():
        found = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
        if found is None:
            raise InvalidInput(f"{where}: module name {name!r} has no layer number (expected e.g. model.layers.3.mlp)")
        layer = int(found.group(1))
        if layer in kept:
            raise InvalidInput(f"{where}: layer {layer} appears twice")
        if shape is not None and layer not in sizes:
            raise Mismatch(
                f"the report prunes {name} (layer {layer}), which is not an MoE layer of the model (MoE layers: "
                f"{shape['layers']}); pass the model the report was made on"
            )
        total = sizes[layer] if shape is not None else num_experts
        if not isinstance(retained, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in retained):
            raise InvalidInput(f"{where}: {name} must map to a list of expert indices, got {retained!r}")
        if len(set(retained)) != len(retained) or any(not 0 <= i < total for i in retained):
            raise Mismatch(
                f"{path}: {name} retains {retained}, which are not distinct experts of 0..{total - 1}; "
                "check --num-experts or pass the model the report was made on"
            )
        if top_k is not None and len(retained) < top_k:
            raise InvalidInput(f"{path}: {name} retains {len(retained)} experts, fewer than top-k = {top_k}")
        kept[layer], totals[layer] = sorted(retained), total
    uniform = {(totals[layer], totals[layer] - len(kept[layer])) for layer in kept}
    ratio = None
    if len(uniform) == 1:  # llm-compressor drops the same number of experts from every layer
        total, dropped = uniform.pop()
        ratio = dropped / total
    provenance = {
        "source": LLM_COMPRESSOR,
        "file": str(path),
        "sha256": file_digest(path),
        "observations": shape and shape["fingerprint"],
        "architecture": shape and shape["architecture"],
        "calibration": None,
    }
    layers = sorted(kept)
    return PruningPlan({k: kept[k] for k in layers}, {k: totals[k] for k in layers}, "reap", ratio, {}, provenance)
