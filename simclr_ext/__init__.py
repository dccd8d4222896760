"""simclr_ext: SimCLR with fused C++/CUDA kernels.

Public API: NTXentLoss / nt_xent_loss (fused NT-Xent), LARS (fused multi-tensor LARS),
ColorDistortion / color_distort (per-sample SimCLR color distortion), build_info().
"""
from ._extension import build_info
from . import _ops as ops
from .optim import LARS

__version__ = build_info()["version"]

__all__ = ["build_info", "ops", "LARS", "__version__"]
