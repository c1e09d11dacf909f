"""Train the bundled demo model (data/demo): tokenizer, model, metrics and model card.

    python scripts/train_demo.py train --out data/demo --seed 0 --tokens 4500000   # a few tens of minutes, 2 CPU cores
    python scripts/train_demo.py evaluate            # the evaluation of the bundled model, as JSON
    python scripts/train_demo.py card                # re-evaluate it and rewrite its MODEL_CARD.md

`train` trains a byte-level BPE tokenizer on the train split of the built-in domains
(:mod:`reapkit.data`), then a small Qwen3-MoE on sequences drawn in equal proportion from the four
domains, and writes `config.json`, `model.safetensors`, the tokenizer, `training_metrics.json` and
`MODEL_CARD.md` (from MODEL_CARD.md.jinja beside this script) into a temporary sibling of `--out`
that is renamed into place at the end. The defaults are the run that made data/demo. Running the
model needs none of this: `reapkit.model.loading.load_model("demo")`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from reapkit.atomic import atomic_directory
from reapkit.data import DOMAINS, SpecItem, calibration_batches, domain_texts
from reapkit.model.demo import DEMO_PATH
from reapkit.model.discover import architecture_for
from reapkit.model.hooks import eval_mode, forward_hooks
from reapkit.model.loading import load_model

CARD_TEMPLATE = Path(__file__).resolve().parent / "MODEL_CARD.md.jinja"

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|im_start|>", "<|im_end|>"]

#: ChatML-like: BOS, then ``<|im_start|>role\ncontent<|im_end|>\n`` per message; tool calls as
#: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` after the content.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def moe_gates(model) -> list[torch.nn.Module]:
    """The router module of every MoE layer of `model`, in layer order."""
    arch = architecture_for(model)
    return [arch.router_of(block) for _, block in arch.moe_blocks(model)]


def mutual_information_bits(joint: torch.Tensor) -> float:
    """I(row; column) in bits from a table of joint counts."""
    p = joint.double() / joint.sum()
    pr, pc = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * torch.log2(p[nz] / (pr @ pc)[nz])).sum())


@torch.no_grad()
def evaluate_demo(
    model,
    tokenizer,
    *,
    samples_per_domain: int = 64,
    max_length: int = 256,
    batch_size: int = 16,
    split: str = "validation",
    domains=DOMAINS,
    seed: int = 0,
) -> dict:
    """Held-out quality and routing of the demo model, per built-in domain.

    Returns a dict with
    ``loss`` {domain: mean next-token cross-entropy in nats},
    ``unigram_loss`` {domain: entropy of the empirical unigram distribution of the same target tokens,
    an oracle unigram baseline (no unigram model fitted elsewhere can do better on them)},
    ``expert_share`` [layer][expert] (share of the top-k assignments of non-padding tokens),
    ``min_expert_share``, ``dead_experts`` [(layer, expert), ...] with share below 1%,
    ``mutual_information_bits`` [layer] (I(domain; selected expert) over all top-k assignments),
    ``domain_expert_counts`` [layer][domain][expert], and ``tokens`` {domain: count}.
    """
    spec = [SpecItem(d, d, samples_per_domain, "builtin") for d in domains]
    batches = calibration_batches(spec, tokenizer, batch_size=batch_size, max_length=max_length, split=split, seed=seed)
    gates = moe_gates(model)
    num_experts = int(gates[0].weight.shape[0])
    joint = torch.zeros(len(gates), len(domains), num_experts, dtype=torch.long)
    loss_sum = {d: 0.0 for d in domains}
    token_count = {d: 0 for d in domains}
    unigram = {d: torch.zeros(int(model.config.vocab_size), dtype=torch.long) for d in domains}
    seen: list[torch.Tensor] = []

    def record_choice(module, args, output):  # a router returns (logits, top-k weights, top-k indices)
        seen.append(output[2].detach())

    with eval_mode(model), forward_hooks(dict.fromkeys(gates, record_choice)):
        for batch in batches:
            seen.clear()
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            d = domains.index(batch.domain)
            mask = batch.attention_mask.reshape(-1).bool()
            for layer, idx in enumerate(seen):
                chosen = idx[mask].reshape(-1)
                joint[layer, d] += torch.bincount(chosen, minlength=num_experts)
            logits = out.logits[:, :-1].float()
            targets = batch.input_ids[:, 1:]
            tmask = batch.attention_mask[:, 1:].bool()
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            )
            loss_sum[batch.domain] += float(ce[tmask.reshape(-1)].sum())
            token_count[batch.domain] += int(tmask.sum())
            unigram[batch.domain] += torch.bincount(targets[tmask], minlength=unigram[batch.domain].numel())

    def entropy_nats(counts):
        p = counts[counts > 0].double() / counts.sum()
        return float(-(p * p.log()).sum())

    share = joint.sum(1).double() / joint.sum((1, 2)).double().unsqueeze(1)
    dead = [(layer, e) for layer in range(share.shape[0]) for e in range(share.shape[1]) if share[layer, e] < 0.01]
    return {
        "loss": {d: loss_sum[d] / max(token_count[d], 1) for d in domains},
        "unigram_loss": {d: entropy_nats(unigram[d]) for d in domains},
        "tokens": token_count,
        "expert_share": share.tolist(),
        "min_expert_share": float(share.min()),
        "dead_experts": dead,
        "mutual_information_bits": [mutual_information_bits(joint[layer]) for layer in range(joint.shape[0])],
        "domain_expert_counts": joint.tolist(),
        "domains": list(domains),
    }


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_tokenizer(vocab_size: int = 3072, chars_per_domain: int = 2_000_000):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on the train split of the built-in domains.

    It prepends BOS to every encoded text (``add_special_tokens=True``) and has :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def corpus():
        for d in DOMAINS:
            used = 0
            for text in domain_texts(d, "train"):
                if used >= chars_per_domain:
                    break
                used += len(text)
                yield text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer, *, aux_coef: float = 0.01, moe_intermediate_size: int = 128):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=16,
        num_experts_per_tok=2,
        moe_intermediate_size=moe_intermediate_size,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        router_aux_loss_coef=aux_coef,
        output_router_logits=False,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _token_stream(tokenizer, domain: str, max_tokens: int) -> torch.Tensor:
    ids: list[int] = []
    texts = domain_texts(domain, "train")
    for start in range(0, len(texts), 256):
        for seq in tokenizer(texts[start : start + 256], add_special_tokens=True)["input_ids"]:
            ids.extend(seq)
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def router_losses(router_logits, domain_of_token: torch.Tensor, top_k: int, num_domains: int):
    """(balance, soft_mi), each averaged over MoE layers.

    balance: the Switch load-balancing loss E * sum_i f_i * P_i / k per layer (1.0 when balanced). transformers'
    `load_balancing_loss_func` concatenates all layers first, so imbalances of different layers cancel and
    single layers can keep dead experts; this one balances every layer.
    soft_mi: I(domain; expert) in nats of the router probabilities over the batch, H(mean p) - mean_d H(mean_d p).
    Maximising it spreads the batch over all experts while each domain concentrates on its own subset.
    """
    balances, mis = [], []
    for logits in router_logits:
        probs = logits.float().softmax(-1)
        num_experts = probs.shape[-1]
        chosen = torch.nn.functional.one_hot(probs.topk(top_k, dim=-1).indices, num_experts).sum(1).float()
        balances.append(num_experts * (chosen.mean(0) * probs.mean(0)).sum() / top_k)

        def entropy(p):
            return -(p * (p + 1e-9).log()).sum(-1)

        per_domain = torch.stack([probs[domain_of_token == d].mean(0) for d in range(num_domains)])
        mis.append(entropy(probs.mean(0)) - entropy(per_domain).mean())
    return torch.stack(balances).mean(), torch.stack(mis).mean()


def train(
    out: str | Path,
    *,
    seed: int = 0,
    tokens: int = 4_500_000,
    seq_len: int = 256,
    batch_size: int = 16,
    lr: float = 3e-3,
    aux_coef: float = 0.02,
    mi_coef: float = 0.02,
    vocab_size: int = 3072,
    moe_intermediate_size: int = 128,
    threads: int = 1,
    log_every: int = 25,
    eval_samples: int = 64,
    tokenizer_chars: int = 2_000_000,
) -> dict:
    """Train tokenizer and model from `seed` and save them atomically to `out`; return the metrics."""
    from transformers import Qwen3MoeForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out = Path(out)
    t0 = time.time()
    tokenizer = train_tokenizer(vocab_size, tokenizer_chars)
    print(f"tokenizer: {len(tokenizer)} tokens in {time.time() - t0:.0f}s", flush=True)
    per_domain = batch_size // len(DOMAINS)
    steps = max(1, tokens // (batch_size * seq_len))
    streams = {
        d: _token_stream(tokenizer, d, max_tokens=min(tokens // len(DOMAINS) + seq_len + 1, 6_000_000)) for d in DOMAINS
    }
    print("train tokens per domain:", {d: len(s) for d, s in streams.items()}, flush=True)
    config = build_config(tokenizer, aux_coef=aux_coef, moe_intermediate_size=moe_intermediate_size)
    model = Qwen3MoeForCausalLM(config)
    model.router_aux_loss_coef = 0.0  # the per-layer losses below replace transformers' cross-layer one
    domain_of_token = torch.arange(len(DOMAINS)).repeat_interleave(per_domain * seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, {steps} steps of {batch_size}x{seq_len}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    warmup = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    t_train = time.time()
    for step in range(steps):
        rows = []
        for d in DOMAINS:
            s = streams[d]
            starts = torch.randint(0, len(s) - seq_len - 1, (per_domain,), generator=gen)
            rows.extend(s[i : i + seq_len] for i in starts.tolist())
        x = torch.stack(rows)
        outp = model(input_ids=x, labels=x, output_router_logits=True)
        balance, mi_soft = router_losses(outp.router_logits, domain_of_token, config.num_experts_per_tok, len(DOMAINS))
        loss = outp.loss + aux_coef * balance - mi_coef * mi_soft
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            el = time.time() - t_train
            rec = {
                "step": step,
                "tokens": (step + 1) * batch_size * seq_len,
                "lm_loss": round(float(outp.loss.detach()), 4),
                "balance_loss": round(float(balance.detach()), 4),
                "soft_mi_nats": round(float(mi_soft.detach()), 4),
                "lr": opt.param_groups[0]["lr"],
                "elapsed_s": round(el, 1),
            }
            history.append(rec)
            print(json.dumps(rec), f"tok/s={rec['tokens'] / max(el, 1e-9):.0f}", flush=True)
    train_seconds = time.time() - t_train
    model.eval()
    report = evaluate_demo(model, tokenizer, samples_per_domain=eval_samples)
    metrics = {
        "seed": seed,
        "tokens_seen": steps * batch_size * seq_len,
        "steps": steps,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "lr": lr,
        "aux_coef": aux_coef,
        "mi_coef": mi_coef,
        "parameters": n_params,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "threads": threads,
        "torch": torch.__version__,
        "history": history[:: max(1, len(history) // 60)] + history[-1:],
        "evaluation": {k: v for k, v in report.items() if k != "domain_expert_counts"},
    }
    _save_atomic(out, model, tokenizer, metrics, report)
    print(
        json.dumps(
            {
                k: metrics["evaluation"][k]
                for k in ("loss", "unigram_loss", "min_expert_share", "mutual_information_bits")
            }
        ),
        flush=True,
    )
    return metrics


def _save_atomic(out: Path, model, tokenizer, metrics: dict, report: dict) -> None:
    with atomic_directory(Path(out).resolve(), force=True) as tmp:
        model.config.output_router_logits = False
        model.save_pretrained(str(tmp))
        _write_num_experts(tmp)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        write_model_card(tmp, model, metrics, report)


def _write_num_experts(path: Path) -> None:
    """Also write `num_experts`, the key Qwen3-MoE hub checkpoints (and vLLM / transformers 4 loaders) read;
    transformers 5 writes only `num_local_experts`."""
    cfg_path = Path(path) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_experts"] = cfg["num_local_experts"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def rewrite_model_card(path: str | Path = DEMO_PATH, *, samples_per_domain: int = 64) -> dict:
    """Re-evaluate the checkpoint at `path` and rewrite its MODEL_CARD.md and the evaluation in training_metrics.json."""
    path = Path(path)
    model, tokenizer = load_model(str(path), dtype="float32")
    report = evaluate_demo(model, tokenizer, samples_per_domain=samples_per_domain)
    metrics = json.loads((path / "training_metrics.json").read_text())
    metrics["evaluation"] = {k: v for k, v in report.items() if k != "domain_expert_counts"}
    (path / "training_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_model_card(path, model, metrics, report)
    return report


def write_model_card(path: Path, model, metrics: dict, report: dict) -> None:
    """Render MODEL_CARD.md.jinja (beside this script) with the config, metrics and evaluation into `path`."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(CARD_TEMPLATE.parent),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    card = environment.get_template(CARD_TEMPLATE.name).render(
        c=model.config,
        m=metrics,
        ev=report,
        mi_layers=sum(mi >= 0.35 for mi in report["mutual_information_bits"]),
        below_unigram=all(report["loss"][d] < report["unigram_loss"][d] for d in report["domains"]),
    )
    (Path(path) / "MODEL_CARD.md").write_text(card)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/train_demo.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train tokenizer and model, save to --out")
    t.add_argument("--out", default=str(DEMO_PATH))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tokens", type=int, default=4_500_000)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--aux-coef", type=float, default=0.02)
    t.add_argument("--mi-coef", type=float, default=0.02)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--vocab-size", type=int, default=3072)
    t.add_argument("--moe-intermediate-size", type=int, default=128)
    t.add_argument("--threads", type=int, default=1, help="1 is faster than 2 on a shared 2-core machine")
    t.add_argument(
        "--tokenizer-chars", type=int, default=2_000_000, help="characters per domain the tokenizer learns from"
    )
    t.add_argument("--eval-samples", type=int, default=64, help="validation samples per domain in the final evaluation")
    e = sub.add_parser("evaluate", help="evaluate a demo checkpoint on the validation split")
    e.add_argument("--path", default=str(DEMO_PATH))
    e.add_argument("--samples", type=int, default=64)
    c = sub.add_parser("card", help="re-evaluate a demo checkpoint and rewrite its MODEL_CARD.md")
    c.add_argument("--path", default=str(DEMO_PATH))
    options = vars(p.parse_args(argv))
    command = options.pop("command")
    if command == "train":
        train(**options)  # the options are named like train's parameters
    elif command == "card":
        torch.set_num_threads(2)
        rewrite_model_card(options["path"])
    else:
        torch.set_num_threads(2)
        model, tok = load_model(options["path"], dtype="float32")
        rep = evaluate_demo(model, tok, samples_per_domain=options["samples"])
        rep.pop("domain_expert_counts")
        rep.pop("expert_share")
        print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
