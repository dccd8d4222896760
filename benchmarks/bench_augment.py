"""Whole-augmentation benchmarks: simclr_ext.SimCLRAugment (crop + flip, color + gray, blur,
normalization, two views per image, every parameter per view) against the torchvision v2
per-image pipeline, and on CUDA kornia's batched augmentation.

Every impl takes a uint8 batch [B, 3, H, W] and returns the 2B normalized float32 views
[2B, 3, S, S] (all first views, then all second views); parameters are drawn inside the timed
call. Same process, same thread count (torch.get_num_threads()) for every impl.
  fused        simclr_ext.SimCLRAugment(S)
  torchvision  v2.Compose([RandomResizedCrop(S, antialias=True), RandomHorizontalFlip(),
               RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8) (random order per call),
               RandomGrayscale(0.2), RandomApply([GaussianBlur(k, (0.1, 2.0))], p=0.5),
               ToDtype(float32, scale=True), Normalize(ImageNet)]) called per image and view
  kornia       (CUDA) kornia.augmentation on the float batch repeated twice: per-sample
               parameters, one color-op order per batch
Cases (B images of H x H -> views of S px): CPU 128 x 256 -> 224 (ImageNet-like), 128 x 96 -> 96
(STL-10), 128 x 32 -> 32 (CIFAR); CUDA 256 x 256 -> 224.
Run: python benchmarks/run_benchmarks.py -k augment
"""
import pytest
import torch

from harness import peak_mib, sync

CASES = {
    "cpu": {"224": (128, 256, 224), "96": (128, 96, 96), "32": (128, 32, 32)},
    "cuda": {"224": (256, 256, 224)},
}
IMPLS = ["fused", "torchvision", "kornia"]
# The per-image torchvision loop takes seconds to minutes per call on a small CPU: few rounds.
SLOW_ROUNDS = {"224": 2, "96": 3, "32": 5}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NOTES = {
    "fused": "simclr_ext.SimCLRAugment: every parameter per view, batched kernels",
    "torchvision": "torchvision v2 pipeline called per image and view (SimCLR recipe)",
    "kornia": "kornia batched augmentation: per-sample parameters, one jitter order per batch",
}


def make_impl(impl, dev, case):
    """A zero-argument callable: both views of one uint8 batch (and wait for the device)."""
    import simclr_ext
    from simclr_ext.pipeline import default_blur_kernel

    b, side, size = CASES[dev][case]
    gen = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, generator=gen,
                           device=dev)
    k = default_blur_kernel(size)
    if impl == "fused":
        module = simclr_ext.SimCLRAugment(size, generator=gen)
        fn = lambda: module(images)  # noqa: E731
    elif impl == "torchvision":
        from torchvision.transforms import v2

        t = v2.Compose([
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(k, (0.1, 2.0))], p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ])

        def fn():
            first = [t(images[i]) for i in range(b)]
            second = [t(images[i]) for i in range(b)]
            return torch.stack(first + second)
    elif impl == "kornia":
        import kornia.augmentation as K

        t = K.AugmentationSequential(
            K.RandomResizedCrop((size, size)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((k, k), (0.1, 2.0), p=0.5),
            K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
        )
        fn = lambda: t(images.float().div_(255).repeat(2, 1, 1, 1))  # noqa: E731
    else:
        raise ValueError(impl)

    def call():
        out = fn()
        sync(dev)
        return out

    return call


@pytest.mark.parametrize("case", ["224", "96", "32"])
@pytest.mark.parametrize("impl", IMPLS)
def test_simclr_augment(benchmark, bench_device, impl, case):
    if case not in CASES[bench_device]:
        pytest.skip(f"no {case} case on {bench_device}")
    if impl == "kornia":
        if bench_device != "cuda":
            pytest.skip("kornia is compared on CUDA only")
        pytest.importorskip("kornia")
    b, side, size = CASES[bench_device][case]
    label = f"{b}x3x{side}x{side} uint8 -> 2x{b}x3x{size}x{size} float32"
    benchmark.group = f"augment {bench_device} {label}"
    fn = make_impl(impl, bench_device, case)
    out = fn()  # warm-up (kernels, allocator, thread pool) and a shape check
    assert out.shape == (2 * b, 3, size, size) and out.dtype == torch.float32
    if impl == "torchvision":
        benchmark.pedantic(fn, rounds=SLOW_ROUNDS[case], iterations=1)
    else:
        benchmark(fn)
    info = {
        "op": "simclr_augment", "impl": impl, "device": bench_device, "case": label,
        "threads": torch.get_num_threads(), "note": NOTES[impl],
        "images_per_s": 2 * b / benchmark.stats.stats.median,
    }
    if impl == "fused" or bench_device == "cuda":
        # CPU: one more call in a fresh process; skipped for the torchvision loop (minutes).
        info["peak_mib"] = peak_mib(bench_device, fn=fn, target="bench_augment:make_impl",
                                    impl=impl, dev=bench_device, case=case)
    if bench_device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
    benchmark.extra_info.update(info)
