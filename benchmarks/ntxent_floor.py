"""Fused CPU NT-Xent forward + backward against its sgemm floor, side by side in one process.

The floor is the GEMM work the symmetric schedule must do (docs/architecture.md section 2.2),
run by torch's addmm (MKL) at the same tile shapes and threads: the upper-triangle tiles of
S = u u^T / tau once for the forward and once more for the backward, and the backward's
G += M u from both sides of each tile: ~4 (2N)^2 D FLOPs in all. Rounds alternate fused / floor so that the load of a
shared machine hits both alike; the figure is the ratio of the medians (and the median of the
per-round ratios).

    python benchmarks/ntxent_floor.py --n2 16384 --rounds 5
    SIMCLR_EXT_CPU_ISA=avx2 python benchmarks/ntxent_floor.py   # AVX2 clones on an AVX-512 CPU
"""
import argparse
import concurrent.futures
import os
import statistics
import time

import torch

import harness  # noqa: F401  (first: an in-place build ahead of an installed simclr_ext)

import simclr_ext  # noqa: E402

TILE = 256


def floor_fn(n2, dim, dtype=torch.float32, workers=None, shape="tiles"):
    """The zero-argument call that runs the symmetric schedule's GEMMs, forward + backward: the
    FLOPs of its 256 x 256 upper-triangle tiles (S once in the forward and again in the
    backward, G_I += S_IJ u_J for every tile, G_J += S_IJ^T u_I off the diagonal), by P worker
    threads, each running single-threaded MKL calls into its own buffer and gradient
    accumulator, as the kernel's workers do. Only the elementwise passes, the masking and the
    reductions are left out.

    shape="tiles" (the floor): one call per tile, the kernel's exact shapes and hand-out (tile q
    to worker q mod P). Python adds ~25 ms of CPU time of dispatch at 2N = 16384 (~2% of the
    floor; the kernel's own C++ dispatch is part of its time), the one bias in the kernel's
    favor. shape="strips": the tiles of a row tile I in one call (u_I against u_{J >= I}),
    strips I and nt-1-I paired per worker; larger GEMMs, but measured ~7% slower in CPU time
    than the tiles (the [256, 2N] strip leaves the cache before the backward's two GEMMs read
    it), so not a stricter floor.
    """
    workers = workers or torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(n2, dim, generator=g, dtype=dtype), dim=1)
    nt = (n2 + TILE - 1) // TILE
    inv_tau = 2.0
    accs = [torch.zeros(n2, dim, dtype=dtype) for _ in range(workers)]
    if shape == "tiles":
        pairs = [(i, j) for i in range(nt) for j in range(i, nt)]
        bufs = [torch.empty(TILE, TILE, dtype=dtype) for _ in range(workers)]

        def work(p, backward):
            S, G = bufs[p], accs[p]
            for I, J in pairs[p::workers]:
                ui, uj = u[I * TILE:(I + 1) * TILE], u[J * TILE:(J + 1) * TILE]
                s = S[: ui.shape[0], : uj.shape[0]]
                s.addmm_(ui, uj.t(), beta=0, alpha=inv_tau)
                if backward:
                    G[I * TILE:(I + 1) * TILE].addmm_(s, uj)
                    if I != J:
                        G[J * TILE:(J + 1) * TILE].addmm_(s.t(), ui)
    else:
        order = [k for i in range((nt + 1) // 2) for k in dict.fromkeys((i, nt - 1 - i))]
        mine = [order[p::workers] for p in range(workers)]
        bufs = [torch.empty(TILE * n2, dtype=dtype) for _ in range(workers)]

        def work(p, backward):
            G = accs[p]
            for I in mine[p]:
                b = I * TILE
                ui, ur = u[b:b + TILE], u[b:]
                s = bufs[p][: ui.shape[0] * ur.shape[0]].view(ui.shape[0], ur.shape[0])
                s.addmm_(ui, ur.t(), beta=0, alpha=inv_tau)
                if backward:
                    G[b:b + TILE].addmm_(s, ur)
                    if ur.shape[0] > ui.shape[0]:  # the diagonal tile counts once
                        G[b + TILE:].addmm_(s[:, ui.shape[0]:].t(), ui)

    pool = concurrent.futures.ThreadPoolExecutor(workers)

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # MKL single-threaded inside each worker, as in the kernel
        try:
            for backward in (False, True):
                list(pool.map(lambda p: work(p, backward), range(workers)))
        finally:
            torch.set_num_threads(threads)

    return run


def fused_fn(n2, dim, dtype=torch.float32, temperature=0.5):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n2, dim, generator=g, dtype=dtype).requires_grad_(True)

    def run():
        z.grad = None
        simclr_ext.nt_xent_loss(z, None, temperature).backward()

    return run


def gemm_flops(n2, dim):
    nt = (n2 + TILE - 1) // TILE
    tile = 2.0 * TILE * TILE * dim
    return tile * (nt * (nt + 1) // 2 * 3 + nt * (nt - 1) // 2)  # S twice, S u; S^T u off-diagonal


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n2", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--floor", choices=("tiles", "strips"), default="tiles")
    args = ap.parse_args()
    fused, floor = fused_fn(args.n2, args.dim), floor_fn(args.n2, args.dim, shape=args.floor)
    fused(), floor()  # warm-up
    tf, tg, cf, cg = [], [], [], []
    for _ in range(args.rounds):
        for fn, acc, cpu in ((fused, tf, cf), (floor, tg, cg)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            acc.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    mf, mg = statistics.median(tf), statistics.median(tg)
    ratios = [g / f for f, g in zip(tf, tg)]
    print(f"2N={args.n2} D={args.dim} threads={torch.get_num_threads()} "
          f"isa_cap={os.environ.get('SIMCLR_EXT_CPU_ISA', 'none')} floor={args.floor} load={os.getloadavg()[0]:.1f}")
    print(f"  fused  median {mf * 1e3:8.1f} ms   rounds {' '.join(f'{t * 1e3:.0f}' for t in tf)}")
    print(f"  floor  median {mg * 1e3:8.1f} ms   rounds {' '.join(f'{t * 1e3:.0f}' for t in tg)}"
          f"   ({gemm_flops(args.n2, args.dim) / mg / 1e9:.0f} GFLOP/s)")
    print(f"  floor / fused: {mg / mf:.3f} (medians), {statistics.median(ratios):.3f} "
          f"(median of per-round ratios)")
    # CPU time (all threads of the process): what the work costs when the machine is shared
    # and threads wait for a core; wall time includes those waits.
    print(f"  cpu time: fused {statistics.median(cf) * 1e3:.0f} ms, floor "
          f"{statistics.median(cg) * 1e3:.0f} ms, floor / fused {statistics.median(cg) / statistics.median(cf):.3f}")


if __name__ == "__main__":
    main()
