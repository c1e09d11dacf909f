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
# # 3. What does pruning cost?
#
# **Question:** for each criterion and ratio, which experts go, and what does it cost on held-out data of
# each domain (loss, next-token agreement and KL against the unpruned model, block reconstruction error)?
# How much of it retraining only the routers wins back. Then the real thing: a pruned checkpoint saved, reloaded with stock transformers, and greedy samples
# before and after.

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
criteria = ["reap", "frequency", "ean_mean", "soft_frequency"]  # criteria of the plans
ratios = [0.25, 0.5]                # fractions of experts removed
evaluation = "code:8,tools:8,prose:8,math:8"  # held-out data (validation split of built-in domains)
save_criterion = "reap"             # the plan saved as a checkpoint (None: save nothing)
save_ratio = 0.5                    # ratio of the saved plan
prompts = None                      # {name: prompt} for greedy samples; None: one per built-in domain
max_new_tokens = 24                 # tokens of each greedy sample (0: no samples)
lm_eval_tasks = None                # lm-eval tasks scored for every plan; None: no lm-eval
lm_eval_include = "demo"            # folder of lm-eval task YAMLs; "demo": reapkit's demo tasks; None: lm-eval's own
lm_eval_limit = None                # lm-eval documents per task; None: all
recover_ratios = [0.25, 0.5]        # router recovery after REAP at these ratios ([]: none)
recover_epochs = 3                  # passes over the calibration tokens in router recovery
recover_lr = 0.003                  # learning rate of router recovery
budget_ratios = [0.25, 0.5]         # non-uniform budgets searched at these ratios ([]: none)
search_generations = 8              # generations of the evolutionary budget search
search_population = 8               # candidate plans per generation of that search
output_dir = "runs/03_pruning"      # tables and executed outputs
figures_dir = "figures/03_pruning"  # figures (PNG and PDF)

# %%
from reapkit.run.parameters import check_parameters

P = check_parameters(globals(), "03_pruning")
P

# %%
import pandas as pd
from IPython.display import Markdown, display
from transformers import AutoModelForCausalLM

from reapkit import plot
from reapkit.compress.prune import save_pruned
from reapkit.measure import schema
from reapkit.measure.evaluate import evaluate, evaluate_plans, generate_samples
from reapkit.measure.harness import lm_eval_plans, task_folder
from reapkit.run.notebook import DEFAULT_PROMPTS, Figures, calibrate, held_out, pruned_copy, write_table
from reapkit.select.criteria import usable_criteria
from reapkit.select.plan import PruningPlan
from reapkit.study import readings, tables
from reapkit.study.gaps import gap_table

figures = Figures(P.figures_dir)
run = calibrate(P, model_needed=True)
criteria = usable_criteria(run.obs, P.criteria)  # those whose statistics the observations hold

# %% [markdown]
# ## Plans
#
# Dark = kept, light = pruned; one row of panels per criterion, one column per ratio.

# %%
plans = {(c, r): PruningPlan.from_observations(run.obs, c, ratio=r, seed=P.seed) for c in criteria for r in P.ratios}
masks = pd.concat([tables.mask_frame(plan, criterion=c, ratio=r) for (c, r), plan in plans.items()], ignore_index=True)
figures.save(plot.plan_masks(masks[masks.layer.isin(run.layers)]), "plan_masks")
display(Markdown(readings.plans(plans)))

# %% [markdown]
# ## What pruning costs
#
# Each plan is applied in memory by masking the router (identical to removing the experts); ratio 0 is
# the unpruned model. Per domain: Δ loss against that domain's unpruned loss. Bands: 95% bootstrap
# intervals over evaluation sequences.

# %%
eval_batches = held_out(P, run.tokenizer)
results, reconstruction, sequences = evaluate_plans(run.model, plans, eval_batches, sequences=True)
results = results.assign(model=P.model, seed=P.seed)
gaps = gap_table(sequences, hue="criterion", metrics=["loss", "agreement", "kl"])  # each plan minus REAP's, paired
write_table(reconstruction, P.output_dir, "reconstruction")
figures.save(plot.loss_vs_ratio_by_domain(results), "loss_vs_ratio_by_domain")  # Δ loss: each domain vs its unpruned loss
display(Markdown(readings.costs(results, metric="loss", gaps=gaps)))
display(Markdown(readings.costs(results, metric="agreement", gaps=gaps)))
display(Markdown(readings.costs(results, metric="kl", gaps=gaps)))

# %%
figures.save(plot.reconstruction_by_layer(reconstruction[reconstruction.layer.isin(run.layers)]), "reconstruction_error")
display(Markdown(readings.reconstruction(reconstruction)))

# %% [markdown]
# ## Benchmarks (lm-evaluation-harness)
#
# With `lm_eval_tasks`, lm-eval scores the unpruned model and every plan, each masked in memory (no
# checkpoint written). Its rows join the results table in the long form of the results schema (task as
# `domain`, `metric`, `value`, `stderr`); bands: value ± 1.96 stderr where the task gives one.
# `lm_eval_include = "demo"` writes reapkit's demo tasks (held-out text, which-continuation) to the output folder.
# `results.csv` is written once, below: the costs above and these scores together.

# %%
scores = None
if P.lm_eval_tasks:
    include = task_folder(P.lm_eval_include, P.output_dir)
    scores = lm_eval_plans(run.model, plans, P.lm_eval_tasks, tokenizer=run.tokenizer, include_path=include,
                           limit=P.lm_eval_limit, batch_size=P.batch_size).assign(model=P.model, seed=P.seed)
    figures.save(plot.scores_figure(scores), "lm_eval_vs_ratio")
    display(Markdown(readings.benchmark_scores(scores)))
    display(schema.wide_results(scores).dropna(axis=1, how="all"))

# %%
write_table(results if scores is None else pd.concat([results, scores], ignore_index=True), P.output_dir, "results")

# %% [markdown]
# ## How many experts should each layer keep?
#
# At each of `budget_ratios`, plans keeping the same total of experts, each layer its best by REAP, that
# differ only in how many each layer keeps: uniform, the global budget (layers compared on one scale),
# water-filling on each layer's saliency curve, and an evolutionary search of the counts scored by KL to
# the unpruned model on the calibration tokens (never the held-out ones). Each against uniform REAP on the
# held-out tokens, paired, with 95% intervals; the reading also pairs water-filling and the search with the
# global budget.

# %%
if P.budget_ratios and run.batches is not None:
    from reapkit.study.budget import budget_comparison, budget_reading

    budgets = budget_comparison(run.model, run.obs, run.batches, eval_batches, ratios=P.budget_ratios,
                                generations=P.search_generations, population=P.search_population, seed=P.seed)
    write_table(budgets, P.output_dir, "budgets")
    figures.save(plot.budget_figure(budgets), "budget_searches")
    display(Markdown(budget_reading(budgets)))

# %% [markdown]
# ## Router recovery: how much of the cost do the routers alone win back?
#
# The experts REAP keeps at each `recover_ratios` stay as they are; only the routers are trained to match the
# unpruned model's next-token distribution (KL) on the calibration tokens (`reapkit recover`, after arXiv
# 2603.02217). Measured on the held-out tokens above, never trained on: open marker = pruned, filled =
# recovered; above each ratio the share of the pruning loss won back, with its paired 95% interval.

# %%
if P.recover_ratios and run.batches is not None:
    from reapkit.study.recovery import recovery_reading, recovery_study

    recovery = recovery_study(run.model, run.obs, run.batches, eval_batches, ratios=P.recover_ratios,
                              epochs=P.recover_epochs, lr=P.recover_lr, seed=P.seed)
    write_table(recovery, P.output_dir, "recovery")
    figures.save(plot.recovery_figure(recovery), "recovery")
    display(Markdown(recovery_reading(recovery)))

# %% [markdown]
# ## The saved checkpoint, and samples before and after
#
# The plan is applied for real to a second copy of the model (`pruned_copy`: the model loaded above stays
# unpruned, so every cell gives the same result when run again), saved with `pruning_plan.json` beside the
# weights, and reloaded with stock `AutoModelForCausalLM.from_pretrained`; its loss equals the masked
# evaluation above. `max_new_tokens = 0` skips the samples.

# %%
prompts = P.prompts or DEFAULT_PROMPTS
sampling = P.max_new_tokens > 0 and run.tokenizer is not None
before = generate_samples(run.model, run.tokenizer, prompts, max_new_tokens=P.max_new_tokens) if sampling else {}
after = {}
if P.save_criterion is not None:
    plan = plans.get((P.save_criterion, P.save_ratio)) or PruningPlan.from_observations(
        run.obs, P.save_criterion, ratio=P.save_ratio, seed=P.seed)
    checkpoint = save_pruned(pruned_copy(P, plan), plan, f"{P.output_dir}/pruned_checkpoint", tokenizer=run.tokenizer,
                             force=True)
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    print(f"saved {checkpoint}: {reloaded.config.num_experts} experts per layer (was {plan.num_experts[plan.layers[0]]})")
    check = evaluate(reloaded, eval_batches, progress=False)[["domain", "loss"]]
    masked = results[(results.criterion == plan.criterion) & (results.ratio == plan.ratio)][["domain", "loss"]]
    display(check.merge(masked, on="domain", suffixes=("_reloaded", "_masked")) if len(masked) else check)
    after = generate_samples(reloaded, run.tokenizer, prompts, max_new_tokens=P.max_new_tokens) if sampling else {}

# %%
if before:
    samples = pd.DataFrame([{"prompt": prompts[k], "before": before[k], "after": after.get(k, "")} for k in before],
                           index=list(before))
    write_table(samples.reset_index(names="name"), P.output_dir, "samples")
    display(samples.style.set_properties(**{"white-space": "pre-wrap", "text-align": "left"}))

# %% [markdown]
# ## Explore
#
# Pick a plan (criterion and ratio) and a metric: the experts it keeps, and what it costs on each evaluation
# domain beside the other criteria at the same ratio, from the measurements above (not the model). Shown in
# JupyterLab; papermill runs build no explorer (`interactive`).

# %%
from reapkit.plot.explorers import CostExplorer
from reapkit.run.lab import show_explorer

if show_explorer(P.interactive):
    display(CostExplorer(results, plans))
