"""Triton-specific tests of triton_kernels/ (contrastive_lse, cosine_similarity_matrix): sizes at
and around the tile edges, other block-size configurations, float64 gradcheck in the interpreter,
half precision at temperature 0.01, empty sets, and the registered custom ops (opcheck).
Broad shape/config coverage against the reference for every backend lives in test_ops.py."""
import pytest
import torch

from fastgan.ops._registry import triton_module
from fastgan.reference import contrastive as ref

from conftest import GRAD_FLOOR, TOL, backend_device, rel_err

DEV = backend_device("triton")
CLSE = triton_module("contrastive_lse")
CSM = triton_module("cosine_similarity_matrix")


def _case(n, m, d, dtype, g, labels="random", extra=True, zero=True):
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(m, d, generator=g, dtype=torch.float64)
    # Zero vectors (not in half: their gradient is 1/eps times the incoming one, beyond half's range).
    # A zero vector is a kink of max(||x||, eps): finite differences (gradcheck) cannot cross it.
    zero = zero and dtype != torch.float16
    if n > 2 and zero:
        a[1] = 0
    if m > 3 and zero:
        b[m // 2] = 0
    if labels == "random":
        la, lb = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (m,), generator=g)
    elif labels == "equal":
        la, lb = torch.zeros(n, dtype=torch.long), torch.zeros(m, dtype=torch.long)
    else:
        la, lb = None, None
    e = torch.randn(n, generator=g, dtype=torch.float64) if extra else None
    ct = ref.compute_dtype(dtype)
    a, b = a.to(DEV, dtype), b.to(DEV, dtype)
    la = la.to(DEV) if la is not None else None
    lb = lb.to(DEV) if lb is not None else None
    e = e.to(DEV, ct) if e is not None else None
    return a, b, la, lb, e


def _check_lse(a, b, la, lb, e, params, g, tol, triton_fn=None):
    """Values and every gradient of the kernel wrappers vs the float64 reference."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (a, b)]
    e_leaf = e.detach().clone().requires_grad_(True) if e is not None else None
    lse, rowmax = torch.ops.fastgan.contrastive_lse_triton(leaves[0], leaves[1], la, lb, e_leaf, *params)
    r64 = [t.detach().double().requires_grad_(True) for t in (a, b)]
    e64 = e.detach().double().requires_grad_(True) if e is not None else None
    rlse, rrowmax = ref.contrastive_lse(r64[0], r64[1], la, lb, e64, *params)
    assert lse.dtype == ref.compute_dtype(a.dtype) and rowmax.dtype == lse.dtype
    assert rel_err(lse, rlse) < tol
    assert rel_err(rowmax, rrowmax) < tol
    w = torch.randn(rlse.shape, generator=g, dtype=torch.float64)
    w = torch.where(torch.isfinite(rlse), w, torch.zeros_like(w))
    torch.autograd.backward(lse, w.to(lse))
    (rlse.double().where(torch.isfinite(rlse), torch.zeros_like(rlse)) * w).sum().backward()
    for out, want in zip(leaves, r64):
        assert out.grad.dtype == out.dtype
        assert torch.isfinite(out.grad).all()
        assert rel_err(out.grad, want.grad, GRAD_FLOOR) < tol
    if e is not None:
        assert e_leaf.grad.dtype == e.dtype
        assert rel_err(e_leaf.grad, e64.grad, GRAD_FLOOR) < tol


# Sizes straddling the 32-row/column tiles and the 16/32/64 D slices.
@pytest.mark.parametrize("n,m,d", [(31, 33, 15), (32, 32, 16), (33, 31, 17), (64, 65, 64), (1, 97, 65), (70, 1, 33)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_contrastive_lse_tile_edges(n, m, d, dtype, gen):
    a, b, la, lb, e = _case(n, m, d, dtype, gen)
    params = (4.0, 0.1, False, True, 1e-8, True, 1, [0, 1, 2])
    _check_lse(a, b, la, lb, e, params, gen, TOL[dtype])


@pytest.mark.parametrize("blocks", [(16, 16, 16), (16, 64, 32), (64, 16, 128)])
@pytest.mark.parametrize("relu", [False, True])
def test_contrastive_lse_block_variants(blocks, relu, gen, monkeypatch):
    monkeypatch.setattr(CLSE, "_blocks", lambda d: blocks)
    a, b, la, lb, e = _case(47, 53, 37, torch.float32, gen)
    params = (5.0, -0.3, relu, True, 1e-8, True, -2, [2, 0])
    _check_lse(a, b, la, lb, e, params, gen, TOL[torch.float32])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("labels,preds", [(None, [0]), ("random", [1]), ("equal", [2, 1, 0])])
def test_contrastive_lse_labels_and_empty_sets(normalize, labels, preds, gen):
    # "equal" labels make every PRED_DIFF set empty: -inf without extra, zero gradient, no NaN.
    a, b, la, lb, e = _case(40, 40, 9, torch.float32, gen, labels=labels, extra=False)
    params = (2.0 if normalize else 0.3, 0.0, False, normalize, 1e-8, True, 0, preds)
    _check_lse(a, b, la, lb, e, params, gen, TOL[torch.float32])


def test_contrastive_lse_fp16_temperature_001(gen):
    # scale 100 with half inputs: logits up to +-100, exp would overflow half and a naive float32 sum.
    a, b, la, lb, e = _case(65, 65, 129, torch.float16, gen)
    a[3] = b[5]  # an exactly aligned pair: logit = 100
    params = (100.0, 0.0, False, True, 1e-8, True, 0, [0, 1])
    _check_lse(a, b, la, lb, e, params, gen, TOL[torch.float16])


def test_contrastive_lse_noncontiguous(gen):
    a, b, la, lb, e = _case(37, 41, 20, torch.float32, gen)
    a = torch.cat([a, a], dim=1)[:, ::2]
    b = b.T.contiguous().T
    assert not a.is_contiguous() and not b.is_contiguous()
    params = (3.0, 0.0, True, True, 1e-8, True, 3, [0, 2])
    _check_lse(a, b, la, lb, e, params, gen, TOL[torch.float32])


@pytest.mark.slow  # finite differences through the Triton interpreter
@pytest.mark.parametrize("relu,extra", [(False, True), (True, False)])
def test_contrastive_lse_gradcheck(relu, extra, gen):
    # D = 3 rather than 5: the same single partial tile (blocks are >= 16) and label sets, 40% fewer
    # finite differences (sizes where a set is empty give -inf outputs that finite differences cannot take).
    a, b, la, lb, e = _case(9, 11, 3, torch.float64, gen, extra=extra, zero=False)
    a, b = a.requires_grad_(), b.requires_grad_()
    inputs = (a, b) + ((e.requires_grad_(),) if extra else ())

    def f(*xs):
        ee = xs[2] if extra else None
        return torch.ops.fastgan.contrastive_lse_triton(xs[0], xs[1], la, lb, ee, 2.0, 0.1, relu, True, 1e-8,
                                                       True, 1, [0, 1])[0]

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_contrastive_lse_opcheck(gen):
    a, b, la, lb, e = _case(33, 35, 7, torch.float32, gen)
    args = (a.requires_grad_(), b.requires_grad_(), la, lb, e.requires_grad_(), 2.0, 0.0, False, True, 1e-8, True,
            0, [0, 1])
    torch.library.opcheck(torch.ops.fastgan.contrastive_lse_triton.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (31, 33, 15), (33, 65, 17), (64, 32, 129)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_cosine_similarity_matrix_tile_edges(n, m, d, dtype, gen):
    a, b, _, _, _ = _case(n, m, d, dtype, gen, extra=False)
    a, b = a.requires_grad_(), b.requires_grad_()
    s = torch.ops.fastgan.cosine_similarity_matrix_triton(a, b, 3.0, 1e-8)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    r = ref.cosine_similarity_matrix(a64, b64, 3.0, 1e-8)
    assert s.dtype == a.dtype and s.shape == (n, m)
    assert rel_err(s, r) < TOL[dtype]
    gout = torch.randn(n, m, generator=gen, dtype=torch.float64)
    s.backward(gout.to(s))
    r.backward(gout)
    assert rel_err(a.grad, a64.grad, GRAD_FLOOR) < TOL[dtype]
    assert rel_err(b.grad, b64.grad, GRAD_FLOOR) < TOL[dtype]


def test_cosine_similarity_matrix_self_and_noncontig(gen):
    # b is a (both normalization paths add) and non-contiguous.
    x = torch.randn(40, 2 * 19, generator=gen, dtype=torch.float64).to(DEV)[:, ::2].requires_grad_()
    s = torch.ops.fastgan.cosine_similarity_matrix_triton(x, x, 2.0, 1e-8)
    x64 = x.detach().clone().requires_grad_()
    r = ref.cosine_similarity_matrix(x64, x64, 2.0, 1e-8)
    assert rel_err(s, r) < TOL[torch.float64]
    g = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    s.backward(g)
    r.backward(g)
    assert rel_err(x.grad, x64.grad, GRAD_FLOOR) < TOL[torch.float64]


@pytest.mark.slow  # finite differences and opcheck through the Triton interpreter
def test_cosine_similarity_matrix_gradcheck_opcheck(gen):
    a, b, _, _, _ = _case(7, 6, 5, torch.float64, gen, extra=False, zero=False)
    a, b = a.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: torch.ops.fastgan.cosine_similarity_matrix_triton(x, y, 1.5, 1e-8), (a, b), eps=1e-6, atol=1e-7)
    torch.library.opcheck(torch.ops.fastgan.cosine_similarity_matrix_triton.default, (a.float(), b.float(), 2.0, 1e-8),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
