"""Hardening (issue 8): the non-finite policy, bad input at the op and function boundaries, 64-bit
offsets in the CPU kernel, and bitwise determinism of every backend.

Non-finite policy: a NaN or an infinity anywhere in the features makes the loss non-finite on every
backend, exactly as on the reference path: NaN where the reference gives NaN (every normalized
loss: inf / inf), +inf where it gives +inf (the unnormalized InfoNCE's scores). Never an exception,
never a finite value. Labels are exact integers and cannot be non-finite.
"""
import math

import pytest
import torch

import fastgan.functional as FG
from fastgan import reference as R

from conftest import backend_device, kernel_backends, rel_err

LOSSES = {
    "2c": lambda x, p, y, b: FG.conditional_contrastive_loss(x, p, y, 0.1, backend=b),
    "d2d": lambda x, p, y, b: FG.data2data_cross_entropy_loss(x, p, y, backend=b),
    "ntxent": lambda x, p, y, b: FG.nt_xent_loss(torch.cat([x, p]), backend=b),
    "supcon": lambda x, p, y, b: FG.supcon_loss(x, y, backend=b),
    "clip": lambda x, p, y, b: FG.symmetric_infonce_loss(x, p, backend=b),
    "infonce": lambda x, p, y, b: FG.infonce_local_global(x.reshape(x.shape[0], -1, 2), p[:, : x.shape[1] // 2], backend=b),
}


def inputs(device, gen, n=12, d=6):
    x = torch.randn(n, d, generator=gen).to(device)
    p = torch.randn(n, d, generator=gen).to(device)
    y = torch.tensor([0, 1, 2] * (n // 3)).to(device)
    return x, p, y


@pytest.mark.parametrize("backend", ["reference"] + kernel_backends())
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_propagate_as_the_reference(backend, name, bad, gen):
    x, p, y = inputs(backend_device(backend if backend != "reference" else "cpu"), gen)
    x[3, 1] = bad
    out = LOSSES[name](x, p, y, backend).cpu()
    ref = LOSSES[name](x.cpu().double(), p.cpu().double(), y.cpu(), "reference")
    assert not torch.isfinite(ref)
    assert not torch.isfinite(out) and (torch.isnan(out) == torch.isnan(ref)) and (out == ref or torch.isnan(ref)), (out, ref)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("name", list(LOSSES))
def test_bitwise_deterministic(backend, name, gen):
    x, p, y = inputs(backend_device(backend), gen, n=66, d=10)
    runs = []
    for _ in range(2):
        xs, ps = x.clone().requires_grad_(), p.clone().requires_grad_()
        out = LOSSES[name](xs, ps, y, backend)
        out.backward()
        runs.append((out.detach(), xs.grad, ps.grad))
    for a, b in zip(*runs):
        assert (a is None and b is None) or torch.equal(a, b)


def test_labels_of_other_integer_dtypes_are_accepted(gen):
    x, p, y = inputs("cpu", gen)
    want = FG.conditional_contrastive_loss(x, p, y, backend="cpu")
    for dt in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(FG.conditional_contrastive_loss(x, p, y.to(dt), backend="cpu"), want)
    with pytest.raises(TypeError, match="integer class labels"):
        FG.conditional_contrastive_loss(x, p, y.bool(), backend="cpu")


def test_mismatched_devices_are_refused(gen):
    x, p, y = inputs("cpu", gen)
    with pytest.raises(ValueError, match="proxy is on meta but embed is on cpu"):
        FG.conditional_contrastive_loss(x, p.to("meta"), y)
    with pytest.raises(ValueError, match="label is on meta"):
        FG.conditional_contrastive_loss(x, p, y.to("meta"))


def test_empty_inputs_are_refused():
    e = torch.empty(0, 4)
    for fn in (lambda: FG.conditional_contrastive_loss(e, e, torch.empty(0, dtype=torch.long)),
               lambda: FG.supcon_loss(e, torch.empty(0, dtype=torch.long)),
               lambda: FG.symmetric_infonce_loss(e, e),
               lambda: FG.infonce_local_global(torch.empty(0, 4, 3), torch.empty(0, 4))):
        with pytest.raises(ValueError, match="empty batch"):
            fn()


@pytest.mark.parametrize("args,match", [
    (lambda a, y: (a.long(), a.long(), None, None, None, 1.0, 0.0, False, True, 1e-8, False, 0, [0]), "floating point"),
    (lambda a, y: (a, a[:, :2], None, None, None, 1.0, 0.0, False, True, 1e-8, False, 0, [0]), "same feature size"),
    (lambda a, y: (a, a, y, None, None, 1.0, 0.0, False, True, 1e-8, False, 0, [1]), "label_a and label_b"),
    (lambda a, y: (a, a, y[:3], y, None, 1.0, 0.0, False, True, 1e-8, False, 0, [1]), "label_a must have"),
    (lambda a, y: (a, a, y.float(), y.float(), None, 1.0, 0.0, False, True, 1e-8, False, 0, [1]), "1-D int64"),
    (lambda a, y: (a, a, None, None, None, 1.0, 0.0, False, True, 1e-8, False, 0, [7]), "unknown predicate"),
    (lambda a, y: (a, a, None, None, a[:2, 0], 1.0, 0.0, False, True, 1e-8, False, 0, [0]), "extra must have shape"),
    (lambda a, y: (a, a, None, None, None, 1.0, 0.0, False, True, 1e-8, False, 0, []), "1 to 3 entries"),
])
def test_cpu_op_rejects_bad_arguments_cleanly(args, match, gen):
    a = torch.randn(6, 4, generator=gen)
    y = torch.arange(6)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastgan.contrastive_lse(*args(a, y))


def test_cpu_kernel_64bit_offsets():
    """N * M > 2^31 pairs (never stored, but every index into a tile row or a partial buffer must
    be 64-bit). With D = 1 the normalized rows are +-1, so each row's LSE has a closed form."""
    n, m = 65537, 32769
    assert n * m > 2**31
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 1, generator=g)
    b = torch.randn(m, 1, generator=g)
    scale = 2.0
    lse, rowmax = torch.ops.fastgan.contrastive_lse(a, b, None, None, None, scale, 0.0, False, True, 1e-8, False, 0, [0])
    pos_b = int((b[:, 0] > 0).sum())
    same = torch.where(a[:, 0] > 0, pos_b, m - pos_b).double()
    want = torch.log(same * math.exp(scale) + (m - same) * math.exp(-scale))
    assert torch.allclose(lse[:, 0].double(), want, rtol=1e-6)
    assert torch.allclose(rowmax, torch.full((n,), scale), rtol=1e-6)


@pytest.mark.parametrize("backend", kernel_backends())
def test_labels_anywhere_in_int64(backend, gen):
    # Only equality between labels matters: labels near the int64 limits give the loss of 0, 1, 2.
    x, p, y = inputs(backend_device(backend), gen)
    big = torch.tensor([-(2**63), 2**63 - 1, 2**62], device=x.device)[y]
    want = FG.conditional_contrastive_loss(x, p, y, backend=backend)
    assert torch.equal(FG.conditional_contrastive_loss(x, p, big, backend=backend), want)
    assert torch.equal(FG.supcon_loss(x, big, backend=backend), FG.supcon_loss(x, y, backend=backend))


SMALL_T_LOSSES = {
    "2c": lambda x, p, y, t, b: FG.conditional_contrastive_loss(x, p, y, t, backend=b),
    "d2d": lambda x, p, y, t, b: FG.data2data_cross_entropy_loss(x, p, y, t, backend=b),
    "ntxent": lambda x, p, y, t, b: FG.nt_xent_loss(torch.cat([x, p]), t, backend=b),
    "supcon": lambda x, p, y, t, b: FG.supcon_loss(x, y, t, backend=b),
    "clip": lambda x, p, y, t, b: FG.symmetric_infonce_loss(x, p, t, backend=b),
    "infonce": lambda x, p, y, t, b: FG.infonce_local_global(x.reshape(x.shape[0], -1, 2), p[:, : x.shape[1] // 2],
                                                              temperature=t, normalize=True, backend=b),
}


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("name", list(SMALL_T_LOSSES))
@pytest.mark.parametrize("t", [1e-3, 1e-4])
def test_tiny_temperatures_match_the_reference(backend, name, t, gen):
    """Temperatures far below the usual 0.05-0.5: logits of size 1/t, so exp(z - lse) of the columns a
    predicate leaves out overflows (float64 too, past z - lse = 709). Those columns must drop out of
    the gradient (a select, not 0 * inf = NaN); values and gradients equal the reference's."""
    dev = backend_device(backend)
    dt = torch.float32 if dev.type == "cuda" else torch.float64
    x, p, y = (v.to(torch.float64) if v.is_floating_point() else v for v in inputs("cpu", gen, n=24, d=6))
    want_leaves = [x.clone().requires_grad_(), p.clone().requires_grad_()]
    want = SMALL_T_LOSSES[name](*want_leaves, y, t, "reference")
    want_grads = torch.autograd.grad(want, want_leaves, allow_unused=True)
    leaves = [x.to(dev, dt).requires_grad_(), p.to(dev, dt).requires_grad_()]
    got = SMALL_T_LOSSES[name](*leaves, y.to(dev), t, backend)
    grads = torch.autograd.grad(got, leaves, allow_unused=True)
    tol = 1e-10 if dt == torch.float64 else 1e-4
    assert rel_err(got, want) < tol, (got, want)
    for g, w in zip(grads, want_grads):
        assert (g is None) == (w is None)
        if w is not None:
            assert torch.isfinite(g).all() and rel_err(g, w) < tol


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("n,m", [(4, 5), (40, 300)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("extra", [False, True])
def test_contrastive_lse_nan_rows_and_columns_as_the_reference(backend, n, m, relu, extra, gen):
    """The primitive's NaN pattern equals the reference's: a NaN row (every logit NaN) gives NaN for
    every predicate, not the -inf of an empty set; a NaN column makes NaN exactly the sets holding it;
    the other values are unchanged. Column counts past the 8-wide vector paths and the tile widths."""
    from fastgan.ops.contrastive_lse import contrastive_lse

    dev = backend_device(backend)
    dt = torch.float32 if dev.type == "cuda" else torch.float64
    a = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(m, 3, generator=gen, dtype=torch.float64)
    a[1, 0] = float("nan")
    b[2, 1] = float("nan")
    la, lb = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (m,), generator=gen)
    e = torch.randn(n, generator=gen, dtype=torch.float64) if extra else None
    params = (2.0, 0.0, relu, True, 1e-8, True, 0, [0, 1, 2])
    want, _ = R.contrastive_lse(a, b, la, lb, e, *params)
    got, _ = contrastive_lse(a.to(dev, dt), b.to(dev, dt), la.to(dev), lb.to(dev),
                             e.to(dev, dt) if extra else None, *params, backend=backend)
    got = got.cpu().double()
    assert torch.isnan(want[1]).all()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    finite = ~torch.isnan(want)
    assert torch.allclose(got[finite], want[finite], rtol=1e-5)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("n,hw", [(3, 2), (7, 20)])
@pytest.mark.parametrize("self_logit", [None, -10.0])
@pytest.mark.parametrize("normalize", [False, True])
def test_infonce_lse_nan_pattern_as_the_reference(backend, n, hw, self_logit, normalize, gen):
    """infonce_lse's positives and negative log-sum-exps are NaN exactly where the reference's are: a
    NaN in m_1 (image 1's negatives are all NaN: NaN, not the -inf of an empty set) and one NaN local
    feature of image 2; every other value unchanged."""
    from fastgan.ops.infonce_lse import infonce_lse
    from fastgan.reference.infonce import infonce_lse as ref_infonce_lse

    dev = backend_device(backend)
    dt = torch.float32 if dev.type == "cuda" else torch.float64
    l = torch.randn(n, 4, hw, generator=gen, dtype=torch.float64)
    m = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    m[1, 0] = float("nan")
    l[2, 1, 0] = float("nan")
    want = ref_infonce_lse(l, m, 1.0, self_logit, normalize, 1e-12)
    got = infonce_lse(l.to(dev, dt), m.to(dev, dt), 1.0, self_logit, normalize, 1e-12, backend=backend)
    for g, w in zip(got, want):
        g = g.cpu().double()
        assert torch.equal(torch.isnan(g), torch.isnan(w)), (g, w)
        finite = ~torch.isnan(w)
        assert torch.allclose(g[finite], w[finite], rtol=1e-5)
