"""`reapkit ablate`: what removing each expert alone costs, or a plan's removed experts together, on held-out data.

    reapkit ablate MODEL --out costs.csv                              # every expert of every MoE layer
    reapkit ablate MODEL --data code:8,math:8 --layers 3 --limit 2048 --out costs.csv
    reapkit ablate MODEL --plan plan.json --out plan_costs.csv        # together against the sum of single costs

Without --plan it writes `reapkit.study.ablation.single_expert_ablation`'s table (layer, expert,
loss_change, lo, hi, tokens); with --plan, `plan_ablation`'s (per layer and for the whole plan: joint,
singles, interaction, each with its paired 95 % interval). Built-in domains are read from their
validation split, so the held-out tokens are not the calibration ones. The table is written whole or
not at all (`reapkit.atomic`); a malformed --layers or a bad --limit stops before the model loads, a
layer that is not an MoE layer before the first forward.
"""

from __future__ import annotations

import time

from reapkit.errors import InvalidInput

__all__ = ["HELD_OUT", "cmd_ablate", "parse_layers"]

#: The held-out data of the notebooks (their `evaluation` parameter), the default of --data.
HELD_OUT = "code:8,tools:8,prose:8,math:8"


def parse_layers(text: str | None) -> list[int] | None:
    """--layers as decoder-layer indices: ``"0,3"`` -> [0, 3]; None for every MoE layer.

    >>> parse_layers("0, 3"), parse_layers(None)
    ([0, 3], None)
    """
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInput(
            f"--layers {text!r} is not a comma-separated list of decoder-layer numbers; e.g. --layers 0,3"
        ) from None
    if any(layer < 0 for layer in layers):
        raise InvalidInput(f"--layers {text!r} holds a negative layer; layers are numbered from 0, e.g. --layers 0,3")
    return layers


def cmd_ablate(args):
    from reapkit.atomic import atomic_write_text
    from reapkit.data import calibration_batches, parse_spec
    from reapkit.run.inputs import check_model_name, check_output, load
    from reapkit.run.plans import check_fits, read_plan
    from reapkit.select.merge import MergePlan
    from reapkit.study.ablation import plan_ablation, plan_ablation_reading, single_expert_ablation

    layers = parse_layers(args.layers)
    if args.limit is not None and args.limit < 1:
        raise InvalidInput(f"--limit is a number of held-out tokens, at least 1, got {args.limit}; e.g. --limit 4096")
    if args.plan is not None and layers is not None:
        raise InvalidInput("--layers chooses the layers to ablate expert by expert; with --plan, drop --layers")
    data = HELD_OUT if args.data is None else args.data
    items = parse_spec(data)  # a bad spec stops here, before the model loads
    check_output(
        args.out, args.force, args.model, args.plan, *(i.source for i in items if i.kind != "builtin"), file=True
    )
    check_model_name(args.model)
    plan = read_plan(args.plan) if args.plan is not None else None
    if isinstance(plan, MergePlan):
        raise InvalidInput(f"{args.plan} is a merge plan; ablate a pruning plan (reapkit plan, import llm-compressor)")
    model, tokenizer = load(args)
    if plan is not None:
        check_fits(model, plan)
    vocab = model.get_input_embeddings().num_embeddings
    batches = calibration_batches(
        data, tokenizer, batch_size=args.batch_size, max_length=args.max_length, split="validation", vocab_size=vocab
    )
    start = time.perf_counter()
    if plan is not None:
        table = plan_ablation(model, batches, plan, limit=args.limit)
        summary = plan_ablation_reading(table)
    else:
        table = single_expert_ablation(model, batches, layers=layers, limit=args.limit)
        top = table.loc[table["loss_change"].idxmax()]
        summary = (
            f"ablated {len(table)} experts one at a time ({table['layer'].nunique()} MoE layer(s), "
            f"{int(table['tokens'].iloc[0])} held-out tokens): loss change {table['loss_change'].median():+.4f} "
            f"nats per token at the median, at most {top.loss_change:+.4f} (layer {int(top.layer)}, expert "
            f"{int(top.expert)}); {int((table['lo'] > 0).sum())} raise it beyond their 95 % interval"
        )
    atomic_write_text(args.out, table.to_csv(index=False))
    print(f"{summary}\n{time.perf_counter() - start:.1f}s -> {args.out}")
