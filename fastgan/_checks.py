"""Boundary checks shared by every public function: one clear error naming the argument."""
import math
from typing import Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_tensor(x, name: str, ndim=None, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            shapes = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {shapes}, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    return x


def check_labels(label, name: str, n: int, device: torch.device, num_classes: Optional[int] = None) -> torch.Tensor:
    if not isinstance(label, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class labels, got {type(label).__name__}")
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {str(label.dtype).replace('torch.', '')}")
    if label.dim() != 1 or label.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {tuple(label.shape)}")
    if label.device != device:
        raise ValueError(f"{name} is on {label.device} but the features are on {device}")
    if num_classes is not None and n > 0 and label.device.type == "cpu":
        # Range checks need the values; on CUDA that is a host sync, so it is done on CPU only.
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} values must lie in [0, num_classes={num_classes}), got range [{lo}, {hi}]")
    return label.to(torch.int64)


def check_same_device(**tensors) -> torch.device:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    device = items[0][1].device
    for k, v in items[1:]:
        if v.device != device:
            raise ValueError(f"{k} is on {v.device} but {items[0][0]} is on {device}: move them to one device")
    return device


def check_same_dtype(**tensors) -> torch.dtype:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    dtype = items[0][1].dtype
    for k, v in items[1:]:
        if v.dtype != dtype:
            raise TypeError(f"{k} has dtype {v.dtype} but {items[0][0]} has {dtype}: cast them to one dtype")
    return dtype


def check_positive_finite(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def check_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_nonempty(x: torch.Tensor, name: str) -> None:
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): the loss needs at least one sample")
