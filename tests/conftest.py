"""Shared test harness: the cpu/cuda `device` parametrization and a gloo multi-process runner."""
import contextlib
import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

HAS_CUDA = torch.cuda.is_available()

# `device` fixture: every op test runs on cpu and on cuda; cuda cases carry the `cuda` marker
# (pytest -m cuda selects them, benchmarks/gpu_check.sh runs them) and skip without a GPU.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_collection_modifyitems(config, items):
    # A test that asks for a cuda device by name (not through the fixture) is marked `cuda` too.
    for item in items:
        if "cuda" in item.nodeid.split("[")[-1] and "cuda" not in item.keywords:
            item.add_marker(pytest.mark.cuda)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, fn, args, result_dir):
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    out = os.path.join(result_dir, f"rank{rank}.pt")
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        torch.save({"ok": True, "result": result}, out)
    except BaseException:  # reported to the parent, which fails the test with it
        torch.save({"ok": False, "error": traceback.format_exc()}, out)


def run_distributed(fn, world_size, *args, timeout=300, tmp_dir):
    """Run fn(rank, world_size, *args) in world_size spawned gloo processes on the CPU.

    fn must be importable (defined at module level). Returns the list of per-rank results (any
    torch.save-able value); a failure in any rank fails the caller with that rank's traceback.
    """
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, str(tmp_dir)))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    if hung:
        raise RuntimeError(f"distributed ranks {hung} did not finish within {timeout} s")
    results = []
    for r in range(world_size):
        path = os.path.join(str(tmp_dir), f"rank{r}.pt")
        if not os.path.exists(path):
            raise RuntimeError(f"rank {r} exited with code {procs[r].exitcode} and no result")
        rec = torch.load(path, weights_only=False)
        if not rec["ok"]:
            raise RuntimeError(f"rank {r} failed:\n{rec['error']}")
        results.append(rec["result"])
    return results


@pytest.fixture
def distributed(tmp_path):
    """`distributed(fn, world_size, *args)` -> per-rank results; see run_distributed."""

    def run(fn, world_size, *args, timeout=300):
        sub = tmp_path / f"dist{len(list(tmp_path.iterdir()))}"
        sub.mkdir()
        return run_distributed(fn, world_size, *args, timeout=timeout, tmp_dir=sub)

    return run


@contextlib.contextmanager
def tf32_matmul(enabled):
    """Set torch.backends.cuda.matmul.allow_tf32 for the block, restore it afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
