"""Plain-PyTorch references of every simclr_ext kernel, used by tests and benchmarks."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# NT-Xent (DESIGN 3.1): the materialized 2N x 2N similarity matrix, exact -inf self mask,
# cross-entropy against the positive. O(N^2) memory: the thing the fused op avoids.
# --------------------------------------------------------------------------------------------


def _ntxent_logits(u_rows: Tensor, u_cols: Tensor, row_offset: int, temperature: float):
    """Logits [R, C] of rows vs columns with the self column set to -inf, and the positive
    column of each row (rows are [view 1; view 2] at columns [row_offset, row_offset + R))."""
    R = u_rows.shape[0]
    logits = u_rows @ u_cols.t() / temperature
    idx = torch.arange(R, device=u_rows.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[idx, idx + row_offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = row_offset + (idx + R // 2) % R
    return logits, positive


def _reduce(row_loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return row_loss.mean()
    if reduction == "sum":
        return row_loss.sum()
    if reduction == "none":
        return row_loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def nt_xent_loss(z_i: Tensor, z_j: Optional[Tensor] = None, temperature: float = 0.5,
                 reduction: str = "mean") -> Tensor:
    """NT-Xent of the rows z = [z_i; z_j] (or z_i alone laid out [view 1; view 2]).

    Computed in the input dtype, like a user's plain PyTorch version would be (the fp16/bf16
    tests compare the fused op's error against this one's).
    """
    z = z_i if z_j is None else torch.cat([z_i, z_j], dim=0)
    u = F.normalize(z, dim=1)
    logits, positive = _ntxent_logits(u, u, 0, temperature)
    row_loss = F.cross_entropy(logits, positive, reduction="none")
    return _reduce(row_loss, reduction)


class NTXentLoss(nn.Module):
    """Reference twin of simclr_ext.NTXentLoss (same constructor and forward).

    gather_distributed=True with an initialized process group of world size > 1: the embeddings
    of every rank are gathered with torch.distributed.nn.functional.all_gather (autograd-aware:
    its backward sums each rank's gradient into the owner), each rank computes its own rows
    against all columns. The value returned is the global mean/sum over all ranks' rows (the same
    on every rank); its gradient is scaled by the world size so that DDP's gradient averaging
    yields the exact gradient of that global loss. Equal batch sizes on every rank are required.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False,
                 reduction: str = "mean", process_group=None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed
        self.reduction = reduction
        self.process_group = process_group

    def forward(self, z_i: Tensor, z_j: Optional[Tensor] = None) -> Tensor:
        import torch.distributed as dist

        if not (self.gather_distributed and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return nt_xent_loss(z_i, z_j, self.temperature, self.reduction)
        import torch.distributed.nn.functional as dist_fn

        if self.reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {self.reduction!r}")
        group = self.process_group
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        z = z_i if z_j is None else torch.cat([z_i, z_j], dim=0)
        u = F.normalize(z, dim=1)
        sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([z.shape[0]], device=z.device), group=group)
        if any(int(s) != z.shape[0] for s in sizes):
            raise ValueError("reference.NTXentLoss(gather_distributed=True) needs the same batch "
                             f"size on every rank, got {[int(s) for s in sizes]}")
        u_cols = torch.cat(dist_fn.all_gather(u, group=group), dim=0)
        logits, positive = _ntxent_logits(u, u_cols, rank * u.shape[0], self.temperature)
        row_loss = F.cross_entropy(logits, positive, reduction="none")
        if self.reduction == "none":
            return row_loss  # this rank's rows; the all_gather backward sums across ranks
        local = row_loss.sum()
        total = local.detach().clone()
        dist.all_reduce(total, group=group)
        scale = 1.0 / (world * u.shape[0]) if self.reduction == "mean" else 1.0
        # Value: the global loss, the same on every rank. Gradient: W x this rank's share, so
        # that the all_gather backward (a sum over ranks) and DDP's average over the W ranks
        # give exactly the gradient of the global loss.
        share = local * (world * scale)
        return total * scale + (share - share.detach())
