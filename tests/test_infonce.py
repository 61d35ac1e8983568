"""InfoMax-GAN's local x global InfoNCE on every backend against the reference (issue 4): N in
{1, 2, 7, 64}, HW in {1, 5, 64}, R in {1, 3, 130}; both modes; both layouts; permuted
(non-contiguous) feature maps; values and both gradients; float64 gradcheck."""
import itertools

import pytest
import torch

import fastgan.functional as FG
from fastgan import reference as R

from conftest import TOL, backend_device, float64_backends, gradcheck, kernel_backends, rel_err

SHAPES = list(itertools.product([1, 2, 7, 64], [1, 5, 64], [1, 3, 130]))


def interpreter_sized(backend, n, hw, r):
    # Triton's CPU interpreter is slow: its largest case is (64, 64, 3) and (7, 64, 130).
    return not (backend == "triton" and not torch.cuda.is_available() and n * hw * r > 64 * 64 * 3)


def make(n, hw, r, dtype, device, g, layout):
    l = torch.randn(n, r, hw, generator=g, dtype=torch.float64) / max(r, 1) ** 0.5
    m = torch.randn(n, r, generator=g, dtype=torch.float64)
    if layout == "mimicry":
        l, m = l, m[:, :, None]
    elif layout == "nchw_permuted":
        # A channels-last map viewed as (N, R, H, W): non-contiguous, and position-major in memory.
        l = l.reshape(n, r, hw, 1).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        assert not l.is_contiguous() or min(r, hw) == 1
    return l.to(device=device, dtype=dtype), m.to(device=device, dtype=dtype)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("n,hw,r", SHAPES)
@pytest.mark.parametrize("mode", ["mimicry", "exact"])
def test_infonce_float32(backend, n, hw, r, mode, gen):
    if not interpreter_sized(backend, n, hw, r):
        n = 7 if n == 64 else n
        hw = 5 if n * hw * r > 64 * 64 * 3 else hw
    device = backend_device(backend)
    layout = "mimicry" if (n + hw) % 2 else "nchw_permuted"
    l, m = make(n, hw, r, torch.float32, device, gen, layout)
    l.requires_grad_()
    m.requires_grad_()
    out = FG.infonce_local_global(l, m, mode=mode, backend=backend)
    lr = l.detach().double().cpu().requires_grad_()
    mr = m.detach().double().cpu().requires_grad_()
    ref = R.infonce_local_global(lr, mr, mode=mode)
    assert rel_err(out, ref) < TOL[torch.float32]
    gl, gm = torch.autograd.grad(out, [l, m])
    rgl, rgm = torch.autograd.grad(ref, [lr, mr])
    assert gl.shape == l.shape and gm.shape == m.shape
    assert rel_err(gl, rgl) < 1e-4 and rel_err(gm, rgm) < 1e-4


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("options", [dict(temperature=0.1), dict(normalize=True, temperature=0.07), dict(reduction="none")])
def test_infonce_options(backend, options, gen):
    device = backend_device(backend)
    l, m = make(6, 5, 9, torch.float32, device, gen, "mimicry")
    out = FG.infonce_local_global(l, m, backend=backend, **options)
    ref = R.infonce_local_global(l.double().cpu(), m.double().cpu(), **options)
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("backend", kernel_backends())
def test_infonce_half(backend, gen):
    device = backend_device(backend)
    l, m = make(7, 5, 130, torch.float16, device, gen, "mimicry")
    out = FG.infonce_local_global(l, m, backend=backend)
    ref = R.infonce_local_global(l.double().cpu(), m.double().cpu())
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert rel_err(out, ref) < TOL[torch.float16]


@pytest.mark.parametrize("backend", float64_backends())
@pytest.mark.parametrize("mode", ["mimicry", "exact"])
def test_infonce_gradcheck(backend, mode, gen):
    l, m = make(3, 4, 2, torch.float64, torch.device("cpu"), gen, "mimicry")
    l.requires_grad_()
    m.requires_grad_()
    assert gradcheck(lambda a, b: FG.infonce_local_global(a, b, mode=mode, backend=backend), (l, m), backend)


def test_infonce_n1_only_constant_block(gen):
    # N = 1: the negative set is only the -10 block (Mimicry), or empty (exact: loss 0).
    l, m = make(1, 4, 3, torch.float64, torch.device("cpu"), gen, "mimicry")
    pos = torch.einsum("nr,nrk->nk", m[:, :, 0], l)
    want = torch.nn.functional.softplus(-10 + torch.log(torch.tensor(4.0, dtype=torch.float64)) - pos).mean()
    assert FG.infonce_local_global(l, m, backend="cpu").item() == pytest.approx(want.item(), rel=1e-12)
    assert FG.infonce_local_global(l, m, mode="exact", backend="cpu").item() == 0.0
