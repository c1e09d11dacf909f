"""Run REAM's own code on a tiny qwen3_moe and save what it groups and merges (tests/fixtures/merge_reference/).

    python scripts/reference_ream.py --repo /path/to/ream.git   # a clone or bare git dir of SamsungSAILMontreal/ream

The reference is extracted at the pinned commit into a temporary folder and imported as the
package ``ream`` (its ``ream/merger.py`` imports ``data.calibration_data`` from the same tree).
The shared input is `tests.tiny_models.tiny_model("qwen3_moe")` (2 MoE layers, 8 experts, top-2)
and 64 token ids drawn with seed 0 (no padding, so that the reference's all-token sums and
reapkit's real-token sums run over the same tokens). For every MoE layer the script captures the
block's input, runs the reference's `run_all_experts` (its gated outputs and router logits, what
`Merger.fit` feeds `pseudo_group`), groups with `pseudo_group` at the saliency reapkit's REAP
criterion gives (zeros raised as `Merger.fit` does), and merges each group with `Merger._merge`
(``merging="weights"``: the weight-only alignment cost reapkit implements; ``"logits+weights"`` is
saved too, to measure what the activation term changes). tests/unit/test_ream_reference.py
compares reapkit's REAM with the file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import types
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMIT = "84a3030716a0059589e9d10e2ea049e32b76cfa6"
OUT = ROOT / "tests" / "fixtures" / "merge_reference" / "ream_qwen3_moe.pt"
KEEP, GROUP_SIZES, TOKENS = 4, (16, 3), (4, 16)
DEMO_KEEP, DEMO_TOKENS = 8, (8, 32)


def extract(repo: str, commit: str, into: Path, paths=("ream",)) -> None:
    """The reference's code at `commit` under `into` (only `paths`: a mirror may lack its large data files)."""
    command = ["git", "--git-dir", _git_dir(repo), "archive", commit, *paths]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def _git_dir(repo: str) -> str:
    path = Path(repo)
    return str(path / ".git") if (path / ".git").exists() else str(path)


def torch_threads_one() -> None:
    """One thread, as the tests run: LAPACK's SVD rounds differently with more, which Sub-MoE's row-major
    reshape amplifies to 3e-5 relative in the reference's own output."""
    import torch

    torch.set_num_threads(1)


def layer_inputs(model, token_ids):
    """The input hidden states [B, S, H] of every MoE block, by decoder-layer index."""
    import torch

    from reapkit.model.discover import architecture_for

    captured, handles = {}, []
    for index, block in architecture_for(model).moe_blocks(model):
        handles.append(block.register_forward_hook(lambda m, a, o, i=index: captured.__setitem__(i, a[0].detach())))
    with torch.no_grad():
        model(input_ids=token_ids, use_cache=False)
    for h in handles:
        h.remove()
    return captured


def demo_groups(pseudo_group, run_all_experts) -> dict:
    """The reference's groups on the bundled demo model (4 MoE layers, 16 experts), keep 8, group sizes 16 and 4;
    and the centroids the code's own saliency (``ream/saliency.py`` `reap` on its gated outputs) would pick."""
    import numpy as np
    import torch
    from ream.saliency import reap as code_reap

    from reapkit.data import Batch
    from reapkit.model.loading import load_model
    from reapkit.observe.recorder import observe
    from reapkit.select.criteria import score

    model, _ = load_model("demo")
    token_ids = torch.randint(3, model.config.vocab_size, DEMO_TOKENS, generator=torch.Generator().manual_seed(1))
    reap = score(observe(model, [Batch(token_ids, torch.ones_like(token_ids), "code")], progress=False), "reap")
    out = {"token_ids": token_ids, "keep": DEMO_KEEP, "groups": {}, "code_saliency_centroids": {}}
    for pos, (index, x) in enumerate(sorted(layer_inputs(model, token_ids).items())):
        with torch.no_grad():
            gate, final, _ = run_all_experts(model.model.layers[index].mlp, x, act_samples=0, gated_sim=True)
        saliency = torch.tensor(reap[pos], dtype=torch.float32)
        if (saliency == 0).any():
            saliency[saliency == 0] = min(0.5, saliency[saliency > 0].min().item())
        for size in GROUP_SIZES[:1] + (4,):
            labels, centroids = pseudo_group(
                saliency, final.mean(1, keepdim=True), DEMO_KEEP, gate.view(-1, gate.shape[-1]), group_size=size
            )
            out["groups"][(index, size)] = [sorted(int(e) for e in np.where(labels == j)[0]) for j in range(DEMO_KEEP)]
        own = code_reap(gate, final, top_k=model.config.num_experts_per_tok).numpy()
        out["code_saliency_centroids"][index] = sorted(int(e) for e in np.argsort(own)[::-1][:DEMO_KEEP])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a clone (or bare git dir) of SamsungSAILMontreal/ream")
    args = parser.parse_args()
    torch_threads_one()

    import numpy as np
    import scipy
    import torch
    import transformers

    from reapkit.data import Batch
    from reapkit.observe.recorder import observe
    from reapkit.select.criteria import score
    from tests.tiny_models import tiny_model

    tmp = Path(tempfile.mkdtemp())
    extract(args.repo, COMMIT, tmp)
    sys.path.insert(0, str(tmp))
    sys.modules.setdefault("data.calibration_data", types.SimpleNamespace(print_seq_stats=print))  # loads datasets
    from ream.merger import Merger
    from ream.moe_utils import run_all_experts
    from ream.ream import pseudo_group
    from ream.utils import normalize_rows
    from ream.weight_utils import experts_weight_matrix, pca_reduce

    model = tiny_model("qwen3_moe")
    token_ids = torch.randint(0, model.config.vocab_size, TOKENS, generator=torch.Generator().manual_seed(0))
    obs = observe(model, [Batch(token_ids, torch.ones_like(token_ids), "code")], progress=False)
    reap = score(obs, "reap")
    inputs = layer_inputs(model, token_ids)
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
        "layers": {},
    }
    for pos, (index, x) in enumerate(sorted(inputs.items())):
        mlp = model.model.layers[index].mlp
        with torch.no_grad():
            gate, final, act = run_all_experts(mlp, x, final_reduce=False, act_samples=0, gated_sim=True)
        saliency = torch.tensor(reap[pos], dtype=torch.float32)
        zeros = saliency == 0
        if zeros.any():
            saliency[zeros] = min(0.5, saliency[saliency > 0].min().item())
        gate_logits = gate.view(-1, gate.shape[-1])
        expert_logits = final.mean(1, keepdim=True)
        layer = {"groups": {}, "merged": {}}
        for size in GROUP_SIZES:
            labels, centroids = pseudo_group(
                saliency, expert_logits=expert_logits, k=KEEP, gate_logits=gate_logits, group_size=size
            )
            groups = []
            for j in range(KEEP):
                members = [int(e) for e in np.where(labels == j)[0]]
                groups.append(sorted(members, key=lambda g: g not in centroids))
            layer["groups"][size] = groups
        n = mlp.experts.num_experts
        features = pca_reduce(normalize_rows(experts_weight_matrix(mlp.experts)).flatten(0, 1), r=64)
        features = features.reshape(n, -1, 64)
        for merging in ("weights", "logits+weights"):
            fake = types.SimpleNamespace(merging=merging, device="cpu")
            for group in layer["groups"][16]:
                if len(group) < 2:
                    continue
                merged = Merger._merge(
                    fake,
                    experts=mlp.experts,
                    group=np.array(group),
                    saliency=saliency.clone(),
                    expert_weights=features,
                    expert_act=act.clone(),
                )
                layer["merged"][(merging, group[0])] = {
                    "gate_up_proj": merged.gate_up_proj.data.clone(),
                    "down_proj": merged.down_proj.data.clone(),
                }
        if pos == 0:
            result["layers"][index] = layer
        else:  # the groups of the other layers; their merged tensors would pass the 200 KB the fixtures may take
            result["layers"][index] = {"groups": layer["groups"], "merged": {}}
    result["demo"] = demo_groups(pseudo_group, run_all_experts)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, OUT)
    print(
        f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1024:.0f} KB; groups "
        + "; ".join(f"layer {i}: {v['groups'][16]}" for i, v in result["layers"].items())
    )


if __name__ == "__main__":
    main()
