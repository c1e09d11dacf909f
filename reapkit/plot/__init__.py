"""Figures for a paper: saliency, criteria, domains, expert geometry, plans and what compression costs.

    >>> from reapkit import plot
    >>> frame = scores_frame(obs, ["reap", "frequency"])        # reapkit.saliency: tidy scores
    >>> ax = plot.saliency_heatmap(frame, criterion="reap")      # raw scale, log colours
    >>> fig = plot.criterion_agreement(frame, ratio=0.5)         # with chance levels
    >>> fig = plot.compression_figure(results)                   # loss + agreement, 95% CIs
    >>> plot.save_figure(fig, "figures/demo", "agreement")       # agreement.pdf (vector) + .png (300 dpi)

Every function takes data (pandas frames in the layouts of :mod:`reapkit.analysis`, numpy arrays),
keyword-only options and an optional `ax=` (or `fig=` for multi-panel figures), and returns the
Axes or the Figure; empty input gives a "no data" note instead of an error. One style
(:mod:`reapkit.plot.theme`: print sizes, 7-8 pt text, one colour per criterion) applies to all.
The tables behind the figures live in :mod:`reapkit.analysis` (no matplotlib). This package
imports neither torch nor transformers.

Modules: theme (sizes, colours, the style, saving), saliency, criteria, domains, geometry, plans, results.
"""

from ..analysis import (
    agreement_table,
    domain_share_table,
    mask_frame,
    specialisation_table,
)
from .criteria import criterion_agreement, reap_vs_frequency
from .domains import domain_saliency, specialisation_by_depth
from .geometry import (
    coactivation_matrix,
    distance_heatmap,
    distance_heatmaps,
    saliency_clusters,
    saliency_dendrogram,
)
from .plans import plan_mask, plan_masks
from .results import (
    calibration_figure,
    calibration_heatmap,
    compression_figure,
    layer_sensitivity,
    loss_vs_ratio,
    loss_vs_ratio_by_domain,
    overlap_heatmap,
    reconstruction_by_layer,
    scores_figure,
    study_curves,
    study_figure,
)
from .saliency import (
    kept_per_layer,
    saliency_curves,
    saliency_distributions,
    saliency_heatmap,
    saliency_heatmaps,
)
from .theme import (
    COLUMN,
    CRITERION_COLORS,
    STYLE,
    TWO_COLUMN,
    criterion_color,
    domain_linestyle,
    domain_marker,
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
    "method_linestyle",
    "domain_marker",
    "domain_linestyle",
    "style",
    "save_figure",
    "panels",
    "per_criterion",
    # saliency
    "saliency_heatmap",
    "saliency_heatmaps",
    "saliency_curves",
    "saliency_distributions",
    "kept_per_layer",
    # criteria and domains
    "criterion_agreement",
    "reap_vs_frequency",
    "domain_saliency",
    "specialisation_by_depth",
    # geometry
    "distance_heatmap",
    "distance_heatmaps",
    "saliency_clusters",
    "saliency_dendrogram",
    "coactivation_matrix",
    # plans
    "plan_mask",
    "plan_masks",
    # results
    "loss_vs_ratio",
    "loss_vs_ratio_by_domain",
    "study_curves",
    "study_figure",
    "compression_figure",
    "layer_sensitivity",
    "scores_figure",
    "reconstruction_by_layer",
    "calibration_heatmap",
    "overlap_heatmap",
    "calibration_figure",
    # tables, kept here for old callers (their home is reapkit.analysis)
    "agreement_table",
    "domain_share_table",
    "specialisation_table",
    "mask_frame",
]
