"""Plain-PyTorch references of every simclr_ext kernel, used by tests and benchmarks."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._numeric import NORM_EPS, accumulation_dtype


# --------------------------------------------------------------------------------------------
# Color distortion (docs/architecture.md, section 4): a per-image loop over torchvision's
# transforms.v2.functional
# --------------------------------------------------------------------------------------------
def color_distort(
    images: Tensor,
    factors: Tensor,
    order: Tensor,
    apply_jitter: Tensor,
    apply_gray: Tensor,
    *,
    out_dtype: Optional[torch.dtype] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Tensor:
    """simclr_ext.color_distort, image by image with torchvision's functional ops.

    Each image is first made float32 in [0, 1] (uint8: to_dtype(float32, scale=True); other
    floats: .float()), then, if apply_jitter[i], adjust_brightness / adjust_contrast /
    adjust_saturation / adjust_hue in the order order[i] (0..3) with factors[i], then, if
    apply_gray[i], rgb_to_grayscale(num_output_channels=3); then normalize(mean, std) if given,
    and the cast to out_dtype (default float32). Same result layout as the images.
    """
    import torchvision.transforms.v2.functional as TF

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factor_rows = factors.tolist()
    order_rows = order.tolist()
    jitter, gray = apply_jitter.tolist(), apply_gray.tolist()
    outs = []
    for i in range(images.shape[0]):
        x = images[i]
        x = TF.to_dtype(x, torch.float32, scale=True) if x.dtype == torch.uint8 else x.float()
        if jitter[i]:
            for op in order_rows[i]:
                x = ops[op](x, factor_rows[i][op])
        if gray[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        outs.append(x)
    out = torch.stack(outs) if outs else images.new_empty(images.shape, dtype=torch.float32)
    if mean is not None:
        out = TF.normalize(out, list(mean), list(std))
    out = out.to(out_dtype or torch.float32)
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class ColorDistortion(nn.Module):
    """simclr_ext.ColorDistortion with the reference loop: same constructor, same sampler (so the
    same generator state gives the same parameters), for the trainer's --impl reference."""

    def __init__(self, strength: float = 1.0, p: float = 0.8, p_gray: float = 0.2,
                 generator: Optional[torch.Generator] = None, *,
                 out_dtype: Optional[torch.dtype] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        from .augment import ColorDistortion as Fused

        # The fused module validates the arguments and owns the sampler.
        self._sampler = Fused(strength, p, p_gray, generator, out_dtype=out_dtype, mean=mean,
                              std=std)
        self.strength, self.p, self.p_gray = strength, p, p_gray
        self.generator, self.out_dtype = generator, out_dtype
        self.mean, self.std = self._sampler.mean, self._sampler.std

    def sample_params(self, batch_size: int, device):
        return self._sampler.sample_params(batch_size, device)

    def forward(self, images: Tensor) -> Tensor:
        params = self.sample_params(images.shape[0], images.device)
        return color_distort(images, *params, out_dtype=self.out_dtype, mean=self.mean,
                             std=self.std)


# --------------------------------------------------------------------------------------------
# NT-Xent (docs/architecture.md, section 2): the materialized 2N x 2N similarity matrix, exact
# -inf self mask, cross-entropy against the positive. O(N^2) memory: the thing the fused op
# avoids.
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

def _reduce_gathered(row_loss: Tensor, reduction: str, group) -> Tensor:
    """Reduce this rank's row losses (computed against the gathered columns, every rank with
    the same row count) to the global loss. "none": this rank's rows (the all_gather backward
    sums across ranks). Else value: the global loss, the same on every rank; gradient: W x this
    rank's share, so that the all_gather backward (a sum over ranks) and DDP's average over the
    W ranks give exactly the gradient of the global loss."""
    import torch.distributed as dist

    if reduction == "none":
        return row_loss
    world = dist.get_world_size(group)
    local = row_loss.sum()
    total = local.detach().clone()
    dist.all_reduce(total, group=group)
    scale = 1.0 / (world * row_loss.shape[0]) if reduction == "mean" else 1.0
    share = local * (world * scale)
    return total * scale + (share - share.detach())


def nt_xent_loss(z_i: Tensor, z_j: Optional[Tensor] = None, temperature: float = 0.5,
                 reduction: str = "mean") -> Tensor:
    """NT-Xent of the rows z = [z_i; z_j] (or z_i alone laid out [view 1; view 2]).

    Computed in the input dtype, like a user's plain PyTorch version would be (the fp16/bf16
    tests compare the fused op's error against this one's).
    """
    z = z_i if z_j is None else torch.cat([z_i, z_j], dim=0)
    u = F.normalize(z, dim=1, eps=NORM_EPS)
    logits, positive = _ntxent_logits(u, u, 0, temperature)
    row_loss = F.cross_entropy(logits, positive, reduction="none")
    return _reduce(row_loss, reduction)


class NTXentLoss(nn.Module):
    """Reference twin of simclr_ext.NTXentLoss (same constructor and forward).

    temperature: a float or a 0-d tensor (autograd differentiates the logits / temperature).

    memory_bank_size = K > 0 (int, or (K, D)): lightly's memory bank, materialized. The bank
    [K, D] starts as row-normalized Gaussian noise; the loss of row k of out0 is the
    cross-entropy of the logits [s(out0_k, out1_k), s(out0_k, bank_1..K)] / tau against index 0,
    with the bank as it was before the call; then, if out0 requires grad, the normalized out1 is
    written at bank_ptr, the part of the batch past the end dropped and bank_ptr reset to 0.

    gather_distributed=True with an initialized process group of world size > 1: the embeddings
    of every rank are gathered with torch.distributed.nn.functional.all_gather (autograd-aware:
    its backward sums each rank's gradient into the owner), each rank computes its own rows
    against all columns. The value returned is the global mean/sum over all ranks' rows (the same
    on every rank); its gradient is scaled by the world size so that DDP's gradient averaging
    yields the exact gradient of that global loss. Equal batch sizes on every rank are required.
    """

    def __init__(self, temperature=0.5, memory_bank_size=0, gather_distributed: bool = False,
                 *, reduction: str = "mean", process_group=None):
        super().__init__()
        value = float(temperature.detach()) if isinstance(temperature, Tensor) else temperature
        if value <= 0:
            raise ValueError(f"temperature must be > 0, got {value}")
        self.temperature = temperature if isinstance(temperature, Tensor) else float(temperature)
        self.gather_distributed = gather_distributed
        self.reduction = reduction
        self.process_group = process_group
        size = (memory_bank_size,) if isinstance(memory_bank_size, int) else tuple(memory_bank_size)
        if size[0] < 0:
            raise ValueError(f"memory_bank_size must be >= 0, got {memory_bank_size}")
        self.bank_size = size[0]
        if self.bank_size > 0:
            self.register_buffer("bank", torch.empty(size, dtype=torch.float32))
            self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))
            if len(size) == 2:
                self.bank = F.normalize(torch.randn(size), dim=1)

    def _with_bank(self, z_i: Tensor, z_j: Optional[Tensor]) -> Tensor:
        if z_j is None:
            z_i, z_j = z_i.chunk(2, dim=0)
        u0, u1 = F.normalize(z_i, dim=1), F.normalize(z_j, dim=1)
        if self.bank.dim() == 1:
            self.bank = F.normalize(torch.randn(self.bank_size, u0.shape[1]), dim=1).to(self.bank)
        negatives = self.bank.detach().clone().to(u0)
        logits = torch.cat([(u0 * u1).sum(1, keepdim=True), u0 @ negatives.t()], dim=1)
        logits = logits / self.temperature
        labels = torch.zeros(u0.shape[0], dtype=torch.long, device=u0.device)
        row_loss = F.cross_entropy(logits, labels, reduction="none")
        if z_i.requires_grad:
            with torch.no_grad():
                new = u1.detach()
                ptr, K = int(self.bank_ptr), self.bank_size
                take = min(new.shape[0], K - ptr)
                self.bank[ptr:ptr + take] = new[:take].to(self.bank)
                self.bank_ptr[0] = 0 if ptr + new.shape[0] >= K else ptr + new.shape[0]
        return _reduce(row_loss, self.reduction)

    def forward(self, z_i: Tensor, z_j: Optional[Tensor] = None) -> Tensor:
        import torch.distributed as dist

        if self.bank_size > 0:
            return self._with_bank(z_i, z_j)
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
        u = F.normalize(z, dim=1, eps=NORM_EPS)
        sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([z.shape[0]], device=z.device), group=group)
        if any(int(s) != z.shape[0] for s in sizes):
            raise ValueError("reference.NTXentLoss(gather_distributed=True) needs the same batch "
                             f"size on every rank, got {[int(s) for s in sizes]}")
        u_cols = torch.cat(dist_fn.all_gather(u, group=group), dim=0)
        logits, positive = _ntxent_logits(u, u_cols, rank * u.shape[0], self.temperature)
        row_loss = F.cross_entropy(logits, positive, reduction="none")
        return _reduce_gathered(row_loss, self.reduction, group)


# --------------------------------------------------------------------------------------------
# NT-Logistic and margin triplet (docs/architecture.md, section 2.5): the materialized cosine
# matrix, the sets M_k as boolean masks computed without gradient (held fixed, like the fused
# backward), the formulas of csrc/ntxent/pair_loss.h.
# --------------------------------------------------------------------------------------------


def _pair_row_loss(u_rows: Tensor, u_cols: Tensor, row_offset: int, kind: str,
                   temperature: float, margin: float, semi_hard: bool) -> Tensor:
    """Per-row loss [R] of rows vs columns (rows are [view 1; view 2] at columns
    [row_offset, row_offset + R)); kind "logistic" or "triplet"."""
    R, C = u_rows.shape[0], u_cols.shape[0]
    c = u_rows @ u_cols.t()
    idx = torch.arange(R, device=u_rows.device)
    positive = row_offset + (idx + R // 2) % R
    c_pos = (u_rows * u_cols[positive]).sum(1)
    with torch.no_grad():
        neg = torch.ones(R, C, dtype=torch.bool, device=u_rows.device)
        neg[idx, idx + row_offset] = False
        neg[idx, positive] = False
        cd, cp = c.detach(), c_pos.detach().unsqueeze(1)
        if not semi_hard:
            member = neg
        elif kind == "logistic":
            member = neg & (cd < cp)
        else:
            member = neg & (cd > cp - margin) & (cd < cp)
        count = member.sum(1).to(c.dtype)
    safe = count.clamp_min(1)  # an empty M_k: the sum below is 0 anyway
    if kind == "logistic":
        s = c / temperature
        neg_term = torch.where(member, F.softplus(s), torch.zeros_like(s)).sum(1) / safe
        return F.softplus(-c_pos / temperature) + neg_term  # -log sigmoid(x) = softplus(-x)
    hinge = torch.relu(c - c_pos.unsqueeze(1) + margin)
    return torch.where(member, hinge, torch.zeros_like(hinge)).sum(1) / safe


def _pair_loss(kind, z_i, z_j, temperature, margin, semi_hard, reduction):
    z = z_i if z_j is None else torch.cat([z_i, z_j], dim=0)
    u = F.normalize(z, dim=1, eps=NORM_EPS)
    return _reduce(_pair_row_loss(u, u, 0, kind, temperature, margin, semi_hard), reduction)


def nt_logistic_loss(z_i: Tensor, z_j: Optional[Tensor] = None, temperature: float = 0.5, *,
                     semi_hard: bool = False, reduction: str = "mean") -> Tensor:
    """NT-Logistic of the rows z = [z_i; z_j] (or z_i alone laid out [view 1; view 2]):
    loss_k = -log sigmoid(s_k,pos) - (1/|M_k|) sum_{l in M_k} log sigmoid(-s_kl), M_k every
    negative, or with semi_hard those with c_kl < c_k,pos. Computed in the input dtype."""
    return _pair_loss("logistic", z_i, z_j, temperature, 0.0, semi_hard, reduction)


def margin_triplet_loss(z_i: Tensor, z_j: Optional[Tensor] = None, margin: float = 0.5, *,
                        semi_hard: bool = False, reduction: str = "mean") -> Tensor:
    """Margin triplet of the rows z: loss_k = (1/|M_k|) sum_{l in M_k} max(0, c_kl - c_k,pos +
    margin), M_k every negative, or with semi_hard c_k,pos - margin < c_kl < c_k,pos (empty: 0).
    Computed in the input dtype."""
    return _pair_loss("triplet", z_i, z_j, 1.0, margin, semi_hard, reduction)


class _PairLossModule(nn.Module):
    """Shared body of the two reference modules: one process, or (gather_distributed with a
    world size > 1, equal batch sizes) every rank's rows as columns through the autograd-aware
    all_gather, with NTXentLoss's global reduction and W-scaled gradient."""

    kind = ""

    def __init__(self, temperature: float, margin: float, semi_hard: bool, reduction: str,
                 gather_distributed: bool, process_group):
        super().__init__()
        self.temperature, self.margin, self.semi_hard = float(temperature), float(margin), semi_hard
        self.reduction, self.gather_distributed = reduction, gather_distributed
        self.process_group = process_group

    def forward(self, out0: Tensor, out1: Optional[Tensor] = None) -> Tensor:
        import torch.distributed as dist

        z = out0 if out1 is None else torch.cat([out0, out1], dim=0)
        u = F.normalize(z, dim=1, eps=NORM_EPS)
        args = (self.kind, self.temperature, self.margin, self.semi_hard)
        if not (self.gather_distributed and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return _reduce(_pair_row_loss(u, u, 0, *args), self.reduction)
        import torch.distributed.nn.functional as dist_fn

        group = self.process_group
        rank = dist.get_rank(group)
        u_cols = torch.cat(dist_fn.all_gather(u, group=group), dim=0)
        row_loss = _pair_row_loss(u, u_cols, rank * u.shape[0], *args)
        return _reduce_gathered(row_loss, self.reduction, group)


class NTLogisticLoss(_PairLossModule):
    """Reference twin of simclr_ext.NTLogisticLoss (same constructor and forward)."""

    kind = "logistic"

    def __init__(self, temperature: float = 0.5, semi_hard: bool = False,
                 reduction: str = "mean", gather_distributed: bool = False,
                 process_group=None):
        super().__init__(temperature, 0.0, semi_hard, reduction, gather_distributed,
                         process_group)


class MarginTripletLoss(_PairLossModule):
    """Reference twin of simclr_ext.MarginTripletLoss (same constructor and forward)."""

    kind = "triplet"

    def __init__(self, margin: float = 0.5, semi_hard: bool = False, reduction: str = "mean",
                 gather_distributed: bool = False, process_group=None):
        super().__init__(1.0, margin, semi_hard, reduction, gather_distributed, process_group)


# --------------------------------------------------------------------------------------------
# LARS (docs/architecture.md, section 3): per-parameter loop straight from the formula, and a
# torch._foreach_* twin
# --------------------------------------------------------------------------------------------
def _lars_check(lr, momentum, weight_decay, eta):
    # Kept apart from simclr_ext.LARS's check: a reference shares no code with what it checks.
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not eta > 0.0:
        raise ValueError(f"eta must be > 0, got {eta}")


class LARS(torch.optim.Optimizer):
    """Reference LARS, one parameter at a time (same constructor and semantics as
    simclr_ext.LARS; groups may set lars_adaptation):

        g' = g + wd * w
        trust = eta * ||w|| / ||g'||  if lars_adaptation and ||w|| > 0 and ||g'|| > 0, else 1
        v = momentum * v + lr * trust * g'          (v starts at 0)
        w = w - v                     (nesterov: w - (momentum * v + lr * trust * g'))

    Math in fp32 (fp64 for fp64 params), state in that dtype.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, nesterov=False,
                 *, lars_adaptation=True):
        _lars_check(lr, momentum, weight_decay, eta)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        nesterov=nesterov, lars_adaptation=lars_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = accumulation_dtype(p.dtype)
                w = p.to(acc)
                g = p.grad.to(acc) + wd * w
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                v = state["momentum_buffer"]
                if group["lars_adaptation"]:
                    w_norm = torch.linalg.vector_norm(w)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                else:
                    trust = torch.ones((), dtype=acc, device=p.device)
                step = (lr * trust) * g
                v.mul_(m).add_(step)
                update = m * v + step if group["nesterov"] else v
                p.copy_(w - update)
        return loss


class ForeachLARS(LARS):
    """The same LARS with torch._foreach_* ops over all parameters of a group at once (the
    usual way to speed up a PyTorch optimizer without custom kernels). fp32/fp64 parameters."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if group["lars_adaptation"]:
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                # trust per tensor, stacked: one where() for the whole group, no host sync
                w_n, g_n = torch.stack(w_norms), torch.stack(g_norms)
                trust = torch.where((w_n > 0) & (g_n > 0), group["eta"] * w_n / g_n,
                                    torch.ones_like(w_n))
                scaled = (trust * lr).unbind(0)
                steps = torch._foreach_mul(grads, scaled)
            else:
                steps = torch._foreach_mul(grads, lr)
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, steps)
            if group["nesterov"]:
                torch._foreach_add_(steps, bufs, alpha=m)
                torch._foreach_sub_(params, steps)
            else:
                torch._foreach_sub_(params, bufs)
        return loss


# --------------------------------------------------------------------------------------------
# Crop, flip and blur (docs/architecture.md section 10): per-image torchvision loops
# --------------------------------------------------------------------------------------------
def resized_crop(images, boxes: Tensor, size: int, flip: Optional[Tensor] = None, *,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """simclr_ext.resized_crop, crop by crop with torchvision: resized_crop(img.to(dtype), top,
    left, height, width, [size, size], antialias=True), then hflip where flip is set. Crop n
    reads image n % B. dtype float64 gives the float64 twin."""
    import torchvision.transforms.v2.functional as TF

    batch = len(images)
    rows, mirrored = boxes.tolist(), (flip.tolist() if flip is not None else None)
    outs = []
    for n, (top, left, height, width) in enumerate(rows):
        x = TF.resized_crop(images[n % batch].to(dtype), top, left, height, width, [size, size],
                            antialias=True)
        if mirrored is not None and mirrored[n]:
            x = TF.hflip(x)
        outs.append(x)
    return torch.stack(outs)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """simclr_ext.gaussian_blur, image by image: torchvision's gaussian_blur(img, [k, k],
    [s, s]) where s > 0, the image itself where s == 0."""
    import torchvision.transforms.v2.functional as TF

    outs = [TF.gaussian_blur(x, [kernel_size, kernel_size], [s, s]) if s > 0 else x.clone()
            for x, s in zip(images, sigma.tolist())]
    return torch.stack(outs)


class SimCLRAugment(nn.Module):
    """simclr_ext.SimCLRAugment with a per-view torchvision loop: same constructor, same sampler
    (so one generator state gives the same parameters and, within float rounding, the same
    views), in torchvision's order: resized_crop (antialias) of img.float(), hflip, to [0, 1],
    the color ops in the view's order, grayscale, gaussian_blur, + the illumination ramp,
    normalize, out_dtype, layout. The trainer's --augment torchvision path."""

    def __init__(self, image_size: int, **kwargs):
        super().__init__()
        from .pipeline import SimCLRAugment as Fused

        # The fused module validates the arguments and owns the sampler.
        self._sampler = Fused(image_size, **kwargs)
        for name in ("image_size", "blur_kernel", "mean", "std", "out_dtype", "channels_last",
                     "generator", "blur_p", "ramp"):
            setattr(self, name, getattr(self._sampler, name))

    def sample(self, images):
        return self._sampler.sample(images)

    def apply(self, images, params) -> Tensor:
        import torchvision.transforms.v2.functional as TF

        uint8 = images[0].dtype == torch.uint8
        x = resized_crop(images, params.boxes, self.image_size, params.flip)
        if uint8:
            x = x / 255
        x = color_distort(x, *params.color)
        if self.blur_p > 0:
            x = gaussian_blur(x, params.sigma, self.blur_kernel)
        if params.ramp is not None:
            from .pipeline import illumination_ramp

            x = x + illumination_ramp(params.ramp, self.image_size)
        if self.mean is not None:
            x = TF.normalize(x, list(self.mean), list(self.std))
        x = x.to(self.out_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images) -> Tensor:
        return self.apply(images, self.sample(images))
