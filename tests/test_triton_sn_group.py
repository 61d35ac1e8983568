"""The multi-tensor Triton power iteration (triton_kernels/spectral_norm.py): every layer of a call in
4 launches per step and 2 in eval mode, whatever the number of layers, against the float64 reference
on odd shapes, many layers, strided and mixed-dtype layers; and the Triton SN ops' eval mode, which
must leave u and v alone (no version bump)."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import GRAD_FLOOR, TOL, backend_device, float64_backends, rel_err

from fastgan.ops import spectral_norm as sn_ops
from fastgan.ops._registry import triton_module
from fastgan.reference import spectral_norm as ref


@pytest.fixture
def kernels():
    return triton_module("spectral_norm")


class LaunchCounter:
    """Counts launches of every @triton.jit kernel of a module by wrapping each one's `run` (what
    fn[grid](...) calls, for the JITFunction on a GPU and the InterpretedFunction here)."""

    def __init__(self, module, monkeypatch):
        self.calls = []
        for name in dir(module):
            fn = getattr(module, name)
            if type(fn).__name__ in ("JITFunction", "InterpretedFunction"):
                monkeypatch.setattr(fn, "run", self._wrap(name, fn.run))

    def _wrap(self, name, run):
        def counted(*args, **kwargs):
            self.calls.append(name)
            return run(*args, **kwargs)

        return counted


def _layers(shapes, dtype, seed, dev):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(*s, generator=g, dtype=dtype).to(dev) for s in shapes]
    us = [F.normalize(torch.randn(s[0], generator=g, dtype=dtype), dim=0).to(dev) for s in shapes]
    vs = [F.normalize(torch.randn(s[1], generator=g, dtype=dtype), dim=0).to(dev) for s in shapes]
    return ws, us, vs


def _check_against_reference(ws, us0, vs0, us, vs, sigmas, n, order, tol):
    for w, u0, v0, u, v, s in zip(ws, us0, vs0, us, vs, sigmas):
        u64, v64 = u0.double().clone(), v0.double().clone()
        ref.power_iteration_(w.double(), u64, v64, n, 1e-12, order)
        s64 = ref.sigma(w.double(), u64, v64)
        assert rel_err(u, u64) < tol and rel_err(v, v64) < tol, tuple(w.shape)
        assert rel_err(s, s64) < tol, tuple(w.shape)


# Odd sizes, vectors, a tall and a wide layer, one spanning several tiles in both directions.
ODD = [(1, 1), (1, 7), (7, 1), (5, 3), (33, 40), (65, 257), (3, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", ref.ORDERS)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_multi_tensor_against_reference(kernels, dtype, order, n):
    if dtype == torch.float64 and "triton" not in float64_backends():
        pytest.skip("Triton float64 kernels run in the interpreter only")
    dev = backend_device("triton")
    ws, us, vs = _layers(ODD, dtype, 1, dev)
    us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = sn_ops.power_iteration(ws, us, vs, n, 1e-12, order, "triton")
    assert all(s.shape == () and s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
               for s in sigmas)
    _check_against_reference(ws, us0, vs0, us, vs, sigmas, n, order, TOL[dtype])
    if n == 0:
        assert all(torch.equal(a, b) for a, b in zip(us + vs, us0 + vs0))


@pytest.mark.parametrize("n_layers", [1, 2, 12])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_launches_do_not_depend_on_the_layer_count(kernels, monkeypatch, n_layers, n):
    dev = backend_device("triton")
    shapes = [ODD[i % len(ODD)] for i in range(n_layers)]
    ws, us, vs = _layers(shapes, torch.float32, 2, dev)
    us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
    counter = LaunchCounter(kernels, monkeypatch)
    sigmas = sn_ops.power_iteration(ws, us, vs, n, 1e-12, "hook", "triton")
    # The statement of triton_kernels/spectral_norm.py: 4 launches per step, 2 for eval (n = 0).
    assert len(counter.calls) == (4 * n if n else 2), counter.calls
    _check_against_reference(ws, us0, vs0, us, vs, sigmas, n, "hook", TOL[torch.float32])


def test_multi_tensor_equals_per_layer_bitwise_and_strided_layers(kernels):
    dev = backend_device("triton")
    ws, us, vs = _layers(ODD, torch.float32, 3, dev)
    # A transposed (column-major) matrix, a ConvTranspose-like dim=1 matrix and a strided u.
    ws.append(torch.randn(9, 5, device=dev).t())
    us.append(F.normalize(torch.randn(5, device=dev), dim=0))
    vs.append(F.normalize(torch.randn(9, device=dev), dim=0))
    ws.append(ref.weight_to_matrix(torch.randn(4, 6, 3, 3, device=dev), 1))
    us.append(F.normalize(torch.randn(12, device=dev), dim=0)[::2])
    vs.append(F.normalize(torch.randn(36, device=dev), dim=0))
    us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
    one_u, one_v = [u.clone() for u in us], [v.clone() for v in vs]
    sig = sn_ops.power_iteration(ws, us, vs, 2, 1e-12, "parametrization", "triton")
    for i, w in enumerate(ws):
        (s1,) = sn_ops.power_iteration([w], [one_u[i]], [one_v[i]], 2, 1e-12, "parametrization", "triton")
        assert torch.equal(s1, sig[i]) and torch.equal(one_u[i], us[i]) and torch.equal(one_v[i], vs[i]), i
    assert us[-1].stride() == (2,)
    _check_against_reference(ws, us0, vs0, us, vs, sig, 2, "parametrization", TOL[torch.float32])


def test_mixed_dtypes_form_groups(kernels, monkeypatch):
    dev = backend_device("triton")
    ws, us, vs = _layers([(5, 3), (33, 40), (7, 1)], torch.float32, 4, dev)
    ws[1] = ws[1].half()  # float16 weight, float32 u, v: a second group
    us0, vs0 = [u.clone() for u in us], [v.clone() for v in vs]
    counter = LaunchCounter(kernels, monkeypatch)
    sig = sn_ops.power_iteration(ws, us, vs, 1, 1e-12, "hook", "triton")
    assert len(counter.calls) == 2 * 4
    _check_against_reference([w.float() for w in ws], us0, vs0, us, vs, sig, 1, "hook", TOL[torch.float32])


def test_zero_weight_and_bad_vectors(kernels):
    dev = backend_device("triton")
    ws, us, vs = _layers([(4, 3), (2, 2)], torch.float32, 5, dev)
    ws[0] = torch.zeros(4, 3, device=dev)
    sig = sn_ops.power_iteration(ws, us, vs, 1, 1e-6, "hook", "triton")
    assert sig[0].item() == 0.0 and torch.all(us[0] == 0) and torch.all(vs[0] == 0)
    with pytest.raises(RuntimeError, match=r"vs\[1\] must have 2 entries"):
        torch.ops.fastgan.spectral_norm_power_iteration_triton_(ws, us, [vs[0], torch.zeros(3, device=dev)], 1, 1e-6,
                                                                 True)
    with pytest.raises(RuntimeError, match=r"us\[0\] must have the dtype"):
        torch.ops.fastgan.spectral_norm_sigma_triton([ws[0]], [us[0].double()], [vs[0].double()])


def test_sigma_op_opcheck_and_no_version_bump():
    dev = backend_device("triton")
    ws, us, vs = _layers([(5, 3), (1, 7)], torch.float32, 6, dev)
    versions = [t._version for t in us + vs]
    torch.library.opcheck(torch.ops.fastgan.spectral_norm_sigma_triton, (ws, us, vs))
    sn_ops.power_iteration(ws, us, vs, 0, 1e-12, "hook", "triton")
    assert [t._version for t in us + vs] == versions


_AOT_SCRIPT = r'''
import sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgan.ops._registry import triton_module
K = triton_module("spectral_norm")
T = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}
common = {"desc_ptr": "*i64", "tile_layer_ptr": "*i64", "ws_ptr": "*fp32", "part_ptr": "*fp32"}
n = 0
for arch in (80, 90):
    target = GPUTarget("cuda", arch, 32)
    for wt, xt in (("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "fp16")):
        for cols, first, dot in ((True, True, False), (False, False, False), (False, True, True)):
            sig = dict(common, **{k: "constexpr" for k in ("COLS", "FROM_USER", "DOT", "WT", "XT", "CT", "NF",
                                                           "BLOCK_O", "BLOCK_K")})
            consts = {"COLS": cols, "FROM_USER": first, "DOT": dot, "WT": T[wt], "XT": T[xt], "CT": tl.float32,
                      "NF": K._NF, "BLOCK_O": K._BLOCK_O, "BLOCK_K": K._BLOCK_K}
            triton.compile(ASTSource(K._mv_tiles_kernel, sig, consts), target=target)
            n += 1
        for cols, last in ((True, False), (False, True)):
            sig = dict(common, eps_ptr="*i64", **{k: "constexpr" for k in ("COLS", "LAST", "XT", "CT", "NF",
                                                                             "BLOCK_O", "BLOCK_P")})
            consts = {"COLS": cols, "LAST": last, "XT": T[xt], "CT": tl.float32, "NF": K._NF,
                      "BLOCK_O": K._BLOCK_O, "BLOCK_P": K._BLOCK_P}
            triton.compile(ASTSource(K._norm_tiles_kernel, sig, consts), target=target)
            n += 1
    for wt in ("fp32", "bf16"):
        g = {"WT": T[wt], "CT": tl.float32, "NF": K._GF, "BLOCK": K._BLOCK_E}
        ce = lambda names: {k: "constexpr" for k in names}  # noqa: E731
        triton.compile(ASTSource(K._apply_group_kernel, dict({"desc_ptr": "*i64", "tile_layer_ptr": "*i64",
                       "snap_ptr": "*fp32"}, **ce(("WT", "XT", "CT", "NF", "BLOCK"))), dict(g, XT=tl.float32)),
                       target=target)
        triton.compile(ASTSource(K._group_dot_kernel, dict({"desc_ptr": "*i64", "tile_layer_ptr": "*i64",
                       "part_ptr": "*fp32"}, **ce(("WT", "CT", "NF", "BLOCK"))), g), target=target)
        triton.compile(ASTSource(K._group_backward_kernel, dict({"desc_ptr": "*i64", "tile_layer_ptr": "*i64",
                       "snap_ptr": "*fp32", "part_ptr": "*fp32"}, **ce(("WT", "CT", "NF", "BLOCK", "BLOCK_P"))),
                       dict(g, BLOCK_P=K._BLOCK_P)), target=target)
        n += 3
    sig = {"desc_ptr": "*i64", "part_ptr": "*fp32", "CT": "constexpr", "NF": "constexpr", "BLOCK_P": "constexpr"}
    triton.compile(ASTSource(K._sigma_kernel, sig, {"CT": tl.float32, "NF": K._NF, "BLOCK_P": K._BLOCK_P}),
                   target=target)
    n += 1
print("compiled", n)
'''


def test_kernels_compile_for_sm80_and_sm90():
    # The interpreter never compiles: compile the multi-tensor kernels for real targets (no GPU
    # needed; Triton bundles ptxas), in a process without TRITON_INTERPRET, float32/bfloat16/float16
    # weights, both passes, first step, eval dot and the last-step sigma store; the group apply
    # kernels (forward, <G, W> partials, backward) for float32 and bfloat16 weights.
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env, cwd=root,
                         timeout=600)
    assert res.returncode == 0 and "compiled 44" in res.stdout, res.stdout + res.stderr[-3000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_apply_against_reference(kernels, monkeypatch, dtype):
    # W_i / sigma_i of every layer in one launch, the backward in two; u, v snapshotted by the kernel
    # (changing the buffers after the forward does not change the gradient).
    if dtype == torch.float64 and "triton" not in float64_backends():
        pytest.skip("Triton float64 kernels run in the interpreter only")
    dev = backend_device("triton")
    ws, us, vs = _layers(ODD, dtype, 7, dev)
    ws = [w.requires_grad_() for w in ws]
    sigmas = [ref.sigma(w.detach(), u, v) for w, u, v in zip(ws, us, vs)]
    counter = LaunchCounter(kernels, monkeypatch)
    outs = sn_ops.apply_group(ws, us, vs, sigmas)
    assert len(counter.calls) == 1
    u_used, v_used = [u.clone() for u in us], [v.clone() for v in vs]
    for u, v in zip(us, vs):
        u.mul_(-3.0)
        v.add_(1.0)
    g = torch.Generator().manual_seed(8)
    grads_out = [torch.randn(*w.shape, generator=g, dtype=dtype).to(dev) for w in ws]
    sum((o * go).sum() for o, go in zip(outs, grads_out)).backward()
    assert len(counter.calls) == 3, counter.calls
    for w, u, v, s, o, go in zip(ws, u_used, v_used, sigmas, outs, grads_out):
        # The forward is bitwise the per-layer kernel's.
        assert torch.equal(o, sn_ops.apply(w.detach(), u, v, s, "triton")), tuple(w.shape)
        w64 = w.detach().double().requires_grad_()
        o64 = w64 / ref.sigma(w64, u.double(), v.double())
        o64.backward(go.double())
        assert rel_err(o, o64) < TOL[dtype], tuple(w.shape)
        assert rel_err(w.grad, w64.grad, floor=GRAD_FLOOR) < TOL[dtype], tuple(w.shape)


def test_group_apply_opcheck_and_launches_for_12_layers(kernels, monkeypatch):
    dev = backend_device("triton")
    ws, us, vs = _layers([ODD[i % len(ODD)] for i in range(12)], torch.float32, 9, dev)
    sigmas = [ref.sigma(w, u, v) for w, u, v in zip(ws, us, vs)]
    counter = LaunchCounter(kernels, monkeypatch)
    outs = sn_ops.apply_group([w.requires_grad_() for w in ws], us, vs, sigmas)
    sum(o.sum() for o in outs).backward()
    assert len(counter.calls) == 3
    torch.library.opcheck(torch.ops.fastgan.spectral_norm_apply_group_triton,
                          ([w.detach().requires_grad_() for w in ws[:3]], us[:3], vs[:3], sigmas[:3]))
    with pytest.raises(RuntimeError, match=r"weight_mats\[1\] must be 2-D, of one dtype"):
        sn_ops.apply_group([ws[0], ws[1].double()], us[:2], vs[:2], sigmas[:2])
