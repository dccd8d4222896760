"""The memory bank never materializes an [N, K] matrix (docs/architecture.md, 2.1): the fused
NT-Xent with a bank of K columns grows the peak RSS of a forward + backward + bank update by far
less than one [N, K] fp32 matrix, while the reference twin (which materializes the logits) grows
it by more than that matrix: the control showing that the measurement sees such a matrix.

Measured in a fresh process per case (CPU peak RSS, /proc/self/status VmHWM reset through
/proc/self/clear_refs), after a warm-up call, so thread pools and allocator caches are excluded.
"""
import os
import subprocess
import sys

import pytest

import simclr_ext

N, K, D = 128, 131072, 16  # one [N, K] fp32 matrix = 64 MiB; the bank itself is 8 MiB
MATRIX_MIB = N * K * 4 / 2**20

_CHILD = r"""
import sys, torch
import simclr_ext
from simclr_ext import reference
impl = sys.argv[1]
torch.manual_seed(0)
cls = simclr_ext.NTXentLoss if impl == "fused" else reference.NTXentLoss
crit = cls(0.5, memory_bank_size=({K}, {D}))
out0 = torch.randn({N}, {D}, requires_grad=True)
out1 = torch.randn({N}, {D}, requires_grad=True)

def step():
    loss = crit(out0, out1)
    loss.backward()
    return float(loss)

step()  # warm-up: thread pools, lazy inits, allocator caches

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
value = step()
assert value == value, "loss is NaN"
print("PEAK_MIB", (status("VmHWM:") - base) / 2**20)
""".replace("{N}", str(N)).replace("{K}", str(K)).replace("{D}", str(D))


def _peak_mib(impl: str) -> float:
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(simclr_ext.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pkg_parent)
    out = subprocess.run([sys.executable, "-c", _CHILD, impl], capture_output=True, text=True,
                         timeout=300, env=env, cwd=os.path.dirname(pkg_parent) or "/")
    assert out.returncode == 0, f"child failed:\n{out.stdout}\n{out.stderr}"
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK_MIB")]
    assert line, out.stdout
    return float(line[0].split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_bank_step_peak_memory_is_far_below_one_n_by_k_matrix():
    reference_mib = _peak_mib("reference")
    fused_mib = _peak_mib("fused")
    # the control: the materialized twin holds at least one [N, K] matrix at its peak
    assert reference_mib >= MATRIX_MIB, (reference_mib, MATRIX_MIB)
    # the fused op: tiles and O((N + K) D) vectors only, under a quarter of one such matrix
    assert fused_mib < MATRIX_MIB / 4, (fused_mib, MATRIX_MIB, reference_mib)
