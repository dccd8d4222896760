"""The distributed test runner itself: ranks really run, see different data, and errors surface."""
import pytest
import torch
import torch.distributed as dist


def _allreduce_rank_data(rank, world_size):
    t = torch.full((3,), float(rank + 1))
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t}


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


@pytest.mark.parametrize("world_size", [2, 3])
def test_distributed_runner_runs_every_rank(distributed, world_size):
    results = distributed(_allreduce_rank_data, world_size)
    assert [r["rank"] for r in results] == list(range(world_size))
    expected = sum(range(1, world_size + 1))
    for r in results:
        assert r["world"] == world_size
        torch.testing.assert_close(r["sum"], torch.full((3,), float(expected)))


def test_distributed_runner_reports_rank_failure(distributed):
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        distributed(_fail_on_rank_one, 2)
