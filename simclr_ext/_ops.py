"""torch.library custom ops around simclr_ext._C: one place for every op's schema, fake (meta)
kernel and autograd, so torch.compile keeps the ops in its graph and autograd reaches the fused
backward kernels. Public wrappers (simclr_ext.loss, .optim, .augment) call these.
"""
from typing import List, Tuple

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


# --------------------------------------------------------------------------------------------
# lars_step: fused multi-tensor LARS update of one (device, dtype) bucket, in place
# --------------------------------------------------------------------------------------------
@torch.library.custom_op(
    "simclr_ext::lars_step", mutates_args=("params", "momentum_buffers")
)
def lars_step(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffers: List[Tensor],
    lrs: List[float],
    weight_decays: List[float],
    momentums: List[float],
    etas: List[float],
    lars_adaptation: List[bool],
    nesterov: List[bool],
) -> None:
    """One LARS step over a bucket (one device, one dtype), per tensor i (DESIGN 3.2):

        g' = g + wd * w
        trust = eta * ||w|| / ||g'||  if lars_adaptation and ||w|| > 0 and ||g'|| > 0, else 1
        v = momentum * v + lr * trust * g'
        w = w - v                     (nesterov: w - (momentum * v + lr * trust * g'))

    params: w, fp64/fp32/bf16/fp16; grads: same dtype, shape and strides; momentum_buffers:
    fp32 (fp64 for fp64 params), same shape and strides. The hyperparameter lists hold one host
    scalar per tensor. A fixed number of kernel launches whatever the tensor count, no host sync.
    """
    _C.lars_step(
        params, grads, momentum_buffers, lrs, weight_decays, momentums, etas, lars_adaptation,
        nesterov,
    )


@lars_step.register_fake
def _(params, grads, momentum_buffers, lrs, weight_decays, momentums, etas, lars_adaptation,
      nesterov):
    n = len(params)
    torch._check(
        len(grads) == n and len(momentum_buffers) == n,
        lambda: "lars_step: params, grads and momentum_buffers must have the same length",
    )
    return None
