"""The super-expert rule against a step-by-step recomputation of the official REAP code, on fixed arrays."""

import pytest
import torch

from reapkit.observe.observations import Observations
from reapkit.select.plan import super_experts


def observations(peaks, layers=None) -> Observations:
    """Observations holding only `max_signed` (rows: MoE layers, columns: experts)."""
    peaks = torch.as_tensor(peaks, dtype=torch.float64)
    layers = list(range(len(peaks))) if layers is None else layers
    meta = {"layers": layers, "num_experts": [peaks.shape[1]] * len(peaks), "top_k": 2, "missing": {}}
    return Observations({"code": {"max_signed": peaks}}, meta)


def official(rows, include_last_layers=False):
    """CerebrasResearch/reap @1970473 src/reap/model_util.py:240-262 get_super_expert_indices, step by step:
    float32 max_activations of every layer concatenated, quantile 99.5 / 100 and max / 10, the larger wins,
    strict >, and without include_last_layers the rows from int(num_layers * 0.75) on cleared."""
    per_layer = [torch.as_tensor(r, dtype=torch.float32) for r in rows]
    num_layers = len(per_layer)
    pooled = torch.cat(per_layer).flatten()
    final_threshold = max(torch.quantile(pooled, 99.5 / 100.0).item(), pooled.max().item() / 10)
    mask = pooled.reshape(num_layers, -1) > final_threshold
    if not include_last_layers:
        mask[int(num_layers * 0.75) :, :] = False
    found = {}
    for row, expert in torch.argwhere(mask).tolist():
        found.setdefault(row, []).append(expert)
    return found


def as_rows(found, layers):
    return {layers.index(layer): experts for layer, experts in found.items()}


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("include_last_layers", [False, True])
def test_equals_the_official_rule(num_layers, include_last_layers):
    g = torch.Generator().manual_seed(num_layers)
    peaks = torch.rand(num_layers, 16, generator=g).double()
    peaks[torch.rand(num_layers, 16, generator=g) < 0.05] *= 40  # a few outliers
    layers = [3 + 2 * i for i in range(num_layers)]  # decoder indices of MoE layers after dense ones
    found = super_experts(observations(peaks, layers), include_last_layers=include_last_layers)
    assert as_rows(found, layers) == official(peaks, include_last_layers)


def test_the_last_layers_count_in_the_pool_but_are_never_flagged():
    peaks = torch.ones(4, 8)
    peaks[0, 1] = 20.0  # above every other value, but below a tenth of the last layer's peak
    peaks[3, 2] = 400.0
    # a pool of the first three layers alone would flag expert 1 of layer 0; the whole pool does not
    assert super_experts(observations(peaks)) == {} == official(peaks)
    assert super_experts(observations(peaks), include_last_layers=True) == {3: [2]} == official(peaks, True)


def test_three_layers_flag_only_the_first_two():
    peaks = torch.ones(3, 128)  # 384 values: rank 0.995 * 383 = 381.085 lies between a 1 and the first 30
    peaks[1, 5], peaks[2, 7] = 30.0, 30.0
    assert official(peaks, True) == {1: [5], 2: [7]}
    assert super_experts(observations(peaks)) == {1: [5]} == official(peaks)  # int(3 * 0.75) = 2 layers


def test_linear_interpolation_and_a_strict_threshold():
    peaks = torch.arange(200, dtype=torch.float64).reshape(2, 100)
    # rank 0.995 * 199 = 198.005: the threshold is 198.005, so only 199 (layer 1, expert 99) is above it
    assert super_experts(observations(peaks), include_last_layers=True) == {1: [99]}
    ties = torch.full((2, 8), 3.0)  # every peak equals the threshold: none is strictly above
    assert super_experts(observations(ties), include_last_layers=True) == {} == official(ties, True)
    ties[0, :2] = 30.0  # two tied outliers among 16 values: rank 14.925 lies between them, so the
    assert super_experts(observations(ties), include_last_layers=True) == {} == official(ties, True)  # threshold is 30
    ties[0, 2] = 1000.0  # one larger still: the percentile, 30 + 0.925 * 970 = 927.25, lies below it
    assert super_experts(observations(ties), include_last_layers=True) == {0: [2]} == official(ties, True)
