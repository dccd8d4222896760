"""Monitors of representation quality, cheap enough to run every epoch.

- `knn_top1`: a weighted k-nearest-neighbor classifier on cosine similarity (k = 20), held-out
  features against train features: the monitor most self-supervised libraries show.
- `positive_cosine`: the mean cosine between the embeddings of the two views of an image.
- `alignment`, `uniformity`: Wang & Isola (2020), on L2-normalized embeddings.
- `effective_rank`: Roy & Vetterli (2007), exp of the entropy of the normalized singular values.

All take float tensors on any device and return Python floats.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_top1(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20,
             temperature: float = 0.07, num_classes: int = None, chunk: int = 1024) -> float:
    """kNN top-1 (percent) of test features against train features, cosine similarity.

    The vote is similarity-weighted, as in Wu et al. (2018) and the monitors built on it: each
    of the k nearest train samples adds exp(cos / temperature) to its class; the class with the
    largest sum wins. k is clipped to the number of train samples.
    """
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x and test_x must be [N, D] with the same D, got "
                         f"{tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError("train_y / test_y must have one label per row of train_x / test_x")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    k = min(k, train_x.shape[0])
    tr = F.normalize(train_x.float(), dim=1)
    te = F.normalize(test_x.float(), dim=1)
    train_y = train_y.to(tr.device)
    hits = 0
    for lo in range(0, te.shape[0], chunk):
        sim = te[lo:lo + chunk] @ tr.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], torch.exp(top / temperature))
        hits += (votes.argmax(1) == test_y[lo:lo + chunk].to(sim.device)).sum().item()
    return 100.0 * hits / te.shape[0]


@torch.no_grad()
def positive_cosine(z1: Tensor, z2: Tensor) -> float:
    """Mean cosine similarity between paired rows of z1 and z2 (the two views of each image)."""
    return F.cosine_similarity(z1.float(), z2.float(), dim=1).mean().item()


@torch.no_grad()
def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment E ||f(x) - f(y)||^alpha over positive pairs (normalized
    embeddings): 0 when the two views map to the same point, at most 2^alpha."""
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return (a - b).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2.0) -> float:
    """Wang & Isola's uniformity log E exp(-t ||f(x) - f(y)||^2) over distinct pairs (normalized
    embeddings): 0 when all points coincide (collapse), more negative the more uniform."""
    x = F.normalize(z.float(), dim=1)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    sq = torch.pdist(x, p=2).pow(2)
    # log-mean-exp in a stable form: logsumexp - log(count)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).item()


@torch.no_grad()
def effective_rank(z: Tensor, center: bool = True, eps: float = 1e-12) -> float:
    """Roy & Vetterli's effective rank: exp(H(p)), p = singular values / their sum.

    Between 1 (one direction: collapse) and min(N, D) (all singular values equal). The
    embeddings are centered first by default, so a constant offset does not count as a
    direction.
    """
    x = z.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= eps:
        return 1.0  # all rows equal: a single point, one (degenerate) direction at most
    p = s / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def embedding_stats(z1: Tensor, z2: Tensor) -> dict:
    """The per-epoch view-pair statistics: positive cosine, alignment, uniformity (over both
    views), effective rank (first views)."""
    return {
        "pos_cos": positive_cosine(z1, z2),
        "align": alignment(z1, z2),
        "uniform": uniformity(torch.cat([z1, z2])),
        "erank": effective_rank(z1),
    }


class EpochMonitor:
    """The per-epoch monitor of a SimCLR run: kNN top-1 of a fixed held-out subset against a
    fixed train subset (encoder features h of un-augmented images), and the view-pair statistics
    of z on fixed augmented pairs of held-out images (`embedding_stats`).

    The subsets, the pairs' crops and their color / blur draws are fixed at construction (their
    own generators), so the curves compare epochs on the same inputs and the monitor never
    touches the training's random streams: `augment` is a DeviceAugment with the run's color
    and blur settings and a generator of its own, used once. Subsets keep the monitor cheap: about 1500 forward
    passes (bank 1000, queries 500) and 2 x 256 for the pairs, a few percent of a default epoch.
    """

    def __init__(self, train_source, test_source, image_size: int, augment, device,
                 crop_scale: float = 0.08, bank: int = 1000, queries: int = 500,
                 pairs: int = 256, seed: int = 0, channels_last: bool = False):
        from .data import TwoViews

        g = torch.Generator().manual_seed(seed + 4242)
        pick = lambda src, n: torch.randperm(len(src), generator=g)[:min(n, len(src))].tolist()  # noqa: E731
        self.bank = _Subset(train_source, pick(train_source, bank))
        self.queries = _Subset(test_source, pick(test_source, queries))
        views = TwoViews(test_source, image_size, seed=seed + 99, scale=(crop_scale, 1.0))
        idx = pick(test_source, pairs)
        p = torch.stack([views[i][0] for i in idx])  # [P, 2, 3, S, S] uint8
        b = p.shape[0]
        # the pairs' color distortion and blur are drawn once, here
        self.pairs = augment(p.to(device).transpose(0, 1).reshape(2 * b, *p.shape[2:]))
        self.image_size, self.device, self.channels_last = image_size, device, channels_last

    @torch.no_grad()
    def __call__(self, model) -> dict:
        """model: a SimCLRModel (encoder, head); -> {'knn_top1', 'pos_cos', 'align', 'uniform',
        'erank'}. The model is put back in its previous train / eval mode."""
        from .evaluate import extract_features

        enc = model.encoder
        with torch.random.fork_rng(devices=[]):  # a DataLoader draws its base seed from torch's RNG
            ftr, ytr = extract_features(enc, self.bank, self.image_size, self.device,
                                        channels_last=self.channels_last)
            fte, yte = extract_features(enc, self.queries, self.image_size, self.device,
                                        channels_last=self.channels_last)
        was = model.training
        model.eval()
        _, z = model(self.pairs)
        model.train(was)
        b = z.shape[0] // 2
        out = {"knn_top1": knn_top1(ftr, ytr, fte, yte, k=20)}
        out.update(embedding_stats(z[:b].float(), z[b:].float()))
        return out


class _Subset(torch.utils.data.Dataset):
    def __init__(self, source, indices):
        self.source, self.indices = source, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[self.indices[i]]
