"""`reapkit recover`: retrain the routers of a pruned checkpoint against the unpruned model.

    reapkit prune MODEL --observations runs/obs --ratio 0.5 --out pruned/
    reapkit recover pruned/ --out recovered/ --data code:64,prose:64 --steps 64 --lr 1e-3
    reapkit recover pruned/ --out recovered/ --teacher MODEL      # when the plan does not name its source

The teacher is the model the checkpoint was pruned from: `--teacher`, or the source model its
`pruning_plan.json` records (`reapkit prune` records it). Before any model loads, the command
refuses an output that exists (without --force), a folder that is not a pruned checkpoint and a
calibration spec it cannot read; after loading, a teacher that is not the plan's model.
`reapkit.compress.recover` does the work.
"""

from __future__ import annotations

import time

from reapkit.run.inputs import check_model_name, check_output

__all__ = ["cmd_recover"]


def cmd_recover(args):
    from reapkit.compress.recover import read_pruned_plan, recover_checkpoint, teacher_name
    from reapkit.data import DEFAULT_SPEC, calibration_batches, parse_spec
    from reapkit.model.loading import load_tokenizer

    start = time.perf_counter()
    spec = DEFAULT_SPEC if args.data is None else args.data
    items = parse_spec(spec)  # a bad spec is refused before any model loads
    check_output(args.out, args.force, args.pruned, args.teacher, *(i.source for i in items if i.kind != "builtin"))
    check_model_name(args.pruned)
    plan = read_pruned_plan(args.pruned)
    teacher = teacher_name(plan, args.teacher)
    check_model_name(teacher)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.pruned).get_text_config().vocab_size
    batches = calibration_batches(
        spec, load_tokenizer(args.pruned), batch_size=args.batch_size, max_length=args.max_length, vocab_size=vocab
    )
    out, record = recover_checkpoint(
        args.pruned,
        args.out,
        batches,
        teacher=teacher,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        dtype=args.dtype,
        force=args.force,
    )
    print(
        f"recovered the routers of {args.pruned} against {teacher} ({record.steps} steps, lr {record.lr:g}, "
        f"{record.calibration_tokens} calibration tokens): KL on the calibration tokens {record.kl_before:.4f} -> {record.kl_after:.4f} nats; "
        f"saved to {out} in {time.perf_counter() - start:.1f}s"
    )
