"""The fused op fastgan::infonce_lse (+ backward) against its contract,
fastgan/reference/infonce.py:infonce_lse: pos (N, HW), neg (N,) and both gradients on every kernel
backend, in float64 and in float32 / float16 / bfloat16; both modes (self_logit -10 and None),
normalize on/off, scales, zero vectors, permuted (channels-last) l and strided m; opcheck, gradcheck,
torch.compile; the CPU kernel reads l in place (peak memory); bad arguments."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import fastgan.functional as FG
from fastgan.ops._registry import ensure_cxx
from fastgan.ops.infonce_lse import infonce_lse
from fastgan.reference import infonce as R

from conftest import GRAD_FLOOR, TOL, backend_device, float64_backends, gradcheck, kernel_backends, rel_err

# N in {1, 2, 7, 64}, HW in {1, 5, 64}, R in {1, 3, 130}: every value, not the full cross product.
SHAPES = [(1, 1, 1), (1, 5, 3), (1, 64, 130), (2, 1, 3), (2, 5, 130), (2, 64, 1), (7, 1, 130), (7, 5, 3),
          (7, 64, 130), (64, 1, 3), (64, 5, 1), (64, 64, 130)]
# Triton runs in its (slow) interpreter on a CPU-only machine.
INTERP_SHAPES = [(1, 5, 3), (2, 5, 130), (2, 64, 1), (7, 1, 130), (64, 5, 1)]
MODES = {"mimicry": R.MIMICRY_SELF_LOGIT, "exact": None}
INTERPRETER = not torch.cuda.is_available()


def shapes_for(backend):
    return INTERP_SHAPES if backend == "triton" and INTERPRETER else SHAPES


def make(n, hw, r, g, layout="contiguous", zero=False):
    """float64 l (N, R, HW) and m (N, R) in the requested memory layout (values do not depend on it)."""
    l = torch.randn(n, r, hw, generator=g, dtype=torch.float64) / math.sqrt(r)
    m = torch.randn(n, r, generator=g, dtype=torch.float64)
    if zero:
        m[n // 2] = 0  # a zero global vector
        l[n - 1, :, hw // 2] = 0  # a zero local vector
    if layout == "channels_last":
        # (N, H, W, R) map viewed as (N, R, H*W): strides (HW R, 1, R), not contiguous.
        l = l.permute(0, 2, 1).contiguous().permute(0, 2, 1)
        m = m.t().contiguous().t()  # column-major m
    elif layout == "strided":
        big = torch.zeros(n, r, 2 * hw, dtype=torch.float64)
        big[:, :, ::2] = l
        l = big[:, :, ::2]  # stride 2 over positions
        bm = torch.zeros(n, 3 * r, dtype=torch.float64)
        bm[:, ::3] = m
        m = bm[:, ::3]
    return l, m


def cotangents(n, hw, g, dtype):
    return (torch.randn(n, hw, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(n, generator=g, dtype=torch.float64).to(dtype))


def check(backend, l, m, scale, self_logit, normalize, eps, g, tol, grad_tol, floor=0.0):
    """Values and both gradients of the op on `backend` against the float64 reference on the same
    (already rounded) inputs."""
    device = backend_device(backend)
    dtype = l.dtype
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    n, _, hw = l.shape
    ld = l.to(device).requires_grad_()
    md = m.to(device).requires_grad_()
    pos, neg = infonce_lse(ld, md, scale, self_logit, normalize, eps, backend)
    assert pos.shape == (n, hw) and neg.shape == (n,) and pos.dtype == ct and neg.dtype == ct
    lr = l.detach().double().requires_grad_()
    mr = m.detach().double().requires_grad_()
    rpos, rneg = R.infonce_lse(lr, mr, scale, self_logit, normalize, eps)
    assert rel_err(pos, rpos) < tol, rel_err(pos, rpos)
    assert rel_err(neg, rneg) < tol, rel_err(neg, rneg)
    gp, gn = cotangents(n, hw, g, torch.float64)
    gl, gm = torch.autograd.grad((pos, neg), (ld, md), (gp.to(device, ct), gn.to(device, ct)))
    rgl, rgm = torch.autograd.grad((rpos, rneg), (lr, mr), (gp, gn))
    assert gl.shape == l.shape and gm.shape == m.shape and gl.dtype == dtype and gm.dtype == dtype
    assert torch.isfinite(gl).all() and torch.isfinite(gm).all()
    assert rel_err(gl, rgl, floor) < grad_tol, rel_err(gl, rgl, floor)
    assert rel_err(gm, rgm, floor) < grad_tol, rel_err(gm, rgm, floor)


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("normalize", [False, True])
def test_float64_against_reference(backend, mode, normalize, gen):
    for n, hw, r in shapes_for(backend):
        l, m = make(n, hw, r, gen, layout="channels_last" if (n + r) % 2 else "contiguous")
        check(backend, l, m, 1.0 if not normalize else 1 / 0.07, MODES[mode], normalize, 1e-12, gen,
              TOL[torch.float64], TOL[torch.float64], GRAD_FLOOR if normalize and r == 1 else 0.0)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("normalize", [False, True])
def test_float32_against_reference(backend, mode, normalize, gen):
    for n, hw, r in shapes_for(backend):
        if normalize and r == 1:
            # x^ = +-1: both gradients vanish mathematically, and in float32 they are the rounding
            # residue of sums over N * HW terms (no relative accuracy to test); float64 covers R = 1.
            continue
        l, m = make(n, hw, r, gen, layout="channels_last" if (n + hw) % 2 else "contiguous")
        check(backend, l.float(), m.float(), 1 / 0.1, MODES[mode], normalize, 1e-12, gen, TOL[torch.float32], 1e-4)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", list(MODES))
def test_low_precision_against_reference(backend, dtype, mode, gen):
    shapes = [(7, 5, 130), (2, 64, 3), (64, 5, 1)]
    for n, hw, r in shapes[:2] if backend == "triton" and INTERPRETER else shapes:
        for normalize in (False, True):
            l, m = make(n, hw, r, gen, layout="channels_last" if n % 2 else "contiguous")
            floor = GRAD_FLOOR if normalize and r == 1 else 0.0
            check(backend, l.to(dtype), m.to(dtype), 1.0, MODES[mode], normalize, 1e-12, gen, TOL[dtype], TOL[dtype],
                  floor)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("normalize", [False, True])
def test_zero_vectors(backend, normalize, gen):
    # A zero m_i and a zero l_j[:, k]: normalization divides by eps (gradient a_i * g, no projection).
    dtype = torch.float64 if backend in float64_backends() else torch.float32
    for mode in MODES:
        l, m = make(7, 5, 9, gen, zero=True)
        check(backend, l.to(dtype), m.to(dtype), 2.0, MODES[mode], normalize, 1e-3, gen, TOL[dtype],
              TOL[dtype] if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_non_contiguous_inputs(backend, layout, gen):
    n, hw, r = (7, 64, 130) if not (backend == "triton" and INTERPRETER) else (5, 6, 7)
    l, m = make(n, hw, r, gen, layout=layout)
    assert not l.is_contiguous() and not m.is_contiguous()
    check(backend, l.float(), m.float(), 3.0, -10.0, False, 1e-12, gen, TOL[torch.float32], 1e-4)
    check(backend, l.float(), m.float(), 3.0, None, True, 1e-12, gen, TOL[torch.float32], 1e-4)
    # Same values as on contiguous copies of the inputs.
    dev = backend_device(backend)
    got = infonce_lse(l.float().to(dev), m.float().to(dev), 3.0, -10.0, False, 1e-12, backend)
    want = infonce_lse(l.float().contiguous().to(dev), m.float().contiguous().to(dev), 3.0, -10.0, False, 1e-12,
                       backend)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("backend", kernel_backends())
def test_single_image_exact_has_empty_negatives(backend, gen):
    # N = 1, exact: the sum is empty, neg = -inf, and its gradient is 0 (no NaN from -inf - -inf).
    dev = backend_device(backend)
    l, m = make(1, 4, 3, gen)
    l, m = l.float().to(dev).requires_grad_(), m.float().to(dev).requires_grad_()
    pos, neg = infonce_lse(l, m, 1.0, None, False, 1e-12, backend)
    assert neg.item() == float("-inf")
    gl, gm = torch.autograd.grad((pos, neg), (l, m), (torch.ones_like(pos), torch.ones_like(neg)))
    assert torch.isfinite(gl).all() and torch.isfinite(gm).all()
    torch.testing.assert_close(gl.cpu(), m.detach().cpu()[:, :, None].expand(1, 3, 4))
    torch.testing.assert_close(gm.cpu(), l.detach().cpu().sum(2))
    # Mimicry: only the constant block, neg = -10 + log(HW), also without gradient.
    pos, neg = infonce_lse(l, m, 1.0, -10.0, False, 1e-12, backend)
    assert neg.item() == pytest.approx(-10 + math.log(4), rel=1e-6)


@pytest.mark.parametrize("backend", kernel_backends())
def test_zero_cotangent_of_an_infinite_score_gives_no_nan(backend, gen):
    # A +inf score makes neg +inf; with grad_neg = 0 the gradient must stay free of 0 * inf NaNs in
    # the other images' rows.
    dev = backend_device(backend)
    l, m = make(3, 4, 5, gen)
    l, m = l.float(), m.float()
    pos, neg = infonce_lse(l.to(dev), m.to(dev), 1.0, -10.0, False, 1e-12, backend)
    gp = torch.randn(3, 4, generator=gen).to(dev)
    gn = torch.zeros(3).to(dev)
    op = torch.ops.fastgan.infonce_lse_backward if backend != "triton" else torch.ops.fastgan.infonce_lse_triton_backward
    if backend != "triton":
        ensure_cxx()
    gl, gm = op(gp, gn, l.to(dev), m.to(dev), neg, 1.0, -10.0, False, 1e-12)
    rgl = torch.einsum("nr,nk->nrk", m, gp.cpu())  # only the positives
    torch.testing.assert_close(gl.cpu(), rgl, rtol=1e-5, atol=1e-6)
    neg_inf = torch.full_like(neg, float("inf"))
    gl, gm = op(gp, gn, l.to(dev), m.to(dev), neg_inf, 1.0, -10.0, False, 1e-12)
    assert torch.isfinite(gl).all() and torch.isfinite(gm).all()


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck(backend, mode, normalize, gen):
    n, hw, r = 3, 4, 5
    l, m = make(n, hw, r, gen, layout="channels_last")
    l.requires_grad_()
    m.requires_grad_()
    assert gradcheck(lambda a, b: infonce_lse(a, b, 0.7, MODES[mode], normalize, 1e-12, backend), (l, m), backend)


@pytest.mark.parametrize("mode", list(MODES))
def test_opcheck(mode, gen):
    ensure_cxx()
    for layout, dtype in [("contiguous", torch.float32), ("channels_last", torch.float64), ("strided", torch.float16)]:
        l, m = make(5, 6, 7, gen, layout=layout)
        l, m = l.to(dtype).requires_grad_(), m.to(dtype).requires_grad_()
        for normalize in (False, True):
            torch.library.opcheck(torch.ops.fastgan.infonce_lse.default, (l, m, 1.5, MODES[mode], normalize, 1e-12))
        pos, neg = torch.ops.fastgan.infonce_lse(l.detach(), m.detach(), 1.5, MODES[mode], True, 1e-12)
        gp, gn = cotangents(5, 6, gen, pos.dtype)
        torch.library.opcheck(torch.ops.fastgan.infonce_lse_backward.default,
                              (gp, gn, l.detach(), m.detach(), neg, 1.5, MODES[mode], True, 1e-12))


def test_opcheck_triton(gen):
    dev = backend_device("triton")
    l, m = make(3, 4, 5, gen, layout="channels_last")
    l, m = l.float().to(dev).requires_grad_(), m.float().to(dev).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.infonce_lse_triton.default, (l, m, 1.5, -10.0, True, 1e-12),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("options", [dict(), dict(mode="exact", temperature=0.2, normalize=True),
                                     dict(reduction="none")])
def test_compile_fullgraph_cpu(options, gen):
    l, m = make(6, 5, 9, gen, layout="channels_last")
    l, m = l.float(), m.float()[:, :, None]
    fn = lambda a, b: FG.infonce_local_global(a, b, backend="cpu", **options)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    outs = []
    for f in (fn, compiled):
        a, b = l.clone().requires_grad_(), m.clone().requires_grad_()
        out = f(a, b)
        out.sum().backward()
        outs.append((out.detach(), a.grad, b.grad))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y)
    ref = R.infonce_local_global(l.double(), m.double(), **options)
    assert rel_err(outs[1][0], ref) < TOL[torch.float32]


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("options", [dict(mode="exact"), dict(temperature=0.3), dict(normalize=True, temperature=0.07)])
def test_functional_uses_the_op(backend, options, gen):
    # The loss on a channels-last (N, R, H, W) map, values and gradients against the reference.
    dev = backend_device(backend)
    l, m = make(6, 6, 9, gen, layout="channels_last")
    l4 = l.float().reshape(6, 9, 2, 3).to(dev).requires_grad_()
    m = m.float().to(dev).requires_grad_()
    out = FG.infonce_local_global(l4, m, backend=backend, **options)
    lr, mr = l4.detach().double().cpu().requires_grad_(), m.detach().double().cpu().requires_grad_()
    ref = R.infonce_local_global(lr, mr, **options)
    assert rel_err(out, ref) < TOL[torch.float32]
    gl, gm = torch.autograd.grad(out, (l4, m))
    rgl, rgm = torch.autograd.grad(ref, (lr, mr))
    assert rel_err(gl, rgl) < 1e-4 and rel_err(gm, rgm) < 1e-4


# Runs in a fresh process: peak resident memory (VmHWM, reset through /proc/self/clear_refs) of the
# CPU op on a 64 MiB l, against the size of l. A copy of l shows up as +|l|; the calibration line
# checks that the measurement does see one.
_MEMORY_SCRIPT = textwrap.dedent("""
    import gc, json, torch
    import fastgan.functional as FG
    from fastgan.ops._registry import ensure_cxx
    ensure_cxx()

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def extra(fn):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
        fn()
        return status("VmHWM") - base

    n, r, hw = 8, 512, 4096
    l = torch.randn(n, hw, r).permute(0, 2, 1)  # channels-last (N, R, HW) view
    m = torch.randn(n, r)
    FG.infonce_local_global(torch.randn(4, 8, 5, requires_grad=True), torch.randn(4, 8), backend="cpu").backward()
    out = {"l": l.numel() * 4}
    out["copy"] = extra(lambda: l.contiguous())
    out["forward"] = extra(lambda: torch.ops.fastgan.infonce_lse(l, m, 1.0, -10.0, True, 1e-12))
    lc = l.contiguous().requires_grad_()
    mc = m.clone().requires_grad_()
    out["loss"] = extra(lambda: FG.infonce_local_global(lc, mc, backend="cpu").backward())
    lc.grad = None
    out["loss_normalized"] = extra(lambda: FG.infonce_local_global(lc, mc, normalize=True, backend="cpu").backward())
    print(json.dumps(out))
""")


def test_cpu_op_does_not_copy_l():
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    size = out["l"]
    assert out["copy"] > 0.9 * size, out  # the measurement sees a copy of l
    # Forward on a permuted map: no copy of l (pos, neg and per-thread blocks only).
    assert out["forward"] < 0.25 * size, out
    # Loss forward + backward: l's gradient (|l|) and O(N HW + threads (N R + N HW)) beside it; the
    # previous path (transposed rows, gradient copies) needed several |l|.
    assert out["loss"] < 1.25 * size, out
    assert out["loss_normalized"] < 1.25 * size, out


@pytest.mark.parametrize("call,match", [
    (lambda l, m: torch.ops.fastgan.infonce_lse(l[0], m, 1.0, None, False, 1e-12), "l must have shape"),
    (lambda l, m: torch.ops.fastgan.infonce_lse(l, m[:, :, None], 1.0, None, False, 1e-12), "m must have shape"),
    (lambda l, m: torch.ops.fastgan.infonce_lse(l, m[:2], 1.0, None, False, 1e-12), "same batch size"),
    (lambda l, m: torch.ops.fastgan.infonce_lse(l, m[:, :2], 1.0, None, False, 1e-12), "same feature size"),
    (lambda l, m: torch.ops.fastgan.infonce_lse(l, m.double(), 1.0, None, False, 1e-12), "same dtype"),
    (lambda l, m: torch.ops.fastgan.infonce_lse(l.int(), m.int(), 1.0, None, False, 1e-12), "l must be float16"),
    (lambda l, m: torch.ops.fastgan.infonce_lse(l, m, 1.0, None, True, 0.0), "eps must be positive"),
    (lambda l, m: torch.ops.fastgan.infonce_lse_backward(torch.zeros(3, 5), torch.zeros(3), l, m, torch.zeros(3), 1.0,
                                                         None, False, 1e-12), "grad_pos must have shape"),
    (lambda l, m: torch.ops.fastgan.infonce_lse_backward(torch.zeros(3, 4), torch.zeros(3, dtype=torch.float64), l, m,
                                                         torch.zeros(3), 1.0, None, False, 1e-12),
     "grad_neg must have dtype"),
    (lambda l, m: torch.ops.fastgan.infonce_lse_backward(torch.zeros(3, 4), torch.zeros(3), l, m, torch.zeros(2), 1.0,
                                                         None, False, 1e-12), "neg must have shape"),
])
def test_bad_arguments_raise(call, match):
    ensure_cxx()
    l, m = torch.randn(3, 5, 4), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match=match):
        call(l, m)
