"""Benchmark helpers: which simclr_ext the benchmarks import, peak memory of one call (CPU: a
fresh subprocess's peak RSS over its baseline; CUDA: torch.cuda.max_memory_allocated over the
allocated baseline), device naming and the result-file location benchmarks/results/<device>/.

Every benchmark file and script in benchmarks/ imports this module before simclr_ext (benchmarks/
is on sys.path: it is the scripts' directory, and pytest adds it for the suites)."""
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MIB = 2**20


def in_place_build() -> bool:
    """True when `python setup.py build_ext --inplace` put _C into the source tree."""
    return bool(list((ROOT / "simclr_ext").glob("_C*.so")))


# The one place that decides which simclr_ext the benchmarks measure: an in-place build when
# there is one (the code being worked on), else the installed package. The source tree alone has
# no compiled _C and must not shadow an installed package.
if in_place_build() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def device_name(device: str = "cpu") -> str:
    """Readable name of the machine that runs `device`, e.g. 'NVIDIA H100 80GB HBM3'."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def device_slug(device: str = "cpu") -> str:
    """A directory name for the machine that produced a result, e.g. 'cpu-amd-epyc-9654-2c'."""
    name = device_name(device) if device == "cuda" else "cpu " + device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"-cores$", "c", slug)


def results_dir(device: str = "cpu") -> Path:
    d = BENCH_DIR / "results" / device_slug(device)
    d.mkdir(parents=True, exist_ok=True)
    return d


_CHILD = r"""
import importlib, json
import harness  # the working directory is benchmarks/: the same simclr_ext as the parent
mod_name, fn_name = {target!r}.split(":")
fn = getattr(importlib.import_module(mod_name), fn_name)(**json.loads({kwargs!r}))
fn()  # warm-up: thread pools, lazy inits, allocator caches

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM (peak RSS) to the current RSS
fn()
print("PEAK_BYTES", status("VmHWM:") - base)
"""


def cpu_peak_mib(target: str, **kwargs) -> float:
    """Peak RSS growth (MiB) of one call, measured in a fresh process.

    target is 'module:function' importable from benchmarks/ or the repository root;
    function(**kwargs) builds the inputs and returns the zero-argument callable to measure.
    """
    code = _CHILD.format(target=target, kwargs=json.dumps(kwargs))
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env,
        cwd=str(BENCH_DIR),
    )
    m = re.search(r"PEAK_BYTES (-?\d+)", out.stdout)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"peak-memory subprocess failed:\n{out.stdout}\n{out.stderr}")
    return int(m.group(1)) / MIB


def cuda_peak_mib(fn) -> float:
    """Peak CUDA memory (MiB) allocated by one call of fn above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / MIB


def peak_mib(device: str, fn=None, target: str = None, **kwargs) -> float:
    """CUDA: measure fn in-process. CPU: measure target(**kwargs) in a fresh subprocess."""
    if device == "cuda":
        return cuda_peak_mib(fn)
    return cpu_peak_mib(target, **kwargs)


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()
