"""NT-Logistic and margin-triplet forward + backward: fused simclr_ext vs the materialized
reference twins (simclr_ext.reference). CPU: 2N in {1024, 4096}, D = 128, fp32; CUDA: 2N in
{4096, 16384}, fp32. Each loss with and without semi-hard sets. extra_info: peak_mib (CPU: a
fresh subprocess's peak RSS growth; CUDA: max_memory_allocated growth) and tflops = 6 (2N)^2 D /
median time, the nominal GEMM work (1 forward + 2 backward similarity GEMMs).

    python -m pytest benchmarks/bench_pair_loss.py --benchmark-only --benchmark-json=/tmp/pair.json
"""
import pytest
import torch

import harness  # first: puts an in-place build ahead of an installed simclr_ext

import simclr_ext  # noqa: E402
from simclr_ext import reference  # noqa: E402

DIM = 128
CASES = ([("cpu", n2, "float32") for n2 in (1024, 4096)]
         + [("cuda", n2, "float32") for n2 in (4096, 16384)])
LOSSES = ("nt_logistic", "margin_triplet")
IMPLS = ("fused", "reference")


def _loss_fn(impl, loss, semi_hard):
    mod = simclr_ext if impl == "fused" else reference
    if loss == "nt_logistic":
        return lambda z: mod.nt_logistic_loss(z, None, 0.5, semi_hard=semi_hard)
    return lambda z: mod.margin_triplet_loss(z, None, 0.5, semi_hard=semi_hard)


def setup(impl, loss, semi_hard, n2, dim=DIM, dtype="float32", device="cpu"):
    """Inputs for one case and the zero-argument forward + backward call to measure (also the
    target of harness.cpu_peak_mib, which runs it in a fresh process)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n2, dim, generator=g).to(device=device, dtype=getattr(torch, dtype))
    z.requires_grad_(True)
    fn = _loss_fn(impl, loss, semi_hard)

    def run():
        z.grad = None
        fn(z).backward()
        harness.sync(device)

    return run


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("semi_hard", [False, True], ids=["all", "semihard"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_pair_loss_fwd_bwd(benchmark, bench_device, case, loss, semi_hard, impl):
    device, n2, dtype = case
    if device != bench_device:
        pytest.skip(f"{device} case")
    sh = " semi-hard" if semi_hard else ""
    benchmark.group = f"{loss}{sh} {device} 2N={n2} D={DIM} {dtype}"
    run = setup(impl, loss, semi_hard, n2, DIM, dtype, device)
    try:
        run()  # warm-up
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} out of memory at 2N={n2}: {str(exc).splitlines()[0]}")
    if device == "cuda":
        peak = harness.cuda_peak_mib(run)
    else:
        peak = harness.cpu_peak_mib("bench_pair_loss:setup", impl=impl, loss=loss,
                                    semi_hard=semi_hard, n2=n2, dim=DIM, dtype=dtype,
                                    device=device)
    benchmark.extra_info.update({"op": loss, "impl": impl, "device": device,
                                 "case": f"2N={n2} D={DIM} {dtype}{sh} fwd+bwd",
                                 "peak_mib": round(peak, 1)})
    rounds = 10 if device == "cuda" else {1024: 10}.get(n2, 5)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["tflops"] = round(6.0 * n2 * n2 * DIM / benchmark.stats.stats.median
                                           / 1e12, 3)
