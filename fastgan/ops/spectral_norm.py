"""Spectral norm ops (docs/semantics.md section 7). Contract shared by the CPU (C++), CUDA (C++) and Triton kernels:

    sigmas = spectral_norm_power_iteration_(weight_mats, us, vs, n_power_iterations, eps, hook_order)
        weight_mats[i] 2-D (out, in), any strides, float16/bfloat16/float32/float64; us[i] (out,),
        vs[i] (in,) of the weight's dtype or float32. Math in float32 (float64 for float64).
        n steps of   hook_order: v = nrm(W^T u); u = nrm(W v)   else: u = nrm(W v); v = nrm(W^T u)
        with nrm(x) = x / max(||x||, eps), u and v written in place. sigmas[i]: 0-dim float32
        (float64 for float64 weights) = <u, W v> after the update, read off the last normalization
        (||x||^2 / max(||x||, eps) with x the last W v, resp. W^T u); n == 0: <u, W v> by one pass.
        The CPU kernel computes it as <u, x> in hook order, which is bitwise PyTorch's
        dot(u, mv(W, v)); in parametrization order it spends one more gemv for PyTorch's bits (see
        csrc/cpu/spectral_norm.cpp); Triton uses <nrm(x), x> from its normalization kernel.
    out = spectral_norm_apply(weight_mat, u, v, sigma)
        weight_mat / sigma, contiguous, weight_mat's dtype. Autograd with sigma = u^T W v a function
        of W (u, v constants, as PyTorch):
    grad_w = spectral_norm_apply_backward(grad, weight_mat, u, v, sigma)
        G / sigma - (<G, W> / sigma^2) u v^T.

Registered ops:
  torch.ops.fastgan.spectral_norm_power_iteration_ / _apply / _apply_backward
        C++ schemas (csrc/fastgan.cpp); CPU kernels (csrc/cpu/spectral_norm.cpp), CUDA kernels
        where built; fakes here; the autograd of spectral_norm_apply in C++
        (csrc/ops/spectral_norm_autograd.cpp), device-independent.
  torch.ops.fastgan.spectral_norm_group_step
        a SpectralNormGroup's training step in one C++ call (csrc/ops/spectral_norm_autograd.cpp, on
        top of the two ops above, CPU and CUDA): the power iteration on copies of u, v, then every
        layer's W / sigma in its weight's own shape, one autograd node per layer.
  torch.ops.fastgan.spectral_norm_apply_group / _backward
        CUDA only (csrc/cuda/spectral_norm_cuda.cpp): W_i / sigma_i of a group of layers of one dtype
        in one launch, its backward in two (outputs: views of one buffer); SpectralNormGroup's CUDA
        step runs them inside its own autograd node (fastgan/nn/spectral_norm.py _GroupApply).
  torch.ops.fastgan.spectral_norm_power_iteration_triton_ / spectral_norm_apply_triton / _backward
        Triton (triton_kernels/spectral_norm.py), Python custom ops with explicit fakes; the power
        iteration is multi-tensor: 4 launches per step for all layers of a call.
  torch.ops.fastgan.spectral_norm_sigma_triton
        Triton, n == 0 (eval): <u, W v> per layer with u, v only read (2 launches per call).
  torch.ops.fastgan.spectral_norm_power_iteration_functional
        what torch.compile traces instead of the mutating power-iteration ops (see there).

`power_iteration(...)` and `apply(...)` dispatch on a RESOLVED backend name ("reference" runs the
pure-PyTorch loop and u^T W v in plain autograd).
"""
from typing import List, Sequence

import torch

from ..reference import spectral_norm as ref
from ._registry import ensure_cxx, on_extension_loaded, triton_module

__all__ = ["power_iteration", "power_iteration_", "apply", "group_step", "cuda_kernels_registered"]


def _sigma_dtype(w: torch.Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def _fake_power_iteration(weight_mats, us, vs, n_power_iterations, eps, hook_order):
    return [w.new_empty((), dtype=_sigma_dtype(w)) for w in weight_mats]


def _fake_apply(weight_mat, u, v, sigma):
    return torch.empty(weight_mat.shape, dtype=weight_mat.dtype, device=weight_mat.device)


def _fake_apply_backward(grad, weight_mat, u, v, sigma):
    return torch.empty(weight_mat.shape, dtype=weight_mat.dtype, device=weight_mat.device)


def _like_weights(weight_mats):
    # The fakes' one tensor shaped as each weight (the group ops and their backwards, both backends).
    return [torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in weight_mats]


def _fake_group_step(weights, us, vs, dims, n_power_iterations, eps, hook_order):
    return (_like_weights(weights)
            + [torch.empty_like(u, memory_format=torch.contiguous_format) for u in us]
            + [torch.empty_like(v, memory_format=torch.contiguous_format) for v in vs]
            + _fake_power_iteration(weights, us, vs, n_power_iterations, eps, hook_order))


def _fake_apply_group_cuda(weight_mats, sigmas):
    return _like_weights(weight_mats)


def _fake_apply_group_backward_cuda(grads, weight_mats, us, vs, sigmas):
    return _like_weights(weight_mats)


def _setup_context(ctx, inputs, output):
    weight_mat, u, v, sigma = inputs
    # u and v must be clones owned by this graph (the caller's job): the buffers change in place at
    # the next training forward, before this one's backward (D(real) + D(fake), one backward).
    ctx.save_for_backward(weight_mat, u, v, sigma)


def _autograd(backward_op):
    def backward(ctx, grad):
        weight_mat, u, v, sigma = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[0]:
            grad_w = backward_op(grad.contiguous(), weight_mat, u, v, sigma)
        return grad_w, None, None, None

    return backward


@on_extension_loaded
def _register_cxx() -> None:
    torch.library.register_fake("fastgan::spectral_norm_power_iteration_")(_fake_power_iteration)
    torch.library.register_fake("fastgan::spectral_norm_apply")(_fake_apply)
    torch.library.register_fake("fastgan::spectral_norm_apply_backward")(_fake_apply_backward)
    # The autograd of fastgan::spectral_norm_apply is a C++ autograd kernel
    # (csrc/ops/spectral_norm_autograd.cpp; a Python wrapper costs more than the op on small layers).
    torch.library.register_fake("fastgan::spectral_norm_group_step")(_fake_group_step)
    torch.library.register_fake("fastgan::spectral_norm_apply_group")(_fake_apply_group_cuda)
    torch.library.register_fake("fastgan::spectral_norm_apply_group_backward")(_fake_apply_group_backward_cuda)
    _OPS.update(power_iteration=torch.ops.fastgan.spectral_norm_power_iteration_.default,
                apply=torch.ops.fastgan.spectral_norm_apply.default,
                group_step=torch.ops.fastgan.spectral_norm_group_step.default)


_OPS = {}  # resolved overloads: cheaper to call than the overload packets


@torch.library.custom_op("fastgan::spectral_norm_power_iteration_triton_", mutates_args=("us", "vs"))
def spectral_norm_power_iteration_triton_(weight_mats: List[torch.Tensor], us: List[torch.Tensor],
                                          vs: List[torch.Tensor], n_power_iterations: int, eps: float,
                                          hook_order: bool) -> List[torch.Tensor]:
    return triton_module("spectral_norm").power_iteration_(weight_mats, us, vs, n_power_iterations, eps, hook_order)


@torch.library.custom_op("fastgan::spectral_norm_sigma_triton", mutates_args=())
def spectral_norm_sigma_triton(weight_mats: List[torch.Tensor], us: List[torch.Tensor],
                               vs: List[torch.Tensor]) -> List[torch.Tensor]:
    """sigma = <u, W v> of every layer with u, v only READ: the eval-mode (n == 0) form. A separate
    op because the mutating op's schema says it writes u and v, and a custom op with mutates_args
    bumps their version counters on every call, so an eval-mode double forward (whose graphs saved
    u, v) failed its backward with "modified by an inplace operation" (issue 16.3)."""
    return triton_module("spectral_norm").sigma_(weight_mats, us, vs)


@torch.library.custom_op("fastgan::spectral_norm_apply_triton", mutates_args=())
def spectral_norm_apply_triton(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                               sigma: torch.Tensor) -> torch.Tensor:
    return triton_module("spectral_norm").apply(weight_mat, u, v, sigma)


@torch.library.custom_op("fastgan::spectral_norm_apply_triton_backward", mutates_args=())
def spectral_norm_apply_triton_backward(grad: torch.Tensor, weight_mat: torch.Tensor, u: torch.Tensor,
                                        v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return triton_module("spectral_norm").apply_backward(grad, weight_mat, u, v, sigma)


spectral_norm_power_iteration_triton_.register_fake(_fake_power_iteration)
spectral_norm_sigma_triton.register_fake(lambda weight_mats, us, vs: _fake_power_iteration(weight_mats, us, vs, 0,
                                                                                            1e-12, True))
spectral_norm_apply_triton.register_fake(_fake_apply)
spectral_norm_apply_triton_backward.register_fake(_fake_apply_backward)
spectral_norm_apply_triton.register_autograd(_autograd(spectral_norm_apply_triton_backward),
                                             setup_context=_setup_context)


@torch.library.custom_op("fastgan::spectral_norm_apply_group_triton", mutates_args=())
def spectral_norm_apply_group_triton(weight_mats: List[torch.Tensor], us: List[torch.Tensor], vs: List[torch.Tensor],
                                     sigmas: List[torch.Tensor]) -> List[torch.Tensor]:
    """[W_i / sigma_i for every layer] + [a snapshot of every u, v]: one launch for the whole group
    (one dtype and device), its backward two; apply_group() drops the snapshot."""
    return triton_module("spectral_norm").apply_group(weight_mats, us, vs, sigmas)


@torch.library.custom_op("fastgan::spectral_norm_apply_group_triton_backward", mutates_args=())
def spectral_norm_apply_group_triton_backward(grads: List[torch.Tensor], weight_mats: List[torch.Tensor],
                                              snapshot: torch.Tensor, sigmas: List[torch.Tensor]) -> List[torch.Tensor]:
    return triton_module("spectral_norm").apply_group_backward(grads, weight_mats, snapshot, sigmas)


@spectral_norm_apply_group_triton.register_fake
def _fake_apply_group(weight_mats, us, vs, sigmas):
    total = sum(w.shape[0] + w.shape[1] for w in weight_mats)
    return (_like_weights(weight_mats)
            + [weight_mats[0].new_empty(total, dtype=_sigma_dtype(weight_mats[0]))])


@spectral_norm_apply_group_triton_backward.register_fake
def _fake_apply_group_backward(grads, weight_mats, snapshot, sigmas):
    return _like_weights(weight_mats)


def _group_setup_context(ctx, inputs, output):
    weight_mats, _, _, sigmas = inputs
    ctx.n = len(weight_mats)
    ctx.save_for_backward(*weight_mats, *sigmas, output[-1])


def _group_backward(ctx, grads):
    saved = ctx.saved_tensors
    n = ctx.n
    weight_mats, sigmas, snapshot = list(saved[:n]), list(saved[n:2 * n]), saved[-1]
    grads = [torch.zeros_like(w) if g is None else g.contiguous() for g, w in zip(grads[:n], weight_mats)]
    grad_ws = torch.ops.fastgan.spectral_norm_apply_group_triton_backward(grads, weight_mats, snapshot, sigmas)
    return list(grad_ws), [None] * n, [None] * n, [None] * n


spectral_norm_apply_group_triton.register_autograd(_group_backward, setup_context=_group_setup_context)


def apply_group(weight_mats: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
                sigmas: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """W_i / sigma_i of every layer in one Triton launch (backward: two), u, v constants of the graph
    (snapshotted by the kernel: no clones needed). Layers of one dtype and device. fastgan.nn's
    SpectralNormGroup calls the op directly inside its own autograd node (see _TritonGroupApply)."""
    return torch.ops.fastgan.spectral_norm_apply_group_triton(list(weight_mats), list(us), list(vs),
                                                              list(sigmas))[:-1]


@torch.library.custom_op("fastgan::spectral_norm_power_iteration_functional", mutates_args=())
def spectral_norm_power_iteration_functional(weight_mats: List[torch.Tensor], us: List[torch.Tensor],
                                             vs: List[torch.Tensor], n_power_iterations: int, eps: float,
                                             hook_order: bool, triton: bool) -> List[torch.Tensor]:
    """The functional form used under torch.compile: returns us' + vs' + sigmas (new tensors) and
    leaves us, vs alone; the caller copies us', vs' into the buffers (an ordinary aten copy_).
    Why: this torch cannot functionalize a custom op that both mutates its inputs and returns a
    Tensor[] (auto_functionalize: "Not yet supported: List[Tensor] return"), so the mutating ops
    themselves run only in eager mode."""
    us2 = [u.clone() for u in us]
    vs2 = [v.clone() for v in vs]
    if triton:
        sigmas = torch.ops.fastgan.spectral_norm_power_iteration_triton_(weight_mats, us2, vs2, n_power_iterations,
                                                                          eps, hook_order)
    else:
        ensure_cxx()
        sigmas = torch.ops.fastgan.spectral_norm_power_iteration_(weight_mats, us2, vs2, n_power_iterations, eps,
                                                                  hook_order)
    return us2 + vs2 + list(sigmas)


@spectral_norm_power_iteration_functional.register_fake
def _fake_power_iteration_functional(weight_mats, us, vs, n_power_iterations, eps, hook_order, triton):
    return ([torch.empty_like(u) for u in us] + [torch.empty_like(v) for v in vs]
            + _fake_power_iteration(weight_mats, us, vs, n_power_iterations, eps, hook_order))


@torch.compiler.assume_constant_result
def cuda_kernels_registered() -> bool:
    """Whether fastgan._C carries CUDA kernels of the spectral-norm ops (csrc/cuda/spectral_norm*)."""
    if not ensure_cxx():
        return False
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return all(has("fastgan::" + name, "CUDA")
               for name in ("spectral_norm_power_iteration_", "spectral_norm_apply", "spectral_norm_apply_backward",
                            "spectral_norm_apply_group", "spectral_norm_apply_group_backward"))


def power_iteration(weight_mats: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
                    n_power_iterations: int, eps: float, order: str, backend: str) -> List[torch.Tensor]:
    """n power-iteration steps of `order` for every (W_mat, u, v), u and v updated in place; returns
    the sigmas (0-dim, see the contract above). Weight matrices should be detached."""
    hook_order = order == "hook"
    if backend == "triton" and n_power_iterations == 0:
        # Eval mode: u, v are only read, so the non-mutating op (eager and compiled alike).
        return torch.ops.fastgan.spectral_norm_sigma_triton(list(weight_mats), list(us), list(vs))
    if backend in ("triton", "cpu", "cuda") and torch.compiler.is_compiling():
        n = len(us)
        outs = torch.ops.fastgan.spectral_norm_power_iteration_functional(
            list(weight_mats), list(us), list(vs), int(n_power_iterations), float(eps), hook_order, backend == "triton")
        if n_power_iterations > 0:  # eval (n = 0): no copy, which would bump u's, v's versions
            with torch.no_grad():
                for buf, new in zip(list(us) + list(vs), outs[:2 * n]):
                    buf.copy_(new)
        return outs[2 * n:]
    if backend == "triton":
        return torch.ops.fastgan.spectral_norm_power_iteration_triton_(list(weight_mats), list(us), list(vs),
                                                                        int(n_power_iterations), float(eps), hook_order)
    if backend in ("cpu", "cuda") and ensure_cxx():
        return _OPS["power_iteration"](list(weight_mats), list(us), list(vs), int(n_power_iterations), float(eps),
                                       hook_order)
    sigmas = []
    with torch.no_grad():
        for w, u, v in zip(weight_mats, us, vs):
            ref.power_iteration_(w, u, v, n_power_iterations, eps, order)
            sigmas.append(ref.sigma(w, u, v))
    return sigmas


def group_step(weights: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
               dims: Sequence[int], n_power_iterations: int, eps: float, order: str):
    """A SpectralNormGroup's training step on the C++ backends (CPU, CUDA) in one call
    (fastgan::spectral_norm_group_step): copies of u, v stepped n >= 1 times by the multi-tensor
    power iteration (the buffers are only read), then W_i / sigma_i in each weight's shape with its
    fused backward (one node per layer). Returns (outs, us', vs', sigmas)."""
    k = len(weights)
    res = _OPS["group_step"](list(weights), list(us), list(vs), list(dims), int(n_power_iterations), float(eps),
                             order == "hook")
    return res[:k], res[k:2 * k], res[2 * k:3 * k], res[3 * k:]


def power_iteration_(weight_mats, us, vs, n_power_iterations, eps, order, backend) -> None:
    """power_iteration without the sigmas (the warm-up of the parametrization flavour)."""
    power_iteration(weight_mats, us, vs, n_power_iterations, eps, order, backend)


def apply(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
          backend: str) -> torch.Tensor:
    """weight_mat / sigma with the fused backward; u, v (and sigma) are constants of the graph and
    must not be modified in place before the backward (pass clones of the buffers)."""
    if backend == "triton":
        return torch.ops.fastgan.spectral_norm_apply_triton(weight_mat, u, v, sigma)
    if backend in ("cpu", "cuda") and ensure_cxx():
        return _OPS["apply"](weight_mat, u, v, sigma)
    return weight_mat / ref.sigma(weight_mat, u, v)
