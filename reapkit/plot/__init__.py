"""Figures for a paper: saliency, criteria, domains, expert geometry, plans and what compression costs.

    >>> from reapkit import plot
    >>> from reapkit.select.criteria import scores_frame
    >>> frame = scores_frame(obs, ["reap", "frequency"])        # tidy scores
    >>> ax = plot.saliency_heatmap(frame, criterion="reap")      # raw scale, log colours
    >>> fig = plot.criterion_agreement(frame, ratio=0.5)         # with chance levels
    >>> fig = plot.compression_figure(results)                   # loss + agreement, 95% CIs
    >>> plot.save_figure(fig, "figures/demo", "agreement")       # agreement.pdf (vector) + .png (300 dpi)
    [PosixPath('figures/demo/agreement.png'), PosixPath('figures/demo/agreement.pdf')]

Every function takes data (pandas frames in the layouts of :mod:`reapkit.study.tables`, numpy arrays),
keyword-only options and an optional `ax=` (or `fig=` for multi-panel figures), and returns the
Axes or the Figure; empty input gives a "no data" note instead of an error. One style
(:mod:`reapkit.plot.theme`: 3.25 / 5.5 in print sizes, text of 6 pt or more, one colour per method) applies to all.
The tables behind the figures live in :mod:`reapkit.study.tables` (no matplotlib). This package
imports neither torch nor transformers.

Modules: theme (sizes, colours, the style, saving), saliency, criteria, domains, geometry, kept (usage,
kept mass, the global budget), merging (alignment, merged against members), plans, results (metrics against
ratio), comparisons (paired gaps to REAP), budget (budget searches against uniform REAP), calibration, recovery
(router recovery after pruning), and widgets (interactive explorers).
"""

from reapkit.plot import (
    budget,
    calibration,
    comparisons,
    criteria,
    domains,
    geometry,
    kept,
    merging,
    plans,
    recovery,
    results,
    saliency,
)
from reapkit.plot.budget import *  # noqa: F403
from reapkit.plot.calibration import *  # noqa: F403
from reapkit.plot.comparisons import *  # noqa: F403
from reapkit.plot.criteria import *  # noqa: F403 - each figure module's __all__ is the package's too
from reapkit.plot.domains import *  # noqa: F403
from reapkit.plot.geometry import *  # noqa: F403
from reapkit.plot.kept import *  # noqa: F403
from reapkit.plot.merging import *  # noqa: F403
from reapkit.plot.plans import *  # noqa: F403
from reapkit.plot.recovery import *  # noqa: F403
from reapkit.plot.results import *  # noqa: F403
from reapkit.plot.saliency import *  # noqa: F403
from reapkit.plot.theme import (
    COLUMN,
    CRITERION_COLORS,
    STYLE,
    TWO_COLUMN,
    criterion_color,
    domain_linestyle,
    domain_marker,
    label,
    legend_below,
    method_linestyle,
    panels,
    per_criterion,
    save_figure,
    style,
)

__all__ = [
    # style and saving
    "STYLE",
    "COLUMN",
    "TWO_COLUMN",
    "CRITERION_COLORS",
    "criterion_color",
    "label",
    "legend_below",
    "method_linestyle",
    "domain_marker",
    "domain_linestyle",
    "style",
    "save_figure",
    "panels",
    "per_criterion",
    # figures, by subject
    *saliency.__all__,
    *criteria.__all__,
    *domains.__all__,
    *geometry.__all__,
    *kept.__all__,
    *merging.__all__,
    *plans.__all__,
    *results.__all__,
    *comparisons.__all__,
    *calibration.__all__,
    *recovery.__all__,
    *budget.__all__,
]
