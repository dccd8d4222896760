#!/usr/bin/env python
"""Run the benchmark suites and save pytest-benchmark JSON under benchmarks/results/<device>/.

    python benchmarks/run_benchmarks.py                 # CPU suites, all ops
    python benchmarks/run_benchmarks.py --device cuda   # CUDA suites (gpu_check.sh does this)
    python benchmarks/run_benchmarks.py -k ntxent       # one op
Then `python benchmarks/report.py benchmarks/results/<device>/*.json` prints README's tables.
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="directory (default results/<device>/)")
    ap.add_argument("--name", default=None, help="JSON file name (default bench_<device>[_<k>].json)")
    ap.add_argument("-k", default=None, help="pytest -k expression (e.g. ntxent)")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = ap.parse_args()

    out = args.out or harness.results_dir(args.device)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.k}" if args.k else ""
    json_path = out / (args.name or f"bench_{args.device}{suffix}.json")
    in_place = harness.in_place_build()
    cmd = [sys.executable, "-m", "pytest", str(HERE), "--benchmark-only", "-q",
           f"--bench-device={args.device}", f"--benchmark-json={json_path}"]
    if args.k:
        cmd += ["-k", args.k]
    cmd += args.pytest_args
    print("+", " ".join(cmd), flush=True)
    # An in-place build is imported from the repository root; otherwise the installed package.
    rc = subprocess.call(cmd, cwd=str(HERE.parent if in_place else HERE))
    print(f"saved {json_path}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
