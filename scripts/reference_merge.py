"""Run the REAP repository's own HC-SMoE / M-SMoE grouping, merging and neuron permutation on one tiny model.

    python scripts/reference_merge.py --reap-git /path/to/CerebrasResearch/reap/.git

The reference (CerebrasResearch/reap at COMMIT) is read from a git directory (a clone, or the bare
mirror `fetch github:CerebrasResearch/reap` gives); its files `src/reap/{cluster,merge,permute,
metrics,model_util}.py` are extracted to a temporary folder and imported as they are, with an empty
`reap/__init__.py` (the package's own is empty too; nothing else of the repository is imported).

What runs where:

- statistics: reapkit's `observe` on a tiny random Qwen3-MoE (16 hidden, 8 experts of 8 neurons,
  top-2, 2 layers) over padded random token batches. The reference observer cannot run here: it
  hooks transformers 4's per-expert modules and a block that returns router logits, which
  transformers 5 does not have. reapkit's statistics give its inputs exactly:
  `characteristic_activation = all_output_sum / tokens`, `router_logit_similiarity =
  router_distance_sum / tokens`, `expert_frequency = count`, `total_tokens = tokens` (that these
  equal the observer's per-batch computation is tested in tests/unit/test_merging.py).
- grouping: the reference's `metrics.euclidean_distance` + `cluster.hierarchical_clustering`
  (HC-SMoE, average linkage) and `metrics.cosine_distance` + `cluster.mc_smoe_clustering`
  (M-SMoE), as `main.cluster` calls them.
- merging: `merge.MoEExpertMerger` with `frequency_weighted_average` (both) and `permute="wm"`
  (M-SMoE: `permute.WeightMatchingPermuter`), on the experts laid out as the reference's
  per-expert modules (`gate_proj`, `up_proj`, `down_proj` linears, model_util's Qwen3 attributes).

Writes tests/fixtures/merge_reference/: `inputs.npz` (the tiny model's state dict and the token
batches), `reference.npz` (statistics, labels, every expert after the reference's merge: the tied
form), `reference.json` (config, commit, package versions, settings).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

COMMIT = "1970473c51ca3caeb98c10392f15b3a08a672974"
FILES = ("cluster.py", "merge.py", "permute.py", "metrics.py", "model_util.py")
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "merge_reference"
CONFIG = dict(
    vocab_size=96,
    hidden_size=16,
    intermediate_size=32,
    moe_intermediate_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
    num_experts=8,
    num_experts_per_tok=2,
    norm_topk_prob=True,
    max_position_embeddings=64,
    pad_token_id=0,
    use_cache=False,
)
KEEP = {"hc_smoe_faithful": 4, "m_smoe_faithful": 3}


def tiny_model():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**CONFIG)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.3)  # experts routed unevenly
    return model


def token_batches():
    from reapkit.data import pad_batches

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (16, 11, 14, 9, 16, 7)]
    return pad_batches(seqs[:4], "code", 2) + pad_batches(seqs[4:], "prose", 2)


def extract(git_dir: str, into: Path) -> None:
    package = into / "reap"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in FILES:
        text = subprocess.run(
            ["git", "--git-dir", git_dir, "show", f"{COMMIT}:src/reap/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (package / name).write_text(text)


class _Expert(torch.nn.Module):
    """One expert as the reference's per-expert modules hold it (transformers 4 Qwen3MoeMLP)."""

    def __init__(self, gate, up, down, act):
        super().__init__()
        self.gate_proj = torch.nn.Linear(gate.shape[1], gate.shape[0], bias=False)
        self.up_proj = torch.nn.Linear(up.shape[1], up.shape[0], bias=False)
        self.down_proj = torch.nn.Linear(down.shape[1], down.shape[0], bias=False)
        self.gate_proj.weight.data, self.up_proj.weight.data, self.down_proj.weight.data = gate, up, down
        self.act = act

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def reference_moe(experts):
    """The fused experts module as a block with `experts`: a ModuleList of per-expert linears (copies)."""
    size = experts.down_proj.shape[-1]
    block = torch.nn.Module()
    block.experts = torch.nn.ModuleList(
        _Expert(w[:size].clone(), w[size:].clone(), d.clone(), experts.act_fn)
        for w, d in zip(experts.gate_up_proj.data, experts.down_proj.data)
    )
    return block


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reap-git", required=True, help="git directory of CerebrasResearch/reap holding COMMIT")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    from reapkit.model.layer import moe_layers
    from reapkit.observe.recorder import observe

    model = tiny_model()
    batches = token_batches()
    obs = observe(model, batches, statistics=["all_output_sum", "router_distance_sum"], progress=False)
    pooled = {k: v.double() for k, v in obs.pooled().items()}
    layers = moe_layers(model)

    with tempfile.TemporaryDirectory() as tmp:
        extract(args.reap_git, Path(tmp))
        sys.path.insert(0, tmp)
        from reap.cluster import hierarchical_clustering, mc_smoe_clustering
        from reap.merge import MoEExpertMerger
        from reap.metrics import cosine_distance, euclidean_distance
        from reap.model_util import MODEL_ATTRS

        attrs = MODEL_ATTRS["Qwen3MoeForCausalLM"]
        result = {}
        tokens = pooled["tokens"]
        proba = {pos: (pooled["count"][pos] / tokens[pos]).float() for pos in range(len(layers))}
        labels = {}
        for pos in range(len(layers)):  # HC-SMoE: main.cluster with characteristic_activation, euclidean
            ca = (pooled["all_output_sum"][pos] / tokens[pos]).float()
            distance = euclidean_distance(ca.unsqueeze(0), ca.unsqueeze(1))
            labels[("hc_smoe_faithful", pos)] = torch.as_tensor(
                hierarchical_clustering(distance, "average", KEEP["hc_smoe_faithful"])
            )
        distances = {}
        for pos in range(len(layers)):  # M-SMoE: router_logits, cosine (main.py ~356)
            similarity = (pooled["router_distance_sum"][pos] / tokens[pos]).float()
            distances[pos] = cosine_distance(similarity.unsqueeze(0), similarity.unsqueeze(1))
        for pos, lab in mc_smoe_clustering(distances, proba, KEEP["m_smoe_faithful"] * len(layers)).items():
            labels[("m_smoe_faithful", pos)] = lab
        for (method, pos), lab in sorted(labels.items()):
            block = reference_moe(layers[pos].experts)
            MoEExpertMerger(
                moe=block,
                cluster_label=lab,
                expert_proba=proba[pos],
                model_attrs=attrs,
                merge_method="frequency_weighted_average",
                permute="wm" if method == "m_smoe_faithful" else None,
            ).merge_experts()
            result[f"{method}/{pos}/labels"] = lab.numpy()
            for part in ("gate_proj", "up_proj", "down_proj"):
                result[f"{method}/{pos}/{part}"] = np.stack(
                    [getattr(e, part).weight.detach().numpy() for e in block.experts]
                )
        sys.path.remove(tmp)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
    ids = {
        f"batch/{i}/{k}": getattr(b, k).numpy() for i, b in enumerate(batches) for k in ("input_ids", "attention_mask")
    }
    np.savez_compressed(out / "inputs.npz", **state, **ids, domains=np.array([b.domain for b in batches]))
    stats = {f"stat/{k}": v.numpy() for k, v in pooled.items()}
    np.savez_compressed(out / "reference.npz", **result, **stats)
    versions = {}
    for name in ("torch", "transformers", "numpy", "scipy", "sklearn"):
        versions[name] = __import__(name).__version__
    meta = {
        "reference": f"CerebrasResearch/reap@{COMMIT}",
        "files": [f"src/reap/{f}" for f in FILES],
        "config": CONFIG,
        "keep": KEEP,
        "merge_method": "frequency_weighted_average",
        "permute": {"hc_smoe_faithful": None, "m_smoe_faithful": "wm"},
        "python": sys.version.split()[0],
        "versions": versions,
        "made_by": "scripts/reference_merge.py",
    }
    (out / "reference.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{p.name} {p.stat().st_size // 1024} KiB" for p in sorted(out.iterdir())))


if __name__ == "__main__":
    main()
