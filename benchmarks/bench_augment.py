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

JPEG decode (`test_jpeg_decode`, the trainer's --decode-device): B encoded JPEGs held in memory
(no file reads timed) -> uint8 [3, H, W] images, one call per batch:
  pillow       Image.open + convert("RGB") per image (the loader's CPU decode), one thread
  decode_cpu   torchvision.io.decode_jpeg(list) on the CPU (libjpeg-turbo), one thread
  nvjpeg       torchvision.io.decode_jpeg(list, device="cuda"): nvJPEG's batched decode
Cases: CPU 64 images 256 x 256; CUDA 256 images 375 x 500 (ImageNet's most common size), the CPU
decoders beside nvJPEG in the same run.
Run: python benchmarks/run_benchmarks.py -k augment     (-k decode: the decoders alone)
"""
import functools
import io
import warnings

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


DECODE_CASES = {"cpu": (64, 256, 256), "cuda": (256, 375, 500)}
DECODERS = ["pillow", "decode_cpu", "nvjpeg"]
DECODE_NOTES = {
    "pillow": "PIL.Image.open + convert('RGB') per image, as the loader decodes (one thread)",
    "decode_cpu": "torchvision.io.decode_jpeg(list) on the CPU, libjpeg-turbo (one thread)",
    "nvjpeg": "torchvision.io.decode_jpeg(list, device='cuda'): nvJPEG batched decode",
}


@functools.lru_cache(maxsize=1)
def make_jpegs(dev):
    """DECODE_CASES[dev] JPEGs (quality 90, 4:2:0) of smooth random fields plus noise, made
    once per process for the three decoders (the encoding costs more than a decode)."""
    from torchvision.io import encode_jpeg

    b, h, w = DECODE_CASES[dev]
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(b, 3, 6, 8, generator=g) * 255
    out = []
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (torchcodec)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        for i in range(0, b, 32):  # a few images at a time: bounded memory
            img = torch.nn.functional.interpolate(coarse[i:i + 32], size=(h, w), mode="bicubic")
            img = (img + 10 * torch.randn(img.shape, generator=g)).clamp(0, 255).to(torch.uint8)
            out += [encode_jpeg(x, quality=90) for x in img]
    return out


def make_decoder(decoder, dev):
    """A zero-argument callable: decode the batch (and wait for the device)."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg
    import torchvision.transforms.v2.functional as TF

    encoded = make_jpegs(dev)
    if decoder == "pillow":
        raw = [bytes(e.numpy()) for e in encoded]

        def fn():
            out = []
            for r in raw:
                with Image.open(io.BytesIO(r)) as im:
                    out.append(TF.pil_to_tensor(im.convert("RGB")))
            return out
    else:
        device = "cuda" if decoder == "nvjpeg" else "cpu"
        fn = lambda: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)  # noqa: E731

    def call():
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (torchcodec)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            out = fn()
        sync(dev)
        return out

    return call


@pytest.mark.parametrize("decoder", DECODERS)
def test_jpeg_decode(benchmark, bench_device, decoder):
    if decoder == "nvjpeg" and bench_device != "cuda":
        pytest.skip("nvJPEG decodes on CUDA only")
    b, h, w = DECODE_CASES[bench_device]
    label = f"{b} JPEGs {h}x{w} (q90) -> {b}x3x{h}x{w} uint8"
    benchmark.group = f"decode {bench_device} {label}"
    fn = make_decoder(decoder, bench_device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU decoders run in loader workers, one thread each
    try:
        out = fn()  # warm-up (nvJPEG handles, allocator) and a shape check
        assert len(out) == b and all(x.shape == (3, h, w) and x.dtype == torch.uint8 for x in out)
        benchmark.pedantic(fn, rounds=3 if decoder != "nvjpeg" else 10, iterations=1)
    finally:
        torch.set_num_threads(threads)
    info = {"op": "jpeg_decode", "impl": decoder, "device": bench_device, "case": label,
            "threads": 1 if decoder != "nvjpeg" else None, "note": DECODE_NOTES[decoder],
            "images_per_s": b / benchmark.stats.stats.median}
    if decoder == "nvjpeg":
        info["peak_mib"] = peak_mib("cuda", fn=fn)
        info["device_name"] = torch.cuda.get_device_name()
    benchmark.extra_info.update(info)
