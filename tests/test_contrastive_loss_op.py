"""fastgan::contrastive_loss, the CPU backend's whole-loss op (2C, D2D-CE, NT-Xent stacked, SupCon, CLIP):
values and gradients of the public functions against the float64 reference at odd sizes, N = 1 (2)
and every reduction; that the public functions take the op; opcheck; torch.compile(fullgraph=True)."""
import pytest
import torch

import fastgan.functional as F
from fastgan import reference as R

from conftest import GRAD_FLOOR, TOL, rel_err

KINDS = ["2c", "d2d", "ntxent", "supcon", "clip"]


def _inputs(kind, n, d, gen, dtype=torch.float64, classes=3):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    proxy = torch.randn(n, d, generator=gen, dtype=torch.float64) if kind in ("2c", "d2d", "clip") else None
    labels = torch.randint(0, classes, (n,), generator=gen) if kind not in ("ntxent", "clip") else None
    return x.to(dtype), (proxy.to(dtype) if proxy is not None else None), labels


def _loss(kind, module, x, proxy, labels, reduction, **kw):
    if kind == "2c":
        return module.conditional_contrastive_loss(x, proxy, labels, 0.7, reduction=reduction, **kw)
    if kind == "d2d":
        return module.data2data_cross_entropy_loss(x, proxy, labels, 0.5, 0.98, reduction=reduction, **kw)
    if kind == "ntxent":
        return module.nt_xent_loss(x, 0.5, reduction=reduction, **kw)
    if kind == "clip":  # proxy: b. t = 0.5: at N = 1 the gradient vanishes, its float32 rounding scales with 1 / t
        return module.symmetric_infonce_loss(x, proxy, 0.5, reduction=reduction, **kw)
    return module.supcon_loss(x, labels, 0.1, reduction=reduction, **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", [(1, 5), (2, 3), (37, 19), (40, 256)])  # D >= 256: the kept-scores path
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_and_gradients(kind, n, d, reduction, gen):
    if kind == "ntxent" and n % 2:
        n += 1  # two stacked views
    x, proxy, labels = _inputs(kind, n, d, gen, torch.float32)
    if kind == "supcon" and n == 2:
        # Two rows of one class have loss 0 whatever x (a vanishing gradient, float32 leaves
        # rounding); two classes are two anchors without a positive: exact zeros.
        labels = torch.tensor([0, 1])
    leaves = [t.requires_grad_() for t in (x, proxy) if t is not None]
    out = _loss(kind, F, x, proxy, labels, reduction, backend="cpu")
    assert out.dtype == torch.float32 and out.shape == ((n,) if reduction == "none" else ())
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w).sum(), leaves)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    r = _loss(kind, R, refs[0], refs[1] if proxy is not None else None, labels, reduction)
    rgrads = torch.autograd.grad((r * w).sum(), refs)
    assert rel_err(out, r) < TOL[torch.float32], (kind, out, r)
    for g, rg in zip(grads, rgrads):
        assert g.dtype == torch.float32
        assert rel_err(g, rg, GRAD_FLOOR) < TOL[torch.float32], (kind, g, rg)


@pytest.mark.parametrize("kind", KINDS)
def test_float64_half_and_single_class(kind, gen):
    # float64 in, float64 out at float64 accuracy; half in, float32 out; one class (SupCon: no
    # negatives; D2D: no other-class column, the LSE is -inf).
    for dtype, classes in ((torch.float64, 1), (torch.float16, 4)):
        x, proxy, labels = _inputs(kind, 12, 8, gen, dtype, classes)
        leaves = [t.requires_grad_() for t in (x, proxy) if t is not None]
        out = _loss(kind, F, x, proxy, labels, "mean", backend="cpu")
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        grads = torch.autograd.grad(out, leaves)
        refs = [t.detach().double().requires_grad_() for t in leaves]
        r = _loss(kind, R, refs[0], refs[1] if proxy is not None else None, labels, "mean")
        rgrads = torch.autograd.grad(r, refs)
        assert rel_err(out, r) < TOL[dtype]
        for g, rg in zip(grads, rgrads):
            assert g.dtype == dtype and rel_err(g, rg, GRAD_FLOOR) < TOL[dtype]


def test_public_functions_take_the_op(gen):
    from torch.profiler import profile

    for kind in KINDS:
        x, proxy, labels = _inputs(kind, 8, 4, gen, torch.float32)
        x.requires_grad_()
        with profile() as prof:
            _loss(kind, F, x, proxy, labels, "mean", backend="cpu").backward()
        names = {e.name for e in prof.events()}
        assert "fastgan::contrastive_loss" in names and "fastgan::contrastive_loss_backward" in names, kind


def _op_args(kind, gen, reduction, budget):
    x, proxy, labels = _inputs(kind, 6, 5, gen, torch.float32)
    return (x.requires_grad_(), proxy.requires_grad_() if proxy is not None else None, labels, kind, 0.5, 0.98, 1e-8,
            reduction, budget)


@pytest.mark.parametrize("kind", KINDS)
def test_opcheck(kind, gen):
    for reduction, budget in (("mean", 1 << 20), ("none", 0))[: 2 if kind == "2c" else 1]:
        torch.library.opcheck(torch.ops.fastgan.contrastive_loss.default, _op_args(kind, gen, reduction, budget))


@pytest.mark.parametrize("kind", ["2c", "supcon", "clip"])
def test_compile_fullgraph(kind, gen):
    x, proxy, labels = _inputs(kind, 10, 6, gen, torch.float32)
    x.requires_grad_()
    fn = torch.compile(lambda *a: _loss(kind, F, *a, "mean", backend="cpu"), fullgraph=True, backend="aot_eager")
    out = fn(x, proxy, labels)
    (g,) = torch.autograd.grad(out, [x])
    x2 = x.detach().clone().requires_grad_()
    want = _loss(kind, F, x2, proxy, labels, "mean", backend="cpu")
    (g2,) = torch.autograd.grad(want, [x2])
    assert torch.equal(out, want) and torch.equal(g, g2)


def test_clip_zero_rows(gen):
    # Zero rows of a and b: the norm clamp (CLIP's eps is on the squared norm; the op takes its
    # sqrt), a zero logit row and column.
    a, b, _ = _inputs("clip", 9, 7, gen, torch.float32)
    a[2], b[5] = 0, 0
    a.requires_grad_(), b.requires_grad_()
    for reduction in ("mean", "none"):
        out = F.symmetric_infonce_loss(a, b, 0.1, reduction=reduction, backend="cpu")
        w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        grads = torch.autograd.grad((out.double() * w).sum(), [a, b])
        refs = [t.detach().double().requires_grad_() for t in (a, b)]
        r = R.symmetric_infonce_loss(*refs, 0.1, reduction=reduction)
        rgrads = torch.autograd.grad((r * w).sum(), refs)
        assert rel_err(out, r) < TOL[torch.float32], (out, r)
        for g, rg in zip(grads, rgrads):
            assert rel_err(g, rg, GRAD_FLOOR) < TOL[torch.float32], (g, rg)


@pytest.mark.parametrize("kind", ["ntxent", "supcon", "clip"])
@pytest.mark.parametrize("path", ["from_scores", "recompute", "unbounded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_positives_from_the_scores(kind, path, dtype, gen):
    # NT-Xent's partner logits, SupCon's same-class sums and CLIP's diagonal are entries of the
    # score matrix: where the kernel keeps the scores on its bounded path they are read off it and
    # their gradient joins the score gradient ("from_scores"); with the budget at 0 ("recompute") or
    # a temperature below 1/30 (no bounded shift: "unbounded") they come from their own kernels.
    # All three against the float64 reference, with a zero row and (SupCon) a singleton class.
    from fastgan.ops.contrastive_lse import set_score_budget

    n, d = 38, 256  # D >= 256: the kept-scores path
    x, proxy, labels = _inputs(kind, n, d, gen, dtype, classes=5)
    x[3] = 0
    if labels is not None:
        labels[7] = 11  # a class of one: no positive, left out of the mean
    t = 0.02 if path == "unbounded" else {"ntxent": 0.5, "supcon": 0.1, "clip": 0.1}[kind]
    leaves = [v.requires_grad_() for v in (x, proxy) if v is not None]

    def loss(module, xs, reduction):
        if kind == "ntxent":
            return module.nt_xent_loss(xs[0], t, reduction=reduction, **kw(module))
        if kind == "clip":
            return module.symmetric_infonce_loss(xs[0], xs[1], t, reduction=reduction, **kw(module))
        return module.supcon_loss(xs[0], labels, t, reduction=reduction, **kw(module))

    kw = lambda module: {"backend": "cpu"} if module is F else {}  # noqa: E731
    old = set_score_budget(0 if path == "recompute" else 1 << 24)
    try:
        for reduction in ("mean", "none"):
            out = loss(F, leaves, reduction)
            w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
            grads = torch.autograd.grad((out.double() * w).sum(), leaves)
            refs = [v.detach().double().requires_grad_() for v in leaves]
            r = loss(R, refs, reduction)
            rgrads = torch.autograd.grad((r * w).sum(), refs)
            assert rel_err(out, r) < TOL[dtype], (kind, path, out, r)
            for g, rg in zip(grads, rgrads):
                assert rel_err(g, rg, GRAD_FLOOR) < TOL[dtype], (kind, path, rel_err(g, rg, GRAD_FLOOR))
    finally:
        set_score_budget(old)
