"""Sub-MoE's merge of a group of experts: one SVD of their side-by-side weights, shared U, their V blocks averaged.

    >>> w = torch.randn(6, 4)
    >>> torch.allclose(svd_merge([w, w], [0.5, 0.5]), w, atol=1e-5)                  # two copies give back the copy
    True
    >>> torch.allclose(svd_merge([w, w], [0.5, 0.5], split="row_major"), w, atol=1e-5)  # the reference's reshape does not
    False

After Sub-MoE (Li et al., arXiv 2506.23266) as the official REAP code implements it
(CerebrasResearch/reap at commit 1970473, ``src/reap/merge.py`` `submoe`): the group's matrices
(each expert's stored tensor, dominant expert first) are put side by side along their second axis,
``[W_1 | ... | W_n] = U S V``, and the merged matrix is ``U S (sum_i w_i V_i)`` with the weights
normalised to sum 1 (the official code's weights are the experts' routed frequencies).

**Rank.** The reference keeps every singular value (``full_matrices=False``, no truncation), so
``rank=None`` keeps ``min(rows, n * columns)`` of them; an integer `rank` keeps the largest `rank`
(the paper's truncation), and the merged expert is stored as a dense matrix either way.

**The V blocks.** ``V`` [r, n * columns] holds expert i's coordinates in the columns of block i.
The reference takes them with ``V.reshape(n, r, -1)``, which reads V row by row and so gives
"block" i made of whole rows of V (rows i*r/n ... of every expert's columns), not expert i's
columns. ``split="blocks"`` (the default) takes ``V[:, i*c:(i+1)*c]``, the paper's per-expert
V_i; ``split="row_major"`` reproduces the reference's numbers. The default is the block split
because the row-major one is not a merge of the experts: merging two copies of one expert does not
give it back (example above). At full rank with the block split, ``U S V_i = W_i`` exactly, so the
merged expert is the weighted average of the group, which a test checks; truncating the rank is
what makes the two differ.
"""

from __future__ import annotations

import torch

__all__ = ["svd_merge", "SPLITS"]

SPLITS = ("blocks", "row_major")


def svd_merge(matrices, weights, *, rank: int | None = None, split: str = "blocks") -> torch.Tensor:
    """The merged matrix of `matrices` (same shape, 2-D; 1-D tensors are averaged) with `weights` (normalised here)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    w = torch.as_tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    dtype = matrices[0].dtype
    if matrices[0].dim() == 1:
        return sum(wi * m.float() for wi, m in zip(w, matrices)).to(dtype)
    n, columns = len(matrices), matrices[0].shape[1]
    u, s, v = torch.linalg.svd(torch.cat(list(matrices), dim=1).float(), full_matrices=False)
    if split == "row_major":
        blocks = v.reshape(n, v.shape[0], -1)
    else:
        blocks = torch.stack([v[:, i * columns : (i + 1) * columns] for i in range(n)])
    merged_v = (blocks * w.view(-1, 1, 1)).sum(0)
    r = len(s) if rank is None else min(int(rank), len(s))
    return ((u[:, :r] @ torch.diag(s[:r])) @ merged_v[:r]).to(dtype)
