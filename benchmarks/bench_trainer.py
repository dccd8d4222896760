"""Training throughput of the SimCLR trainer's step with the fused ops vs their plain-PyTorch
references (--impl fused / reference): device-side color distortion with fused normalization,
then blur, written in the model's memory format; forward, NT-Xent, backward and LARS on a
ResNet-18 with small images. The loader side (crop + flip) is the same for both and left out.

    python -m pytest benchmarks/bench_trainer.py --benchmark-only --benchmark-json=/tmp/trainer.json

extra_info: op, impl, device, case, images_per_s (images, not views), peak_mib.
"""
import pytest
import torch

from harness import peak_mib, sync  # first: puts an in-place build ahead of an installed simclr_ext

# (width, global batch, image side) per device: the CPU case is the main job's model
CASES = {"cpu": (16, 128, 24), "cuda": (64, 512, 32)}


def make_step(impl: str, where: str, width: int, batch: int, size: int):
    """Build a trainer step on fixed uint8 views; returns the zero-argument step."""
    import simclr_ext
    from simclr_ext.data import DeviceAugment
    from simclr_ext.models import SimCLRModel, preferred_memory_format
    from simclr_ext.recipe import build_ops, simclr_step

    torch.manual_seed(0)
    if where == "cpu":
        torch.set_num_threads(1)  # as python/train.py's default --threads 1
    dev = torch.device(where)
    loss_cls, lars_cls, color_cls = build_ops(impl)
    model = SimCLRModel("resnet18", size, "nonlinear", width=width).to(dev)
    fmt = preferred_memory_format(model, dev)  # as python/train.py decides
    model = model.to(memory_format=fmt)
    opt = lars_cls(simclr_ext.simclr_param_groups(model, 1e-6), lr=0.3, momentum=0.9, weight_decay=1e-6)
    crit = loss_cls(temperature=0.5)
    augment = DeviceAugment(color_cls, size, 0.5, 0.5, generator=torch.Generator(dev).manual_seed(0),
                            memory_format=fmt)
    views = torch.randint(0, 256, (2 * batch, 3, size, size), dtype=torch.uint8, device=dev)
    amp = torch.bfloat16 if where == "cuda" else None

    def step():
        simclr_step(model, crit, opt, augment(views), amp_dtype=amp)

    return step


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_trainer_step(benchmark, bench_device, impl):
    threads = torch.get_num_threads()  # make_step sets 1 on the CPU; other suites keep theirs
    try:
        _trainer_step(benchmark, bench_device, impl)
    finally:
        torch.set_num_threads(threads)


def _trainer_step(benchmark, bench_device, impl):
    width, batch, size = CASES[bench_device]
    step = make_step(impl, bench_device, width, batch, size)
    step()  # warm-up: allocator, thread pools, cuDNN autotuning

    def run():
        step()
        sync(bench_device)

    benchmark.group = f"trainer-step-{bench_device}"
    benchmark.pedantic(run, rounds=5 if bench_device == "cpu" else 20, warmup_rounds=1)
    mib = peak_mib(bench_device, fn=run, target="bench_trainer:make_step", impl=impl,
                   where=bench_device, width=width, batch=batch, size=size)
    benchmark.extra_info.update(
        op="trainer_step", impl=impl, device=bench_device,
        case=f"resnet18 width {width}, batch {batch}, {size}px",
        images_per_s=batch / benchmark.stats.stats.mean, peak_mib=mib)
