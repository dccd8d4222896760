"""torch.library custom ops around simclr_ext._C: one place for every op's schema, fake (meta)
kernel and autograd, so torch.compile keeps the ops in its graph and autograd reaches the fused
backward kernels. Public wrappers (simclr_ext.loss, .optim, .augment) call these.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._extension import _C


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# ntxent_normalize: u = z / max(||z||, eps), norm = ||z|| (rows of z)
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("simclr_ext::ntxent_normalize", mutates_args=())
def ntxent_normalize(z: Tensor) -> Tuple[Tensor, Tensor]:
    """Row-wise L2 normalization, z: [M, D] -> (u: [M, D] in z's dtype, norm: [M] fp32/fp64)."""
    u, norm = _C.ntxent_normalize(z)
    return u, norm


@ntxent_normalize.register_fake
def _(z):
    torch._check(z.dim() == 2, lambda: f"z must be 2-d, got shape {tuple(z.shape)}")
    return torch.empty_like(z, memory_format=torch.contiguous_format), z.new_empty(
        (z.shape[0],), dtype=_acc_dtype(z)
    )


def _normalize_setup_context(ctx, inputs, output):
    u, norm = output
    ctx.save_for_backward(u, norm)


def _normalize_backward(ctx, grad_u, grad_norm):
    u, norm = ctx.saved_tensors
    acc = norm.dtype
    u_acc = u.to(acc)
    grad_z = torch.zeros_like(u_acc)
    if grad_u is not None:
        g = grad_u.to(acc)
        eps = 1e-12
        dot = (u_acc * g).sum(dim=1, keepdim=True)
        above = (norm > eps).unsqueeze(1)
        grad_z = torch.where(above, (g - u_acc * dot) / norm.clamp_min(eps).unsqueeze(1), g / eps)
    if grad_norm is not None:
        # d||z||/dz = z / ||z|| = u (0 at z = 0, like torch.linalg.vector_norm's subgradient)
        grad_z = grad_z + grad_norm.to(acc).unsqueeze(1) * torch.where(
            (norm > 0).unsqueeze(1), u_acc, torch.zeros_like(u_acc)
        )
    return grad_z.to(u.dtype)


ntxent_normalize.register_autograd(_normalize_backward, setup_context=_normalize_setup_context)
