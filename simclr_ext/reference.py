"""Plain-PyTorch references of every simclr_ext kernel, used by tests and benchmarks."""
from typing import Optional, Sequence

import torch
from torch import Tensor, nn


# --------------------------------------------------------------------------------------------
# Color distortion (DESIGN 3.3): a per-image loop over torchvision.transforms.v2.functional
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
    """simclr_ext.color_distort, image by image with torchvision's functional ops.

    Each image is first made float32 in [0, 1] (uint8: to_dtype(float32, scale=True); other
    floats: .float()), then, if apply_jitter[i], adjust_brightness / adjust_contrast /
    adjust_saturation / adjust_hue in the order order[i] (0..3) with factors[i], then, if
    apply_gray[i], rgb_to_grayscale(num_output_channels=3); then normalize(mean, std) if given,
    and the cast to out_dtype (default float32). Same result layout as the images.
    """
    import torchvision.transforms.v2.functional as TF

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factor_rows = factors.tolist()
    order_rows = order.tolist()
    jitter, gray = apply_jitter.tolist(), apply_gray.tolist()
    outs = []
    for i in range(images.shape[0]):
        x = images[i]
        x = TF.to_dtype(x, torch.float32, scale=True) if x.dtype == torch.uint8 else x.float()
        if jitter[i]:
            for op in order_rows[i]:
                x = ops[op](x, factor_rows[i][op])
        if gray[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        outs.append(x)
    out = torch.stack(outs) if outs else images.new_empty(images.shape, dtype=torch.float32)
    if mean is not None:
        out = TF.normalize(out, list(mean), list(std))
    out = out.to(out_dtype or torch.float32)
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class ColorDistortion(nn.Module):
    """simclr_ext.ColorDistortion with the reference loop: same constructor, same sampler (so the
    same generator state gives the same parameters), for the trainer's --impl reference."""

    def __init__(self, strength: float = 1.0, p: float = 0.8, p_gray: float = 0.2,
                 generator: Optional[torch.Generator] = None, *,
                 out_dtype: Optional[torch.dtype] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        from .augment import ColorDistortion as Fused

        # The fused module validates the arguments and owns the sampler.
        self._sampler = Fused(strength, p, p_gray, generator, out_dtype=out_dtype, mean=mean,
                              std=std)
        self.strength, self.p, self.p_gray = strength, p, p_gray
        self.generator, self.out_dtype = generator, out_dtype
        self.mean, self.std = self._sampler.mean, self._sampler.std

    def sample_params(self, batch_size: int, device):
        return self._sampler.sample_params(batch_size, device)

    def forward(self, images: Tensor) -> Tensor:
        params = self.sample_params(images.shape[0], images.device)
        return color_distort(images, *params, out_dtype=self.out_dtype, mean=self.mean,
                             std=self.std)
