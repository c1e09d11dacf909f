"""Record per-expert statistics inside the model's own expert computation.

    >>> from reapkit.data import calibration_batches
    >>> obs = observe(model, calibration_batches("code:16,prose:16", tokenizer))
    >>> obs.stats["code"]["reap_sum"].shape          # [moe layers, experts]
    torch.Size([4, 16])

While observing, the model runs reapkit's experts implementation (registered with transformers'
`ExpertsInterface`): it computes each routed expert once, exactly as the default grouped
implementation does, and updates per-domain accumulators with vectorised tensor ops on the
model's device. A forward hook on each router adds the router probability mass. Padding tokens
never count. Architectures whose block scales the experts' input by the gate (llama4) are
observed with a hook on their (dense) experts module instead; see `Architecture.gated_input`.
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm
from transformers.integrations import moe as hf_moe

from reapkit import __version__
from reapkit.model.discover import architecture_for
from reapkit.model.hooks import forward_hooks
from reapkit.model.loading import input_device
from reapkit.model.records import SCORING, Architecture
from reapkit.observe.observations import Observations, fingerprint

IMPLEMENTATION = "reapkit_observe"

#: per-expert statistics, each [layers, experts]; plus "output_sum" [layers, experts, hidden],
#: "coselect" [layers, experts, experts] (tokens that selected both experts i and j; the diagonal
#: is "count") and "tokens" [layers] (non-padding tokens seen by the router).
EXPERT_STATS = ("count", "gate_sum", "norm_sum", "reap_sum", "max_activation", "prob_sum")

_active: _Recorder | None = None


class _Recorder:
    """Per-domain accumulators for the MoE layers of one model."""

    def __init__(self, num_layers: int, num_experts: int, hidden: int, device):
        self.shape = (num_layers, num_experts, hidden)
        self.device = device  # of the first MoE layer; later layers' rows are moved here (device_map)
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        self.position: dict[int, int] = {}  # id(module) -> MoE layer position
        self.valid: torch.Tensor | None = None  # [tokens] float, 1 on real tokens
        self.current: dict[str, torch.Tensor] | None = None
        self.last_router: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def start_batch(self, domain: str, attention_mask: torch.Tensor):
        if domain not in self.stats:
            L, E, H = self.shape
            zeros = lambda *s, dtype=self.dtype: torch.zeros(*s, dtype=dtype, device=self.device)  # noqa: E731
            self.stats[domain] = {name: zeros(L, E) for name in EXPERT_STATS}
            self.stats[domain]["output_sum"] = zeros(L, E, H, dtype=torch.float32)
            self.stats[domain]["coselect"] = zeros(L, E, E)
            self.stats[domain]["tokens"] = zeros(L)
        self.current = self.stats[domain]
        self.valid = attention_mask.reshape(-1).to(self.device, self.dtype)

    def record_router(self, pos: int, probs: torch.Tensor):
        acc, valid = self.current, self.valid
        acc["prob_sum"][pos, : probs.shape[1]] += (probs.to(self.device, self.dtype) * valid[:, None]).sum(0)
        acc["tokens"][pos] += valid.sum()

    def record_coselect(self, pos: int, top_k_index: torch.Tensor):
        """`top_k_index` [tokens, k]: one index_add_ counts every pair (i, j) a real token selected."""
        E, k = self.shape[1], top_k_index.shape[1]
        top_k_index = top_k_index.to(self.device)
        pairs = (top_k_index[:, :, None] * E + top_k_index[:, None, :]).reshape(-1)
        self.current["coselect"][pos].view(-1).index_add_(0, pairs, self.valid.repeat_interleave(k * k))

    def record_routed(self, pos, expert_ids, gates, outputs, token_ids, selected=None):
        """One row per (token, expert) assignment: expert id, gate value, output before gating."""
        acc, device, dtype = self.current, self.device, self.dtype
        expert_ids, token_ids, outputs = expert_ids.to(device), token_ids.to(device), outputs.to(device).float()
        valid = self.valid[token_ids]
        if selected is not None:
            valid = valid * selected.to(device, dtype)
        norms = outputs.norm(dim=-1).to(dtype)
        gates = gates.to(device, dtype) * valid
        acc["count"][pos].index_add_(0, expert_ids, valid)
        acc["gate_sum"][pos].index_add_(0, expert_ids, gates)
        acc["norm_sum"][pos].index_add_(0, expert_ids, norms * valid)
        acc["reap_sum"][pos].index_add_(0, expert_ids, norms * gates)
        peak = outputs.abs().amax(dim=-1).to(dtype) * valid
        acc["max_activation"][pos].scatter_reduce_(0, expert_ids, peak, "amax")
        acc["output_sum"][pos].index_add_(0, expert_ids, outputs * valid.float()[:, None])


def observed_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The default grouped experts computation, recording statistics when an observer is active."""
    device = hidden_states.device
    num_top_k = top_k_index.size(-1)
    num_tokens, hidden_dim = hidden_states.shape
    weights = top_k_weights.reshape(-1)
    expert_ids, perm = torch.sort(top_k_index.reshape(-1))
    token_ids = perm // num_top_k
    hist_in = expert_ids.float() if device.type in ("cpu", "mps") else expert_ids.int()
    per_expert = torch.histc(hist_in, bins=self.num_experts, min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(per_expert, dim=0, dtype=torch.int32)

    up = self.gate_up_proj if self.has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias)[expert_ids] if self.has_bias else None
    out = hf_moe._grouped_linear(hidden_states[token_ids], up, offsets, bias=up_bias, is_transposed=self.is_transposed)
    out = self._apply_gate(out) if self.has_gate else self.act_fn(out)
    down_bias = self.down_proj_bias[expert_ids] if self.has_bias else None
    out = hf_moe._grouped_linear(out, self.down_proj, offsets, bias=down_bias, is_transposed=self.is_transposed)
    if self.has_post_expert_norm:
        out = self.post_expert_norm(out)

    gates = weights[perm]
    recorder = _active
    if recorder is not None and id(self) in recorder.position:
        pos = recorder.position[id(self)]
        recorder.record_routed(pos, expert_ids, gates, out, token_ids)
        recorder.record_coselect(pos, top_k_index)

    weighted = out * gates.unsqueeze(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.size(0), device=device)
    final = weighted[inverse].view(num_tokens, num_top_k, hidden_dim).sum(dim=1)
    return final.to(hidden_states.dtype)


hf_moe.ExpertsInterface.register(IMPLEMENTATION, observed_experts_forward)


def _router_probs(arch: Architecture, output) -> torch.Tensor:
    logits = output[arch.logits_index] if isinstance(output, tuple) else output
    return SCORING[arch.scoring](logits.float().reshape(-1, logits.shape[-1]))


@contextlib.contextmanager
def recording(model: torch.nn.Module, device=None):
    """Context manager: while inside, forwards of `model` feed a `_Recorder` (yielded).

    The accumulators live on `device` (default: where the model's token ids go); each layer's
    rows are moved there from whichever device holds that layer (device maps, offloading).
    """
    global _active
    arch = architecture_for(model)
    blocks = list(arch.moe_blocks(model))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no MoE layers reapkit can find under {arch.layers!r}.{arch.block}"
        )
    num_experts = max(arch.experts_of(b).num_experts for _, b in blocks)
    device = input_device(model) if device is None else torch.device(device)
    recorder = _Recorder(len(blocks), num_experts, model.config.get_text_config().hidden_size, device)
    hooks = {}
    for pos, (_, block) in enumerate(blocks):
        router, experts = arch.router_of(block), arch.experts_of(block)
        recorder.position[id(experts)] = pos

        def on_router(module, args, output, pos=pos):
            recorder.record_router(pos, _router_probs(arch, output))
            if arch.gated_input:
                recorder.last_router[pos] = (output[0], output[arch.logits_index])

        hooks[router] = on_router
        if arch.gated_input:
            hooks[experts] = _gated_input_hook(recorder, pos, block)

    previous = None
    if not arch.gated_input:
        previous = model.get_experts_implementation()
        model.set_experts_implementation(IMPLEMENTATION)
    _active, outer = recorder, _active
    try:
        with forward_hooks(hooks):
            yield recorder
    finally:
        _active = outer
        if previous is not None:
            model.set_experts_implementation(previous)


def _gated_input_hook(recorder: _Recorder, pos: int, block):
    """Experts that see gate * x for every expert and token (llama4): record f = output / gate."""
    top_k = block.top_k

    def hook(module, args, output):
        scores, logits = recorder.last_router[pos]  # [T, E] gates (0 where not routed), logits
        num_experts, num_tokens = scores.shape[1], scores.shape[0]
        top_k_index = torch.topk(logits, top_k, dim=1).indices
        selected = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, top_k_index, 1.0)
        gates = scores.t().reshape(-1).float()
        outputs = output.view(num_experts * num_tokens, -1).float() / gates.clamp_min(1e-12)[:, None]
        expert_ids = torch.arange(num_experts, device=output.device).repeat_interleave(num_tokens)
        token_ids = torch.arange(num_tokens, device=output.device).repeat(num_experts)
        recorder.record_routed(pos, expert_ids, gates, outputs, token_ids, selected=selected.t().reshape(-1))
        recorder.record_coselect(pos, top_k_index)

    return hook


@torch.no_grad()
def observe(model, batches, *, progress: bool = True, calibration: dict | None = None, partial=None) -> Observations:
    """Run `batches` (a list of `reapkit.data.Batch`) through `model` and return its `Observations`.

    `calibration` is stored in the metadata (spec, content hash, ...); the content hash of the
    token ids of every domain is added to it. `partial` (a `reapkit.observe.resume.PartialObservations`)
    saves the running sums every N batches and resumes from them.
    """
    batches = list(batches)
    model.eval()
    device = input_device(model)
    with recording(model) as recorder:
        done = partial.restore(recorder, model, batches) if partial is not None else 0
        bar = tqdm(batches[done:], desc="observe", unit="batch", disable=not progress, initial=done, total=len(batches))
        for number, batch in enumerate(bar, done + 1):
            recorder.start_batch(batch.domain, batch.attention_mask)
            model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
            if partial is not None:
                partial.after_batch(recorder, number)
    return observations_from(model, recorder, batches, calibration)


def observations_from(model, recorder: _Recorder, batches, calibration: dict | None = None) -> Observations:
    """The `Observations` a finished `recording` of `batches` through `model` holds (statistics moved to the CPU)."""
    from reapkit.data import content_hash

    arch = architecture_for(model)
    if not recorder.stats:
        raise ValueError("no calibration batches were given; pass at least one batch of token ids")
    domains = sorted(recorder.stats)
    calibration = dict(calibration or {})
    calibration["content_hash"] = {d: content_hash([b for b in batches if b.domain == d]) for d in domains}
    calibration["tokens"] = {d: int(recorder.stats[d]["tokens"][0]) for d in domains}
    config = model.config.get_text_config()
    meta = {
        "reapkit_version": __version__,
        "architecture": arch.model_type,
        "fingerprint": fingerprint(model),
        "layers": [i for i, _ in arch.moe_blocks(model)],
        "num_experts": [arch.experts_of(b).num_experts for _, b in arch.moe_blocks(model)],
        "top_k": arch.top_k(config),
        "n_group": arch.n_group(config),
        "topk_group": arch.topk_group(config),
        "calibration": calibration,
    }
    stats = {d: {k: v.cpu() for k, v in recorder.stats[d].items()} for d in domains}
    return Observations(stats=stats, meta=meta)


def observe_cached(
    model, batches, cache_dir, *, calibration: dict | None = None, progress: bool = True
) -> Observations:
    """`observe`, reusing observations saved under `cache_dir` for the same model and token ids.

    The cache key is the model fingerprint plus the content hash of the batches, so a changed
    model, spec, tokenizer or max length misses the cache.
    """
    import hashlib
    import json
    from pathlib import Path

    from reapkit.data import content_hash

    key = json.dumps([fingerprint(model), content_hash(batches)], sort_keys=True)
    path = Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]
    if path.is_dir():
        return Observations.load(path, model=model)
    obs = observe(model, batches, progress=progress, calibration=calibration)
    obs.save(path, force=True)
    return obs
