"""NT-Xent forward + backward: fused simclr_ext vs the materialized reference vs
torch.compile(reference). CPU: 2N in {1024, 4096, 16384}, D = 128, fp32. CUDA: 2N in
{4096, 16384, 65536}, fp32 and bf16. extra_info: peak_mib (CPU: a fresh subprocess's peak RSS
growth; CUDA: max_memory_allocated growth) and tflops = 6 (2N)^2 D / median time, the nominal
GEMM work of forward (1 similarity GEMM) + backward (2 more), the same count for every impl.
A reference that runs out of memory is skipped with the reason recorded.

CPU only, impl "floor": the sgemm floor of the fused kernel, the GEMMs its symmetric schedule
runs (same tiles, same threads, no elementwise work; benchmarks/ntxent_floor.py). A fused
round runs before each floor round and extra_info["floor_over_fused"] is the ratio of the two
medians: the fraction of the floor reached, side by side under the same load. extra_info records the thread count and SIMCLR_EXT_CPU_ISA (an ISA cap: =avx2 runs the
AVX2 code of the fp32 passes on an AVX-512 CPU).

    python -m pytest benchmarks/bench_ntxent.py --benchmark-only --benchmark-json=/tmp/ntxent.json
"""
import os
import statistics
import time

import pytest
import torch

import harness  # first: puts an in-place build ahead of an installed simclr_ext

import ntxent_floor  # noqa: E402
import simclr_ext  # noqa: E402
from simclr_ext import reference  # noqa: E402

DIM = 128
CASES = (
    [("cpu", n2, "float32") for n2 in (1024, 4096, 16384)]
    + [("cuda", n2, dt) for n2 in (4096, 16384, 65536) for dt in ("float32", "bfloat16")]
)
IMPLS = ("fused", "reference", "compiled", "floor")
_COMPILED = {}


def _impl_fn(impl):
    if impl == "fused":
        return simclr_ext.nt_xent_loss
    if impl == "reference":
        return reference.nt_xent_loss
    if impl not in _COMPILED:
        _COMPILED[impl] = torch.compile(reference.nt_xent_loss)
    return _COMPILED[impl]


def setup(impl, n2, dim=DIM, dtype="float32", device="cpu"):
    """Inputs for one case and the zero-argument forward + backward call to measure (also the
    target of harness.cpu_peak_mib, which runs it in a fresh process)."""
    if impl == "floor":
        return ntxent_floor.floor_fn(n2, dim, getattr(torch, dtype))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n2, dim, generator=g).to(device=device, dtype=getattr(torch, dtype))
    z.requires_grad_(True)
    loss_fn = _impl_fn(impl)

    def run():
        z.grad = None
        loss_fn(z, None, 0.5).backward()
        harness.sync(device)

    return run


def _rounds(n2, device):
    if device == "cuda":
        return 10
    return {1024: 10, 4096: 5}.get(n2, 3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_ntxent_fwd_bwd(benchmark, bench_device, case, impl):
    device, n2, dtype = case
    if device != bench_device:
        pytest.skip(f"{device} case")
    if impl == "floor" and device != "cpu":
        pytest.skip("the sgemm floor is measured on the CPU only")
    benchmark.group = f"ntxent {device} 2N={n2} D={DIM} {dtype}"
    run = setup(impl, n2, DIM, dtype, device)
    try:
        run()  # warm-up (and compilation for "compiled")
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} out of memory at 2N={n2} ({dtype}): {str(exc).splitlines()[0]}")
    if device == "cuda":
        peak = harness.cuda_peak_mib(run)
    else:
        peak = harness.cpu_peak_mib("bench_ntxent:setup", impl=impl, n2=n2, dim=DIM,
                                    dtype=dtype, device=device)
    benchmark.extra_info.update({"op": "ntxent", "impl": impl, "device": device,
                                 "case": f"2N={n2} D={DIM} {dtype} fwd+bwd",
                                 "peak_mib": round(peak, 1), "threads": torch.get_num_threads(),
                                 "isa_cap": os.environ.get("SIMCLR_EXT_CPU_ISA", "none")})
    if impl == "floor":
        # Before each floor round, one untimed-by-pytest fused round, timed here: the pair sees
        # the same load, so floor_over_fused is the side-by-side fraction of the floor reached.
        # CPU time of the process too: on a shared machine it does not count the time a thread
        # waits for a core (but counts OpenMP's spin-waiting).
        fused, fused_s, fused_cpu, floor_cpu = setup("fused", n2, DIM, dtype, device), [], [], []
        fused()  # warm-up

        def between():
            t0, c0 = time.perf_counter(), time.process_time()
            fused()
            fused_s.append(time.perf_counter() - t0)
            fused_cpu.append(time.process_time() - c0)

        def floor_timed():
            c0 = time.process_time()
            run()
            floor_cpu.append(time.process_time() - c0)

        # more rounds than the others: on a shared machine the ratio is the noisy figure
        benchmark.pedantic(floor_timed, setup=between, rounds=max(5, _rounds(n2, device)),
                           iterations=1, warmup_rounds=0)
        med = statistics.median
        benchmark.extra_info.update({
            "fused_interleaved_s": [round(t, 4) for t in fused_s],
            "floor_over_fused": round(benchmark.stats.stats.median / med(fused_s), 3),
            "fused_cpu_s": [round(t, 4) for t in fused_cpu],
            "floor_cpu_s": [round(t, 4) for t in floor_cpu],
            "floor_over_fused_cpu": round(med(floor_cpu) / med(fused_cpu), 3),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        })
    else:
        benchmark.pedantic(run, rounds=_rounds(n2, device), iterations=1, warmup_rounds=0)
    flops = 6.0 * n2 * n2 * DIM
    benchmark.extra_info["tflops"] = round(flops / benchmark.stats.stats.median / 1e12, 3)
    if impl == "floor":  # the GEMM rate it ran at
        benchmark.extra_info["gemm_gflops"] = round(
            ntxent_floor.gemm_flops(n2, DIM) / benchmark.stats.stats.median / 1e9, 1)
