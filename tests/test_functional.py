"""The public losses on every backend against the reference: values, every gradient, half precision
at temperature 0.01, torch.compile(fullgraph=True), drop-in module signatures and boundary errors."""
import math

import pytest
import torch

import fastgan.functional as FG
import fastgan.nn as GN
from fastgan import reference as R
from fastgan.backend import BackendUnavailableError

from conftest import TOL, backend_device, float64_backends, gradcheck, kernel_backends, rel_err


def inputs(name, n, d, dtype, device, g, zero_row=True):
    """Positional tensor arguments and keyword arguments of each public loss."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    p = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    if n > 3 and zero_row:
        x[2] = 0  # a zero embedding
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    if name == "2c":
        return (cast(x), cast(p)), (y.to(device),), dict(temperature=0.1)
    if name == "d2d":
        return (cast(x), cast(p)), (y.to(device),), dict(temperature=0.5, m_p=0.98)
    if name == "ntxent":
        return (cast(torch.cat([x, p])),), (), dict(temperature=0.5)
    if name == "supcon":
        return (cast(x),), (y.to(device),), dict(temperature=0.1)
    if name == "clip":
        return (cast(x), cast(p)), (), dict(temperature=0.1)
    if name == "infonce":
        hw = 5
        l = torch.randn(n, d, hw, generator=g, dtype=torch.float64) / math.sqrt(d)
        m = torch.randn(n, d, 1, generator=g, dtype=torch.float64)
        return (cast(l), cast(m)), (), dict(mode="mimicry")
    if name == "infonce_exact_norm":
        l = torch.randn(n, d, 2, 3, generator=g, dtype=torch.float64)
        m = torch.randn(n, d, generator=g, dtype=torch.float64)
        return (cast(l), cast(m)), (), dict(mode="exact", temperature=0.2, normalize=True)
    raise KeyError(name)


LOSSES = {
    "2c": (FG.conditional_contrastive_loss, R.conditional_contrastive_loss),
    "d2d": (FG.data2data_cross_entropy_loss, R.data2data_cross_entropy_loss),
    "ntxent": (FG.nt_xent_loss, R.nt_xent_loss),
    "supcon": (FG.supcon_loss, R.supcon_loss),
    "clip": (FG.symmetric_infonce_loss, R.symmetric_infonce_loss),
    "infonce": (FG.infonce_local_global, R.infonce_local_global),
    "infonce_exact_norm": (FG.infonce_local_global, R.infonce_local_global),
}


def run(name, fn, tensors, labels, kw, **extra):
    if name.startswith("infonce"):
        return fn(*tensors, **kw, **extra)
    kw = dict(kw)
    pos = [kw.pop(k) for k in ("temperature", "m_p") if k in kw]
    return fn(*tensors, *labels, *pos, **kw, **extra)


def check_against_reference(name, backend, n, d, dtype, g, tol, reduction="mean"):
    device = backend_device(backend)
    tensors, labels, kw = inputs(name, n, d, dtype, device, g)
    fn, ref = LOSSES[name]
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = run(name, fn, leaves, labels, kw, reduction=reduction, backend=backend)
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in tensors]
    ref_out = run(name, ref, ref_leaves, [lab.cpu() for lab in labels], kw, reduction=reduction)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref_out) < tol, (rel_err(out, ref_out), tol)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * w.to(out)).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * w).sum(), ref_leaves)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        assert rel_err(got, want) < 5 * tol


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("n", [1, 2, 63])
def test_loss_float32(backend, name, n, gen):
    if name == "ntxent" and n == 1:
        n = 2
    check_against_reference(name, backend, n, 17, torch.float32, gen, TOL[torch.float32])


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_reduction_none(backend, name, gen):
    check_against_reference(name, backend, 10, 9, torch.float32, gen, TOL[torch.float32], reduction="none")


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("name", ["2c", "d2d", "ntxent", "supcon", "clip"])
def test_loss_half_at_temperature_001(backend, name, gen):
    """Half-precision inputs at t = 0.01: finite and within half-precision tolerance."""
    device = backend_device(backend)
    dtype = torch.float16
    # No zero row: its gradient is (1/eps) dx^ ~ 1e8, beyond half precision (in the reference too).
    tensors, labels, kw = inputs(name, 40, 33, dtype, device, gen, zero_row=False)
    kw["temperature"] = 0.01
    fn, ref = LOSSES[name]
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = run(name, fn, leaves, labels, kw, backend=backend)
    out.backward()
    ref_out = run(name, ref, [t.double().cpu() for t in tensors], [lab.cpu() for lab in labels], kw)
    assert torch.isfinite(out) and all(torch.isfinite(t.grad).all() for t in leaves)
    assert rel_err(out, ref_out) < TOL[dtype]


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("name", [k for k in LOSSES if k != "d2d"])
def test_loss_gradcheck(backend, name, gen):
    tensors, labels, kw = inputs(name, 6, 4, torch.float64, torch.device("cpu"), gen, zero_row=False)
    fn, _ = LOSSES[name]
    leaves = tuple(t.requires_grad_() for t in tensors)
    assert gradcheck(lambda *xs: run(name, fn, xs, labels, kw, backend=backend), leaves, backend)


@pytest.mark.parametrize("backend", float64_backends())
def test_d2d_gradient_float64(backend, gen):
    # D2D-CE's shift M_i is a constant in backward, so gradcheck of the whole loss does not apply:
    # compare with the reference's autograd in float64 instead (test_reference checks the latter
    # against finite differences with M_i frozen).
    check_against_reference("d2d", backend, 9, 5, torch.float64, gen, 1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_compile_fullgraph_cpu(name, gen):
    tensors, labels, kw = inputs(name, 12, 8, torch.float32, torch.device("cpu"), gen)
    fn, _ = LOSSES[name]
    leaves = [t.detach().requires_grad_() for t in tensors]

    def step(*xs):
        return run(name, fn, xs, labels, kw, backend="cpu")

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(*leaves)
    out.backward()
    eager_leaves = [t.detach().requires_grad_() for t in tensors]
    eager = step(*eager_leaves)
    eager.backward()
    assert rel_err(out, eager) < 1e-6
    for a, b in zip(leaves, eager_leaves):
        assert rel_err(a.grad, b.grad) < 1e-6


def test_compile_fullgraph_inductor_2c(gen):
    tensors, labels, kw = inputs("2c", 16, 8, torch.float32, torch.device("cpu"), gen)
    torch._dynamo.reset()
    f = torch.compile(lambda e, p: FG.conditional_contrastive_loss(e, p, labels[0], 0.1, backend="cpu"), fullgraph=True)
    out = f(*tensors)
    assert rel_err(out, R.conditional_contrastive_loss(*(t.double() for t in tensors), labels[0], 0.1)) < 1e-5


def test_studiogan_module_signatures(gen):
    e, p = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 4, (8,), generator=gen)
    cc = GN.ConditionalContrastiveLoss(4, 0.5, "cpu", False)
    assert rel_err(cc(e, p, y), R.conditional_contrastive_loss(e.double(), p.double(), y, 0.5)) < 1e-6
    d2d = GN.Data2DataCrossEntropyLoss(4, 0.5, 0.98, "cpu", False)
    assert rel_err(d2d(e, p, y), R.data2data_cross_entropy_loss(e.double(), p.double(), y, 0.5, 0.98)) < 1e-6
    with pytest.raises(ValueError, match=r"label values must lie in \[0, num_classes=4\)"):
        cc(e, p, y + 4)
    l, m = torch.randn(3, 4, 5, generator=gen), torch.randn(3, 4, 1, generator=gen)
    assert rel_err(GN.InfoNCELocalGlobal()(l, m), R.infonce_local_global(l.double(), m.double())) < 1e-6
    assert rel_err(GN.NTXentLoss(0.5)(e[:4], e[4:]), R.nt_xent_loss(e.double(), 0.5)) < 1e-6


class TestBadInput:
    e = torch.randn(6, 4)
    p = torch.randn(6, 4)
    y = torch.tensor([0, 1, 0, 1, 2, 2])

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="embed must be 2-D"):
            FG.conditional_contrastive_loss(self.e[None], self.p, self.y)

    def test_mismatched_batch(self):
        with pytest.raises(ValueError, match="proxy has 5 rows but the batch has 6"):
            FG.conditional_contrastive_loss(self.e, self.p[:5], self.y)
        with pytest.raises(ValueError, match=r"label must have shape \(6,\)"):
            FG.conditional_contrastive_loss(self.e, self.p, self.y[:4])

    def test_mismatched_features(self):
        with pytest.raises(ValueError, match="same feature size"):
            FG.conditional_contrastive_loss(self.e, self.p[:, :3], self.y)

    def test_float_labels(self):
        with pytest.raises(TypeError, match="label must hold integer class labels"):
            FG.conditional_contrastive_loss(self.e, self.p, self.y.float())

    @pytest.mark.parametrize("t", [0.0, -1.0, float("inf"), float("nan")])
    def test_bad_temperature(self, t):
        with pytest.raises(ValueError, match="temperature must be a positive finite number"):
            FG.conditional_contrastive_loss(self.e, self.p, self.y, t)

    def test_empty_batch(self):
        with pytest.raises(ValueError, match="embed is an empty batch"):
            FG.conditional_contrastive_loss(self.e[:0], self.p[:0], self.y[:0])

    def test_integer_features(self):
        with pytest.raises(TypeError, match="embed must have dtype"):
            FG.conditional_contrastive_loss(self.e.long(), self.p.long(), self.y)

    def test_mixed_dtypes_are_promoted(self):
        # Mixed precision policy (tests/test_mixed_precision.py has the rest): a float64 proxy makes
        # the whole loss float64, as PyTorch's promotion would.
        got = FG.conditional_contrastive_loss(self.e, self.p.double(), self.y)
        assert got.dtype == torch.float64
        want = R.conditional_contrastive_loss(self.e.double(), self.p.double(), self.y)
        assert abs(float(got) - float(want)) < 1e-12 * abs(float(want))

    def test_bad_reduction_and_backend(self):
        with pytest.raises(ValueError, match="reduction must be one of"):
            FG.conditional_contrastive_loss(self.e, self.p, self.y, reduction="avg")
        with pytest.raises(ValueError, match="backend must be one of"):
            FG.conditional_contrastive_loss(self.e, self.p, self.y, backend="tpu")

    def test_unavailable_backend_says_why(self):
        with pytest.raises(BackendUnavailableError, match="'cuda' backend runs on CUDA tensors"):
            FG.conditional_contrastive_loss(self.e, self.p, self.y, backend="cuda")

    def test_ntxent_odd_rows(self):
        with pytest.raises(ValueError, match="odd number of rows"):
            FG.nt_xent_loss(self.e[:5])

    def test_infonce_shapes(self):
        l, m = torch.randn(3, 4, 5), torch.randn(3, 4, 1)
        with pytest.raises(ValueError, match="same batch size"):
            FG.infonce_local_global(l, m[:2])
        with pytest.raises(ValueError, match="same feature size R"):
            FG.infonce_local_global(l, m[:, :3])
        with pytest.raises(ValueError, match="one global vector per image"):
            FG.infonce_local_global(l, torch.randn(3, 4, 2))
        with pytest.raises(ValueError, match="mode must be one of"):
            FG.infonce_local_global(l, m, mode="dim")
