"""LARS, SimCLR's optimizer, as a fused multi-tensor torch.optim.Optimizer (docs/architecture.md,
section 3).

Update per parameter w with gradient g (google-research/simclr lars_optimizer.py, "classic
momentum"), per parameter group lr, weight_decay (wd), momentum (m), eta, lars_adaptation:

    g' = g + wd * w
    trust = eta * ||w|| / ||g'||   if lars_adaptation and ||w|| > 0 and ||g'|| > 0,  else 1
    v = m * v + lr * trust * g'
    w = w - v                      (nesterov: w = w - (m * v + lr * trust * g'))

The momentum buffer v starts at zero, so the first step is v = lr * trust * g' (SimCLR's
formula). torch.optim.SGD instead initializes its buffer to the first gradient; with lr folded
into v (as here) the two agree from the first step on only when m = 0.
"""
from collections import defaultdict
from typing import Iterable, List, Union

import torch
from torch import Tensor, nn

from . import _ops
from ._numeric import accumulation_dtype

__all__ = ["LARS", "simclr_param_groups"]


def simclr_param_groups(
    model_or_named_params: Union[nn.Module, Iterable], weight_decay: float
) -> List[dict]:
    """SimCLR's parameter groups: 1-d parameters (biases, BatchNorm/LayerNorm weights) get
    neither weight decay nor layer adaptation; every other parameter gets `weight_decay` and
    adaptation.

    model_or_named_params: an nn.Module, or an iterable of (name, parameter) pairs (e.g.
    `model.named_parameters()`). Parameters with requires_grad=False are left out.
    Returns `[{"params": [...], "weight_decay": wd, "lars_adaptation": True},
              {"params": [...], "weight_decay": 0.0, "lars_adaptation": False}]`
    (empty groups dropped), ready for `LARS(groups, lr=...)`.
    """
    if isinstance(model_or_named_params, nn.Module):
        named = model_or_named_params.named_parameters()
    else:
        named = model_or_named_params
    adapted, excluded = [], []
    for item in named:
        if isinstance(item, Tensor):
            raise TypeError(
                "simclr_param_groups expects a module or (name, parameter) pairs such as "
                "model.named_parameters(), got a bare tensor"
            )
        _, p = item
        if not p.requires_grad:
            continue
        (excluded if p.ndim <= 1 else adapted).append(p)
    groups = [
        {"params": adapted, "weight_decay": weight_decay, "lars_adaptation": True},
        {"params": excluded, "weight_decay": 0.0, "lars_adaptation": False},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """LARS with SimCLR's classic momentum, updated by the fused multi-tensor kernels.

    Args:
        params: parameters or parameter groups; a group may set its own lr, momentum,
            weight_decay, eta, nesterov and lars_adaptation (see `simclr_param_groups`).
        lr: learning rate (>= 0); SimCLR uses 0.3 x batch_size / 256. A float, or a 0-d
            tensor as in torch.optim (schedulers update it in place, so `torch.compile` of a
            step compiles once; keep it on the CPU, a CUDA lr is read with a host sync).
        momentum: in [0, 1).
        weight_decay: >= 0, added to the gradient (g' = g + wd * w) before the trust ratio.
        eta: trust coefficient (> 0).
        nesterov: Nesterov momentum.
        lars_adaptation: default for groups that do not set it; False makes the group plain
            momentum SGD (trust ratio 1).

    All parameters of one (device, dtype) are updated by a fixed number of kernel launches per
    step, whatever their count, with no host-device synchronization. fp32, bf16 and fp16
    parameters (math in fp32, momentum buffers in fp32) and fp64 (all fp64). Parameters whose
    grad is None are skipped (their buffer is not touched); sparse gradients raise.
    Works with torch.optim.lr_scheduler and torch.amp.GradScaler (the scaler unscales the
    grads and skips the step on inf/NaN, as with torch.optim.SGD).
    """

    def __init__(
        self,
        params,
        lr: Union[float, Tensor],
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
        *,
        lars_adaptation: bool = True,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov,
            lars_adaptation=lars_adaptation,
        )
        self._check_hyper(defaults, "")
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyper(group: dict, where: str):
        # Kept apart from reference.LARS's check: a reference shares no code with what it checks.
        lr, momentum = group["lr"], group["momentum"]
        wd, eta = group["weight_decay"], group["eta"]
        if isinstance(lr, Tensor):
            # torch.optim's tensor lr: a scheduler fills it in place, so a compiled step sees
            # the same graph input every step (a float would be a constant: a recompile).
            if lr.numel() != 1 or lr.dim() > 1 or not lr.is_floating_point():
                raise TypeError(f"LARS: lr{where} must be a float or a floating 0-d tensor, got "
                                f"a {lr.dtype} tensor of shape {tuple(lr.shape)}")
            lr = float(lr.detach())
        if not lr >= 0.0:
            raise ValueError(f"LARS: lr{where} must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum{where} must be in [0, 1), got {momentum}")
        if not wd >= 0.0:
            raise ValueError(f"LARS: weight_decay{where} must be >= 0, got {wd}")
        if not eta > 0.0:
            raise ValueError(f"LARS: eta{where} must be > 0, got {eta}")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_hyper(group, f" (param group {len(self.param_groups) - 1})")
            for p in group["params"]:
                if p.dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
                    raise TypeError(
                        f"LARS: parameters must be float64/float32/bfloat16/float16, got {p.dtype}"
                    )
        except (TypeError, ValueError):
            self.param_groups.pop()  # a rejected group must not stay half-added
            raise

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("lars_adaptation", True)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch.optim.Optimizer casts floating state to each parameter's dtype; LARS keeps its
        # momentum buffers in fp32 (fp64 for fp64 params), so restore them from the saved values.
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            buf = saved_state.get(pid, {}).get("momentum_buffer")
            if buf is not None:
                self.state[p]["momentum_buffer"] = buf.to(
                    device=p.device, dtype=accumulation_dtype(p.dtype), copy=True
                )

    @torch.no_grad()
    def step(self, closure=None):
        """One LARS step; `closure` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # (device, dtype) -> the argument lists of one fused call
        buckets = defaultdict(lambda: tuple([] for _ in range(10)))
        compiling = torch.compiler.is_compiling()
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError(
                        "LARS does not support sparse gradients (its trust ratio needs the full "
                        "gradient norm); use a dense embedding or another optimizer for it"
                    )
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    # v starts at 0 (SimCLR), so the first step is v = lr * trust * g'.
                    buf = torch.zeros_like(
                        p, dtype=accumulation_dtype(p.dtype), memory_format=torch.preserve_format
                    )
                    state["momentum_buffer"] = buf
                if g.stride() != p.stride():
                    # The kernels index w, g and v alike; re-lay the grad out as the param.
                    g = torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)
                if buf.stride() != p.stride():
                    buf = torch.empty_like(
                        p, dtype=buf.dtype, memory_format=torch.preserve_format
                    ).copy_(buf)
                    state["momentum_buffer"] = buf
                lists = buckets[(p.device, p.dtype)]
                lists[0].append(p)
                lists[1].append(g)
                lists[2].append(buf)
                lr = group["lr"]
                # Compiled, a tensor lr goes into the graph as a tensor (lists[9]); eager, its
                # value is read here (keep it on the CPU: a CUDA lr would cost a host sync).
                lists[3].append(0.0 if compiling and isinstance(lr, Tensor) else float(lr))
                lists[9].append(lr)
                lists[4].append(float(group["weight_decay"]))
                lists[5].append(float(group["momentum"]))
                lists[6].append(float(group["eta"]))
                lists[7].append(bool(group["lars_adaptation"]))
                lists[8].append(bool(group["nesterov"]))
        # Eager: straight to the kernel (the C++ entry validates and bumps version counters);
        # the custom op's dispatch costs more than a GPU step of ResNet-50. Under torch.compile:
        # the custom op, which the compiler keeps in its graph.
        for lists in buckets.values():
            if not compiling:
                _ops._C.lars_step(*lists[:9])
            elif any(isinstance(lr, Tensor) for lr in lists[9]):
                lr_tensors = [lr if isinstance(lr, Tensor) else torch.tensor(float(lr))
                              for lr in lists[9]]
                _ops.lars_step_tensor_lr(lists[0], lists[1], lists[2], lr_tensors, *lists[4:9])
            else:
                _ops.lars_step(*lists[:9])
        return loss
