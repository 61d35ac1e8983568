"""contrastive_lse: the fused masked row log-sum-exp behind 2C, D2D-CE, NT-Xent, SupCon, symmetric
InfoNCE and the local x global InfoNCE. Contract: fastgan/reference/contrastive.py:contrastive_lse.

Registered ops:
  torch.ops.fastgan.contrastive_lse / _backward           C++ schema (csrc/fastgan.cpp); CPU and
                                                          CUDA kernels; fake + autograd here.
  torch.ops.fastgan.contrastive_lse_triton / _backward    Triton, a Python custom op with an
                                                          explicit fake (triton_kernels/contrastive_lse.py).
  torch.ops.fastgan.contrastive_lse_budget / _backward    the same under a memory budget (save the
                                                          N x M scores or recompute them), with b = None
                                                          (b is a) and both-directions (columns); CPU.

Save or recompute, by size: where the N x M scores (compute dtype: float32, float64 for float64) fit
the score budget and the feature size is at least MIN_SAVE_FEATURES (256), the CPU forward keeps them and the backward is one elementwise pass plus the
gradient products (one product when b is a); beyond it the backward recomputes them tile by tile
with extra memory O((N + M) D).
Where the logits are bounded (normalized rows, no relu, self offset 0 when b is a, 2|scale| <= 60: CLIP,
2C, NT-Xent, SupCon) the kept "scores" are exp(z - c) with one shift c = |scale| + bias for every row
and column (csrc/cpu/contrastive_lse.cpp:bounded_both, bounded_self): one exp per element in forward,
none in backward. Only the backward op reads them. The budget is per call, in bytes: set_score_budget(nbytes), or the
environment variable FASTGAN_SCORE_BUDGET at import; 0 always recomputes. Peak extra memory of the
saving path is about twice the scores (scores and their gradient in backward). Under torch.compile
the budget in force when a graph is traced is baked into that graph.
"""
import os
from typing import List, Optional, Sequence

import torch

from ..reference import contrastive as ref
from ._registry import ensure_cxx, on_extension_loaded, triton_module

_N_PARAMS = 8  # scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates

DEFAULT_SCORE_BUDGET = 32 << 20  # bytes: N = M = 2896 float32 scores; 2C at N=4096 recomputes
_score_budget = {"bytes": int(os.environ.get("FASTGAN_SCORE_BUDGET", DEFAULT_SCORE_BUDGET))}


# Below this feature size the CPU wrappers always recompute: the product is cheap against the
# elementwise passes over a stored N x M matrix, and tiles that stay in cache win. Measured with
# bench/score_budget_crossover.py (2C, one thread): saved/recompute time 1.05 (N=256), 1.48 (1024),
# 1.35 (2048) at D=128; 0.78, 0.76, 0.68 at D=512; 0.77, 0.55, 0.61 at D=768.
MIN_SAVE_FEATURES = 256


def _budget_for(a: torch.Tensor) -> int:
    return _score_budget["bytes"] if a.shape[1] >= MIN_SAVE_FEATURES else 0


def set_score_budget(nbytes: int) -> int:
    """Set the memory (bytes) the fused CPU contrastive kernels may spend on keeping the N x M scores
    for the backward (0: always recompute). Returns the previous budget."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    old = _score_budget["bytes"]
    _score_budget["bytes"] = nbytes
    return old


def get_score_budget() -> int:
    """The score budget in bytes (see set_score_budget)."""
    return _score_budget["bytes"]


def _keeps_scores(n, m, elem_size: int, budget: int) -> bool:
    # Same rule as csrc/cpu/contrastive_lse.cpp:keep_scores.
    return budget > 0 and n > 0 and m > 0 and n * m <= budget // elem_size


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
    # rowmax is a constant (D2D-CE's detached shift): no zero-filled gradient for it (one launch per step).
    ctx.set_materialize_grads(False)


def _autograd(backward_op):
    def backward(ctx, grad_lse, grad_rowmax):  # rowmax is a constant (D2D-CE's detached shift)
        a, b, label_a, label_b, extra, lse = ctx.saved_tensors
        if grad_lse is None:  # only rowmax reached the loss: it has no gradient
            return (None,) * (5 + _N_PARAMS)
        ga, gb, ge = backward_op(grad_lse.contiguous(), a, b, label_a, label_b, extra, lse, *ctx.params)
        return (ga, gb, None, None, ge if ctx.has_extra else None) + (None,) * _N_PARAMS

    return backward


def _fake_budget_forward(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                         predicates, columns, score_budget):
    n, m = a.shape[0], (a if b is None else b).shape[0]
    ct = _lse_dtype(a)
    rows = n + m if columns else n
    keep = _keeps_scores(n, m, torch.empty((), dtype=ct).element_size(), score_budget)
    scores = a.new_empty((n, m) if keep else (0,), dtype=ct)
    return a.new_empty((rows, len(predicates)), dtype=ct), a.new_empty((n,), dtype=ct), scores


def _fake_budget_backward(grad_lse, a, b, label_a, label_b, extra, lse, scores, scale, bias, relu, normalize, eps,
                          exclude_self, self_offset, predicates, columns):
    grad_extra = a.new_empty((a.shape[0],), dtype=extra.dtype if extra is not None else _lse_dtype(a))
    grad_b = a.new_empty((0,)) if b is None else torch.empty_like(b)
    return torch.empty_like(a), grad_b, grad_extra


def _pair_dtype(x, y):
    return torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32


@on_extension_loaded
def _register_cxx():
    torch.library.register_fake("fastgan::pair_cosine")(
        lambda x, y, eps, scale=1.0, shift=0: x.new_empty((x.shape[0],), dtype=_pair_dtype(x, y)))
    torch.library.register_fake("fastgan::pair_cosine_backward")(
        lambda grad, x, y, eps, scale=1.0, shift=0: (torch.empty_like(x), torch.empty_like(y)))
    # The autograds of pair_cosine, same_class_cosine_sum and contrastive_lse_budget are C++ autograd
    # kernels (csrc/ops/contrastive_autograd.cpp): a Python wrapper costs ~100 us per call and step.
    torch.library.register_fake("fastgan::same_class_cosine_sum")(
        lambda x, labels, eps: (x.new_empty((x.shape[0],), dtype=_lse_dtype(x)), labels.new_empty((x.shape[0],))))
    torch.library.register_fake("fastgan::same_class_cosine_sum_backward")(
        lambda grad, x, labels, eps: torch.empty_like(x))
    torch.library.register_fake("fastgan::contrastive_lse_budget")(_fake_budget_forward)
    torch.library.register_fake("fastgan::contrastive_lse_budget_backward")(_fake_budget_backward)
    torch.library.register_fake("fastgan::contrastive_lse")(_fake_forward)
    torch.library.register_fake("fastgan::contrastive_lse_backward")(_fake_backward)
    # contrastive_lse's autograd is a C++ kernel too (csrc/ops/contrastive_autograd.cpp); _autograd
    # below is the Triton op's.


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
    if backend == "cpu":
        # b is a: pass None, the kernel's self-similarity form (one gradient product when saving).
        args = args[:1] + (None if b is a else b,) + args[2:]
        lse, rowmax, _ = torch.ops.fastgan.contrastive_lse_budget.default(*args, False, _budget_for(a))
        return lse, rowmax
    return torch.ops.fastgan.contrastive_lse(*args)


def contrastive_lse_both(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    normalize: bool,
    eps: float,
    backend: str,
):
    """Row and column log-sum-exps of z = scale <nrm(a_i), nrm(b_j)> over all columns (rows), as two
    (N,) / (M,) tensors: the two directions of a CLIP-style loss. On the CPU one kernel call (one
    sweep of the scores in forward and one in backward when they fit the score budget); elsewhere
    two calls of contrastive_lse."""
    if backend == "cpu":
        ensure_cxx()
        lse, _, _ = torch.ops.fastgan.contrastive_lse_budget(
            a, b, None, None, None, float(scale), 0.0, False, bool(normalize), float(eps), False, 0, [0], True,
            _budget_for(a))
        n = a.shape[0]
        return lse[:n, 0], lse[n:, 0]
    rows, _ = contrastive_lse(a, b, None, None, None, scale, 0.0, False, normalize, eps, False, 0, [0], backend)
    cols, _ = contrastive_lse(b, a, None, None, None, scale, 0.0, False, normalize, eps, False, 0, [0], backend)
    return rows[:, 0], cols[:, 0]


def pair_cosine(x: torch.Tensor, y: torch.Tensor, eps: float, scale: float = 1.0, shift: int = 0) -> torch.Tensor:
    """scale cos(x_i, y_{(i + shift) mod N}), each norm clamped at eps, float32 (float64 if either
    side is float64): the fused kernel fastgan::pair_cosine (inputs assumed validated: (N, D) each,
    one device; the CPU, or CUDA for float32 and 16-bit inputs). The scale (a loss's 1/t) needs no
    division each way; the shift reads y's rows in place: no rolled copy, and y's gradient lands on
    its own rows. The arguments of the Triton op's wrapper (fastgan/ops/loss_terms.py), in its order."""
    ensure_cxx()
    return torch.ops.fastgan.pair_cosine.default(x, y, float(eps), float(scale), int(shift))


def same_class_cosine_sum(x: torch.Tensor, labels: torch.Tensor, eps: float):
    """(sum_{p != i, y_p = y_i} cos(x_i, x_p), the count of such p) per row: SupCon's positive term,
    fastgan::same_class_cosine_sum (inputs assumed validated): the fused CPU kernel, or on CUDA the
    masked sweep of the cosine tiles (3 launches forward, 4 backward, no sort, no host sync)."""
    ensure_cxx()
    return torch.ops.fastgan.same_class_cosine_sum.default(x, labels, float(eps))
