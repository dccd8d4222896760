"""Dtype conventions of the kernels, in one place for the Python side."""
import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
