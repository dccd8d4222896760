"""simclr_ext.SimCLRAugment: the fused views against the per-view torchvision pipeline
(simclr_ext.reference.SimCLRAugment) for batches and varying-size lists, dtypes and layouts;
sample/apply reproducing forward; determinism from a seed; the sampled parameter distributions
(crop boxes against torchvision's RandomResizedCrop.get_params, flip / color / gray / blur rates,
independence of the two views); the illumination ramp; no host synchronization on CUDA;
errors."""
import math

import pytest
import torch
from torchvision import transforms as T

import simclr_ext
from simclr_ext import pipeline
from simclr_ext import reference as ref
from simclr_ext.pipeline import SimCLRParams

ATOL = 1e-4  # normalized values (|x| up to ~2.7)


def uint8_images(b, h, w, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8).to(device)


def make(size, device, seed=0, **kwargs):
    return simclr_ext.SimCLRAugment(size, generator=torch.Generator(device).manual_seed(seed),
                                    **kwargs)


def to_cpu(params):
    return SimCLRParams(params.boxes.cpu(), params.flip.cpu(),
                        type(params.color)(*(t.cpu() for t in params.color)), params.sigma.cpu(),
                        None if params.ramp is None else params.ramp.cpu())


@pytest.mark.sanitize
@pytest.mark.parametrize("input_kind", ["uint8", "float"])
def test_matches_torchvision_per_view(device, input_kind):
    images = uint8_images(6, 45, 38, device)
    if input_kind == "float":
        images = images.float() / 255
    aug = make(24, device, seed=1)
    params = aug.sample(images)
    out = aug.apply(images, params)
    assert out.shape == (12, 3, 24, 24) and out.dtype == torch.float32
    expected = ref.SimCLRAugment(24).apply(images.cpu(), to_cpu(params))
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)
    # not vacuous: the parameters really vary per view (some views blurred, some flipped, ...)
    assert 0 < int((params.sigma > 0).sum()) < 12 and 0 < int(params.flip.sum()) < 12


def test_varying_size_list_matches_torchvision(device):
    g = torch.Generator().manual_seed(5)
    sizes = [(45, 38), (30, 70), (64, 64), (20, 25), (90, 33)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device)
              for h, w in sizes]
    aug = make(24, device, seed=2)
    params = aug.sample(images)
    for n, (top, left, h, w) in enumerate(params.boxes.tolist()):
        hh, ww = sizes[n % len(sizes)]
        assert 0 <= top and top + h <= hh and 0 <= left and left + w <= ww and h >= 1 and w >= 1
    out = aug.apply(images, params)
    expected = ref.SimCLRAugment(24).apply([im.cpu() for im in images], to_cpu(params))
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)


def test_bfloat16_channels_last_output(device):
    images = uint8_images(4, 40, 40, device)
    aug = make(20, device, seed=3, out_dtype=torch.bfloat16, channels_last=True)
    params = aug.sample(images)
    out = aug.apply(images, params)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    expected = ref.SimCLRAugment(20).apply(images.cpu(), to_cpu(params))  # float32
    # Two bf16 roundings (color store, blur store) of values up to ~2.7.
    torch.testing.assert_close(out.cpu().float(), expected, atol=3 * 2.7 * 2**-8, rtol=0)


def test_crop_only_composition(device):
    # With every random op off and no normalization, a view is exactly the crop / 255.
    images = uint8_images(5, 33, 47, device)
    aug = make(16, device, seed=4, color_p=0.0, gray_p=0.0, blur_p=0.0, mean=None, std=None)
    params = aug.sample(images)
    assert not params.color.apply_jitter.any() and not params.color.apply_gray.any()
    assert torch.equal(params.sigma, torch.zeros_like(params.sigma))
    out = aug.apply(images, params)
    crop = simclr_ext.resized_crop(images, params.boxes, 16, params.flip)
    torch.testing.assert_close(out, crop / 255, atol=1e-6, rtol=0)


def three_kernel_chain(images, params, aug):
    """SimCLRAugment's CUDA data path (crop, color, blur in place) run op by op."""
    x = pipeline._resized_crop_op(images, params.boxes, params.flip, aug.image_size, 1 / 255,
                                  aug.channels_last)
    y = simclr_ext.color_distort(x, *params.color, out_dtype=aug.out_dtype, mean=aug.mean,
                                 std=aug.std)
    return simclr_ext.gaussian_blur_(y, params.sigma, aug.blur_kernel)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_fused_views_equal_three_kernel_chain(channels_last):
    # On the CPU a view goes from crop to store in one per-thread buffer (blur before the
    # normalization, torchvision's order); the chain normalizes first. Same views to rounding.
    images = uint8_images(16, 50, 41, "cpu", seed=9)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    aug = make(28, "cpu", seed=10, channels_last=channels_last)
    params = aug.sample(images)
    out = aug.apply(images, params)
    chain = three_kernel_chain(images, params, aug)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, chain, atol=1e-5, rtol=0)


def test_views_ops_opcheck(device):
    images = uint8_images(2, 20, 18, device)
    aug = make(12, device, seed=17)
    p = aug.sample(images)
    c = p.color
    args = (p.boxes, p.flip, c.factors, c.order, c.apply_jitter, c.apply_gray, p.sigma, 12,
            aug.blur_kernel, 1 / 255, list(aug.mean), list(aug.std), torch.float32, False)
    torch.library.opcheck(pipeline._views_op, (images,) + args)
    torch.library.opcheck(pipeline._views_list_op, ([images[0], images[1, :, 2:]],) + args)


def test_uint8_and_unit_float_inputs_agree(device):
    images = uint8_images(4, 36, 30, device)
    aug = make(18, device, seed=6)
    params = aug.sample(images)
    a = aug.apply(images, params)
    b = aug.apply(images.float() / 255, params)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_forward_is_apply_of_sample_and_seeded(device):
    images = uint8_images(4, 40, 44, device)
    a = make(16, device, seed=7)(images)
    aug = make(16, device, seed=7)
    params = aug.sample(images)
    assert torch.equal(a, aug.apply(images, params))
    assert torch.equal(a, make(16, device, seed=7)(images))  # determinism from the seed
    assert not torch.equal(a, make(16, device, seed=8)(images))
    # views [0, B) and [B, 2B) are both views of images 0..B-1, with their own parameters
    assert not torch.equal(params.boxes[:4], params.boxes[4:])


# --------------------------------------------------------------------------------------------
# Sampled distributions
# --------------------------------------------------------------------------------------------
def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True).double() / a.numel()
    fb = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return float((fa - fb).abs().max())


@pytest.mark.parametrize("hw", [(64, 48), (24, 120)])  # (24, 120): ~20% fallback crops
def test_crop_boxes_distributed_as_torchvision(hw):
    h, w = hw
    n_ours, n_tv = 40000, 4000
    boxes = simclr_ext.sample_crop_boxes(h, w, n_ours, "cpu",
                                         generator=torch.Generator().manual_seed(11))
    torch.manual_seed(12)
    img = torch.zeros(3, h, w)
    tv = torch.tensor([T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
                       for _ in range(n_tv)])
    assert (boxes[:, 2] >= 1).all() and (boxes[:, 0] + boxes[:, 2] <= h).all()
    assert (boxes[:, 3] >= 1).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()
    if w > 2 * h:  # the fallback (central crop of the clamped ratio) as often as torchvision's
        fallback = torch.tensor([0, (w - round(h * 4 / 3)) // 2, h, round(h * 4 / 3)])
        ours_fb = (boxes == fallback).all(1).double().mean()
        tv_fb = (tv == fallback).all(1).double().mean()
        assert 0.1 < float(tv_fb) < 0.4 and abs(float(ours_fb - tv_fb)) < 0.035
    # KS critical value at alpha = 1e-3 for these sample sizes is about 0.032.
    for name, ours, theirs in [
        ("area", boxes[:, 2] * boxes[:, 3], tv[:, 2] * tv[:, 3]),
        ("log aspect", (boxes[:, 3] / boxes[:, 2]).log(), (tv[:, 3] / tv[:, 2]).log()),
        ("top", boxes[:, 0], tv[:, 0]),
        ("left", boxes[:, 1], tv[:, 1]),
    ]:
        assert ks_statistic(ours, theirs) < 0.035, name


def rate_close(mask, p, n):
    se = math.sqrt(p * (1 - p) / n) if 0 < p < 1 else 0.0
    return abs(float(mask.float().mean()) - p) <= 5 * se + 1e-12


def test_flip_color_gray_blur_rates_and_view_independence():
    b = 8000
    images = torch.zeros(1, 3, 64, 48, dtype=torch.uint8).expand(b, -1, -1, -1)
    aug = make(32, "cpu", seed=13)
    p = aug.sample(images)
    v = 2 * b
    assert rate_close(p.flip, 0.5, v)
    assert rate_close(p.color.apply_jitter, 0.8, v)
    assert rate_close(p.color.apply_gray, 0.2, v)
    blurred = p.sigma > 0
    assert rate_close(blurred, 0.5, v)
    s = p.sigma[blurred]
    assert float(s.min()) >= 0.1 and float(s.max()) <= 2.0
    assert abs(float(s.mean()) - 1.05) < 5 * 1.9 / math.sqrt(12 * s.numel())
    # The two views of an image are independent draws.
    assert rate_close(p.flip[:b] & p.flip[b:], 0.25, b)
    assert rate_close(blurred[:b] & blurred[b:], 0.25, b)
    area = (p.boxes[:, 2] * p.boxes[:, 3]).double()
    r = torch.corrcoef(torch.stack([area[:b], area[b:]]))[0, 1]
    assert abs(float(r)) < 5 / math.sqrt(b)
    # Options reach the sampler.
    q = make(32, "cpu", seed=14, flip_p=0.0, color_p=1.0, gray_p=1.0, blur_p=1.0).sample(images)
    assert not q.flip.any() and q.color.apply_jitter.all() and q.color.apply_gray.all()
    assert (q.sigma > 0).all()


def test_scale_and_ratio_options():
    images = torch.zeros(1, 3, 100, 100, dtype=torch.uint8).expand(2000, -1, -1, -1)
    p = make(32, "cpu", seed=15, scale=(0.5, 0.5), ratio=(1.0, 1.0)).sample(images)
    # area 5000, aspect 1: every crop is round(sqrt(5000)) = 71 square
    assert (p.boxes[:, 2] == 71).all() and (p.boxes[:, 3] == 71).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_on_cuda():
    images = uint8_images(8, 48, 40, "cuda")
    listed = [images[0], images[1, :, :30], images[2, :, 5:, 3:]]
    aug = make(32, "cuda", seed=16)
    ramped = make(32, "cuda", seed=16, ramp=0.4)
    for m in (aug, ramped):
        m(images)
        m(listed)  # warm-up: allocator, pinned-memory pool
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for m in (aug, ramped):
            m(images)
            m(listed)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_constructor_errors():
    A = simclr_ext.SimCLRAugment
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        A(0)
    with pytest.raises(TypeError, match="image_size must be an int"):
        A(32.0)
    with pytest.raises(ValueError, match="scale must be"):
        A(32, scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="ratio must be"):
        A(32, ratio=(-1.0, 2.0))
    with pytest.raises(TypeError, match="scale must be a pair"):
        A(32, scale=0.5)
    for name in ("flip_p", "color_p", "gray_p", "blur_p"):
        with pytest.raises(ValueError, match=f"{name} must be in"):
            A(32, **{name: 1.5})
    with pytest.raises(ValueError, match="color_strength must be >= 0"):
        A(32, color_strength=-1.0)
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        A(32, blur_kernel=4)
    with pytest.raises(ValueError, match="blur_kernel must be odd"):
        A(8, blur_kernel=17)
    with pytest.raises(ValueError, match="mean and std must be given together"):
        A(32, std=None)
    with pytest.raises(ValueError, match="std must be nonzero"):
        A(32, std=(1.0, 0.0, 1.0))
    with pytest.raises(TypeError, match="out_dtype must be a floating"):
        A(32, out_dtype=torch.int32)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        A(32, generator=0)


def test_call_errors():
    aug = make(16, "cpu")
    with pytest.raises(ValueError, match="3 .RGB. channels"):
        aug(torch.zeros(2, 1, 20, 20, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        aug(torch.zeros(2, 3, 20, 20, dtype=torch.int32))
    with pytest.raises(ValueError, match="4-d batch"):
        aug(torch.zeros(3, 20, 20, dtype=torch.uint8))
    images = torch.zeros(2, 3, 20, 20, dtype=torch.uint8)
    params = aug.sample(images)
    with pytest.raises(ValueError, match="params hold 4 views, expected 2 x 3 images"):
        aug.apply(torch.zeros(3, 3, 20, 20, dtype=torch.uint8), params)
    with pytest.raises(ValueError, match="must lie inside image"):
        aug.apply(torch.zeros(2, 3, 20, 20, dtype=torch.uint8),
                  params._replace(boxes=params.boxes + 20))
    with pytest.raises(TypeError, match="params must be SimCLRParams"):
        aug.apply(images, tuple(params))
    # hand-made parameters are checked on the CPU by the fused entry
    bad_order = params.color._replace(order=torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"order\[0\] must be a permutation"):
        aug.apply(images, params._replace(color=bad_order))
    with pytest.raises(RuntimeError, match=r"sigma\[1\] must be finite and >= 0"):
        aug.apply(images, params._replace(sigma=torch.tensor([0.0, -1.0, 0.0, 0.0])))


# --------------------------------------------------------------------------------------------
# Illumination ramp
# --------------------------------------------------------------------------------------------
def test_illumination_ramp_geometry():
    # a = 1 along t = 0 is u itself: -1 in the left column, +1 in the right, constant down a
    # column; t = pi / 2 turns it into v; t = pi mirrors it; a = 0 is flat.
    size = 7
    axis = torch.linspace(-1, 1, size, dtype=torch.float64)
    r = pipeline.illumination_ramp(torch.tensor([[1.0, 0.0], [0.5, math.pi / 2], [1.0, math.pi],
                                                 [0.0, 1.0]]), size)
    assert r.shape == (4, 1, size, size) and r.dtype == torch.float32
    torch.testing.assert_close(r[0, 0].double(), axis.expand(size, size), atol=1e-6, rtol=0)
    torch.testing.assert_close(r[1, 0].double(), 0.5 * axis[:, None].expand(size, size),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(r[2, 0], -r[0, 0], atol=1e-6, rtol=0)
    assert float(r[3].abs().max()) == 0.0
    # any direction: a plane through the center with gradient a (cos t, sin t) per unit of u, v
    g = torch.Generator().manual_seed(0)
    ramp = torch.rand(5, 2, generator=g, dtype=torch.float64) * torch.tensor([0.8, 2 * math.pi], dtype=torch.float64)
    got = pipeline.illumination_ramp(ramp.float(), size).double()
    u, v = axis.view(1, 1, size), axis.view(1, size, 1)
    a, t = ramp[:, 0].view(5, 1, 1), ramp[:, 1].view(5, 1, 1)
    torch.testing.assert_close(got[:, 0], a * (torch.cos(t) * u + torch.sin(t) * v), atol=1e-6, rtol=0)


def test_ramp_off_keeps_the_random_stream():
    # ramp = 0 draws nothing more: the parameters and views are those of the module without it
    images = uint8_images(4, 30, 30, "cpu")
    p0 = make(16, "cpu", seed=3).sample(images)
    p1 = make(16, "cpu", seed=3, ramp=0.0).sample(images)
    assert p0.ramp is None and p1.ramp is None and torch.equal(p0.boxes, p1.boxes)
    p2 = make(16, "cpu", seed=3, ramp=0.4).sample(images)
    assert torch.equal(p0.boxes, p2.boxes) and torch.equal(p0.sigma, p2.sigma)  # drawn last
    assert p2.ramp.shape == (8, 2)


def test_ramp_views_match_torchvision_and_add_the_ramp(device):
    images = uint8_images(6, 40, 36, device)
    aug = make(20, device, seed=4, ramp=0.4, blur_p=0.5)
    params = aug.sample(images)
    a, t = params.ramp[:, 0], params.ramp[:, 1]
    assert float(a.min()) >= 0 and float(a.max()) <= 0.4 and float(a.max()) > 0.1
    assert float(t.min()) >= 0 and float(t.max()) < 2 * math.pi
    out = aug.apply(images, params)
    torch.testing.assert_close(out.cpu(), ref.SimCLRAugment(20, ramp=0.4, blur_p=0.5).apply(
        images.cpu(), to_cpu(params)), atol=ATOL, rtol=0)
    # the same views without the ramp differ by exactly ramp / std[c] in normalized units
    flat = aug.apply(images, params._replace(ramp=None))
    std = torch.tensor(pipeline.IMAGENET_STD).view(1, 3, 1, 1)
    expected = pipeline.illumination_ramp(params.ramp.cpu(), 20) / std
    torch.testing.assert_close((out - flat).cpu(), expected.expand_as(flat), atol=1e-5, rtol=0)
    # bf16 channels_last: the ramp lands in the same layout
    aug16 = make(20, device, seed=4, ramp=0.4, out_dtype=torch.bfloat16, channels_last=True)
    out16 = aug16.apply(images, params)
    assert out16.dtype == torch.bfloat16 and out16.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out16.float(), out, atol=3 * 5.5 * 2**-8, rtol=0)  # |x| <= ~5.2


def test_device_augment_gray_and_ramp():
    from simclr_ext.data import DeviceAugment

    images = uint8_images(64, 12, 12, "cpu")
    mean = torch.tensor(pipeline.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(pipeline.IMAGENET_STD).view(1, 3, 1, 1)

    def aug(**kw):
        return DeviceAugment(simclr_ext.ColorDistortion, 12, 0.5, 0.0,
                             generator=torch.Generator().manual_seed(0), **kw)

    base = aug()(images)
    # gray_p = 1: every view has three equal channels (before normalization)
    gray = aug(gray_p=1.0)(images) * std + mean
    torch.testing.assert_close(gray[:, 0], gray[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(gray[:, 1], gray[:, 2], atol=1e-5, rtol=0)
    # the ramp is drawn after the color parameters: same color, plus a plane per view
    with_ramp = aug(ramp=0.4)(images)
    diff = (with_ramp - base) * std  # [0, 1] units, the same plane on the three channels
    torch.testing.assert_close(diff[:, 0], diff[:, 2], atol=1e-5, rtol=0)
    gen = torch.Generator().manual_seed(0)
    simclr_ext.ColorDistortion(0.5, 0.8, 0.2, generator=gen).sample_params(64, "cpu")
    ramp = pipeline.sample_ramp(64, 0.4, "cpu", gen)
    torch.testing.assert_close(diff[:, :1], pipeline.illumination_ramp(ramp, 12), atol=1e-5, rtol=0)


def test_ramp_errors():
    A = simclr_ext.SimCLRAugment
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ramp .the illumination ramp's largest amplitude. must be finite"):
            A(16, ramp=bad)
    with pytest.raises(TypeError, match="ramp must be a number"):
        A(16, ramp=True)
    aug = make(16, "cpu", ramp=0.3)
    images = torch.zeros(2, 3, 20, 20, dtype=torch.uint8)
    params = aug.sample(images)
    with pytest.raises(ValueError, match=r"params.ramp must have shape \(4, 2\)"):
        aug.apply(images, params._replace(ramp=params.ramp[:3]))
    with pytest.raises(TypeError, match="params.ramp must be a floating tensor"):
        aug.apply(images, params._replace(ramp=params.ramp.long()))
