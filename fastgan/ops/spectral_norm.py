"""Spectral norm ops (SPEC.md 7): registrations of the C++ op fastgan::spectral_norm_power_iteration_
and the dispatcher `power_iteration_(..., backend)` taking a RESOLVED backend name.

The op mutates u and v (schema `Tensor(a!)[]`, `Tensor(b!)[]`) and returns nothing, so torch.compile
functionalizes it like any in-place op; W / sigma stays in plain autograd (u, v are constants there).
Only the CPU kernel exists so far; "cuda" and "triton" fall back to the reference loop.
"""
from typing import List, Sequence

import torch

from ..reference import spectral_norm as ref
from ._registry import ensure_cxx, on_extension_loaded

__all__ = ["power_iteration_"]


@on_extension_loaded
def _register_cxx() -> None:
    @torch.library.register_fake("fastgan::spectral_norm_power_iteration_")
    def _fake(weight_mats, us, vs, n_power_iterations, eps, hook_order):
        return None


def power_iteration_(weight_mats: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
                     n_power_iterations: int, eps: float, order: str, backend: str) -> None:
    """n power-iteration steps of `order` for every (W_mat, u, v), u and v updated in place."""
    if backend == "cpu" and ensure_cxx():
        torch.ops.fastgan.spectral_norm_power_iteration_(list(weight_mats), list(us), list(vs), n_power_iterations,
                                                         float(eps), order == "hook")
        return
    with torch.no_grad():
        for w, u, v in zip(weight_mats, us, vs):
            ref.power_iteration_(w, u, v, n_power_iterations, eps, order)
