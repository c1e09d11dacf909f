"""Generate the notebooks of this folder (without outputs): `python notebooks/build.py`.

Each notebook has exactly one cell tagged `parameters`; the next cell checks them with
`reapkit.notebook.check_parameters`. Edit the cells here, not in the .ipynb files.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

COMMON_PARAMETERS = '''\
model = "demo"                  # "demo" (the bundled model), a local checkpoint or a hub name
calibration = "code:16,tools:16,prose:16,math:16"   # reapkit calibration spec (domains, files)
max_length = 128                # tokens per calibration sample
batch_size = 8
layers = None                   # MoE layers (decoder indices) to draw (None: all)
seed = 0
cache_dir = "runs/cache"        # observations are reused for the same model and tokens
interactive = False             # True: show the ipywidgets explorer (needs a live kernel)
'''

CHECK = '''\
from reapkit.notebook import check_parameters

P = check_parameters(globals(), "{name}")
P'''

LOAD = '''\
model_, tokenizer = load_model(P.model)
batches = calibration_batches(P.calibration, tokenizer, batch_size=P.batch_size, max_length=P.max_length, seed=P.seed)
obs = observe_cached(model_, batches, P.cache_dir or f"{P.output_dir}/cache",
                     calibration={"spec": P.calibration, "max_length": P.max_length, "seed": P.seed})
layers = moe_layers(obs, P.layers)
print(f"domains {obs.domains}, MoE layers {obs.layers}, experts {obs.num_experts}, top-k {obs.top_k}")'''

IMPORTS = '''\
import pandas as pd
from IPython.display import display

from reapkit import geometry, plot
from reapkit.data import calibration_batches
from reapkit.notebook import Figures, load_model, moe_layers, read_results, write_table
from reapkit.observe import observe_cached
from reapkit.plan import PruningPlan
from reapkit.saliency import score, scores_frame

figures = Figures(P.figures_dir)'''

NOTEBOOKS = {
    "01_saliency": [
        ("md", "# 1. Expert saliency\n\nWhich experts matter in which layer, by each criterion; how the "
               "criteria agree; which experts serve which calibration domain, and how that changes with depth.\n\n"
               "Everything below is derived from one set of observations (`reapkit.observe_cached`)."),
        ("parameters", COMMON_PARAMETERS + '''\
criteria = ["reap", "frequency", "ean_mean", "soft_frequency"]
ratios = [0.25, 0.5]            # fractions of experts removed (cut-off lines, agreement)
output_dir = "runs/01_saliency"
figures_dir = "figures/01_saliency"
'''),
        ("code", CHECK.format(name="01_saliency")),
        ("code", IMPORTS),
        ("md", "## Observations"),
        ("code", LOAD),
        ("md", "## Saliency per criterion\n\nLayers x experts, each layer scaled to its maximum; then each layer sorted."),
        ("code", '''\
scores = scores_frame(obs, P.criteria, per_domain=True, seed=P.seed)
scores = scores[scores.layer.isin(layers)]
write_table(scores, P.output_dir, "scores")
figures.save(plot.saliency_heatmaps(scores, criteria=P.criteria), "saliency_heatmaps");'''),
        ("code", 'figures.save(plot.saliency_heatmaps(scores, criteria=P.criteria, sort=True), "saliency_heatmaps_sorted");'),
        ("md", "## Sorted scores and the cut-off\n\nExperts right of a dashed line are removed at that ratio."),
        ("code", 'figures.save(plot.per_criterion(plot.saliency_curves, scores, P.criteria, ratio=P.ratios), "saliency_curves");'),
        ("md", "## Criterion agreement\n\nSpearman rank correlation per layer, and the overlap (Jaccard) of the "
               "experts each criterion would prune."),
        ("code", '''\
agreement = pd.concat([plot.agreement_table(scores, criteria=P.criteria, ratio=r).assign(ratio=r) for r in P.ratios],
                      ignore_index=True)
write_table(agreement, P.output_dir, "results")
figures.save(plot.criterion_agreement(scores, criteria=P.criteria, ratio=P.ratios[-1]), "criterion_agreement")
agreement.groupby(["ratio", "criterion_a", "criterion_b"])[["spearman", "overlap"]].mean().round(3)'''),
        ("md", "## Domain experts\n\nEnrichment = the expert's share of a domain's routed tokens (or REAP mass) "
               "x the number of experts: red experts serve that domain more than a uniform router would; a dot "
               "marks each expert's dominant domain."),
        ("code", '''\
routing = scores_frame(obs, ["frequency", "reap"], per_domain=True)
routing = routing[routing.layer.isin(layers)]
figures.save(plot.domain_saliency(routing, criterion="frequency").figure, "domain_frequency")
figures.save(plot.domain_saliency(routing, criterion="reap").figure, "domain_reap");'''),
        ("md", "## Specialisation by depth\n\n1 - normalised entropy of each expert's distribution over domains."),
        ("code", '''\
specialisation = plot.specialisation_table(routing, criterion="frequency")
write_table(specialisation, P.output_dir, "specialisation")
figures.save(plot.specialisation_by_depth(specialisation).figure, "specialisation_by_depth")
specialisation.groupby("layer")[["specialisation"]].mean().round(3)'''),
        ("code", '''\
if P.interactive:
    from reapkit.widgets import explorer

    display(explorer(obs, criteria=P.criteria))'''),
    ],
    "02_clusters": [
        ("md", "# 2. Expert geometry\n\nAngular distance (arccos of the cosine similarity, / pi) between the "
               "experts of each layer in three spaces: their weights, their mean routed outputs and their router "
               "rows; average-linkage clustering; saliency overlaid on the clusters."),
        ("parameters", COMMON_PARAMETERS + '''\
spaces = ["weights", "output", "router"]
n_clusters = 4                  # clusters per layer
criterion = "reap"              # saliency overlaid on the clusters
ratio = 0.5                     # experts a plan at this ratio prunes are hatched
output_dir = "runs/02_clusters"
figures_dir = "figures/02_clusters"
'''),
        ("code", CHECK.format(name="02_clusters")),
        ("code", IMPORTS),
        ("md", "## Observations"),
        ("code", LOAD),
        ("md", "## Distances and clusters"),
        ("code", '''\
distances = geometry.distance_matrices(model=model_, obs=obs, layers=layers, spaces=P.spaces)
clusterings = {key: geometry.cluster(d, n_clusters=min(P.n_clusters, len(d))) for key, d in distances.items()}
clusters = geometry.cluster_table(clusterings)
write_table(clusters, P.output_dir, "results")
clusters.pivot_table(index=["space", "layer"], columns="cluster", values="expert", aggfunc="count", fill_value=0)'''),
        ("code", '''\
for space in P.spaces:
    chosen = {key: d for key, d in distances.items() if key[0] == space}
    figures.save(plot.distance_heatmaps(chosen, clusterings), f"distances_{space}")'''),
        ("md", "## Do the spaces agree?\n\nSpearman correlation of the pairwise distances of two spaces, per layer."),
        ("code", '''\
agreement = geometry.space_agreement(distances)
write_table(agreement, P.output_dir, "space_agreement")
agreement.round(3)'''),
        ("md", "## Saliency on the clusters\n\nBars in dendrogram order, coloured by cluster; hatched experts are "
               "the ones a plan at `ratio` prunes. Pruning a whole cluster removes a kind of function; pruning "
               "inside a cluster removes near-duplicates."),
        ("code", '''\
space = "output" if "output" in P.spaces else P.spaces[0]
saliency = score(obs, P.criterion, seed=P.seed)
fig, axes = plot.panels(len(layers), ncols=2, size=(4.6, 2.8))
for ax, layer in zip(axes, layers):
    plot.saliency_clusters(saliency[obs.layers.index(layer)], clusterings[space, layer], ratio=P.ratio, ax=ax,
                           title=f"layer {layer}: {P.criterion} on {space}-space clusters")
figures.save(fig, "saliency_clusters");'''),
        ("code", '''\
if P.interactive:
    from reapkit.widgets import explorer

    display(explorer(obs, n_clusters=P.n_clusters))'''),
    ],
    "03_pruning": [
        ("md", "# 3. Pruning\n\nPlans at each criterion and ratio; their cost on held-out data of each domain "
               "(loss, next-token agreement and KL against the unpruned model, block reconstruction error); "
               "greedy samples before and after; a saved pruned checkpoint that stock transformers loads."),
        ("parameters", COMMON_PARAMETERS + '''\
criteria = ["reap", "frequency", "ean_mean", "soft_frequency"]
ratios = [0.25, 0.5]
evaluation = "code:8,tools:8,prose:8,math:8"   # held-out data (validation split of built-in domains)
save_criterion = "reap"         # the plan saved as a checkpoint (None: save nothing)
save_ratio = 0.5
prompts = None                  # {name: prompt} for greedy samples; None: one per built-in domain
max_new_tokens = 24
output_dir = "runs/03_pruning"
figures_dir = "figures/03_pruning"
'''),
        ("code", CHECK.format(name="03_pruning")),
        ("code", IMPORTS + '''
from transformers import AutoModelForCausalLM

from reapkit.evaluate import evaluate, evaluate_plans, generate_samples
from reapkit.notebook import DEFAULT_PROMPTS
from reapkit.prune import remove_experts, save_pruned'''),
        ("md", "## Observations"),
        ("code", LOAD),
        ("md", "## Plans\n\nDark = kept, light = pruned."),
        ("code", '''\
plans = {(c, r): PruningPlan.from_observations(obs, c, ratio=r, seed=P.seed) for c in P.criteria for r in P.ratios}
masks = pd.concat([plot.mask_frame(plan, criterion=c, ratio=r) for (c, r), plan in plans.items()], ignore_index=True)
masks = masks[masks.layer.isin(layers)]
figures.save(plot.plan_masks(masks), "plan_masks");'''),
        ("md", "## What pruning costs\n\nEach plan is applied in memory by masking the router (identical to "
               "removing the experts); ratio 0 is the unpruned model."),
        ("code", '''\
eval_batches = calibration_batches(P.evaluation, tokenizer, batch_size=P.batch_size, max_length=P.max_length,
                                   split="validation", seed=P.seed)
results, reconstruction = evaluate_plans(model_, plans, eval_batches)
results = results.assign(model=P.model, seed=P.seed)
write_table(results, P.output_dir, "results")
write_table(reconstruction, P.output_dir, "reconstruction")
results[results.domain == "all"].round(4)'''),
        ("code", '''\
figures.save(plot.loss_vs_ratio_by_domain(results, metric="loss"), "loss_vs_ratio_by_domain")
figures.save(plot.loss_vs_ratio(results, metric="agreement").figure, "agreement_vs_ratio")
figures.save(plot.loss_vs_ratio(results, metric="kl").figure, "kl_vs_ratio")
figures.save(plot.reconstruction_by_layer(reconstruction[reconstruction.layer.isin(layers)]).figure, "reconstruction_error");'''),
        ("md", "## Samples before and after, and the saved checkpoint\n\nThe plan is applied for real "
               "(`remove_experts`), saved with `pruning_plan.json` beside the weights, and reloaded with stock "
               "`AutoModelForCausalLM.from_pretrained`; its loss equals the masked evaluation above."),
        ("code", '''\
prompts = P.prompts or DEFAULT_PROMPTS
before = generate_samples(model_, tokenizer, prompts, max_new_tokens=P.max_new_tokens) if tokenizer is not None else {}
if P.save_criterion is not None:
    plan = plans.get((P.save_criterion, P.save_ratio)) or PruningPlan.from_observations(
        obs, P.save_criterion, ratio=P.save_ratio, seed=P.seed)
    remove_experts(model_, plan)
    checkpoint = save_pruned(model_, plan, f"{P.output_dir}/pruned_checkpoint", tokenizer=tokenizer, force=True)
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    print(f"saved {checkpoint}: {reloaded.config.num_experts} experts per layer (was {plan.num_experts[plan.layers[0]]})")
    check = evaluate(reloaded, eval_batches, progress=False)
    masked = results[(results.criterion == plan.criterion) & (results.ratio == plan.ratio)] if plan.ratio in P.ratios else None
    display(check.merge(masked[["domain", "loss"]], on="domain", suffixes=("_reloaded", "_masked")) if masked is not None else check)'''),
        ("code", '''\
after = generate_samples(reloaded, tokenizer, prompts, max_new_tokens=P.max_new_tokens) if before and P.save_criterion else {}
samples = pd.DataFrame([{"prompt": prompts[k], "before": before[k], "after": after.get(k, "")} for k in before],
                       index=list(before))
write_table(samples.reset_index(names="name"), P.output_dir, "samples")
samples.style.set_properties(**{"white-space": "pre-wrap", "text-align": "left"})'''),
    ],
    "04_paper_figures": [
        ("md", "# 4. Paper figures\n\nDraws the results tables that many papermill runs of notebook 3 wrote "
               "(`reapkit sweep`, `reapkit.sweep.run_sweep`): loss against compression per criterion and per "
               "domain, criterion agreement and domain specialisation by depth."),
        ("parameters", COMMON_PARAMETERS + '''\
results = ["runs/03_pruning/results.csv", "runs/*/*/results.csv"]   # results tables (paths or glob patterns)
criteria = ["reap", "frequency", "ean_mean", "soft_frequency"]
ratio = 0.5                     # ratio of the criterion-agreement figure
metrics = ["loss", "kl", "agreement"]
output_dir = "runs/04_paper_figures"
figures_dir = "figures/04_paper_figures"
'''),
        ("code", CHECK.format(name="04_paper_figures")),
        ("code", IMPORTS),
        ("md", "## Results of the pruning runs"),
        ("code", '''\
results = read_results(P.results)
results = results[results.columns.intersection(["source", "model", "seed", "ratio", "criterion", "domain", "tokens", *P.metrics])]
print(f"{len(results)} rows from {results['source'].nunique() if len(results) else 0} run(s)")
summary = (results.groupby(["ratio", "criterion", "domain"], as_index=False)[results.columns.intersection(P.metrics)]
           .mean() if len(results) else results)
write_table(summary, P.output_dir, "results")
summary[summary.domain == "all"].round(4) if len(summary) else summary'''),
        ("code", '''\
for metric in P.metrics:
    figures.save(plot.loss_vs_ratio(results, metric=metric).figure, f"{metric}_vs_ratio")
    figures.save(plot.loss_vs_ratio_by_domain(results, metric=metric), f"{metric}_vs_ratio_by_domain")'''),
        ("md", "## Criterion agreement and specialisation by depth"),
        ("code", LOAD),
        ("code", '''\
scores = scores_frame(obs, P.criteria, per_domain=True, seed=P.seed)
scores = scores[scores.layer.isin(layers)]
figures.save(plot.criterion_agreement(scores, criteria=P.criteria, ratio=P.ratio), "criterion_agreement")
routing = scores_frame(obs, ["frequency"], per_domain=True)
figures.save(plot.specialisation_by_depth(routing[routing.layer.isin(layers)]).figure, "specialisation_by_depth");'''),
    ],
}


def build_notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, (kind, source) in enumerate(cells):
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(source.rstrip("\n"))
        else:
            cell = nbformat.v4.new_code_cell(source.rstrip("\n"))
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
        cell["id"] = f"cell-{index:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        nbformat.write(build_notebook(cells), str(path))
        print(path)


# --------------------------------------------------------------------------------------------
# 05_study (reapkit.study): the REAP paper's claims, tested on this model
# --------------------------------------------------------------------------------------------

STUDY_READING = """\
## Reading of the demo model's results

Written by hand from a run of this notebook with its default parameters on the bundled demo model of
commit `3bc2380` (`data/demo/MODEL_CARD.md`: 4.5M training tokens, no dead experts, I(domain; expert)
0.54-0.97 bits per layer); the summary above is regenerated on every run, this cell is not. The
evaluation set is small (16 validation samples of at most 128 tokens per domain, about 6,400 target
tokens), so gaps below about 0.05 nats should not be read. Unpruned loss on all domains: 2.544.

**(a) REAP against the baselines: partly confirmed.**

- REAP beats mean activation norm (`ean_mean`), random pruning (mean of 3 seeds) and both merging
  baselines at every ratio from 12.5% to 62.5%. At 50%: REAP 3.99, `ean_mean` 4.36, random 4.61
  (seeds 4.30-4.90), M-SMoE 4.90, HC-SMoE 5.05. HC-SMoE is the worst method at every ratio, and
  M-SMoE is worse than random pruning at 25%, 50% and 62.5%.
- REAP does **not** beat frequency-based pruning on this model: soft frequency is better at every
  ratio (3.59 against 3.99 at 50%), frequency at 4 of 5 ratios (3.87 at 50%). KL to the unpruned
  model agrees (1.07 and 1.34 against REAP's 1.49 nats at 50%).
- The domain panels show where: REAP is the best uniform criterion on code and math at low ratios
  (at 25%: code 4.02 against 4.72 for frequency, math 0.94 against 1.88), but it removes experts the
  tools domain depends on from the first step: tools loss goes from 1.06 to 1.84 at 12.5% with REAP,
  to 1.08 with frequency. Tool-call text is highly predictable; presumably its experts are routed
  often but with a small gate x output norm, which is what REAP ranks by (not checked here;
  notebook 1's domain panels are the place). REAP's kept experts received 55% of the calibration
  tokens' expert assignments at 50%, frequency's 64%.
- The non-uniform global budget with REAP scores (same total number of experts) is the best method
  at 12.5%, 37.5% and 50% (3.49 at 50%, 0.50 below uniform REAP): on this model, how many experts
  each layer keeps matters as much as which.

**(b) Calibration decides which experts survive: confirmed, strongly.** Pruning 50% by REAP, a
domain's own calibration gives it the lowest loss of the single-domain sets for code, prose and math
(tools: prose calibration 2.83, tools 2.92, within noise; the mix 2.76). Leaving a domain out of the
calibration costs it most: math loss is 1.21 with math calibration and 5.69 with tools calibration
(unpruned 0.79); code 4.22 with code calibration, 5.43 with math calibration (unpruned 3.70). Two
single-domain calibration sets keep different experts (mean Jaccard 0.38 over layers, math / tools
0.23). The four-domain mix (4x the tokens of each single set) is a compromise: 3.99 on all domains,
best on none.

**The verdict on REAP against frequency depends on the calibration mix.** `sweeps/study.yaml`
(this notebook with three calibration mixes, same evaluation set) gives at 50%, loss on all
domains: balanced mix, REAP 3.99 against frequency 3.87; code + tools only (the published REAP
recipe), REAP 4.19 against 3.96; prose + math only, REAP 3.64 against 4.66, where REAP beats every
uniform baseline (pruning and merging) at every ratio by 0.18-1.39 nats and only the global REAP
budget does better (at 4 of 5 ratios). Random pruning needs no calibration: 4.61 in all three.

One small model, one training seed, one evaluation sample: this reproduces claim (b) and the part
of claim (a) about activation norm, random pruning and merging; REAP's advantage over frequency
holds only for one of the three calibration mixes tried."""

NOTEBOOKS["05_study"] = [
    ("md", "# 5. The REAP study\n\nThe REAP paper (arXiv:2510.13999) claims that (a) pruning by REAP beats pruning by "
           "frequency or activation norm, and beats expert merging, most clearly at 50% compression, and (b) "
           "calibration data decides which experts survive: a model pruned with calibration that lacks a domain "
           "loses that domain. This notebook tests both on any model (`reapkit.study`).\n\n"
           "(a) At each ratio: every pruning criterion (by masking the router), random pruning (mean and min-max over "
           "seeds), M-SMoE- and HC-SMoE-style merging to the same number of experts per layer, and a non-uniform "
           "plan keeping the same total number of experts (global budget, REAP scores). (b) REAP at 50% calibrated "
           "on each single calibration domain and on their mix. Everything is measured on held-out data of each "
           "domain: loss, KL to the unpruned model, top-1 agreement."),
    ("parameters", '''\
model = "demo"                  # "demo" (the bundled model), a local checkpoint or a hub name
calibration = "code:16,tools:16,prose:16,math:16"   # calibration spec; its domains are the sets of study (b)
evaluation = "code:16,tools:16,prose:16,math:16"    # held-out data (validation split of built-in domains)
max_length = 128                # tokens per sample
batch_size = 8
seed = 0
ratios = [0, 0.125, 0.25, 0.375, 0.5, 0.625]   # fractions of experts removed
criteria = ["reap", "frequency", "soft_frequency", "ean_mean"]
random_seeds = [0, 1, 2]        # random pruning, one run per seed ([] : none)
merges = ["m_smoe", "hc_smoe"]  # merging baselines ([] : none)
global_budget = True            # non-uniform plan with the same total (True: REAP scores; a criterion; False: none)
margin = 0                      # global budget: every layer keeps at least top-k + margin experts
sensitivity = True              # run study (b), calibration sensitivity
sensitivity_ratio = 0.5
sensitivity_criterion = "reap"
output_dir = "runs/05_study"
figures_dir = "figures/05_study"
cache_dir = "runs/cache"        # observations are reused for the same model and tokens
interactive = False             # True: pick metric and domain with ipywidgets (needs a live kernel)
'''),
    ("code", '''\
from reapkit import study
from reapkit.notebook import check_parameters

P = check_parameters(globals(), "05_study")
P'''),
    ("code", '''\
import time

from IPython.display import Markdown, display

from reapkit import plot
from reapkit.atomic import atomic_write_text
from reapkit.data import calibration_batches
from reapkit.notebook import Figures, load_model, write_table
from reapkit.observe import observe_cached

figures = Figures(P.figures_dir)
start = time.perf_counter()'''),
    ("md", "## Observations and held-out data"),
    ("code", '''\
model_, tokenizer = load_model(P.model)
batches = calibration_batches(P.calibration, tokenizer, batch_size=P.batch_size, max_length=P.max_length, seed=P.seed)
obs = observe_cached(model_, batches, P.cache_dir or f"{P.output_dir}/cache",
                     calibration={"spec": P.calibration, "max_length": P.max_length, "seed": P.seed})
eval_batches = calibration_batches(P.evaluation, tokenizer, batch_size=P.batch_size, max_length=P.max_length,
                                   split="validation", seed=P.seed)
print(f"calibration domains {obs.domains}, MoE layers {obs.layers}, experts {obs.num_experts}, top-k {obs.top_k}; "
      f"{sum(b.num_tokens for b in eval_batches)} evaluation tokens")'''),
    ("md", "## (a) Every method at every ratio\n\nLoss on all evaluation tokens; `study.csv` holds every domain "
           "and metric, `results.csv` the same in the layout notebook 4 reads."),
    ("code", '''\
t0 = time.perf_counter()
results = study.compression_study(model_, obs, eval_batches, ratios=P.ratios, criteria=P.criteria,
                                  random_seeds=P.random_seeds, merges=P.merges, global_budget=P.global_budget,
                                  margin=P.margin)
print(f"{results.groupby(['label', 'seed', 'ratio'], dropna=False).ngroups} variants in {time.perf_counter() - t0:.0f} s")
for note in results.attrs["notes"]:
    print("skipped:", note)
write_table(results.assign(model=P.model, calibration=P.calibration), P.output_dir, "study")
write_table(study.results_table(results, model=P.model, calibration=P.calibration), P.output_dir, "results")
results[results.domain == "all"].pivot_table(index="ratio", columns="label", values="loss", sort=False).round(4)'''),
    ("code", 'figures.save(plot.study_figure(results, metrics=["loss", "kl"]), "study");'),
    ("md", "## (b) Calibration sensitivity\n\nREAP at `sensitivity_ratio`, calibrated on each calibration domain "
           "alone and on their mix (from the per-domain statistics of the observations above: the same as "
           "calibrating on that domain alone). Left: loss increase over the unpruned model on each evaluation "
           "domain; right: how many kept experts two calibration sets share."),
    ("code", '''\
sensitivity = None
if P.sensitivity:
    sensitivity = study.calibration_sensitivity(model_, tokenizer, eval_batches, domains=obs.domains, calibration=obs,
                                                ratio=P.sensitivity_ratio, criterion=P.sensitivity_criterion, seed=P.seed)
    loss_matrix, overlap = sensitivity
    write_table(loss_matrix.reset_index(), P.output_dir, "sensitivity_loss")
    write_table(overlap.reset_index(), P.output_dir, "sensitivity_overlap")
    figures.save(plot.calibration_figure(loss_matrix, overlap), "calibration_sensitivity")
    display(loss_matrix.round(4))'''),
    ("md", "## What the numbers say\n\nGenerated from the tables above by `reapkit.study.summarise` (also written to "
           "`summary.md`)."),
    ("code", '''\
summary = study.summarise(results, sensitivity)
atomic_write_text(f"{P.output_dir}/summary.md", summary + "\\n")
print(f"notebook run time {time.perf_counter() - start:.0f} s")
Markdown(summary)'''),
    ("code", '''\
if P.interactive:
    from ipywidgets import interact

    interact(lambda metric, domain: plot.study_curves(results, metric=metric, domain=domain),
             metric=["loss", "kl", "top1_agreement", "perplexity"], domain=sorted(set(results.domain)))'''),
    ("md", STUDY_READING),
]


if __name__ == "__main__":
    main()
