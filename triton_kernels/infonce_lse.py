"""Triton kernels of infonce_lse (contract: fastgan/reference/infonce.py:infonce_lse).

S[i, j, k] = scale * <m^_i, l^_j[:, k]> over images i (rows) and the N*HW flattened columns
c = j*HW + k (every image's every position), so any HW (1 to thousands) fills whole tiles.
  norms     one tiny kernel per input: ||x|| over R for every column (strided, O(N*HW) output);
            inverse norms and the normalization coefficients are O(N*HW) torch ops.
  forward   one program per BLOCK_M images i; loop over BLOCK_K column tiles, each S tile built by
            tl.dot over BLOCK_R slices of R (l read through its strides: a permuted channels-last
            map is never copied); the own block (c // HW == i) is written to pos, every other
            column enters an online (max, sum) per row in float32 (float64) registers; the
            constant HW * exp(self_logit) is merged at the end. Writes pos (N, HW) and neg (N,).
  backward  no atomics, deterministic: a row kernel, program (i, j) owning images block i and
            channel block j (BLOCK_RU wide), computes grad_m = sum_c W_ic l_c with W = scale a_i b_c dS;
            a column kernel, program (i, j) owning flattened columns block i and channel block j,
            computes grad_l_c = sum_i W_ic m_i; both recompute S tile by tile over the full R
            (dS_ic = grad_neg_i exp(S_ic - neg_i) off the own block, grad_pos_ik on it), keep the
            accumulator in registers over the whole sweep, and accumulate sum dS*S in the same loop,
            so the normalization chain (- [||x|| > eps] / ||x||^2 (sum dS S) x) is applied before the
            single store (in the output's dtype: no accumulation buffer). Gradient products are tl.dot
            on the input's half type with the inverse norm folded into the unit-norm operand.
Floor: forward 2 N (N HW) R flops; backward 2 x (2 (R / BLOCK_RU) + 2) N (N HW) R (S recomputed per
channel block); N R (HW + 1) inputs read. Extra memory O(N*HW).
"""
import math
import os

import torch
import triton
import triton.language as tl

from . import configs
from .contrastive_lse import _compute_dtype, _fp32_precision, _online_update, _tl_dtype


@triton.jit
def _norm_kernel(x_ptr, out_ptr, C, R, HW, s0, s1, s2,
                 BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, CT: tl.constexpr):
    # out[c] = ||x[c // HW, :, c % HW]|| for the flattened columns c of an (N, R, HW) strided view.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    base = (cols // HW) * s0 + (cols % HW) * s2
    acc = tl.zeros((BLOCK_C,), CT)
    for r0 in range(0, R, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        x = tl.load(x_ptr + base[None, :] + rs[:, None] * s1, mask=(rs[:, None] < R) & (cols[None, :] < C),
                    other=0.0).to(CT)
        acc += tl.sum(x * x, axis=0)
    tl.store(out_ptr + cols, tl.sqrt(acc), mask=cols < C)


@triton.jit
def _scores(m_ptr, l_ptr, inva_ptr, invb_ptr, rows, cols, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, scale,
            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
            UPCAST: tl.constexpr):
    # S tile (BLOCK_M x BLOCK_K): scale * a_i * b_c * <m_i, l_c>; zero outside the valid range.
    lbase = (cols // HW) * sl0 + (cols % HW) * sl2
    acc = tl.zeros((BLOCK_M, BLOCK_K), CT)
    for r0 in range(0, R, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        a = tl.load(m_ptr + rows[:, None] * sm0 + rs[None, :] * sm1, mask=(rows[:, None] < N) & (rs[None, :] < R),
                    other=0.0)
        b = tl.load(l_ptr + lbase[None, :] + rs[:, None] * sl1, mask=(rs[:, None] < R) & (cols[None, :] < C),
                    other=0.0)
        if UPCAST:
            acc += tl.dot(a.to(CT), b.to(CT), input_precision="ieee", out_dtype=CT)
        else:
            acc += tl.dot(a, b, input_precision=PREC, out_dtype=CT)
    inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
    invb = tl.load(invb_ptr + cols, mask=cols < C, other=0.0)
    return acc * (inva[:, None] * scale) * invb[None, :]


@triton.jit
def _forward_kernel(m_ptr, l_ptr, inva_ptr, invb_ptr, par_ptr, pos_ptr, neg_ptr,
                    N, R, C, HW, sm0, sm1, sl0, sl1, sl2,
                    HAS_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                    CT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    scale = tl.load(par_ptr)
    ninf = float("-inf")
    mx = tl.full((BLOCK_M,), ninf, CT)
    sm = tl.zeros((BLOCK_M,), CT)
    for c0 in range(0, C, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        z = _scores(m_ptr, l_ptr, inva_ptr, invb_ptr, rows, cols, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, scale,
                    BLOCK_M, BLOCK_K, BLOCK_R, CT, PREC, UPCAST)
        ok = (rows[:, None] < N) & (cols[None, :] < C)
        own = (cols[None, :] // HW) == rows[:, None]
        # pos[i, k] sits at i*HW + k = c on the own block (contiguous (N, HW)); one row per column.
        tl.store(pos_ptr + cols[None, :] + rows[:, None] * 0, z, mask=ok & own)
        mx, sm = _online_update(mx, sm, tl.where(ok & ~own, z, ninf))
    if HAS_SELF:
        # HW * exp(self_logit) as the single logit self_logit + log(HW) (-inf for HW = 0).
        st = tl.load(par_ptr + 1)
        mx, sm = _online_update(mx, sm, tl.zeros((BLOCK_M, 1), CT) + st)
    empty = (mx == ninf) & (sm == sm)  # mx = -inf with a NaN sum: only NaN scores, lse NaN as the reference
    tl.store(neg_ptr + rows, tl.where(empty, ninf, mx + tl.log(tl.where(empty, 1.0, sm))), mask=rows < N)


@triton.jit
def _dscores(z, rows, cols, N, C, HW, gpos_ptr, gneg, negs, live):
    # dS tile: grad_pos on the own block, grad_neg_i exp(S - neg_i) elsewhere, 0 outside / for empty sets.
    ok = (rows[:, None] < N) & (cols[None, :] < C)
    own = (cols[None, :] // HW) == rows[:, None]
    gp = tl.load(gpos_ptr + cols[None, :] + rows[:, None] * 0, mask=ok & own, other=0.0)
    keep = ok & live[:, None] & (gneg[:, None] != 0)
    # exp only where it is used (the own block's S - neg may overflow).
    e = tl.where(keep, gneg[:, None] * tl.exp(tl.where(keep & ~own, z - negs[:, None], 0.0)), 0.0)
    return tl.where(own, gp, e)


@triton.jit
def _backward_m_kernel(m_ptr, l_ptr, inva_ptr, invb_ptr, coefa_ptr, par_ptr, gpos_ptr, gneg_ptr, neg_ptr,
                       out_ptr, N, R, C, HW, sm0, sm1, sl0, sl1, sl2,
                       NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_RU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr, GT: tl.constexpr, GPREC: tl.constexpr,
                       FOLD: tl.constexpr):
    # grad_m[rows, rus] = scale a_i sum over column tiles of dS @ L^[cols, rus] (L^ = l b, unit columns),
    # minus the normalization term. Program (i, j) owns image block i and channel block j: the
    # accumulator stays in registers over the whole column sweep and is stored once (S is recomputed
    # per channel block, R / BLOCK_RU times).
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rus = tl.program_id(1) * BLOCK_RU + tl.arange(0, BLOCK_RU)
    scale = tl.load(par_ptr)
    neg = tl.load(neg_ptr + rows, mask=rows < N, other=float("-inf")).to(CT)
    live = neg != float("-inf")
    negs = tl.where(live, neg, 0.0)
    gneg = tl.load(gneg_ptr + rows, mask=rows < N, other=0.0).to(CT)
    inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
    csum = tl.zeros((BLOCK_M,), CT)
    acc = tl.zeros((BLOCK_M, BLOCK_RU), CT)
    for c0 in range(0, C, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        z = _scores(m_ptr, l_ptr, inva_ptr, invb_ptr, rows, cols, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, scale,
                    BLOCK_M, BLOCK_K, BLOCK_R, CT, PREC, UPCAST)
        ds = _dscores(z, rows, cols, N, C, HW, gpos_ptr, gneg, negs, live)
        if NORMALIZE:
            csum += tl.sum(tl.where(ds != 0, ds * z, 0.0), axis=1)
        invb = tl.load(invb_ptr + cols, mask=cols < C, other=0.0)
        lbase = (cols // HW) * sl0 + (cols % HW) * sl2
        lt = tl.load(l_ptr + lbase[:, None] + rus[None, :] * sl1, mask=(cols[:, None] < C) & (rus[None, :] < R),
                     other=0.0).to(CT)
        if FOLD:
            acc += tl.dot(ds.to(GT), (lt * invb[:, None]).to(GT), input_precision=GPREC, out_dtype=CT)
        else:
            acc += tl.dot(ds * (inva[:, None] * scale) * invb[None, :], lt, input_precision=GPREC, out_dtype=CT)
    um = (rows[:, None] < N) & (rus[None, :] < R)
    if FOLD:
        u = acc * (inva[:, None] * scale)
    else:
        u = acc
    if NORMALIZE:
        coef = tl.load(coefa_ptr + rows, mask=rows < N, other=0.0) * csum
        x = tl.load(m_ptr + rows[:, None] * sm0 + rus[None, :] * sm1, mask=um, other=0.0).to(CT)
        u = u - coef[:, None] * x
    tl.store(out_ptr + rows[:, None] * R + rus[None, :], u.to(out_ptr.dtype.element_ty), mask=um)


@triton.jit
def _backward_l_kernel(m_ptr, l_ptr, inva_ptr, invb_ptr, coefb_ptr, par_ptr, gpos_ptr, gneg_ptr, neg_ptr,
                       out_ptr, N, R, C, HW, sm0, sm1, sl0, sl1, sl2,
                       NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_RU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr, GT: tl.constexpr, GPREC: tl.constexpr,
                       FOLD: tl.constexpr):
    # grad_l[rus, cols] = scale b_c sum over image tiles of M^[rows, rus]^T @ dS (M^ = m a, unit rows),
    # minus the normalization term; program (i, j) owns column block i and channel block j, its
    # accumulator in registers, stored once.
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rus = tl.program_id(1) * BLOCK_RU + tl.arange(0, BLOCK_RU)
    scale = tl.load(par_ptr)
    invb = tl.load(invb_ptr + cols, mask=cols < C, other=0.0)
    csum = tl.zeros((BLOCK_K,), CT)
    acc = tl.zeros((BLOCK_RU, BLOCK_K), CT)
    for i0 in range(0, N, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        neg = tl.load(neg_ptr + rows, mask=rows < N, other=float("-inf")).to(CT)
        live = neg != float("-inf")
        negs = tl.where(live, neg, 0.0)
        gneg = tl.load(gneg_ptr + rows, mask=rows < N, other=0.0).to(CT)
        z = _scores(m_ptr, l_ptr, inva_ptr, invb_ptr, rows, cols, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, scale,
                    BLOCK_M, BLOCK_K, BLOCK_R, CT, PREC, UPCAST)
        ds = _dscores(z, rows, cols, N, C, HW, gpos_ptr, gneg, negs, live)
        if NORMALIZE:
            csum += tl.sum(tl.where(ds != 0, ds * z, 0.0), axis=0)
        inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
        mt = tl.load(m_ptr + rows[None, :] * sm0 + rus[:, None] * sm1, mask=(rows[None, :] < N) & (rus[:, None] < R),
                     other=0.0).to(CT)
        if FOLD:
            acc += tl.dot((mt * inva[None, :]).to(GT), ds.to(GT), input_precision=GPREC, out_dtype=CT)
        else:
            acc += tl.dot(mt, ds * (inva[:, None] * scale) * invb[None, :], input_precision=GPREC, out_dtype=CT)
    # grad_l is contiguous (N, R, HW): column c = j*HW + k, channel r at j*R*HW + r*HW + k.
    obase = (cols // HW) * (R * HW) + (cols % HW)
    vm = (rus[:, None] < R) & (cols[None, :] < C)
    if FOLD:
        v = acc * (invb[None, :] * scale)
    else:
        v = acc
    if NORMALIZE:
        coef = tl.load(coefb_ptr + cols, mask=cols < C, other=0.0) * csum
        lbase = (cols // HW) * sl0 + (cols % HW) * sl2
        x = tl.load(l_ptr + lbase[None, :] + rus[:, None] * sl1, mask=vm, other=0.0).to(CT)
        v = v - coef[None, :] * x
    tl.store(out_ptr + obase[None, :] + rus[:, None] * HW, v.to(out_ptr.dtype.element_ty), mask=vm)


def _pow2_block(x, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(x), 1))))


def _blocks(n, hw, r):
    # One config (the interpreter cannot autotune): BLOCK_M images x BLOCK_K flattened columns,
    # R in slices of BLOCK_R; every tile at least 16 (tl.dot's minimum).
    return _pow2_block(n, 16, 32), _pow2_block(n * hw, 16, 64), _pow2_block(r, 16, 64)


def _meta(l, n, hw, r):
    arch = configs.arch_of(l)
    ct = _compute_dtype(l)
    half = l.dtype in (torch.float16, torch.bfloat16)
    if arch is None:
        bm, bk, br = _blocks(n, hw, r)
        cfg = dict(BLOCK_M=bm, BLOCK_K=bk, BLOCK_R=br, BLOCK_RU=configs.pow2_clamp(r, 16, 128))
        launch = {}
    else:
        cfg, launch = configs.infonce(arch, l.dtype, n, hw, r)
    # The interpreter's tl.dot is wrong for bfloat16 operands (Triton 3.6): upcast the tiles there.
    upcast = l.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1"
    prec = _fp32_precision(l.dtype)
    # Gradient products on tensor cores in the input's half type on a GPU. The interpreter runs the same
    # path for float16 (so the GPU's operand folding is executed in CI), float32 for bfloat16 (its
    # bfloat16 tl.dot is wrong in Triton 3.6).
    tc_half = half and (arch is not None or l.dtype == torch.float16)
    gt = (tl.float16 if l.dtype == torch.float16 else tl.bfloat16) if tc_half else _tl_dtype(ct)
    # FOLD: half operands on tensor cores take the inverse norms folded into the unit-norm operand
    # (bounded); float32/float64 keep W = scale a_i b_c dS as the operand, the rounding order whose
    # cancellation against the normalization term is exact to float64's last bits (R = 1 gradients).
    fold = tc_half
    return dict(CT=_tl_dtype(ct), PREC=prec, UPCAST=upcast, **cfg), dict(GT=gt, GPREC=prec, FOLD=fold), launch


def _column_norms(x, n, r, hw, strides, ct):
    # ||x[j, :, k]|| for the N*HW flattened columns of a strided (N, R, HW) view, in ct.
    out = torch.empty((n * hw,), dtype=ct, device=x.device)
    if n * hw == 0:
        return out
    bc, br = 32, _pow2_block(r, 16, 64)
    _norm_kernel[(triton.cdiv(n * hw, bc),)](x, out, n * hw, r, hw, *strides, BLOCK_C=bc, BLOCK_R=br,
                                             CT=_tl_dtype(ct))
    return out


def _scalings(l, m, normalize, eps, ct):
    """Inverse norms a (N,), b (N*HW,) and the normalization coefficients [||x|| > eps] / max(||x||, eps)^2."""
    n, r, hw = l.shape
    if not normalize:
        ones_a = torch.ones((n,), dtype=ct, device=l.device)
        ones_b = torch.ones((n * hw,), dtype=ct, device=l.device)
        return ones_a, ones_b, ones_a, ones_b
    na = _column_norms(m, n, r, 1, (m.stride(0), m.stride(1), 0), ct)
    nb = _column_norms(l, n, r, hw, (l.stride(0), l.stride(1), l.stride(2)), ct)
    inva, invb = na.clamp_min(eps).reciprocal(), nb.clamp_min(eps).reciprocal()
    coefa = torch.where(na > eps, inva * inva, torch.zeros_like(inva))
    coefb = torch.where(nb > eps, invb * invb, torch.zeros_like(invb))
    return inva, invb, coefa, coefb


def _params(scale, self_logit, hw, ct, device):
    # Scalars as a compute-dtype tensor: Triton passes Python floats as float32.
    st = float(self_logit) + math.log(hw) if (self_logit is not None and hw > 0) else float("-inf")
    return torch.tensor([float(scale), st], dtype=ct, device=device)


def _check(l, m):
    if l.dim() != 3 or m.dim() != 2 or m.shape[0] != l.shape[0] or m.shape[1] != l.shape[1]:
        raise RuntimeError(f"infonce_lse: expected l (N, R, HW) and m (N, R), got {tuple(l.shape)} and {tuple(m.shape)}")
    if l.dtype != m.dtype or l.device != m.device:
        raise RuntimeError("infonce_lse: l and m must have the same dtype and device")


def infonce_lse_forward(l, m, scale, self_logit, normalize, eps):
    """(pos (N, HW), neg (N,)) in the compute dtype; see the module docstring and the reference."""
    _check(l, m)
    n, r, hw = l.shape
    ct = _compute_dtype(l)
    pos = torch.empty((n, hw), dtype=ct, device=l.device)
    neg = torch.empty((n,), dtype=ct, device=l.device)
    if n == 0:
        return pos, neg
    meta, _, launch = _meta(l, n, hw, r)
    meta.pop("BLOCK_RU")
    inva, invb, _, _ = _scalings(l, m, normalize, eps, ct)
    par = _params(scale, self_logit, hw, ct, l.device)
    grid = (triton.cdiv(n, meta["BLOCK_M"]),)
    _forward_kernel[grid](m, l, inva, invb, par, pos, neg, n, r, n * hw, hw, m.stride(0), m.stride(1),
                          l.stride(0), l.stride(1), l.stride(2), HAS_SELF=self_logit is not None, **meta, **launch)
    return pos, neg


def infonce_lse_backward(grad_pos, grad_neg, l, m, neg, scale, self_logit, normalize, eps):
    """(grad_l (N, R, HW) contiguous in l's dtype, grad_m (N, R) contiguous in m's dtype)."""
    _check(l, m)
    n, r, hw = l.shape
    ct = _compute_dtype(l)
    if n == 0 or r == 0 or hw == 0:
        return (torch.zeros((n, r, hw), dtype=l.dtype, device=l.device),
                torch.zeros((n, r), dtype=m.dtype, device=m.device))
    # Every element is stored once by its owning program: no zero fill, no accumulation buffer.
    grad_l = torch.empty((n, r, hw), dtype=l.dtype, device=l.device)
    grad_m = torch.empty((n, r), dtype=m.dtype, device=m.device)
    meta, gmeta, launch = _meta(l, n, hw, r)
    inva, invb, coefa, coefb = _scalings(l, m, normalize, eps, ct)
    par = _params(scale, self_logit, hw, ct, l.device)
    gpos = grad_pos.to(ct).contiguous()
    gneg = grad_neg.to(ct).contiguous()
    negc = neg.to(ct).contiguous()
    strides = (m.stride(0), m.stride(1), l.stride(0), l.stride(1), l.stride(2))
    common = (m, l, inva, invb)
    tail = (par, gpos, gneg, negc)
    nr = triton.cdiv(r, meta["BLOCK_RU"])
    _backward_m_kernel[(triton.cdiv(n, meta["BLOCK_M"]), nr)](*common, coefa, *tail, grad_m, n, r, n * hw, hw,
                                                               *strides, NORMALIZE=bool(normalize), **meta, **gmeta,
                                                               **launch)
    _backward_l_kernel[(triton.cdiv(n * hw, meta["BLOCK_K"]), nr)](*common, coefb, *tail, grad_l, n, r, n * hw, hw,
                                                                   *strides, NORMALIZE=bool(normalize), **meta,
                                                                   **gmeta, **launch)
    return grad_l, grad_m
