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
# # 2. Which experts are alike?
#
# **Question:** are there groups of near-duplicate experts in a layer, do the weights, the outputs and
# the router agree on which experts are alike, and does pruning remove whole groups or thin them out?
#
# Angular distance (arccos of the cosine similarity, / pi) between the experts of each layer in three
# spaces: their weights, their mean routed outputs and their router rows; average-linkage clustering.

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
spaces = ["weights", "output", "router"]  # spaces in which experts are compared
n_clusters = 4                      # clusters per layer
criterion = "reap"                  # saliency overlaid on the clusters
ratio = 0.5                         # experts a plan at this ratio prunes are marked
merge_method = "m_smoe_faithful"    # merging at `ratio` shown: alignment and merged against members (None: not shown)
output_dir = "runs/02_clusters"     # tables and executed outputs
figures_dir = "figures/02_clusters"  # figures (PNG and PDF)

# %%
from reapkit.run.parameters import check_parameters

P = check_parameters(globals(), "02_clusters")
P

# %%
from IPython.display import Markdown, display

from reapkit import plot
from reapkit.run.notebook import Figures, calibrate, write_table
from reapkit.select import geometry
from reapkit.select.criteria import score
from reapkit.study import readings, tables

figures = Figures(P.figures_dir)
run = calibrate(P)

# %% [markdown]
# ## Distances: where is there structure?
#
# Every pair of experts of a layer, in each space, on one axis: a space where every pair sits near 0.5
# (orthogonal) has no cluster structure to draw.

# %%
distances = geometry.distance_matrices(model=run.model, obs=run.obs, layers=run.layers, spaces=P.spaces)
clusterings = {key: geometry.cluster(d, n_clusters=min(P.n_clusters, len(d))) for key, d in distances.items()}
clusters = geometry.cluster_table(clusterings)
write_table(clusters, P.output_dir, "results")
figures.save(plot.distance_histogram(distances).figure, "distance_spread")
display(Markdown(readings.distances(distances)))

# %% [markdown]
# ## Distances and clusters
#
# The spaces with structure, on one colour scale; each dendrogram's height axis carries the cut that gives
# the clusters (boxed).

# %%
structured = [s for s in P.spaces if not all(tables.is_flat(c.linkage) for k, c in clusterings.items() if k[0] == s)]
chosen = {key: d for key, d in distances.items() if key[0] in structured}
figures.save(plot.distance_heatmaps(chosen, clusterings) if chosen else plot.distance_heatmaps({}), "distances")

# %% [markdown]
# ## Do the spaces agree?
#
# Spearman correlation of the pairwise distances of two spaces, per layer.

# %%
agreement = geometry.space_agreement(distances)
write_table(agreement, P.output_dir, "space_agreement")
display(agreement.round(3))
display(Markdown(readings.space_agreement(agreement)))

# %% [markdown]
# ## Saliency on the clusters
#
# Bars in dendrogram order, coloured by cluster; hatched experts are the ones a plan at `ratio` prunes.
# Pruning a whole cluster removes a kind of function; pruning inside a cluster removes near-duplicates.

# %%
space = "output" if "output" in P.spaces else P.spaces[0]
saliency = score(run.obs, P.criterion, seed=P.seed)
by_layer = {layer: saliency[run.obs.layers.index(layer)] for layer in run.layers}
fig, axes = plot.panels(len(run.layers), ncols=2, width=plot.TWO_COLUMN)
for ax, layer in zip(axes, run.layers):
    plot.saliency_clusters(by_layer[layer], clusterings[space, layer], ratio=P.ratio, criterion=P.criterion, ax=ax,
                           title=f"layer {layer}: {space}-space clusters, {P.ratio:.0%} removed")
figures.save(fig, "saliency_clusters")
display(Markdown(readings.clusters(by_layer, {layer: clusterings[space, layer].labels for layer in run.layers},
                                   ratio=P.ratio)))

# %% [markdown]
# ## What merging does
#
# `merge_method` reduces each layer to as many experts as a plan at `ratio` keeps. Left: each merged-away
# expert's squared weight distance to its group's dominant expert before (x) and after (y) its neurons are
# aligned (below the diagonal: alignment brought it closer). Right: on the calibration tokens routed to each
# such expert, how far the merged expert's output is from the member's own, beside the representative left
# unmerged (what pruning the member would give its tokens).

# %%
if P.merge_method is not None and run.model is not None:
    from reapkit.measure.merging import alignment_distances, merge_fidelity
    from reapkit.select.merge import plan_merge
    from reapkit.select.plan import pruned_count

    keep = min(run.obs.num_experts) - pruned_count(min(run.obs.num_experts), P.ratio)
    merge_plan = plan_merge(run.model, run.obs, method=P.merge_method, keep=keep, seed=P.seed)
    alignment = alignment_distances(run.model, merge_plan, layers=run.layers)  # `distances` stay the explorer's
    fidelity = merge_fidelity(run.model, merge_plan, run.batches[:4], layers=run.layers)
    write_table(alignment, P.output_dir, "alignment")
    write_table(fidelity, P.output_dir, "merge_fidelity")
    fig, (left, right) = plot.panels(2, ncols=2, width=plot.TWO_COLUMN)
    plot.alignment_figure(alignment, method=P.merge_method, ax=left)
    plot.fidelity_figure(fidelity, method=P.merge_method, ax=right)
    figures.save(fig, "merging")
    display(Markdown(readings.merging(alignment, fidelity, P.merge_method)))

# %% [markdown]
# ## Explore
#
# Pick a layer, a distance space and where to cut the dendrogram: the distances with their clusters, and
# `criterion`'s saliency on them with the experts a plan at `ratio` prunes hatched; the reading says whether
# it removes whole clusters. Drawn from the distances above (not the model). Shown in JupyterLab; papermill
# runs build no explorer (`interactive`).

# %%
from reapkit.plot.explorers import ClusterExplorer
from reapkit.run.lab import show_explorer

if show_explorer(P.interactive):
    display(ClusterExplorer(distances, by_layer, n_clusters=P.n_clusters, ratio=P.ratio, criterion=P.criterion))
