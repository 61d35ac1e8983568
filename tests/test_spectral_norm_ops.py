"""The fused spectral-norm ops (fastgan::spectral_norm_power_iteration_ returning sigma,
fastgan::spectral_norm_apply and its fused backward; C++ on the CPU and Triton) against the reference
on odd shapes, half/bfloat16 weights with float32 u, v, sigma = u^T W v after the update, opcheck of
every op, float64 gradcheck of spectral_norm_apply, and the multi-tensor group (convert_spectral_norm)
against per-layer PyTorch over training steps."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import GRAD_FLOOR, TOL, backend_device, float64_backends, kernel_backends, rel_err

import fastgan.functional as FG
import fastgan.nn as GN
from fastgan.ops import spectral_norm as sn_ops
from fastgan.reference import spectral_norm as ref

# No skip when fastgan._C is missing: these run on any CPU, so a missing build fails them (with the
# loader's reason) instead of hiding them as skipped.

SHAPES = [(1, 1), (1, 7), (7, 1), (65, 4609), (5, 3)]


def make(shape, dtype, seed=0, zero=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(*shape, dtype=dtype) if zero else torch.randn(*shape, generator=g, dtype=dtype)
    u = F.normalize(torch.randn(shape[0], generator=g, dtype=dtype), dim=0)
    v = F.normalize(torch.randn(shape[1], generator=g, dtype=dtype), dim=0)
    return w, u, v


@pytest.mark.parametrize("order", ref.ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3])
def test_cpu_op_equals_reference(order, dtype, n):
    for i, shape in enumerate(SHAPES):
        for zero in (False, True):  # a zero W exercises the eps branch (||x|| < eps)
            w, u, v = make(shape, dtype, seed=i, zero=zero)
            u_ref, v_ref = u.clone(), v.clone()
            sn_ops.power_iteration_([w], [u], [v], n, 1e-12, order, "cpu")
            ref.power_iteration_(w, u_ref, v_ref, n, 1e-12, order)
            # The same ATen ops in the same order: bitwise equal, not just close.
            assert torch.equal(u, u_ref) and torch.equal(v, v_ref), (shape, zero)


def test_multi_tensor_call_equals_per_layer_calls():
    layers = [make(s, torch.float32, seed=i) for i, s in enumerate(SHAPES)]
    # A strided (dim=1, ConvTranspose-like) matrix too.
    wt = torch.randn(4, 6, 3, 3)
    layers.append((ref.weight_to_matrix(wt, 1), F.normalize(torch.randn(6), dim=0),
                   F.normalize(torch.randn(36), dim=0)))
    one = [(w, u.clone(), v.clone()) for w, u, v in layers]
    sn_ops.power_iteration_([w for w, _, _ in layers], [u for _, u, _ in layers], [v for _, _, v in layers], 2,
                            1e-6, "hook", "cpu")
    for w, u, v in one:
        sn_ops.power_iteration_([w], [u], [v], 2, 1e-6, "hook", "cpu")
    for (_, u1, v1), (_, u2, v2) in zip(layers, one):
        assert torch.equal(u1, u2) and torch.equal(v1, v2)


# opcheck's aot_dispatch tests functionalize the op; this torch cannot auto-functionalize a custom op
# that mutates inputs AND returns Tensor[] ("Not yet supported: List[Tensor] return"), which is why
# torch.compile traces fastgan::spectral_norm_power_iteration_functional instead (opchecked in full).
MUTATING_OP_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("hook_order", [True, False])
def test_opcheck_power_iteration(backend, hook_order):
    dev = backend_device(backend)
    w1, u1, v1 = (t.to(dev) for t in make((5, 3), torch.float32, 0))
    w2, u2, v2 = (t.to(dev) for t in make((1, 7), torch.float32, 1))
    op = (torch.ops.fastgan.spectral_norm_power_iteration_triton_ if backend == "triton"
          else torch.ops.fastgan.spectral_norm_power_iteration_)
    for n in (0, 2):
        args = ([w1, w2], [u1, u2], [v1, v2], n, 1e-12, hook_order)
        torch.library.opcheck(op, args, test_utils=MUTATING_OP_CHECKS)
        torch.library.opcheck(torch.ops.fastgan.spectral_norm_power_iteration_functional,
                              args + (backend == "triton",))


@pytest.mark.parametrize("backend", kernel_backends())
def test_opcheck_apply_and_backward(backend):
    dev = backend_device(backend)
    w, u, v = (t.to(dev) for t in make((6, 4), torch.float32, 0))
    sigma = ref.sigma(w, u, v)
    apply_op, backward_op = ((torch.ops.fastgan.spectral_norm_apply_triton,
                              torch.ops.fastgan.spectral_norm_apply_triton_backward) if backend == "triton" else
                             (torch.ops.fastgan.spectral_norm_apply, torch.ops.fastgan.spectral_norm_apply_backward))
    torch.library.opcheck(apply_op, (w.requires_grad_(), u, v, sigma))
    torch.library.opcheck(backward_op, (torch.randn(6, 4, device=dev), w.detach(), u, v, sigma))


def _reference_step(w, u, v, n, eps, order):
    """The reference in float64 from the same inputs: updated u, v, and sigma = u^T W v."""
    w64, u64, v64 = w.double(), u.double().clone(), v.double().clone()
    ref.power_iteration_(w64, u64, v64, n, eps, order)
    return u64, v64, ref.sigma(w64, u64, v64)


# 65x4609 (a 65-channel 3x3 conv over 512 inputs, odd everywhere) on the C++ kernel; the Triton
# interpreter runs the same code path on 65x257.
def _shapes(backend):
    return [(1, 1), (1, 7), (7, 1), (65, 257)] + ([(65, 4609)] if backend == "cpu" else [])


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("order", ref.ORDERS)
@pytest.mark.parametrize("n", [0, 2])
def test_backend_against_reference(backend, order, n):
    dev = backend_device(backend)
    tol = TOL[torch.float32]
    for i, shape in enumerate(_shapes(backend)):
        w, u, v = (t.to(dev) for t in make(shape, torch.float32, seed=10 + i))
        u64, v64, sigma64 = _reference_step(w, u, v, n, 1e-12, order)
        (sigma,) = sn_ops.power_iteration([w], [u], [v], n, 1e-12, order, backend)
        assert sigma.shape == () and sigma.dtype == torch.float32
        assert rel_err(u, u64) < tol and rel_err(v, v64) < tol, shape
        assert rel_err(sigma, sigma64) < tol, shape
        # sigma is u^T W v with the u, v AFTER the update (computed here by another pass, in float64).
        assert rel_err(sigma, torch.dot(u.double(), torch.mv(w.double(), v.double()))) < tol, shape
        # apply and its fused backward against the reference autograd of W / (u^T W v).
        wr = w.clone().requires_grad_()
        out = sn_ops.apply(wr, u.clone(), v.clone(), sigma, backend)
        assert out.shape == w.shape and out.dtype == w.dtype and out.is_contiguous()
        w64 = w.double().requires_grad_()
        out64 = w64 / ref.sigma(w64, u.double(), v.double())
        assert rel_err(out, out64) < tol, shape
        G = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).to(dev)
        out.backward(G)
        out64.backward(G.double())
        assert rel_err(wr.grad, w64.grad, floor=GRAD_FLOOR) < tol, shape  # 1x1: the gradient vanishes


@pytest.mark.parametrize("backend", kernel_backends())
def test_strided_weight_and_zero_weight(backend):
    dev = backend_device(backend)
    # A transposed (non-contiguous) W_mat and a zero W (||x|| < eps: u = x / eps, sigma = 0).
    base, u, v = (t.to(dev) for t in make((9, 5), torch.float32, 3))
    w = base.t()  # (5, 9), strides (1, 5)
    u, v = v.clone(), u.clone()
    u64, v64, sigma64 = _reference_step(w, u, v, 2, 1e-6, "hook")
    (sigma,) = sn_ops.power_iteration([w], [u], [v], 2, 1e-6, "hook", backend)
    assert rel_err(u, u64) < TOL[torch.float32] and rel_err(sigma, sigma64) < TOL[torch.float32]
    assert rel_err(sn_ops.apply(w, u, v, sigma, backend), w.double() / sigma64) < TOL[torch.float32]
    wz, uz, vz = (t.to(dev) for t in make((4, 3), torch.float32, 4, zero=True))
    (sz,) = sn_ops.power_iteration([wz], [uz], [vz], 1, 1e-6, "parametrization", backend)
    assert sz.item() == 0.0 and torch.all(uz == 0) and torch.all(vz == 0)


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 3)])
def test_apply_gradcheck_float64(backend, shape):
    w, u, v = make(shape, torch.float64, 5)
    sigma = ref.sigma(w, u, v)
    w.requires_grad_()
    # sigma is u^T W v of the W being differentiated; the op takes it as a precomputed input, so the
    # function checked recomputes it from x (detached, as the power iteration op returns it).
    assert torch.autograd.gradcheck(
        lambda x: sn_ops.apply(x, u, v, ref.sigma(x.detach(), u, v), backend), (w,))
    # And the fused backward formula itself against float64 autograd of the reference.
    G = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = sn_ops.apply(w, u, v, sigma, backend)
    (gw,) = torch.autograd.grad(got, w, G)
    (gr,) = torch.autograd.grad(w / ref.sigma(w, u, v), w, G)
    assert rel_err(gw, gr, floor=GRAD_FLOOR) < TOL[torch.float64]


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("order", ref.ORDERS)
def test_float64_power_iteration(backend, order):
    w, u, v = make((7, 5), torch.float64, 6)
    u64, v64, sigma64 = _reference_step(w, u, v, 3, 1e-12, order)
    (sigma,) = sn_ops.power_iteration([w], [u], [v], 3, 1e-12, order, backend)
    assert sigma.dtype == torch.float64
    for got, want in ((u, u64), (v, v64), (sigma, sigma64)):
        assert rel_err(got, want) < TOL[torch.float64]


# The Triton interpreter computes wrong bfloat16 values: bfloat16 on the CPU kernel only.
LOW_PRECISION = [("cpu", torch.float16), ("cpu", torch.bfloat16), ("triton", torch.float16)]


@pytest.mark.parametrize("backend,dtype", LOW_PRECISION)
@pytest.mark.parametrize("order", ref.ORDERS)
def test_low_precision_weight_float32_uv(backend, dtype, order):
    dev = backend_device(backend)
    w32, u, v = (t.to(dev) for t in make((9, 13), torch.float32, 7))
    w = w32.to(dtype)
    # Math in float32 on the exactly converted weight: float32 accuracy for u, v and sigma.
    u64, v64, sigma64 = _reference_step(w.float(), u, v, 2, 1e-6, order)
    (sigma,) = sn_ops.power_iteration([w], [u], [v], 2, 1e-6, order, backend)
    assert u.dtype == torch.float32 and sigma.dtype == torch.float32
    for got, want in ((u, u64), (v, v64), (sigma, sigma64)):
        assert rel_err(got, want) < TOL[torch.float32]
    wr = w.clone().requires_grad_()
    out = sn_ops.apply(wr, u, v, sigma, backend)
    assert out.dtype == dtype
    assert rel_err(out, w.double() / sigma64) < TOL[dtype]
    G = torch.randn(9, 13, generator=torch.Generator().manual_seed(2)).to(dev).to(dtype)
    out.backward(G)
    w64 = w.double().requires_grad_()
    (w64 / ref.sigma(w64, u.double(), v.double())).backward(G.double())
    assert wr.grad.dtype == dtype and rel_err(wr.grad, w64.grad) < TOL[dtype]


@pytest.mark.parametrize("backend", kernel_backends())
def test_multi_tensor_call_equals_per_layer_calls_with_sigmas(backend):
    dev = backend_device(backend)
    layers = [tuple(t.to(dev) for t in make(s, torch.float32, seed=i)) for i, s in enumerate(SHAPES[:4] + [(5, 3)])]
    one = [(w, u.clone(), v.clone()) for w, u, v in layers]
    sig_multi = sn_ops.power_iteration([w for w, _, _ in layers], [u for _, u, _ in layers],
                                       [v for _, _, v in layers], 2, 1e-6, "parametrization", backend)
    for (w, u, v), s in zip(one, sig_multi):
        (s1,) = sn_ops.power_iteration([w], [u], [v], 2, 1e-6, "parametrization", backend)
        assert torch.equal(s, s1)
    for (_, u1, v1), (_, u2, v2) in zip(layers, one):
        assert torch.equal(u1, u2) and torch.equal(v1, v2)


@pytest.mark.parametrize("flavour", ["hook", "parametrization"])
def test_triton_backend_module_matches_reference_over_steps(flavour):
    # fastgan.nn end to end on the Triton ops (interpreter): a small SN linear layer trained for a
    # few steps, double forward with one backward, against the reference backend.
    torch.manual_seed(0)
    ours = GN.spectral_norm(torch.nn.Linear(6, 4), flavour=flavour, backend="triton")
    torch.manual_seed(0)
    theirs = GN.spectral_norm(torch.nn.Linear(6, 4), flavour=flavour, backend="reference")
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        a, b = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
        lo = ours(a).square().mean() + ours(b).abs().mean()
        lt = theirs(a).square().mean() + theirs(b).abs().mean()
        assert rel_err(lo, lt) < TOL[torch.float32]
        opt_o.zero_grad()
        opt_t.zero_grad()
        lo.backward()
        lt.backward()
        for po, pt in zip(ours.parameters(), theirs.parameters()):
            assert rel_err(po.grad, pt.grad) < TOL[torch.float32]
        opt_o.step()
        opt_t.step()
    ours.eval()
    theirs.eval()
    x = torch.randn(3, 6, generator=g)
    assert rel_err(ours(x), theirs(x)) < TOL[torch.float32]


def test_op_rejects_mismatched_sizes():
    w, u, v = make((5, 3), torch.float32)
    with pytest.raises(RuntimeError, match="must have 3 entries"):
        torch.ops.fastgan.spectral_norm_power_iteration_([w], [u], [torch.randn(4)], 1, 1e-12, True)
    with pytest.raises(RuntimeError, match="same length"):
        torch.ops.fastgan.spectral_norm_power_iteration_([w], [u, u], [v], 1, 1e-12, True)


@pytest.mark.parametrize("order", ref.ORDERS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (4, 6)])
def test_cpu_backend_gradcheck_float64(order, shape):
    w, u, v = make(shape, torch.float64, 3)
    w.requires_grad_()
    # u, v are constants for autograd, so the numerical gradient is taken with them fixed (eval).
    assert torch.autograd.gradcheck(
        lambda x: FG.spectral_normalize(x, u, v, 2, 1e-12, order=order, training=False, backend="cpu"), (w,))
    # Training mode: the cpu backend's u, v, sigma and so W / sigma equal the reference backend's
    # exactly (the same ATen gemv/norm/dot); the fused backward G / s + c u v^T sums <G, W> in its own
    # order (one reduction instead of autograd's elementwise chain), so its gradient agrees to float64
    # rounding.
    G = torch.randn(*shape, dtype=torch.float64)
    results = []
    for backend in ("cpu", "reference"):
        w.grad = None
        ub, vb = u.clone(), v.clone()
        out = FG.spectral_normalize(w, ub, vb, 2, 1e-12, order=order, backend=backend)
        out.backward(G)
        results.append((out.detach(), ub, vb, w.grad.clone()))
    for a, b in zip(results[0][:3], results[1][:3]):
        assert torch.equal(a, b)
    assert rel_err(results[0][3], results[1][3], floor=GRAD_FLOOR) < TOL[torch.float64]


def test_compile_fullgraph_functional_cpu_backend():
    w, u, v = make((6, 4), torch.float32, 2)
    u2, v2 = u.clone(), v.clone()
    torch._dynamo.reset()
    fn = torch.compile(lambda w, u, v: FG.spectral_normalize(w, u, v, 1, 1e-12, backend="cpu"), fullgraph=True,
                       backend="aot_eager")
    out = fn(w, u, v)
    expected = ref.spectral_normalize(w, u2, v2, 1, 1e-12)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(u, u2) and torch.equal(v, v2)  # the in-place update survived compilation


class Disc(torch.nn.Module):
    def __init__(self, sn):
        super().__init__()
        self.c1 = sn(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.c2 = sn(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.up = sn(torch.nn.ConvTranspose2d(8, 4, 2, stride=2))
        self.fc = sn(torch.nn.Linear(4 * 8 * 8, 1))

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), 0.1)
        h = F.leaky_relu(self.c2(h), 0.1)
        h = F.leaky_relu(self.up(h), 0.1)
        return self.fc(h.flatten(1))


# u and v are unit vectors, so the rounding of their entries is relative to the norm 1, not to each
# entry: float32 entries near zero differ from PyTorch's in the last bit of 1.0 (measured at most 0.9
# eps after four steps with one thread, where MKL's single-threaded gemv rounds differently). float64
# shows that the numerics are PyTorch's (at most 0.4 eps).
_UNIT_ATOL = {torch.float32: 4 * torch.finfo(torch.float32).eps, torch.float64: 4 * torch.finfo(torch.float64).eps}
_RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_update_equals_pytorch_per_layer_with_double_forward(dtype):
    torch.manual_seed(0)
    theirs = Disc(lambda m: torch.nn.utils.spectral_norm(m, eps=1e-6)).to(dtype)
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend="cpu")
    rtol = _RTOL[dtype]
    assert ours._fastgan_spectral_norm_layers == 4
    assert any(isinstance(h, GN.SpectralNormGroup) for h in ours._forward_pre_hooks.values())
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.05)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        real = torch.randn(2, 3, 8, 8, generator=g).to(dtype)
        fake = torch.randn(2, 3, 8, 8, generator=g).to(dtype)
        losses = []
        for model in (theirs, ours):
            # D(real) + D(fake) with one backward: u, v change in between.
            losses.append(F.softplus(-model(real)).mean() + F.softplus(model(fake)).mean())
        assert torch.allclose(losses[0], losses[1], rtol=rtol, atol=rtol), step
        for opt, loss in zip((opt_t, opt_o), losses):
            opt.zero_grad()
            loss.backward()
        for (n1, p1), (n2, p2) in zip(theirs.named_parameters(), ours.named_parameters()):
            assert n1 == n2 and torch.allclose(p1.grad, p2.grad, rtol=10 * rtol, atol=0.1 * rtol), (step, n1)
        opt_t.step()
        opt_o.step()
        for (n1, b1), (n2, b2) in zip(theirs.named_buffers(), ours.named_buffers()):
            assert n1 == n2 and torch.allclose(b1, b2, rtol=rtol, atol=_UNIT_ATOL[dtype]), (step, n1)
    # Eval mode: the group does nothing, the stored u, v are used, outputs still agree.
    theirs.eval()
    ours.eval()
    x = torch.randn(2, 3, 8, 8, generator=g).to(dtype)
    u_before = ours.c1.weight_u.clone()
    assert torch.allclose(theirs(x), ours(x), rtol=rtol, atol=rtol)
    assert torch.equal(ours.c1.weight_u, u_before)
    # A layer called on its own (outside the model forward) still updates itself.
    ours.train()
    theirs.train()
    y = torch.randn(2, 4 * 8 * 8, generator=g).to(dtype)
    assert torch.allclose(theirs.fc(y), ours.fc(y), rtol=rtol, atol=rtol)
    assert torch.allclose(theirs.fc.weight_u, ours.fc.weight_u, rtol=rtol, atol=_UNIT_ATOL[dtype])


def test_grouped_model_deepcopy_and_compile_fullgraph():
    torch.manual_seed(0)
    theirs = Disc(lambda m: torch.nn.utils.spectral_norm(m))
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs))
    clone = copy.deepcopy(ours)
    theirs_at_copy = copy.deepcopy(theirs)
    group = next(iter(clone._forward_pre_hooks.values()))
    assert isinstance(group, GN.SpectralNormGroup) and group.entries[0][0] is clone.c1  # points into the copy
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        assert torch.allclose(compiled(x), theirs(x), rtol=1e-5, atol=1e-6)
        assert torch.allclose(ours.c1.weight_u, theirs.c1.weight_u, rtol=1e-6, atol=1e-7)
    # The copy's buffers and group are its own: unchanged by the runs above, it steps like PyTorch.
    assert not torch.equal(clone.c1.weight_u, ours.c1.weight_u)
    assert torch.allclose(clone(x), theirs_at_copy(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(clone.c1.weight_u, theirs_at_copy.c1.weight_u, rtol=1e-6, atol=1e-7)


def _sn_layer(kind, flavour, backend, dtype, dev):
    torch.manual_seed(0)
    base = torch.nn.Linear(7, 5) if kind == "linear" else torch.nn.Conv2d(3, 4, 3)
    return GN.spectral_norm(base.to(dev, dtype), flavour=flavour, backend=backend)


@pytest.mark.parametrize("backend", ["reference"] + kernel_backends())
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
@pytest.mark.parametrize("flavour", ["hook", "parametrization"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_double_forward_one_backward_train_and_eval(backend, kind, flavour, training, dtype):
    # y = sn(x).sum() - sn(0.5 x).sum(); y.backward(): in eval mode the Triton op used to declare a
    # write of u, v even with no step, so the first graph's saved u, v "had been modified by an
    # inplace operation" (issue 16.3). Against the reference backend, gradients included.
    if dtype == torch.float64 and backend not in float64_backends() + ["reference"]:
        pytest.skip(f"{backend} has no float64 kernels on this machine")
    dev = backend_device(backend)
    layers = [_sn_layer(kind, flavour, b, dtype, dev) for b in (backend, "reference")]
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 7, generator=g) if kind == "linear" else torch.randn(2, 3, 6, 5, generator=g)).to(dev, dtype)
    results = []
    for layer in layers:
        layer.train(training)
        y = layer(x).sum() - layer(0.5 * x).square().sum()
        y.backward()
        results.append((y.detach(), [p.grad for p in layer.parameters()], [b.clone() for b in layer.buffers()]))
    (y0, g0, b0), (y1, g1, b1) = results
    assert rel_err(y0, y1) < TOL[dtype]
    for a, b in zip(g0, g1):
        assert rel_err(a, b) < TOL[dtype]
    for a, b in zip(b0, b1):
        assert rel_err(a, b) < TOL[dtype]


@pytest.mark.parametrize("backend", ["reference"] + kernel_backends())
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("flavour", ["hook", "parametrization"])
def test_double_forward_under_compile(backend, training, flavour):
    dev = backend_device(backend)
    ours, theirs = (_sn_layer("conv2d", flavour, b, torch.float32, dev) for b in (backend, "reference"))
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(2)).to(dev)

    def forward(layer):
        return layer(x).sum() - layer(0.5 * x).square().sum()

    torch._dynamo.reset()
    ours.train(training)
    theirs.train(training)
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")  # the backward runs compiled too
    for _ in range(2):
        y_ours, y_theirs = compiled(ours), forward(theirs)
        y_ours.backward()
        y_theirs.backward()
        assert rel_err(y_ours, y_theirs) < TOL[torch.float32]
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert rel_err(a.grad, b.grad) < TOL[torch.float32]
        for a, b in zip(ours.buffers(), theirs.buffers()):  # u, v
            assert rel_err(a, b) < TOL[torch.float32]
