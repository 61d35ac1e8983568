"""contrastive_lse: the fused masked row log-sum-exp behind 2C, D2D-CE, NT-Xent, SupCon, symmetric
InfoNCE and the local x global InfoNCE. Contract: fastgan/reference/contrastive.py:contrastive_lse.

Registered ops:
  torch.ops.fastgan.contrastive_lse / _backward           C++ schema (csrc/fastgan.cpp); CPU and
                                                          CUDA kernels; fake + autograd here.
  torch.ops.fastgan.contrastive_lse_triton / _backward    Triton, a Python custom op with an
                                                          explicit fake (triton_kernels/contrastive_lse.py).
"""
from typing import List, Optional, Sequence

import torch

from ..reference import contrastive as ref
from ._registry import ensure_cxx, on_extension_loaded, triton_module

_N_PARAMS = 8  # scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates


def _lse_dtype(a: torch.Tensor) -> torch.dtype:
    return torch.float64 if a.dtype == torch.float64 else torch.float32


def _fake_forward(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates):
    n = a.shape[0]
    return a.new_empty((n, len(predicates)), dtype=_lse_dtype(a)), a.new_empty((n,), dtype=_lse_dtype(a))


def _fake_backward(grad_lse, a, b, label_a, label_b, extra, lse, scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates):
    grad_extra = a.new_empty((a.shape[0],), dtype=extra.dtype if extra is not None else _lse_dtype(a))
    return torch.empty_like(a), torch.empty_like(b), grad_extra


def _setup_context(ctx, inputs, output):
    a, b, label_a, label_b, extra = inputs[:5]
    ctx.save_for_backward(a, b, label_a, label_b, extra, output[0])
    ctx.params = inputs[5:]
    ctx.has_extra = extra is not None


def _autograd(backward_op):
    def backward(ctx, grad_lse, grad_rowmax):  # rowmax is a constant (D2D-CE's detached shift)
        a, b, label_a, label_b, extra, lse = ctx.saved_tensors
        ga, gb, ge = backward_op(grad_lse.contiguous(), a, b, label_a, label_b, extra, lse, *ctx.params)
        return (ga, gb, None, None, ge if ctx.has_extra else None) + (None,) * _N_PARAMS

    return backward


@on_extension_loaded
def _register_cxx():
    torch.library.register_fake("fastgan::contrastive_lse")(_fake_forward)
    torch.library.register_fake("fastgan::contrastive_lse_backward")(_fake_backward)
    torch.library.register_autograd(
        "fastgan::contrastive_lse",
        _autograd(torch.ops.fastgan.contrastive_lse_backward),
        setup_context=_setup_context,
    )


@torch.library.custom_op("fastgan::contrastive_lse_triton", mutates_args=())
def contrastive_lse_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    label_a: Optional[torch.Tensor],
    label_b: Optional[torch.Tensor],
    extra: Optional[torch.Tensor],
    scale: float,
    bias: float,
    relu: bool,
    normalize: bool,
    eps: float,
    exclude_self: bool,
    self_offset: int,
    predicates: List[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("contrastive_lse").contrastive_lse_forward(
        a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates
    )


@torch.library.custom_op("fastgan::contrastive_lse_triton_backward", mutates_args=())
def contrastive_lse_triton_backward(
    grad_lse: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    label_a: Optional[torch.Tensor],
    label_b: Optional[torch.Tensor],
    extra: Optional[torch.Tensor],
    lse: torch.Tensor,
    scale: float,
    bias: float,
    relu: bool,
    normalize: bool,
    eps: float,
    exclude_self: bool,
    self_offset: int,
    predicates: List[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_module("contrastive_lse").contrastive_lse_backward(
        grad_lse, a, b, label_a, label_b, extra, lse, scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates
    )


contrastive_lse_triton.register_fake(_fake_forward)
contrastive_lse_triton_backward.register_fake(_fake_backward)
contrastive_lse_triton.register_autograd(_autograd(contrastive_lse_triton_backward), setup_context=_setup_context)


def contrastive_lse(
    a: torch.Tensor,
    b: torch.Tensor,
    label_a: Optional[torch.Tensor],
    label_b: Optional[torch.Tensor],
    extra: Optional[torch.Tensor],
    scale: float,
    bias: float,
    relu: bool,
    normalize: bool,
    eps: float,
    exclude_self: bool,
    self_offset: int,
    predicates: Sequence[int],
    backend: str,
):
    """Run the primitive on a resolved backend (see fastgan.backend.resolve_backend).
    Inputs are assumed validated by the public function that calls this."""
    args = (a, b, label_a, label_b, extra, float(scale), float(bias), bool(relu), bool(normalize), float(eps),
            bool(exclude_self), int(self_offset), list(predicates))
    if backend == "reference":
        return ref.contrastive_lse(*args)
    if backend == "triton":
        return torch.ops.fastgan.contrastive_lse_triton(*args)
    ensure_cxx()
    return torch.ops.fastgan.contrastive_lse(*args)
