"""Color distortion benchmarks: the fused per-image kernel vs the per-image torchvision loop
(simclr_ext.reference), torchvision's batch ColorJitter and kornia's per-sample ColorJitter.

Every impl draws its random parameters inside the timed call (the sampler is part of the cost)
and takes the uint8 batch, returning float32 in [0, 1]:
  fused             simclr_ext.ColorDistortion (per-image factors, order, jitter and gray coins)
  reference         simclr_ext.reference.ColorDistortion: per-image torchvision.v2.functional loop
  torchvision_batch v2.RandomApply([v2.ColorJitter], p) + v2.RandomGrayscale on the whole batch:
                    ONE parameter set, order and coin per batch, so not SimCLR's per-image recipe
  kornia            kornia.augmentation.ColorJitter(p) + RandomGrayscale: per-sample factors and
                    coins, but one op order per batch
CPU case: 64 x 3 x 96 x 96; CUDA case: 256 x 3 x 224 x 224.
Run: python -m pytest benchmarks/bench_color.py --benchmark-only --benchmark-json=/tmp/color.json
"""
import pytest
import torch

from harness import peak_mib, sync

S = 1.0  # SimCLR strength: brightness / contrast / saturation 0.8 s, hue 0.2 s
P, P_GRAY = 0.8, 0.2
CASES = {"cpu": (64, 96, 96), "cuda": (256, 224, 224)}
IMPLS = ["fused", "reference", "torchvision_batch", "kornia"]
NOTES = {
    "fused": "per-image factors, order, jitter and grayscale coins (SimCLR recipe)",
    "reference": "per-image loop over torchvision.transforms.v2.functional (SimCLR recipe)",
    "torchvision_batch": "one parameter set, order and coin for the whole batch: faster but "
                         "NOT the per-image SimCLR recipe",
    "kornia": "per-sample factors and coins, one op order per batch",
}


def make_impl(impl, dev):
    """A zero-argument callable: sample + distort one uint8 batch (and wait for the device)."""
    import simclr_ext
    from simclr_ext import reference

    b, h, w = CASES[dev]
    gen = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen, device=dev)
    if impl == "fused":
        module = simclr_ext.ColorDistortion(S, P, P_GRAY, generator=gen)
        fn = lambda: module(images)  # noqa: E731
    elif impl == "reference":
        module = reference.ColorDistortion(S, P, P_GRAY, generator=gen)
        fn = lambda: module(images)  # noqa: E731
    elif impl == "torchvision_batch":
        from torchvision.transforms import v2

        t = v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(0.8 * S, 0.8 * S, 0.8 * S, 0.2 * S)], p=P),
            v2.RandomGrayscale(p=P_GRAY),
        ])
        fn = lambda: t(images)  # noqa: E731
    elif impl == "kornia":
        import kornia.augmentation as K

        t = torch.nn.Sequential(
            K.ColorJitter(0.8 * S, 0.8 * S, 0.8 * S, 0.2 * S, p=P),
            K.RandomGrayscale(p=P_GRAY),
        )
        fn = lambda: t(images.float().div_(255))  # noqa: E731
    else:
        raise ValueError(impl)

    def call():
        out = fn()
        sync(dev)
        return out

    return call


def copy_bandwidth_gbs(device, nbytes):
    """Measured device copy bandwidth (read + write bytes / s) of a tensor of nbytes."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    import time

    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - t0) / 1e9


@pytest.mark.parametrize("impl", IMPLS)
def test_color_distortion(benchmark, bench_device, impl):
    b, h, w = CASES[bench_device]
    case = f"{b}x3x{h}x{w} uint8 -> float32"
    benchmark.group = f"color {bench_device} {case}"
    fn = make_impl(impl, bench_device)
    fn()  # warm-up (kernels, allocator, thread pool)
    if impl == "reference" and bench_device == "cuda":
        benchmark.pedantic(fn, rounds=3, iterations=1)
    else:
        benchmark(fn)
    info = {
        "op": "color_distort", "impl": impl, "device": bench_device, "case": case,
        "threads": torch.get_num_threads(), "note": NOTES[impl],
        "peak_mib": peak_mib(bench_device, fn=fn, target="bench_color:make_impl",
                             impl=impl, dev=bench_device),
    }
    if bench_device == "cuda":
        moved = b * 3 * h * w * (1 + 4)  # uint8 read + float32 written
        info["bandwidth_gbs"] = moved / benchmark.stats.stats.mean / 1e9
        info["copy_bandwidth_gbs"] = copy_bandwidth_gbs(bench_device, 256 * 2**20)
        info["device_name"] = torch.cuda.get_device_name()
    benchmark.extra_info.update(info)
