"""The CUDA kernels of the fused spectral-norm ops (csrc/cuda/spectral_norm*) against the reference
(fastgan/reference/spectral_norm.py): u, v and sigma of the multi-tensor power iteration on odd shapes,
strided weights and float32 u, v with half weights; the multi-tensor call against per-layer calls
(bitwise) and itself (determinism); spectral_norm_apply and its backward against float64 autograd;
argument errors. Needs a GPU: skipped only where none is present (a missing CUDA build fails)."""
import pytest
import torch
import torch.nn.functional as F

from fastgan.ops import _registry
from fastgan.reference import spectral_norm as ref

from conftest import GRAD_FLOOR, TOL, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SHAPES = [(1, 1), (1, 7), (7, 1), (65, 4609), (5, 3), (33, 65)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
EPS = 1e-6


@pytest.fixture(scope="module", autouse=True)
def cuda_ops():
    assert _registry.ensure_cxx(), "fastgan._C is not built"
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for name in ("spectral_norm_power_iteration_", "spectral_norm_apply", "spectral_norm_apply_backward"):
        assert has("fastgan::" + name, "CUDA"), f"fastgan._C has no CUDA kernel of {name} (build with FASTGAN_CUDA=1)"


def make_layers(dtype, seed=0, zero_layer=False):
    """(W_mat, u, v) on the GPU: SHAPES row-major, one transposed (column-major) view, one
    non-contiguous u / v, float32 u / v for some half-precision weights, optionally a zero W."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (r, c) in enumerate(SHAPES):
        w = torch.randn(r, c, generator=g, dtype=torch.float64).to(dtype)
        uv_dtype = torch.float32 if (i % 2 and dtype in (torch.float16, torch.bfloat16)) else dtype
        u = F.normalize(torch.randn(r, generator=g, dtype=torch.float64), dim=0).to(uv_dtype)
        v = F.normalize(torch.randn(c, generator=g, dtype=torch.float64), dim=0).to(uv_dtype)
        layers.append((w.cuda(), u.cuda(), v.cuda()))
    wt = torch.randn(70, 40, generator=g, dtype=torch.float64).to(dtype).cuda().t()  # (40, 70), strides (1, 40)
    ub = torch.zeros(40, 3, dtype=dtype, device="cuda")
    ub[:, 1] = F.normalize(torch.randn(40, generator=g, dtype=torch.float64), dim=0).to(dtype).cuda()
    layers.append((wt, ub[:, 1], F.normalize(torch.randn(70, generator=g, dtype=torch.float64), dim=0).to(dtype).cuda()))
    if zero_layer:  # the eps branch: ||x|| < eps
        layers.append((torch.zeros(9, 33, dtype=dtype, device="cuda"), layers[0][1].new_ones(9) / 3,
                       layers[0][1].new_ones(33) / 33 ** 0.5))
    return layers


def run(layers, n, order):
    return torch.ops.fastgan.spectral_norm_power_iteration_([w for w, _, _ in layers], [u for _, u, _ in layers],
                                                            [v for _, _, v in layers], n, EPS, order == "hook")


@pytest.mark.parametrize("order", ref.ORDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_power_iteration_matches_reference(order, dtype, n):
    layers = make_layers(dtype, seed=n, zero_layer=True)
    expected = []
    for w, u, v in layers:  # float64 reference from the same (rounded) inputs
        w64, u64, v64 = (t.cpu().double().clone() for t in (w, u, v))
        ref.power_iteration_(w64, u64, v64, n, EPS, order)
        expected.append((u64, v64, ref.sigma(w64, u64, v64)))
    sigmas = run(layers, n, order)
    assert len(sigmas) == len(layers)
    tol = TOL[dtype]
    for i, ((w, u, v), (u64, v64, s64), s) in enumerate(zip(layers, expected, sigmas)):
        assert s.dim() == 0 and s.device == w.device
        assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert rel_err(u, u64) <= tol, (i, rel_err(u, u64))
        assert rel_err(v, v64) <= tol, (i, rel_err(v, v64))
        assert rel_err(s, s64) <= tol, (i, float(s), float(s64))
    assert float(sigmas[-1]) == 0.0  # the zero layer


@pytest.mark.parametrize("order", ref.ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_multi_tensor_equals_per_layer_and_is_deterministic(order, dtype):
    layers = make_layers(dtype, seed=7, zero_layer=True)
    one = [(w, u.clone(), v.clone()) for w, u, v in layers]
    again = [(w, u.clone(), v.clone()) for w, u, v in layers]
    sigmas = run(layers, 2, order)
    sigmas_again = run(again, 2, order)
    for (w, u, v), (_, u1, v1), s, (_, u2, v2), s2 in zip(layers, one, sigmas, again, sigmas_again):
        (s1,) = run([(w, u1, v1)], 2, order)
        # A layer's result does not depend on the other layers in the call: bitwise equal.
        assert torch.equal(u, u1) and torch.equal(v, v1) and torch.equal(s, s1)
        assert torch.equal(u, u2) and torch.equal(v, v2) and torch.equal(s, s2)


def test_hook_matches_torch_spectral_norm():
    """Drop-in for torch.nn.utils.spectral_norm: u, v buffers and W / sigma after two training forwards."""
    torch.manual_seed(0)
    lin = torch.nn.utils.spectral_norm(torch.nn.Linear(300, 70), eps=1e-12).cuda()
    w = lin.weight_orig.detach()
    u, v = lin.weight_u.clone(), lin.weight_v.clone()
    for _ in range(2):
        lin(torch.randn(2, 300, device="cuda"))
        (sigma,) = torch.ops.fastgan.spectral_norm_power_iteration_([w], [u], [v], 1, 1e-12, True)
    assert rel_err(u, lin.weight_u) <= 2e-5 and rel_err(v, lin.weight_v) <= 2e-5
    out = torch.ops.fastgan.spectral_norm_apply(w, u, v, sigma)
    assert rel_err(out, lin.weight) <= 2e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(40, 70)])
@pytest.mark.parametrize("strided", [False, True])
def test_apply_and_backward_match_autograd(dtype, shape, strided):
    g = torch.Generator().manual_seed(1)
    r, c = shape
    w = torch.randn(c, r, generator=g, dtype=torch.float64).t() if strided else torch.randn(r, c, generator=g,
                                                                                            dtype=torch.float64)
    u = F.normalize(torch.randn(r, generator=g, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(c, generator=g, dtype=torch.float64), dim=0)
    grad = torch.randn(c, r, generator=g, dtype=torch.float64).t() if not strided else torch.randn(
        r, c, generator=g, dtype=torch.float64)
    w, grad = w.to(dtype), grad.to(dtype)
    u_k = u.float() if dtype != torch.float64 else u.to(dtype)  # float32 u with any weight dtype
    v_k = v.to(dtype)
    # Reference: W / (u^T W v) in float64 autograd, u and v constants.
    w64 = w.double().requires_grad_(True)
    sigma64 = ref.sigma(w64, u_k.double(), v_k.double())
    out64 = w64 / sigma64
    out64.backward(grad.double())
    wc, gc = w.cuda(), grad.cuda()
    sigma = sigma64.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).cuda()
    out = torch.ops.fastgan.spectral_norm_apply(wc, u_k.cuda(), v_k.cuda(), sigma)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == w.shape
    tol = TOL[dtype]
    assert rel_err(out, out64) <= tol
    dw = torch.ops.fastgan.spectral_norm_apply_backward(gc, wc, u_k.cuda(), v_k.cuda(), sigma)
    assert dw.dtype == dtype and dw.is_contiguous() and dw.shape == w.shape
    assert rel_err(dw, w64.grad, GRAD_FLOOR) <= tol  # 1 x 1: the gradient vanishes mathematically
    # Deterministic: the <G, W> reduction has a fixed order.
    assert torch.equal(dw, torch.ops.fastgan.spectral_norm_apply_backward(gc, wc, u_k.cuda(), v_k.cuda(), sigma))


def test_bad_arguments_raise():
    w = torch.randn(5, 3, device="cuda")
    u, v = torch.randn(5, device="cuda"), torch.randn(3, device="cuda")
    op = torch.ops.fastgan.spectral_norm_power_iteration_
    with pytest.raises(RuntimeError, match="same length"):
        op([w], [u, u], [v], 1, EPS, True)
    with pytest.raises(RuntimeError, match=r"us\[0\]"):
        op([w], [torch.randn(4, device="cuda")], [v], 1, EPS, True)
    with pytest.raises(RuntimeError, match=r"vs\[0\]"):
        op([w], [u], [v.half()], 1, EPS, True)
    with pytest.raises(RuntimeError, match=r"weight_mats\[1\]"):
        op([w, torch.randn(5, 3, 2, device="cuda")], [u, u], [v, v], 1, EPS, True)
    with pytest.raises(RuntimeError, match="n_power_iterations"):
        op([w], [u], [v], -1, EPS, True)
    with pytest.raises(RuntimeError, match=r"us\[0\]"):
        op([w], [torch.randn(1, device="cuda").expand(5)], [v], 1, EPS, True)
    with pytest.raises(RuntimeError, match="sigma"):
        torch.ops.fastgan.spectral_norm_apply(w, u, v, torch.ones(2, device="cuda"))
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastgan.spectral_norm_apply_backward(torch.randn(3, 5, device="cuda"), w, u, v,
                                                       torch.ones((), device="cuda"))
    u0, v0 = u.clone(), v.clone()
    with pytest.raises(RuntimeError):  # a bad later layer leaves the earlier ones untouched
        op([w, w], [u, torch.randn(2, device="cuda")], [v, v.clone()], 1, EPS, True)
    assert torch.equal(u, u0) and torch.equal(v, v0)


def group_layers(dtype):
    """(W_mat, u, v, sigma) of make_layers' layers of one dtype (float64 takes the per-layer ops)."""
    layers = make_layers(dtype, seed=3)
    sigmas = run(layers, 1, "hook")
    return [(w, u, v, s) for (w, u, v), s in zip(layers, sigmas)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_group_apply_is_the_per_layer_ops_bitwise(dtype):
    """The multi-tensor apply (one launch) and its backward (two): every layer's bits those of
    spectral_norm_apply / _backward, also for an expanded gradient."""
    layers = group_layers(dtype)
    ws, us, vs, ss = (list(x) for x in zip(*layers))
    outs = torch.ops.fastgan.spectral_norm_apply_group(ws, ss)
    grads = [torch.randn_like(w) for w in ws]
    grads[0] = grads[0][:1, :1].expand_as(ws[0]) if ws[0].numel() else grads[0]
    gws = torch.ops.fastgan.spectral_norm_apply_group_backward(grads, ws, us, vs, ss)
    for (w, u, v, s), out, g, gw in zip(layers, outs, grads, gws):
        assert torch.equal(out, torch.ops.fastgan.spectral_norm_apply(w, u, v, s))
        assert torch.equal(gw, torch.ops.fastgan.spectral_norm_apply_backward(g, w, u, v, s))
    torch.library.opcheck(torch.ops.fastgan.spectral_norm_apply_group, (ws, ss),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.fastgan.spectral_norm_apply_group_backward, (grads, ws, us, vs, ss),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match=r"sigmas\[1\] must be one float32 element"):
        torch.ops.fastgan.spectral_norm_apply_group(ws[:2], [ss[0], ss[1].double()])


def test_grouped_step_replays_in_a_cuda_graph():
    """The grouped step (multi-tensor power iteration on copies of u, v, group apply, its backward)
    captured in a torch.cuda.CUDAGraph replays exactly: no per-call host-to-device copy or sync
    (descriptors travel by value as kernel arguments)."""
    layers = make_layers(torch.float32, seed=4)
    ws = [w for w, _, _ in layers]
    u0 = [u.clone() for _, u, _ in layers]
    v0 = [v.clone() for _, _, v in layers]
    grads = [torch.randn_like(w) for w in ws]

    def step(us, vs):
        sigmas = torch.ops.fastgan.spectral_norm_power_iteration_(ws, us, vs, 1, EPS, True)
        outs = torch.ops.fastgan.spectral_norm_apply_group(ws, sigmas)
        return outs + torch.ops.fastgan.spectral_norm_apply_group_backward(grads, ws, us, vs, sigmas)

    us, vs = [u.clone() for u in u0], [v.clone() for v in v0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, as torch.cuda.graphs asks
        step([u.clone() for u in u0], [v.clone() for v in v0])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(us, vs)
    for _ in range(2):
        for buf, x in zip(us + vs, u0 + v0):
            buf.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        eager = step([u.clone() for u in u0], [v.clone() for v in v0])
        for a, b in zip(captured, eager):
            assert torch.equal(a, b)


def test_triton_spectral_norm_refuses_graph_capture():
    """Triton's per-call descriptor copy cannot be replayed: capture raises a clear error."""
    pytest.importorskip("triton")
    TS = _registry.triton_module("spectral_norm")

    w = torch.randn(8, 5, device="cuda")
    u, v = F.normalize(torch.randn(8, device="cuda"), dim=0), F.normalize(torch.randn(5, device="cuda"), dim=0)
    TS.power_iteration_([w], [u], [v], 1, EPS, True)  # compiled outside the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph cannot replay"):
        with torch.cuda.graph(graph):
            TS.power_iteration_([w], [u], [v], 1, EPS, True)
