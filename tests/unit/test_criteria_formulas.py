"""Every criterion scored from observations equals its formula, recomputed per token from the weights; every
statistic a criterion needs and observations lack is refused with the option that records it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from reapkit.errors import InvalidInput, MissingStatistic
from reapkit.model.discover import architecture_for
from reapkit.observe.recorder import observe
from reapkit.observe.statistics import DEFAULT, FROM_WEIGHTS, OPTIONAL, chosen
from reapkit.run.parser import build_parser
from reapkit.select import criteria
from reapkit.select.criteria import score, statistics_of

#: the router probability p_j(t) of each family, from its logits (qwen3_moe and mixtral: softmax;
#: deepseek_v3: sigmoid, before its selection bias and group limit)
PROBABILITY = {"qwen3_moe": lambda z: z.softmax(-1), "mixtral": lambda z: z.softmax(-1), "deepseek_v3": torch.sigmoid}


def expert_output(experts, j: int, x: torch.Tensor) -> torch.Tensor:
    """f_j(x) with plain matmuls: down_j (silu(gate_j x) * up_j x), gate and up the halves of gate_up_proj[j]."""
    gate_up = experts.gate_up_proj[j].detach().double()
    gate, up = (x @ gate_up.T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ experts.down_proj[j].detach().double().T


def per_token(model, batches) -> dict[str, np.ndarray]:
    """The sums every criterion reads, accumulated token by token: the router's gates and chosen experts are
    what the model passed its experts module (a forward pre-hook), the router probabilities and every expert
    output are computed here from the weights."""
    arch = architecture_for(model)
    blocks = [block for _, block in arch.moe_blocks(model)]
    E = arch.experts_of(blocks[0]).num_experts
    shape = (len(blocks), E)
    acc = {k: np.zeros(shape) for k in ("count", "gate", "norm", "reap", "sq", "abs_peak", "peak", "prob")}
    acc["output"] = np.zeros((*shape, model.config.hidden_size))
    probability = PROBABILITY[model.config.model_type]
    for batch in batches:
        seen = {}
        hooks = [
            arch.experts_of(block).register_forward_pre_hook(
                lambda m, args, pos=pos, seen=seen: seen.__setitem__(pos, [a.detach() for a in args[:3]])
            )
            for pos, block in enumerate(blocks)
        ]
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        for hook in hooks:
            hook.remove()
        valid = batch.attention_mask.reshape(-1).bool()
        for pos, block in enumerate(blocks):
            experts = arch.experts_of(block)
            x, chosen_experts, gates = (a.reshape(len(valid), -1) for a in seen[pos])
            x = x.double()
            p = probability(x @ arch.router_weight_of(block).detach().double().T)
            acc["prob"][pos] += p[valid].sum(0).numpy()
            for t in valid.nonzero().flatten().tolist():
                for j, g in zip(chosen_experts[t].tolist(), gates[t].double().tolist()):
                    f = expert_output(experts, j, x[t]).numpy()
                    norm = np.linalg.norm(f)
                    acc["count"][pos, j] += 1
                    acc["gate"][pos, j] += g
                    acc["norm"][pos, j] += norm
                    acc["reap"][pos, j] += g * norm
                    acc["sq"][pos, j] += norm**2
                    acc["abs_peak"][pos, j] = max(acc["abs_peak"][pos, j], np.abs(f).max())
                    acc["peak"][pos, j] = max(acc["peak"][pos, j], f.max())  # from 0, as REAP's max_activations
                    acc["output"][pos, j] += f
    return acc


def formulas(acc) -> dict[str, np.ndarray]:
    """Each criterion from docs/criteria.md, written out (0 for experts with no tokens)."""
    n = np.maximum(acc["count"], 1)
    return {
        "reap": acc["reap"] / n,
        "frequency": acc["count"],
        "soft_frequency": acc["prob"],
        "ean_sum": acc["norm"],
        "ean_mean": acc["norm"] / n,
        "weighted_ean_sum": acc["reap"],
        "max_activation": acc["abs_peak"],
        "ean_ca": np.linalg.norm(acc["output"] / n[..., None], axis=-1),
        "msan": acc["sq"] / n,
    }


#: scored from something else than observed tokens: noise (random) or the checkpoint's weights (aimer, test_aimer)
NOT_FROM_TOKENS = {"random", "aimer"}


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "deepseek_v3"])
def test_every_criterion_equals_its_per_token_formula(name, batches):
    model = tiny_model(name)
    obs = observe(model, batches, progress=False, statistics="all")
    acc = per_token(model, batches)
    expected = formulas(acc)
    assert set(expected) == set(criteria._BUILT_IN) - NOT_FROM_TOKENS  # a new criterion needs its formula here
    for criterion, values in expected.items():
        got = score(obs, criterion)
        np.testing.assert_allclose(got, values, rtol=1e-4, atol=1e-6, err_msg=f"{name} {criterion}")
        assert got.std() > 0, criterion
    # and the statistic super-expert protection reads
    np.testing.assert_allclose(obs.pooled()["max_signed"].numpy(), acc["peak"], rtol=1e-4, atol=1e-6)


def test_a_missing_statistic_is_refused_with_the_option_that_records_it(batches):
    full = observe(tiny_model("qwen3_moe"), batches, progress=False, statistics="all")
    needed = {s: c for c in criteria._BUILT_IN for s in statistics_of(c)}  # each statistic once
    assert set(needed) - set(FROM_WEIGHTS) <= set(DEFAULT) | set(OPTIONAL)
    for statistic, criterion in sorted(needed.items()):
        obs = type(full)({d: {k: v for k, v in s.items() if k != statistic} for d, s in full.stats.items()}, full.meta)
        with pytest.raises(MissingStatistic) as refused:
            score(obs, criterion)
        message = str(refused.value)
        assert f"criterion {criterion!r} needs the statistic" in message and f"'{statistic}'" in message
        assert "\n" not in message
        if statistic in OPTIONAL:  # the option exists and records it
            assert f"--statistics {statistic}" in message
            args = build_parser().parse_args(
                ["observe", "demo", "--data", "code:1", "--out", "o", "--statistics", statistic]
            )
            assert statistic in chosen(args.statistics)
        elif statistic in FROM_WEIGHTS:
            assert "give the model folder instead of observations" in message
            with pytest.raises(InvalidInput, match=f"{statistic} is not recorded by observing; read it from"):
                chosen([statistic])
        else:
            assert "reapkit observe" in message
