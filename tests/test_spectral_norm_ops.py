"""The fused spectral-norm op fastgan::spectral_norm_power_iteration_ (CPU) against the reference
loop on odd shapes, opcheck with mutated list arguments, float64 gradcheck through the cpu backend,
and the multi-tensor group (convert_spectral_norm) against per-layer PyTorch over training steps."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastgan.functional as FG
import fastgan.nn as GN
from fastgan.ops import _registry
from fastgan.ops import spectral_norm as sn_ops
from fastgan.reference import spectral_norm as ref

pytestmark = pytest.mark.skipif(not _registry.ensure_cxx(), reason="fastgan._C is not built")

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


@pytest.mark.parametrize("hook_order", [True, False])
def test_opcheck_mutated_lists(hook_order):
    w1, u1, v1 = make((5, 3), torch.float32, 0)
    w2, u2, v2 = make((1, 7), torch.float32, 1)
    torch.library.opcheck(torch.ops.fastgan.spectral_norm_power_iteration_,
                          ([w1, w2], [u1, u2], [v1, v2], 2, 1e-12, hook_order))


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
    # Training mode: the cpu backend's output and gradient equal the reference backend's exactly.
    G = torch.randn(*shape, dtype=torch.float64)
    results = []
    for backend in ("cpu", "reference"):
        w.grad = None
        ub, vb = u.clone(), v.clone()
        out = FG.spectral_normalize(w, ub, vb, 2, 1e-12, order=order, backend=backend)
        out.backward(G)
        results.append((out.detach(), w.grad.clone(), ub, vb))
    for a, b in zip(*results):
        assert torch.equal(a, b)


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


def test_grouped_update_equals_pytorch_per_layer_with_double_forward():
    torch.manual_seed(0)
    theirs = Disc(lambda m: torch.nn.utils.spectral_norm(m, eps=1e-6))
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend="cpu")
    assert ours._fastgan_spectral_norm_layers == 4
    assert any(isinstance(h, GN.SpectralNormGroup) for h in ours._forward_pre_hooks.values())
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.05)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        real, fake = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        losses = []
        for model in (theirs, ours):
            # D(real) + D(fake) with one backward: u, v change in between.
            losses.append(F.softplus(-model(real)).mean() + F.softplus(model(fake)).mean())
        assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=1e-6), step
        for opt, loss in zip((opt_t, opt_o), losses):
            opt.zero_grad()
            loss.backward()
        for (n1, p1), (n2, p2) in zip(theirs.named_parameters(), ours.named_parameters()):
            assert n1 == n2 and torch.allclose(p1.grad, p2.grad, rtol=1e-5, atol=1e-7), (step, n1)
        opt_t.step()
        opt_o.step()
        for (n1, b1), (n2, b2) in zip(theirs.named_buffers(), ours.named_buffers()):
            assert n1 == n2 and torch.allclose(b1, b2, rtol=1e-6, atol=1e-7), (step, n1)
    # Eval mode: the group does nothing, the stored u, v are used, outputs still agree.
    theirs.eval()
    ours.eval()
    x = torch.randn(2, 3, 8, 8, generator=g)
    u_before = ours.c1.weight_u.clone()
    assert torch.allclose(theirs(x), ours(x), rtol=1e-6, atol=1e-6)
    assert torch.equal(ours.c1.weight_u, u_before)
    # A layer called on its own (outside the model forward) still updates itself.
    ours.train()
    theirs.train()
    y = torch.randn(2, 4 * 8 * 8, generator=g)
    assert torch.allclose(theirs.fc(y), ours.fc(y), rtol=1e-6, atol=1e-6)
    assert torch.allclose(theirs.fc.weight_u, ours.fc.weight_u, rtol=1e-6, atol=1e-7)


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
