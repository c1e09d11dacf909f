# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: reapkit
#     language: python
#     name: reapkit
# ---

# %% [markdown]
# # 4. Paper figures
#
# **Question:** what would a paper on expert pruning print about this model? Why REAP and frequency
# disagree, how the saliency scale differs between layers and what a global budget does with it, what
# the REAP paper's dendrogram looks like here, which experts fire together, which layers are fragile,
# and what every method costs against compression, with intervals.
#
# Drawn from the tidy results tables of the study (notebook 5) and its sweeps (`sweeps/study.yaml`), and
# from the cached observations. Every figure here is drawn by no other notebook.

# %% tags=["parameters"]
plugins = []                        # modules or .py files imported first (e.g. criteria they register)
model = "demo"                      # "demo" (the bundled model), a local checkpoint or a hub name
device_map = None                   # None: load on the CPU; "auto" or a dict spreads the model (accelerate)
calibration = "code:16,tools:16,prose:16,math:16"  # calibration spec (built-in domains, files)
max_length = 128                    # tokens per calibration sample
batch_size = 8                      # sequences per forward
layers = None                       # MoE layers (decoder indices) to draw; None: all
seed = 0                            # seed of calibration sampling and random baselines
cache_dir = "runs/cache"            # observations are reused for the same model and tokens
interactive = None                  # explorer: None shows it in JupyterLab, never under papermill; True/False: always/never
results = ["runs/05_study/results.csv", "runs/study/results.csv"]  # tidy results of the study and its sweeps (paths, globs)
layer_sensitivity = "runs/05_study/layer_sensitivity.csv"  # per-layer sensitivity table (notebook 5)
criterion = "reap"                  # criterion of the per-expert figures and the global budget
ratio = 0.5                         # ratio of the per-expert figures
output_dir = "runs/04_paper_figures"  # tables and executed outputs
figures_dir = "figures/04_paper_figures"  # figures (PNG and PDF)

# %%
from reapkit.run.parameters import check_parameters

P = check_parameters(globals(), "04_paper_figures")
P

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from reapkit import plot
from reapkit.run.notebook import Figures, calibrate, read_results, write_table
from reapkit.select import geometry
from reapkit.select.criteria import score, scores_frame
from reapkit.select.plan import PruningPlan
from reapkit.study import kept, readings, tables

figures = Figures(P.figures_dir)
run = calibrate(P)
scores = scores_frame(run.obs, sorted({P.criterion, "reap", "frequency"}), per_domain=False, seed=P.seed)
scores = scores[scores.layer.isin(run.layers)]
routing = tables.routing(run.obs)

# %% [markdown]
# ## When do REAP and frequency disagree?
#
# Each expert of the layers where the two plans disagree most: the share of its layer's routed tokens against
# its REAP score (mean gate x output norm), marked by which criterion's plan keeps it; grey lines: each
# plan's cut-off in that layer.

# %%
pairs = tables.agreement_table(scores, criteria=["reap", "frequency"], ratio=P.ratio, **routing)
shown = sorted(pairs.nsmallest(4, "overlap").layer) if len(pairs) else None
figures.save(plot.reap_vs_frequency(scores, ratio=P.ratio, layers=shown, **routing), "reap_vs_frequency")
display(Markdown(readings.disagreement(scores, ratio=P.ratio, **routing)))

# %% [markdown]
# ## What a global budget compares, and what it keeps
#
# Left: each expert's score divided by its layer's mean (what the budget ranks across layers), kept or pruned by
# a global budget of the uniform plan's total, with the budget's one threshold and each layer's uniform cut-off.
# Right: experts kept per layer by the uniform plan and by the global budget.

# %%
uniform = PruningPlan.from_observations(run.obs, P.criterion, ratio=P.ratio, seed=P.seed)
budget = PruningPlan.from_global_budget(run.obs, P.criterion, total=uniform.total_kept, seed=P.seed)
ranked = kept.budget_table(budget, uniform, floor=run.obs.top_k)
ranked = ranked[ranked.layer.isin(run.layers)]
fig, (left, right) = plot.panels(2, ncols=2, width=plot.TWO_COLUMN, size=(2.6, 2.3))
plot.global_budget(ranked, ratio=P.ratio, ax=left)
plot.kept_per_layer({f"uniform {plot.label(P.criterion)}": uniform, plot.label(f"global_{P.criterion}"): budget}, ax=right)
plot.legend_below(fig, [left, right], ncols=3)
figures.save(fig, "global_budget")
display(Markdown(readings.global_budget(uniform, budget, ranked)))

# %% [markdown]
# ## The dendrogram, leaves coloured by saliency
#
# Output-space angular distances of the experts of the layer where the criterion's scores are most
# spread; crosses mark the experts a uniform plan at `ratio` prunes; the cut gives the clusters the reading counts.

# %%
values = score(run.obs, P.criterion, seed=P.seed)
spread = {layer: values[i].std() / max(values[i].mean(), 1e-12) for i, layer in enumerate(run.obs.layers) if layer in run.layers}
layer = max(spread, key=spread.get)
distances = geometry.distance_matrices(obs=run.obs, layers=[layer], spaces=["output"])["output", layer]
clustering = geometry.cluster(distances, n_clusters=max(2, len(distances) // 4))
saliency = values[run.obs.layers.index(layer)]
figures.save(plot.saliency_dendrogram(distances, saliency, clustering=clustering, ratio=P.ratio, criterion=P.criterion,
                                      title=f"layer {layer}: experts by output distance").figure, "saliency_dendrogram")
display(Markdown(readings.clusters({layer: saliency}, {layer: clustering.labels}, ratio=P.ratio)))

# %% [markdown]
# ## Which experts fire together?
#
# How often two experts share a token's top-k, over what independent routing with their frequencies gives
# (1 = chance), in the same dendrogram order.

# %%
coselect = run.obs.coselection()[run.obs.layers.index(layer)]
figures.save(plot.coactivation_matrix(coselect, clustering=clustering, title=f"layer {layer}: co-selection").figure,
             "coactivation")
display(Markdown(readings.coactivation(coselect)))

# %% [markdown]
# ## Which layers are fragile?
#
# `ratio` of one layer's experts pruned at a time (the others untouched), Δ loss on all held-out tokens,
# from notebook 5's `layer_sensitivity.csv`.

# %%
sensitivity = pd.read_csv(P.layer_sensitivity) if Path(P.layer_sensitivity).is_file() else pd.DataFrame()
overall = sensitivity[sensitivity.domain == "all"] if len(sensitivity) else sensitivity
figures.save(plot.layer_sensitivity(overall, ratio=P.ratio).figure, "layer_sensitivity")
display(Markdown(readings.sensitivity(overall)))

# %% [markdown]
# ## What every method costs
#
# Δ loss and top-1 agreement with the unpruned model against the share of experts removed, every method of
# the study, each with its own 95% bootstrap interval over evaluation sequences (and over calibration mixes
# when the tables hold several).

# %%
results = read_results(P.results)
gaps = read_results(list(dict.fromkeys(results["source"])) if len(results) else [], name="gaps.csv")
print(f"{len(results)} rows from {results['source'].nunique() if len(results) else 0} table(s); {len(gaps)} paired gaps")
write_table(results, P.output_dir, "results")
figures.save(plot.compression_figure(results), "compression")
display(Markdown(readings.study_curves(results, gaps=gaps if len(gaps) else None, ratio=P.ratio, metric="delta_loss")))

# %% [markdown]
# ## Each method against REAP, on the same sequences
#
# Each method's loss minus REAP's with its paired 95% bootstrap interval (the same evaluation sequences), at
# each share of experts removed: where the interval excludes 0 the difference is real, whatever the
# overlap of the two methods' own bands above.

# %%
figures.save(plot.gap_forest(gaps), "gap_to_reap")
display(Markdown(readings.gaps(gaps)))

# %% [markdown]
# ## Pruning against merging at equal parameters
#
# REAP and frequency pruning against M-SMoE and HC-SMoE merging to the same number of experts per layer, on a
# parameter axis; right: each merge's paired gap to REAP.

# %%
figures.save(plot.pruning_vs_merging(results, gaps), "pruning_vs_merging")
display(Markdown(readings.gaps(gaps[gaps.method == "merge"]) if len(gaps) else "No paired gaps to read."))

# %% [markdown]
# ## Explore
#
# Pick a figure of this notebook, then its parameters (criterion, ratio, layer, domain); the figure and its
# reading redraw from the observations and the tables (not the model). Shown in JupyterLab; papermill runs
# build no explorer (`interactive`).

# %%
from reapkit.plot.explorers import FigureExplorer
from reapkit.run.lab import show_explorer

if show_explorer(P.interactive):
    display(FigureExplorer(run.obs, results=results, sensitivity=sensitivity, criterion=P.criterion, ratio=P.ratio,
                           layer=layer, seed=P.seed))
