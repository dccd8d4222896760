"""simclr_ext.gaussian_blur / gaussian_blur_ against torchvision's gaussian_blur(img, [k, k],
[s, s]) image by image (simclr_ext.reference): per-image sigma with 0 meaning no blur, kernel
sizes up to the reflect-padding limit, dtypes, layouts, in place, commuting with normalization,
the custom ops' schemas and the errors."""
import pytest
import torch

import simclr_ext
from simclr_ext import pipeline
from simclr_ext import reference as ref

ATOL = 1e-5


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(99173)


def random_sigma(n, gen, p_zero=0.3):
    sigma = 0.1 + 2.9 * torch.rand(n, generator=gen)
    return torch.where(torch.rand(n, generator=gen) < p_zero, 0.0, sigma)


@pytest.mark.sanitize
@pytest.mark.parametrize("k", [1, 3, 9, 23])
def test_matches_torchvision_per_image(device, k, gen):
    images = torch.rand(10, 3, 29, 37, generator=gen)
    sigma = random_sigma(10, gen)
    sigma[0], sigma[1] = 0.0, 2.0  # at least one plain and one blurred image
    out = simclr_ext.gaussian_blur(images.to(device), sigma.to(device), k)
    expected = ref.gaussian_blur(images, sigma, k)
    assert out.dtype == images.dtype and out.shape == images.shape
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)
    # images with sigma 0 come back bit for bit
    keep = sigma == 0
    assert torch.equal(out.cpu()[keep], images[keep])


def test_largest_kernel_reflects_whole_image(device, gen):
    # k // 2 = H - 1 and W - 1: the reflected border reaches the opposite edge.
    images = torch.rand(3, 2, 5, 7, generator=gen)
    sigma = torch.tensor([0.7, 3.0, 8.0])
    out = simclr_ext.gaussian_blur(images.to(device), sigma.to(device), 9)
    expected = ref.gaussian_blur(images, sigma, 9)
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="too large for 5 x 7 images"):  # 11 // 2 = H
        simclr_ext.gaussian_blur(images.to(device), sigma.to(device), 11)


def test_float64_matches_float64_torchvision(device, gen):
    images = torch.rand(4, 3, 16, 19, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.0, 1.1, 2.5])
    out = simclr_ext.gaussian_blur(images.to(device), sigma.to(device), 7)
    torch.testing.assert_close(out.cpu(), ref.gaussian_blur(images, sigma, 7), atol=1e-12,
                               rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_round_once(device, dtype, gen):
    # Math in float32, one rounding to the half dtype at the store.
    images = torch.rand(4, 3, 16, 19, generator=gen).to(dtype)
    sigma = torch.tensor([0.3, 0.0, 1.1, 2.5])
    out = simclr_ext.gaussian_blur(images.to(device), sigma.to(device), 7)
    assert out.dtype == dtype
    expected = ref.gaussian_blur(images.float(), sigma, 7).to(dtype)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.cpu().float(), expected.float(), atol=eps, rtol=0)


def test_layouts_kept(device, gen):
    base = torch.rand(5, 3, 21, 18, generator=gen)
    sigma = random_sigma(5, gen)
    expected = ref.gaussian_blur(base, sigma, 5)
    cl = base.contiguous(memory_format=torch.channels_last).to(device)
    out = simclr_ext.gaussian_blur(cl, sigma.to(device), 5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)
    strided = torch.rand(5, 3, 42, 18, generator=gen)[:, :, ::2].copy_(base).to(device)
    out = simclr_ext.gaussian_blur(strided, sigma.to(device), 5)
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL, rtol=0)


def test_in_place_equals_out_of_place_and_leaves_unblurred_images(device, gen):
    for layout in (torch.contiguous_format, torch.channels_last):
        images = torch.rand(6, 3, 24, 20, generator=gen).to(device).contiguous(
            memory_format=layout)
        sigma = random_sigma(6, gen, p_zero=0.5)
        sigma[0] = 0.0
        sigma[1] = 1.5
        expected = simclr_ext.gaussian_blur(images, sigma.to(device), 9)
        before = images.clone()
        ret = simclr_ext.gaussian_blur_(images, sigma.to(device), 9)
        assert ret is images
        torch.testing.assert_close(images, expected, atol=0, rtol=0)
        keep = (sigma == 0).to(device)
        assert torch.equal(images[keep], before[keep])
        assert not torch.equal(images[1], before[1])


def test_commutes_with_normalization(device, gen):
    # SimCLRAugment normalizes in the color kernel and blurs afterwards: the weights sum to 1 and
    # the padding reflects, so blur((x - m) / s) == (blur(x) - m) / s.
    images = torch.rand(4, 3, 20, 20, generator=gen).to(device)
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0], device=device)
    m = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    a = simclr_ext.gaussian_blur((images - m) / s, sigma, 7)
    b = (simclr_ext.gaussian_blur(images, sigma, 7) - m) / s
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_scalar_sigma_and_empty_batch(device, gen):
    images = torch.rand(3, 3, 12, 12, generator=gen).to(device)
    out = simclr_ext.gaussian_blur(images, 1.2, 5)
    torch.testing.assert_close(out.cpu(), ref.gaussian_blur(images.cpu(), torch.full((3,), 1.2), 5),
                               atol=ATOL, rtol=0)
    empty = torch.rand(0, 3, 12, 12).to(device)
    assert simclr_ext.gaussian_blur(empty, torch.zeros(0, device=device), 5).shape == empty.shape


def test_opcheck(device, gen):
    images = torch.rand(3, 3, 9, 11, generator=gen).to(device)
    sigma = torch.tensor([0.0, 0.8, 1.9], device=device)
    torch.library.opcheck(pipeline._gaussian_blur_op, (images, sigma, 5))
    torch.library.opcheck(pipeline._gaussian_blur_inplace_op, (images.clone(), sigma, 5))


def test_compile_fullgraph(gen):
    images = torch.rand(3, 3, 16, 16, generator=gen)
    sigma = torch.tensor([0.0, 0.8, 1.9])
    compiled = torch.compile(lambda x, s: simclr_ext.gaussian_blur(x, s, 5) + 1, fullgraph=True)
    torch.testing.assert_close(compiled(images, sigma), simclr_ext.gaussian_blur(images, sigma, 5) + 1)


def test_errors():
    images = torch.rand(2, 3, 8, 10)
    sigma = torch.tensor([0.5, 1.0])
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        simclr_ext.gaussian_blur(images, sigma, 4)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        simclr_ext.gaussian_blur(images, sigma, -3)
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        simclr_ext.gaussian_blur(images, sigma, 5.0)
    with pytest.raises(ValueError, match="too large for 8 x 10 images"):
        simclr_ext.gaussian_blur(images, sigma, 17)
    with pytest.raises(TypeError, match="images must be floating"):
        simclr_ext.gaussian_blur(images.to(torch.uint8), sigma, 5)
    with pytest.raises(ValueError, match="images must be a 4-d batch"):
        simclr_ext.gaussian_blur(images[0], sigma, 5)
    with pytest.raises(ValueError, match=r"sigma\[1\] must be finite and >= 0"):
        simclr_ext.gaussian_blur(images, torch.tensor([0.5, -1.0]), 5)
    with pytest.raises(ValueError, match=r"sigma\[0\] must be finite and >= 0"):
        simclr_ext.gaussian_blur(images, torch.tensor([float("nan"), 1.0]), 5)
    with pytest.raises(ValueError, match=r"sigma must have shape \(2,\)"):
        simclr_ext.gaussian_blur(images, torch.tensor([0.5]), 5)
    with pytest.raises(TypeError, match="sigma must be floating"):
        simclr_ext.gaussian_blur(images, torch.tensor([1, 2]), 5)
    with pytest.raises(TypeError, match="sigma must be a tensor"):
        simclr_ext.gaussian_blur(images, "1.0", 5)
    # the C++ entry guards direct calls too
    with pytest.raises(RuntimeError, match=r"sigma\[1\] must be finite and >= 0"):
        pipeline._C.gaussian_blur(images, torch.tensor([0.5, -1.0]), 5, torch.empty_like(images))
    with pytest.raises(RuntimeError, match="out must be the images tensor itself"):
        pipeline._C.gaussian_blur(images, sigma, 5, images[:, :, :, :].view_as(images))
