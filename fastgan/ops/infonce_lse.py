"""infonce_lse: the fused positives + per-image negative log-sum-exp of InfoMax-GAN's local x global
InfoNCE (docs/semantics.md section 6). Contract: fastgan/reference/infonce.py:infonce_lse.

Registered ops:
  torch.ops.fastgan.infonce_lse / _backward           C++ schema (csrc/fastgan.cpp); CPU kernel
                                                      (csrc/cpu/infonce_lse.cpp) and CUDA kernel
                                                      (csrc/cuda/infonce_lse*); fake + autograd here.
  torch.ops.fastgan.infonce_lse_triton / _backward    Triton, a Python custom op with an explicit
                                                      fake (triton_kernels/infonce_lse.py).
  torch.ops.fastgan.infonce_lse_budget / _backward    the CPU path: the same under the score budget
                                                      of fastgan.ops.contrastive_lse (set_score_budget);
                                                      C++ autograd (csrc/ops/infonce_autograd.cpp).

Save or recompute, by size (CPU): where the (N, N, HW) scores of the compute dtype fit the score
budget and R >= MIN_SAVE_FEATURES (the rule and budget of contrastive_lse), the forward keeps them
and the backward is the elementwise pass plus the two gradient products (4 N^2 HW R flops instead of
6); beyond it the backward recomputes them block by block, extra memory O(threads (N HW + N R)).

pos, neg = infonce_lse(l, m, scale, self_logit, normalize, eps): l (N, R, HW) with any strides (a
permuted channels-last map is read in place), m (N, R); pos (N, HW) and neg (N,) in float64 for
float64 inputs, float32 otherwise.
"""
from typing import Optional

import torch

from ..reference import infonce as ref
from . import contrastive_lse as _budget  # the one score budget: set_score_budget, MIN_SAVE_FEATURES
from ._registry import ensure_cxx, on_extension_loaded, triton_module

_N_PARAMS = 4  # scale, self_logit, normalize, eps


def _ct(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fake_forward(l, m, scale, self_logit, normalize, eps):
    n, _, hw = l.shape
    return l.new_empty((n, hw), dtype=_ct(l)), l.new_empty((n,), dtype=_ct(l))


def _fake_backward(grad_pos, grad_neg, l, m, neg, scale, self_logit, normalize, eps):
    return l.new_empty(l.shape), m.new_empty(m.shape)  # new_empty is contiguous


def _keeps_scores(n: int, hw: int, elem_size: int, budget: int) -> bool:
    # Same rule as csrc/cpu/infonce_lse.cpp:keep_scores.
    return budget > 0 and n > 0 and hw > 0 and n * n * hw <= budget // elem_size


def _score_budget_for(l: torch.Tensor) -> int:
    return _budget.get_score_budget() if l.shape[1] >= _budget.MIN_SAVE_FEATURES else 0


def _fake_budget_forward(l, m, scale, self_logit, normalize, eps, score_budget):
    n, _, hw = l.shape
    ct = _ct(l)
    keep = _keeps_scores(n, hw, torch.empty((), dtype=ct).element_size(), score_budget)
    scores = l.new_empty((n, n, hw) if keep else (0,), dtype=ct)
    return l.new_empty((n, hw), dtype=ct), l.new_empty((n,), dtype=ct), scores


def _fake_budget_backward(grad_pos, grad_neg, l, m, neg, scores, scale, self_logit, normalize, eps):
    return l.new_empty(l.shape), m.new_empty(m.shape)


def _setup_context(ctx, inputs, output):
    l, m = inputs[:2]
    ctx.save_for_backward(l, m, output[1])
    ctx.params = inputs[2:]


def _autograd(backward_op):
    def backward(ctx, grad_pos, grad_neg):
        l, m, neg = ctx.saved_tensors
        ct = _ct(l)
        n, _, hw = l.shape
        grad_pos = grad_pos.to(ct).contiguous() if grad_pos is not None else l.new_zeros((n, hw), dtype=ct)
        grad_neg = grad_neg.to(ct).contiguous() if grad_neg is not None else l.new_zeros((n,), dtype=ct)
        gl, gm = backward_op(grad_pos, grad_neg, l, m, neg, *ctx.params)
        return (gl, gm) + (None,) * _N_PARAMS

    return backward


@on_extension_loaded
def _register_cxx():
    torch.library.register_fake("fastgan::infonce_lse")(_fake_forward)
    torch.library.register_fake("fastgan::infonce_lse_backward")(_fake_backward)
    torch.library.register_fake("fastgan::infonce_lse_budget")(_fake_budget_forward)
    torch.library.register_fake("fastgan::infonce_lse_budget_backward")(_fake_budget_backward)
    torch.library.register_autograd(
        "fastgan::infonce_lse",
        _autograd(torch.ops.fastgan.infonce_lse_backward),
        setup_context=_setup_context,
    )


@torch.library.custom_op("fastgan::infonce_lse_triton", mutates_args=())
def infonce_lse_triton(
    l: torch.Tensor,
    m: torch.Tensor,
    scale: float,
    self_logit: Optional[float],
    normalize: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("infonce_lse").infonce_lse_forward(l, m, scale, self_logit, normalize, eps)


@torch.library.custom_op("fastgan::infonce_lse_triton_backward", mutates_args=())
def infonce_lse_triton_backward(
    grad_pos: torch.Tensor,
    grad_neg: torch.Tensor,
    l: torch.Tensor,
    m: torch.Tensor,
    neg: torch.Tensor,
    scale: float,
    self_logit: Optional[float],
    normalize: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("infonce_lse").infonce_lse_backward(grad_pos, grad_neg, l, m, neg, scale, self_logit,
                                                             normalize, eps)


infonce_lse_triton.register_fake(_fake_forward)
infonce_lse_triton_backward.register_fake(_fake_backward)
infonce_lse_triton.register_autograd(_autograd(infonce_lse_triton_backward), setup_context=_setup_context)


def infonce_lse(
    l: torch.Tensor,
    m: torch.Tensor,
    scale: float,
    self_logit: Optional[float],
    normalize: bool,
    eps: float,
    backend: str,
):
    """(pos, neg) on a resolved backend ("reference", "cpu", "cuda" or "triton"). Inputs are assumed
    validated by the public function that calls this (the C++ ops check them again)."""
    args = (l, m, float(scale), None if self_logit is None else float(self_logit), bool(normalize), float(eps))
    if backend == "reference":
        return ref.infonce_lse(*args)
    if backend == "triton":
        return torch.ops.fastgan.infonce_lse_triton(*args)
    ensure_cxx()
    if backend == "cpu":
        pos, neg, _ = torch.ops.fastgan.infonce_lse_budget(*args, _score_budget_for(l))
        return pos, neg
    return torch.ops.fastgan.infonce_lse(*args)
