"""The augmentation study of the SimCLR paper (its Figure 5): seven transformations and the
asymmetric view protocol, for python/ablate.py --study augment (docs/studies.md).

Protocol: every image is first randomly cropped and resized (both views, independently), then the
targeted transformation(s) are applied to the second view only; the first view stays as cropped.
A pair (t1, t2) applies t1, then t2. The transformations work on float images in [0, 1],
[N, 3, S, S], each image with its own random parameters drawn from one torch.Generator on the
images' device (so a trainer that reseeds it every step gets reproducible views):

- crop:   a further random resized crop (area scale in `crop_scale`, aspect 3/4..4/3) back to S
- cutout: one square of side S/2, its center uniform over the image (clipped at the borders), set
          to 0
- color:  SimCLR's color distortion (jitter p 0.8 at `color_strength`, grayscale p 0.2)
- sobel:  the Sobel gradient magnitude of the luma, scaled by its per-image maximum (a flat
          image gives 0), on 3 channels
- noise:  additive Gaussian noise, sigma ~ U[0, 0.1] per image, clamped to [0, 1]
- blur:   Gaussian blur, sigma ~ U[0.1, 2], kernel 10% of S (always applied)
- rotate: rotation by 90, 180 or 270 degrees (uniform)

crop, color and blur use this package's kernels; cutout, sobel, noise and rotate are plain
PyTorch (used only by this study).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import ColorDistortion
from .data import IMAGENET_MEAN, IMAGENET_STD
from .pipeline import (BLUR_SIGMA, SimCLRAugment, default_blur_kernel, gaussian_blur,
                       resized_crop, sample_crop_boxes)

TRANSFORMS = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")
CUTOUT_FRACTION = 0.5  # side of the cutout square / image side
NOISE_MAX_SIGMA = 0.1  # on [0, 1] images
SOBEL_FLOOR = 1e-4  # gradient magnitudes below this are rounding noise (sobel)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.dtype.is_floating_point:
        raise ValueError(f"images must be a floating batch [N, 3, S, S] in [0, 1], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")


def random_crop(x: Tensor, generator=None, scale=(0.08, 1.0)) -> Tensor:
    """A random resized crop of every image, back to its own size (antialiased)."""
    _check_batch(x)
    n, _, h, w = x.shape
    boxes = sample_crop_boxes(h, w, n, x.device, scale=scale, generator=generator)
    return resized_crop(x, boxes, h)


def cutout(x: Tensor, generator=None, fraction: float = CUTOUT_FRACTION) -> Tensor:
    """Every image with one square of side round(fraction * S) set to 0, its center uniform over
    the image (the part outside the image is dropped, as in DeVries & Taylor's cutout)."""
    _check_batch(x)
    n, _, h, w = x.shape
    side = max(1, int(round(fraction * min(h, w))))
    c = torch.rand(n, 2, generator=generator, device=x.device)
    cy = (c[:, 0] * h).floor().view(n, 1, 1)
    cx = (c[:, 1] * w).floor().view(n, 1, 1)
    top, left = cy - side // 2, cx - side // 2
    yy = torch.arange(h, device=x.device).view(1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (yy >= top) & (yy < top + side) & (xx >= left) & (xx < left + side)
    return x.masked_fill(hole.unsqueeze(1), 0.0)


def sobel(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luma (replicate padding), divided by its per-image maximum
    so every image spans [0, 1] (a flat image gives 0), repeated on the 3 channels."""
    _check_batch(x)
    luma = (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device,
                      dtype=x.dtype)
    k = torch.stack((kx, kx.t())).unsqueeze(1)  # [2, 1, 3, 3]: d/dx, d/dy
    g = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), k)
    mag = g.pow(2).sum(1, keepdim=True).sqrt()
    # why: the convolution's rounding leaves ~1e-7 on flat regions, which the per-image scaling
    # would blow up to 1 on a flat image; a gradient under SOBEL_FLOOR (far below one 8-bit
    # level, 1/255) is no edge
    mag = torch.where(mag < SOBEL_FLOOR, torch.zeros_like(mag), mag)
    peak = mag.amax(dim=(2, 3), keepdim=True)
    return (mag / peak.clamp_min(SOBEL_FLOOR)).expand(-1, 3, -1, -1).contiguous()


def gaussian_noise(x: Tensor, generator=None, max_sigma: float = NOISE_MAX_SIGMA) -> Tensor:
    """x + sigma * N(0, 1), sigma ~ U[0, max_sigma] per image, clamped to [0, 1]."""
    _check_batch(x)
    sigma = max_sigma * torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp_(0.0, 1.0)


def rotate(x: Tensor, generator=None) -> Tensor:
    """Every image rotated by k x 90 degrees, k uniform in {1, 2, 3} (square images)."""
    _check_batch(x)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"rotate needs square images, got {x.shape[2]} x {x.shape[3]}")
    k = torch.randint(1, 4, (x.shape[0],), generator=generator, device=x.device)
    out = x.clone()
    for turns in (1, 2, 3):
        sel = (k == turns).nonzero().flatten()
        if sel.numel():
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out


def blur(x: Tensor, generator=None) -> Tensor:
    """Gaussian blur of every image, sigma ~ U[0.1, 2], kernel 10% of the side (SimCLR's)."""
    _check_batch(x)
    lo, hi = BLUR_SIGMA
    sigma = lo + (hi - lo) * torch.rand(x.shape[0], generator=generator, device=x.device)
    return gaussian_blur(x.contiguous(), sigma, default_blur_kernel(x.shape[-1]))


class StudyTransform:
    """One named transformation of TRANSFORMS with its settings: t(x) -> x, x [N, 3, S, S]."""

    def __init__(self, name: str, generator=None, crop_scale=(0.08, 1.0), color_strength=1.0):
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transformation {name!r}; expected one of {TRANSFORMS}")
        self.name, self.generator = name, generator
        self.crop_scale = crop_scale
        if name == "color":
            self.color = ColorDistortion(color_strength, 0.8, 0.2, generator=generator)

    def __call__(self, x: Tensor) -> Tensor:
        g = self.generator
        if self.name == "crop":
            return random_crop(x, g, self.crop_scale)
        if self.name == "cutout":
            return cutout(x, g)
        if self.name == "color":
            return self.color(x)
        if self.name == "sobel":
            return sobel(x)
        if self.name == "noise":
            return gaussian_noise(x, g)
        if self.name == "blur":
            return blur(x, g)
        return rotate(x, g)


class AsymmetricViews(nn.Module):
    """The paper's asymmetric protocol of its augmentation study, as a drop-in for the trainer's
    SimCLRAugment: forward(uint8 images [B, 3, H, W] or a list) -> [2B, 3, S, S] float32,
    normalized (mean / std), first views then second views. Both views are independent random
    resized crops (scale `crop_scale`, no flip); `transforms` (names of TRANSFORMS, applied in
    order) then change the second views only. An empty `transforms` gives crop-only pairs."""

    def __init__(self, image_size: int, transforms: Sequence[str], *, crop_scale=(0.08, 1.0),
                 color_strength: float = 1.0, generator: Optional[torch.Generator] = None,
                 channels_last: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.crop = SimCLRAugment(image_size, scale=crop_scale, flip_p=0.0, color_p=0.0,
                                  gray_p=0.0, blur_p=0.0, mean=None, std=None, generator=generator)
        self.names = tuple(transforms)
        self.steps = [StudyTransform(n, generator, crop_scale, color_strength) for n in self.names]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.channels_last = channels_last

    def forward(self, images) -> Tensor:
        views = self.crop(images)  # [2B, 3, S, S] in [0, 1]
        b = views.shape[0] // 2
        second = views[b:]
        for step in self.steps:
            second = step(second)
        views = torch.cat((views[:b], second))
        views = (views - self.mean.to(views.device)) / self.std.to(views.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return views.contiguous(memory_format=fmt)

    def extra_repr(self) -> str:
        return f"second view: crop then {' then '.join(self.names) or 'nothing'}"
