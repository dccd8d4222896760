"""Representation monitors on embeddings of known geometry."""
import math

import pytest
import torch
import torch.nn.functional as F

from simclr_ext.monitor import (alignment, effective_rank, embedding_stats, knn_top1,
                                positive_cosine, uniformity)


def _clusters(n_per, classes, dim, spread, g):
    """Points around `classes` orthogonal unit centers, with Gaussian spread."""
    centers = torch.eye(dim)[:classes] * 5
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_knn_separated_clusters_score_100_and_shuffled_labels_score_chance():
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    xtr, ytr = _clusters(40, 5, 16, 0.3, g)
    xte, yte = _clusters(20, 5, 16, 0.3, g)
    assert knn_top1(xtr, ytr, xte, yte, k=20) == 100.0
    # labels unrelated to the geometry: about 20% (5 classes), far from 100
    perm = torch.randperm(len(ytr), generator=g)
    assert knn_top1(xtr, ytr[perm], xte, yte, k=20) < 60.0


def test_knn_matches_a_direct_weighted_vote():
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    xtr, ytr = torch.randn(50, 8, generator=g), torch.randint(0, 3, (50,), generator=g)
    xte, yte = torch.randn(30, 8, generator=g), torch.randint(0, 3, (30,), generator=g)
    sim = F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T
    hits = 0
    for i in range(30):  # plain loop: the 7 nearest vote with weight exp(cos / 0.1)
        order = sim[i].argsort(descending=True)[:7]
        votes = [sum(math.exp(sim[i, j].item() / 0.1) for j in order if ytr[j] == c) for c in range(3)]
        hits += int(max(range(3), key=lambda c: votes[c]) == yte[i])
    assert knn_top1(xtr, ytr, xte, yte, k=7, temperature=0.1, chunk=8) == pytest.approx(100.0 * hits / 30)


def test_knn_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same D"):
        knn_top1(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 5),
                 torch.zeros(2, dtype=torch.long))


def test_collapsed_embeddings_rank_one_uniformity_zero_alignment_zero():
    z = torch.randn(1, 32).expand(64, 32) + 0.0
    assert effective_rank(z) == pytest.approx(1.0)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-10)
    assert positive_cosine(z, z) == pytest.approx(1.0)
    # collapse to a line through the mean: still one direction
    line = torch.randn(64, 1) * torch.randn(1, 32)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)  # float32 round-off only


def test_effective_rank_of_k_equal_directions_is_k():
    k = int(torch.randint(2, 12, ()).item())
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    # k orthogonal directions with equal energy: +-1 coefficients on each, zero-mean columns
    coeff = torch.cat([torch.eye(k), -torch.eye(k)]).double()
    z = coeff @ q[:k]
    assert effective_rank(z) == pytest.approx(k, rel=1e-6)
    # unequal energies give less than k
    z2 = (coeff * torch.linspace(1, 5, k, dtype=torch.float64)) @ q[:k]
    assert 1 < effective_rank(z2) < k


def test_uniformity_of_spread_points_is_far_below_zero_and_bounded():
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    z = torch.randn(2000, 64, generator=g)
    u = uniformity(z)
    # on a high-dimensional sphere almost every pair is ~orthogonal: |x - y|^2 ~ 2, so ~ -4
    assert -4.3 < u < -3.7
    # antipodal pairs only: |x - y|^2 = 4 -> exactly -8
    e = F.normalize(torch.randn(1, 8, generator=g), dim=1)
    assert uniformity(torch.cat([e, -e])) == pytest.approx(-8.0, abs=1e-5)


def test_alignment_of_opposite_views_is_four():
    z = torch.randn(10, 5)
    assert alignment(z, -z) == pytest.approx(4.0, rel=1e-6)
    assert positive_cosine(z, -z) == pytest.approx(-1.0, abs=1e-6)
    s = embedding_stats(z, z + 0.01 * torch.randn(10, 5))
    assert set(s) == {"pos_cos", "align", "uniform", "erank"} and s["align"] < 0.01


def test_supervised_baseline_learns_a_separable_task_and_reports_topk():
    # two classes a linear readout of any encoder separates (dark vs bright images): a working
    # trainer must get them right; a broken one (no step, wrong labels) stays near 50%
    from simclr_ext.data import TensorSource
    from simclr_ext.supervised import train_supervised

    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    def split(n):
        y = torch.arange(n) % 2
        base = torch.where(y[:, None, None, None] == 1, 190, 50)
        x = (base + torch.randint(-30, 30, (n, 3, 12, 12), generator=g)).clamp(0, 255).to(torch.uint8)
        return TensorSource(x, y, 2)
    res = train_supervised(split(96), split(64), 12, 2, width=4, epochs=4, batch_size=32,
                           crop_scale=(0.5, 1.0))
    assert res["top1"] >= 90.0 and res["top5"] == 100.0 and set(res) >= {"train_top1", "seconds"}
