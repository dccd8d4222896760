"""Fused NT-Xent loss (docs/architecture.md section 2): `nt_xent_loss` and the drop-in module
`NTXentLoss`.

Never materializes the 2N x 2N similarity matrix (CPU and CUDA kernels in csrc/ntxent). With
`gather_distributed=True` and an initialized process group of world size > 1, the negatives are
gathered from every rank; the backward exchanges only O(N) numbers (row LSEs and row weights),
and the result equals one process's loss on the concatenated batch (docs/architecture.md, 2.4).
`NTXentLoss` also takes lightly's memory bank and a learnable (tensor) temperature.
"""
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _ops
from ._ops import _first_order_only
from ._extension import _C

_REDUCTIONS = ("mean", "sum", "none")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(z_i, z_j, temperature, reduction,
                  names: Tuple[str, str] = ("z_i", "z_j")) -> Tuple[Tensor, float]:
    """Validate the public arguments; return z = [view 1; view 2] and the temperature. `names`:
    the two views' argument names in the caller (the module's forward says out0, out1)."""
    n0, n1 = names
    if not isinstance(z_i, Tensor):
        raise TypeError(f"{n0} must be a torch.Tensor, got {type(z_i).__name__}")
    if z_j is not None and not isinstance(z_j, Tensor):
        raise TypeError(f"{n1} must be a torch.Tensor or None, got {type(z_j).__name__}")
    views = [(n0, z_i)] + ([(n1, z_j)] if z_j is not None else [])
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
            raise ValueError(f"{n0} and {n1} must have the same shape, got {tuple(z_i.shape)} and "
                             f"{tuple(z_j.shape)}")
        if z_i.device != z_j.device:
            raise ValueError(f"{n0} and {n1} must be on the same device, got {z_i.device} and "
                             f"{z_j.device}")
        if z_i.shape[0] == 0:
            raise ValueError(f"{n0} and {n1} must hold N >= 1 samples, got N = 0")
        dtype = torch.promote_types(z_i.dtype, z_j.dtype)  # e.g. mixed under autocast
        z = torch.cat([z_i.to(dtype), z_j.to(dtype)], dim=0)
    else:
        if z_i.shape[0] == 0 or z_i.shape[0] % 2:
            raise ValueError(
                f"{n0} (a single input) must hold 2N >= 2 rows laid out [view 1; view 2], got "
                f"{z_i.shape[0]} rows"
            )
        z = z_i
    return z, _check_temperature_reduction(temperature, reduction)


def _check_temperature_reduction(temperature, reduction: str) -> float:
    """Validate the two loss options (shared by nt_xent_loss and NTXentLoss); return the
    temperature's value as a float (a tensor temperature is read once, a host sync on a GPU)."""
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1 or not temperature.is_floating_point():
            raise TypeError("temperature must be a real number or a floating 0-d tensor, got a "
                            f"{temperature.dtype} tensor of shape {tuple(temperature.shape)}")
        value = float(temperature.detach())
    elif isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError("temperature must be a real number or a floating 0-d tensor, got "
                        f"{type(temperature).__name__}")
    else:
        value = float(temperature)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {value}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return value


def _learnable(temperature) -> bool:
    return isinstance(temperature, Tensor) and temperature.requires_grad


def _grad_z_and_dot(u, u_cols, norm, row_lse, col_lse, w, col_weight, row_offset: int,
                    tau: float, symmetric: bool, tf32: bool, row_loss: Tensor):
    """grad_z of sum_k w_k loss_k and, per row, u_i . grad_u_i (the radial part the
    normalization backward removes; it gives dL/dtau, docs/architecture.md 2.1).

    The kernel's normalization backward has a linear branch for ||z|| <= eps that returns
    grad_u / eps: a zero norm selects it, grad_u is scaled back, and the normalization backward
    is done here. Rows go in the accumulation dtype so that grad_u / eps stays in range.
    """
    acc = norm.dtype
    rows = u.to(acc).contiguous()
    cols = rows if symmetric else u_cols.to(acc).contiguous()
    zero = torch.zeros_like(norm)
    if symmetric:
        col_lse, col_weight = row_lse, w
    g = _C.ntxent_backward(rows, cols, zero, row_lse, col_lse, w, col_weight, row_offset, tau,
                           symmetric=symmetric, tf32=tf32, row_loss=row_loss)
    eps = 1e-12  # ntxent_math.h: kNormEps
    grad_u = g.to(acc) * eps
    dot = (rows * grad_u).sum(1)
    big = (norm > eps).unsqueeze(1)
    # normalize_backward (ntxent_math.h): the projection off u, scaled, above eps
    grad_z = torch.where(big, (grad_u - rows * dot.unsqueeze(1)) / norm.clamp_min(eps)[:, None],
                         grad_u / eps)
    return grad_z, dot


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
    def forward(ctx, z: Tensor, temperature: float, group, sizes: List[int],
                tau_tensor: Optional[Tensor] = None):
        u, norm = _C.ntxent_normalize(z)
        rank = dist.get_rank(group)
        u_cols = _all_gather_rows(u, sizes, group)
        row_offset = sum(sizes[:rank])
        tf32 = _C.ntxent_tf32_enabled()  # decided once: the backward takes the same path
        row_loss, row_lse = _C.ntxent_forward(u, u_cols, row_offset, temperature,
                                              symmetric=False, tf32=tf32)
        ctx.save_for_backward(u, u_cols, norm, row_lse, row_loss)
        ctx.sizes, ctx.row_offset, ctx.temperature, ctx.group = sizes, row_offset, temperature, group
        ctx.tf32 = tf32
        ctx.z, ctx.tau_tensor = z, tau_tensor
        return row_loss

    @staticmethod
    def backward(ctx, grad_row_loss: Tensor):
        u, u_cols, norm, row_lse, row_loss = ctx.saved_tensors
        row_loss = row_loss.detach()
        with torch.no_grad():  # first order only: see _first_order_only
            w = grad_row_loss.to(row_lse.dtype).contiguous()
            # One collective for both O(R) vectors: [R, 2] = (lse, weight) per row.
            cols = _all_gather_rows(torch.stack([row_lse, w], dim=1), ctx.sizes, ctx.group)
            col_lse, col_weight = cols[:, 0].contiguous(), cols[:, 1].contiguous()
            grad_tau = None
            if ctx.needs_input_grad[4]:
                # This rank's share of dPhi/dtau = -(1/(2 tau)) sum over ALL rows of
                # u_i . grad_u_i: DDP's average of the shares is the global dL/dtau.
                grad, dot = _grad_z_and_dot(u, u_cols, norm, row_lse, col_lse, w, col_weight,
                                            ctx.row_offset, ctx.temperature, False, ctx.tf32,
                                            row_loss)
                grad = grad.to(u.dtype)
                grad_tau = (dot.sum() * (-0.5 / ctx.temperature)).to(ctx.tau_tensor.dtype)
                grad_tau = grad_tau.reshape(ctx.tau_tensor.shape)
            else:
                grad = _C.ntxent_backward(u, u_cols, norm, row_lse, col_lse, w, col_weight,
                                          ctx.row_offset, ctx.temperature, symmetric=False,
                                          tf32=ctx.tf32, row_loss=row_loss)
        grad = _first_order_only(grad, ctx.z, grad_row_loss)
        grad_tau = _first_order_only(grad_tau, ctx.z, grad_row_loss)
        return grad, None, None, None, grad_tau


class _LearnableTemperatureNTXent(torch.autograd.Function):
    """One process's row losses [2N] with a tensor temperature that requires grad: the same
    kernels, plus dL/dtau = -(1/(2 tau)) sum_i u_i . grad_u_i (docs/architecture.md, 2.1),
    a reduction over [2N, D] numbers the backward already has (no 2N x 2N matrix)."""

    @staticmethod
    def forward(ctx, z: Tensor, tau_tensor: Tensor, temperature: float):
        u, _ = _C.ntxent_normalize(z)
        tf32 = _C.ntxent_tf32_enabled()
        row_loss, row_lse = _C.ntxent_forward(u, u, 0, temperature, symmetric=True, tf32=tf32)
        ctx.save_for_backward(z, row_lse, row_loss)
        ctx.temperature, ctx.tf32, ctx.tau_tensor = temperature, tf32, tau_tensor
        return row_loss

    @staticmethod
    def backward(ctx, grad_row_loss: Tensor):
        z, row_lse, row_loss = ctx.saved_tensors
        with torch.no_grad():  # first order only: see _first_order_only
            u, norm = _C.ntxent_normalize(z)
            lse = row_lse.to(norm.dtype).contiguous()
            w = grad_row_loss.to(norm.dtype).contiguous()
            grad, dot = _grad_z_and_dot(u, u, norm, lse, lse, w, w, 0, ctx.temperature, True,
                                        ctx.tf32, row_loss.detach())
            grad_tau = (dot.sum() * (-0.5 / ctx.temperature)).to(ctx.tau_tensor.dtype)
            grad_tau = grad_tau.reshape(ctx.tau_tensor.shape)
        grad = _first_order_only(grad.to(z.dtype), z, grad_row_loss)
        grad_tau = _first_order_only(grad_tau, z, grad_row_loss)
        return grad, grad_tau, None


class _BankLSE(torch.autograd.Function):
    """lse_bank [R] = log sum_b exp(u_k . bank_b / tau) of unit rows against a (detached) memory
    bank, fused: no [R, K] matrix. Backward: d lse_k / d u_k = (1/tau) sum_b P_kb bank_b and
    d lse_k / d tau = -(1/tau^2) u_k . sum_b P_kb bank_b, from the same G."""

    @staticmethod
    def forward(ctx, u: Tensor, bank: Tensor, tau_tensor: Optional[Tensor], temperature: float):
        tf32 = _C.ntxent_tf32_enabled()
        lse = _C.ntxent_bank_forward(u, bank, temperature, tf32=tf32)
        ctx.save_for_backward(u, bank, lse)
        ctx.temperature, ctx.tf32, ctx.tau_tensor = temperature, tf32, tau_tensor
        return lse

    @staticmethod
    def backward(ctx, grad_lse: Tensor):
        u, bank, lse = ctx.saved_tensors
        tau = ctx.temperature
        with torch.no_grad():  # first order only: see _first_order_only
            G = _C.ntxent_bank_backward(u, bank, lse, grad_lse.to(lse.dtype).contiguous(), tau,
                                        tf32=ctx.tf32)
            grad_u = (G / tau).to(u.dtype) if ctx.needs_input_grad[0] else None
            grad_tau = None
            if ctx.needs_input_grad[2]:
                grad_tau = ((u.to(G.dtype) * G).sum() * (-1.0 / (tau * tau)))
                grad_tau = grad_tau.to(ctx.tau_tensor.dtype).reshape(ctx.tau_tensor.shape)
        grad_u = _first_order_only(grad_u, u, grad_lse)
        grad_tau = _first_order_only(grad_tau, u, grad_lse)
        return grad_u, None, grad_tau, None


def _gather_sizes(z: Tensor, group) -> List[int]:
    """Every rank's row count (one small all-gather, and the one host sync of an uneven step)."""
    count = torch.tensor([z.shape[0]], dtype=torch.long, device=z.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    return [int(c) for c in counts]


def _check_gather_available(gather_distributed: bool) -> None:
    if gather_distributed and not dist.is_available():
        raise ValueError("gather_distributed=True needs torch.distributed, which this torch "
                         "build does not have; set gather_distributed=False")


def nt_xent_loss(z_i: Tensor, z_j: Optional[Tensor] = None,
                 temperature: Union[float, Tensor] = 0.5,
                 reduction: str = "mean", gather_distributed: bool = False,
                 process_group=None, equal_batch_sizes: bool = False) -> Tensor:
    """Fused NT-Xent (SimCLR) loss.

    Args:
        z_i, z_j: the two views' embeddings, (N, D) each; or z_i alone, (2N, D) laid out
            [view 1; view 2] and z_j=None. Any floating dtype; half inputs are computed with fp32
            accumulation.
        temperature: tau > 0: a float, or a floating 0-d tensor (e.g. an nn.Parameter); when it
            requires grad, dL/dtau is returned too (its value is read on the host once per call).
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
    _check_gather_available(gather_distributed)
    learn = _learnable(temperature)
    if not _gathering(gather_distributed, process_group):
        if learn:
            row_loss = _LearnableTemperatureNTXent.apply(z, temperature, tau)
        else:
            row_loss, _ = _ops.ntxent_forward(z, tau)
        if reduction == "mean":
            return row_loss.mean()
        return row_loss.sum() if reduction == "sum" else row_loss

    world = dist.get_world_size(process_group)
    sizes = ([z.shape[0]] * world if equal_batch_sizes else _gather_sizes(z, process_group))
    row_loss = _GatheredNTXent.apply(z, tau, process_group, sizes,
                                     temperature if learn else None)
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


def _bank_size(memory_bank_size) -> Tuple[int, ...]:
    """lightly's memory_bank_size: an int K (the embedding dimension taken from the first batch)
    or a (K, D) tuple; K = 0 disables the bank."""
    size = ((memory_bank_size,) if isinstance(memory_bank_size, numbers.Integral)
            and not isinstance(memory_bank_size, bool) else memory_bank_size)
    ok = (isinstance(size, Sequence) and len(size) in (1, 2)
          and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in size))
    if not ok:
        raise TypeError("memory_bank_size must be an int or a (size, dim) tuple of ints, got "
                        f"{memory_bank_size!r}")
    size = tuple(int(x) for x in size)
    if size[0] < 0 or (len(size) == 2 and size[1] <= 0 and size[0] > 0):
        raise ValueError("memory_bank_size must be >= 0 (and its dim > 0), got "
                         f"{memory_bank_size!r}")
    return size


class NTXentLoss(nn.Module):
    """Fused NT-Xent loss, a drop-in for lightly's
    `NTXentLoss(temperature=0.5, memory_bank_size=0, gather_distributed=False)`.

    `forward(out0, out1)` with two (N, D) views, or `forward(out0)` with one (2N, D) tensor laid
    out [view 1; view 2]. Keyword-only extras: reduction ("mean", "sum", "none"),
    process_group, equal_batch_sizes (see `nt_xent_loss`).

    temperature: a float, a floating 0-d tensor or an nn.Parameter (learnable: the backward
    returns dL/dtemperature).

    memory_bank_size: K > 0 (an int, the dimension taken from the first batch, or a (K, D) tuple)
    turns on lightly's memory bank (MoCo-style negatives). The bank holds K unit vectors, starts
    as normalized Gaussian noise, and is a buffer (`bank`, with its write position `bank_ptr`)
    saved in the state_dict. With it, each row k of out0 is scored against its positive out1_k
    and the K bank entries as negatives (the other rows of the batch are not negatives):
        loss_k = log(exp(s_pos) + sum_b exp(s_kb)) - s_pos,  s = cosine / temperature,
    reduced over the N rows. The bank (as it was before this call) is computed against in the
    fused kernel as one more set of columns (no [N, K] matrix); afterwards, when out0 requires
    grad, the normalized out1 is written into it first-in first-out at bank_ptr: a batch that
    reaches the end fills the remaining slots, the rest of it is dropped and the position returns
    to 0 (lightly's update). With gather_distributed, every rank's out1 is gathered before the
    update (equal batch sizes), and the loss uses this rank's rows only.
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.5,
                 memory_bank_size: Union[int, Sequence[int]] = 0,
                 gather_distributed: bool = False, *, reduction: str = "mean",
                 process_group=None, equal_batch_sizes: bool = False):
        super().__init__()
        _check_temperature_reduction(temperature, reduction)
        _check_gather_available(gather_distributed)
        # A Parameter registers itself here; a plain tensor or float is kept as given.
        self.temperature = temperature if isinstance(temperature, Tensor) else float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.reduction = reduction
        self.process_group = process_group
        self.equal_batch_sizes = bool(equal_batch_sizes)
        self.memory_bank_size = _bank_size(memory_bank_size)
        if self.memory_bank_size[0] > 0:
            # 1-d until the first batch gives D (lightly's lazy int size); (K, D) right away.
            self.register_buffer("bank", torch.empty(self.memory_bank_size, dtype=torch.float32))
            self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))
            if len(self.memory_bank_size) == 2:
                self._init_bank(self.memory_bank_size)

    @torch.no_grad()
    def _init_bank(self, size: Tuple[int, int]) -> None:
        bank = torch.randn(size, dtype=self.bank.dtype, device=self.bank.device)
        self.bank = torch.nn.functional.normalize(bank, dim=1)
        self.bank_ptr.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A bank still waiting for its first batch takes the checkpoint's (K, D) shape.
        saved = state_dict.get(prefix + "bank")
        if getattr(self, "bank", None) is not None and saved is not None and \
                self.bank.dim() == 1 and saved.dim() == 2:
            self.bank = torch.empty_like(saved, device=self.bank.device, dtype=self.bank.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _enqueue(self, u1: Tensor) -> None:
        if self.gather_distributed and _gathering(True, self.process_group):
            world = dist.get_world_size(self.process_group)
            sizes = ([u1.shape[0]] * world if self.equal_batch_sizes
                     else _gather_sizes(u1, self.process_group))
            u1 = _all_gather_rows(u1.contiguous(), sizes, self.process_group)
        K, n = self.bank.shape[0], u1.shape[0]
        ptr = int(self.bank_ptr)
        if ptr + n >= K:  # fill to the end, drop the rest of the batch, start over at 0
            self.bank[ptr:] = u1[: K - ptr].to(self.bank)
            self.bank_ptr.zero_()
        else:
            self.bank[ptr:ptr + n] = u1.to(self.bank)
            self.bank_ptr.fill_(ptr + n)

    def _bank_loss(self, out0: Tensor, out1: Tensor) -> Tensor:
        z, tau = _check_inputs(out0, out1, self.temperature, self.reduction, ("out0", "out1"))
        n = out0.shape[0]
        u0 = torch.nn.functional.normalize(z[:n], dim=1)
        u1 = torch.nn.functional.normalize(z[n:], dim=1)
        if self.bank.dim() == 1:
            self._init_bank((self.memory_bank_size[0], u0.shape[1]))
        if self.bank.shape[1] != u0.shape[1]:
            raise ValueError(f"out0 and out1 must have D = {self.bank.shape[1]} columns like the "
                             f"memory bank, got {u0.shape[1]}")
        bank = self.bank.detach().to(device=u0.device, dtype=u0.dtype)  # a copy: the update
        acc = torch.float64 if u0.dtype == torch.float64 else torch.float32  # must not touch it
        if bank.data_ptr() == self.bank.data_ptr():
            bank = bank.clone()
        t = self.temperature
        learn = _learnable(t)
        lse_bank = _BankLSE.apply(u0, bank, t if learn else None, tau)
        s_pos = (u0.to(acc) * u1.to(acc)).sum(1) / (t if learn else tau)
        # loss_k = log(exp(s_pos) + exp(lse_bank)) - s_pos = log(1 + exp(lse_bank - s_pos)),
        # relative to the positive logit: no cancellation of two 1/tau-sized terms.
        x = lse_bank - s_pos
        row_loss = torch.logaddexp(torch.zeros_like(x), x)
        if out0.requires_grad:
            self._enqueue(u1.detach())
        if self.reduction == "mean":
            return row_loss.mean()
        return row_loss.sum() if self.reduction == "sum" else row_loss

    def forward(self, out0: Tensor, out1: Optional[Tensor] = None) -> Tensor:
        if self.memory_bank_size[0] > 0:
            if out1 is None:  # the single-tensor form: [view 1; view 2]
                if not isinstance(out0, Tensor) or out0.dim() != 2 or out0.shape[0] % 2:
                    raise ValueError("out0 (a single input) must be a (2N, D) tensor laid out "
                                     "[view 1; view 2]")
                out0, out1 = out0.chunk(2, dim=0)
            return self._bank_loss(out0, out1)
        # Validated here to name the module's arguments; z = [out0; out1] goes on as one tensor.
        z, _ = _check_inputs(out0, out1, self.temperature, self.reduction, ("out0", "out1"))
        return nt_xent_loss(z, None, self.temperature, self.reduction, self.gather_distributed,
                            self.process_group, self.equal_batch_sizes)

    def extra_repr(self) -> str:
        t = self.temperature
        t = float(t.detach()) if isinstance(t, Tensor) else t
        return (f"temperature={t}, memory_bank_size={self.memory_bank_size}, "
                f"gather_distributed={self.gather_distributed}, reduction={self.reduction!r}")
