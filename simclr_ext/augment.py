"""SimCLR color distortion on batches, per image, in one fused kernel (docs/architecture.md,
section 4).

Parameters of a batch of B images (what `ColorDistortion.sample_params` draws and
`color_distort` takes):

    factors       [B, 4] float32: brightness, contrast, saturation (>= 0) and hue (in [-0.5, 0.5])
    order         [B, 4] int64: order[i, k] is the op applied at step k to image i, a permutation
                  of 0 = brightness, 1 = contrast, 2 = saturation, 3 = hue
    apply_jitter  [B] bool: whether image i gets the four ops at all
    apply_gray    [B] bool: whether image i is then turned to grayscale (3 equal channels)

Semantics, image by image: torchvision.transforms.v2.functional adjust_brightness /
adjust_contrast / adjust_saturation / adjust_hue in that image's order (each clamps to [0, 1];
contrast blends with the mean luma of the image as it is at that step), then
rgb_to_grayscale(num_output_channels=3), all in float32 on images scaled to [0, 1] (uint8 / 255,
as to_dtype(float32, scale=True)); optionally (x - mean[c]) / std[c] fused into the store.

Every argument is checked here, once (docs/architecture.md, section 5): TypeError for a wrong
type, ValueError for a wrong value, shape or device, each naming the argument. The C++ op only
re-checks the invariants its kernels rely on and never reads a tensor's values.
"""
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from . import _ops

_NUM_OPS = 4  # brightness, contrast, saturation, hue


class ColorParams(NamedTuple):
    """Explicit per-image parameters of one distortion (shapes in the module docstring)."""

    factors: Tensor
    order: Tensor
    apply_jitter: Tensor
    apply_gray: Tensor


# --------------------------------------------------------------------------------------------
# Checks, one per argument kind
# --------------------------------------------------------------------------------------------
def _check_images(images) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be a batch [B, 3, H, W] or one image [3, H, W], got "
                         f"shape {tuple(images.shape)}")
    if images.shape[-3] != 3:
        raise ValueError(f"images must have 3 (RGB) channels, got shape {tuple(images.shape)}")
    if not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
        raise TypeError(f"images must be uint8 or floating, got {images.dtype}")


def _check_param(t, name, batch, shape_tail, device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    expected = (batch,) + shape_tail
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} (one row per image), got "
                         f"{tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the images' device {device}, got {t.device}")


def _check_params(images, factors, order, apply_jitter, apply_gray) -> None:
    """Types, shapes and devices of the parameter tensors (metadata only)."""
    batch, device = images.shape[0], images.device
    _check_param(factors, "factors", batch, (_NUM_OPS,), device)
    _check_param(order, "order", batch, (_NUM_OPS,), device)
    _check_param(apply_jitter, "apply_jitter", batch, (), device)
    _check_param(apply_gray, "apply_gray", batch, (), device)
    if not factors.dtype.is_floating_point:
        raise TypeError(f"factors must be floating (float32), got {factors.dtype}")
    if order.dtype.is_floating_point or order.dtype == torch.bool or order.is_complex():
        raise TypeError(f"order must be an integer tensor (int64), got {order.dtype}")
    for name, t in (("apply_jitter", apply_jitter), ("apply_gray", apply_gray)):
        if t.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {t.dtype}")


def _check_param_values(factors: Tensor, order: Tensor) -> None:
    """Every order row a permutation of 0..3, brightness / contrast / saturation >= 0, hue in
    [-0.5, 0.5] (NaN fails). Reads the values: one host synchronization on CUDA, which is why
    ColorDistortion, whose sampled parameters are valid by construction, does not call it."""
    if factors.shape[0] == 0:
        return
    steps = torch.arange(_NUM_OPS, device=order.device)
    bad_order = (order.sort(dim=1).values != steps).any(dim=1)
    bad_scale = ~(factors[:, :3] >= 0).all(dim=1)
    bad_hue = ~((factors[:, 3] >= -0.5) & (factors[:, 3] <= 0.5))
    bad = torch.stack((bad_order, bad_scale, bad_hue))
    if not bool(bad.any()):  # the one host read when everything is valid
        return
    bad_order, bad_scale, bad_hue = bad.cpu()
    if bad_order.any():
        i = int(bad_order.nonzero()[0])
        raise ValueError(f"order[{i}] must be a permutation of 0..3 (0 brightness, 1 contrast, "
                         f"2 saturation, 3 hue), got {order[i].tolist()}")
    if bad_scale.any():
        i = int(bad_scale.nonzero()[0])
        row = factors[i].tolist()
        k = next(k for k in range(3) if not row[k] >= 0)
        name = ("brightness", "contrast", "saturation")[k]
        raise ValueError(f"factors[{i}, {k}] ({name}) must be >= 0, got {row[k]}")
    i = int(bad_hue.nonzero()[0])
    raise ValueError(f"factors[{i}, 3] (hue) must be in [-0.5, 0.5], got {float(factors[i, 3])}")


def _check_out_dtype(out_dtype) -> torch.dtype:
    if out_dtype is None:
        return torch.float32
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise TypeError(f"out_dtype must be a floating torch.dtype, got {out_dtype!r}")
    return out_dtype


def _channel_floats(value, name):
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.tolist()  # a host copy: pass Python floats to stay synchronization-free
    try:
        value = [float(v) for v in value]
    except TypeError as exc:
        raise TypeError(f"{name} must be a sequence of 3 floats, got {value!r}") from exc
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 entries (one per channel), got {len(value)}")
    return value


def _check_norm(mean, std):
    """-> (mean, std) as lists of 3 Python floats each, or (None, None)."""
    mean, std = _channel_floats(mean, "mean"), _channel_floats(std, "std")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    if std is not None and any(s == 0 for s in std):
        raise ValueError(f"std must be nonzero, got {std}")
    return mean, std


MAX_STRENGTH = 2.5  # hue range 0.2 s must stay <= 0.5, the largest torchvision's ColorJitter takes


def _check_sampling(strength, p, p_gray) -> None:
    if not float(strength) >= 0.0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if float(strength) > MAX_STRENGTH:
        raise ValueError(f"strength must be <= {MAX_STRENGTH}: its hue range 0.2 x strength = "
                         f"{0.2 * float(strength):g} would exceed 0.5, which torchvision's "
                         f"ColorJitter rejects too; got {strength}")
    for name, value in (("p", p), ("p_gray", p_gray)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_generator(generator, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, but the images are on {device}: "
                         f"create it with torch.Generator(device={device.type!r})")


# --------------------------------------------------------------------------------------------
# Functional op and sampler
# --------------------------------------------------------------------------------------------
def color_distort(
    images: Tensor,
    factors: Tensor,
    order: Tensor,
    apply_jitter: Tensor,
    apply_gray: Tensor,
    *,
    out_dtype: Optional[torch.dtype] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Tensor:
    """Per-image color distortion with explicit parameters (see the module docstring).

    images: [B, 3, H, W] (or one image [3, H, W], returned as such) uint8, or float32 / bfloat16 / float16 (float64 accepted) in [0, 1],
    contiguous or channels_last, on CPU or CUDA. Returns [B, 3, H, W] in out_dtype (default
    float32), channels_last when images is. mean / std (3 floats each, or None): the result is
    (x - mean[c]) / std[c]. Math is float32 whatever the dtypes.

    The parameter values are checked on both devices (ValueError for an order row that is not a
    permutation of 0..3 or a factor out of range); on CUDA that reads them back, one host
    synchronization. Under torch.compile the value check is skipped (it would break the graph):
    there an op code outside 0..3 is a no-op step.
    """
    _check_images(images)
    if images.dim() == 3:  # one image, as torchvision takes it: a batch of one, returned unbatched
        return color_distort(images.unsqueeze(0), factors, order, apply_jitter, apply_gray,
                             out_dtype=out_dtype, mean=mean, std=std).squeeze(0)
    _check_params(images, factors, order, apply_jitter, apply_gray)
    out_dtype = _check_out_dtype(out_dtype)
    mean, std = _check_norm(mean, std)
    if not torch.compiler.is_compiling():
        _check_param_values(factors, order)
    return _ops.color_distort(
        images, factors.to(torch.float32), order.to(torch.int64), apply_jitter, apply_gray,
        out_dtype, mean, std,
    )


def _sample(batch_size, device, strength, p, p_gray, generator) -> ColorParams:
    lo, hi = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
    hue_max = 0.2 * strength  # <= 0.5: _check_sampling bounds strength
    f32 = torch.float32  # explicit: the factors stay float32 under another default dtype
    u = torch.rand(batch_size, 4, generator=generator, device=device, dtype=f32)
    # Python-scalar arithmetic only: a torch.tensor([...], device="cuda") would be a blocking copy.
    factors = torch.cat((u[:, :3] * (hi - lo) + lo, u[:, 3:] * (2.0 * hue_max) - hue_max), dim=1)
    order = torch.rand(batch_size, 4, generator=generator, device=device, dtype=f32).argsort(dim=1)
    coins = torch.rand(batch_size, 2, generator=generator, device=device, dtype=f32)
    return ColorParams(factors, order, coins[:, 0] < p, coins[:, 1] < p_gray)


def sample_color_params(
    batch_size: int,
    device,
    strength: float = 1.0,
    p: float = 0.8,
    p_gray: float = 0.2,
    generator: Optional[torch.Generator] = None,
) -> ColorParams:
    """Draw SimCLR's per-image parameters on `device` with torch ops (no host synchronization).

    brightness, contrast, saturation ~ U[max(0, 1 - 0.8 s), 1 + 0.8 s], hue ~ U[-h, h] with
    h = 0.2 s (strength <= 2.5, so h <= 0.5 as torchvision requires); order = argsort of uniforms (a
    uniform random permutation per image); apply_jitter ~ Bernoulli(p), apply_gray ~
    Bernoulli(p_gray). Draw order: factors [B, 4], then order [B, 4], then the two coins [B, 2],
    all from `generator` when given. The results are always valid `color_distort` parameters.
    """
    device = torch.device(device)
    _check_sampling(strength, p, p_gray)
    _check_generator(generator, device)
    return _sample(batch_size, device, float(strength), float(p), float(p_gray), generator)


class ColorDistortion(nn.Module):
    """SimCLR color distortion of a batch, every image with its own parameters.

    ColorDistortion(strength=1.0, p=0.8, p_gray=0.2, generator=None, *, out_dtype=None,
    mean=None, std=None): with probability p, color jitter (brightness, contrast, saturation
    0.8 s, hue 0.2 s) in a random order per image, then grayscale with probability p_gray
    (SimCLR's get_color_distortion(s), per image instead of per batch). forward(images) takes
    [B, 3, H, W] uint8 or floating in [0, 1] and returns float (out_dtype, default float32),
    optionally normalized ((x - mean) / std). The parameters are drawn on the images' device
    from `generator` (a torch.Generator on that device) or the default generator;
    `sample_params` returns them so `color_distort` reproduces a result exactly.
    """

    def __init__(self, strength: float = 1.0, p: float = 0.8, p_gray: float = 0.2,
                 generator: Optional[torch.Generator] = None, *,
                 out_dtype: Optional[torch.dtype] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        _check_sampling(strength, p, p_gray)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.strength, self.p, self.p_gray = float(strength), float(p), float(p_gray)
        self.generator = generator
        self.out_dtype = out_dtype
        self._out_dtype = _check_out_dtype(out_dtype)
        self.mean, self.std = _check_norm(mean, std)

    def sample_params(self, batch_size: int, device) -> ColorParams:
        """Draw one batch of parameters, as forward does (this advances the generator): pass them
        to `color_distort` to reproduce or inspect a distortion exactly."""
        device = torch.device(device)
        _check_generator(self.generator, device)
        return _sample(batch_size, device, self.strength, self.p, self.p_gray, self.generator)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        if images.dim() == 3:  # one image [3, H, W]: returned as [3, H, W]
            return self.forward(images.unsqueeze(0)).squeeze(0)
        params = self.sample_params(images.shape[0], images.device)
        # Straight to the op: the sampled parameters are valid by construction, and skipping
        # color_distort's value check keeps this path free of host synchronizations.
        return _ops.color_distort(images, *params, self._out_dtype, self.mean, self.std)

    def extra_repr(self) -> str:
        return f"strength={self.strength}, p={self.p}, p_gray={self.p_gray}"
