"""LARS step over torchvision ResNet-50's parameters (161 tensors, 25.6 M, fp32, random grads):
the fused simclr_ext.LARS vs the per-parameter reference vs a torch._foreach_* LARS, beside
torch.optim.SGD(momentum=0.9, foreach=True) as the floor (a momentum step moves the same bytes;
LARS adds only the norms). SimCLR's groups for the LARS variants (1-d params: no decay, no
adaptation), weight_decay 1e-6.

    python -m pytest benchmarks/bench_lars.py --benchmark-only --benchmark-json=/tmp/lars.json

extra_info: op, impl, device, case, peak_mib, n_tensors, n_params; on CUDA also gbps (effective
bandwidth: 20 bytes per fp32 parameter for read w, g, v + write w, v, plus 8 bytes per adapted
parameter for the norm pass's reads of w and g) and copy_gbps (the card's device-to-device copy
bandwidth, measured here, read + write bytes).
"""
import pytest
import torch

import harness

CASE = "resnet50 fp32 step"
IMPLS = ["fused", "reference", "foreach", "sgd_foreach"]
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-6


def make_step(impl: str, device: str = "cpu"):
    """ResNet-50's parameters with random grads and a warmed-up optimizer (buffers created);
    returns the zero-argument step()."""
    import torchvision

    import simclr_ext
    from simclr_ext.optim import simclr_param_groups
    from simclr_ext.reference import LARS as RefLARS
    from simclr_ext.reference import ForeachLARS

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    groups = simclr_param_groups(model, WEIGHT_DECAY)
    if impl == "fused":
        opt = simclr_ext.LARS(groups, lr=LR, momentum=MOMENTUM)
    elif impl == "reference":
        opt = RefLARS(groups, lr=LR, momentum=MOMENTUM)
    elif impl == "foreach":
        opt = ForeachLARS(groups, lr=LR, momentum=MOMENTUM)
    elif impl == "sgd_foreach":
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, foreach=True)
    else:
        raise ValueError(impl)
    opt.step()  # momentum buffers allocated outside the measurement
    harness.sync(device)

    def step():
        opt.step()
        harness.sync(device)

    step.model = model
    return step


def lars_bytes(model) -> int:
    """Bytes a LARS step must move: w, g, v read and w, v written (fp32), plus w and g read once
    more by the norm pass for the adapted (>= 2-d) parameters."""
    n = sum(p.numel() for p in model.parameters())
    adapted = sum(p.numel() for p in model.parameters() if p.ndim > 1)
    return 20 * n + 8 * adapted


_copy_gbps = {}


def copy_bandwidth_gbps(device: str) -> float:
    """Device-to-device copy bandwidth (read + write bytes), 256 MiB, best of 10."""
    if device not in _copy_gbps:
        src = torch.empty(64 * 2**20, device=device)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        _copy_gbps[device] = 2 * src.numel() * 4 / best / 1e9
    return _copy_gbps[device]


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_step(benchmark, bench_device, impl):
    device = bench_device
    step = make_step(impl, device)
    model = step.model
    benchmark.group = f"lars {CASE} {device}"
    rounds = {"reference": 10}.get(impl, 20) if device == "cpu" else 100
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
    info = {
        "op": "lars",
        "impl": impl,
        "device": device,
        "case": CASE,
        "n_tensors": sum(1 for _ in model.parameters()),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["peak_mib"] = harness.peak_mib(device, fn=step)
        median = benchmark.stats.stats.median
        info["gbps"] = lars_bytes(model) / median / 1e9
        info["copy_gbps"] = copy_bandwidth_gbps(device)
    else:
        del step, model
        info["peak_mib"] = harness.peak_mib(device, target="bench_lars:make_step", impl=impl)
    benchmark.extra_info.update(info)
