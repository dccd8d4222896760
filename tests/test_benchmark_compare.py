"""Performance tracking: benchmarks/report.py's comparison of two pytest-benchmark runs, and the
pytest-benchmark flags benchmarks/run_benchmarks.py --compare passes (they must fail a run that
got slower)."""
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    """Import benchmarks/<name>.py without leaving benchmarks/ on sys.path: the distributed tests'
    spawned ranks would otherwise unpickle their worker from benchmarks/conftest.py."""
    saved_path, saved_modules = sys.path[:], set(sys.modules)
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
        for added in set(sys.modules) - saved_modules:
            if added in ("harness", "report", "conftest"):
                del sys.modules[added]
    return module


report = load("report")


def bench(fullname, op, impl, median):
    return {"fullname": fullname, "name": fullname.split("::")[-1], "group": None,
            "extra_info": {"op": op, "impl": impl, "case": "c"},
            "stats": {"median": median, "mean": median, "min": median}}


def make_runs(rng, max_slowdown):
    """A baseline and a new run with, per benchmark, a known factor new/old. Returns (old, new,
    names that are slower beyond max_slowdown percent)."""
    old, new, want = [], [], set()
    factors = {
        "clearly_slower": 1 + (max_slowdown + rng.uniform(5, 50)) / 100,
        "a_bit_slower": 1 + rng.uniform(0, max_slowdown - 2) / 100,
        "faster": rng.uniform(0.3, 0.95),
        "unchanged": 1.0,
    }
    for i, (kind, factor) in enumerate(factors.items()):
        for op in ("ntxent", "lars"):
            name = f"benchmarks/bench_{op}.py::test_{kind}[cpu-{i}]"
            t = rng.uniform(1e-5, 1e-1)
            old.append(bench(name, op, "fused", t))
            new.append(bench(name, op, "fused", t * factor))
            if factor > 1 + max_slowdown / 100:
                want.add(name)
    # Only in one of the runs: nothing to compare, never reported.
    old.append(bench("benchmarks/bench_color.py::test_removed[cpu]", "color", "fused", 1.0))
    new.append(bench("benchmarks/bench_color.py::test_added[cpu]", "color", "fused", 9.0))
    rng.shuffle(new)
    return {"benchmarks": old}, {"benchmarks": new}, want


def test_compare_reports_exactly_the_benchmarks_slower_than_the_threshold():
    rng = random.Random()
    max_slowdown = rng.choice([5, 10, 15, 25])
    old, new, want = make_runs(rng, max_slowdown)
    rows = report.compare(old, new)
    assert len(rows) == 8  # the benchmarks present in both runs
    assert {r["fullname"] for r in report.slower(rows, max_slowdown)} == want
    for r in rows:
        assert r["change_pct"] == pytest.approx((r["new"] / r["old"] - 1) * 100)
    text = report.format_comparison(rows, max_slowdown)
    assert f"2 slower by more than {max_slowdown}%" in text
    assert "ops that got slower: lars, ntxent" in text
    assert "test_removed" not in text and "test_added" not in text


def test_compare_of_a_run_with_itself_reports_nothing():
    rng = random.Random()
    old, _, _ = make_runs(rng, 15)
    rows = report.compare(old, old)
    assert not report.slower(rows, 0)
    assert "0 slower" in report.format_comparison(rows, 0)


def test_compare_command_line_exit_code(tmp_path):
    rng = random.Random()
    old, new, want = make_runs(rng, 15)
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    cmd = [sys.executable, str(BENCH_DIR / "report.py"), "--compare"]
    slow = subprocess.run(cmd + [str(tmp_path / "old.json"), str(tmp_path / "new.json")],
                          capture_output=True, text=True, timeout=60)
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "ops that got slower: lars, ntxent" in slow.stdout
    assert slow.stdout.count("| fused |") == len(want)
    same = subprocess.run(cmd + [str(tmp_path / "old.json")] * 2, capture_output=True, text=True,
                          timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr


BENCH_FILE = """
import time

def test_sleep(benchmark):
    benchmark.pedantic(time.sleep, args=(SECONDS,), rounds=3, iterations=1)
"""


def run_sleep_benchmark(tmp_path, seconds, json_name, baseline=None, max_slowdown=15):
    """Run a tiny benchmark with the flags run_benchmarks.py builds; return pytest's exit code."""
    run_benchmarks = load("run_benchmarks")
    (tmp_path / "test_sleep.py").write_text(BENCH_FILE.replace("SECONDS", repr(seconds)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    cmd = run_benchmarks.pytest_command(tmp_path / json_name, "cpu", None, baseline, max_slowdown)
    # The same pytest-benchmark options, on the tiny suite in tmp_path instead of benchmarks/.
    cmd = [c for c in cmd if not c.startswith("--bench-device") and c != str(BENCH_DIR)]
    cmd += [str(tmp_path / "test_sleep.py"), "-p", "no:cacheprovider"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_run_benchmarks_compare_flags_fail_a_slower_run(tmp_path):
    base = run_sleep_benchmark(tmp_path, 0.002, "base.json")
    assert base.returncode == 0, base.stdout + base.stderr
    baseline = tmp_path / "base.json"
    # 0.002 s -> 0.02 s: ten times slower, far beyond 15% whatever the machine's noise.
    slow = run_sleep_benchmark(tmp_path, 0.02, "slow.json", baseline=baseline)
    assert slow.returncode != 0, slow.stdout + slow.stderr
    assert "Performance has regressed" in slow.stdout + slow.stderr
    # A faster run passes the same check.
    fast = run_sleep_benchmark(tmp_path, 0.0002, "fast.json", baseline=baseline)
    assert fast.returncode == 0, fast.stdout + fast.stderr
