"""Triton kernels of infonce_lse (triton_kernels/infonce_lse.py) called directly, against the contract
fastgan.reference.infonce.infonce_lse in float64: values, and gradients against autograd of the
reference with random grad_pos / grad_neg. Sizes straddle the 16/32/64 tiles (N in {1, 2, 7, 33},
HW in {1, 5, 17}, R in {1, 3, 40}), both self_logit modes, normalize on/off, zero vectors,
strided (channels-last) inputs, scale 1/0.07 near the -10 logit, and half precision."""
import pytest
import torch

from fastgan.ops._registry import triton_module
from fastgan.reference import infonce as ref

from conftest import GRAD_FLOOR, TOL, backend_device, rel_err

DEV = backend_device("triton")
K = triton_module("infonce_lse")
DTYPES = [torch.float32, torch.float16] if DEV.type == "cuda" else [torch.float64, torch.float32, torch.float16]


def _ct(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(l, m, scale, self_logit, normalize, eps, g, tol, skip_l=None, skip_m=None):
    """Kernel forward and backward vs the float64 reference. skip_l (N, HW) / skip_m (N,) mark zero
    vectors: their gradients (1/eps times the rest under normalization) are also checked on their own,
    so that they cannot hide the error of the others."""
    n, r, hw = l.shape
    ct = _ct(l.dtype)
    pos, neg = K.infonce_lse_forward(l, m, scale, self_logit, normalize, eps)
    l64 = l.detach().double().cpu().requires_grad_(True)
    m64 = m.detach().double().cpu().requires_grad_(True)
    rpos, rneg = ref.infonce_lse(l64, m64, scale, self_logit, normalize, eps)
    assert pos.dtype == ct and neg.dtype == ct
    assert pos.shape == (n, hw) and neg.shape == (n,)
    assert rel_err(pos, rpos) < tol
    assert rel_err(neg, rneg) < tol
    if self_logit is None and n == 1:
        assert neg.item() == float("-inf")
    gpos = torch.randn(n, hw, generator=g, dtype=torch.float64)
    gneg = torch.randn(n, generator=g, dtype=torch.float64)  # also where neg = -inf: must not make NaN
    live = torch.isfinite(rneg)
    loss = (rpos * gpos).sum() + (rneg.where(live, torch.zeros_like(rneg)) * gneg.where(live, torch.zeros_like(gneg))).sum()
    loss.backward()
    gl, gm = K.infonce_lse_backward(gpos.to(DEV, ct), gneg.to(DEV, ct), l, m, neg, scale, self_logit, normalize, eps)
    assert gl.dtype == l.dtype and gm.dtype == m.dtype
    assert gl.shape == (n, r, hw) and gm.shape == (n, r)
    assert gl.is_contiguous() and gm.is_contiguous()
    assert torch.isfinite(gl).all() and torch.isfinite(gm).all()
    assert rel_err(gl, l64.grad, GRAD_FLOOR) < tol
    assert rel_err(gm, m64.grad, GRAD_FLOOR) < tol
    if skip_l is not None and skip_l.any():
        keep = (~skip_l)[:, None, :].expand(n, r, hw)
        assert rel_err(gl.cpu()[keep], l64.grad[keep], GRAD_FLOOR) < tol
        assert rel_err(gl.cpu()[~keep], l64.grad[~keep], GRAD_FLOOR) < tol
    if skip_m is not None and skip_m.any():
        assert rel_err(gm.cpu()[~skip_m], m64.grad[~skip_m], GRAD_FLOOR) < tol
        assert rel_err(gm.cpu()[skip_m], m64.grad[skip_m], GRAD_FLOOR) < tol
    return gl, gm


def _case(n, r, hw, dtype, g, zero=True):
    l = torch.randn(n, r, hw, generator=g, dtype=torch.float64)
    m = torch.randn(n, r, generator=g, dtype=torch.float64)
    zl = torch.zeros(n, hw, dtype=torch.bool)
    zm = torch.zeros(n, dtype=torch.bool)
    # Zero vectors (not in half: under normalization their gradient is 1/eps times the others).
    if zero and dtype != torch.float16 and n > 2:
        m[1] = 0
        l[n // 2, :, hw - 1] = 0
        zm[1] = True
        zl[n // 2, hw - 1] = True
    return l.to(DEV, dtype), m.to(DEV, dtype), zl, zm


# Every N, HW and R value, both self_logit modes and both normalizations, tile edges (16/32/64).
CASES = [
    (1, 5, 3, None, True),
    (1, 17, 40, -10.0, False),
    (2, 1, 40, -10.0, True),
    (2, 17, 1, None, False),
    (7, 5, 40, None, True),
    (7, 17, 3, -10.0, True),
    (7, 1, 1, None, False),
    (33, 17, 40, -10.0, True),
    (33, 5, 3, None, False),
    (33, 1, 40, None, True),
]


@pytest.mark.parametrize("n,hw,r,self_logit,normalize", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_infonce_lse_vs_reference(n, hw, r, self_logit, normalize, dtype, gen):
    l, m, zl, zm = _case(n, r, hw, dtype, gen)
    scale = 1 / 0.07 if normalize else 0.3
    _check(l, m, scale, self_logit, normalize, 1e-8, gen, TOL[dtype], zl, zm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("self_logit", [-10.0, None])
def test_infonce_lse_noncontiguous(dtype, self_logit, gen):
    # A channels-last map (N, H, W, R) seen as (N, R, HW) without a copy, and a transposed m.
    n, h, w, r = 7, 3, 5, 40
    x = torch.randn(n, h, w, r, generator=gen, dtype=torch.float64).to(DEV, dtype)
    l = x.permute(0, 3, 1, 2).flatten(2)
    m = torch.randn(r, n, generator=gen, dtype=torch.float64).to(DEV, dtype).T
    assert l.data_ptr() == x.data_ptr() and l.stride() == (h * w * r, 1, r)
    assert not l.is_contiguous() and not m.is_contiguous()
    for normalize in (True, False):
        _check(l, m, 1 / 0.07 if normalize else 0.2, self_logit, normalize, 1e-12, gen, TOL[dtype])
    # A sliced m (stride 2 along R) and l with a gap between images.
    big = torch.randn(n, r, 9, generator=gen, dtype=torch.float64).to(DEV, dtype)
    l2 = torch.cat([big, big], dim=2)[:, :, ::2]
    m2 = torch.randn(n, 2 * r, generator=gen, dtype=torch.float64).to(DEV, dtype)[:, 1::2]
    _check(l2, m2, 2.0, self_logit, True, 1e-12, gen, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("self_logit", [-10.0, None])
def test_infonce_lse_temperature_007_near_self_logit(dtype, self_logit, gen):
    # Normalized, scale 1/0.07: every score near -10 (cosines near -0.7), so the HW * exp(-10) term
    # weighs as much as the negatives; plus one exactly aligned pair (score 1/0.07).
    n, r, hw = 9, 40, 17
    u = torch.randn(r, generator=gen, dtype=torch.float64)
    u = u / u.norm()
    m = u + 0.02 * torch.randn(n, r, generator=gen, dtype=torch.float64)
    v = torch.randn(n, hw, r, generator=gen, dtype=torch.float64)
    v = v - (v @ u)[..., None] * u
    v = v / v.norm(dim=-1, keepdim=True)
    l = (-0.7 * u + 0.714 * v + 0.01 * torch.randn(n, hw, r, generator=gen, dtype=torch.float64)).transpose(1, 2)
    l[3, :, 4] = m[5]
    l, m = l.to(DEV, dtype), m.to(DEV, dtype)
    pos, neg = K.infonce_lse_forward(l, m, 1 / 0.07, self_logit, True, 1e-12)
    assert (pos.float().cpu() < -9).float().mean() > 0.9
    _check(l, m, 1 / 0.07, self_logit, True, 1e-12, gen, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_infonce_lse_large_logits(dtype, gen):
    # Unnormalized with scale 1/0.07: scores in the hundreds, exp overflows any naive sum.
    l = (3 * torch.randn(11, 40, 5, generator=gen, dtype=torch.float64)).to(DEV, dtype)
    m = (3 * torch.randn(11, 40, generator=gen, dtype=torch.float64)).to(DEV, dtype)
    pos, neg = K.infonce_lse_forward(l, m, 1 / 0.07, -10.0, False, 1e-12)
    assert pos.abs().max() > 200 and torch.isfinite(neg).all()
    _check(l, m, 1 / 0.07, -10.0, False, 1e-12, gen, TOL[dtype])


@pytest.mark.slow  # several tiles per dimension through the Triton interpreter
@pytest.mark.parametrize("blocks", [(16, 16, 16), (32, 64, 16), (16, 32, 64), (64, 16, 32)])
def test_infonce_lse_block_variants(blocks, gen, monkeypatch):
    monkeypatch.setattr(K, "_blocks", lambda n, hw, r: blocks)
    l, m, zl, zm = _case(35, 37, 5, torch.float32, gen)
    _check(l, m, 1 / 0.07, -10.0, True, 1e-8, gen, TOL[torch.float32], zl, zm)
    _check(l, m, 0.5, None, False, 1e-8, gen, TOL[torch.float32])


def test_infonce_lse_all_zero_and_deterministic(gen):
    # Every vector zero under normalization: all scores 0, gradients 1/eps-scaled but finite.
    l = torch.zeros(3, 4, 5, dtype=torch.float32, device=DEV)
    m = torch.zeros(3, 4, dtype=torch.float32, device=DEV)
    _check(l, m, 1 / 0.07, -10.0, True, 1e-6, gen, TOL[torch.float32])
    # Bitwise identical on repeated calls (no atomics).
    l, m, _, _ = _case(33, 40, 17, torch.float32, gen)
    pos, neg = K.infonce_lse_forward(l, m, 1 / 0.07, None, True, 1e-8)
    gp = torch.randn(33, 17, generator=gen).to(DEV)
    gn = torch.randn(33, generator=gen).to(DEV)
    a = K.infonce_lse_backward(gp, gn, l, m, neg, 1 / 0.07, None, True, 1e-8)
    b = K.infonce_lse_backward(gp, gn, l, m, neg, 1 / 0.07, None, True, 1e-8)
    pos2, neg2 = K.infonce_lse_forward(l, m, 1 / 0.07, None, True, 1e-8)
    assert torch.equal(pos, pos2) and torch.equal(neg, neg2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
