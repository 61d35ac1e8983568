"""Boundary checks shared by every public function: one clear error naming the argument.

Debug mode (`FASTGAN_DEBUG=1` in the environment, or `fastgan.set_debug(True)`) turns on the
data-dependent checks, those that read tensor values, on every device: label ranges and word masks on
CUDA (a host sync each, which is why they are CPU-only by default) and finite float inputs everywhere.
"""
import functools
import math
import os
from typing import Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


_DEBUG = os.environ.get("FASTGAN_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def set_debug(enabled: bool = True) -> None:
    """Turn debug mode on or off (the default comes from the FASTGAN_DEBUG environment variable).
    Debug mode runs every data-dependent argument check on every device: label ranges (given
    num_classes) and word masks on CUDA too (a host sync per check), and finite values of every
    floating-point input of the losses (NaN or inf raise ValueError naming the argument)."""
    global _DEBUG
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _DEBUG = enabled


def debug_enabled() -> bool:
    """Whether debug mode is on (see set_debug). Read at call time, never at trace time only:
    torch.compile treats it as a constant of the graph it traces."""
    return _DEBUG


def values_checked(t: torch.Tensor) -> bool:
    """Whether checks that read t's values run: always on the CPU (free), everywhere in debug mode
    (on CUDA each is a host sync). Never while torch.compile traces (values are unknown there)."""
    if torch.compiler.is_compiling():
        return False
    return t.device.type == "cpu" or _DEBUG


def check_finite_values(x: torch.Tensor, name: str) -> None:
    """Debug mode only: x must hold no NaN or inf (outside debug mode they propagate, as in PyTorch)."""
    if _DEBUG and not torch.compiler.is_compiling() and x.is_floating_point() and x.numel():
        if not bool(torch.isfinite(x.detach()).all()):
            bad = int((~torch.isfinite(x.detach())).sum())
            raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf) (fastgan debug mode)")


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """PyTorch's type promotion over the given float tensors (bfloat16 + float32 -> float32,
    float16 + bfloat16 -> float32): the dtype two inputs of one kernel are brought to."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def promote(*tensors: torch.Tensor):
    """The tensors cast to their common dtype (no copy for those already in it)."""
    dtype = common_dtype(*tensors)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def autocast_off(fn):
    """Run a loss with autocast disabled on the devices where it is on, as PyTorch does for its own
    losses (cross_entropy & co. are autocast's float32 ops): the inputs keep the dtypes autocast gave
    them, the loss promotes them itself (reference.contrastive.compute_dtype) and any matmul in a reference or plain-
    autograd part runs in float32 instead of being cast down to half."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Plain with-statements, not an ExitStack: torch.compile traces these (fullgraph).
        cpu, cuda = torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda")
        if cpu and cuda:
            with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                return fn(*args, **kwargs)
        if cpu:
            with torch.autocast("cpu", enabled=False):
                return fn(*args, **kwargs)
        if cuda:
            with torch.autocast("cuda", enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


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
    if _DEBUG:
        check_finite_values(x, name)
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
    if num_classes is not None and n > 0 and values_checked(label):
        # Range checks need the values; on CUDA that is a host sync, so it is done there only in
        # debug mode (set_debug / FASTGAN_DEBUG=1).
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} values must lie in [0, num_classes={num_classes}), got range [{lo}, {hi}]")
    return label if label.dtype == torch.int64 else label.to(torch.int64)


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
