"""cosine_similarity_matrix: S = scale * nrm(a) @ nrm(b)^T, normalization, product and scale fused.
Contract: fastgan/reference/contrastive.py:cosine_similarity_matrix (output in a's dtype).

Registered ops:
  torch.ops.fastgan.cosine_similarity_matrix / _backward          C++ (CPU, CUDA)
  torch.ops.fastgan.cosine_similarity_matrix_triton / _backward   Triton custom op
  torch.ops.fastgan.cosine_similarity_matrix_self / _backward     C++ (CPU): b is a, one backward product
"""
import torch

from ..reference import contrastive as ref
from ._registry import ensure_cxx, on_extension_loaded, triton_module


def _fake_forward(a, b, scale, eps):
    return a.new_empty((a.shape[0], b.shape[0]))


def _fake_backward(grad, a, b, scale, eps):
    return torch.empty_like(a), torch.empty_like(b)


def _setup_context(ctx, inputs, output):
    a, b, scale, eps = inputs
    ctx.save_for_backward(a, b)
    ctx.params = (scale, eps)


def _autograd(backward_op):
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga, gb = backward_op(grad.contiguous(), a, b, *ctx.params)
        return ga, gb, None, None

    return backward


@on_extension_loaded
def _register_cxx():
    torch.library.register_fake("fastgan::cosine_similarity_matrix_self")(
        lambda a, scale, eps: a.new_empty((a.shape[0], a.shape[0])))
    torch.library.register_fake("fastgan::cosine_similarity_matrix_self_backward")(
        lambda grad, a, scale, eps: torch.empty_like(a))
    # cosine_similarity_matrix_self's autograd is a C++ autograd kernel (csrc/ops/contrastive_autograd.cpp):
    # the Python wrapper of register_autograd costs ~100 us per call and step.
    torch.library.register_fake("fastgan::cosine_similarity_matrix")(_fake_forward)
    torch.library.register_fake("fastgan::cosine_similarity_matrix_backward")(_fake_backward)
    torch.library.register_autograd(
        "fastgan::cosine_similarity_matrix",
        _autograd(torch.ops.fastgan.cosine_similarity_matrix_backward),
        setup_context=_setup_context,
    )


@torch.library.custom_op("fastgan::cosine_similarity_matrix_triton", mutates_args=())
def cosine_similarity_matrix_triton(a: torch.Tensor, b: torch.Tensor, scale: float, eps: float) -> torch.Tensor:
    return triton_module("cosine_similarity_matrix").cosine_similarity_matrix_forward(a, b, scale, eps)


@torch.library.custom_op("fastgan::cosine_similarity_matrix_triton_backward", mutates_args=())
def cosine_similarity_matrix_triton_backward(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_module("cosine_similarity_matrix").cosine_similarity_matrix_backward(grad, a, b, scale, eps)


cosine_similarity_matrix_triton.register_fake(_fake_forward)
cosine_similarity_matrix_triton_backward.register_fake(_fake_backward)
cosine_similarity_matrix_triton.register_autograd(
    _autograd(cosine_similarity_matrix_triton_backward), setup_context=_setup_context
)


def cosine_similarity_matrix(a, b, scale: float, eps: float, backend: str) -> torch.Tensor:
    if backend == "reference":
        return ref.cosine_similarity_matrix(a, b, scale, eps)
    if backend == "triton":
        return torch.ops.fastgan.cosine_similarity_matrix_triton(a, b, float(scale), float(eps))
    ensure_cxx()
    if backend == "cpu" and b is a:
        return torch.ops.fastgan.cosine_similarity_matrix_self(a, float(scale), float(eps))
    return torch.ops.fastgan.cosine_similarity_matrix(a, b, float(scale), float(eps))
