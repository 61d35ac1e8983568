"""The O(N D) / O(N) terms of the contrastive losses on the Triton backend, one launch each way
(triton_kernels/loss_terms.py): on a GPU at GAN sizes these were ~45 ATen launches with autograd
around the fused log-sum-exp (docs/gpu_predictions.md).

Registered ops (Python custom ops with explicit fakes, traceable by torch.compile):
  torch.ops.fastgan.pair_cosine_triton / _backward    scale cos(x_i, y_{(i + shift) mod N})
  torch.ops.fastgan.lse_combine_triton / _backward    scale sum_i (sum_k c_k x_ik + c1 y1_i + c2 y2_i)
"""
from typing import List, Optional, Sequence

import torch

from ._registry import triton_module


def _pair_dtype(x, y):
    return torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32


@torch.library.custom_op("fastgan::pair_cosine_triton", mutates_args=())
def pair_cosine_triton(x: torch.Tensor, y: torch.Tensor, eps: float, scale: float, shift: int) -> torch.Tensor:
    return triton_module("loss_terms").pair_cosine_forward(x, y, eps, scale, shift)


@torch.library.custom_op("fastgan::pair_cosine_triton_backward", mutates_args=())
def pair_cosine_triton_backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, scale: float,
                                shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").pair_cosine_backward(grad, x, y, eps, scale, shift)


pair_cosine_triton.register_fake(lambda x, y, eps, scale, shift: x.new_empty((x.shape[0],), dtype=_pair_dtype(x, y)))
pair_cosine_triton_backward.register_fake(lambda grad, x, y, eps, scale, shift: (torch.empty_like(x),
                                                                                 torch.empty_like(y)))


def _pair_setup(ctx, inputs, output):
    x, y, eps, scale, shift = inputs
    ctx.save_for_backward(x, y)
    ctx.params = (eps, scale, shift)


def _pair_backward(ctx, grad):
    x, y = ctx.saved_tensors
    gx, gy = pair_cosine_triton_backward(grad, x, y, *ctx.params)
    return gx, gy, None, None, None


pair_cosine_triton.register_autograd(_pair_backward, setup_context=_pair_setup)


@torch.library.custom_op("fastgan::lse_combine_triton", mutates_args=())
def lse_combine_triton(x: torch.Tensor, y1: Optional[torch.Tensor], y2: Optional[torch.Tensor], coefs: List[float],
                       c1: float, c2: float, scale: float) -> torch.Tensor:
    return triton_module("loss_terms").combine_forward(x, y1, y2, coefs, c1, c2, scale)


@torch.library.custom_op("fastgan::lse_combine_triton_backward", mutates_args=())
def lse_combine_triton_backward(grad: torch.Tensor, x: torch.Tensor, y1: Optional[torch.Tensor],
                                y2: Optional[torch.Tensor], coefs: List[float], c1: float, c2: float,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").combine_backward(grad, x, y1, y2, coefs, c1, c2, scale)


def _combine_fake_backward(grad, x, y1, y2, coefs, c1, c2, scale):
    def like(y):  # shaped as y (N,) or (N, 1), as the kernel wrapper
        return x.new_empty((x.shape[0],)) if y is None else x.new_empty(y.shape, dtype=y.dtype)

    return x.new_empty(x.shape), like(y1), like(y2)


lse_combine_triton.register_fake(lambda x, y1, y2, coefs, c1, c2, scale: x.new_empty(()))
lse_combine_triton_backward.register_fake(_combine_fake_backward)


def _combine_setup(ctx, inputs, output):
    x, y1, y2 = inputs[:3]
    ctx.save_for_backward(x, y1, y2)
    ctx.params = inputs[3:]
    ctx.has = (y1 is not None, y2 is not None)


def _combine_backward(ctx, grad):
    x, y1, y2 = ctx.saved_tensors
    gx, g1, g2 = lse_combine_triton_backward(grad, x, y1, y2, *ctx.params)
    return gx, g1 if ctx.has[0] else None, g2 if ctx.has[1] else None, None, None, None, None


lse_combine_triton.register_autograd(_combine_backward, setup_context=_combine_setup)


def pair_cosine(x: torch.Tensor, y: torch.Tensor, eps: float, scale: float = 1.0, shift: int = 0) -> torch.Tensor:
    """scale cos(x_i, y_{(i + shift) mod N}) on Triton (inputs validated by the caller)."""
    return pair_cosine_triton(x, y, float(eps), float(scale), int(shift))


def lse_combine(x: torch.Tensor, coefs: Sequence[float], y1: Optional[torch.Tensor] = None, c1: float = 0.0,
                y2: Optional[torch.Tensor] = None, c2: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """scale sum_i (sum_k coefs[k] x_ik + c1 y1_i + c2 y2_i) on Triton: a loss's mean (scale 1/N) or sum."""
    return lse_combine_triton(x, y1, y2, [float(c) for c in coefs], float(c1), float(c2), float(scale))


@torch.library.custom_op("fastgan::d2d_epilogue_triton", mutates_args=())
def d2d_epilogue_triton(lse: torch.Tensor, rowmax: torch.Tensor, cos: torch.Tensor, m_p: float, temperature: float,
                        scale: float) -> torch.Tensor:
    return triton_module("loss_terms").d2d_forward(lse, rowmax, cos, m_p, temperature, scale)


@torch.library.custom_op("fastgan::d2d_epilogue_triton_backward", mutates_args=())
def d2d_epilogue_triton_backward(grad: torch.Tensor, lse: torch.Tensor, rowmax: torch.Tensor, cos: torch.Tensor,
                                 m_p: float, temperature: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").d2d_backward(grad, lse, rowmax, cos, m_p, temperature, scale)


d2d_epilogue_triton.register_fake(lambda lse, rowmax, cos, m_p, temperature, scale: lse.new_empty(()))
d2d_epilogue_triton_backward.register_fake(
    lambda grad, lse, rowmax, cos, m_p, temperature, scale: (torch.empty_like(lse), torch.empty_like(cos)))


def _d2d_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.params = inputs[3:]


def _d2d_backward(ctx, grad):
    glse, gcos = d2d_epilogue_triton_backward(grad, *ctx.saved_tensors, *ctx.params)
    return glse, None, gcos, None, None, None  # rowmax: D2D-CE's shift is a constant


d2d_epilogue_triton.register_autograd(_d2d_backward, setup_context=_d2d_setup)


def d2d_epilogue(lse: torch.Tensor, rowmax: torch.Tensor, cos: torch.Tensor, m_p: float, temperature: float,
                 scale: float) -> torch.Tensor:
    """scale sum_i [q_i + logaddexp(-q_i, lse_i - M_i)], q_i = relu((m_p - cos_i) / t), M_i the row max
    (0 where not finite, a constant): D2D-CE's epilogue on Triton, one launch each way."""
    return d2d_epilogue_triton(lse, rowmax, cos, float(m_p), float(temperature), float(scale))
