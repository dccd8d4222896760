"""Fused NT-Xent loss (docs/architecture.md section 2): `nt_xent_loss` and the drop-in module
`NTXentLoss`.

Never materializes the 2N x 2N similarity matrix (CPU and CUDA kernels in csrc/ntxent). With
`gather_distributed=True` and an initialized process group of world size > 1, the negatives are
gathered from every rank; the backward exchanges only O(N) numbers (row LSEs and row weights),
and the result equals one process's loss on the concatenated batch (docs/architecture.md, 2.4).
"""
import numbers
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _ops
from ._extension import _C

_REDUCTIONS = ("mean", "sum", "none")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(z_i, z_j, temperature, reduction) -> Tuple[Tensor, float]:
    """Validate the public arguments; return z = [view 1; view 2] and the temperature."""
    if not isinstance(z_i, Tensor):
        raise TypeError(f"z_i must be a torch.Tensor, got {type(z_i).__name__}")
    if z_j is not None and not isinstance(z_j, Tensor):
        raise TypeError(f"z_j must be a torch.Tensor or None, got {type(z_j).__name__}")
    views = [("z_i", z_i)] + ([("z_j", z_j)] if z_j is not None else [])
    for name, t in views:
        if t.dtype not in _DTYPES:  # float8 and friends are floating but have no kernel
            raise TypeError(
                f"{name} must be a floating tensor (float64, float32, bfloat16 or float16), "
                f"got {t.dtype}"
            )
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-d (batch, dim), got shape {tuple(t.shape)}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} must have an embedding dimension D > 0, got shape "
                             f"{tuple(t.shape)}")
    if z_j is not None:
        if z_i.shape != z_j.shape:
            raise ValueError(f"z_i and z_j must have the same shape, got {tuple(z_i.shape)} and "
                             f"{tuple(z_j.shape)}")
        if z_i.device != z_j.device:
            raise ValueError(f"z_i and z_j must be on the same device, got {z_i.device} and "
                             f"{z_j.device}")
        if z_i.shape[0] == 0:
            raise ValueError("z_i and z_j must hold N >= 1 samples, got N = 0")
        dtype = torch.promote_types(z_i.dtype, z_j.dtype)  # e.g. mixed under autocast
        z = torch.cat([z_i.to(dtype), z_j.to(dtype)], dim=0)
    else:
        if z_i.shape[0] == 0 or z_i.shape[0] % 2:
            raise ValueError(
                "z (a single input) must hold 2N >= 2 rows laid out [view 1; view 2], got "
                f"{z_i.shape[0]} rows"
            )
        z = z_i
    return z, _check_temperature_reduction(temperature, reduction)


def _check_temperature_reduction(temperature, reduction: str) -> float:
    """Validate the two loss options (shared by nt_xent_loss and NTXentLoss)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return float(temperature)


def _gathering(gather_distributed: bool, process_group) -> bool:
    return (gather_distributed and dist.is_available() and dist.is_initialized()
            and dist.get_world_size(process_group) > 1)


def _all_gather_rows(t: Tensor, sizes: List[int], group) -> Tensor:
    """Concatenate every rank's t [sizes[r], ...] along dim 0; uneven sizes are padded to the
    largest for the collective and stripped after."""
    biggest = max(sizes)
    if t.shape[0] < biggest:
        pad = t.new_zeros((biggest - t.shape[0],) + tuple(t.shape[1:]))
        t = torch.cat([t, pad], dim=0)
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


class _GatheredNTXent(torch.autograd.Function):
    """This rank's row losses [R] against the columns of all ranks (rank 0's rows first).

    Backward: the gradient of sum_k w_k loss_k over the rows of ALL ranks, w being each rank's
    upstream gradient, with respect to this rank's z. Only row_lse and w (O(R) each) are
    all-gathered; the gathered u is kept from the forward.
    """

    @staticmethod
    def forward(ctx, z: Tensor, temperature: float, group, sizes: List[int]):
        u, norm = _C.ntxent_normalize(z)
        rank = dist.get_rank(group)
        u_cols = _all_gather_rows(u, sizes, group)
        row_offset = sum(sizes[:rank])
        tf32 = _C.ntxent_tf32_enabled()  # decided once: the backward takes the same path
        row_loss, row_lse = _C.ntxent_forward(u, u_cols, row_offset, temperature,
                                              symmetric=False, tf32=tf32)
        ctx.save_for_backward(u, u_cols, norm, row_lse)
        ctx.sizes, ctx.row_offset, ctx.temperature, ctx.group = sizes, row_offset, temperature, group
        ctx.tf32 = tf32
        return row_loss

    @staticmethod
    def backward(ctx, grad_row_loss: Tensor):
        u, u_cols, norm, row_lse = ctx.saved_tensors
        w = grad_row_loss.to(row_lse.dtype).contiguous()
        # One collective for both O(R) vectors: [R, 2] = (lse, weight) per row.
        cols = _all_gather_rows(torch.stack([row_lse, w], dim=1), ctx.sizes, ctx.group)
        col_lse, col_weight = cols[:, 0].contiguous(), cols[:, 1].contiguous()
        grad = _C.ntxent_backward(u, u_cols, norm, row_lse, col_lse, w, col_weight,
                                  ctx.row_offset, ctx.temperature, symmetric=False,
                                  tf32=ctx.tf32)
        return grad, None, None, None


def _gather_sizes(z: Tensor, group) -> List[int]:
    """Every rank's row count (one small all-gather, and the one host sync of an uneven step)."""
    count = torch.tensor([z.shape[0]], dtype=torch.long, device=z.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    return [int(c) for c in counts]


def nt_xent_loss(z_i: Tensor, z_j: Optional[Tensor] = None, temperature: float = 0.5,
                 reduction: str = "mean", gather_distributed: bool = False,
                 process_group=None, equal_batch_sizes: bool = False) -> Tensor:
    """Fused NT-Xent (SimCLR) loss.

    Args:
        z_i, z_j: the two views' embeddings, (N, D) each; or z_i alone, (2N, D) laid out
            [view 1; view 2] and z_j=None. Any floating dtype; half inputs are computed with fp32
            accumulation.
        temperature: tau > 0.
        reduction: "mean" (over the 2N rows), "sum", or "none" (the 2N per-row losses, in
            [view 1; view 2] order).
        gather_distributed: with an initialized process group of world size W > 1, use every
            rank's embeddings as negatives. "mean"/"sum" then return the global mean/sum over all
            ranks' rows (the same value on every rank), with the gradient scaled by W so that
            DDP's averaging yields the exact gradient of that global loss; "none" returns this
            rank's rows. Ranks may hold different batch sizes. Otherwise: single process.
        process_group: the group to gather over (default: the world).
        equal_batch_sizes: with gather_distributed, a promise that every rank passes the same N
            (e.g. a DistributedSampler with drop_last=True): the row counts are then not
            gathered, and the step makes no host synchronization. Without it the counts are
            gathered once per step (one host sync). Uneven sizes under this promise are an
            error of the collective (gloo) or undefined (NCCL).

    Returns:
        fp32 loss (fp64 for fp64 inputs); gradients flow back in the inputs' dtype.
    """
    z, tau = _check_inputs(z_i, z_j, temperature, reduction)
    if not _gathering(gather_distributed, process_group):
        row_loss, _ = _ops.ntxent_forward(z, tau)
        if reduction == "mean":
            return row_loss.mean()
        return row_loss.sum() if reduction == "sum" else row_loss

    world = dist.get_world_size(process_group)
    sizes = ([z.shape[0]] * world if equal_batch_sizes else _gather_sizes(z, process_group))
    row_loss = _GatheredNTXent.apply(z, tau, process_group, sizes)
    if reduction == "none":
        return row_loss
    local = row_loss.sum()
    total = local.detach().clone()
    dist.all_reduce(total, group=process_group)
    scale = 1.0 / sum(sizes) if reduction == "mean" else 1.0  # the global row count, on the host
    # Value: the global loss. Gradient: W x this rank's share (see _GatheredNTXent), which DDP's
    # average over W ranks turns into the exact global gradient.
    share = local * (world * scale)
    return total * scale + (share - share.detach())


class NTXentLoss(nn.Module):
    """Fused NT-Xent loss, a drop-in for lightly's `NTXentLoss(temperature, gather_distributed)`.

    `forward(z_i, z_j)` with two (N, D) views, or `forward(z)` with one (2N, D) tensor laid out
    [view 1; view 2]. See `nt_xent_loss` for the arguments. (lightly's memory bank is not
    supported; the arguments after temperature are keyword-only.)
    """

    def __init__(self, temperature: float = 0.5, *, gather_distributed: bool = False,
                 reduction: str = "mean", process_group=None, equal_batch_sizes: bool = False):
        # Keyword-only after temperature: lightly's second positional argument is
        # memory_bank_size, which must not silently turn into gather_distributed here.
        super().__init__()
        self.temperature = _check_temperature_reduction(temperature, reduction)
        self.gather_distributed = bool(gather_distributed)
        self.reduction = reduction
        self.process_group = process_group
        self.equal_batch_sizes = bool(equal_batch_sizes)

    def forward(self, z_i: Tensor, z_j: Optional[Tensor] = None) -> Tensor:
        return nt_xent_loss(z_i, z_j, self.temperature, self.reduction, self.gather_distributed,
                            self.process_group, self.equal_batch_sizes)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, "
                f"reduction={self.reduction!r}")
