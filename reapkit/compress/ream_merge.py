"""REAM's merge of a group: align each member's neurons to the centroid's (Hungarian), then a saliency-weighted average.

    >>> from reapkit.model.layer import moe_layers
    >>> experts = moe_layers(model)[0].experts
    >>> features = weight_features(experts)                  # [experts, neurons, 64]
    >>> perm = ream_permutation(experts, 5, 5, features)      # an expert aligns to itself
    >>> bool((perm == torch.arange(len(perm))).all())
    True

After REAM's code (SamsungSAILMontreal/ream at commit 84a3030716a0059589e9d10e2ea049e32b76cfa6,
``ream/merger.py`` `Merger._merge`, ``ream/weight_utils.py``):

- **Neuron features** (`weight_features`): for each expert and intermediate neuron, the vector
  ``[gate row | up row | down column]`` (``experts_weight_matrix``), scaled to unit length; the
  layer's vectors of all experts together are reduced by PCA to 64 dimensions
  (``torch.pca_lowrank`` after ``torch.manual_seed(0)``, projections scaled by the singular values,
  ``pca_reduce``) and scaled to unit length again.
- **Alignment** (`neuron_permutation`): ``scipy.optimize.linear_sum_assignment`` on the Euclidean
  distances between the centroid's and the member's neuron features; the member's neurons are
  reordered so that neuron i faces the centroid's neuron i (gate and up rows, down columns, and
  gate/up biases where the experts have them; `reapkit.compress.align.permute_neurons`, which
  `reapkit.compress.merge.apply_merge` calls through `align_group` with this cost).
- **Average**: the centroid and the aligned members, weighted by their normalised saliencies
  (`reapkit.select.ream.ream_weights`), centroid first, in float32.

Where this differs from the code: its default cost (``merging="logits+weights"``) adds to the
weight term the distances between the neurons' activations on calibration tokens sampled at random
(``act_samples = 32768 // batches`` per batch); those per-token samples are not a statistic
observations keep, so the cost here is the weight term alone (the code's ``merging="weights"``).
Note that the code draws that sample inside its loop over experts (``ream/moe_utils.py``
`run_all_experts`: ``np.random.permutation`` once per expert), so the centroid's and a member's
activation vectors are over different tokens and the activation term pairs neurons on unmatched
tokens; on matched tokens (no sampling) it moves the merged weights of the test model by 0.87
relative, which tests/unit/test_ream.py measures. The layouts of transformers' fused
experts (transposed, gate and up interleaved, no gate) are read by
`reapkit.compress.align.neuron_rows`. The features are computed once per layer from the weights
before any group is merged, as the code computes them.
"""

from __future__ import annotations

import numpy as np
import torch

from reapkit.compress.align import neuron_rows

__all__ = ["weight_features", "ream_permutation", "PCA_DIM"]

PCA_DIM = 64  # the code's pca_dim
EPS = 1e-8


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.linalg.norm(x, dim=-1, keepdim=True) + EPS)


def weight_features(experts) -> torch.Tensor:
    """[E, I, d] unit neuron features of a layer's experts, d = min(64, ...) after the code's PCA."""
    matrix = torch.stack(
        [torch.cat([t.float() for t in neuron_rows(experts, e).values()], dim=1) for e in range(experts.num_experts)]
    )  # [E, I, 3H]: gate row | up row | down column of each neuron
    matrix = _unit(matrix)
    n = matrix.shape[0]
    x = matrix.flatten(0, 1)
    x = x - x.mean(dim=-2, keepdim=True)
    r = min(PCA_DIM, *x.shape)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(x, q=r)
    finally:
        torch.random.set_rng_state(state)
    projected = x @ (v[:, :r] * s[:r].reshape(1, r))
    return _unit(projected.reshape(n, -1, r))


def ream_permutation(experts, member: int, centroid: int, features: torch.Tensor) -> torch.Tensor:
    """The order of `member`'s neurons that faces `centroid`'s: new neuron j is old neuron ``perm[j]``
    (Hungarian on the Euclidean distances between their `features`)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(features[centroid], features[member]).numpy()
    return torch.as_tensor(np.asarray(linear_sum_assignment(cost)[1]), dtype=torch.long)
