#!/usr/bin/env python
"""Run the benchmark suites and save pytest-benchmark JSON under benchmarks/results/<device>/.

    python benchmarks/run_benchmarks.py                 # CPU suites, all ops
    python benchmarks/run_benchmarks.py --device cuda   # CUDA suites (gpu_check.sh does this)
    python benchmarks/run_benchmarks.py -k ntxent       # one op
    python benchmarks/run_benchmarks.py --compare       # vs this machine's committed result
    python benchmarks/run_benchmarks.py --compare RESULT.json --max-slowdown 10
Then `python benchmarks/report.py benchmarks/results/<device>/*.json` prints README's tables.

--compare runs the suites with pytest-benchmark's --benchmark-compare against a saved result of
the same machine kind (default: benchmarks/results/<this machine>/bench_<device>.json, the
committed full run) and --benchmark-compare-fail=median:<max-slowdown>%, saves the new JSON under
.benchmarks/compare/ (not over the committed one), prints the benchmarks, and so the ops, that got
slower, and exits 1 when there is one.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import report  # noqa: E402


def default_baseline(device):
    """The committed full run of this machine kind (run_benchmarks.py's default file name)."""
    return harness.BENCH_DIR / "results" / harness.device_slug(device) / f"bench_{device}.json"


def pytest_command(json_path, device, k=None, baseline=None, max_slowdown=15.0, extra=()):
    cmd = [sys.executable, "-m", "pytest", str(HERE), "--benchmark-only", "-q",
           f"--bench-device={device}", f"--benchmark-json={json_path}"]
    if k:
        cmd += ["-k", k]
    if baseline is not None:
        # pytest-benchmark takes an existing file path as the run to compare with.
        cmd += [f"--benchmark-compare={baseline}",
                f"--benchmark-compare-fail=median:{max_slowdown:g}%"]
    return cmd + list(extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory (default results/<device>/, or .benchmarks/compare/ with "
                         "--compare)")
    ap.add_argument("--name", default=None, help="JSON file name (default bench_<device>[_<k>].json)")
    ap.add_argument("-k", default=None, help="pytest -k expression (e.g. ntxent)")
    ap.add_argument("--compare", nargs="?", const="", default=None, metavar="RESULT.json",
                    help="compare with a saved run (default: this machine's committed "
                         "bench_<device>.json) and fail on a slowdown")
    ap.add_argument("--max-slowdown", type=int, default=15, metavar="PCT",
                    help="with --compare: median slowdown in percent that fails (default 15; "
                         "runs on a busy machine vary by about 5-10%%)")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = ap.parse_args()

    baseline = None
    if args.compare is not None:
        baseline = Path(args.compare) if args.compare else default_baseline(args.device)
        if not baseline.is_file():
            saved = sorted(p.relative_to(HERE) for p in (HERE / "results").glob("*/*.json"))
            sys.exit(f"no saved result {baseline} to compare with (a run on this machine kind, "
                     f"{harness.device_name(args.device)}, committed there by a plain run): pass "
                     f"--compare RESULT.json. Saved results: {', '.join(map(str, saved))}")
        base_doc = json.load(open(baseline))
        base_machine, this_machine = report.machine_name(base_doc), harness.device_name(args.device)
        if base_machine != this_machine:
            print(f"warning: {baseline} was measured on {base_machine}, this is {this_machine}: "
                  "the times are not comparable", flush=True)

    if args.out:
        out = args.out
    elif baseline is not None:
        out = HERE.parent / ".benchmarks" / "compare"  # never overwrite the committed baseline
    else:
        out = harness.results_dir(args.device)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.k}" if args.k else ""
    json_path = out / (args.name or f"bench_{args.device}{suffix}.json")
    in_place = harness.in_place_build()
    cmd = pytest_command(json_path, args.device, args.k, baseline, args.max_slowdown,
                         args.pytest_args)
    print("+", " ".join(cmd), flush=True)
    # An in-place build is imported from the repository root; otherwise the installed package.
    rc = subprocess.call(cmd, cwd=str(HERE.parent if in_place else HERE))
    print(f"saved {json_path}")
    if baseline is not None and json_path.is_file():
        rows = report.compare(base_doc, json.load(open(json_path)))
        print(report.format_comparison(rows, args.max_slowdown, baseline_name=str(baseline)))
        if report.slower(rows, args.max_slowdown):
            rc = 1  # pytest-benchmark itself ends such a run with an INTERNALERROR (exit 3)
    sys.exit(rc)


if __name__ == "__main__":
    main()
