"""Plain-PyTorch references of every simclr_ext kernel, used by tests and benchmarks."""
import torch
from torch import Tensor


# --------------------------------------------------------------------------------------------
# LARS (DESIGN 3.2): per-parameter loop straight from the formula, and a torch._foreach_* twin
# --------------------------------------------------------------------------------------------
def _lars_state_dtype(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _lars_check(lr, momentum, weight_decay, eta):
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
                acc = _lars_state_dtype(p)
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
