"""Router recovery after pruning: train only the routers of a pruned model to match the unpruned one.

    >>> from reapkit.compress.prune import remove_experts
    >>> pruned = remove_experts(copy.deepcopy(model), plan)       # the student: REAP, half the experts gone
    >>> record = recover(pruned, model, batches, steps=4, lr=3e-3, progress=False)
    >>> record.kl_after < record.kl_before                        # KL(unpruned || pruned) on the training tokens
    True
    >>> record.trained[:2]                                        # nothing else changes
    ['model.layers.0.mlp.gate.weight', 'model.layers.1.mlp.gate.weight']
    >>> save_recovered(pruned, plan, record, "out/recovered", tokenizer=tokenizer)   # stock checkpoint + plan
    PosixPath('out/recovered')

Router knowledge distillation ("Router KD", Hyeon and Do, "Is Retraining-Free Enough? The Necessity
of Router Calibration for Efficient MoE Compression", arXiv:2603.02217): after experts are removed,
the router still scores the experts as it did before, so it is recalibrated by distilling the
unpruned model's next-token distribution, every other weight frozen. The loss is
KL(teacher || student), summed over the non-padding target positions of a batch and divided by
their number (position t predicts token t + 1, counted when both are real tokens). No public code of
the paper was found (searched December 2026), so this follows the paper's description: Adam on the
router parameters only, one calibration batch per step, teacher log-probs computed without gradient.

What is trained is every parameter of each MoE layer's router module (`MoELayer.router`): its
weight, and its bias where it has one (gpt_oss). A selection-only correction bias (DeepSeek-V3 and
GLM's `e_score_correction_bias`) is left unchanged: it moves only which experts are picked, a step
with no gradient, and the pruned layer already holds the kept experts' entries. The record says so
(`selection_bias`). Batches are visited in a seeded order (one permutation per epoch); the same seed
and inputs give bit-identical router weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from reapkit.errors import InvalidInput, Mismatch
from reapkit.model.hooks import eval_mode
from reapkit.model.layer import moe_layers
from reapkit.select.plan import PruningPlan

__all__ = [
    "Recovery",
    "recover",
    "router_parameters",
    "check_teacher",
    "save_recovered",
    "recover_checkpoint",
    "read_pruned_plan",
    "teacher_name",
    "training_kl",
    "DEFAULT_LR",
]

#: Adam's learning rate when none is given (the demo model recovers visibly with 1e-3 to 3e-3).
DEFAULT_LR = 1e-3

#: What happens to a selection-only correction bias (see the module docstring).
SELECTION_BIAS = "unchanged: it only moves which experts are picked, which has no gradient"


@dataclass
class Recovery:
    """What one `recover` call did: settings, tokens seen, KL on the training batches before and after."""

    steps: int
    lr: float
    seed: int
    tokens: int  # target positions seen over all steps (a batch visited twice counts twice)
    calibration_tokens: int  # target positions in the calibration batches
    kl_before: float  # mean KL(teacher || student) per target token on the training batches, nats
    kl_after: float
    trained: list[str]  # names of the trained parameters
    selection_bias: str  # what happened to a selection-only bias ("none" when the model has none)
    losses: list[float] = field(default_factory=list)  # the loss of each step
    method: str = "router_kd"

    def to_dict(self) -> dict:
        return asdict(self)


def router_parameters(model) -> dict[str, torch.nn.Parameter]:
    """`{name: parameter}` of every MoE layer's router (weight, and bias where present), never a
    selection-only correction bias."""
    names = {id(p): name for name, p in model.named_parameters()}
    found = {}
    for layer in moe_layers(model):
        bias = layer.selection_bias
        for parameter in layer.router.parameters():
            if parameter is not bias:
                found[names[id(parameter)]] = parameter
    return found


def _vocab(model) -> int:
    return int(model.get_input_embeddings().num_embeddings)


def _check_pair(student, teacher) -> None:
    """The student is a pruned copy of the teacher: the same MoE layers, fewer experts in at least one."""
    mine = {layer.index: layer.num_experts for layer in moe_layers(student)}
    theirs = {layer.index: layer.num_experts for layer in moe_layers(teacher)}
    if set(mine) != set(theirs) or _vocab(student) != _vocab(teacher):
        raise Mismatch(
            f"the teacher has MoE layers {sorted(theirs)} and a vocabulary of {_vocab(teacher)}, the pruned model "
            f"{sorted(mine)} and {_vocab(student)}; pass the unpruned model the pruned one was made from as teacher"
        )
    if any(mine[i] > theirs[i] for i in mine):
        raise Mismatch(
            f"the pruned model has more experts than the teacher ({mine} vs {theirs}); "
            "pass the unpruned model as teacher and the pruned one as student"
        )
    if mine == theirs:
        raise InvalidInput(
            f"the model has as many experts as the teacher in every MoE layer ({mine}): it is not pruned; "
            "prune it first (reapkit prune, or remove_experts) and recover the pruned model"
        )


def check_teacher(teacher, plan: PruningPlan, student=None) -> None:
    """Refuse a teacher other than the model `plan` was made from: its MoE layers and expert counts,
    the router fingerprint the plan records, and (without one) the router rows `student` kept."""
    from reapkit.compress.prune import check_plan
    from reapkit.observe.observations import fingerprint_differences

    try:
        layers = check_plan(teacher, plan)
    except ValueError as error:
        raise Mismatch(f"the teacher is not the model this checkpoint was pruned from: {error}") from None
    expected = plan.provenance.get("observations")
    if expected:
        diff = fingerprint_differences(expected, teacher)
        if diff:
            raise Mismatch(
                f"the teacher is not the model the pruning plan was made from (differences, plan vs teacher: {diff}); "
                "pass the unpruned model that was observed and pruned (same --dtype) as --teacher"
            )
    elif student is not None and "recovery" not in plan.provenance:
        for layer in moe_layers(student):
            kept = torch.tensor(plan.kept[layer.index])
            rows = (
                layers[layer.index]
                .router_weight.detach()
                .index_select(0, kept.to(layers[layer.index].router_weight.device))
            )
            if rows.shape != layer.router_weight.shape or not torch.equal(
                rows.cpu(), layer.router_weight.detach().cpu().to(rows.dtype)
            ):
                raise Mismatch(
                    f"the router of layer {layer.index} of the pruned model is not the teacher's router with the "
                    "plan's experts kept; pass the unpruned model this checkpoint was pruned from as --teacher"
                )


def _target_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.bool()
    return mask[:, :-1] & mask[:, 1:]


def _log_probs(model, batch, device) -> torch.Tensor:
    """[N, V] float32 next-token log-probs at the batch's target positions."""
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    return torch.log_softmax(out.logits[:, :-1][_target_mask(batch.attention_mask).to(device)].float(), dim=-1)


def _kl_sum(student_lp: torch.Tensor, teacher_lp: torch.Tensor) -> torch.Tensor:
    """Sum over positions of KL(teacher || student), nats."""
    return F.kl_div(student_lp, teacher_lp.to(student_lp.device), log_target=True, reduction="sum")


def _device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def training_kl(student, teacher, batches, *, progress: bool = False) -> float:
    """Mean KL(teacher || student) per target token over `batches`, in nats."""
    total, tokens = 0.0, 0
    with eval_mode(student, teacher):
        for batch in tqdm(batches, desc="kl", unit="batch", disable=not progress):
            teacher_lp = _log_probs(teacher, batch, _device(teacher))
            total += float(_kl_sum(_log_probs(student, batch, _device(student)), teacher_lp))
            tokens += teacher_lp.shape[0]
    return total / max(tokens, 1)


def _order(n: int, steps: int, seed: int) -> list[int]:
    """Batch index of each step: one seeded permutation of the batches per epoch."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps:
        order += torch.randperm(n, generator=generator).tolist()
    return order[:steps]


def recover(
    student,
    teacher,
    batches,
    *,
    steps: int | None = None,
    epochs: int = 1,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool = True,
) -> Recovery:
    """Train the routers of the pruned `student` in place so that its next-token distribution matches
    the unpruned `teacher`'s on `batches` (see the module docstring); every other parameter is untouched.

    `steps` optimizer steps of one batch each (default: `epochs` passes over the batches). Returns a
    `Recovery` with the mean KL on `batches` before and after.
    """
    if not batches:
        raise InvalidInput("no calibration batches were given; pass at least one reapkit.data.Batch")
    if steps is None:
        if not (isinstance(epochs, int) and epochs >= 1):
            raise InvalidInput(f"epochs must be a positive whole number, got {epochs!r}")
        steps = epochs * len(batches)
    if not (isinstance(steps, int) and steps >= 1):
        raise InvalidInput(f"steps must be a positive whole number, got {steps!r}; e.g. --steps 64")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidInput(f"the learning rate must be a positive number, got {lr!r}; e.g. --lr 1e-3")
    _check_pair(student, teacher)
    high = max(int(b.input_ids.max()) for b in batches)
    if high >= _vocab(student):
        raise Mismatch(
            f"the batches hold token id {high} but the model's vocabulary has {_vocab(student)} tokens; "
            "tokenise the calibration text with the model's own tokenizer"
        )
    trained = router_parameters(student)
    kl_before = training_kl(student, teacher, batches)
    flags = {p: p.requires_grad for p in student.parameters()}
    losses, tokens = [], 0
    device = _device(student)
    try:
        for parameter in flags:
            parameter.requires_grad_(False)
        for parameter in trained.values():
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(list(trained.values()), lr=lr)
        with eval_mode(student, teacher):  # no dropout: the only change is the router's
            for index in tqdm(_order(len(batches), steps, seed), desc="recover", unit="step", disable=not progress):
                batch = batches[index]
                with torch.no_grad():
                    teacher_lp = _log_probs(teacher, batch, _device(teacher))
                if teacher_lp.shape[0] == 0:
                    continue
                loss = _kl_sum(_log_probs(student, batch, device), teacher_lp) / teacher_lp.shape[0]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                tokens += teacher_lp.shape[0]
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
            parameter.grad = None
    has_bias = any(layer.selection_bias is not None for layer in moe_layers(student))
    return Recovery(
        steps=steps,
        lr=float(lr),
        seed=seed,
        tokens=tokens,
        calibration_tokens=int(sum(int(_target_mask(b.attention_mask).sum()) for b in batches)),
        kl_before=kl_before,
        kl_after=training_kl(student, teacher, batches),
        trained=list(trained),
        selection_bias=SELECTION_BIAS if has_bias else "none",
        losses=losses,
    )


def save_recovered(student, plan: PruningPlan, record: Recovery, out, *, tokenizer=None, force: bool = False) -> Path:
    """Save the recovered `student` like `save_pruned` (a stock checkpoint, written atomically) with
    `pruning_plan.json` recording the recovery under ``provenance["recovery"]`` (a list, one entry per
    recovery; the per-step losses are left out)."""
    from reapkit.compress.prune import save_non_uniform

    plan = copy.deepcopy(plan)
    entry = {k: v for k, v in record.to_dict().items() if k != "losses"}
    plan.provenance["recovery"] = [*plan.provenance.get("recovery", []), entry]
    return save_non_uniform(student, plan, out, tokenizer=tokenizer, force=force)  # a uniform plan: stock


#: The file beside a pruned checkpoint that says what was kept (written by `save_pruned`).
PLAN_FILE = "pruning_plan.json"


def read_pruned_plan(pruned) -> PruningPlan:
    """The `PruningPlan` saved beside the pruned checkpoint `pruned`; a folder without one is refused."""
    path = Path(pruned) / PLAN_FILE
    if not path.is_file():
        merged = (Path(pruned) / "merge_plan.json").is_file()
        hint = (
            "it is a merged checkpoint (merge_plan.json), which recover does not handle"
            if merged
            else "recover a checkpoint written by `reapkit prune` (or save_pruned)"
        )
        raise InvalidInput(f"{pruned} is not a pruned checkpoint: it has no {PLAN_FILE}; {hint}")
    return PruningPlan.load(path)


def teacher_name(plan: PruningPlan, teacher=None) -> str:
    """The unpruned model to distil from: `teacher`, or the source model the plan records."""
    if teacher is not None:
        return str(teacher)
    source = plan.provenance.get("source_model")
    if not source:
        raise InvalidInput(
            f"the {PLAN_FILE} does not record the model it was pruned from; pass the unpruned model as --teacher MODEL"
        )
    return str(source)


def recover_checkpoint(
    pruned,
    out,
    batches,
    *,
    teacher=None,
    steps: int | None = None,
    epochs: int = 1,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    dtype="auto",
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, Recovery]:
    """Load the pruned checkpoint `pruned` and its teacher (`teacher`, else the source model its
    pruning_plan.json records), check they belong together, recover the routers on `batches` and
    save to `out` (`save_recovered`). Returns (out, the `Recovery`)."""
    from reapkit.compress.prune import load_pruned
    from reapkit.model.demo import resolve_name
    from reapkit.model.loading import load_model, load_tokenizer, torch_dtype

    plan = read_pruned_plan(pruned)
    student = load_pruned(pruned, dtype=torch_dtype(dtype))
    teacher_model, _ = load_model(resolve_name(teacher_name(plan, teacher)), dtype=dtype)
    check_teacher(teacher_model, plan, student)
    record = recover(student, teacher_model, batches, steps=steps, epochs=epochs, lr=lr, seed=seed, progress=progress)
    out = save_recovered(student, plan, record, out, tokenizer=load_tokenizer(str(pruned)), force=force)
    return out, record
