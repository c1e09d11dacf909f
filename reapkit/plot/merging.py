"""Figures of merging: within-group weight distances before and after alignment, merged outputs against the members'.

>>> alignment_figure(alignment)              # each member: distance to its dominant, before (x) and after (y)
<Axes: title={'left': 'alignment to the dominant expert'}, ...>
>>> fidelity_figure(fidelity)                # each member: error of the merged expert against the representative's
<Axes: title={'left': "relative error on members' tokens"}, ...>

The frames come from :mod:`reapkit.measure.merging` (`alignment_distances`, `merge_fidelity`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.plot.theme import COLUMN, REFERENCE_STYLE, axes, criterion_color, is_empty, no_data, styled

__all__ = ["alignment_figure", "fidelity_figure"]


def _diagonal(ax, values) -> None:
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], **REFERENCE_STYLE)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal", adjustable="box")


@styled
def alignment_figure(frame: pd.DataFrame, *, method: str = "m_smoe_faithful", ax=None):
    """Each non-dominant member's summed squared weight distance to its group's dominant expert:
    before alignment (x) against after (y); below the diagonal, alignment brought it closer.
    Returns the Axes."""
    _, ax = axes(ax, (COLUMN, COLUMN))
    ax.set_title("alignment to the dominant expert", loc="left")
    if is_empty(frame):
        return no_data(ax, "no group with more than one expert")
    ax.scatter(frame.before, frame.after, s=10, color=criterion_color(method), linewidths=0)
    _diagonal(ax, np.concatenate([frame.before, frame.after]))
    ratio = float(np.median(frame.after / frame.before))
    ax.set_xlabel("squared distance, before")
    ax.set_ylabel("after alignment")
    ax.text(0.03, 0.97, f"median after / before {ratio:.2f}", transform=ax.transAxes, va="top")
    return ax


@styled
def fidelity_figure(frame: pd.DataFrame, *, method: str = "m_smoe_faithful", ax=None):
    """Each non-representative member: the mean relative error ||g(x) - f_m(x)|| / ||f_m(x)|| on the
    tokens routed to it, of its group's representative alone (x, what removing it gives) against the
    merged expert (y); below the diagonal, merging serves the member better. Returns the Axes."""
    _, ax = axes(ax, (COLUMN, COLUMN))
    ax.set_title("relative error on members' tokens", loc="left")
    frame = frame[frame.member != frame.representative] if not is_empty(frame) else frame
    if is_empty(frame):
        return no_data(ax, "no group with more than one expert")
    wide = frame.pivot_table(index=["layer", "member"], columns="expert", values="rel_error")
    ax.scatter(wide["representative"], wide["merged"], s=10, color=criterion_color(method), linewidths=0)
    _diagonal(ax, wide.to_numpy().ravel())
    ax.set_xlabel("representative alone")
    ax.set_ylabel("merged expert")
    return ax
