import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.errors import InvalidInput
from reapkit.observe.recorder import observe
from reapkit.select import geometry


def test_angular_distance_hand_values():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    d = geometry.angular_distances(v)
    assert d[0, 1] == pytest.approx(0.5)  # orthogonal
    assert d[0, 2] == pytest.approx(0.0)  # same direction, other length
    assert d[0, 3] == pytest.approx(1.0)  # opposite
    assert d[0, 4] == pytest.approx(0.25)  # 45 degrees
    assert np.allclose(np.diag(d), 0) and np.allclose(d, d.T)
    assert ((d >= 0) & (d <= 1)).all()


def test_zero_vector_and_rectangular():
    d = geometry.angular_distances(np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert d[0, 1] == pytest.approx(0.5) and d[0, 0] == 0
    r = geometry.angular_distances(np.eye(2), np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
    assert r.shape == (2, 3) and r[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2-D"):
        geometry.angular_distances(np.zeros(3))


def test_cluster_groups_near_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16))
    vectors = np.concatenate([base + 0.01 * rng.normal(size=(3, 16)) for _ in range(2)])  # pairs (i, i+3)
    c = geometry.cluster(geometry.angular_distances(vectors), n_clusters=3)
    assert c.linkage.shape == (5, 4) and sorted(c.order) == list(range(6))
    for i in range(3):
        assert c.labels[i] == c.labels[i + 3]
    assert len(set(c.labels)) == 3 and c.labels[c.order[0]] == 0  # numbered along the leaves
    assert sorted(sum(c.members(), [])) == list(range(6))
    assert (geometry.clusters_at(c.linkage, 1) == 0).all()
    with pytest.raises(InvalidInput, match="n_clusters"):
        geometry.clusters_at(c, 7)


def test_cluster_single_expert():
    c = geometry.cluster(np.zeros((1, 1)), n_clusters=1)
    assert list(c.order) == [0] and list(c.labels) == [0]


def test_spaces_from_model_and_observations(batches):
    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False, statistics=["output_sum"])
    layer = obs.layers[1]
    for space, source in (("weights", model), ("router", model), ("output", obs)):
        d = geometry.distance_matrix(source, layer, space)
        assert d.shape == (8, 8) and np.allclose(np.diag(d), 0)
    router = geometry.model_vectors(model, layer, "router")
    block = dict(model.model.layers[layer].named_children())["mlp"]
    assert np.allclose(router, block.gate.weight.detach().numpy())
    weights = geometry.model_vectors(model, layer, "weights")
    flat = torch.cat(
        [block.experts.gate_up_proj.detach().reshape(8, -1), block.experts.down_proj.detach().reshape(8, -1)], 1
    )
    assert weights.shape == (8, 8)
    assert np.allclose(weights @ weights.T, (flat @ flat.T).double().numpy(), rtol=1e-4, atol=1e-6)
    assert np.allclose(
        geometry.distance_matrix(model, layer, "weights"), geometry.angular_distances(flat.double().numpy()), atol=1e-5
    )
    out = geometry.output_vectors(obs, layer)
    stats = obs.pooled()
    e = int(torch.argmax(stats["count"][1]))
    assert np.allclose(out[e], (stats["output_sum"][1, e] / stats["count"][1, e]).numpy(), atol=1e-6)
    with pytest.raises(TypeError, match="Observations"):
        geometry.distance_matrix(model, layer, "output")
    with pytest.raises(InvalidInput, match="not an MoE layer"):
        geometry.distance_matrix(obs, 99, "output")
    with pytest.raises(InvalidInput, match="unknown space"):
        geometry.distance_matrix(obs, layer, "nope")
    all_ = geometry.distance_matrices(model=model, obs=obs)
    assert set(all_) == {(s, layer) for s in geometry.SPACES for layer in obs.layers}
