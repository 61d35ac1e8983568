"""The O(N D) / O(N) terms of the contrastive losses on the Triton backend, one launch each way
(triton_kernels/loss_terms.py): on a GPU at GAN sizes these were ~45 ATen launches with autograd
around the fused log-sum-exp (docs/gpu_predictions.md). The CUDA backend has the positive logit
(fastgan::pair_cosine), the combination with the mean (fastgan::lse_combine) and the D2D-CE and SupCon
epilogues (fastgan::d2d_epilogue, fastgan::supcon_epilogue) as C++ ops of the same schemas, with the
same fakes and autograds (registered below), one launch each way (csrc/cuda/loss_terms.cu); SupCon's
positive term there is fastgan::same_class_cosine_sum (csrc/cuda/contrastive_lse.cu).

Registered ops (Python custom ops with explicit fakes, traceable by torch.compile):
  torch.ops.fastgan.pair_cosine_triton / _backward    scale cos(x_i, y_{(i + shift) mod N})
  torch.ops.fastgan.lse_combine_triton / _backward    scale sum_i (sum_k c_k x_ik + c1 y1_i + c2 y2_i)
  torch.ops.fastgan.d2d_epilogue_triton / _backward   D2D-CE's relu / logaddexp epilogue with the mean
  torch.ops.fastgan.same_class_cosine_sum_triton / _backward   SupCon's sum_{p != i, y_p = y_i} cos(x_i, x_p), n_pos
  torch.ops.fastgan.supcon_epilogue_triton / _backward         SupCon's [n_i > 0] (lse_i - pos_i / (t n_i)), mean
"""
from typing import List, Optional, Sequence

import torch

from ._registry import ensure_cxx, on_extension_loaded, triton_module
from .contrastive_lse import _lse_dtype


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


def _combine_backward_by(backward_op):
    """The Triton lse_combine's autograd backward through its backward op (the C++ op's is C++)."""
    def backward(ctx, grad):
        x, y1, y2 = ctx.saved_tensors
        gx, g1, g2 = backward_op(grad, x, y1, y2, *ctx.params)
        return gx, g1 if ctx.has[0] else None, g2 if ctx.has[1] else None, None, None, None, None

    return backward


lse_combine_triton.register_autograd(_combine_backward_by(lse_combine_triton_backward), setup_context=_combine_setup)


def pair_cosine(x: torch.Tensor, y: torch.Tensor, eps: float, scale: float = 1.0, shift: int = 0) -> torch.Tensor:
    """scale cos(x_i, y_{(i + shift) mod N}) on Triton (inputs validated by the caller)."""
    return pair_cosine_triton(x, y, float(eps), float(scale), int(shift))


@on_extension_loaded
def _register_cxx():
    # fastgan::lse_combine (csrc/fastgan.cpp; CUDA kernels in csrc/cuda/loss_terms.cu): the Triton op's
    # fake; its autograd is a C++ kernel (csrc/ops/loss_terms_autograd.cpp: no Python on the step).
    torch.library.register_fake("fastgan::lse_combine")(lambda x, y1, y2, coefs, c1, c2, scale: x.new_empty(()))
    torch.library.register_fake("fastgan::lse_combine_backward")(_combine_fake_backward)


def lse_combine(x: torch.Tensor, coefs: Sequence[float], y1: Optional[torch.Tensor] = None, c1: float = 0.0,
                y2: Optional[torch.Tensor] = None, c2: float = 0.0, scale: float = 1.0,
                backend: str = "triton") -> torch.Tensor:
    """scale sum_i (sum_k coefs[k] x_ik + c1 y1_i + c2 y2_i): a loss's mean (scale 1/N) or sum, one
    launch each way on Triton or CUDA (backend "cuda": fastgan::lse_combine, float32 inputs)."""
    args = (x, y1, y2, [float(c) for c in coefs], float(c1), float(c2), float(scale))
    if backend == "cuda":
        ensure_cxx()
        return torch.ops.fastgan.lse_combine(*args)
    return lse_combine_triton(*args)


@torch.library.custom_op("fastgan::d2d_epilogue_triton", mutates_args=())
def d2d_epilogue_triton(lse: torch.Tensor, rowmax: torch.Tensor, cos: torch.Tensor, m_p: float, temperature: float,
                        scale: float) -> torch.Tensor:
    return triton_module("loss_terms").d2d_forward(lse, rowmax, cos, m_p, temperature, scale)


@torch.library.custom_op("fastgan::d2d_epilogue_triton_backward", mutates_args=())
def d2d_epilogue_triton_backward(grad: torch.Tensor, lse: torch.Tensor, rowmax: torch.Tensor, cos: torch.Tensor,
                                 m_p: float, temperature: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").d2d_backward(grad, lse, rowmax, cos, m_p, temperature, scale)


def _d2d_fake_backward(grad, lse, rowmax, cos, m_p, temperature, scale):
    return torch.empty_like(lse), torch.empty_like(cos)


d2d_epilogue_triton.register_fake(lambda lse, rowmax, cos, m_p, temperature, scale: lse.new_empty(()))
d2d_epilogue_triton_backward.register_fake(_d2d_fake_backward)


def _d2d_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.params = inputs[3:]


def _d2d_backward_by(backward_op):
    """The Triton d2d_epilogue's autograd backward through its backward op (the C++ op's is C++)."""
    def backward(ctx, grad):
        glse, gcos = backward_op(grad, *ctx.saved_tensors, *ctx.params)
        return glse, None, gcos, None, None, None  # rowmax: D2D-CE's shift is a constant
    return backward


d2d_epilogue_triton.register_autograd(_d2d_backward_by(d2d_epilogue_triton_backward), setup_context=_d2d_setup)


def d2d_epilogue(lse: torch.Tensor, rowmax: torch.Tensor, cos: torch.Tensor, m_p: float, temperature: float,
                 scale: float, backend: str = "triton") -> torch.Tensor:
    """scale sum_i [q_i + logaddexp(-q_i, lse_i - M_i)], q_i = relu((m_p - cos_i) / t), M_i the row max
    (0 where not finite, a constant): D2D-CE's epilogue, one launch each way on Triton or CUDA (backend
    "cuda": fastgan::d2d_epilogue, float32 inputs)."""
    args = (lse, rowmax, cos, float(m_p), float(temperature), float(scale))
    if backend == "cuda":
        ensure_cxx()
        return torch.ops.fastgan.d2d_epilogue(*args)
    return d2d_epilogue_triton(*args)


@torch.library.custom_op("fastgan::same_class_cosine_sum_triton", mutates_args=())
def same_class_cosine_sum_triton(x: torch.Tensor, labels: torch.Tensor,
                                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").same_class_cosine_forward(x, labels, eps)


@torch.library.custom_op("fastgan::same_class_cosine_sum_triton_backward", mutates_args=())
def same_class_cosine_sum_triton_backward(grad: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                                          norms: torch.Tensor, inv_norms: torch.Tensor, eps: float) -> torch.Tensor:
    return triton_module("loss_terms").same_class_cosine_backward(grad, x, labels, norms, inv_norms, eps)


def _scc_fake(x, labels, eps):
    def rows(dtype):
        return x.new_empty((x.shape[0],), dtype=dtype)

    return rows(_lse_dtype(x)), rows(torch.int64), rows(_lse_dtype(x)), rows(_lse_dtype(x))


same_class_cosine_sum_triton.register_fake(_scc_fake)
same_class_cosine_sum_triton_backward.register_fake(lambda grad, x, labels, norms, inv_norms, eps: torch.empty_like(x))


def _scc_setup(ctx, inputs, output):
    x, labels, eps = inputs
    _, _, norms, inv_norms = output
    ctx.save_for_backward(x, labels, norms, inv_norms)
    ctx.eps = eps
    ctx.mark_non_differentiable(norms, inv_norms)  # the backward's inputs, not results
    ctx.set_materialize_grads(False)  # n_pos (integer) has no gradient; pos's may be absent


def _scc_backward(ctx, grad_pos, *_):
    if grad_pos is None:
        return None, None, None
    return same_class_cosine_sum_triton_backward(grad_pos, *ctx.saved_tensors, ctx.eps), None, None


same_class_cosine_sum_triton.register_autograd(_scc_backward, setup_context=_scc_setup)


def same_class_cosine_sum(x: torch.Tensor, labels: torch.Tensor, eps: float, backend: str = "triton"):
    """(pos_i = sum_{p != i, y_p = y_i} cos(x_i, x_p) in the compute dtype, n_pos_i int64): on Triton two
    launches forward (the norms, the sweep), one backward; on CUDA (fastgan::same_class_cosine_sum) 3
    and 4. No sort and no host sync (inputs validated by the caller; labels int64 on x's device)."""
    if backend == "cuda":
        from .contrastive_lse import same_class_cosine_sum as cxx

        return cxx(x, labels, eps)
    pos, n_pos, _, _ = same_class_cosine_sum_triton(x, labels, float(eps))
    return pos, n_pos


@torch.library.custom_op("fastgan::supcon_epilogue_triton", mutates_args=())
def supcon_epilogue_triton(lse: torch.Tensor, pos: torch.Tensor, n_pos: torch.Tensor, temperature: float,
                           mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").supcon_forward(lse, pos, n_pos, temperature, mean)


@torch.library.custom_op("fastgan::supcon_epilogue_triton_backward", mutates_args=())
def supcon_epilogue_triton_backward(grad: torch.Tensor, den: torch.Tensor, lse: torch.Tensor, pos: torch.Tensor,
                                    n_pos: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("loss_terms").supcon_backward(grad, den, lse, pos, n_pos, temperature)


def _supcon_fake(lse, pos, n_pos, temperature, mean):
    return lse.new_empty(()), lse.new_empty(())


def _supcon_fake_backward(grad, den, lse, pos, n_pos, temperature):
    return torch.empty_like(lse), torch.empty_like(pos)


supcon_epilogue_triton.register_fake(_supcon_fake)
supcon_epilogue_triton_backward.register_fake(_supcon_fake_backward)


def _supcon_setup(ctx, inputs, output):
    lse, pos, n_pos, temperature, _ = inputs
    ctx.save_for_backward(output[1], lse, pos, n_pos)
    ctx.temperature = temperature
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _supcon_backward_by(backward_op):
    """The Triton supcon_epilogue's autograd backward through its backward op (the C++ op's is C++)."""
    def backward(ctx, grad, grad_den):
        if grad is None:
            return None, None, None, None, None
        glse, gpos = backward_op(grad, *ctx.saved_tensors, ctx.temperature)
        return glse, gpos, None, None, None
    return backward


supcon_epilogue_triton.register_autograd(_supcon_backward_by(supcon_epilogue_triton_backward),
                                         setup_context=_supcon_setup)


def supcon_epilogue(lse: torch.Tensor, pos: torch.Tensor, n_pos: torch.Tensor, temperature: float,
                    mean: bool, backend: str = "triton") -> torch.Tensor:
    """sum_i [n_i > 0] (lse_i - pos_i / (t n_i)), over the count of anchors with n_i > 0 (at least 1) when
    `mean`: SupCon's epilogue, one launch each way on Triton or CUDA (backend "cuda":
    fastgan::supcon_epilogue, float32 inputs); the count stays on the device."""
    args = (lse, pos, n_pos, float(temperature), bool(mean))
    if backend == "cuda":
        ensure_cxx()
        return torch.ops.fastgan.supcon_epilogue(*args)[0]
    return supcon_epilogue_triton(*args)[0]


@on_extension_loaded
def _register_cxx_epilogues():
    # fastgan::d2d_epilogue and fastgan::supcon_epilogue (csrc/fastgan.cpp; CUDA kernels in
    # csrc/cuda/loss_terms.cu, CPU forms in csrc/cpu/loss_terms.cpp): the Triton ops' fakes; their
    # autograds are C++ kernels (csrc/ops/loss_terms_autograd.cpp).
    torch.library.register_fake("fastgan::d2d_epilogue")(lambda lse, rowmax, cos, m_p, temperature, scale:
                                                         lse.new_empty(()))
    torch.library.register_fake("fastgan::d2d_epilogue_backward")(_d2d_fake_backward)
    torch.library.register_fake("fastgan::supcon_epilogue")(_supcon_fake)
    torch.library.register_fake("fastgan::supcon_epilogue_backward")(_supcon_fake_backward)
