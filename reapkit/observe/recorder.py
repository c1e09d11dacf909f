"""Record per-expert statistics inside the model's own expert computation.

    >>> from reapkit.data import calibration_batches
    >>> obs = observe(model, calibration_batches("code:16,prose:16", tokenizer))
    >>> obs.stats["code"]["reap_sum"].shape          # [moe layers, experts]
    torch.Size([4, 16])
    >>> obs = observe(model, batches, statistics=["coselect"])   # and an optional statistic
    >>> obs = observe(model, batches, statistics=["all_output_sum"], progress=False)  # every expert on every token
    >>> obs.stats["code"]["all_output_sum"].shape    # [moe layers, experts, hidden]
    torch.Size([4, 16, 128])

While observing, the model runs reapkit's experts implementation (registered with transformers'
`ExpertsInterface`): it computes each routed expert once, exactly as the default grouped
implementation does, and updates per-domain accumulators with vectorised tensor ops on the
model's device. A forward hook on each router adds the router probability mass. Padding tokens
never count. Architectures whose block scales the experts' input by the gate (llama4) are
observed with a hook on their (dense) experts module instead; see `Architecture.gated_input`.

`all_output_sum` (``--all-token-outputs``) runs every expert on every real token once more, one
dense matmul per expert over all tokens for the gate/up projection; the down projection is linear,
so it is applied to the sum of the activations (about E/k times the experts' routed work, minus a
third). Models whose experts scale their input by the gate (llama4) cannot record it.
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm
from transformers.integrations import moe as hf_moe

from reapkit import __version__
from reapkit.errors import InvalidInput, UnknownArchitectureError
from reapkit.model.discover import architecture_for
from reapkit.model.hooks import forward_hooks
from reapkit.model.layer import moe_layers
from reapkit.model.loading import input_device
from reapkit.model.records import SCORING, Architecture
from reapkit.observe.observations import Observations, fingerprint, model_shape
from reapkit.observe.statistics import ALL_TOKENS, DEFAULT, STATISTICS, chosen, not_recorded

IMPLEMENTATION = "reapkit_observe"

#: the per-expert sums of `_Recorder.record_routed`, in the order of its one `index_add_`
_ROUTED_SUMS = ("count", "gate_sum", "norm_sum", "reap_sum", "sq_norm_sum")

_active: _Recorder | None = None


class _Recorder:
    """Per-domain accumulators of the statistics `names` (see `reapkit.observe.statistics`) for one model."""

    def __init__(self, num_layers: int, num_experts: int, hidden: int, device, names=DEFAULT):
        self.shape = (num_layers, num_experts, hidden)
        self.names = tuple(names)
        self.device = device  # of the first MoE layer; later layers' rows are moved here (device_map)
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        self.position: dict[int, int] = {}  # id(module) -> MoE layer position
        self.keep: torch.Tensor | None = None  # [tokens] bool, True on real tokens
        self.weights: torch.Tensor | None = None  # the same as 1.0 / 0.0 in the accumulators' dtype
        self.tokens: torch.Tensor | None = None  # real tokens in the batch (a tensor: no device sync)
        self.current: dict[str, torch.Tensor] | None = None
        self.last_router: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_probs: dict[int, torch.Tensor] = {}  # [tokens, E] router probabilities of the layer's last batch

    def zeros(self) -> dict[str, torch.Tensor]:
        """Empty accumulators of every statistic recorded."""
        out = {}
        for name in self.names:
            statistic = STATISTICS[name]
            dtype = statistic.torch_dtype if statistic.torch_dtype != torch.float64 else self.dtype
            out[name] = torch.zeros(statistic.shape(*self.shape), dtype=dtype, device=self.device)
        return out

    def start_batch(self, domain: str, attention_mask: torch.Tensor):
        if domain not in self.stats:
            self.stats[domain] = self.zeros()
        self.current = self.stats[domain]
        mask = attention_mask.reshape(-1).to(self.device)
        self.keep, self.weights = mask.bool(), mask.to(self.dtype)
        self.tokens = self.weights.sum()

    def record_router(self, pos: int, probs: torch.Tensor):
        acc = self.current
        acc["prob_sum"][pos, : probs.shape[1]] += self.weights @ probs.to(self.device, self.dtype)
        if "prob_output_sum" in acc:
            self.last_probs[pos] = probs  # weights the experts' all-token outputs (record_all_outputs)
        acc["tokens"][pos] += self.tokens

    def record_router_logits(self, pos: int, logits: torch.Tensor):
        """`logits` [tokens, E] of this batch: the Gram matrix of the logit columns and the batch's 1 - cos.

        Both over the real tokens only; the second is weighted by the batch's token count, so that
        dividing its sum by `tokens` gives the token-weighted mean over batches the REAP code records.
        """
        acc = self.current
        if "router_gram" not in acc and "router_distance_sum" not in acc:
            return
        z = logits.reshape(-1, logits.shape[-1]).to(self.device, self.dtype)[self.keep]  # [real tokens, E]
        gram = z.T @ z
        E = gram.shape[0]
        if "router_gram" in acc:
            acc["router_gram"][pos, :E, :E] += gram
        if "router_distance_sum" in acc:
            norms = gram.diagonal().sqrt()
            cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-8)
            acc["router_distance_sum"][pos, :E, :E] += self.tokens * (1 - cosine)

    def record_all_outputs(self, pos: int, experts, hidden_states: torch.Tensor):
        """Each expert of `experts` on every real token of `hidden_states` [tokens, H]: Σ f_j(t) into
        `all_output_sum`, Σ p_j(t) f_j(t) into `prob_output_sum` (p: this layer's router probabilities).

        One dense matmul per expert over all tokens for the gate/up projection; the down projection
        is linear, so it is applied once to the (weighted) sum of the activations (a model whose
        experts end in a norm, `has_post_expert_norm`, projects every token instead).
        """
        names = [n for n in ("all_output_sum", "prob_output_sum") if n in self.current]
        if not names:
            return
        keep = self.keep.to(hidden_states.device)
        x = hidden_states[keep]
        probs = self.last_probs.pop(pos)[keep].float() if "prob_output_sum" in names else None
        up = experts.gate_up_proj if experts.has_gate else experts.up_proj
        up_bias = (
            (experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias) if experts.has_bias else None
        )
        down, down_bias = experts.down_proj, experts.down_proj_bias if experts.has_bias else None
        sums = {n: torch.empty(experts.num_experts, self.shape[2], dtype=torch.float32, device=x.device) for n in names}
        for e in range(experts.num_experts):
            h = x @ up[e] if experts.is_transposed else x @ up[e].T
            if up_bias is not None:
                h = h + up_bias[e]
            h = experts._apply_gate(h) if experts.has_gate else experts.act_fn(h)
            weights = {"all_output_sum": None, "prob_output_sum": None if probs is None else probs[:, e].to(h.device)}
            if experts.has_post_expert_norm:
                out = h @ down[e] if experts.is_transposed else h @ down[e].T
                out = experts.post_expert_norm(out + down_bias[e] if down_bias is not None else out).float()
                for n in names:
                    sums[n][e] = out.sum(0) if weights[n] is None else weights[n] @ out
                continue
            for n in names:
                w = weights[n]
                total = h.float().sum(0, keepdim=True) if w is None else (w @ h.float())[None]
                out = total @ down[e].float() if experts.is_transposed else total @ down[e].float().T
                mass = x.shape[0] if w is None else w.sum()
                sums[n][e] = out[0] + (mass * down_bias[e].float() if down_bias is not None else 0)
        for n in names:
            self.current[n][pos, : experts.num_experts] += sums[n].to(self.device)

    def record_coselect(self, pos: int, top_k_index: torch.Tensor):
        """`top_k_index` [tokens, k]: entry (i, j) counts the real tokens that selected both i and j."""
        if "coselect" not in self.current:
            return
        top_k_index, E = top_k_index.to(self.device), self.shape[1]
        picked = torch.zeros(len(top_k_index), E, device=self.device)  # [tokens, E]: 1 where a real token chose
        picked.scatter_(1, top_k_index, self.keep[:, None].float().expand_as(top_k_index))
        self.current["coselect"][pos] += picked.T @ picked  # exact: float32 counts below 2**24 tokens

    def record_routed(self, pos, expert_ids, gates, outputs, token_ids, selected=None):
        """One row per (token, expert) assignment: expert id, gate value, output before gating.

        Rows of padding tokens (and, with `selected`, of unselected experts) go to a sink row E that
        is dropped, so no row is multiplied by a mask.
        """
        acc, device, dtype, E = self.current, self.device, self.dtype, self.shape[1]
        expert_ids, outputs = expert_ids.to(device), outputs.to(device)
        keep = self.keep[token_ids.to(device)]
        if selected is not None:
            keep = keep & selected.to(device, torch.bool)
        sink = torch.where(keep, expert_ids, E)
        norms = torch.linalg.vector_norm(outputs, dim=-1, dtype=torch.float32)
        gates = gates.to(device, torch.float32)
        rows = torch.stack((torch.ones_like(gates), gates, norms, norms * gates, norms * norms), 1).to(dtype)
        sums = rows.new_zeros(E + 1, len(_ROUTED_SUMS)).index_add_(0, sink, rows)
        for column, name in enumerate(_ROUTED_SUMS):
            if name in acc:  # observations saved before sq_norm_sum existed are extended without it
                acc[name][pos] += sums[:E, column]
        if "max_activation" in acc or "max_signed" in acc:
            highest = outputs.amax(dim=-1)
        if "max_activation" in acc:  # max |element|, without an abs() copy of the outputs
            peaks = torch.maximum(highest, outputs.amin(dim=-1).neg()).to(dtype)
            acc["max_activation"][pos].scatter_reduce_(0, expert_ids, torch.where(keep, peaks, 0), "amax")
        if "max_signed" in acc:  # the accumulator starts at 0, as REAP's max_activations does
            acc["max_signed"][pos].scatter_reduce_(0, expert_ids, torch.where(keep, highest.to(dtype), 0), "amax")
        if "output_sum" in acc:
            total = outputs.new_zeros(E + 1, outputs.shape[1], dtype=torch.float32)
            acc["output_sum"][pos] += total.index_add_(0, sink, outputs.float())[:E]


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
        recorder.record_all_outputs(pos, self, hidden_states)

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
def recording(model: torch.nn.Module, device=None, *, statistics=None):
    """Context manager: while inside, forwards of `model` feed a `_Recorder` (yielded).

    `statistics`: the optional statistics to record besides the default ones (see
    `reapkit.observe.statistics.chosen`). The accumulators live on `device` (default: where the
    model's token ids go); each layer's rows are moved there from whichever device holds that
    layer (device maps, offloading).
    """
    global _active
    names = chosen(statistics)
    arch = architecture_for(model)
    layers = moe_layers(model, arch)
    if not layers:
        raise UnknownArchitectureError(
            f"{type(model).__name__} has no MoE layers reapkit can find under {arch.layers!r}.{arch.block}; "
            "observe a Mixture-of-Experts model"
        )
    if arch.gated_input and "all" in ([statistics] if isinstance(statistics, str) else statistics or []):
        names = tuple(n for n in names if n not in ALL_TOKENS)  # "all": every statistic this model can give
    if arch.gated_input and any(n in names for n in ALL_TOKENS):
        raise InvalidInput(
            f"{arch.model_type} scales each expert's input by its gate, so its experts cannot be run on every token "
            "as they are; observe it without --all-token-outputs (all_output_sum) and prob_output_sum"
        )
    num_experts = max(layer.num_experts for layer in layers)
    device = input_device(model) if device is None else torch.device(device)
    recorder = _Recorder(len(layers), num_experts, model.config.get_text_config().hidden_size, device, names)
    hooks = {}
    for pos, layer in enumerate(layers):
        recorder.position[id(layer.experts)] = pos

        def on_router(module, args, output, pos=pos):
            recorder.record_router(pos, _router_probs(arch, output))
            recorder.record_router_logits(pos, output[arch.logits_index] if isinstance(output, tuple) else output)
            if arch.gated_input:
                recorder.last_router[pos] = (output[0], output[arch.logits_index])

        hooks[layer.router] = on_router
        if arch.gated_input:
            hooks[layer.experts] = _gated_input_hook(recorder, pos, layer.top_k)

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


def _gated_input_hook(recorder: _Recorder, pos: int, top_k: int):
    """Experts that see gate * x for every expert and token (llama4): record f = output / gate."""

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
def observe(
    model, batches, *, statistics=None, progress: bool = True, calibration: dict | None = None, partial=None
) -> Observations:
    """Run `batches` (a list of `reapkit.data.Batch`) through `model` and return its `Observations`.

    `statistics` names optional statistics to record besides the default ones (``["coselect"]``,
    ``"all"``; see `reapkit.observe.statistics`). `calibration` is stored in the metadata (spec,
    content hash, ...); the content hash of the token ids of every domain is added to it.
    `partial` (a `reapkit.observe.resume.PartialObservations`) saves the running sums every N
    batches and resumes from them.
    """
    batches = list(batches)
    model.eval()
    device = input_device(model)
    with recording(model, statistics=statistics) as recorder:
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

    if not recorder.stats:
        raise InvalidInput("no calibration batches were given; pass at least one batch of token ids")
    domains = sorted(recorder.stats)
    calibration = dict(calibration or {})
    calibration["content_hash"] = {d: content_hash([b for b in batches if b.domain == d]) for d in domains}
    calibration["tokens"] = {d: int(recorder.stats[d]["tokens"][0]) for d in domains}
    meta = {
        "reapkit_version": __version__,
        **model_shape(model),
        "calibration": calibration,
        "missing": not_recorded(recorder.names),
    }
    stats = {d: {k: v.to("cpu", STATISTICS[k].torch_dtype) for k, v in recorder.stats[d].items()} for d in domains}
    return Observations(stats=stats, meta=meta)


def observe_cached(
    model, batches, cache_dir, *, statistics=None, calibration: dict | None = None, progress: bool = True
) -> Observations:
    """`observe`, reusing observations saved under `cache_dir` for the same model, token ids and statistics.

    The cache key is the model fingerprint, the content hash of the batches and the statistics
    recorded, so a changed model, spec, tokenizer or max length misses the cache.
    """
    import hashlib
    import json
    from pathlib import Path

    from reapkit.data import content_hash

    key = json.dumps([fingerprint(model), content_hash(batches), chosen(statistics)], sort_keys=True)
    path = Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]
    if path.is_dir():
        return Observations.load(path, model=model)
    obs = observe(model, batches, statistics=statistics, progress=progress, calibration=calibration)
    obs.save(path, force=True)
    return obs
