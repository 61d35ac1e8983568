"""Spectral normalization as a function: W / sigma with in-place power iteration of u and v (fused
ops fastgan::spectral_norm_power_iteration_ -> sigma, fastgan::spectral_norm_apply; docs/semantics.md section 7)."""
import torch

from .. import _checks as C
from ..backend import BACKENDS, BackendUnavailableError, resolve_backend
from ..ops import spectral_norm as ops
from ..reference import spectral_norm as ref

__all__ = ["spectral_normalize"]


def check_spectral_backend(backend: str) -> None:
    """Validate a user's backend argument (resolution happens per call, on the weight's device)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _spectral_backend(backend: str, device: torch.device) -> str:
    """The concrete path: the fused C++ ops on CPU tensors ("cpu") and on CUDA tensors ("cuda", where
    fastgan._C carries the spectral-norm CUDA kernels), the Triton ops ("triton"), else the reference.
    Asking explicitly for "cuda" without those kernels raises."""
    resolved = resolve_backend(backend, device)
    if resolved == "cuda" and not ops.cuda_kernels_registered():
        if backend == "cuda":
            raise BackendUnavailableError(
                "backend='cuda' is not available for spectral norm: fastgan._C has no CUDA spectral-norm kernels")
        return "reference"
    return resolved


def matrix_to_weight(out_mat: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """Inverse of weight_to_matrix: the (contiguous) matrix back in the weight's shape and layout."""
    if dim == 0:
        return out_mat.reshape(shape)
    perm = [dim] + [d for d in range(len(shape)) if d != dim]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return out_mat.reshape([shape[p] for p in perm]).permute(inverse).contiguous()


def normalize_weight(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float,
                     order: str, dim: int, training: bool, backend: str) -> torch.Tensor:
    """Unchecked core shared with fastgan.nn: power iteration (in place, training only) by the
    resolved backend, then W / sigma. Fused backends: the power-iteration op returns sigma (n = 0 in
    eval mode: <u, W v> with the stored u, v) and spectral_norm_apply divides, with its fused
    backward; the reference: W / (u^T W v) in plain autograd. Either way u, v are constants for
    autograd and, after an update, clones (the buffers change again at the next forward, D(real)
    then D(fake), while this forward's graph must keep the u, v it used)."""
    resolved = _spectral_backend(backend, weight.device)
    weight_mat = ref.weight_to_matrix(weight, dim)
    iterate = training and n_power_iterations > 0
    if resolved == "reference":
        if iterate:
            ops.power_iteration([weight_mat.detach()], [u], [v], n_power_iterations, eps, order, resolved)
            u = u.clone(memory_format=torch.contiguous_format)
            v = v.clone(memory_format=torch.contiguous_format)
        return weight / ref.sigma(weight_mat, u, v)
    sigma = ops.power_iteration([weight_mat.detach()], [u], [v], n_power_iterations if iterate else 0, eps, order,
                                resolved)[0]
    if iterate:
        u = u.clone(memory_format=torch.contiguous_format)
        v = v.clone(memory_format=torch.contiguous_format)
    return matrix_to_weight(ops.apply(weight_mat, u, v, sigma, resolved), weight.shape, dim)


def spectral_normalize(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int = 1,
                       eps: float = 1e-12, *, order: str = "hook", dim: int = 0, training: bool = True,
                       backend: str = "auto") -> torch.Tensor:
    """W / sigma, docs/semantics.md section 7. In training mode u and v are updated in place by `n_power_iterations`
    steps of the given PyTorch `order` ("hook" or "parametrization"); in eval mode they are used as
    stored. u has W_mat.shape[0] entries and v W_mat.shape[1], W_mat being `weight` with `dim` first."""
    C.check_tensor(weight, "weight")
    if weight.dim() < 2:
        raise ValueError(f"weight must have at least 2 dimensions, got shape {tuple(weight.shape)}")
    if not 0 <= dim < weight.dim():
        raise ValueError(f"dim must lie in [0, {weight.dim()}), got {dim}")
    h = weight.shape[dim]
    w = weight.numel() // h if h else 0
    for name, vec, size in (("u", u, h), ("v", v, w)):
        C.check_tensor(vec, name, ndim=1)
        if vec.shape[0] != size:
            raise ValueError(f"{name} must have {size} entries for a weight of shape {tuple(weight.shape)}, got {vec.shape[0]}")
    C.check_same_device(weight=weight, u=u, v=v)
    if u.dtype != v.dtype:
        raise TypeError(f"u and v must have one dtype, got {u.dtype} and {v.dtype}")
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 0:
        raise ValueError(f"n_power_iterations must be a non-negative int, got {n_power_iterations!r}")
    eps = C.check_positive_finite(eps, "eps")
    if order not in ref.ORDERS:
        raise ValueError(f"order must be one of {ref.ORDERS}, got {order!r}")
    check_spectral_backend(backend)
    return normalize_weight(weight, u, v, n_power_iterations, eps, order, dim, training, backend)
