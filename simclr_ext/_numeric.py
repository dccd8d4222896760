"""Numeric conventions shared by the Python side; the C++ twins are in csrc/common/numeric.h."""
import torch

# Floor of a row norm in u = z / max(||z||, NORM_EPS), as torch.nn.functional.normalize.
NORM_EPS = 1e-12


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in and keep optimizer state in: float64 for float64
    inputs, float32 for float32, bfloat16 and float16."""
    return torch.float64 if dtype == torch.float64 else torch.float32
