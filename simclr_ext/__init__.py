"""simclr_ext: SimCLR with fused C++/CUDA kernels.

Public API: NTXentLoss / nt_xent_loss (fused NT-Xent), LARS (fused multi-tensor LARS),
ColorDistortion / color_distort (per-sample SimCLR color distortion), build_info().
"""
from ._extension import build_info
from . import _ops as ops
from .augment import ColorDistortion, ColorParams, color_distort, sample_color_params
from .loss import NTXentLoss, nt_xent_loss
from .optim import LARS, simclr_param_groups

__version__ = build_info()["version"]

__all__ = [
    "build_info", "ops", "__version__",
    "NTXentLoss", "nt_xent_loss",
    "LARS", "simclr_param_groups",
    "ColorDistortion", "ColorParams", "color_distort", "sample_color_params",
]
