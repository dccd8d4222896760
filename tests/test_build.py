"""The build and the op pattern: build_info, the torch-mismatch guard, one registered custom op."""
import os
import subprocess
import sys

import pytest
import torch

import simclr_ext
from simclr_ext import reference


def test_build_info_reports_versions():
    info = simclr_ext.build_info()
    assert info["version"] == simclr_ext.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    if info["with_cuda"]:
        assert info["cuda_version"] and info["cuda_archs"]
        assert all(a.strip().isdigit() for a in info["cuda_archs"].split(","))


@pytest.mark.skipif(
    os.environ.get("SIMCLR_EXT_EXPECT_CUDA_BUILD") != "1",
    reason="set SIMCLR_EXT_EXPECT_CUDA_BUILD=1 where the build must have compiled CUDA (CI does)",
)
def test_cuda_kernels_were_compiled():
    info = simclr_ext.build_info()
    assert info["with_cuda"], f"expected a CUDA build, got {info}"
    assert "900" in info["cuda_archs"].split(","), info


def test_import_refuses_a_different_torch():
    # Pretend the build recorded another torch: importing must raise a clear ImportError.
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('simclr_ext._build_config')\n"
        "fake.TORCH_VERSION = '1.0.0+fake'\n"
        "sys.modules['simclr_ext._build_config'] = fake\n"
        "try:\n"
        "    import simclr_ext\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTERROR:" in out.stdout, out.stdout + out.stderr
    assert "built against torch 1.0.0+fake" in out.stdout
    assert "pip install" in out.stdout


# The op pattern end to end on one real op: torch.ops.simclr_ext.ntxent_forward (schema, fake
# kernel, registered autograd) against the plain-PyTorch reference.
def _forward_op(z, temperature):
    return torch.ops.simclr_ext.ntxent_forward(z, temperature)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_registered_op_matches_reference(device, dtype):
    z = torch.randn(2 * 19, 11, dtype=dtype, device=device)
    z[3] *= 1e-14  # below the normalization eps: u = z / eps, like F.normalize
    row_loss, row_lse = _forward_op(z, 0.3)
    assert row_loss.dtype == row_lse.dtype == dtype  # fp32 / fp64 inputs accumulate in their dtype
    u = torch.nn.functional.normalize(z.double(), dim=1)
    logits, _ = reference._ntxent_logits(u, u, 0, 0.3)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(row_lse.double(), torch.logsumexp(logits, 1), **tol)
    torch.testing.assert_close(row_loss.double(),
                               reference.nt_xent_loss(z.double(), None, 0.3, "none"), **tol)


def test_registered_op_gradcheck_and_opcheck(device):
    z = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _forward_op(t, 0.5)[0], (z,))
    torch.library.opcheck(torch.ops.simclr_ext.ntxent_forward.default, (z, 0.5))


def test_registered_op_under_torch_compile(device):
    z = torch.randn(8, 4, device=device)
    fn = torch.compile(lambda t: _forward_op(t, 0.5)[0] * 2, fullgraph=True)
    torch.testing.assert_close(fn(z), 2 * reference.nt_xent_loss(z, None, 0.5, "none"))
