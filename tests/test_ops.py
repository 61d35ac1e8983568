"""Every fused backend of the contrastive_lse and cosine_similarity_matrix ops against the reference
(the specification): values and every gradient, float64 gradcheck, opcheck.

Shapes from issue 3: N in {1, 2, 63, 65, 257}, D in {1, 3, 129}; labels all equal, all distinct,
random; zero vectors; non-contiguous inputs; self exclusion with an offset; relu + bias; an extra
logit per row; non-square b (the InfoNCE layout).
"""
import itertools

import pytest
import torch

from fastgan.ops.contrastive_lse import contrastive_lse
from fastgan.ops.cosine_similarity_matrix import cosine_similarity_matrix
from fastgan.reference import contrastive as ref

from conftest import GRAD_FLOOR, TOL, backend_device, float64_backends, gradcheck, kernel_backends, rel_err

NS = [1, 2, 63, 65, 257]
DS = [1, 3, 129]

# name -> (m_of_n, extra?, scale, bias, relu, exclude_self, self_offset, predicates, labels)
CONFIGS = {
    "2c": (lambda n: n, True, 1 / 0.1, 0.0, False, True, 0, [0, 1], "random"),
    "d2d": (lambda n: n, False, 1 / 0.5, (0.98 - 1) / 0.5, True, True, 0, [2], "random"),
    "ntxent_equal_labels": (lambda n: n, False, 1 / 0.07, 0.0, False, True, 0, [0, 1, 2], "equal"),
    "distinct_offset": (lambda n: n + 5, True, 3.0, 0.25, False, True, 2, [1, 0], "distinct"),
    "infonce_rect": (lambda n: 3 * n, True, 1.0, 0.0, False, False, 0, [2], "blocks"),
}


def make_case(config, n, d, dtype, device, g, zero_rows=True, noncontig=False):
    m_of_n, has_extra, scale, bias, relu, exclude_self, offset, preds, labels = CONFIGS[config]
    m = m_of_n(n)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(m, d, generator=g, dtype=torch.float64)
    if zero_rows and n > 2:
        a[1] = 0
        b[m // 2] = 0
    if labels == "random":
        la, lb = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (m,), generator=g)
    elif labels == "equal":
        la, lb = torch.zeros(n, dtype=torch.long), torch.zeros(m, dtype=torch.long)
    elif labels == "distinct":
        la, lb = torch.arange(n), torch.arange(m) + 1000
    else:  # blocks: b's row j belongs to image j // 3
        la, lb = torch.arange(n), torch.arange(m) // 3
    extra = torch.randn(n, generator=g, dtype=torch.float64) if has_extra else None
    a, b = a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)
    if noncontig:
        a = torch.cat([a, a], dim=1)[:, ::2]
        b = b.T.contiguous().T if b.shape[1] > 1 else b.expand(m, 1)
    la, lb = la.to(device), lb.to(device)
    if extra is not None:
        extra = extra.to(device=device, dtype=ref.compute_dtype(dtype))
    params = (scale, bias, relu, True, 1e-8, exclude_self, offset, preds)
    return a, b, la, lb, extra, params


def reference_and_grads(a, b, la, lb, extra, params, weights):
    """Reference forward in float64 and gradients of sum(lse * weights)."""
    a64 = a.detach().double().cpu().requires_grad_()
    b64 = b.detach().double().cpu().requires_grad_()
    e64 = extra.detach().double().cpu().requires_grad_() if extra is not None else None
    lse, rowmax = ref.contrastive_lse(a64, b64, la.cpu(), lb.cpu(), e64, *params)
    loss = (torch.where(torch.isfinite(lse), lse, 0) * weights.double()).sum()
    grads = torch.autograd.grad(loss, [t for t in (a64, b64, e64) if t is not None], allow_unused=True)
    return lse, rowmax, grads


def backend_and_grads(backend, a, b, la, lb, extra, params, weights):
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    e = extra.detach().requires_grad_() if extra is not None else None
    lse, rowmax = contrastive_lse(a, b, la, lb, e, *params, backend=backend)
    loss = (torch.where(torch.isfinite(lse), lse, 0) * weights.to(lse)).sum()
    grads = torch.autograd.grad(loss, [t for t in (a, b, e) if t is not None], allow_unused=True)
    return lse, rowmax, grads


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("n,d", list(itertools.product(NS, DS)))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_contrastive_lse_float32(backend, n, d, config, gen):
    if backend == "triton" and n * d > 65 * 129 and config not in ("2c", "infonce_rect"):
        n = 65  # the interpreter is slow: the largest sizes run for the two main layouts only
    device = backend_device(backend)
    a, b, la, lb, extra, params = make_case(config, n, d, torch.float32, device, gen, noncontig=(d == 3))
    weights = torch.rand(n, len(params[-1]), generator=gen)
    r_lse, r_max, r_grads = reference_and_grads(a, b, la, lb, extra, params, weights)
    lse, rowmax, grads = backend_and_grads(backend, a, b, la, lb, extra, params, weights)
    assert lse.dtype == torch.float32 and rowmax.dtype == torch.float32
    assert lse.shape == r_lse.shape and rowmax.shape == r_max.shape
    assert rel_err(lse, r_lse) < TOL[torch.float32]
    assert rel_err(rowmax, r_max) < TOL[torch.float32]
    for got, want in zip(grads, r_grads):
        assert got.dtype in (torch.float32,)
        assert rel_err(got, want, GRAD_FLOOR) < 1e-4  # gradients accumulate over N terms: still well under 1e-4


def half_cases():
    # Triton's CPU interpreter computes bfloat16 wrongly (a known interpreter limit): bfloat16 Triton
    # runs only where a GPU is present.
    for backend in kernel_backends():
        for dtype in (torch.float16, torch.bfloat16):
            if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
                continue
            yield backend, dtype


@pytest.mark.parametrize("backend,dtype", list(half_cases()))
@pytest.mark.parametrize("config", ["2c", "d2d", "infonce_rect"])
def test_contrastive_lse_half(backend, dtype, config, gen):
    device = backend_device(backend)
    n, d = 65, 129
    # No zero rows here: a zero vector's gradient is (1/eps) * dx^ ~ 1e8, beyond half precision's range
    # in the reference too.
    a, b, la, lb, extra, params = make_case(config, n, d, dtype, device, gen, zero_rows=False)
    # Temperature 0.01 in half precision: no overflow, no NaN.
    params = (100.0,) + params[1:]
    weights = torch.rand(n, len(params[-1]), generator=gen)
    r_lse, r_max, r_grads = reference_and_grads(a, b, la, lb, extra, params, weights)
    lse, rowmax, grads = backend_and_grads(backend, a, b, la, lb, extra, params, weights)
    assert lse.dtype == torch.float32
    assert torch.isfinite(lse).all() and all(torch.isfinite(g).all() for g in grads)
    assert rel_err(lse, r_lse) < TOL[dtype]
    for got, want in zip(grads, r_grads):
        assert got.dtype == (dtype if got.shape != (n,) else torch.float32)
        assert rel_err(got, want, GRAD_FLOOR) < 2 * TOL[dtype]


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("config", list(CONFIGS))
def test_contrastive_lse_gradcheck(backend, config, gen):
    # No zero rows: x / max(||x||, eps) has a kink at ||x|| = eps that finite differences step across.
    a, b, la, lb, extra, params = make_case(config, 7, 5, torch.float64, torch.device("cpu"), gen, zero_rows=False)
    inputs = [a.requires_grad_(), b.requires_grad_()] + ([extra.requires_grad_()] if extra is not None else [])

    def f(*xs):
        e = xs[2] if extra is not None else None
        lse, _ = contrastive_lse(xs[0], xs[1], la, lb, e, *params, backend=backend)
        return torch.where(torch.isfinite(lse), lse, 0)

    assert gradcheck(f, inputs, backend, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", float64_backends())  # no float64 on CUDA
def test_contrastive_lse_float64_matches_reference(backend, gen):
    a, b, la, lb, extra, params = make_case("2c", 33, 17, torch.float64, torch.device("cpu"), gen)
    lse, rowmax = contrastive_lse(a, b, la, lb, extra, *params, backend=backend)
    r_lse, r_max = ref.contrastive_lse(a, b, la, lb, extra, *params)
    assert lse.dtype == torch.float64
    assert rel_err(lse, r_lse) < 1e-12 and rel_err(rowmax, r_max) < 1e-12


def test_contrastive_lse_opcheck(gen):
    for config in CONFIGS:
        a, b, la, lb, extra, params = make_case(config, 9, 6, torch.float32, torch.device("cpu"), gen)
        args = (a.requires_grad_(), b.requires_grad_(), la, lb,
                extra.requires_grad_() if extra is not None else None) + params
        torch.library.opcheck(torch.ops.fastgan.contrastive_lse.default, args)
        torch.library.opcheck(torch.ops.fastgan.contrastive_lse_triton.default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_contrastive_lse_same_tensor_gradients_add(gen):
    """b is a: the gradients of the two paths add (autograd sums them)."""
    a = torch.randn(20, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (20,), generator=gen)
    params = (2.0, 0.0, False, True, 1e-8, True, 0, [0, 1])
    lse, _ = contrastive_lse(a, a, y, y, None, *params, backend="cpu")
    (g,) = torch.autograd.grad(lse.sum(), a)
    r_lse, _ = ref.contrastive_lse(a, a, y, y, None, *params)
    (rg,) = torch.autograd.grad(r_lse.sum(), a)
    assert rel_err(g, rg) < 1e-12


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (2, 3, 3), (65, 63, 129), (257, 130, 3)])
def test_cosine_similarity_matrix(backend, n, m, d, gen):
    device = backend_device(backend)
    a = torch.randn(n, d, generator=gen)
    b = torch.randn(m, d, generator=gen)
    a[0] = 0  # a zero vector gives a zero row, never NaN
    a, b = a.to(device), b.to(device)
    if d > 1:
        a = torch.cat([a, a], 1)[:, ::2]  # non-contiguous
    gout = torch.randn(n, m, generator=gen).to(device)
    a64, b64 = a.double().cpu().requires_grad_(), b.double().cpu().requires_grad_()
    r = ref.cosine_similarity_matrix(a64, b64, 3.0, 1e-8)
    rga, rgb = torch.autograd.grad(r, [a64, b64], gout.double().cpu())
    aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
    s = cosine_similarity_matrix(aa, bb, 3.0, 1e-8, backend)
    ga, gb = torch.autograd.grad(s, [aa, bb], gout)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    assert torch.equal(s[0].cpu(), torch.zeros(m))
    assert rel_err(s, r) < TOL[torch.float32]
    assert rel_err(ga, rga) < 1e-4 and rel_err(gb, rgb) < 1e-4


@pytest.mark.parametrize("backend", float64_backends())
def test_cosine_similarity_matrix_gradcheck(backend, gen):
    a = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, y: cosine_similarity_matrix(x, y, 0.7, 1e-8, backend), (a, b), backend)


def test_cosine_similarity_matrix_opcheck(gen):
    a = torch.randn(6, 4, generator=gen, requires_grad=True)
    b = torch.randn(5, 4, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.cosine_similarity_matrix.default, (a, b, 2.0, 1e-8))
    torch.library.opcheck(torch.ops.fastgan.cosine_similarity_matrix_triton.default, (a, b, 2.0, 1e-8),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
