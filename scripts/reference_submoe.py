"""Run the official REAP code's Sub-MoE on a tiny qwen3_moe and save its clusters and merges (tests/fixtures/merge_reference/).

    python scripts/reference_submoe.py --repo /path/to/reap.git   # a clone or bare git dir of CerebrasResearch/reap

The reference is ``experiments/submoe_v2.sh`` of CerebrasResearch/reap at the pinned commit:
`multi_layer_kmeans_clustering_on_ca` (``src/reap/cluster.py``, ``--multi-layer 2``) on the
experts' characteristic activations, after ``np.random.seed(42)`` (what ``set_seed(42)`` does to
numpy), and ``src/reap/merge.py`` `submoe` on each cluster's tensors, dominant expert (highest
routed frequency) first, weighted by ``expert_frequency / total_tokens``, as `MoEExpertMerger`
calls it for fused experts. The characteristic activations (every expert's mean output over all 64
tokens) are computed here from the captured block inputs; the routed counts are reapkit's.
tests/unit/test_submoe_reference.py compares reapkit's Sub-MoE with the file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

COMMIT = "1970473c51ca3caeb98c10392f15b3a08a672974"
OUT = ROOT / "tests" / "fixtures" / "merge_reference" / "submoe_qwen3_moe.pt"
KEEP, SEED = 4, 42


def characteristic_activations(model, inputs) -> dict:
    """Every expert's mean output over all tokens, per decoder layer (the code's `characteristic_activation`)."""
    import torch
    import torch.nn.functional as F

    out = {}
    with torch.no_grad():
        for index, x in inputs.items():
            experts = model.model.layers[index].mlp.experts
            flat = x.reshape(-1, x.shape[-1])
            rows = []
            for e in range(experts.num_experts):
                gate, up = F.linear(flat, experts.gate_up_proj[e]).chunk(2, dim=-1)
                rows.append(F.linear(experts.act_fn(gate) * up, experts.down_proj[e]).mean(0))
            out[index] = torch.stack(rows).float()
    return out


def demo_groups(cluster, layer_inputs) -> dict:
    """The reference's clusters on the bundled demo model (4 MoE layers, 16 experts), keep 8, layers in pairs."""
    import numpy as np
    import torch

    from reapkit.model.loading import load_model

    model, _ = load_model("demo")
    token_ids = torch.randint(3, model.config.vocab_size, (8, 32), generator=torch.Generator().manual_seed(1))
    ca = characteristic_activations(model, layer_inputs(model, token_ids))
    np.random.seed(SEED)
    labels = cluster(ca, num_layers=2, n_clusters=8)
    groups = {
        i: [torch.where(torch.as_tensor(layer) == c)[0].tolist() for c in torch.as_tensor(layer).unique()]
        for i, layer in labels.items()
    }
    return {"token_ids": token_ids, "keep": 8, "seed": SEED, "groups": groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a clone (or bare git dir) of CerebrasResearch/reap")
    args = parser.parse_args()
    from reference_ream import TOKENS, extract, layer_inputs, torch_threads_one

    torch_threads_one()

    import numpy as np
    import scipy
    import torch
    import transformers

    from reapkit.data import Batch
    from reapkit.observe.recorder import observe
    from tests.tiny_models import tiny_model

    tmp = Path(tempfile.mkdtemp())
    extract(args.repo, COMMIT, tmp, paths=("src/reap",))
    sys.path.insert(0, str(tmp / "src"))
    from reap.cluster import multi_layer_kmeans_clustering_on_ca
    from reap.merge import submoe

    model = tiny_model("qwen3_moe")
    token_ids = torch.randint(0, model.config.vocab_size, TOKENS, generator=torch.Generator().manual_seed(0))
    obs = observe(model, [Batch(token_ids, torch.ones_like(token_ids), "code")], progress=False)
    counts = obs.pooled()["count"].float()
    tokens = float(obs.pooled()["tokens"][0])
    ca = characteristic_activations(model, layer_inputs(model, token_ids))
    np.random.seed(SEED)
    labels = multi_layer_kmeans_clustering_on_ca(ca, num_layers=2, n_clusters=KEEP)
    result = {
        "commit": COMMIT,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "transformers": transformers.__version__,
        },
        "token_ids": token_ids,
        "keep": KEEP,
        "seed": SEED,
        "characteristic": ca,
        "layers": {},
    }
    for pos, index in enumerate(sorted(labels)):
        layer_labels = torch.as_tensor(labels[index])
        proba = counts[pos] / tokens
        experts = model.model.layers[index].mlp.experts
        groups, merged = [], {}
        for c in layer_labels.unique():
            members = torch.where(layer_labels == c)[0].tolist()
            groups.append(members)
            if len(members) < 2 or pos > 0:  # layer 0's merges only: the fixtures stay under 200 KB
                continue
            dom = members[int(torch.argmax(proba[members]))]
            order = [dom] + [e for e in members if e != dom]
            merged[dom] = {
                name: submoe([getattr(experts, name).data[e] for e in order], proba[order])
                for name in ("gate_up_proj", "down_proj")
            }
        result["layers"][index] = {"groups": groups, "merged": merged}
    result["demo"] = demo_groups(multi_layer_kmeans_clustering_on_ca, layer_inputs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, OUT)
    print(
        f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1024:.0f} KB; groups "
        + "; ".join(f"layer {i}: {v['groups']}" for i, v in result["layers"].items())
    )


if __name__ == "__main__":
    main()
