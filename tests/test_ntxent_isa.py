"""The fp32 elementwise passes of the CPU NT-Xent kernel exist once per ISA (AVX-512, AVX2,
baseline x86-64; docs/architecture.md section 2.2) and SIMCLR_EXT_CPU_ISA caps the one that runs.
Each variant is checked here in a child process (the cap is read once per process) against the
float64 reference: values and gradients within fp32 tolerance, NaN in -> NaN out, and the same
bits on a second call."""
import json
import os
import subprocess
import sys

import pytest
import torch

import simclr_ext
from simclr_ext import reference

_CHILD = r"""
import json, sys, torch
import simclr_ext
z, up, tau = torch.load(sys.argv[1]), torch.load(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(2)
def run(x):
    x = x.detach().clone().requires_grad_(True)
    loss = simclr_ext.nt_xent_loss(x, temperature=tau, reduction="none")
    (g,) = torch.autograd.grad(loss, x, up)
    return loss.detach(), g
l1, g1 = run(z)
l2, g2 = run(z)
zn = z.clone(); zn[3, 2] = float("nan")
ln = simclr_ext.nt_xent_loss(zn, temperature=tau)
torch.save((l1, g1), sys.argv[4])
print(json.dumps({"same_bits": bool(torch.equal(l1, l2) and torch.equal(g1, g2)),
                  "nan_out": bool(torch.isnan(ln))}))
"""


def _child_env(cap):
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(simclr_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    env.pop("SIMCLR_EXT_CPU_ISA", None)
    if cap is not None:
        env["SIMCLR_EXT_CPU_ISA"] = cap
    return env


@pytest.mark.parametrize("cap", [None, "avx2", "baseline"])
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_each_isa_variant_matches_reference(tmp_path, cap, tau):
    # 2N = 2 * 151: a partial last tile (302 = 256 + 46) whose width is no multiple of 16, 8
    # or 4, so every variant also runs its tail lanes.
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    z64 = torch.randn(2 * 151, 40, generator=g, dtype=torch.float64)
    up64 = torch.rand(2 * 151, generator=g, dtype=torch.float64)
    torch.save(z64.float(), tmp_path / "z.pt")
    torch.save(up64.float(), tmp_path / "up.pt")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "z.pt"), str(tmp_path / "up.pt"), str(tau),
         str(tmp_path / "out.pt")],
        env=_child_env(cap), capture_output=True, text=True, timeout=300,
        # not the repository root: `python -c` puts its working directory first on sys.path,
        # where the bare source tree (no built _C) would shadow the package under test
        cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    flags = json.loads(out.stdout.strip().splitlines()[-1])
    assert flags["same_bits"], "two calls gave different bits"
    assert flags["nan_out"], "a NaN input did not give a NaN loss"
    lf, gf = torch.load(tmp_path / "out.pt")

    z = z64.clone().requires_grad_(True)
    lr = reference.nt_xent_loss(z, temperature=tau, reduction="none")
    (gr,) = torch.autograd.grad(lr, z, up64)
    torch.testing.assert_close(lf.double(), lr.detach(), rtol=1e-5, atol=0)
    assert (gf.double() - gr).abs().max() <= 1e-5 * gr.abs().max()
