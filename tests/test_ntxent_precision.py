"""NT-Xent entry checks that run on the CPU: unsupported floating dtypes are rejected by name,
and the TF32 decision is taken once by the forward and carried to its backward
(docs/architecture.md, 2.3). The CUDA effect of the decision is checked in
tests/test_ntxent_cuda.py."""

import pytest
import torch

import simclr_ext
from simclr_ext import _ops
from simclr_ext._extension import _C

from conftest import tf32_matmul  # tests/conftest.py

FLOAT8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]




@pytest.mark.skipif(not FLOAT8, reason="this torch has no float8 dtypes")
@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
def test_float8_is_rejected_by_argument_name(dtype):
    z = torch.randn(8, 4).to(dtype)
    with pytest.raises(TypeError, match=r"z_i must be a floating tensor \(float64, float32"):
        simclr_ext.nt_xent_loss(z)
    with pytest.raises(RuntimeError, match=r"u_rows must be a floating tensor \(float64"):
        _C.ntxent_forward(z, z, 0, 0.5, symmetric=True)
    with pytest.raises(RuntimeError, match=r"z must be a floating tensor \(float64"):
        _C.ntxent_normalize(z)


def test_tf32_decision_follows_the_matmul_setting():
    with tf32_matmul(True):
        assert _C.ntxent_tf32_enabled() is True
    with tf32_matmul(False):
        assert _C.ntxent_tf32_enabled() is False
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert _C.ntxent_tf32_enabled() is True
        torch.set_float32_matmul_precision("highest")
        assert _C.ntxent_tf32_enabled() is False
    finally:
        torch.set_float32_matmul_precision(old)


class _Recorder:
    """Stands in for _C in simclr_ext._ops, recording the tf32 argument of each backward."""

    def __init__(self):
        self.backward_tf32 = []

    def __getattr__(self, name):
        return getattr(_C, name)

    def ntxent_backward(self, *args, **kwargs):
        self.backward_tf32.append(kwargs["tf32"] if "tf32" in kwargs else args[10])
        return _C.ntxent_backward(*args, **kwargs)


@pytest.mark.parametrize("forward_tf32", [True, False])
def test_backward_keeps_the_forwards_tf32_decision(monkeypatch, forward_tf32):
    rec = _Recorder()
    monkeypatch.setattr(_ops, "_C", rec)
    z = torch.randn(16, 8, requires_grad=True)
    with tf32_matmul(forward_tf32):
        loss = simclr_ext.nt_xent_loss(z)
    with tf32_matmul(not forward_tf32):  # the setting changes between forward and backward
        loss.backward()
    assert rec.backward_tf32 == [forward_tf32]
    assert z.grad is not None and torch.isfinite(z.grad).all()
