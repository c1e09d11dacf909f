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
# # 1. Which experts matter?
#
# **Question:** in each MoE layer, which experts does each saliency criterion rank high, do the criteria
# agree, and which experts serve which kind of data?
#
# Everything below comes from one calibration pass (`reapkit.run.notebook.calibrate`): the per-expert,
# per-domain statistics are recorded once and every criterion is derived from them. With `observations`
# set, they are read from that folder instead, e.g. saliency computed by another tool and brought in with
# `reapkit import`; criteria and figures that need a statistic it lacks are skipped, with the reason.

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
observations = None                 # saved observations to use instead of calibrating (e.g. `reapkit import`)
criteria = ["reap", "frequency", "ean_mean", "soft_frequency"]  # saliency criteria to compare
ratios = [0.25, 0.5]                # fractions of experts removed (cut-offs, agreement)
plans = []                          # plan .json files made elsewhere, compared with reapkit's
ablation = True                     # ground truth: mask each expert alone on `evaluation`, rank-correlate every criterion with its cost
evaluation = "code:8,tools:8,prose:8,math:8"  # held-out data (validation split of built-in domains)
output_dir = "runs/01_saliency"     # tables and executed outputs
figures_dir = "figures/01_saliency"  # figures (PNG and PDF)

# %%
from reapkit.run.parameters import check_parameters

P = check_parameters(globals(), "01_saliency")
P

# %%
import pandas as pd
from IPython.display import Markdown, display

from reapkit import plot
from reapkit.run.notebook import Figures, calibrate, plans_beside, write_table
from reapkit.select.criteria import scores_frame, usable_criteria
from reapkit.study import kept, readings, tables

figures = Figures(P.figures_dir)
run = calibrate(P)
criteria = usable_criteria(run.obs, P.criteria)  # those whose statistics the observations hold
several_domains = len(run.obs.domains) > 1
scores = scores_frame(run.obs, criteria, per_domain=True, seed=P.seed)
scores = scores[scores.layer.isin(run.layers)]
routing = tables.routing(run.obs)  # group-limited routing and top-k: plans are made as the model routes
write_table(scores, P.output_dir, "scores")

# %% [markdown]
# ## Saliency per criterion
#
# Layers x experts, raw scores on one logarithmic colour scale per criterion: the scale of each layer stays visible.

# %%
figures.save(plot.saliency_heatmaps(scores, criteria=criteria), "saliency_heatmaps")
display(Markdown(readings.saliency_scale(scores, criteria[0])))

# %% [markdown]
# ## How evenly each layer routes
#
# Lorenz curve of each layer's routed tokens: experts from least to most used against the share of the
# tokens they receive (the diagonal: every expert alike). Experts never routed are counted.

# %%
counts = scores_frame(run.obs, ["frequency"], per_domain=False)
counts = counts[counts.layer.isin(run.layers)]
figures.save(plot.expert_usage(counts).figure, "expert_usage")
display(Markdown(readings.usage(kept.usage_summary(counts))))

# %% [markdown]
# ## Sorted scores and the cut-off
#
# Each layer's scores in descending order; experts right of a grey line are removed at that ratio.

# %%
figures.save(plot.per_criterion(plot.saliency_curves, scores, criteria, ratio=P.ratios), "saliency_curves")
display(Markdown(readings.cutoff(scores, criteria[0], P.ratios[-1])))

# %% [markdown]
# ## What each criterion's plan keeps
#
# Against the share of experts removed: the share of each layer's REAP score and of its routed tokens that
# the plan's kept experts hold (mean over layers, bands the range over layers).

# %%
shares = pd.concat([scores[scores.domain == "all"], counts]).drop_duplicates(["layer", "expert", "criterion"])
mass = kept.kept_mass_table(shares, criteria=criteria, ratios=sorted({0.125, 0.25, 0.375, 0.5, 0.625, *P.ratios}),
                            **routing)
write_table(mass, P.output_dir, "kept_mass")
figures.save(plot.kept_mass(mass), "kept_mass")
display(Markdown(readings.kept_mass(mass, ratio=P.ratios[-1])))

# %% [markdown]
# ## Do the criteria agree?
#
# Above the diagonal the Spearman rank correlation of two criteria's scores, below it the overlap (Jaccard)
# of the experts their plans prune, each the mean over layers; colours diverge at what chance gives.

# %%
agreement = pd.concat([tables.agreement_table(scores, criteria=criteria, ratio=r, **routing).assign(ratio=r)
                       for r in P.ratios], ignore_index=True)
write_table(agreement, P.output_dir, "results")
figures.save(plot.criterion_agreement(agreement[agreement.ratio == P.ratios[-1]], ratio=P.ratios[-1]).figure,
             "criterion_agreement")
display(Markdown(readings.criterion_agreement(agreement, experts=min(run.obs.num_experts), ratio=P.ratios[-1])))

# %% [markdown]
# ## Domain experts
#
# Enrichment = the expert's share of a domain's routed tokens x the number of experts: above 1, the
# expert serves that domain more than a uniform router would.

# %%
by_domain = scores_frame(run.obs, ["frequency"], per_domain=True)
by_domain = by_domain[by_domain.layer.isin(run.layers)]
if several_domains:
    figures.save(plot.domain_saliency(by_domain, criterion="frequency", top_k=run.obs.top_k).figure, "domain_frequency")
    display(Markdown(readings.domain_experts(tables.domain_share_table(by_domain, criterion="frequency"))))
else:
    print(f"skipped: domain experts need several calibration domains; these observations hold {run.obs.domains}")

# %% [markdown]
# ## Specialisation by depth
#
# 1 - normalised entropy of each expert's distribution over domains.

# %%
if several_domains:
    specialisation = tables.specialisation_table(by_domain, criterion="frequency")
    write_table(specialisation, P.output_dir, "specialisation")
    figures.save(plot.specialisation_by_depth(specialisation).figure, "specialisation_by_depth")
    display(Markdown(readings.specialisation(specialisation)))
else:
    print("skipped: specialisation needs several calibration domains")

# %% [markdown]
# ## Plans made elsewhere
#
# Each plan in `plans` (e.g. from `reapkit import llm-compressor`) beside reapkit's plan of every criterion
# keeping as many experts per layer; the table gives the overlap (Jaccard) of the kept experts and its chance level.

# %%
if P.plans:
    beside, overlap = plans_beside(run.obs, P.plans, criteria, seed=P.seed)
    write_table(overlap, P.output_dir, "plan_overlap")
    masks = pd.concat([tables.mask_frame(plan, criterion=c, ratio=r) for (c, r), plan in beside.items()],
                      ignore_index=True)
    figures.save(plot.plan_masks(masks[masks.layer.isin(run.layers)]), "plans_beside")
    display(Markdown(readings.plans(beside)))
    display(overlap)
else:
    print("skipped: no plans made elsewhere to compare (parameter `plans`)")

# %% [markdown]
# ## Ground truth: which criterion ranks experts by what removing them costs?
#
# Each expert of each layer is masked alone on the held-out tokens (`evaluation`); the loss change, with its
# paired 95% interval, is what pruning that one expert costs. Every criterion the observations can score is
# then rank-correlated with that cost, layer by layer (bootstrap intervals over experts; grey: the band
# unrelated rankings fall in). Last, the REAP plan at the largest ratio is masked whole: do the single costs
# of its removed experts add up to what removing them together costs?

# %%
if P.ablation and run.model is not None:
    import time

    from reapkit.run.notebook import add_weight_statistics, held_out
    from reapkit.select.criteria import CRITERIA_NAMES
    from reapkit.select.plan import PruningPlan
    from reapkit.study import ablation

    run.obs = add_weight_statistics(P, run.obs)  # every criterion is checked, the calibration-free aimer too
    eval_batches = held_out(P, run.tokenizer)
    start = time.perf_counter()
    costs = ablation.single_expert_ablation(run.model, eval_batches, layers=run.layers, seed=P.seed)
    seconds = time.perf_counter() - start
    ground = usable_criteria(run.obs, [c for c in CRITERIA_NAMES if c != "random"])
    correlation = ablation.ablation_correlation(run.obs, costs, ground, seed=P.seed)
    write_table(costs, P.output_dir, "ablation")
    write_table(correlation, P.output_dir, "ablation_correlation")
    figures.save(plot.ablation_rank_correlation(correlation), "ablation_rank_correlation")
    figures.save(plot.criterion_vs_ablation(ablation.score_costs(run.obs, costs, ground)), "criterion_vs_ablation")
    display(Markdown(ablation.ablation_reading(costs, correlation, seconds)))
else:
    print("skipped: the ablation needs the model (parameter `ablation`, or observations given without it)")

# %%
if P.ablation and run.model is not None:
    plan = PruningPlan.from_observations(run.obs, "reap", ratio=max(P.ratios), seed=P.seed)
    joint = ablation.plan_ablation(run.model, eval_batches, plan, seed=P.seed)
    write_table(joint, P.output_dir, "plan_ablation")
    figures.save(plot.joint_vs_singles(joint), "joint_vs_singles")
    display(Markdown(ablation.plan_ablation_reading(joint)))

# %% [markdown]
# ## Explore
#
# Pick a criterion, layer, domain and ratio: the layer's sorted scores with the cut-off, every layer's scores,
# the experts the plan keeps, and the kept set of the layer, redrawn from the observations (not the model).
# Shown in JupyterLab; papermill runs (`make demo`, sweeps) build no explorer (`interactive`).

# %%
from reapkit.plot.widgets import SaliencyExplorer
from reapkit.run.lab import show_explorer

if show_explorer(P.interactive):
    display(SaliencyExplorer(run.obs, criteria=criteria, views=("saliency", "mask"), seed=P.seed, ratio=P.ratios[-1]))
