"""simclr_ext.color_distort / ColorDistortion against the per-image torchvision loop
(simclr_ext.reference), the sampler's distribution, layouts, dtypes, torch.compile and errors."""
import itertools
import re

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import simclr_ext
from simclr_ext import reference as ref

PERMS = torch.tensor(list(itertools.permutations(range(4))))  # [24, 4], every order once
ATOL = 1e-5


def random_images(b, h, w, dtype, device, gen):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, 3, h, w), generator=gen, dtype=torch.uint8).to(device)
    return torch.rand(b, 3, h, w, generator=gen).to(device=device, dtype=dtype)


def random_params(b, device, gen, p_jitter=0.85, p_gray=0.3):
    """Factors wider than SimCLR's (0.1..1.9, hue over all of [-0.5, 0.5]); orders cycle
    through all 24 permutations."""
    bcs = 0.1 + 1.8 * torch.rand(b, 3, generator=gen)
    hue = torch.rand(b, 1, generator=gen) - 0.5
    factors = torch.cat([bcs, hue], 1)
    order = PERMS[torch.arange(b) % 24]
    jitter = torch.rand(b, generator=gen) < p_jitter
    gray = torch.rand(b, generator=gen) < p_gray
    return tuple(t.to(device) for t in (factors, order, jitter, gray))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.mark.sanitize  # small: gpu_check.sh runs the cuda cases under compute-sanitizer
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("hw", [(19, 23), (64, 72)])  # odd sizes; HW % 4 == 0 (CUDA vector path)
def test_matches_reference_all_orders(device, dtype, hw, gen):
    images = random_images(48, *hw, dtype, device, gen)
    params = random_params(48, device, gen)
    out = simclr_ext.color_distort(images, *params)
    expected = ref.color_distort(images.cpu(), *(t.cpu() for t in params))
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)


def test_contrast_uses_mean_at_its_step_multi_chunk(device, gen):
    # 70 x 65 pixels spans several CPU work chunks; strong brightness / hue / saturation before
    # contrast change the image mean a lot, so a mean taken at the wrong step would show.
    images = random_images(24, 70, 65, torch.uint8, device, gen)
    factors = torch.tensor([[1.9, 0.3, 0.1, 0.4]]).repeat(24, 1).to(device)
    jitter = torch.ones(24, dtype=torch.bool, device=device)
    gray = torch.zeros(24, dtype=torch.bool, device=device)
    order = PERMS.to(device)
    out = simclr_ext.color_distort(images, factors, order, jitter, gray)
    expected = ref.color_distort(images.cpu(), factors.cpu(), order.cpu(), jitter.cpu(),
                                 gray.cpu())
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)
    # contrast first vs after brightness really differs (the test above is not vacuous)
    assert (expected[0] - expected[6]).abs().max() > 0.05  # orders (0,1,..) vs (1,0,..)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_matches_reference_other_input_dtypes(device, dtype, gen):
    images = random_images(24, 17, 13, dtype, device, gen)
    params = random_params(24, device, gen)
    out = simclr_ext.color_distort(images, *params)
    expected = ref.color_distort(images.cpu(), *(t.cpu() for t in params))
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)


def hue_edge_image():
    """[3, 8, 8]: gray pixels, black, white, saturated primaries and secondaries, and hues just
    around the 0/1 wrap (red with a touch of blue or green), over a random background."""
    g = torch.Generator().manual_seed(7)
    img = torch.rand(3, 8, 8, generator=g)
    pixels = [
        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2),
        (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
        (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0),
        (1.0, 0.0, 1e-6), (1.0, 1e-6, 0.0), (0.9, 0.1, 0.1000001), (0.9, 0.1000001, 0.1),
        (0.7, 0.3, 0.7), (0.3, 0.7, 0.7), (0.7, 0.7, 0.3), (1.0, 0.999999, 0.0),
    ]
    for k, px in enumerate(pixels):
        img[:, k // 8, k % 8] = torch.tensor(px)
    return img


@pytest.mark.parametrize("hue", [-0.5, -0.3, -1e-4, 0.0, 1e-4, 1.0 / 6.0, 0.3, 0.5])
@pytest.mark.parametrize("as_uint8", [False, True])
def test_hue_edge_cases(device, hue, as_uint8):
    img = hue_edge_image()
    if as_uint8:
        img = (img * 255).round().to(torch.uint8)
    images = img.unsqueeze(0).to(device)
    factors = torch.tensor([[1.0, 1.0, 1.0, hue]], device=device)
    order = torch.tensor([[3, 0, 1, 2]], device=device)
    on = torch.ones(1, dtype=torch.bool, device=device)
    out = simclr_ext.color_distort(images, factors, order, on, ~on)
    x = TF.to_dtype(img, torch.float32, scale=True)
    expected = TF.adjust_hue(x, hue)
    torch.testing.assert_close(out[0].cpu(), expected, atol=ATOL, rtol=0)
    # gray pixels keep their value whatever the hue
    torch.testing.assert_close(out[0, :, 0, :4].cpu(), x[:, 0, :4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_parameters_leave_image_unchanged(device, dtype, gen):
    images = random_images(6, 21, 18, dtype, device, gen)
    x = TF.to_dtype(images, torch.float32, scale=True)
    ones = torch.ones(6, dtype=torch.bool, device=device)
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]], device=device).repeat(6, 1)
    order = PERMS[:6].to(device)
    # nothing applied: exactly the scaled input
    out = simclr_ext.color_distort(images, factors, order, ~ones, ~ones)
    assert torch.equal(out, x)
    # identity factors in every order: brightness / contrast / saturation 1 are exact, hue 0 is an
    # HSV round trip (float rounding only)
    out = simclr_ext.color_distort(images, factors, order, ones, ~ones)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.5])
def test_sampler_ranges_differences_and_rates(device, strength):
    gen = torch.Generator(device=device).manual_seed(0)
    m = simclr_ext.ColorDistortion(strength=strength, p=0.8, p_gray=0.2, generator=gen)
    n = 20000
    factors, order, jitter, gray = m.sample_params(n, device)
    assert factors.shape == (n, 4) and factors.dtype == torch.float32
    assert order.shape == (n, 4) and order.dtype == torch.int64
    assert jitter.shape == gray.shape == (n,) and jitter.dtype == gray.dtype == torch.bool
    assert factors.device.type == order.device.type == jitter.device.type == torch.device(device).type
    lo, hi, h = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength, 0.2 * strength
    bcs = factors[:, :3]
    assert bcs.min() >= lo and bcs.max() <= hi
    assert factors[:, 3].min() >= -h and factors[:, 3].max() <= h
    # the ranges are covered (not a constant): near both ends
    assert bcs.min() < lo + 0.01 * (hi - lo) and bcs.max() > hi - 0.01 * (hi - lo)
    # per-image parameters: (almost) all distinct, all 24 orders drawn, each a permutation
    assert torch.unique(factors[:, 0]).numel() > 0.99 * n
    assert torch.equal(order.sort(1).values, torch.arange(4, device=device).expand(n, 4))
    assert torch.unique(order, dim=0).shape[0] == 24
    # apply rates within ~5 sigma of p and p_gray
    assert abs(jitter.float().mean().item() - 0.8) < 0.015
    assert abs(gray.float().mean().item() - 0.2) < 0.015


def test_generator_seed_reproduces_output(device, gen):
    images = random_images(16, 24, 20, torch.uint8, device, gen)

    def run(seed):
        g = torch.Generator(device=device).manual_seed(seed)
        return simclr_ext.ColorDistortion(generator=g)(images)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # sample_params + color_distort reproduce the module's output exactly
    g = torch.Generator(device=device).manual_seed(5)
    params = simclr_ext.ColorDistortion(generator=g).sample_params(16, device)
    assert torch.equal(simclr_ext.color_distort(images, *params), a)
    # the images differ from one another in parameters (not one set for the batch)
    assert torch.unique(params.factors[:, 0]).numel() == 16


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_and_kernel_make_no_host_sync():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device="cuda")
    m = simclr_ext.ColorDistortion(generator=torch.Generator("cuda").manual_seed(0),
                                   mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    m(images)  # warm-up: lazy initializations may synchronize once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = m(images)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == images.shape


def test_reference_module_matches_fused(device, gen):
    images = random_images(12, 16, 16, torch.uint8, device, gen)
    kwargs = dict(strength=0.7, p=0.9, p_gray=0.3, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    fused = simclr_ext.ColorDistortion(
        generator=torch.Generator(device=device).manual_seed(3), **kwargs)(images)
    expected = ref.ColorDistortion(
        generator=torch.Generator(device=device).manual_seed(3), **kwargs)(images)
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=0)


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_channels_last(device, dtype, gen):
    images = random_images(24, 15, 22, dtype, device, gen)
    params = random_params(24, device, gen)
    cl = images.contiguous(memory_format=torch.channels_last)
    out = simclr_ext.color_distort(cl, *params)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, simclr_ext.color_distort(images, *params))
    # a strided (non-dense) view is copied, and still correct
    wide = random_images(24, 15, 30, dtype, device, gen)[..., ::2]
    torch.testing.assert_close(
        simclr_ext.color_distort(wide, *params),
        ref.color_distort(wide.cpu(), *(t.cpu() for t in params)).to(device), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_size_one_width_views_with_odd_strides(device, dtype, gen):
    # [B, 3, H, 1] views whose stride(3) is not 1 pass is_contiguous() (size-1 dims are ignored)
    # but the kernels index pixels through stride(3): the entry must copy them first.
    for images in (
        random_images(5, 1, 13, dtype, device, gen).transpose(2, 3),   # [5, 3, 13, 1]
        random_images(5, 13, 1, dtype, device, gen).as_strided((5, 3, 13, 1), (39, 13, 1, 7)),
    ):
        params = random_params(5, device, gen)
        torch.testing.assert_close(
            simclr_ext.color_distort(images, *params),
            ref.color_distort(images.cpu(), *(t.cpu() for t in params)).to(device),
            atol=ATOL, rtol=0)


def test_mean_std_fusion(device, gen):
    images = random_images(24, 13, 11, torch.uint8, device, gen)
    params = random_params(24, device, gen)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = simclr_ext.color_distort(images, *params, mean=mean, std=std)
    expected = TF.normalize(ref.color_distort(images.cpu(), *(t.cpu() for t in params)), mean, std)
    torch.testing.assert_close(out.cpu(), expected, atol=5e-5, rtol=0)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_out_dtypes(device, out_dtype, gen):
    images = random_images(24, 13, 11, torch.uint8, device, gen)
    params = random_params(24, device, gen)
    out = simclr_ext.color_distort(images, *params, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    expected = ref.color_distort(images.cpu(), *(t.cpu() for t in params))
    # the only difference is the final rounding to out_dtype (values in [0, 1])
    assert torch.equal(out.cpu(), expected.to(out_dtype)) or out_dtype == torch.float64
    tol = {torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float64: ATOL}[out_dtype]
    torch.testing.assert_close(out.cpu().float(), expected, atol=tol, rtol=0)


def test_empty_batch(device):
    images = torch.zeros(0, 3, 8, 8, dtype=torch.uint8, device=device)
    params = simclr_ext.ColorDistortion().sample_params(0, device)
    out = simclr_ext.color_distort(images, *params)
    assert out.shape == (0, 3, 8, 8) and out.dtype == torch.float32


def test_torch_compile_fullgraph(device, gen):
    images = random_images(8, 16, 12, torch.uint8, device, gen)
    params = random_params(8, device, gen)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def pipeline(x, f, o, j, g):
        return simclr_ext.color_distort(x, f, o, j, g, mean=[0.5, 0.5, 0.5], std=[0.25] * 3) * 2

    expected = simclr_ext.color_distort(images, *params, mean=[0.5] * 3, std=[0.25] * 3) * 2
    assert torch.equal(pipeline(images, *params), expected)
    module = torch.compile(simclr_ext.ColorDistortion(), fullgraph=True, backend="aot_eager")
    out = module(images)
    assert out.shape == images.shape and out.dtype == torch.float32


def test_opcheck(device, gen):
    images = random_images(4, 9, 7, torch.uint8, device, gen)
    params = random_params(4, device, gen)
    torch.library.opcheck(
        torch.ops.simclr_ext.color_distort.default,
        (images, *params, torch.float32, None, None),
    )
    cl = random_images(4, 9, 7, torch.float32, device, gen).contiguous(
        memory_format=torch.channels_last)
    torch.library.opcheck(
        torch.ops.simclr_ext.color_distort.default,
        (cl, *params, torch.bfloat16, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]),
    )


def test_bad_inputs_raise_clear_errors(device):
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device=device)
    params = simclr_ext.ColorDistortion().sample_params(2, device)
    f, o, j, g = params
    cd = simclr_ext.color_distort
    with pytest.raises(ValueError, match="3 .RGB. channels"):
        cd(torch.zeros(2, 4, 8, 8, device=device), *params)
    with pytest.raises(ValueError, match=r"a batch \[B, 3, H, W\] or one image"):
        cd(torch.zeros(8, 8, device=device), *params)
    with pytest.raises(ValueError, match=r"factors must have shape \(1, 4\)"):
        cd(torch.zeros(3, 8, 8, device=device), *params)  # one image, parameters for two
    with pytest.raises(TypeError, match="uint8 or floating"):
        cd(x.to(torch.int32), *params)
    with pytest.raises(ValueError, match="factors must have shape"):
        cd(x, f[:, :3], o, j, g)
    with pytest.raises(ValueError, match="order must have shape"):
        cd(x, f, o[:1], j, g)
    with pytest.raises(ValueError, match="apply_gray must have shape"):
        cd(x, f, o, j, g[:, None])
    with pytest.raises(TypeError, match="apply_jitter must be a bool"):
        cd(x, f, o, j.int(), g)
    with pytest.raises(TypeError, match="order must be an integer"):
        cd(x, f, o.float(), j, g)
    with pytest.raises(ValueError, match="factors must be on the images' device"):
        cd(x, f.to("meta"), o, j, g)
    with pytest.raises(ValueError, match="mean and std"):
        cd(x, *params, mean=[0.5] * 3)
    with pytest.raises(ValueError, match="mean must have 3"):
        cd(x, *params, mean=[0.5] * 2, std=[1.0] * 2)
    with pytest.raises(TypeError, match="out_dtype"):
        cd(x, *params, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        simclr_ext.ColorDistortion(strength=-0.1)
    with pytest.raises(ValueError, match="p must be in"):
        simclr_ext.ColorDistortion(p=1.5)
    with pytest.raises(ValueError, match="p_gray must be in"):
        simclr_ext.ColorDistortion(p_gray=-0.1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        simclr_ext.ColorDistortion(generator=0)
    if device == "cuda":  # a CPU generator for CUDA images (no other device exists on a CPU box)
        with pytest.raises(ValueError, match="generator is on"):
            simclr_ext.ColorDistortion(generator=torch.Generator())(x)
    with pytest.raises(TypeError, match="images must be a tensor"):
        simclr_ext.ColorDistortion()(x.tolist())
    with pytest.raises(ValueError, match="std must be nonzero"):
        simclr_ext.ColorDistortion(mean=[0.5] * 3, std=[0.2, 0.0, 0.2])


def test_bad_parameter_values_raise_on_every_device(device):
    # The values of explicit parameters are checked in Python, the same way for CPU and CUDA
    # tensors: the row and the bad value are named.
    x = torch.zeros(3, 3, 8, 8, dtype=torch.uint8, device=device)
    f, o, j, g = simclr_ext.ColorDistortion().sample_params(3, device)
    cd = simclr_ext.color_distort
    for bad_row in ([0, 0, 1, 2], [0, 1, 2, 4], [-1, 1, 2, 3], [3, 2, 1, 1]):
        order = o.clone()
        order[1] = torch.tensor(bad_row)
        with pytest.raises(ValueError, match=r"order\[1\] must be a permutation of 0..3.*got "
                           + re.escape(str(bad_row))):
            cd(x, f, order, j, g)
    for k, name in enumerate(("brightness", "contrast", "saturation")):
        for value in (-0.25, float("nan")):
            factors = f.clone()
            factors[2, k] = value
            with pytest.raises(ValueError, match=rf"factors\[2, {k}\] \({name}\) must be >= 0"):
                cd(x, factors, o, j, g)
    for value in (0.7, -0.51, float("inf")):
        factors = f.clone()
        factors[0, 3] = value
        with pytest.raises(ValueError, match=r"factors\[0, 3\] \(hue\) must be in \[-0.5, 0.5\]"):
            cd(x, factors, o, j, g)
    # int32 orders are checked the same way before the cast to int64
    with pytest.raises(ValueError, match="permutation"):
        cd(x, f, torch.zeros_like(o, dtype=torch.int32), j, g)


def test_unchecked_op_codes_are_no_op_steps_on_every_device(device, gen):
    # The op itself (torch.ops.simclr_ext.color_distort, reached without the Python check) treats
    # an op code outside 0..3 as a step that does nothing, on CPU and CUDA alike: the result is
    # the reference run on the remaining steps.
    images = random_images(6, 11, 9, torch.uint8, device, gen)
    factors, _, jitter, gray = random_params(6, device, gen, p_jitter=1.0)
    order = torch.tensor([[3, 9, 1, -2]] * 6, device=device)
    out = torch.ops.simclr_ext.color_distort(images, factors, order, jitter, gray, torch.float32,
                                             None, None)
    kept = torch.tensor([[3, 1]] * 6)
    expected = ref.color_distort(images.cpu(), factors.cpu(), kept, jitter.cpu(), gray.cpu())
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("strength", [2.6, 5.0])
def test_strength_whose_hue_range_exceeds_half_is_rejected(strength):
    """torchvision's ColorJitter rejects hue > 0.5; strength s gives hue 0.2 s."""
    with pytest.raises(ValueError, match=r"strength must be <= 2.5"):
        simclr_ext.ColorDistortion(strength=strength)
    with pytest.raises(ValueError, match=r"strength must be <= 2.5"):
        simclr_ext.sample_color_params(4, "cpu", strength=strength)


def test_single_image_is_accepted_and_returned_unbatched(device):
    img = torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(3)
    m = simclr_ext.ColorDistortion(strength=1.0, p=1.0, p_gray=0.5, generator=gen)
    params = simclr_ext.ColorDistortion(strength=1.0, p=1.0, p_gray=0.5,
                                        generator=torch.Generator(device=device).manual_seed(3)
                                        ).sample_params(1, device)
    out = m(img)
    assert out.shape == (3, 9, 7)
    torch.testing.assert_close(out, simclr_ext.color_distort(img[None], *params)[0])
    torch.testing.assert_close(simclr_ext.color_distort(img, *params),
                               simclr_ext.color_distort(img[None], *params)[0])
    with pytest.raises(ValueError, match="one image"):
        m(img[0])
