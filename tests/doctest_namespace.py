"""The names reapkit's docstring examples use, built once: the bundled demo model and what a study makes of it.

Every docstring example runs in these names (tests/unit/test_doctests.py), so an example reads like a
notebook cell on the demo model: ``score(obs, "reap")``, ``saliency_heatmap(scores)``,
``compression_figure(results)``. A module's own functions and classes hide these names. What an
example may use:

- ``model``, ``tokenizer``: the demo model (4 MoE layers, 16 experts, top-2; each module's examples
  get a copy of their own, so they may prune it) and its tokenizer;
- ``batches`` (calibration, 8 sequences of each built-in domain, 64 tokens) and ``eval_batches``
  (held-out, 4 of each domain);
- ``obs``: the demo model observed on ``batches`` (every optional statistic too); ``scores``:
  `scores_frame` of reap, frequency and ean_mean; ``reap_scores``: `score(obs, "reap")` [layers,
  experts]; ``plan`` (REAP, ratio 0.5; also ``uniform_plan``), ``global_plan`` (the same total, one
  global budget) and ``plans`` {(criterion, ratio): plan} of reap and frequency at 0.25 and 0.5;
- ``sequences`` and ``results``: a small compression study (reap and frequency at 0, 0.25 and 0.5,
  random seeds 0 and 1, the global budget) and its ``gaps`` (`gap_table(sequences)`);
- ``sensitivity``, ``loss_matrix``, ``overlap``: calibration sensitivity from ``obs``; ``size_table``:
  `calibration_size` on code and math, 2 and 4 samples, 2 seeds;
- ``costs`` (`single_expert_ablation` of layer 3 on 256 held-out tokens), ``ablation`` (reap and
  frequency scores beside those costs: layer, expert, criterion, score, cost, cost_lo, cost_hi) and
  ``correlations`` (`ablation_correlation(obs, costs, ["reap", "frequency"])`); ``plan_costs``
  (`plan_ablation(model, eval_batches, plan, limit=256)`: ``plan``'s removed experts together);
- ``reconstruction`` (per-layer error of ``plan``: criterion, ratio, layer, rel_l2); ``lm_rows``
  (long-form lm-eval rows of the unpruned model and ``plan``, as `lm_eval_plans` gives them);
- ``distances`` ({(space, 3): [E, E]} angular distances of layer 3 in every space), ``d`` (the
  output-space one), ``clustering`` (`cluster(d, n_clusters=4)`) and ``coselect`` ([layers, E, E]);
- ``budget_results``: `budget_comparison` at ratio 0.5 (uniform, global, water, a one-generation
  evolutionary search scored on 8 train-split sequences), measured on ``eval_batches``;
- ``merge_plan`` (`plan_merge(model, obs, method="m_smoe_faithful", keep=8)`), ``alignment``
  (`alignment_distances` of its layer 3) and ``fidelity`` (`merge_fidelity` of layer 3 on 4 batches);
- ``np``, ``pd``, ``torch``, ``plt``.

The working folder (each module's own copy of `inputs`) holds ``runs/obs`` (``obs`` saved),
``plan.json`` (``plan``), ``tokens.jsonl`` (token ids), ``data/evol.jsonl`` (evol-codealpaca records),
``observations_1024_cosine.pt`` (the REAP observer's state of the code batches), ``reap_report.json``
(llm-compressor's report of a frequency plan), ``model.gguf`` and ``split-0000N-of-00002.gguf`` (the
demo model in GGUF, experts in Q8_0) and ``experiments/my_criterion.py`` (a plugin registering the
criterion ``my_criterion``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path


def build(inputs: Path) -> dict:
    """The shared names of the docstring examples; writes the files they read under `inputs`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import torch

    from reapkit.compress.prune import mask_experts
    from reapkit.data import calibration_batches
    from reapkit.measure.evaluate import reconstruction_error
    from reapkit.measure.harness import result_rows
    from reapkit.measure.merging import alignment_distances, merge_fidelity
    from reapkit.model.loading import load_model
    from reapkit.observe.recorder import observe
    from reapkit.select.criteria import score, scores_frame
    from reapkit.select.geometry import cluster, distance_matrices
    from reapkit.select.merge import plan_merge
    from reapkit.select.plan import PruningPlan
    from reapkit.study.ablation import ablation_correlation, plan_ablation, score_costs, single_expert_ablation
    from reapkit.study.budget import budget_comparison
    from reapkit.study.experiments import study_results, study_sequences
    from reapkit.study.gaps import gap_table
    from reapkit.study.sensitivity import calibration_sensitivity, calibration_size

    model, tokenizer = load_model("demo")
    batches = calibration_batches("code:8,prose:8,tools:8,math:8", tokenizer, batch_size=8, max_length=64)
    eval_batches = calibration_batches(
        "code:4,prose:4,tools:4,math:4", tokenizer, batch_size=4, max_length=64, split="validation"
    )
    obs = observe(model, batches, statistics="all", progress=False)
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.5)
    global_plan = PruningPlan.from_global_budget(obs, "reap", total=plan.total_kept)
    plans = {(c, r): PruningPlan.from_observations(obs, c, ratio=r) for c in ("reap", "frequency") for r in (0.25, 0.5)}
    distances = distance_matrices(model=model, obs=obs, layers=[3])
    merge_plan = plan_merge(model, obs, method="m_smoe_faithful", keep=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sequences = study_sequences(
            model, obs, eval_batches, ratios=[0.0, 0.25, 0.5], criteria=["reap", "frequency"], random_seeds=[0, 1],
            merges=[], progress=False,
        )  # fmt: skip
    search_batches = calibration_batches("code:4,prose:4", tokenizer, batch_size=4, max_length=32, split="train")
    budget_results = budget_comparison(
        model, obs, search_batches, eval_batches, ratios=[0.5], generations=1, population=2, resamples=200,
        progress=False,
    )  # fmt: skip
    sensitivity = calibration_sensitivity(
        model, tokenizer, eval_batches, calibration=obs, resamples=200, progress=False
    )

    scores = scores_frame(obs, ["reap", "frequency", "ean_mean"])
    costs = single_expert_ablation(model, eval_batches, layers=[3], limit=256, progress=False)
    ablation = score_costs(obs, costs, ["reap", "frequency"])

    def lm_output(bits_per_byte, acc, acc_stderr):  # what lm_eval.simple_evaluate returns on the demo suite
        return {
            "results": {
                "reapkit_heldout": {"bits_per_byte,none": bits_per_byte},
                "reapkit_continuation": {"acc,none": acc, "acc_stderr,none": acc_stderr},
            }
        }

    names = dict(
        np=np,
        pd=pd,
        torch=torch,
        plt=plt,
        model=model,
        tokenizer=tokenizer,
        batches=batches,
        eval_batches=eval_batches,
        obs=obs,
        scores=scores,
        reap_scores=score(obs, "reap"),
        plan=plan,
        uniform_plan=plan,
        global_plan=global_plan,
        plans=plans,
        sequences=sequences,
        results=study_results(sequences, resamples=200),
        gaps=gap_table(sequences),
        costs=costs,
        budget_results=budget_results,
        ablation=ablation,
        correlations=ablation_correlation(obs, costs, ["reap", "frequency"], resamples=200),
        plan_costs=plan_ablation(model, eval_batches, plan, limit=256, progress=False),
        sensitivity=sensitivity,
        loss_matrix=sensitivity.loss_matrix(),
        size_table=calibration_size(
            model,
            tokenizer,
            eval_batches,
            domains=["code", "math"],
            sizes=(2, 4),
            seeds=(0, 1),
            resamples=200,
            progress=False,
        ),  # fmt: skip
        overlap=sensitivity.overlap_matrix(),
        reconstruction=reconstruction_error(
            model, model, eval_batches, compressed=lambda: mask_experts(model, plan), progress=False
        ).assign(criterion="reap", ratio=0.5),
        lm_rows=pd.concat(
            [result_rows(lm_output(1.684, 0.5, 0.289)), result_rows(lm_output(2.302, 0.25, 0.25), plan)],
            ignore_index=True,
        ),
        distances=distances,
        d=distances["output", 3],
        clustering=cluster(distances["output", 3], n_clusters=4),
        coselect=obs.coselection(),
        merge_plan=merge_plan,
        alignment=alignment_distances(model, merge_plan, layers=[3]),
        fidelity=merge_fidelity(model, merge_plan, batches[:4], layers=[3]),
    )

    obs.save(inputs / "runs" / "obs")
    plan.save(inputs / "plan.json")
    frequency = PruningPlan.from_observations(obs, "frequency", ratio=0.5)  # as llm-compressor's REAP report writes it
    report = {f"model.layers.{layer}.mlp": kept for layer, kept in frequency.kept.items()}
    (inputs / "reap_report.json").write_text(json.dumps(report))
    code = obs.pooled(["code"])  # the REAP observer's state (pruning metrics only) of the code batches
    state = {
        layer: {
            "expert_frequency": code["count"][pos].long(),
            "ean_sum": code["norm_sum"][pos].double(),
            "weighted_ean_sum": code["reap_sum"][pos].double(),
            "weighted_expert_frequency_sum": code["gate_sum"][pos].double(),
            "reap": (code["reap_sum"][pos] / code["count"][pos].clamp_min(1)).float(),
            "max_activations": code["max_signed"][pos].float(),
            "total_tokens": code["tokens"][pos].long(),
        }
        for pos, layer in enumerate(obs.layers)
    }
    torch.save(state, inputs / "observations_1024_cosine.pt")
    (inputs / "experiments").mkdir()  # a plugin (reapkit.run.plugins)
    (inputs / "experiments" / "my_criterion.py").write_text(
        "import reapkit\n\n"
        "reapkit.register_criterion('my_criterion', lambda stats, seed: stats['count'], needs=['count'])\n"
    )
    from gguf_models import write_gguf  # tests/gguf_models.py: llama.cpp's names, experts in Q8_0

    write_gguf(inputs / "model.gguf", model, expert_type="Q8_0")
    write_gguf(inputs / "split.gguf", model, expert_type="Q8_0", split_tensors=40)
    tokens = [b.input_ids[0][b.attention_mask[0].bool()].tolist() for b in batches]
    (inputs / "tokens.jsonl").write_text("".join(json.dumps(ids) + "\n" for ids in tokens))
    (inputs / "data").mkdir()
    evol = [{"instruction": "Add two numbers in Python.", "output": "def add(a, b):\n    return a + b"},
            {"instruction": "Reverse a list.", "output": "items[::-1]"}]  # fmt: skip
    (inputs / "data" / "evol.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evol))
    return names
