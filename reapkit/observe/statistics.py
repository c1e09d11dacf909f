"""Each statistic observing records, declared once: its name, shape, dtype, how shards combine, what records it.

    >>> STATISTICS["reap_sum"].shape(layers=4, experts=16, hidden=128)
    (4, 16)
    >>> STATISTICS["max_activation"].combine
    'max'
    >>> chosen(None) == DEFAULT
    True
    >>> chosen(["coselect"])[-1]
    'coselect'
    >>> chosen(["coselected"])
    Traceback (most recent call last):
    ...
    reapkit.errors.InvalidInput: unknown statistic 'coselected'; choose from max_activation, max_signed, output_sum, all_output_sum, prob_output_sum, router_gram, router_distance_sum, coselect (or 'all')

Every statistic is additive over calibration tokens: observations of two data shards combine into
the observations of both, by a sum or (for maxima) an element-wise maximum. Each has a leading axis
of MoE layers; `axes` names the rest (``E`` experts, ``H`` hidden size). A statistic that is not
`default` is recorded only when asked for (`observe(..., statistics=[...])`,
``reapkit observe --statistics ...``): it costs more than it is worth for most runs.

What merging needs (HC-SMoE, M-SMoE as the REAP code at 1970473 records them, `observer.py`
~443-459): `all_output_sum` (``--all-token-outputs``) runs every expert on every real token;
divided by `tokens` it is the code's `characteristic_activation` exactly. For the router, the
code keeps per batch 1 - cos between the router-logit columns of experts i and j over the batch's
tokens, averaged over batches weighted by their tokens. `router_distance_sum` records that sum, so
`router_distance_sum / tokens` equals it exactly when the batches are the same (reapkit's
calibration batches are the code's forward passes). `router_gram` is the additive, batch-free
alternative: Σ z zᵀ over all tokens, whose cosine ``G_ij / sqrt(G_ii G_jj)`` is the pooled cosine
over all tokens; it equals 1 - the per-batch statistic for a single batch and only approximates it
over several (tests/unit/test_merging.py checks both relations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reapkit.errors import InvalidInput, Mismatch

__all__ = [
    "ALL_TOKENS",
    "DEFAULT",
    "FLAGS",
    "FROM_WEIGHTS",
    "OPTIONAL",
    "STATISTICS",
    "Statistic",
    "check",
    "chosen",
    "how_to_record",
    "markdown",
    "not_recorded",
]


@dataclass(frozen=True)
class Statistic:
    """One recorded statistic; `recorder` says which part of the forward records it."""

    name: str
    axes: tuple[str, ...]  # after the MoE-layer axis: "E" experts, "H" hidden size
    dtype: str  # a torch dtype name
    combine: str  # "sum" or "max": how two shards (or domains) combine
    recorder: str  # "router": the router's forward; "experts": the experts' own computation; "weights": the checkpoint
    default: bool  # False: recorded only when asked for
    description: str  # Markdown, for expert j and token t: g gate value, f expert output, p router probability

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def shape(self, layers: int, experts: int, hidden: int) -> tuple[int, ...]:
        sizes = {"E": experts, "H": hidden}
        return (layers, *(sizes[axis] for axis in self.axes))

    def combined(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """`a` and `b` (two shards) as one: their sum, or their element-wise maximum."""
        return torch.maximum(a, b) if self.combine == "max" else a + b


_TABLE = (
    Statistic("count", ("E",), "float64", "sum", "experts", True, "tokens routed to *j*"),
    Statistic("gate_sum", ("E",), "float64", "sum", "experts", True, "Σ *g_j(t)* over the tokens routed to *j*"),
    Statistic("norm_sum", ("E",), "float64", "sum", "experts", True, "Σ ‖*f_j(t)*‖ over the same tokens"),
    Statistic("reap_sum", ("E",), "float64", "sum", "experts", True, "Σ *g_j(t)* ‖*f_j(t)*‖ over the same tokens"),
    Statistic("sq_norm_sum", ("E",), "float64", "sum", "experts", True, "Σ ‖*f_j(t)*‖² over the same tokens"),
    Statistic(
        "prob_sum", ("E",), "float64", "sum", "router", True, "Σ *p_j(t)* over *all* tokens, routed to *j* or not"
    ),
    Statistic("tokens", (), "float64", "sum", "router", True, "non-padding tokens the router saw"),
    Statistic(
        "max_activation",
        ("E",),
        "float64",
        "max",
        "experts",
        False,
        "the largest |element| of *f_j(t)* over the same tokens",
    ),
    Statistic(
        "max_signed",
        ("E",),
        "float64",
        "max",
        "experts",
        False,
        "the largest *signed* element of *f_j(t)* over the same tokens, floored at 0 (REAP's `max_activations`)",
    ),
    Statistic("output_sum", ("E", "H"), "float32", "sum", "experts", False, "Σ *f_j(t)* over the tokens routed to *j*"),
    Statistic(
        "all_output_sum",
        ("E", "H"),
        "float32",
        "sum",
        "experts",
        False,
        "Σ *f_j(t)* over *all* tokens, routed to *j* or not (every expert runs on every token; HC-SMoE's "
        "characteristic activation is this over `tokens`)",
    ),
    Statistic(
        "prob_output_sum",
        ("E", "H"),
        "float32",
        "sum",
        "experts",
        False,
        "Σ *p_j(t) f_j(t)* over *all* tokens, routed to *j* or not (every expert runs on every token; REAM's "
        "gated output similarity compares these)",
    ),
    Statistic(
        "router_gram",
        ("E", "E"),
        "float64",
        "sum",
        "router",
        False,
        "Σ *z_i(t) z_j(t)* over all tokens, *z* the router logits (the Gram matrix of the logit columns)",
    ),
    Statistic(
        "router_distance_sum",
        ("E", "E"),
        "float64",
        "sum",
        "router",
        False,
        "Σ over batches *b* of *n_b* (1 − cos(*z_i*, *z_j*)) over the batch's *n_b* tokens; divided by `tokens` it "
        "is the REAP code's `router_logit_similiarity` (M-SMoE)",
    ),
    Statistic(
        "coselect",
        ("E", "E"),
        "float64",
        "sum",
        "experts",
        False,
        "tokens that chose both *i* and *j* (the diagonal is `count`)",
    ),
    Statistic(
        "weight_abs_sum",
        ("E",),
        "float64",
        "sum",
        "weights",
        False,
        "Σ |*w*| over the elements of *j*'s weight matrices",
    ),
    Statistic("weight_sq_sum", ("E",), "float64", "sum", "weights", False, "Σ *w*² over the same elements"),
    Statistic("weight_numel", ("E",), "float64", "sum", "weights", False, "the number of those elements"),
)

#: every statistic by name, in the order they are saved
STATISTICS: dict[str, Statistic] = {s.name: s for s in _TABLE}
#: recorded by every observation
DEFAULT: tuple[str, ...] = tuple(s.name for s in _TABLE if s.default)
#: recorded only when asked for
OPTIONAL: tuple[str, ...] = tuple(s.name for s in _TABLE if not s.default and s.recorder != "weights")
#: read from a checkpoint's expert weights, never recorded by observing (`reapkit.observe.weights`)
FROM_WEIGHTS: tuple[str, ...] = tuple(s.name for s in _TABLE if s.recorder == "weights")
#: recorded by running every expert on every token: about E/k times the experts' part of a forward
ALL_TOKENS: tuple[str, ...] = ("all_output_sum", "prob_output_sum")


def chosen(statistics=None) -> tuple[str, ...]:
    """The statistics to record: the defaults plus the optional ones named (`"all"`: every one).

    Naming a default statistic is allowed and changes nothing.
    """
    if statistics is None:
        return DEFAULT
    names = [statistics] if isinstance(statistics, str) else list(statistics)
    if "all" in names:
        return tuple(n for n in STATISTICS if n not in FROM_WEIGHTS)
    weights = [n for n in names if n in FROM_WEIGHTS]
    if weights:
        raise InvalidInput(f"{weights[0]} is not recorded by observing; {how_to_record(weights[0])}")
    unknown = [n for n in names if n not in STATISTICS]
    if unknown:
        raise InvalidInput(f"unknown statistic {unknown[0]!r}; choose from {', '.join(OPTIONAL)} (or 'all')")
    return tuple(n for n in STATISTICS if n in DEFAULT or n in names)


#: optional statistics with a flag of their own on `reapkit observe` (besides ``--statistics NAME``)
FLAGS: dict[str, str] = {"all_output_sum": "--all-token-outputs"}


def how_to_record(*names: str) -> str:
    """How to record the statistics `names` (the end of a refusal that lacks them).

    >>> how_to_record("all_output_sum")
    "observe the model with `reapkit observe --all-token-outputs` (or observe(..., statistics=['all_output_sum'])) to record it"
    """
    them = "them" if len(names) > 1 else "it"
    if any(n in FROM_WEIGHTS for n in names):
        return (
            f"read {them} from the checkpoint's expert weights: give the model folder instead of observations "
            "(`reapkit scores MODEL_DIR --criterion aimer`, or reapkit.observe.weights.weight_statistics(MODEL_DIR))"
        )
    optional = [n for n in names if n in OPTIONAL]
    if not optional:
        return f"observe the model with reapkit (`reapkit observe`) to record {them}"
    flags = [FLAGS[n] for n in optional if n in FLAGS]
    rest = [n for n in optional if n not in FLAGS]
    command = " ".join(flags + ([f"--statistics {' '.join(rest)}"] if rest else []))
    return f"observe the model with `reapkit observe {command}` (or observe(..., statistics={optional!r})) to record {them}"


def not_recorded(names) -> dict[str, str]:
    """`{statistic: why it is missing}` for the optional statistics not among `names`."""
    return {n: "recorded only when asked for" for n in OPTIONAL if n not in names}


def markdown() -> str:
    """The table of statistics as Markdown (what docs/observations.md shows)."""
    axes = {"E": "experts", "H": "hidden"}
    lines = [
        "| name | shape | dtype | accumulates | shards combine by | recorded |",
        "|---|---|---|---|---|---|",
    ]
    for s in _TABLE:
        shape = " x ".join(["layers", *(axes[a] for a in s.axes)])
        combine = "maximum" if s.combine == "max" else "sum"
        flag = f"`{FLAGS[s.name]}` or " if s.name in FLAGS else ""
        recorded = "always" if s.default else f"when asked for: {flag}`--statistics {s.name}`"
        recorded = "from the checkpoint's weights" if s.recorder == "weights" else recorded
        description = s.description.replace("|", "\\|")
        lines.append(f"| `{s.name}` | {shape} | {s.dtype} | {description} | {combine} | {recorded} |")
    return "\n".join(lines) + "\n"


def check(stats: dict[str, torch.Tensor], layers: int, experts: int, where: str) -> None:
    """Raise `Mismatch` unless every tensor of `stats` is a known statistic of the declared shape and dtype.

    `experts` is the widest layer's expert count; the hidden size is read from the tensors themselves.
    """
    for name, value in stats.items():
        statistic = STATISTICS.get(name)
        if statistic is None:
            raise Mismatch(f"{where} holds an unknown statistic {name!r}; it was not written by reapkit, observe again")
        full = value.dim() == 1 + len(statistic.axes)
        hidden = value.shape[1 + statistic.axes.index("H")] if full and "H" in statistic.axes else 0
        expected = statistic.shape(layers, experts, hidden)
        if tuple(value.shape) != expected or value.dtype != statistic.torch_dtype:
            raise Mismatch(
                f"{where} holds {name} as {value.dtype} {tuple(value.shape)}, expected {statistic.dtype} {expected} "
                f"({layers} MoE layers, {experts} experts); the file is damaged or from another model, observe again"
            )
