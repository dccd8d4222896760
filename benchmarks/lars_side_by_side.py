#!/usr/bin/env python
"""LARS step implementations timed round-robin in one process (ResNet-50 parameters, fp32), so a
busy shared machine slows them alike; complements bench_lars.py's separate runs.

    python benchmarks/lars_side_by_side.py [--rounds 10] [--impls fused,sgd_foreach,...]
    OMP_NUM_THREADS=1 python benchmarks/lars_side_by_side.py     # one thread
"""
import argparse
import statistics
import time

import harness  # noqa: F401  (first: puts an in-place build ahead of an installed simclr_ext)

import torch  # noqa: E402

import bench_lars  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--impls", default=",".join(bench_lars.IMPLS))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    impls = args.impls.split(",")
    steps = {i: bench_lars.make_step(i, args.device) for i in impls}
    times = {i: [] for i in impls}
    for _ in range(args.rounds):
        for i in impls:
            t0 = time.perf_counter()
            steps[i]()
            times[i].append(time.perf_counter() - t0)
    med = {i: statistics.median(times[i]) for i in impls}
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    for i in impls:
        ratio = f"  {med[i] / med['fused']:.2f}x fused" if "fused" in med and i != "fused" else ""
        print(f"{i:12s} median {med[i] * 1e3:8.1f} ms  min {min(times[i]) * 1e3:8.1f} ms{ratio}")


if __name__ == "__main__":
    main()
