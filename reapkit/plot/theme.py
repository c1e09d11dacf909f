"""The one look of every reapkit figure: print sizes, text sizes, one colour per method, saving.

    >>> with style():                                   # every plot function applies it already
    ...     fig, ax = plt.subplots(figsize=(COLUMN, 2.2))
    >>> criterion_color("reap"), criterion_color("my_criterion")   # stable colours, any name
    ('#D55E00', '#EE7733')
    >>> label("ean_mean")                               # 'activation norm': what a figure prints
    'activation norm'
    >>> save_figure(fig, "figures", "name")             # figures/name.pdf (vector) + name.png (300 dpi)
    [PosixPath('figures/name.png'), PosixPath('figures/name.pdf')]

Sizes: figures are drawn at the size they are printed, one column :data:`COLUMN` (3.25 in) or the
full text width :data:`TWO_COLUMN` (5.5 in, NeurIPS / ICLR), with text of :data:`MIN_TEXT` pt or
more; legends of one-column figures go below the axes.

Colours belong to methods only, one each (Okabe-Ito, colour-blind safe, then Paul Tol's muted
set); REAP is vermillion everywhere and drawn thicker, on top. A criterion that is not in the
table (a registered one) takes a spare colour by a hash of its name, the same in every figure.

Line styles, one meaning each: solid = pruning, dashed = merging, dotted = a global budget
(:data:`METHOD_LINESTYLES`); a thin grey dash-dot line = chance (:func:`chance_line`); thin solid
grey = a reference (0, a cut-off, a threshold). Domains are told apart by marker, in black and
greys, never by the methods' colours.
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from reapkit.atomic import atomic_file
from reapkit.errors import InvalidInput
from reapkit.measure.schema import UNPRUNED

#: Width of one column and of the full text width of a paper, inches (NeurIPS / ICLR print 5.5 in).
#: Width of a one-column figure as printed (inches).
COLUMN = 3.25
#: Width of a full-text-width figure as printed (inches; NeurIPS / ICLR).
TWO_COLUMN = 5.5
#: The smallest text, in points at the printed size.
MIN_TEXT = 6.0

#: The one shared style (matplotlib rc parameters) of every reapkit figure: 6-8 pt text at print size.
STYLE = {
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "standard",
    "figure.constrained_layout.h_pad": 0.02,
    "figure.constrained_layout.w_pad": 0.02,
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "axes.titlepad": 3,
    "axes.labelpad": 2,
    "figure.titlesize": 8,
    "legend.fontsize": 6.5,
    "legend.title_fontsize": 6.5,
    "legend.frameon": False,
    "legend.handlelength": 1.8,
    "legend.borderaxespad": 0.3,
    "legend.columnspacing": 1.0,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.major.pad": 1.5,
    "ytick.major.pad": 1.5,
    "image.cmap": "viridis",
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "patch.linewidth": 0.5,
    "hatch.linewidth": 0.5,
    "pdf.fonttype": 42,
    "svg.hashsalt": "reapkit",
}

#: Okabe & Ito (2008), "Color Universal Design", the colour-blind safe palette; yellow left out (unreadable on white).
OKABE_ITO = {
    "vermillion": "#D55E00",
    "blue": "#0072B2",
    "sky": "#56B4E9",
    "green": "#009E73",
    "orange": "#E69F00",
    "purple": "#CC79A7",
    "black": "#000000",
}
#: Paul Tol's "muted" scheme (personal.sron.nl/~pault), colour-blind safe: the spare colours.
TOL_MUTED = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499")

#: The one method -> colour map of every figure: each method (criterion, baseline, merge, budget) its own colour.
CRITERION_COLORS = {
    "reap": OKABE_ITO["vermillion"],
    "frequency": OKABE_ITO["blue"],
    "soft_frequency": OKABE_ITO["sky"],
    "ean_mean": OKABE_ITO["green"],
    "random": "#8C8C8C",
    "m_smoe": OKABE_ITO["orange"],
    "hc_smoe": OKABE_ITO["purple"],
    "global_reap": TOL_MUTED[7],
    "water_reap": TOL_MUTED[0],
    "evolution_reap": TOL_MUTED[8],
    "ean_sum": TOL_MUTED[3],
    "weighted_ean_sum": TOL_MUTED[2],
    "max_activation": TOL_MUTED[4],
    "ean_ca": TOL_MUTED[1],
    "msan": TOL_MUTED[6],
    "aimer": TOL_MUTED[5],
    "ream": "#8C510A",  # brown (ColorBrewer BrBG), beside the two merge colours of Okabe & Ito
    "submoe": "#EE3377",  # magenta (Paul Tol's "vibrant")
    "hc_smoe_faithful": "#7B3294",  # dark purple (ColorBrewer PRGn), HC-SMoE's hue darker
    "m_smoe_faithful": "#01665E",  # dark teal (ColorBrewer BrBG)
    UNPRUNED: OKABE_ITO["black"],
}
_ALIASES = {
    "msmoe": "m_smoe",
    "hcsmoe": "hc_smoe",
    "expert_frequency": "frequency",
    "max_activations": "max_activation",
}
#: Paul Tol's "vibrant" scheme: spare colours for methods without one of their own.
TOL_VIBRANT = ("#0077BB", "#33BBEE", "#009988", "#EE7733", "#CC3311", "#EE3377")
_SPARE = tuple(c for c in (*TOL_MUTED, *TOL_VIBRANT) if c not in CRITERION_COLORS.values())

#: Line style of each method (column `method` of a study frame).
METHOD_LINESTYLES = {"prune": "-", "merge": "--", "global": ":", "water": ":", "evolution": ":"}
#: Chance levels: thin grey dash-dot, the one style that means chance.
CHANCE_STYLE = {"color": "0.45", "linestyle": (0, (4, 1.5, 1, 1.5)), "linewidth": 0.8}
#: References (0, a cut-off, a threshold): thin solid grey.
REFERENCE_STYLE = {"color": "0.35", "linestyle": "-", "linewidth": 0.6}
#: Domains: marker and line style (drawn in black or grey).
DOMAIN_MARKERS = {"code": "o", "prose": "s", "tools": "^", "math": "D", "mix": "P", "all": "*"}
DOMAIN_LINESTYLES = {
    "all": "-",
    "code": (0, (5, 1, 1, 1, 1, 1)),
    "prose": (0, (1, 1)),
    "tools": (0, (4, 1, 1, 1)),
    "math": (0, (6, 1.5, 1, 1.5, 1, 1.5)),
    "mix": (0, (2, 2)),
}
_SPARE_MARKERS = ("v", "<", ">", "p", "h", "X", "d")
_SPARE_DASHES = ((0, (3, 3)), (0, (5, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2)))

#: Colour of experts that received no calibration tokens ("never routed") in heatmaps.
MISSING_COLOR = "#D9D9D9"
#: Cells with no value (an undefined diagonal): white, hatched grey, unlike any value of a colour scale.
UNDEFINED = {"facecolor": "white", "hatch": "//////", "edgecolor": "0.6", "linewidth": 0}


def label(name) -> str:
    """What a figure prints for a method or criterion: ``label("ean_mean") == "activation norm"``
    (`reapkit.measure.schema.display_name`)."""
    from reapkit.measure.schema import display_name

    return display_name(name)


def criterion_color(name) -> str:
    """Colour of a criterion or method label, the same in every figure.

        >>> criterion_color("reap")
        '#D55E00'

    Names outside :data:`CRITERION_COLORS` get a stable spare colour from a hash of the name (a
    global budget of another criterion: that criterion's colour).
    """
    name = _ALIASES.get(str(name), str(name))
    budget = _budget(name)
    if name not in CRITERION_COLORS and budget:
        name = name[len(budget) + 1 :]
    if name in CRITERION_COLORS:
        return CRITERION_COLORS[name]
    return _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def method_linestyle(label, method: str | None = None):
    """Line style of a curve: dotted for a non-uniform budget, dashed for merges, solid for pruning."""
    if method is None:  # from the label alone: a budget's prefix, else pruning (merges: pass method="merge")
        method = _budget(_ALIASES.get(str(label), str(label))) or "prune"
    return METHOD_LINESTYLES.get(method, "-")


def _budget(label: str) -> str | None:
    """The non-uniform budget a label names (``water_reap``: ``water``), or None."""
    from reapkit.measure.schema import BUDGET_NAMES

    return next((b for b in BUDGET_NAMES if label.startswith(f"{b}_")), None)


def layer_greys(n: int) -> list[str]:
    """n greys from light to black: layers by depth (colours belong to methods)."""
    return [str(round(0.7 - 0.7 * i / max(n - 1, 1), 3)) for i in range(n)]


def domain_marker(domain) -> str:
    """Marker of a domain (stable for names outside :data:`DOMAIN_MARKERS`)."""
    d = str(domain)
    return DOMAIN_MARKERS.get(d) or _SPARE_MARKERS[zlib.crc32(d.encode()) % len(_SPARE_MARKERS)]


def domain_linestyle(domain):
    """Line style of a domain (stable for names outside :data:`DOMAIN_LINESTYLES`)."""
    d = str(domain)
    return DOMAIN_LINESTYLES.get(d) or _SPARE_DASHES[zlib.crc32(d.encode()) % len(_SPARE_DASHES)]


@contextlib.contextmanager
def style():
    """Context manager applying :data:`STYLE` (each plot function uses it already).

        >>> with style():
        ...     fig = plt.figure(figsize=(COLUMN, 2))

    Interactive mode is left as the block leaves it: the inline backend switches it on when the
    kernel's first figure is created, and restoring the old value would stop later figures from
    showing below their cells.
    """
    interactive = matplotlib.is_interactive()
    try:
        with plt.rc_context(STYLE):
            try:
                yield
            finally:
                interactive = matplotlib.is_interactive()
    finally:
        matplotlib.interactive(interactive)


def styled(fn):
    """Decorator: run a plot function inside :func:`style`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
    "svg": {"Creator": None, "Date": None},
}


def save_figure(
    fig, folder, name: str, *, formats=("png", "pdf"), dpi: int | None = None, close: bool = False
) -> list[Path]:
    """Write `fig` as `folder/name.png` (300 dpi) and `folder/name.pdf` (vector), byte-for-byte reproducibly.

        >>> fig = plt.figure(figsize=(COLUMN, 2))
        >>> save_figure(fig, "figures/demo", "agreement")
        [PosixPath('figures/demo/agreement.png'), PosixPath('figures/demo/agreement.pdf')]

    Metadata that would change between runs (dates, software versions) is left out; each file is
    written to a temporary sibling and renamed into place. Accepts an Axes too. Returns the paths.
    """
    if hasattr(fig, "get_figure") and not isinstance(fig, matplotlib.figure.Figure):
        fig = fig.get_figure()
    if not name or "/" in name or "\\" in name:
        raise InvalidInput(f"figure name {name!r} must be a plain file name without directories or extension")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in formats:
            if fmt not in _METADATA:
                raise InvalidInput(f"unsupported figure format {fmt!r}; use one of {', '.join(_METADATA)}")
            path = folder / f"{name}.{fmt}"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi or STYLE["savefig.dpi"], metadata=_METADATA[fmt])
            paths.append(path)
    if close:
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def figure(width: float = COLUMN, height: float = 2.2):
    """A constrained-layout Figure of `width` inches (`COLUMN` or `TWO_COLUMN`) in the reapkit style."""
    with style():
        return plt.figure(figsize=(width, height), layout="constrained")


def panels(n: int, *, ncols: int = 3, size=(2.2, 1.8), sharex=False, sharey=False, width: float | None = None):
    """(Figure, flat array of `n` Axes) in a grid of `ncols` columns; spare axes are hidden.

        >>> fig, axes = panels(4, ncols=2, width=TWO_COLUMN)

    Each panel is `size` (inches) unless `width` fixes the figure's width (the panels share it).
    """
    n = max(int(n), 1)
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    w, h = size
    if width is not None:
        w = width / ncols
        h = w * size[1] / size[0]
    with style():
        fig = plt.figure(figsize=(w * ncols, h * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def per_criterion(function, frame, criteria=None, *, ncols: int = 2, **kwargs):
    """One panel per criterion: `function(frame, criterion=c, ax=ax, **kwargs)`; the panels' legends
    become one legend below them. Returns the Figure.

    >>> from reapkit.plot.saliency import saliency_curves
    >>> per_criterion(saliency_curves, scores, ["reap", "frequency"], ratio=[0.25, 0.5])
    <Figure size 825x277.644 with 2 Axes>
    """
    if criteria is None:
        criteria = list(dict.fromkeys(frame["criterion"])) if not is_empty(frame) else []
    if not criteria:
        return no_data_figure(title=getattr(function, "__name__", None))
    width = TWO_COLUMN if len(criteria) > 1 else COLUMN
    fig, axes = panels(len(criteria), ncols=ncols, width=width, size=(2.6, 1.75))
    for criterion, ax in zip(criteria, axes):
        function(frame, criterion=criterion, ax=ax, **kwargs)
    legend_below(fig, axes)
    return fig


@styled
def legend_below(fig, axes_list, *, ncols: int | None = None, title: str | None = None, **kwargs):
    """One legend for `axes_list` below the panels (each label once; the panels' own legends removed)."""
    handles = {}
    for ax in axes_list:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if not text.startswith("_"):
                handles.setdefault(text, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return None
    ncols = ncols or min(len(handles), 4 if fig.get_figwidth() > COLUMN + 0.1 else 2)
    return fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=ncols, title=title, **kwargs
    )


def axes(ax, figsize=(COLUMN, 2.2)):
    """(Figure, Axes): `ax` and its figure, or a new single-panel figure of `figsize`."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def no_data(ax, message: str = "no data"):
    """Mark an Axes as empty with a grey note (plot functions do this instead of raising)."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=MIN_TEXT + 1)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def no_data_figure(fig=None, message: str = "no data", title: str | None = None):
    """A Figure (new, or `fig`) holding one empty Axes with a "no data" note."""
    if fig is None:
        fig = plt.figure(figsize=(COLUMN, 2.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    no_data(ax, message)
    if title:
        ax.set_title(title)
    return fig


def is_empty(data) -> bool:
    return data is None or len(data) == 0


def integer_axis(ax, axis: str = "x"):
    """Integer ticks only (ranks, layers, expert indices)."""
    locator = matplotlib.ticker.MaxNLocator(integer=True, nbins="auto", min_n_ticks=2)
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(locator)


def index_ticks(ax, labels, axis: str = "y", *, max_ticks: int = 12, rotation: float = 0):
    """Ticks at positions 0..n-1 of an image axis, labelled with `labels`, at most `max_ticks` of them."""
    labels = list(labels)
    step = max(1, math.ceil(len(labels) / max_ticks))
    positions = np.arange(len(labels))[::step]
    texts = [str(v) for v in labels[::step]]
    if axis == "y":
        ax.set_yticks(positions, texts)
    else:
        ax.set_xticks(positions, texts, rotation=rotation)


def plain_log_axis(ax, axis: str = "y"):
    """Plain numbers (0.2, 1, 5) on a log axis instead of powers of ten, minor ticks labelled where few."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    target.set_major_formatter(plain)
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if high / max(low, 1e-300) < 30:  # under 1.5 decades: label 2 and 5 too
        target.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2, 5)))
        target.set_minor_formatter(plain)
    else:
        target.set_minor_formatter(matplotlib.ticker.NullFormatter())


def percent_axis(ax, axis: str = "x"):
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))


def chance_line(ax, value: float, *, axis: str = "y", label: str | None = "chance", text: bool = True):
    """A thin grey dash-dot line at a chance level (:data:`CHANCE_STYLE`), labelled at its right end inside the axes."""
    line = (ax.axhline if axis == "y" else ax.axvline)(value, zorder=1, label=None, **CHANCE_STYLE)
    if text and label:
        ax.annotate(
            f"{label} {value:.2f}",
            xy=(1.0, value) if axis == "y" else (value, 1.0),
            xycoords=("axes fraction", "data") if axis == "y" else ("data", "axes fraction"),
            xytext=(-1, 1.5) if axis == "y" else (1.5, -1),
            textcoords="offset points",
            ha="right" if axis == "y" else "left",
            va="bottom" if axis == "y" else "top",
            fontsize=MIN_TEXT,
            color="0.35",
        )
    return line


def reference_line(ax, value: float, *, axis: str = "y", **kwargs):
    """A thin solid grey line at a reference value (0, a cut-off, a threshold): :data:`REFERENCE_STYLE`."""
    return (ax.axhline if axis == "y" else ax.axvline)(value, **{"zorder": 1, **REFERENCE_STYLE, **kwargs})


def undefined_cells(ax, cells, *, label: str | None = None):
    """Hatch the (row, column) cells of an image that have no value (e.g. a diagonal), unlike any colour of its scale."""
    for r, c in cells:
        ax.add_patch(matplotlib.patches.Rectangle((c - 0.5, r - 0.5), 1, 1, zorder=2, label=label, **UNDEFINED))
        label = None
