"""fastgan::contrastive_lse_budget (CPU): save the N x M scores or recompute them, by a memory
budget; b-is-a (one gradient product) and both-directions (columns) variants. Both paths against the
float64 reference, values and every gradient; the policy's boundary; determinism; opcheck; compile.
"""
import itertools

import pytest
import torch

import fastgan.ops.contrastive_lse as ops
from fastgan.ops.contrastive_lse import contrastive_lse, contrastive_lse_both
from fastgan.reference import contrastive as ref

from conftest import GRAD_FLOOR, TOL, rel_err
from test_ops import CONFIGS, make_case

BIG = 1 << 40  # every test size keeps its scores
BUDGETS = {"recompute": 0, "saved": BIG}


@pytest.fixture
def budget():
    """set_score_budget, with the wrappers' feature-size floor lifted (small test features would
    always recompute)."""
    old, floor = ops.get_score_budget(), ops.MIN_SAVE_FEATURES
    ops.MIN_SAVE_FEATURES = 0
    yield ops.set_score_budget
    ops.set_score_budget(old)
    ops.MIN_SAVE_FEATURES = floor


def test_wrapper_feature_floor(gen, budget):
    """The wrapper keeps the scores only from MIN_SAVE_FEATURES features on (and within the budget)."""
    budget(BIG)
    ops.MIN_SAVE_FEATURES = 256
    for d, keep in ((255, False), (256, True)):
        assert (ops._budget_for(torch.empty(3, d)) > 0) == keep


def run_budget(a, b, la, lb, extra, params, b_is_a, columns, nbytes):
    """b_is_a: b = None, the op's self-similarity form (b is a, label_b is label_a)."""
    ops.ensure_cxx()
    return torch.ops.fastgan.contrastive_lse_budget(a, None if b_is_a else b, la, la if b_is_a else lb, extra,
                                                    *params, columns, nbytes)


def grads_of(outs, weights, inputs):
    loss = (torch.where(torch.isfinite(outs), outs, 0) * weights.to(outs)).sum()
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def square_config(config):
    return CONFIGS[config][0](10) == 10  # b may be a only where M = N


@pytest.mark.parametrize("path", list(BUDGETS))
@pytest.mark.parametrize("n,d", [(1, 3), (2, 1), (63, 3), (65, 129), (257, 17)])
@pytest.mark.parametrize("config,b_is_a", [(c, s) for c in CONFIGS for s in (False, True) if not s or square_config(c)])
def test_rows(path, n, d, config, b_is_a, gen):
    for dtype, tol in ((torch.float32, TOL[torch.float32]), (torch.float64, TOL[torch.float64])):
        a, b, la, lb, extra, params = make_case(config, n, d, dtype, torch.device("cpu"), gen, noncontig=(d == 3))
        if b_is_a:
            b, lb = a, la
        a = a.detach().requires_grad_()
        b = a if b_is_a else b.detach().requires_grad_()
        e = extra.detach().requires_grad_() if extra is not None else None
        weights = torch.rand(n, len(params[-1]), generator=gen)
        lse, rowmax, scores = run_budget(a, b, la, lb, e, params, b_is_a, False, BUDGETS[path])
        assert scores.shape == ((n, n if b_is_a else b.shape[0]) if path == "saved" else (0,))
        inputs = [t for t in ((a,) if b_is_a else (a, b)) + ((e,) if e is not None else ())]
        got = grads_of(lse, weights, inputs)
        a64 = a.detach().double().requires_grad_()
        b64 = a64 if b_is_a else b.detach().double().requires_grad_()
        e64 = extra.detach().double().requires_grad_() if extra is not None else None
        r_lse, r_max = ref.contrastive_lse(a64, b64, la, lb, e64, *params)
        want = grads_of(r_lse, weights, [t for t in ((a64,) if b_is_a else (a64, b64)) + ((e64,) if e64 is not None else ())])
        assert lse.dtype == ref.compute_dtype(dtype)
        assert rel_err(lse, r_lse) < tol and rel_err(rowmax, r_max) < tol
        for g, w in zip(got, want):
            assert g.dtype == (dtype if g.dim() == 2 else lse.dtype)
            assert rel_err(g, w, GRAD_FLOOR) < (1e-4 if dtype == torch.float32 else tol)


@pytest.mark.parametrize("path", list(BUDGETS))
@pytest.mark.parametrize("config", ["2c", "d2d", "distinct_offset", "infonce_rect"])
@pytest.mark.parametrize("n,d", [(1, 4), (37, 5), (130, 33)])
def test_columns(path, config, n, d, gen):
    """lse rows [N, N + M) are the columns' LSEs: the reference with a, b (and labels) swapped and the
    self offset negated."""
    for dtype, tol in ((torch.float32, TOL[torch.float32]), (torch.float64, TOL[torch.float64])):
        a, b, la, lb, _, params = make_case(config, n, d, dtype, torch.device("cpu"), gen)
        a, b = a.requires_grad_(), b.requires_grad_()
        m = b.shape[0]
        lse, _, _ = run_budget(a, b, la, lb, None, params, False, True, BUDGETS[path])
        assert lse.shape == (n + m, len(params[-1]))
        weights = torch.rand(n + m, len(params[-1]), generator=gen)
        got = grads_of(lse, weights, [a, b])
        a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        swapped = params[:6] + (-params[6],) + params[7:]
        rows, _ = ref.contrastive_lse(a64, b64, la, lb, None, *params)
        cols, _ = ref.contrastive_lse(b64, a64, lb, la, None, *swapped)
        r_lse = torch.cat([rows, cols])
        want = grads_of(r_lse, weights, [a64, b64])
        assert rel_err(lse, r_lse) < tol
        for g, w in zip(got, want):
            assert rel_err(g, w, GRAD_FLOOR) < (1e-4 if dtype == torch.float32 else tol)


@pytest.mark.parametrize("path", list(BUDGETS))
@pytest.mark.parametrize("n,m,d", [(1, 2, 4), (37, 50, 5), (70, 70, 33)])
@pytest.mark.parametrize("scale,bias", [(1 / 0.07, 0.0), (-3.0, 0.5), (40.0, 0.0)])
def test_columns_clip(path, n, m, d, scale, bias, gen):
    """The CLIP configuration (all columns, normalized rows, no relu, no self exclusion, no extra), b
    apart and b = None: while 2|scale| <= 60 the saved path shares one shift c = |scale| + bias
    between rows and columns and keeps exp(z - c) (contrastive_lse.cpp:bounded_both); scale 40 is
    beyond that range (the general saved path). Values, rowmax and both gradients. (Not N = M = 1 with b = a:
    there the gradient of cos(a, a) vanishes and float32 leaves a residue of scale * eps.)"""
    params = (scale, bias, False, True, 1e-8, False, 0, [0])
    for dtype, tol in ((torch.float32, TOL[torch.float32]), (torch.float64, TOL[torch.float64])):
        for b_is_a in (False, True) if n == m else (False,):
            a64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
            b64 = a64 if b_is_a else torch.randn(m, d, generator=gen, dtype=torch.float64)
            if n > 2:
                a64[1] = 0
            a = a64.to(dtype).requires_grad_()
            b = a if b_is_a else b64.to(dtype).requires_grad_()
            lse, rowmax, scores = run_budget(a, b, None, None, None, params, b_is_a, True, BUDGETS[path])
            assert scores.shape == ((n, m) if path == "saved" else (0,))
            weights = torch.rand(n + m, 1, generator=gen)
            inputs = [a] if b_is_a else [a, b]
            got = grads_of(lse, weights, inputs)
            x64 = a.detach().double().requires_grad_()
            y64 = x64 if b_is_a else b.detach().double().requires_grad_()
            rows, r_max = ref.contrastive_lse(x64, y64, None, None, None, *params)
            cols, _ = ref.contrastive_lse(y64, x64, None, None, None, *params)
            want = grads_of(torch.cat([rows, cols]), weights, [x64] if b_is_a else [x64, y64])
            assert rel_err(lse, torch.cat([rows, cols])) < tol and rel_err(rowmax, r_max) < tol
            for g, w in zip(got, want):
                assert rel_err(g, w, GRAD_FLOOR) < (1e-4 if dtype == torch.float32 else tol)


def test_policy_boundary():
    """The scores are kept exactly when N * M * sizeof(compute dtype) <= budget, in the kernel and in
    the fake kernel (the two must agree for torch.compile)."""
    a, b = torch.randn(12, 5), torch.randn(7, 5)
    params = (2.0, 0.0, False, True, 1e-8, False, 0, [0])
    for nbytes, keep in ((12 * 7 * 4, True), (12 * 7 * 4 - 1, False), (0, False)):
        _, _, scores = run_budget(a, b, None, None, None, params, False, False, nbytes)
        assert scores.shape == ((12, 7) if keep else (0,))
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fa, fb = mode.from_tensor(a), mode.from_tensor(b)
            _, _, fake = torch.ops.fastgan.contrastive_lse_budget(fa, fb, None, None, None, *params, False, nbytes)
        assert tuple(fake.shape) == tuple(scores.shape)
    _, _, s64 = run_budget(a.double(), b.double(), None, None, None, params, False, False, 12 * 7 * 4)
    assert s64.shape == (0,)  # float64 scores take 8 bytes each


def test_columns_refuse_extra():
    a = torch.randn(6, 3)
    params = (2.0, 0.0, False, True, 1e-8, True, 0, [0])
    ops.ensure_cxx()
    with pytest.raises(RuntimeError, match="extra"):
        torch.ops.fastgan.contrastive_lse_budget(a, a, None, None, torch.zeros(6), *params, True, BIG)


def test_set_score_budget_checks(budget):
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="nbytes"):
            ops.set_score_budget(bad)
    before = ops.get_score_budget()
    assert budget(123) == before and ops.get_score_budget() == 123


@pytest.mark.parametrize("path", list(BUDGETS))
def test_deterministic(path, gen, budget):
    """Same bits run after run (a given thread count), values and gradients."""
    budget(BUDGETS[path])
    a, _, la, _, extra, params = make_case("2c", 300, 40, torch.float32, torch.device("cpu"), gen)
    b = torch.randn(200, 40, generator=gen)
    outs = []
    for _ in range(3):
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        l1, _ = contrastive_lse(x, x, la, la, extra, *params, backend="cpu")
        r, c = contrastive_lse_both(x, y, 3.0, True, 1e-6, backend="cpu")
        loss = l1.sum() + r.sum() + 0.5 * c.sum()
        gx, gy = torch.autograd.grad(loss, [x, y])
        outs.append((l1, r, c, gx, gy))
    for o in outs[1:]:
        assert all(torch.equal(p, q) for p, q in zip(o, outs[0]))


@pytest.mark.parametrize("path", list(BUDGETS))
def test_opcheck(path, gen):
    for config, b_is_a, columns in itertools.product(CONFIGS, (False, True), (False, True)):
        if b_is_a and not square_config(config):
            continue
        a, b, la, lb, extra, params = make_case(config, 9, 6, torch.float32, torch.device("cpu"), gen)
        if columns:
            extra = None
        a = a.requires_grad_()
        b = None if b_is_a else b.requires_grad_()
        args = (a, b, la, la if b_is_a else lb, extra.requires_grad_() if extra is not None else None) + params
        torch.library.opcheck(torch.ops.fastgan.contrastive_lse_budget.default, args + (columns, BUDGETS[path]))


@pytest.mark.parametrize("path", list(BUDGETS))
def test_compile_fullgraph(path, gen, budget):
    budget(BUDGETS[path])
    from fastgan.functional import conditional_contrastive_loss, symmetric_infonce_loss

    e, p = torch.randn(40, 16, generator=gen), torch.randn(40, 16, generator=gen)
    y = torch.randint(0, 4, (40,), generator=gen)

    def f(e, p):
        return conditional_contrastive_loss(e, p, y, 0.5, backend="cpu") + symmetric_infonce_loss(e, p, 0.2, backend="cpu")

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    outs = []
    for fn in (f, compiled):
        x, q = e.detach().requires_grad_(), p.detach().requires_grad_()
        loss = fn(x, q)
        outs.append((loss,) + torch.autograd.grad(loss, [x, q]))
    for got, want in zip(outs[1], outs[0]):
        assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("n,d", [(1, 3), (2, 1), (65, 129), (130, 7), (600, 9)])
def test_cosine_self(n, d, gen):
    """cosine_similarity_matrix(a) (b is a): the one-product backward of fastgan::cosine_similarity_matrix_self,
    and from N = 512 the half product of the forward (N = 600: blocks of 256 and a ragged last one).
    The incoming gradient in three layouts, all read through their strides: contiguous, transposed
    (s.t() weighted) and the expanded scalar of s.sum()."""
    from fastgan.functional import cosine_similarity_matrix

    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, TOL[torch.float64])):
        a = torch.randn(n, d, generator=gen, dtype=dtype)
        if n > 2:
            a[1] = 0
        a = a.requires_grad_()
        w = torch.randn(n, n, generator=gen, dtype=dtype)  # not symmetric: both sides of the gradient count
        s = cosine_similarity_matrix(a, scale=3.0, backend="cpu")
        a64 = a.detach().double().requires_grad_()
        r = ref.cosine_similarity_matrix(a64, a64, 3.0, 1e-8)
        assert s.dtype == dtype and rel_err(s, r) < tol
        weighings = [lambda x, w: (x * w).sum(), lambda x, w: (x.t() * w).sum(), lambda x, w: x.sum()]
        # N = 1: S = scale cos(a, a) is constant, its gradient a float32 residue; one weighing suffices.
        for weigh in weighings if n > 1 else weighings[:1]:
            (g,) = torch.autograd.grad(weigh(s, w), a, retain_graph=True)
            (rg,) = torch.autograd.grad(weigh(r, w.double()), a64, retain_graph=True)
            assert rel_err(g, rg, GRAD_FLOOR) < tol
    a = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: cosine_similarity_matrix(x, scale=0.7, backend="cpu"), (a,))
    torch.library.opcheck(torch.ops.fastgan.cosine_similarity_matrix_self.default,
                          (torch.randn(9, 4, requires_grad=True), 2.0, 1e-8))


@pytest.mark.parametrize("config", ["2c", "d2d"])
def test_rows_blocked_self_product(config, gen):
    """N >= 512 with b is a: the saved forward multiplies only the upper block triangle of A A^T
    and mirrors it (N = 600: blocks of 256 and a ragged last one)."""
    n, d = 600, 9
    a, _, la, _, extra, params = make_case(config, n, d, torch.float64, torch.device("cpu"), gen)
    a = a.requires_grad_()
    e = extra.detach().requires_grad_() if extra is not None else None
    weights = torch.rand(n, len(params[-1]), generator=gen, dtype=torch.float64)
    lse, rowmax, scores = run_budget(a, None, la, la, e, params, True, False, BIG)
    assert scores.shape == (n, n)
    a64 = a.detach().clone().requires_grad_()
    r_lse, r_max = ref.contrastive_lse(a64, a64, la, la, e, *params)
    assert rel_err(lse, r_lse) < TOL[torch.float64] and rel_err(rowmax, r_max) < TOL[torch.float64]
    (g,) = grads_of(lse, weights, [a])
    (rg,) = grads_of(r_lse, weights, [a64])
    assert rel_err(g, rg, GRAD_FLOOR) < TOL[torch.float64]


@pytest.mark.parametrize("path", list(BUDGETS))
def test_columns_nan_pattern(path, gen):
    """A NaN row of a or b: the LSEs it reaches are NaN in both directions, as the reference's."""
    a, b = torch.randn(9, 4, generator=gen, dtype=torch.float64), torch.randn(7, 4, generator=gen, dtype=torch.float64)
    a[2, 1] = float("nan")
    b[5, 0] = float("nan")
    params = (2.0, 0.0, False, True, 1e-8, True, 1, [0])
    lse, _, _ = run_budget(a, b, None, None, None, params, False, True, BUDGETS[path])
    rows, _ = ref.contrastive_lse(a, b, None, None, None, *params)
    cols, _ = ref.contrastive_lse(b, a, None, None, None, *(params[:6] + (-1,) + params[7:]))
    want = torch.cat([rows, cols])
    assert torch.equal(torch.isnan(lse), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert rel_err(lse[ok], want[ok]) < TOL[torch.float64]
