"""fastgan::spectral_norm_group_step, the grouped training step of SpectralNormGroup in one C++ call
(power iteration on copies of u, v, then W / sigma of every layer in its weight's shape, one autograd
node per layer), against the per-layer ops and the float64 reference; and the backward of
spectral_norm_apply with an expanded (stride-0) gradient, read without being materialized."""
import pytest
import torch
import torch.nn.functional as F

from conftest import backend_device, rel_err

from fastgan.ops import spectral_norm as sn_ops
from fastgan.reference import spectral_norm as ref

# (weight shape, dim): a conv (dim 0), a ConvTranspose (dim 1), a linear, a 1 x n and an n x 1 matrix.
LAYERS = [((6, 3, 3, 3), 0), ((3, 5, 2, 2), 1), ((7, 9), 0), ((1, 33), 0), ((17, 1), 0)]


def _layers(dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ws, us, vs, dims = [], [], [], []
    for shape, dim in LAYERS:
        w = torch.randn(*shape, generator=g, dtype=torch.float64)
        h = shape[dim]
        us.append(F.normalize(torch.randn(h, generator=g, dtype=torch.float64), dim=0).to(device, dtype))
        vs.append(F.normalize(torch.randn(w.numel() // h, generator=g, dtype=torch.float64), dim=0).to(device, dtype))
        ws.append(w.to(device, dtype).requires_grad_())
        dims.append(dim)
    return ws, us, vs, dims


def _reference(w, u, v, dim):
    """float64: one hook-order step from (u, v), then W / sigma with u, v constants (plain autograd)."""
    w64 = w.detach().double().requires_grad_()
    u64, v64 = u.double().clone(), v.double().clone()
    ref.power_iteration_(ref.weight_to_matrix(w64.detach(), dim), u64, v64, 1, 1e-12, "hook")
    return w64, u64, v64, w64 / ref.sigma(ref.weight_to_matrix(w64, dim), u64, v64)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_group_step_equals_reference_values_and_gradients(dtype, tol):
    ws, us, vs, dims = _layers(dtype)
    u0, v0 = [u.clone() for u in us], [v.clone() for v in vs]
    outs, us2, vs2, sigmas = sn_ops.group_step(ws, us, vs, dims, 1, 1e-12, "hook")
    assert all(torch.equal(a, b) for a, b in zip(us + vs, u0 + v0))  # the caller's u, v are only read
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in ws]
    # Layer 0 gets the gradient of a sum (an expanded scalar), the others dense gradients.
    loss = 2.5 * outs[0].float().sum() + sum((o.double() * gr).sum() for o, gr in zip(outs[1:], grads[1:]))
    loss.backward()
    for i, (w, u, v, dim) in enumerate(zip(ws, u0, v0, dims)):
        w64, u64, v64, out64 = _reference(w, u, v, dim)
        assert outs[i].shape == w.shape and outs[i].dtype == w.dtype and outs[i].is_contiguous()
        assert rel_err(outs[i], out64) < tol, (i, rel_err(outs[i], out64))
        assert rel_err(us2[i], u64) < tol and rel_err(vs2[i], v64) < tol, i
        assert rel_err(sigmas[i], ref.sigma(ref.weight_to_matrix(w64.detach(), dim), u64, v64)) < tol, i
        (out64 * (torch.full_like(out64, 2.5) if i == 0 else grads[i])).sum().backward()
        assert rel_err(w.grad, w64.grad) < 10 * tol, (i, rel_err(w.grad, w64.grad))


def test_group_step_is_the_per_layer_ops_bitwise():
    # float32: the same power iteration and apply kernels as the per-layer path, so the same bits.
    ws, us, vs, dims = _layers(torch.float32)
    outs, us2, vs2, sigmas = sn_ops.group_step(ws, us, vs, dims, 2, 1e-12, "hook")
    for i, (w, u, v, dim) in enumerate(zip(ws, us, vs, dims)):
        u1, v1 = u.clone(), v.clone()
        w_mat = ref.weight_to_matrix(w.detach(), dim)
        s1 = sn_ops.power_iteration([w_mat], [u1], [v1], 2, 1e-12, "hook", "cpu")[0]
        out1 = sn_ops.apply(ref.weight_to_matrix(w, dim), u1, v1, s1, "cpu")
        assert torch.equal(us2[i], u1) and torch.equal(vs2[i], v1) and torch.equal(sigmas[i], s1), i
        assert torch.equal(ref.weight_to_matrix(outs[i], dim), out1), i
        gr = torch.randn(w.shape)
        (g_group,) = torch.autograd.grad(outs[i], w, gr)
        (g_layer,) = torch.autograd.grad(out1, w, ref.weight_to_matrix(gr, dim))
        assert torch.equal(g_group, g_layer), i


def test_group_step_one_node_per_layer_and_no_grad():
    ws, us, vs, dims = _layers(torch.float32)
    outs = sn_ops.group_step(ws, us, vs, dims, 1, 1e-12, "hook")[0]
    assert len({o.grad_fn for o in outs}) == len(outs)  # separate graphs: one backward frees one layer's only
    outs[0].sum().backward()
    outs[1].sum().backward()
    assert ws[0].grad is not None and ws[1].grad is not None and ws[2].grad is None
    with torch.no_grad():
        assert not any(o.requires_grad for o in sn_ops.group_step(ws, us, vs, dims, 1, 1e-12, "hook")[0])


def test_apply_backward_reads_expanded_gradient():
    # The gradient of a sum reaches spectral_norm_apply_backward as an expanded scalar (every stride
    # 0): read as one value, the same as the materialized gradient to rounding (a dot of sum(W)).
    g = torch.Generator().manual_seed(3)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-14)):
        w = torch.randn(65, 130, generator=g, dtype=dtype)
        u, v = F.normalize(torch.randn(65, generator=g, dtype=dtype), dim=0), F.normalize(
            torch.randn(130, generator=g, dtype=dtype), dim=0)
        sigma = ref.sigma(w, u, v)
        expanded = torch.tensor(-1.75, dtype=dtype).expand(65, 130)
        op = torch.ops.fastgan.spectral_norm_apply_backward
        got = op(expanded, w, u, v, sigma)
        want = op(expanded.contiguous(), w, u, v, sigma)
        w64 = w.double().requires_grad_()
        (w64 / ref.sigma(w64, u.double(), v.double())).backward(expanded.double())
        assert rel_err(got, w64.grad) < tol and rel_err(got, want) < tol, (dtype, rel_err(got, w64.grad))


@pytest.mark.parametrize("backend", [b for b in ("cpu", "cuda") if b == "cpu" or torch.cuda.is_available()])
def test_opcheck_group_step(backend):
    dev = backend_device(backend)
    ws, us, vs, dims = _layers(torch.float32, dev)
    # Not test_aot_dispatch: the op runs the in-place power iteration on its own copies of u, v, which
    # this torch cannot functionalize (Tensor[] return, see MUTATING_OP_CHECKS in
    # test_spectral_norm_ops.py); the group runs eagerly only (under torch.compile every layer steps itself).
    torch.library.opcheck(torch.ops.fastgan.spectral_norm_group_step, (ws[:3], us[:3], vs[:3], dims[:3], 1, 1e-12, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_group_step_rejects_bad_arguments():
    ws, us, vs, dims = _layers(torch.float32)
    with pytest.raises(RuntimeError, match="dims\\[1\\]"):
        sn_ops.group_step(ws[:2], us[:2], vs[:2], [0, 4], 1, 1e-12, "hook")
    with pytest.raises(RuntimeError, match="same length"):
        sn_ops.group_step(ws[:2], us[:1], vs[:2], dims[:2], 1, 1e-12, "hook")
    with pytest.raises(RuntimeError, match="us\\[1\\] must have 5 entries"):
        sn_ops.group_step(ws[:2], [us[0], vs[1]], vs[:2], dims[:2], 1, 1e-12, "hook")


class _Small(torch.nn.Module):
    def __init__(self, sn):
        super().__init__()
        self.a = sn(torch.nn.Linear(5, 6))
        self.b = sn(torch.nn.ConvTranspose2d(6, 3, 1))  # W_mat over dim 1
        self.skipped = sn(torch.nn.Linear(3, 4))

    def forward(self, x):
        return self.b(F.relu(self.a(x))[:, :, None, None]).flatten(1)


@pytest.mark.parametrize("backend", ["cpu", "triton"] + (["cuda"] if torch.cuda.is_available() else []))
def test_grouped_layers_called_after_a_backward(backend):
    # The group steps every layer at the model call; a layer the forward skipped, called after a
    # first backward (D.project_features after loss_real.backward()), still gets PyTorch's numbers
    # (Triton: its group node was spent by that backward, so the layer builds its own W / sigma).
    import copy

    import fastgan.nn as GN

    torch.manual_seed(0)
    theirs = _Small(torch.nn.utils.spectral_norm)
    ours = GN.convert_spectral_norm(copy.deepcopy(theirs), backend=backend)
    x = torch.randn(4, 5)
    for step in range(2):
        for m in (theirs, ours):
            m.zero_grad()
            y = m(x)
            y.square().sum().backward()
            m.skipped(y.detach()).sum().backward()  # commits the step of m(x), after its backward
        for (n1, a), (n2, b) in zip(theirs.named_parameters(), ours.named_parameters()):
            assert rel_err(b.grad, a.grad) < 1e-5, (step, n1)
        for (n1, a), (n2, b) in zip(theirs.named_buffers(), ours.named_buffers()):
            assert rel_err(b, a) < 1e-5, (step, n1)


def test_apply_backward_rounds_the_rank_one_term_before_the_add():
    # Integer W and G and sigma = 4 make <G, W> and coef = -<G, W> / sigma^2 exact, so the CPU
    # kernel's gradient must be PyTorch's float32 operations bit for bit: G / s + (coef u) v^T with
    # the product rounded before the add. A fused multiply-add (which GCC emits for a * b + c unless
    # told otherwise) rounds once and differs in many entries.
    g = torch.Generator().manual_seed(5)
    w = torch.randint(-3, 4, (33, 70), generator=g).float()
    gd = torch.randint(-3, 4, (33, 70), generator=g).float()
    u = F.normalize(torch.randn(33, generator=g), dim=0)
    v = F.normalize(torch.randn(70, generator=g), dim=0)
    s = torch.tensor(4.0)
    op = torch.ops.fastgan.spectral_norm_apply_backward
    coef = torch.tensor(-(gd.double() * w.double()).sum().item() / 16.0, dtype=torch.float32)
    assert torch.equal(op(gd, w, u, v, s), gd / s + (coef * u)[:, None] * v[None, :])
    expanded = torch.tensor(-1.5).expand(33, 70)  # the gradient of a sum, read as one value
    coef = torch.tensor(1.5 * w.double().sum().item() / 16.0, dtype=torch.float32)
    assert torch.equal(op(expanded, w, u, v, s), torch.tensor(-1.5) / s + (coef * u)[:, None] * v[None, :])


def test_cpu_outputs_reuse_only_freed_memory():
    # W / sigma (and its gradient) live in recycled memory (csrc/cpu/recycling_allocator.h): a
    # freed block of the same size is handed out again, one still referenced (also through a view)
    # never is.
    g = torch.Generator().manual_seed(6)
    w = torch.randn(64, 301, generator=g)
    u, v = F.normalize(torch.randn(64, generator=g), dim=0), F.normalize(torch.randn(301, generator=g), dim=0)
    s = ref.sigma(w, u, v)
    op = torch.ops.fastgan.spectral_norm_apply
    want = w / s
    a, b = op(w, u, v, s), op(w, u, v, s)
    assert a.data_ptr() != b.data_ptr()
    freed = a.data_ptr()
    del a
    c = op(w, u, v, s)
    assert c.data_ptr() == freed  # recycled
    view = c[3:]
    del c
    d = op(w, u, v, s)
    assert d.data_ptr() not in (freed, b.data_ptr())  # the view keeps its block
    for out in (b, d):
        assert torch.equal(out, want)
    assert torch.equal(view, want[3:])


def test_group_step_same_bits_for_any_thread_count():
    # Two threads step the small layers side by side, one layer per thread (the parallel pass of
    # ops/spectral_norm_autograd.cpp); one thread steps them all in turn: the same bits either way.
    # A layer over the size limit (here 1025 x 1024) is stepped on its own over every thread, its
    # gemvs in MKL, whose bits may depend on the thread count (README, "Determinism"; on an AVX-512
    # host they do): at each thread count it must give the bits of that layer stepped alone.
    g = torch.Generator().manual_seed(3)
    shapes = [((128, 128, 3, 3), 0), ((128, 3, 3, 3), 0), ((1025, 1024), 0), ((64, 32, 4, 4), 1), ((10, 128), 0),
              ((128, 128, 1, 1), 0)]
    big = 2
    ws = [torch.randn(*s, generator=g).requires_grad_() for s, _ in shapes]
    dims = [d for _, d in shapes]
    us = [F.normalize(torch.randn(s[d], generator=g), dim=0) for s, d in shapes]
    vs = [F.normalize(torch.randn(w.numel() // s[d], generator=g), dim=0) for w, (s, d) in zip(ws, shapes)]
    grads = [torch.randn(s, generator=g) for s, _ in shapes]
    runs, alone = [], []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            outs, us2, vs2, sigmas = sn_ops.group_step(ws, us, vs, dims, 1, 1e-12, "hook")
            runs.append((outs, us2, vs2, sigmas, torch.autograd.grad(outs, ws, grads)))
            o, u1, v1, s1 = sn_ops.group_step(ws[big:big + 1], us[big:big + 1], vs[big:big + 1], dims[big:big + 1], 1,
                                              1e-12, "hook")
            alone.append((o, u1, v1, s1, torch.autograd.grad(o, ws[big:big + 1], grads[big:big + 1])))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*runs):
        for i, (a, b) in enumerate(zip(one, two)):
            if i != big:
                assert torch.equal(a, b), i
    for run, single in zip(runs, alone):
        for group_part, alone_part in zip(run, single):
            assert torch.equal(group_part[big], alone_part[0])
