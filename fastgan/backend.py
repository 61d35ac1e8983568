"""Backend selection: "auto" | "reference" | "cpu" | "cuda" | "triton".

- reference: the pure-PyTorch specification (fastgan/reference), any device, autograd by PyTorch.
- cpu:       fused C++ kernels of fastgan._C, CPU tensors.
- cuda:      fused CUDA C++ kernels of fastgan._C, CUDA tensors.
- triton:    Triton kernels (fastgan.triton_kernels), CUDA tensors, or CPU tensors when
             TRITON_INTERPRET=1 was set before triton was imported (slow; for tests).
- auto:      $FASTGAN_BACKEND if set, else the fastest available path for the tensors' device:
             cuda > triton > reference on CUDA, cpu > reference on the CPU.
"""
import functools
import os
from typing import Optional

import torch

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """Raised when an explicitly requested backend cannot run here; the message says why."""


@functools.lru_cache(maxsize=None)
def _triton_status() -> Optional[str]:
    """None if Triton is usable, else the reason."""
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton is not installed ({type(exc).__name__}: {exc})"
    try:
        from . import _triton_loader

        _triton_loader.import_triton_kernels()
    except Exception as exc:
        return f"fastgan.triton_kernels failed to import ({type(exc).__name__}: {exc})"
    return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """None if `backend` can run on `device`, else a sentence saying why not."""
    from ._extension import extension_info, has_cuda_kernels, load_extension

    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, got tensors on {device}"
        if not load_extension():
            return "the compiled extension fastgan._C is not available: " + str(extension_info()["error"])
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, got tensors on {device}"
        if not load_extension():
            return "the compiled extension fastgan._C is not available: " + str(extension_info()["error"])
        if not has_cuda_kernels():
            return "fastgan._C was built without CUDA kernels (rebuild with nvcc present or FASTGAN_CUDA=1)"
        return None
    if backend == "triton":
        if device.type == "cpu" and not triton_interpreted():
            return "Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing triton"
        if device.type not in ("cpu", "cuda"):
            return f"the 'triton' backend runs on CUDA tensors, got tensors on {device}"
        return _triton_status()
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn the user's `backend` argument into a concrete backend for tensors on `device`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _resolve(backend, device.type, os.environ.get("FASTGAN_BACKEND", ""))


@torch.compiler.assume_constant_result
def _resolve(backend: str, device_type: str, env: str) -> str:
    # Run eagerly even under torch.compile (the answer is a constant of the environment), so
    # tracing never steps into extension loading or Triton's import.
    key = (backend, device_type, env)
    if key not in _resolved:
        _resolved[key] = _resolve_uncached(backend, torch.device(device_type), env.strip())
    return _resolved[key]


_resolved: dict = {}


def _resolve_uncached(backend: str, device: torch.device, env: str) -> str:
    if backend == "auto":
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"FASTGAN_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
        else:
            order = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
            for candidate in order:
                if unavailable_reason(candidate, device) is None:
                    return candidate
            return "reference"
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={backend!r} is not available: {reason}")
    return backend


def available_backends(device: torch.device) -> dict:
    """{backend: None if available else reason} for every concrete backend."""
    return {b: unavailable_reason(b, device) for b in BACKENDS if b != "auto"}
