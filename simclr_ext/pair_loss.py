"""Fused NT-Logistic and margin-triplet losses (docs/architecture.md section 2.5), the other two
losses of the SimCLR paper's loss study: `nt_logistic_loss` / `NTLogisticLoss` and
`margin_triplet_loss` / `MarginTripletLoss`, with NTXentLoss's conventions.

Run by the same tiled kernels as NT-Xent (csrc/ntxent/pair_loss.h): no 2N x 2N matrix. With
`gather_distributed=True` and a process group of world size > 1, every rank's embeddings are
negatives; the backward exchanges only O(N) numbers (each row's state and weight), and the
result equals one process's loss on the concatenated batch (docs/architecture.md, 2.4).
"""
import numbers
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _ops
from ._extension import _C
from ._ops import PAIR_LOGISTIC, PAIR_TRIPLET, _first_order_only, pair_loss_name
from .loss import (_all_gather_rows, _check_gather_available, _check_inputs, _gather_sizes,
                   _gathering, _check_temperature_reduction)


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_temperature(temperature, reduction: str) -> float:
    """A float or a 0-d tensor read once (not learnable here), finite and > 0."""
    if isinstance(temperature, Tensor) and temperature.requires_grad:
        raise ValueError("temperature of the NT-Logistic loss cannot be learnable (a tensor that "
                         "requires grad); pass a float")
    return _check_temperature_reduction(temperature, reduction)


def _check_margin(margin, reduction: str) -> float:
    if isinstance(margin, Tensor):
        if margin.numel() != 1 or margin.dim() > 1 or margin.requires_grad:
            raise TypeError("margin must be a real number or a 0-d tensor that does not require "
                            f"grad, got a tensor of shape {tuple(margin.shape)}")
        value = float(margin)
    elif isinstance(margin, bool) or not isinstance(margin, numbers.Real):
        raise TypeError(f"margin must be a real number, got {type(margin).__name__}")
    else:
        value = float(margin)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"margin must be a finite number >= 0, got {value}")
    _check_temperature_reduction(1.0, reduction)  # the reduction
    return value


class _GatheredPair(torch.autograd.Function):
    """This rank's row losses [R] against the columns of all ranks (rank 0's rows first).

    Backward: the gradient of sum_k w_k loss_k over the rows of ALL ranks with respect to this
    rank's z; only each row's state [R, 3] and weight (O(R)) are all-gathered, the gathered u is
    kept from the forward. As NT-Xent's row LSE: M_kl needs the state of both rows k and l.
    """

    @staticmethod
    def forward(ctx, z: Tensor, params, group, sizes: List[int]):
        u, norm = _C.ntxent_normalize(z)
        rank = dist.get_rank(group)
        u_cols = _all_gather_rows(u, sizes, group)
        row_offset = sum(sizes[:rank])
        tf32 = _C.ntxent_tf32_enabled()
        row_loss, row_state = _C.pair_forward(u, u_cols, row_offset, *params, symmetric=False,
                                              tf32=tf32)
        ctx.save_for_backward(u, u_cols, norm, row_state)
        ctx.params, ctx.group, ctx.sizes, ctx.row_offset, ctx.tf32 = (
            params, group, sizes, row_offset, tf32)
        ctx.z = z
        return row_loss

    @staticmethod
    def backward(ctx, grad_row_loss: Tensor):
        u, u_cols, norm, row_state = ctx.saved_tensors
        with torch.no_grad():  # first order only: see _first_order_only
            w = grad_row_loss.to(row_state.dtype).contiguous()
            # One collective for both: [R, 4] = (state, weight) per row.
            cols = _all_gather_rows(torch.cat([row_state, w.unsqueeze(1)], dim=1), ctx.sizes,
                                    ctx.group)
            col_state, col_weight = cols[:, :3].contiguous(), cols[:, 3].contiguous()
            grad = _C.pair_backward(u, u_cols, norm, row_state, col_state, w, col_weight,
                                    ctx.row_offset, *ctx.params, symmetric=False, tf32=ctx.tf32)
        return (_first_order_only(grad, ctx.z, grad_row_loss, loss=pair_loss_name(ctx.params[0])),
                None, None, None)


def _pair_loss(z: Tensor, params, reduction: str, gather_distributed: bool,
               process_group) -> Tensor:
    """params = (kind, temperature, margin, semi_hard), already validated."""
    _check_gather_available(gather_distributed)
    if not _gathering(gather_distributed, process_group):
        row_loss, _ = _ops.pair_forward(z, *params)
        if reduction == "mean":
            return row_loss.mean()
        return row_loss.sum() if reduction == "sum" else row_loss
    world = dist.get_world_size(process_group)
    sizes = _gather_sizes(z, process_group)
    row_loss = _GatheredPair.apply(z, params, process_group, sizes)
    if reduction == "none":
        return row_loss
    local = row_loss.sum()
    total = local.detach().clone()
    dist.all_reduce(total, group=process_group)
    scale = 1.0 / sum(sizes) if reduction == "mean" else 1.0
    # As nt_xent_loss: the value is the global loss, the gradient W x this rank's share, which
    # DDP's average turns into the exact gradient of the global loss.
    share = local * (world * scale)
    return total * scale + (share - share.detach())


def nt_logistic_loss(z_i: Tensor, z_j: Optional[Tensor] = None, temperature: float = 0.5, *,
                     semi_hard: bool = False, reduction: str = "mean",
                     gather_distributed: bool = False, process_group=None) -> Tensor:
    """Fused NT-Logistic loss. With u = z / ||z||, c_kl = u_k . u_l, s = c / temperature:

        loss_k = -log sigmoid(s_k,pos(k)) - (1/|M_k|) sum_{l in M_k} log sigmoid(-s_kl)

    M_k: every negative of row k (all rows but k and its positive; across ranks with
    gather_distributed), or with semi_hard those farther than the positive (c_kl < c_k,pos);
    a row with an empty M_k keeps only its positive term. The semi-hard sets are held fixed in
    the backward (their membership is piecewise constant).

    z_i, z_j: (N, D) each, or z_i alone (2N, D) laid out [view 1; view 2]. reduction: "mean"
    (over the 2N rows), "sum", "none". gather_distributed / process_group: as nt_xent_loss (the
    global mean/sum over all ranks' rows; its gradient scaled for DDP's averaging).
    Returns fp32 (fp64 for fp64 inputs); gradients flow back in the inputs' dtype.
    """
    z, _ = _check_inputs(z_i, z_j, 1.0, reduction)
    tau = _check_temperature(temperature, reduction)
    params = (PAIR_LOGISTIC, tau, 0.0, _check_flag(semi_hard, "semi_hard"))
    return _pair_loss(z, params, reduction, _check_flag(gather_distributed, "gather_distributed"),
                      process_group)


def margin_triplet_loss(z_i: Tensor, z_j: Optional[Tensor] = None, margin: float = 0.5, *,
                        semi_hard: bool = False, reduction: str = "mean",
                        gather_distributed: bool = False, process_group=None) -> Tensor:
    """Fused margin triplet loss on cosines c_kl = u_k . u_l:

        loss_k = (1/|M_k|) sum_{l in M_k} max(0, c_kl - c_k,pos(k) + margin)

    M_k: every negative of row k, or with semi_hard the band c_k,pos - margin < c_kl < c_k,pos;
    an empty M_k gives 0. Other arguments and the result: as nt_logistic_loss.
    """
    z, _ = _check_inputs(z_i, z_j, 1.0, reduction)
    m = _check_margin(margin, reduction)
    params = (PAIR_TRIPLET, 1.0, m, _check_flag(semi_hard, "semi_hard"))
    return _pair_loss(z, params, reduction, _check_flag(gather_distributed, "gather_distributed"),
                      process_group)


class _PairLossModule(nn.Module):
    """What the two pair-loss modules share: flags, reduction, gathering and forward(out0, out1)
    with two (N, D) views, or forward(out0) with one (2N, D) tensor laid out [view 1; view 2]."""

    def _init_common(self, semi_hard, reduction, gather_distributed, process_group) -> None:
        self.semi_hard = _check_flag(semi_hard, "semi_hard")
        self.reduction = reduction
        self.gather_distributed = _check_flag(gather_distributed, "gather_distributed")
        _check_gather_available(self.gather_distributed)
        self.process_group = process_group

    def _params(self) -> tuple:
        raise NotImplementedError

    def forward(self, out0: Tensor, out1: Optional[Tensor] = None) -> Tensor:
        z, _ = _check_inputs(out0, out1, 1.0, self.reduction, ("out0", "out1"))
        return _pair_loss(z, self._params(), self.reduction, self.gather_distributed,
                          self.process_group)

    def extra_repr(self) -> str:
        return (f"semi_hard={self.semi_hard}, reduction={self.reduction!r}, "
                f"gather_distributed={self.gather_distributed}")


class NTLogisticLoss(_PairLossModule):
    """Fused NT-Logistic loss (see nt_logistic_loss). forward(out0, out1) with two (N, D) views,
    or forward(out0) with one (2N, D) tensor laid out [view 1; view 2]."""

    def __init__(self, temperature: float = 0.5, semi_hard: bool = False,
                 reduction: str = "mean", gather_distributed: bool = False,
                 process_group=None):
        super().__init__()
        self.temperature = _check_temperature(temperature, reduction)
        self._init_common(semi_hard, reduction, gather_distributed, process_group)

    def _params(self) -> tuple:
        return (PAIR_LOGISTIC, self.temperature, 0.0, self.semi_hard)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, " + super().extra_repr()


class MarginTripletLoss(_PairLossModule):
    """Fused margin triplet loss (see margin_triplet_loss), with NTLogisticLoss's forward."""

    def __init__(self, margin: float = 0.5, semi_hard: bool = False, reduction: str = "mean",
                 gather_distributed: bool = False, process_group=None):
        super().__init__()
        self.margin = _check_margin(margin, reduction)
        self._init_common(semi_hard, reduction, gather_distributed, process_group)

    def _params(self) -> tuple:
        return (PAIR_TRIPLET, 1.0, self.margin, self.semi_hard)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, " + super().extra_repr()
