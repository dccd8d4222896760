"""The augmentation study's transformations (cutout, sobel, noise, rotate, crop) and its
asymmetric pairing: each checked for the property that defines it, on fresh random images."""
import pytest
import torch

from simclr_ext.data import IMAGENET_MEAN, IMAGENET_STD
from simclr_ext.study_augment import (CUTOUT_FRACTION, LUMA, NOISE_MAX_SIGMA, TRANSFORMS,
                                      AsymmetricViews, StudyTransform, cutout, gaussian_noise,
                                      random_crop, rotate, sobel)


def _images(n=16, size=16, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    # in [0.05, 1]: no pixel is 0 before cutout
    return 0.05 + 0.95 * torch.rand(n, 3, size, size, generator=g)


def test_cutout_zeroes_one_clipped_square_per_image_and_nothing_else():
    x = _images(32, 16)
    side = round(CUTOUT_FRACTION * 16)
    out = cutout(x, torch.Generator().manual_seed(3))
    hole = out == 0
    assert torch.equal(hole[:, 0], hole[:, 1]) and torch.equal(hole[:, 0], hole[:, 2])
    assert torch.equal(out[~hole], x[~hole])
    for m in hole[:, 0]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        # the zeroed set is a full rectangle: a square of side `side` clipped by the borders,
        # whose center lies in the image, so at least half of each side remains
        assert m.sum() == h * w
        assert side - side // 2 <= h <= side and side - side // 2 <= w <= side
        assert h == side or rows.min() == 0 or rows.max() == 15
        assert w == side or cols.min() == 0 or cols.max() == 15


def test_sobel_matches_the_gradient_magnitude_in_float64():
    x = _images(4, 12)
    out = sobel(x)
    luma = (x.double() * torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
    p = torch.nn.functional.pad(luma.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    n, s = luma.shape[0], luma.shape[1]
    ref = torch.zeros(n, s, s, dtype=torch.float64)
    for i in range(s):
        for j in range(s):
            w = p[:, i:i + 3, j:j + 3]  # the 3 x 3 neighbourhood of pixel (i, j)
            gx = (w[:, :, 2] - w[:, :, 0]) @ torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
            gy = (w[:, 2, :] - w[:, 0, :]) @ torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
            ref[:, i, j] = (gx ** 2 + gy ** 2).sqrt()
    ref = ref / ref.amax(dim=(1, 2), keepdim=True)
    assert out.shape == x.shape and torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    torch.testing.assert_close(out[:, 0].double(), ref, rtol=1e-5, atol=1e-6)


def test_sobel_of_a_flat_image_is_zero_and_invariant_to_brightness_and_contrast():
    flat = torch.full((2, 3, 10, 10), torch.rand(()).item())
    assert torch.equal(sobel(flat), torch.zeros_like(flat))
    x = _images(4, 10) * 0.5
    torch.testing.assert_close(sobel(0.3 + 1.7 * x), sobel(x), rtol=1e-4, atol=1e-5)


def test_noise_sigma_is_per_image_within_its_bound_and_reproducible():
    x = torch.full((64, 3, 16, 16), 0.5)  # far from the clamp at 0 and 1 for sigma <= 0.1
    seed = torch.seed() % 2**31
    out = gaussian_noise(x, torch.Generator().manual_seed(seed))
    assert torch.equal(out, gaussian_noise(x, torch.Generator().manual_seed(seed)))
    sd = (out - x).flatten(1).std(1)
    assert (sd < NOISE_MAX_SIGMA * 1.15).all()  # 768 samples per image: std within ~8%
    assert sd.max() - sd.min() > 0.3 * NOISE_MAX_SIGMA  # sigma differs from image to image
    assert 0 <= out.min() and out.max() <= 1


def test_rotate_turns_every_image_by_90_180_or_270_degrees():
    x = _images(48, 8)
    out = rotate(x, torch.Generator().manual_seed(torch.seed() % 2**31))
    turns = []
    for a, b in zip(x, out):
        k = [k for k in range(4) if torch.equal(torch.rot90(a, k, dims=(1, 2)), b)]
        assert len(k) == 1 and k[0] in (1, 2, 3)
        turns.append(k[0])
    assert set(turns) == {1, 2, 3}


def test_crop_of_the_whole_image_is_the_identity_and_otherwise_keeps_the_size():
    x = _images(8, 16)
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(random_crop(x, g, scale=(1.0, 1.0)), x)
    out = random_crop(x, g, scale=(0.1, 0.3))
    assert out.shape == x.shape and not torch.allclose(out, x)


def _unnormalize(v):
    return v * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


@pytest.mark.parametrize("pair", [("rotate",), ("cutout", "noise"), ("sobel", "crop"),
                                  ("color", "blur")])
def test_asymmetric_views_transform_the_second_branch_only_in_order(pair):
    imgs = (torch.rand(6, 3, 20, 20) * 255).to(torch.uint8)
    seed = torch.seed() % 2**31
    g = torch.Generator()
    crop_only = AsymmetricViews(16, (), crop_scale=(0.3, 1.0), generator=g)
    study = AsymmetricViews(16, pair, crop_scale=(0.3, 1.0), generator=g)
    g.manual_seed(seed)
    base = _unnormalize(crop_only(imgs))
    # the transformations draw after the crops, in order, from the same generator
    g.manual_seed(seed)
    crop_only(imgs)
    second = base[6:]
    for name in pair:
        second = StudyTransform(name, g, crop_scale=(0.3, 1.0))(second)
    g.manual_seed(seed)
    out = _unnormalize(study(imgs))
    assert out.shape == (12, 3, 16, 16)
    torch.testing.assert_close(out[:6], base[:6], rtol=0, atol=1e-5)  # first branch: crop only
    torch.testing.assert_close(out[6:], second, rtol=0, atol=1e-5)
    assert not torch.allclose(out[6:], base[6:], atol=1e-3)  # the second branch did change


def test_asymmetric_crops_are_independent_per_branch_and_rotation_applies_to_the_second():
    imgs = (torch.rand(8, 3, 24, 24) * 255).to(torch.uint8)
    g = torch.Generator()
    seed = torch.seed() % 2**31
    g.manual_seed(seed)
    base = AsymmetricViews(12, (), crop_scale=(0.2, 0.5), generator=g)(imgs)
    assert not torch.allclose(base[:8], base[8:])  # two different crops of each image
    g.manual_seed(seed)
    rot = AsymmetricViews(12, ("rotate",), crop_scale=(0.2, 0.5), generator=g)(imgs)
    torch.testing.assert_close(rot[:8], base[:8])
    for a, b in zip(base[8:], rot[8:]):
        assert any(torch.allclose(torch.rot90(a, k, dims=(1, 2)), b) for k in (1, 2, 3))


def test_unknown_transformation_names_the_choices():
    with pytest.raises(ValueError, match="unknown transformation 'jpeg'.*crop"):
        AsymmetricViews(16, ("jpeg",))
    assert len(TRANSFORMS) == 7
