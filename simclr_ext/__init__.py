"""simclr_ext: SimCLR with fused C++/CUDA kernels.

Public API: NTXentLoss / nt_xent_loss (fused NT-Xent), NTLogisticLoss / nt_logistic_loss and
MarginTripletLoss / margin_triplet_loss (the paper's other two losses, same kernels), LARS / simclr_param_groups (fused
multi-tensor LARS and SimCLR's parameter groups), ColorDistortion / color_distort /
sample_color_params / ColorParams (per-sample SimCLR color distortion), SimCLRAugment /
SimCLRParams / resized_crop / gaussian_blur(_) / sample_crop_boxes (the whole SimCLR
augmentation, per view), build_info().
The torch.library custom ops behind them are registered as torch.ops.simclr_ext.*;
simclr_ext.reference holds the plain-PyTorch twins used by the tests and benchmarks.
"""
from ._extension import build_info
from .augment import ColorDistortion, ColorParams, color_distort, sample_color_params
from .loss import NTXentLoss, nt_xent_loss
from .pair_loss import (MarginTripletLoss, NTLogisticLoss, margin_triplet_loss,
                        nt_logistic_loss)
from .optim import LARS, simclr_param_groups
from .pipeline import (SimCLRAugment, SimCLRParams, gaussian_blur, gaussian_blur_, resized_crop,
                       sample_crop_boxes)

from ._version import __version__

__all__ = [
    "build_info", "__version__",
    "NTXentLoss", "nt_xent_loss",
    "NTLogisticLoss", "nt_logistic_loss", "MarginTripletLoss", "margin_triplet_loss",
    "LARS", "simclr_param_groups",
    "ColorDistortion", "ColorParams", "color_distort", "sample_color_params",
    "SimCLRAugment", "SimCLRParams", "resized_crop", "gaussian_blur", "gaussian_blur_",
    "sample_crop_boxes",
]
