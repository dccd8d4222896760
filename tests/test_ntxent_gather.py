"""Gathered negatives over gloo ranks on the CPU: the collectives one step issues
(docs/architecture.md, 2.4). The global row count is known on the host once the row counts are
gathered, so no collective of an integer tensor follows (no host sync on it); with
equal_batch_sizes=True the counts are not gathered at all, and the result is the same bits."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

import simclr_ext


def _recorded_step(rank, n, reduction, equal):
    """(loss, weight grad, collectives) of one gathered NT-Xent step of a small linear model."""
    torch.manual_seed(0)  # the same model on every rank
    model = nn.Linear(6, 5).double()
    g = torch.Generator().manual_seed(10 + rank)
    x_i = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x_j = torch.randn(n, 6, generator=g, dtype=torch.float64)
    calls = []
    real_gather, real_reduce = dist.all_gather, dist.all_reduce

    def all_gather(out, t, *args, **kwargs):
        calls.append(("all_gather", t.dtype))
        return real_gather(out, t, *args, **kwargs)

    def all_reduce(t, *args, **kwargs):
        calls.append(("all_reduce", t.dtype))
        return real_reduce(t, *args, **kwargs)

    dist.all_gather, dist.all_reduce = all_gather, all_reduce
    try:
        loss = simclr_ext.nt_xent_loss(model(x_i), model(x_j), 0.3, reduction,
                                       gather_distributed=True, equal_batch_sizes=equal)
        loss.backward()
    finally:
        dist.all_gather, dist.all_reduce = real_gather, real_reduce
    return loss.detach(), model.weight.grad.clone(), calls


def _worker(rank, world_size, n):
    return {(reduction, equal): _recorded_step(rank, n, reduction, equal)
            for reduction in ("mean", "sum") for equal in (False, True)}


@pytest.mark.slow
def test_equal_batch_sizes_skips_the_count_gather_and_changes_no_bit(distributed):
    results = distributed(_worker, 2, 4)
    for rank, res in enumerate(results):
        for reduction in ("mean", "sum"):
            loss, grad, calls = res[reduction, False]
            loss_eq, grad_eq, calls_eq = res[reduction, True]
            assert torch.equal(loss, loss_eq) and torch.equal(grad, grad_eq), (rank, reduction)
            integer = [c for c in calls if not c[1].is_floating_point]
            # Uneven-safe path: the row counts, once; nothing integer after them.
            assert integer == [("all_gather", torch.int64)], (rank, reduction, calls)
            # Equal sizes: no integer collective at all; the float ones are the same.
            assert all(c[1].is_floating_point for c in calls_eq), (rank, reduction, calls_eq)
            assert calls_eq == [c for c in calls if c[1].is_floating_point]
