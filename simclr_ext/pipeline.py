"""SimCLR's whole augmentation on batches (docs/architecture.md section 10): antialiased random
resized crop + flip, color distortion + grayscale, Gaussian blur and normalization, every
parameter drawn per view, on the images' device, in a fixed small number of passes.

Ops (torch.library custom ops with fake kernels, CPU and CUDA; no autograd: augmentation has
no parameters to train and its inputs are data, so none of these ops is differentiable):

    resized_crop(images, boxes, size, flip=None)     crops of a batch or of a list of sizes
    gaussian_blur(images, sigma, kernel_size)        per-image sigma, 0 = no blur
    gaussian_blur_(images, sigma, kernel_size)       the same in place (sigma-0 images untouched)
    SimCLRAugment(image_size, ...)                    the module: sample / apply / forward

Parameters of the 2B views of B images (what `SimCLRAugment.sample` draws and `apply` takes;
view v is made from image v % B, so views [0, B) are the first and [B, 2B) the second views):

    boxes  [2B, 4] int64: (top, left, height, width) of the crop in source pixels
    flip   [2B] bool: mirror the view left-right after the resize
    color  simclr_ext.ColorParams of 2B rows (factors, order, apply_jitter, apply_gray)
    sigma  [2B] float32: Gaussian blur sigma, 0 for a view that is not blurred
    ramp   [2B, 2] float32 (amplitude, angle in radians) of the illumination ramp, or None (no
           ramp): see illumination_ramp. Drawn only when the module's ramp amplitude is > 0.
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _ops
from ._extension import _C
from .augment import ColorParams, _channel_floats, sample_color_params

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_SIGMA = (0.1, 2.0)  # SimCLR's blur sigma range
_CROP_ATTEMPTS = 10      # torchvision's RandomResizedCrop.get_params tries 10 boxes


# --------------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------------
def _crop_out(n, channels, size, device, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, channels, size, size), dtype=torch.float32, device=device,
                       memory_format=fmt)


@torch.library.custom_op("simclr_ext::resized_crop", mutates_args=())
def _resized_crop_op(images: Tensor, boxes: Tensor, flip: Optional[Tensor], size: int,
                     out_scale: float, channels_last: bool) -> Tensor:
    """[B, C, H, W] -> [N, C, size, size] float32 (crop n of image n % B), times out_scale."""
    return _C.resized_crop(images, boxes, flip, size, out_scale, channels_last)


@_resized_crop_op.register_fake
def _(images, boxes, flip, size, out_scale, channels_last):
    torch._check(images.dim() == 4, lambda: f"images must be 4-d, got {tuple(images.shape)}")
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must be [N, 4]")
    return _crop_out(boxes.shape[0], images.shape[1], size, images.device, channels_last)


@torch.library.custom_op("simclr_ext::resized_crop_list", mutates_args=())
def _resized_crop_list_op(images: List[Tensor], boxes: Tensor, flip: Optional[Tensor],
                          size: int, out_scale: float, channels_last: bool) -> Tensor:
    """B tensors [C, H_i, W_i] -> [N, C, size, size] float32, read in place (no packing copy)."""
    return _C.resized_crop_list(images, boxes, flip, size, out_scale, channels_last)


@_resized_crop_list_op.register_fake
def _(images, boxes, flip, size, out_scale, channels_last):
    torch._check(len(images) > 0, lambda: "images must be a non-empty list")
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must be [N, 4]")
    return _crop_out(boxes.shape[0], images[0].shape[0], size, images[0].device, channels_last)


@torch.library.custom_op("simclr_ext::gaussian_blur", mutates_args=())
def _gaussian_blur_op(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-image blur into a new tensor with the images' dtype and layout."""
    return _C.gaussian_blur(images, sigma, kernel_size, torch.empty_like(images))


@_gaussian_blur_op.register_fake
def _(images, sigma, kernel_size):
    torch._check(images.dim() == 4, lambda: f"images must be 4-d, got {tuple(images.shape)}")
    return torch.empty_like(images)


@torch.library.custom_op("simclr_ext::gaussian_blur_", mutates_args=("images",))
def _gaussian_blur_inplace_op(images: Tensor, sigma: Tensor, kernel_size: int) -> None:
    """Per-image blur in place: images whose sigma is 0 are not read or written."""
    _C.gaussian_blur(images, sigma, kernel_size, images)


@_gaussian_blur_inplace_op.register_fake
def _(images, sigma, kernel_size):
    torch._check(images.dim() == 4, lambda: f"images must be 4-d, got {tuple(images.shape)}")
    return None


def _views_impl(images, boxes, flip, factors, order, apply_jitter, apply_gray, sigma, size,
                kernel_size, out_scale, mean, std, out_dtype, channels_last):
    """The views of SimCLRAugment.apply. CPU: one fused pass per view (csrc/augment: the view
    stays in the cache from its crop to its store). CUDA: three kernels, the crop (float32
    views), the color kernel (normalized, in out_dtype and layout), the blur in place on the
    blurred views. kernel_size 0: no blur."""
    is_list = not isinstance(images, Tensor)
    device = images[0].device if is_list else images.device
    if device.type == "cpu":
        out = _views_out(images[0] if is_list else images, boxes, size, out_dtype, channels_last)
        fn = _C.simclr_views_list if is_list else _C.simclr_views
        return fn(images, boxes, flip, factors, order, apply_jitter, apply_gray, sigma,
                  max(kernel_size, 1), out_scale, list(mean or []), list(std or []), out)
    crop = _C.resized_crop_list if is_list else _C.resized_crop
    x = crop(images, boxes, flip, size, out_scale, channels_last)
    # Normalization before the blur: (x - m) / s is affine per channel and the blur's weights
    # sum to 1 with reflect padding, so the two commute.
    y = _ops.color_distort(x, factors, order, apply_jitter, apply_gray, out_dtype, mean, std)
    if kernel_size > 0:
        _C.gaussian_blur(y, sigma, kernel_size, y)
    return y


def _views_out(images0, boxes, size, out_dtype, channels_last):
    """An empty result [V, 3, size, size] (the CPU kernel writes it; the fake kernels return it)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((boxes.shape[0], 3, size, size), dtype=out_dtype, device=images0.device,
                       memory_format=fmt)


@torch.library.custom_op("simclr_ext::simclr_views", mutates_args=())
def _views_op(images: Tensor, boxes: Tensor, flip: Tensor, factors: Tensor, order: Tensor,
              apply_jitter: Tensor, apply_gray: Tensor, sigma: Tensor, size: int,
              kernel_size: int, out_scale: float, mean: Optional[List[float]],
              std: Optional[List[float]], out_dtype: torch.dtype, channels_last: bool) -> Tensor:
    """All views [V, 3, size, size] of a [B, 3, H, W] batch (view v from image v % B)."""
    return _views_impl(images, boxes, flip, factors, order, apply_jitter, apply_gray, sigma, size,
                       kernel_size, out_scale, mean, std, out_dtype, channels_last)


@_views_op.register_fake
def _(images, boxes, flip, factors, order, apply_jitter, apply_gray, sigma, size, kernel_size,
      out_scale, mean, std, out_dtype, channels_last):
    torch._check(images.dim() == 4 and images.shape[1] == 3, lambda: "images must be [B, 3, H, W]")
    return _views_out(images, boxes, size, out_dtype, channels_last)


@torch.library.custom_op("simclr_ext::simclr_views_list", mutates_args=())
def _views_list_op(images: List[Tensor], boxes: Tensor, flip: Tensor, factors: Tensor,
                   order: Tensor, apply_jitter: Tensor, apply_gray: Tensor, sigma: Tensor,
                   size: int, kernel_size: int, out_scale: float, mean: Optional[List[float]],
                   std: Optional[List[float]], out_dtype: torch.dtype,
                   channels_last: bool) -> Tensor:
    """All views of a list of [3, H_i, W_i] images."""
    return _views_impl(images, boxes, flip, factors, order, apply_jitter, apply_gray, sigma, size,
                       kernel_size, out_scale, mean, std, out_dtype, channels_last)


@_views_list_op.register_fake
def _(images, boxes, flip, factors, order, apply_jitter, apply_gray, sigma, size, kernel_size,
      out_scale, mean, std, out_dtype, channels_last):
    torch._check(len(images) > 0, lambda: "images must be a non-empty list")
    return _views_out(images[0], boxes, size, out_dtype, channels_last)


# --------------------------------------------------------------------------------------------
# Validation helpers (docs/architecture.md section 5: TypeError for types, ValueError for values)
# --------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _image_dtype_ok(dtype) -> bool:
    return dtype == torch.uint8 or dtype.is_floating_point


def _check_images(images) -> Tuple[int, int, torch.dtype, torch.device]:
    """A [B, C, H, W] tensor or a non-empty list of [C, H_i, W_i] tensors -> (B, C, dtype,
    device). A list is checked in C++ image by image (one loop there, none here)."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError("images must be a 4-d batch [B, C, H, W] (or a list of [C, H, W] "
                             f"tensors), got shape {tuple(images.shape)}")
        if not _image_dtype_ok(images.dtype):
            raise TypeError(f"images must be uint8 or floating, got {images.dtype}")
        if images.shape[1] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
            raise ValueError(f"images must have C, H, W >= 1, got shape {tuple(images.shape)}")
        return images.shape[0], images.shape[1], images.dtype, images.device
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images must be a non-empty list of [C, H, W] tensors")
        first = images[0]
        if not isinstance(first, Tensor):
            raise TypeError(f"images[0] must be a tensor, got {type(first).__name__}")
        if first.dim() != 3:
            raise ValueError(f"images[0] must be 3-d [C, H, W], got shape {tuple(first.shape)}")
        if not _image_dtype_ok(first.dtype):
            raise TypeError(f"images must be uint8 or floating, got {first.dtype}")
        return len(images), first.shape[0], first.dtype, first.device
    raise TypeError("images must be a [B, C, H, W] tensor or a list of [C, H, W] tensors, got "
                    f"{type(images).__name__}")


def _check_size(size, name="size") -> int:
    if not _is_int(size):
        raise TypeError(f"{name} must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"{name} must be >= 1, got {size}")
    return size


def _check_probability(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _check_range(value, name, low_ok):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a pair of numbers (min, max), got {value!r}") from exc
    if not (low_ok(lo) and lo <= hi and math.isfinite(hi)):
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max, got {value!r}")
    return lo, hi


def _image_sizes_cpu(images) -> Tensor:
    """[B, 2] int64 (H, W) of a batch or list, on the CPU."""
    if isinstance(images, Tensor):
        return torch.tensor([[images.shape[2], images.shape[3]]]).expand(images.shape[0], 2)
    return _C.image_sizes(list(images), False)


def _check_box_values(images, boxes: Tensor) -> None:
    """CPU inputs only (reading the boxes is free there): every box lies inside its image."""
    b = boxes.shape[0]
    sizes = _image_sizes_cpu(images)
    batch = sizes.shape[0]
    hw = sizes[torch.arange(b) % batch] if b else sizes[:0]
    top, left, height, width = boxes.unbind(1)
    bad = (height < 1) | (width < 1) | (top < 0) | (left < 0) | (top + height > hw[:, 0]) | (
        left + width > hw[:, 1])
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        t, l_, h, w = boxes[i].tolist()
        if h < 1 or w < 1:
            raise ValueError(f"boxes[{i}] = (top {t}, left {l_}, height {h}, width {w}) must have "
                             "height and width >= 1")
        raise ValueError(f"boxes[{i}] = (top {t}, left {l_}, height {h}, width {w}) must lie "
                         f"inside image {i % batch} of size {int(hw[i, 0])} x {int(hw[i, 1])}")


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------
def resized_crop(images: Union[Tensor, Sequence[Tensor]], boxes: Tensor, size: int,
                 flip: Optional[Tensor] = None) -> Tensor:
    """Antialiased resized crops of a batch, each image with its own box, optionally mirrored.

    images: [B, C, H, W] uint8 or floating (any strides), or a list of B tensors [C, H_i, W_i]
    of one dtype and device (ImageNet-style sizes; read where they are, no packing copy).
    boxes: [B, 4] integer (top, left, height, width) in source pixels, as torchvision's
    RandomResizedCrop.get_params returns; k * B rows make k crops per image (row n crops image
    n % B). flip: None or [N] bool, horizontal flip after the resize. Returns float32
    [N, C, size, size] in the input's value range, equal image by image to
    torchvision.transforms.v2.functional.resized_crop(img.float(), top, left, height, width,
    [size, size], antialias=True) (then hflip). On the CPU a box outside its image or with a
    side < 1 raises ValueError; on CUDA the boxes are not read on the host (that would
    synchronize) and such a box is clamped into its image.
    """
    batch, _, _, device = _check_images(images)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be an int64 tensor [B, 4], got {type(boxes).__name__}")
    if boxes.dtype.is_floating_point or boxes.dtype.is_complex or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be an integer tensor (int64), got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0 or boxes.shape[0] % batch:
        raise ValueError(f"boxes must have shape [B, 4] = [{batch}, 4] (or [k * B, 4]) as (top, "
                         f"left, height, width), got {tuple(boxes.shape)}")
    if boxes.device != device:
        raise ValueError(f"boxes must be on the images' device {device}, got {boxes.device}")
    size = _check_size(size)
    if flip is not None:
        if not isinstance(flip, Tensor) or flip.dtype != torch.bool:
            raise TypeError(f"flip must be a bool tensor or None, got "
                            f"{flip.dtype if isinstance(flip, Tensor) else type(flip).__name__}")
        if tuple(flip.shape) != (boxes.shape[0],):
            raise ValueError(f"flip must have shape ({boxes.shape[0]},) (one per box), got "
                             f"{tuple(flip.shape)}")
        if flip.device != device:
            raise ValueError(f"flip must be on the images' device {device}, got {flip.device}")
    boxes = boxes.to(torch.int64)
    if device.type == "cpu" and not torch.compiler.is_compiling():
        _check_box_values(images, boxes)
    if isinstance(images, Tensor):
        return _resized_crop_op(images, boxes, flip, size, 1.0, False)
    return _resized_crop_list_op(list(images), boxes, flip, size, 1.0, False)


def _check_blur_args(images, sigma, kernel_size):
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be a 4-d batch [N, C, H, W], got shape "
                         f"{tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be floating (float32, float64, bfloat16, float16), got "
                        f"{images.dtype}; convert uint8 images with "
                        "torchvision.transforms.v2.functional.to_dtype(x, torch.float32, "
                        "scale=True)")
    n, _, h, w = images.shape
    if not _is_int(kernel_size):
        raise TypeError(f"kernel_size must be an int, got {type(kernel_size).__name__}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    if images.numel() and not (kernel_size // 2 < h and kernel_size // 2 < w):
        raise ValueError(f"kernel_size {kernel_size} is too large for {h} x {w} images: reflect "
                         "padding needs kernel_size // 2 < height and < width")
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        sigma = torch.full((n,), float(sigma), device=images.device)
    if not isinstance(sigma, Tensor):
        raise TypeError(f"sigma must be a tensor [N] or a number, got {type(sigma).__name__}")
    if not sigma.dtype.is_floating_point:
        raise TypeError(f"sigma must be floating, got {sigma.dtype}")
    if tuple(sigma.shape) != (n,):
        raise ValueError(f"sigma must have shape ({n},) (one per image), got {tuple(sigma.shape)}")
    if sigma.device != images.device:
        raise ValueError(f"sigma must be on the images' device {images.device}, got "
                         f"{sigma.device}")
    sigma = sigma.to(torch.float32)
    if sigma.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ~(torch.isfinite(sigma) & (sigma >= 0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"sigma[{i}] must be finite and >= 0 (0: no blur), got "
                             f"{float(sigma[i])}")
    return sigma


def gaussian_blur(images: Tensor, sigma: Union[Tensor, float], kernel_size: int) -> Tensor:
    """Blur each image with its own sigma: images [N, C, H, W] floating (any strides), sigma [N]
    (or one number for all; an image with sigma 0 is returned unchanged), kernel_size odd with
    kernel_size // 2 < H, W. Equals torchvision.transforms.v2.functional.gaussian_blur(img,
    [k, k], [s, s]) image by image (reflect padding); the result has the images' dtype and
    layout. Math in float32 (float64 for float64 images). On CUDA sigma is not read on the host;
    a negative or NaN sigma there means no blur."""
    sigma = _check_blur_args(images, sigma, kernel_size)
    return _gaussian_blur_op(images, sigma, kernel_size)


def gaussian_blur_(images: Tensor, sigma: Union[Tensor, float], kernel_size: int) -> Tensor:
    """gaussian_blur in place: images whose sigma is 0 are neither read nor written. Returns
    images."""
    sigma = _check_blur_args(images, sigma, kernel_size)
    _gaussian_blur_inplace_op(images, sigma, kernel_size)
    return images


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
class SimCLRParams(NamedTuple):
    """Explicit per-view parameters of SimCLRAugment (shapes in the module docstring)."""

    boxes: Tensor
    flip: Tensor
    color: ColorParams
    sigma: Tensor
    ramp: Optional[Tensor] = None


def illumination_ramp(ramp: Tensor, size: int) -> Tensor:
    """The brightness ramps of views of size x size px: [V, 1, S, S] float32 with
    value a * (cos t * u + sin t * v) at pixel (row, col), where (a, t) = ramp[view] (amplitude
    in [0, 1] intensity units, angle in radians) and u = -1 + 2 col / (S - 1), v = -1 + 2 row /
    (S - 1) run from -1 to 1 across the view (docs/recipe.md, section 5)."""
    axis = torch.linspace(-1.0, 1.0, size, device=ramp.device, dtype=torch.float32)
    a = ramp[:, 0].float().view(-1, 1, 1, 1)
    t = ramp[:, 1].float().view(-1, 1, 1, 1)
    return a * (torch.cos(t) * axis.view(1, 1, 1, size) + torch.sin(t) * axis.view(1, 1, size, 1))


def add_illumination_ramp_(views: Tensor, ramp: Tensor,
                           std: Optional[Sequence[float]] = None) -> Tensor:
    """views += illumination_ramp(ramp) on all three channels, in place (any layout and floating
    dtype), divided by std[c] when the views are normalized ((x - mean) / std): the ramp is added
    in [0, 1] intensity units, after color distortion and blur, and is not clamped."""
    r = illumination_ramp(ramp, views.shape[-1])
    if std is not None:  # Python-scalar divisions: no host-to-device copy on CUDA
        r = torch.cat([r / float(sd) for sd in std], dim=1)
    return views.add_(r.to(views.dtype))


def sample_ramp(views: int, amplitude: float, device, generator=None) -> Tensor:
    """[views, 2] (a ~ U[0, amplitude], t ~ U[0, 2 pi)): one rand(views, 2) draw."""
    r = torch.rand(views, 2, generator=generator, device=device, dtype=torch.float32)
    return torch.stack((amplitude * r[:, 0], (2 * math.pi) * r[:, 1]), dim=1)


def sample_crop_boxes(heights, widths, views: int, device, scale=(0.08, 1.0),
                      ratio=(3 / 4, 4 / 3), generator: Optional[torch.Generator] = None) -> Tensor:
    """torchvision's RandomResizedCrop.get_params for `views` crops at once, with torch ops on
    `device` (no host synchronization): up to 10 attempts per crop, each an area fraction
    ~ U[scale] and a log aspect ratio ~ U[log ratio], w = round(sqrt(area * r)),
    h = round(sqrt(area / r)); the first attempt that fits is kept, at a uniform position; a crop
    whose 10 attempts all fail gets torchvision's fallback (the central crop of the clamped
    ratio). heights / widths: Python ints (one size for all) or int64 tensors [views] on
    `device`. Draws rand(views, 10, 2) then rand(views, 2) from generator. -> [views, 4] int64.
    """
    f64 = torch.float64
    u = torch.rand(views, _CROP_ATTEMPTS, 2, generator=generator, device=device, dtype=f64)
    pos = torch.rand(views, 2, generator=generator, device=device, dtype=f64)
    if isinstance(heights, Tensor):
        hh, ww = heights.to(f64)[:, None], widths.to(f64)[:, None]
    else:
        hh, ww = float(heights), float(widths)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    area = hh * ww * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w >= 1) & (w <= ww) & (h >= 1) & (h <= hh)
    # The first attempt that fits: attempt a scores 10 - a when it fits and 0 otherwise, so the
    # largest score is unique and argmax needs no tie rule.
    score = ok * torch.arange(_CROP_ATTEMPTS, 0, -1, device=device)
    first = score.argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback: the central crop of the ratio clamped to [ratio[0], ratio[1]].
    hh = hh.squeeze(1) if isinstance(hh, Tensor) else torch.full((views,), hh, dtype=f64,
                                                                    device=device)
    ww = ww.squeeze(1) if isinstance(ww, Tensor) else torch.full((views,), ww, dtype=f64,
                                                                    device=device)
    in_ratio = ww / hh
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fb_w = torch.where(wide, torch.round(hh * ratio[1]), ww)
    fb_h = torch.where(narrow, torch.round(ww / ratio[0]), hh)
    w = torch.where(found, w, fb_w)
    h = torch.where(found, h, fb_h)
    top = torch.where(found, torch.floor(pos[:, 0] * (hh - h + 1)), torch.floor((hh - h) / 2))
    left = torch.where(found, torch.floor(pos[:, 1] * (ww - w + 1)), torch.floor((ww - w) / 2))
    return torch.stack((top, left, h, w), dim=1).to(torch.int64)


def default_blur_kernel(image_size: int) -> int:
    """SimCLR's kernel: 10% of the side, odd, at least 3, and small enough for reflect padding
    (kernel // 2 < image_size)."""
    k = int(round(0.1 * image_size))
    k = max(3, k + (k + 1) % 2)
    return min(k, 2 * (image_size - 1) + 1)


def _check_ramp_param(ramp, views: int, device) -> None:
    if ramp is None:
        return
    if not isinstance(ramp, Tensor) or not ramp.dtype.is_floating_point:
        raise TypeError(f"params.ramp must be a floating tensor [{views}, 2] or None, got "
                        f"{getattr(ramp, 'dtype', type(ramp).__name__)}")
    if tuple(ramp.shape) != (views, 2):
        raise ValueError(f"params.ramp must have shape ({views}, 2) (amplitude, angle per view), "
                         f"got {tuple(ramp.shape)}")
    if ramp.device != device:
        raise ValueError(f"params.ramp must be on the images' device {device}, got {ramp.device}")


class SimCLRAugment(nn.Module):
    """SimCLR's augmentation of a batch into two views per image, every parameter per view.

    SimCLRAugment(image_size, *, scale=(0.08, 1.0), ratio=(3/4, 4/3), flip_p=0.5,
    color_strength=1.0, color_p=0.8, gray_p=0.2, blur_p=0.5, blur_kernel=None, ramp=0.0,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, out_dtype=torch.float32, channels_last=False,
    generator=None)

    forward(images) -> [2B, 3, S, S] (all first views, then all second views): images is a
    [B, 3, H, W] batch or a list of [3, H_i, W_i] tensors, uint8 (0..255) or floating in [0, 1].
    Per view: RandomResizedCrop(S, scale, ratio, antialias) and a horizontal flip (flip_p); with
    probability color_p the color jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s with s = color_strength) in a
    random order, then grayscale with probability gray_p; with probability blur_p a Gaussian
    blur, sigma ~ U[0.1, 2.0], kernel blur_kernel (default: 10% of S, odd); with ramp > 0 an
    illumination ramp (illumination_ramp: + a * (cos t * u + sin t * v) on every channel,
    a ~ U[0, ramp], t ~ U[0, 2 pi), not clamped; docs/recipe.md, section 5); then
    (x - mean) / std (mean=None and std=None: no normalization), in out_dtype, channels_last or
    not. Every parameter is drawn on the images' device from `generator` (a torch.Generator on
    that device; None: the device's default generator), with torch ops only, so no host
    synchronization happens on CUDA; the generator's state is what a checkpoint saves.
    sample(images) returns the parameters (SimCLRParams) and apply(images, params) applies
    them, so a view can be reproduced exactly.

    Passes over the pixels: on the CPU one per view (the view stays in a per-thread buffer from
    its crop to its store); on CUDA three kernels: the crop (writes float32 views), the color
    kernel (one extra read for the views whose contrast changes; writes the result in out_dtype
    and layout, normalized), the blur in place on the blurred views only.
    """

    def __init__(self, image_size: int, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_p: float = 0.5, color_strength: float = 1.0, color_p: float = 0.8,
                 gray_p: float = 0.2, blur_p: float = 0.5, blur_kernel: Optional[int] = None,
                 ramp: float = 0.0, mean: Optional[Sequence[float]] = IMAGENET_MEAN,
                 std: Optional[Sequence[float]] = IMAGENET_STD,
                 out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.image_size = _check_size(image_size, "image_size")
        self.scale = _check_range(scale, "scale", lambda v: v > 0)
        self.ratio = _check_range(ratio, "ratio", lambda v: v > 0)
        self.flip_p = _check_probability(flip_p, "flip_p")
        if isinstance(color_strength, bool) or not isinstance(color_strength, (int, float)):
            raise TypeError(f"color_strength must be a number, got {type(color_strength).__name__}")
        if not float(color_strength) >= 0.0:
            raise ValueError(f"color_strength must be >= 0, got {color_strength}")
        self.color_strength = float(color_strength)
        self.color_p = _check_probability(color_p, "color_p")
        self.gray_p = _check_probability(gray_p, "gray_p")
        self.blur_p = _check_probability(blur_p, "blur_p")
        if blur_kernel is None:
            blur_kernel = default_blur_kernel(self.image_size)
        if not _is_int(blur_kernel):
            raise TypeError(f"blur_kernel must be an int or None, got {type(blur_kernel).__name__}")
        if blur_kernel < 1 or blur_kernel % 2 == 0 or blur_kernel // 2 >= self.image_size:
            raise ValueError(f"blur_kernel must be odd, >= 1 and with blur_kernel // 2 < "
                             f"image_size = {self.image_size}, got {blur_kernel}")
        self.blur_kernel = blur_kernel
        if isinstance(ramp, bool) or not isinstance(ramp, (int, float)):
            raise TypeError(f"ramp must be a number, got {type(ramp).__name__}")
        if not (math.isfinite(ramp) and ramp >= 0.0):
            raise ValueError(f"ramp (the illumination ramp's largest amplitude) must be finite "
                             f"and >= 0, got {ramp}")
        self.ramp = float(ramp)
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together (or both None)")
        self.mean = self.std = None
        if mean is not None:
            self.mean, self.std = _channel_floats(mean, "mean"), _channel_floats(std, "std")
            if any(s == 0 for s in self.std):
                raise ValueError(f"std must be nonzero, got {self.std}")
        if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
            raise TypeError(f"out_dtype must be a floating torch.dtype, got {out_dtype!r}")
        self.out_dtype = out_dtype
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
        self.channels_last = channels_last
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def _sizes(self, images, batch, device):
        """(heights, widths): Python ints for a batch tensor, int64 tensors [2B] on `device` for
        a list (sizes gathered in C++, moved without a synchronization)."""
        if isinstance(images, Tensor):
            return images.shape[2], images.shape[3]
        sizes = _C.image_sizes(list(images), device.type == "cuda")
        sizes = sizes.to(device, non_blocking=True).repeat(2, 1)
        return sizes[:, 0], sizes[:, 1]

    def sample(self, images) -> SimCLRParams:
        """Draw the parameters of the 2B views of `images` (a batch or a list, as forward takes;
        only its sizes and device are used). Draw order from the generator: crop boxes
        (rand [2B, 10, 2] and [2B, 2]), flips [2B], color (as sample_color_params), blur [2B, 2],
        then, only when ramp > 0, the illumination ramps [2B, 2].
        This advances the generator exactly as forward does."""
        batch, channels, _, device = _check_images(images)
        if channels != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {channels}")
        g = self.generator
        if g is not None and g.device.type != device.type:
            raise ValueError(f"generator is on {g.device}, but the images are on {device}: "
                             f"create it with torch.Generator(device={device.type!r})")
        views = 2 * batch
        heights, widths = self._sizes(images, batch, device)
        boxes = sample_crop_boxes(heights, widths, views, device, self.scale, self.ratio, g)
        flip = torch.rand(views, generator=g, device=device) < self.flip_p
        color = sample_color_params(views, device, self.color_strength, self.color_p,
                                    self.gray_p, g)
        r = torch.rand(views, 2, generator=g, device=device)
        lo, hi = BLUR_SIGMA
        sigma = torch.where(r[:, 0] < self.blur_p, lo + (hi - lo) * r[:, 1], 0.0)
        ramp = sample_ramp(views, self.ramp, device, g) if self.ramp > 0 else None
        return SimCLRParams(boxes, flip, color, sigma, ramp)

    def apply(self, images, params: SimCLRParams) -> Tensor:
        """The views of `images` for explicit parameters (from `sample`, or made by hand with 2B
        rows each): crop + flip, color + gray + normalization, blur, illumination ramp."""
        batch, channels, dtype, device = _check_images(images)
        if channels != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {channels}")
        if not isinstance(params, SimCLRParams):
            raise TypeError(f"params must be SimCLRParams (from sample()), got "
                            f"{type(params).__name__}")
        views = params.boxes.shape[0]
        if views != 2 * batch:
            raise ValueError(f"params hold {views} views, expected 2 x {batch} images")
        if params.boxes.device != device:
            raise ValueError(f"params must be on the images' device {device}, got "
                             f"{params.boxes.device}")
        if device.type == "cpu" and not torch.compiler.is_compiling():
            _check_box_values(images, params.boxes)
        color = params.color
        if tuple(color.factors.shape) != (views, 4) or tuple(params.sigma.shape) != (views,):
            raise ValueError(f"params.color and params.sigma must have {views} rows")
        _check_ramp_param(params.ramp, views, device)
        # uint8 0..255 -> the color math's [0, 1] floats, folded into the crop's store.
        out_scale = 1.0 / 255.0 if dtype == torch.uint8 else 1.0
        args = (params.boxes, params.flip, color.factors.to(torch.float32),
                color.order.to(torch.int64), color.apply_jitter, color.apply_gray,
                params.sigma.to(torch.float32), self.image_size,
                self.blur_kernel if self.blur_p > 0 else 0, out_scale, self.mean, self.std,
                self.out_dtype, self.channels_last)
        if isinstance(images, Tensor):
            out = _views_op(images, *args)
        else:
            out = _views_list_op(list(images), *args)
        if params.ramp is not None:
            add_illumination_ramp_(out, params.ramp, self.std)
        return out

    def forward(self, images) -> Tensor:
        return self.apply(images, self.sample(images))

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
                f"flip_p={self.flip_p}, color_strength={self.color_strength}, "
                f"color_p={self.color_p}, gray_p={self.gray_p}, blur_p={self.blur_p}, "
                f"ramp={self.ramp}, "
                f"blur_kernel={self.blur_kernel}, out_dtype={self.out_dtype}, "
                f"channels_last={self.channels_last}")

