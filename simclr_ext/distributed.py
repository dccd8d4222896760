"""Process-group plumbing for the trainer: torchrun environment -> (rank, world, device), global
batch norm (nn.SyncBatchNorm on GPU; an all-reduce twin on CPU, where nn.SyncBatchNorm refuses to
run), and small collective helpers that are no-ops in a single process."""
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False  # this call initialized the process group (so it destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return device


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK), NCCL on GPU and
    gloo on CPU; a plain `python train.py` is a world of one with no process group."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    created = False
    if world > 1 and not dist.is_initialized():
        created = True
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev, created)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier():
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj):
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device=None) -> bool:
    """True on every rank when flag is True on at least one (e.g. a SIGTERM seen by one rank).
    device: where the collective's tensor lives (NCCL needs the rank's GPU)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span every rank's batch, by a differentiable
    all-reduce of per-channel (count, sum, sum of squares): nn.SyncBatchNorm's semantics on any
    backend (nn.SyncBatchNorm runs on GPUs only). Eval mode uses the running statistics."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x):
        if not self.training or world_size() == 1:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
        import torch.distributed.nn.functional as dF

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        # one all-reduce for all three statistics; its backward all-reduces their gradients,
        # which is what makes the gradient that of batch norm over the global batch
        stats = torch.cat([count, xf.sum(dims), (xf * xf).sum(dims)])
        with warnings.catch_warnings():  # deprecated for _functional_collectives, but stable
            warnings.simplefilter("ignore", FutureWarning)
            stats = dF.all_reduce(stats, group=self.process_group or dist.group.WORLD)
        c = stats[:1]
        n = count.shape[0]
        mean = stats[n:n + self.num_features] / c
        var = (stats[n + self.num_features:] / c - mean * mean).clamp_min(0)  # fp32 rounding
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.num_batches_tracked.add_(1)
                unbiased = var * (c / (c - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module, device: torch.device, process_group=None) -> nn.Module:
    """Every BatchNorm*d -> nn.SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere (same state_dict)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, process_group)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_global_batchnorm(child, device, process_group))
    return out
