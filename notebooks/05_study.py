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
# # 5. Does REAP beat the alternatives, and does calibration decide what survives?
#
# **Question:** the REAP paper (arXiv:2510.13999) claims that (a) pruning by REAP beats pruning by
# frequency or activation norm, and beats expert merging, most clearly at 50% compression, and (b)
# calibration data decides which experts survive: a model pruned with calibration that lacks a domain
# loses that domain. Do both hold on this model?
#
# (a) At each ratio: every pruning criterion (by masking the router), random pruning over several seeds,
# M-SMoE- and HC-SMoE-style merging to the same number of experts per layer, and a non-uniform plan
# keeping the same total number of experts (global budget). (b) REAP at `sensitivity_ratio` calibrated
# on each single calibration domain and on their mix. Everything is measured on held-out data of each
# domain, with 95% bootstrap intervals over evaluation sequences.

# %% tags=["parameters"]
plugins = []                        # modules or .py files imported first (e.g. criteria they register)
model = "demo"                      # "demo" (the bundled model), a local checkpoint or a hub name
device_map = None                   # None: load on the CPU; "auto" or a dict spreads the model (accelerate)
calibration = "code:16,tools:16,prose:16,math:16"  # calibration spec; its domains are the sets of study (b)
max_length = 128                    # tokens per calibration sample
batch_size = 8                      # sequences per forward
seed = 0                            # seed of calibration sampling and random baselines
cache_dir = "runs/cache"            # observations are reused for the same model and tokens
interactive = None                  # explorer: None shows it in JupyterLab, never under papermill; True/False: always/never
evaluation = "code:16,tools:16,prose:16,math:16"  # held-out data (validation split of built-in domains)
ratios = [0, 0.125, 0.25, 0.375, 0.5, 0.625]  # fractions of experts removed
criteria = ["reap", "frequency", "soft_frequency", "ean_mean", "ean_ca", "msan", "aimer"]  # pruning criteria (aimer: a local checkpoint's weights)
random_seeds = [0, 1, 2]            # random pruning, one run per seed ([]: none)
merges = ["hc_smoe_faithful", "m_smoe_faithful", "ream", "submoe"]  # merging methods, each evaluated as its reference code does ([]: none)
global_budget = True                # non-uniform plan with the same total (True: REAP scores; a criterion; False: none)
margin = 0                          # global budget: every layer keeps at least top-k + margin experts
budget_searches = ["water", "evolution"]  # more non-uniform plans with the global budget's total and criterion ([]: none)
search_generations = 4              # generations of the evolutionary budget search
search_population = 6               # candidate plans per generation of that search
sensitivity = True                  # run study (b), calibration sensitivity
sensitivity_ratio = 0.5             # ratio of study (b)
sensitivity_criterion = "reap"      # criterion of study (b)
layer_sensitivity = True            # prune sensitivity_ratio of one layer at a time (notebook 4 draws it)
output_dir = "runs/05_study"        # tables and executed outputs
figures_dir = "figures/05_study"    # figures (PNG and PDF)

# %%
from reapkit.run.parameters import check_parameters

P = check_parameters(globals(), "05_study")
P

# %%
import time

from IPython.display import Markdown, display

from reapkit import plot
from reapkit.atomic import atomic_write_text
from reapkit.run.notebook import Figures, calibrate, held_out, write_table
from reapkit.study import experiments, findings, readings
from reapkit.study import sensitivity as sensitivity_study
from reapkit.study.gaps import gap_table

figures = Figures(P.figures_dir)
start = time.perf_counter()
run = calibrate(P)
eval_batches = held_out(P, run.tokenizer)
print(f"{sum(b.num_tokens for b in eval_batches)} evaluation tokens")

# %% [markdown]
# ## (a) Every method at every ratio
#
# `study.csv` holds every domain and metric; `results.csv` the same in the tidy results schema that
# notebook 4 and the sweeps read.

# %%
sequences = experiments.study_sequences(run.model, run.obs, eval_batches, ratios=P.ratios, criteria=P.criteria,
                                  random_seeds=P.random_seeds, merges=P.merges, global_budget=P.global_budget,
                                  margin=P.margin, budget_searches=P.budget_searches, search_batches=run.batches,
                                  search_options={"generations": P.search_generations,
                                                  "population": P.search_population, "seed": P.seed})
results = experiments.study_results(sequences)
gaps = gap_table(sequences, metrics=["loss", "kl", "agreement"])  # each method minus REAP, paired (notebook 4 reads it)
write_table(results.assign(model=P.model, calibration=P.calibration), P.output_dir, "study")
write_table(experiments.results_table(results, model=P.model, calibration=P.calibration), P.output_dir, "results")
write_table(gaps, P.output_dir, "gaps")
headline = min(P.ratios, key=lambda r: abs(r - 0.5))
figures.save(plot.study_figure(results, metrics=["delta_loss", "kl"]), "study")
display(Markdown(readings.study_curves(results, gaps=gaps, ratio=headline, metric="delta_loss")))

# %% [markdown]
# Each method's loss minus REAP's on the same sequences, per evaluation domain at the ratio nearest 50%,
# with paired 95% intervals (filled: the interval excludes 0).

# %%
figures.save(plot.gap_forest(gaps, by="domain", ratio=headline), "gaps_by_domain")
display(Markdown(readings.gaps(gaps, by="domain", ratio=headline)))

# %% [markdown]
# ## (b) Calibration sensitivity
#
# REAP at `sensitivity_ratio`, calibrated on each calibration domain alone and on their mix (from the
# per-domain statistics of the observations above: the same as calibrating on that domain alone).
# Left: loss increase over the unpruned model on each evaluation domain (own-domain calibration on the
# diagonal); right: how many kept experts two calibration sets share, against chance; 95% intervals under
# each value.

# %%
sensitivity = None
if P.sensitivity:
    sensitivity = sensitivity_study.calibration_sensitivity(run.model, run.tokenizer, eval_batches, domains=run.obs.domains,
                                                calibration=run.obs, ratio=P.sensitivity_ratio,
                                                criterion=P.sensitivity_criterion, seed=P.seed)
    write_table(sensitivity.loss, P.output_dir, "sensitivity")  # tidy, with intervals
    write_table(sensitivity.loss_matrix().reset_index(), P.output_dir, "sensitivity_loss")
    write_table(sensitivity.overlap, P.output_dir, "sensitivity_overlap")
    figures.save(plot.calibration_figure(sensitivity), "calibration_sensitivity")
    display(Markdown(readings.calibration(sensitivity)))

# %% [markdown]
# How much the kept experts and the loss move with the calibration's size and its sample: REAP at
# `sensitivity_ratio` from 2 to 16 calibration samples per domain, three calibration seeds each (one
# calibration pass per seed: observations add up over nested prefixes).

# %%
if P.sensitivity and run.tokenizer is not None:
    size = sensitivity_study.calibration_size(run.model, run.tokenizer, eval_batches, domains=run.obs.domains,
                                              seeds=[P.seed, P.seed + 1, P.seed + 2], ratio=P.sensitivity_ratio,
                                              criterion=P.sensitivity_criterion, max_length=P.max_length)
    write_table(size, P.output_dir, "calibration_size")
    figures.save(plot.calibration_size(size, criterion=P.sensitivity_criterion), "calibration_size")
    display(Markdown(readings.calibration_size(size)))

# %% [markdown]
# ## (c) Which layers are fragile?
#
# `sensitivity_ratio` of one layer's experts pruned at a time (by `sensitivity_criterion`, the other
# layers untouched); notebook 4 draws it.

# %%
layers = None
if P.layer_sensitivity:
    layers = sensitivity_study.layer_sensitivity(run.model, run.obs, eval_batches, criterion=P.sensitivity_criterion,
                                     ratio=P.sensitivity_ratio, seed=P.seed)
    write_table(layers, P.output_dir, "layer_sensitivity")
    display(Markdown(readings.sensitivity(layers[layers.domain == "all"])))

# %% [markdown]
# ## Reading
#
# Generated from the tables above by `reapkit.study.findings.summarise` on every run (also written to `summary.md`):
# each claim is stated only when its 95% interval supports it.

# %%
summary = findings.summarise(sequences, sensitivity, layers)
atomic_write_text(f"{P.output_dir}/summary.md", summary + "\n")
print(f"notebook run time {time.perf_counter() - start:.0f} s")
Markdown(summary)

# %% [markdown]
# ## Explore
#
# Pick methods, a metric and an evaluation domain: their curves, and the reading at 50% removed, redrawn from
# the results above (not the model). Shown in JupyterLab; papermill runs build no explorer (`interactive`).

# %%
from reapkit.plot.widgets import StudyExplorer
from reapkit.run.lab import show_explorer

if show_explorer(P.interactive):
    display(StudyExplorer(results, metrics=["delta_loss", "kl", "agreement", "loss"]))
