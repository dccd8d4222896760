"""torch.library custom ops around simclr_ext._C: one place for every op's schema, fake (meta)
kernel and autograd, so torch.compile keeps the ops in its graph and autograd reaches the fused
backward kernels. Public wrappers (simclr_ext.loss, .optim, .augment) call these.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._numeric import accumulation_dtype
from ._extension import _C


# --------------------------------------------------------------------------------------------
# color_distort: per-image SimCLR color jitter (in each image's order) + grayscale, fused
# --------------------------------------------------------------------------------------------
def color_out_memory_format(images: Tensor) -> torch.memory_format:
    """The result keeps a channels-last input channels-last; everything else gets NCHW."""
    if images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(
        memory_format=torch.channels_last
    ):
        return torch.channels_last
    return torch.contiguous_format


@torch.library.custom_op("simclr_ext::color_distort", mutates_args=())
def color_distort(
    images: Tensor,
    factors: Tensor,
    order: Tensor,
    apply_jitter: Tensor,
    apply_gray: Tensor,
    out_dtype: torch.dtype,
    mean: Optional[List[float]],
    std: Optional[List[float]],
) -> Tensor:
    """images [B, 3, H, W] uint8/floating -> [B, 3, H, W] out_dtype (see simclr_ext.augment).

    Checks shapes, dtypes and devices, never the parameter values (simclr_ext.color_distort
    does): here an op code outside 0..3 is a no-op step on both devices."""
    out = torch.empty(
        images.shape, dtype=out_dtype, device=images.device,
        memory_format=color_out_memory_format(images),
    )
    return _C.color_distort(
        images, factors, order, apply_jitter, apply_gray, out, list(mean or []), list(std or [])
    )


@color_distort.register_fake
def _(images, factors, order, apply_jitter, apply_gray, out_dtype, mean, std):
    torch._check(images.dim() == 4, lambda: f"images must be 4-d, got {tuple(images.shape)}")
    torch._check(images.shape[1] == 3, lambda: "images must have 3 channels in dim 1")
    return torch.empty(
        images.shape, dtype=out_dtype, device=images.device,
        memory_format=color_out_memory_format(images),
    )


# The plain-PyTorch twin that has higher-order gradients, per fused loss.
_TWINS = {
    "NT-Xent": "simclr_ext.reference.nt_xent_loss or simclr_ext.reference.NTXentLoss",
    "NT-Logistic": "simclr_ext.reference.nt_logistic_loss",
    "margin triplet": "simclr_ext.reference.margin_triplet_loss",
}


def _double_backward_message(loss: str) -> str:
    return (f"simclr_ext {loss} has no double backward (create_graph=True through its fused "
            f"backward, e.g. a gradient penalty); use {_TWINS[loss]}, the plain-PyTorch twin, "
            "for higher-order gradients")


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on a gradient computed by a fused backward; differentiating it raises."""

    @staticmethod
    def forward(ctx, loss, grad, *anchors):
        ctx.loss = loss
        return grad.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_double_backward_message(ctx.loss))


def _first_order_only(grad, *anchors, loss: str = "NT-Xent"):
    """Under create_graph=True, tie `grad` to the graph so that a double backward through it
    raises a clear error (naming `loss`'s plain-PyTorch twin) instead of treating the fused
    gradient as a constant."""
    if grad is None or not torch.is_grad_enabled():
        return grad
    anchors = [a for a in anchors if isinstance(a, Tensor) and a.requires_grad]
    return _FirstOrderOnly.apply(loss, grad, *anchors) if anchors else grad


# --------------------------------------------------------------------------------------------
# ntxent_forward / ntxent_backward: fused NT-Xent of one process's rows z = [view 1; view 2]
# (docs/architecture.md, 2.1). The backward is its own op; it recomputes u = z / ||z|| (O(N D))
# and the similarity tiles, so only z and the row LSE vector [2N] are saved between the two.
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("simclr_ext::ntxent_forward", mutates_args=())
def ntxent_forward(z: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Per-row NT-Xent, z: [2N, D] -> (row_loss [2N], row_lse [2N]) in fp32 (fp64 for fp64 z).

    u = z / max(||z||, 1e-12), s_kl = u_k . u_l / temperature,
    row_lse_k = log sum_{l != k} exp(s_kl), row_loss_k = row_lse_k - s_{k, (k + N) mod 2N}.
    """
    u, _ = _C.ntxent_normalize(z)
    # One process: the rows are their own columns, so each similarity tile serves both sides.
    row_loss, row_lse = _C.ntxent_forward(u, u, 0, temperature, symmetric=True)
    return row_loss, row_lse


@ntxent_forward.register_fake
def _(z, temperature):
    torch._check(z.dim() == 2, lambda: f"z must be 2-d, got shape {tuple(z.shape)}")
    rows, acc = (z.shape[0],), accumulation_dtype(z.dtype)
    return z.new_empty(rows, dtype=acc), z.new_empty(rows, dtype=acc)


@torch.library.custom_op("simclr_ext::ntxent_backward", mutates_args=())
def ntxent_backward(z: Tensor, row_lse: Tensor, grad_row_loss: Tensor,
                    temperature: float, tf32: bool = False,
                    row_loss: Optional[Tensor] = None) -> Tensor:
    """grad_z [2N, D] (z's dtype) of sum_k grad_row_loss_k * row_loss_k, given the forward's
    row_lse. Exact: one pass per similarity tile gives P_km and P_mk (s is symmetric).
    tf32: the forward's precision decision (_C.ntxent_tf32_enabled() when it ran).
    row_loss: the forward's, for the positive's term without cancellation (optional)."""
    u, norm = _C.ntxent_normalize(z)
    lse = row_lse.to(norm.dtype).contiguous()
    w = grad_row_loss.to(norm.dtype).contiguous()
    # One process: the rows are their own columns (and their lse and weights the columns').
    return _C.ntxent_backward(u, u, norm, lse, lse, w, w, 0, temperature, symmetric=True,
                              tf32=tf32, row_loss=row_loss)


@ntxent_backward.register_fake
def _(z, row_lse, grad_row_loss, temperature, tf32=False, row_loss=None):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _ntxent_setup_context(ctx, inputs, output):
    z, temperature = inputs
    row_loss, row_lse = output
    ctx.save_for_backward(z, row_lse, row_loss)
    ctx.temperature = temperature
    # The forward (on this thread, just now) ran with this TF32 decision; the backward, which
    # may run on another thread after the setting changed, must take the same path.
    ctx.tf32 = _C.ntxent_tf32_enabled()
    ctx.mark_non_differentiable(row_lse)


def _ntxent_backward_autograd(ctx, grad_row_loss, grad_row_lse):
    z, row_lse, row_loss = ctx.saved_tensors
    if grad_row_loss is None:
        return None, None
    with torch.no_grad():  # first order only: see _first_order_only
        grad = ntxent_backward(z, row_lse, grad_row_loss, ctx.temperature, ctx.tf32,
                               row_loss.detach())
    return _first_order_only(grad, z, grad_row_loss), None


ntxent_forward.register_autograd(_ntxent_backward_autograd, setup_context=_ntxent_setup_context)


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
    """One LARS step over a bucket (one device, one dtype), per tensor i
    (docs/architecture.md, 3.1):

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


@torch.library.custom_op(
    "simclr_ext::lars_step_tensor_lr", mutates_args=("params", "momentum_buffers")
)
def lars_step_tensor_lr(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffers: List[Tensor],
    lrs: List[Tensor],
    weight_decays: List[float],
    momentums: List[float],
    etas: List[float],
    lars_adaptation: List[bool],
    nesterov: List[bool],
) -> None:
    """lars_step with one 0-d lr tensor per tensor (torch.optim's tensor lr): under
    torch.compile the lrs are graph inputs, so a scheduler that fills them in place causes no
    recompile. Each distinct lr tensor is read once, on the host (a sync for a CUDA one)."""
    read = {}
    for t in lrs:
        if id(t) not in read:
            read[id(t)] = float(t)
    _C.lars_step(params, grads, momentum_buffers, [read[id(t)] for t in lrs], weight_decays,
                 momentums, etas, lars_adaptation, nesterov)


@lars_step_tensor_lr.register_fake
def _(params, grads, momentum_buffers, lrs, weight_decays, momentums, etas, lars_adaptation,
      nesterov):
    n = len(params)
    torch._check(
        len(grads) == n and len(momentum_buffers) == n and len(lrs) == n,
        lambda: "lars_step_tensor_lr: params, grads, momentum_buffers and lrs must have the "
                "same length",
    )
    return None


# --------------------------------------------------------------------------------------------
# pair_forward / pair_backward: fused NT-Logistic (kind 1) and margin triplet (kind 2) of one
# process's rows z = [view 1; view 2] (docs/architecture.md, 2.5). Same pattern as NT-Xent: the
# backward recomputes u and the tiles; between the two only z and the per-row state [2N, 3]
# (c_pos, |M_k|, active hinges) are kept.
# --------------------------------------------------------------------------------------------
PAIR_LOGISTIC, PAIR_TRIPLET = 1, 2


def pair_loss_name(kind: int) -> str:
    """The loss a pair-op kind code stands for, as error messages name it."""
    return "NT-Logistic" if kind == PAIR_LOGISTIC else "margin triplet"


@torch.library.custom_op("simclr_ext::pair_forward", mutates_args=())
def pair_forward(z: Tensor, kind: int, temperature: float, margin: float,
                 semi_hard: bool) -> Tuple[Tensor, Tensor]:
    """Per-row loss, z: [2N, D] -> (row_loss [2N], row_state [2N, 3]) in fp32 (fp64 for fp64 z).
    kind 1: NT-Logistic at `temperature`; kind 2: margin triplet with `margin` (the other
    parameter is unused). Formulas: csrc/ntxent/pair_loss.h."""
    u, _ = _C.ntxent_normalize(z)
    # One process: the rows are their own columns.
    return _C.pair_forward(u, u, 0, kind, temperature, margin, semi_hard, symmetric=True)


@pair_forward.register_fake
def _(z, kind, temperature, margin, semi_hard):
    torch._check(z.dim() == 2, lambda: f"z must be 2-d, got shape {tuple(z.shape)}")
    acc = accumulation_dtype(z.dtype)
    return z.new_empty((z.shape[0],), dtype=acc), z.new_empty((z.shape[0], 3), dtype=acc)


@torch.library.custom_op("simclr_ext::pair_backward", mutates_args=())
def pair_backward(z: Tensor, row_state: Tensor, grad_row_loss: Tensor, kind: int,
                  temperature: float, margin: float, semi_hard: bool,
                  tf32: bool = False) -> Tensor:
    """grad_z [2N, D] (z's dtype) of sum_k grad_row_loss_k * row_loss_k given the forward's
    row_state; the semi-hard sets are held fixed. tf32: the forward's precision decision."""
    u, norm = _C.ntxent_normalize(z)
    state = row_state.to(norm.dtype).contiguous()
    w = grad_row_loss.to(norm.dtype).contiguous()
    return _C.pair_backward(u, u, norm, state, state, w, w, 0, kind, temperature, margin,
                            semi_hard, symmetric=True, tf32=tf32)


@pair_backward.register_fake
def _(z, row_state, grad_row_loss, kind, temperature, margin, semi_hard, tf32=False):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _pair_setup_context(ctx, inputs, output):
    z, kind, temperature, margin, semi_hard = inputs
    _, row_state = output
    ctx.save_for_backward(z, row_state)
    ctx.params = (kind, temperature, margin, semi_hard)
    ctx.tf32 = _C.ntxent_tf32_enabled()  # the forward's decision, as for NT-Xent
    ctx.mark_non_differentiable(row_state)


def _pair_backward_autograd(ctx, grad_row_loss, grad_row_state):
    z, row_state = ctx.saved_tensors
    if grad_row_loss is None:
        return None, None, None, None, None
    with torch.no_grad():  # first order only: see _first_order_only
        grad = pair_backward(z, row_state, grad_row_loss, *ctx.params, ctx.tf32)
    return (_first_order_only(grad, z, grad_row_loss, loss=pair_loss_name(ctx.params[0])),
            None, None, None, None)


pair_forward.register_autograd(_pair_backward_autograd, setup_context=_pair_setup_context)
