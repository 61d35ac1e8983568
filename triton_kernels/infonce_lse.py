"""Triton kernels of infonce_lse (contract: fastgan/reference/infonce.py:infonce_lse).

S[i, j, k] = scale * <m^_i, l^_j[:, k]> over images i (rows) and the N*HW flattened columns
c = j*HW + k (every image's every position), so any HW (1 to thousands) fills whole tiles.
  norms     one tiny kernel per input: for every column 1 / max(||x||, eps) over R and the
            normalization coefficient [||x|| > eps] / max(||x||, eps)^2 (strided, O(N*HW) output).
  forward   program (i, s) per BLOCK_M images i and column split s (configs.split_plan): loop over
            the split's BLOCK_K column tiles, each S tile built by tl.dot over BLOCK_R slices of R
            (l read through its strides: a permuted channels-last map is never copied); the own
            block (c // HW == i) is written to pos, every other column enters an online (max, sum)
            per row in float32 (float64) registers, stored as the split's partial state.
            _forward_merge_kernel merges the splits in the fixed order 0, 1, 2, ..., then the
            constant HW * exp(self_logit), and writes neg (N,).
  backward  no atomics, deterministic: a row kernel, program (i, j, s) owning images block i,
            channel block j (BLOCK_RU wide) and column split s, computes its part of
            grad_m = sum_c W_ic l_c with W = scale a_i b_c dS; a column kernel, program (i, j, s)
            owning flattened columns block i, channel block j and image split s, its part of
            grad_l_c = sum_i W_ic m_i; both recompute S tile by tile over the full R
            (dS_ic = grad_neg_i exp(S_ic - neg_i) off the own block, grad_pos_ik on it), keep the
            accumulator in registers over the sweep, accumulate sum dS*S in the same loop, and store
            both once to the split's slab of a workspace. One merge kernel per output sums the slabs
            in order 0, 1, 2, ..., applies the normalization chain (- [||x|| > eps] / ||x||^2
            (sum dS S) x) and stores in the output's dtype. Gradient products are tl.dot on the
            input's half type with the inverse norm folded into the unit-norm operand.
  launches  forward 4 (2 norms, partial, merge) + backward 6 (2 norms, 2 sweeps, 2 merges) at every
            size; scalars travel as float32 parts (no host-to-device copy: CUDA-graph capturable).
Floor: forward 2 N (N HW) R flops; backward 2 x (2 (R / BLOCK_RU) + 2) N (N HW) R (S recomputed per
channel block); N R (HW + 1) inputs read. Extra memory O(N*HW).
"""
import math
import os

import torch
import triton
import triton.language as tl

from . import configs
from .contrastive_lse import (_compute_dtype, _f32_parts, _fp32_precision, _from_parts, _merge_state, _online_update,
                             _tl_dtype)


@triton.jit
def _norm_kernel(x_ptr, inv_ptr, coef_ptr, C, R, HW, s0, s1, s2, eps0, eps1, eps2,
                 NORMALIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, CT: tl.constexpr):
    # For the flattened columns c of an (N, R, HW) strided view, n = ||x[c // HW, :, c % HW]||:
    # inv[c] = 1 / max(n, eps) and coef[c] = [n > eps] inv^2 (1 and 0 when not normalizing): one
    # launch instead of the norm / clamp / reciprocal / where ATen chain.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_C,), CT)
    if NORMALIZE:
        base = (cols // HW) * s0 + (cols % HW) * s2
        for r0 in range(0, R, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            x = tl.load(x_ptr + base[None, :] + rs[:, None] * s1, mask=(rs[:, None] < R) & (cols[None, :] < C),
                        other=0.0).to(CT)
            acc += tl.sum(x * x, axis=0)
        nrm = tl.sqrt(acc)
        eps = _from_parts(eps0, eps1, eps2, CT)
        inv = 1.0 / tl.maximum(nrm, eps)
        tl.store(inv_ptr + cols, inv, mask=cols < C)
        tl.store(coef_ptr + cols, tl.where(nrm > eps, inv * inv, 0.0), mask=cols < C)
    else:
        tl.store(inv_ptr + cols, acc + 1.0, mask=cols < C)
        tl.store(coef_ptr + cols, acc, mask=cols < C)


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
def _forward_kernel(m_ptr, l_ptr, inva_ptr, invb_ptr, sc0, sc1, sc2, pos_ptr, ws_ptr,
                    N, R, C, HW, sm0, sm1, sl0, sl1, sl2, tiles_per_split,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                    CT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # Program (i, s): image block i over the s-th run of tiles_per_split column tiles; its partial
    # (max, sum) per row goes to the (SPLITS, N, 2) workspace, merged in order by _forward_merge_kernel.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    scale = _from_parts(sc0, sc1, sc2, CT)
    ninf = float("-inf")
    mx = tl.full((BLOCK_M,), ninf, CT)
    sm = tl.zeros((BLOCK_M,), CT)
    c_lo = split * tiles_per_split * BLOCK_K
    c_hi = tl.minimum(C, c_lo + tiles_per_split * BLOCK_K)
    for c0 in range(c_lo, c_hi, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        z = _scores(m_ptr, l_ptr, inva_ptr, invb_ptr, rows, cols, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, scale,
                    BLOCK_M, BLOCK_K, BLOCK_R, CT, PREC, UPCAST)
        ok = (rows[:, None] < N) & (cols[None, :] < C)
        own = (cols[None, :] // HW) == rows[:, None]
        # pos[i, k] sits at i*HW + k = c on the own block (contiguous (N, HW)); one row per column.
        tl.store(pos_ptr + cols[None, :] + rows[:, None] * 0, z, mask=ok & own)
        mx, sm = _online_update(mx, sm, tl.where(ok & ~own, z, ninf))
    tl.store(ws_ptr + (split * N + rows) * 2, mx, mask=rows < N)
    tl.store(ws_ptr + (split * N + rows) * 2 + 1, sm, mask=rows < N)


@triton.jit
def _forward_merge_kernel(ws_ptr, st0, st1, st2, neg_ptr, N, splits, HAS_SELF: tl.constexpr, BLOCK: tl.constexpr,
                          CT: tl.constexpr):
    # The splits' partial states merged in the fixed order 0, 1, 2, ..., then the self logit.
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < N
    ninf = float("-inf")
    mx = tl.full((BLOCK,), ninf, CT)
    sm = tl.zeros((BLOCK,), CT)
    for sp in range(0, splits):
        w = ws_ptr + (sp * N + rows) * 2
        mx, sm = _merge_state(mx, sm, tl.load(w, mask=live, other=ninf), tl.load(w + 1, mask=live, other=0.0))
    if HAS_SELF:
        # HW * exp(self_logit) as the single logit self_logit + log(HW) (-inf for HW = 0).
        st = _from_parts(st0, st1, st2, CT)
        mx, sm = _online_update(mx, sm, tl.zeros((BLOCK, 1), CT) + st)
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
def _backward_m_kernel(m_ptr, l_ptr, inva_ptr, invb_ptr, sc0, sc1, sc2, gpos_ptr, gneg_ptr, neg_ptr,
                       out_ptr, csum_ptr, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, tiles_per_split,
                       NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_RU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr, GT: tl.constexpr, GPREC: tl.constexpr,
                       FOLD: tl.constexpr):
    # grad_m[rows, rus] = scale a_i sum over column tiles of dS @ L^[cols, rus] (L^ = l b, unit columns),
    # minus the normalization term. Program (i, j) owns image block i and channel block j: the
    # accumulator stays in registers over the whole column sweep and is stored once (S is recomputed
    # per channel block, R / BLOCK_RU times). Axis 2 splits the column sweep (configs.split_plan):
    # split s stores its partial U and sum dS*S to slab s of the (SPLITS, N, R) / (SPLITS, N)
    # workspaces; _grad_m_merge_kernel sums them in order and applies the normalization term.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rus = tl.program_id(1) * BLOCK_RU + tl.arange(0, BLOCK_RU)
    split = tl.program_id(2)
    scale = _from_parts(sc0, sc1, sc2, CT)
    neg = tl.load(neg_ptr + rows, mask=rows < N, other=float("-inf")).to(CT)
    live = neg != float("-inf")
    negs = tl.where(live, neg, 0.0)
    gneg = tl.load(gneg_ptr + rows, mask=rows < N, other=0.0).to(CT)
    inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
    csum = tl.zeros((BLOCK_M,), CT)
    acc = tl.zeros((BLOCK_M, BLOCK_RU), CT)
    c_lo = split * tiles_per_split * BLOCK_K
    c_hi = tl.minimum(C, c_lo + tiles_per_split * BLOCK_K)
    for c0 in range(c_lo, c_hi, BLOCK_K):
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
    tl.store(out_ptr + (split * N + rows[:, None]) * R + rus[None, :], u, mask=um)
    if NORMALIZE:
        tl.store(csum_ptr + split * N + rows, csum, mask=(rows < N) & (tl.program_id(1) == 0))


@triton.jit
def _grad_m_merge_kernel(part_ptr, csum_ptr, m_ptr, coefa_ptr, out_ptr, N, R, sm0, sm1, splits,
                         NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_RU: tl.constexpr, CT: tl.constexpr):
    # grad_m = sum of the splits' U (order 0, 1, 2, ...) - coef_a (sum of their sum dS*S) m, in m's dtype.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rus = tl.program_id(1) * BLOCK_RU + tl.arange(0, BLOCK_RU)
    um = (rows[:, None] < N) & (rus[None, :] < R)
    u = tl.zeros((BLOCK_M, BLOCK_RU), CT)
    csum = tl.zeros((BLOCK_M,), CT)
    for sp in range(0, splits):
        u += tl.load(part_ptr + (sp * N + rows[:, None]) * R + rus[None, :], mask=um, other=0.0)
        if NORMALIZE:
            csum += tl.load(csum_ptr + sp * N + rows, mask=rows < N, other=0.0)
    if NORMALIZE:
        coef = tl.load(coefa_ptr + rows, mask=rows < N, other=0.0) * csum
        x = tl.load(m_ptr + rows[:, None] * sm0 + rus[None, :] * sm1, mask=um, other=0.0).to(CT)
        u = u - coef[:, None] * x
    tl.store(out_ptr + rows[:, None] * R + rus[None, :], u.to(out_ptr.dtype.element_ty), mask=um)


@triton.jit
def _backward_l_kernel(m_ptr, l_ptr, inva_ptr, invb_ptr, sc0, sc1, sc2, gpos_ptr, gneg_ptr, neg_ptr,
                       out_ptr, csum_ptr, coefb_ptr, grad_ptr, N, R, C, HW, sm0, sm1, sl0, sl1, sl2, tiles_per_split,
                       DIRECT: tl.constexpr,
                       NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_RU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr, GT: tl.constexpr, GPREC: tl.constexpr,
                       FOLD: tl.constexpr):
    # grad_l[rus, cols] = scale b_c sum over image tiles of M^[rows, rus]^T @ dS (M^ = m a, unit rows),
    # minus the normalization term; program (i, j) owns column block i and channel block j, its
    # accumulator in registers, stored once; axis 2 splits the image sweep: split s stores its partial
    # (R, C) slab and sum dS*S per column, merged in order by _grad_l_merge_kernel.
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rus = tl.program_id(1) * BLOCK_RU + tl.arange(0, BLOCK_RU)
    split = tl.program_id(2)
    scale = _from_parts(sc0, sc1, sc2, CT)
    invb = tl.load(invb_ptr + cols, mask=cols < C, other=0.0)
    csum = tl.zeros((BLOCK_K,), CT)
    acc = tl.zeros((BLOCK_RU, BLOCK_K), CT)
    i_lo = split * tiles_per_split * BLOCK_M
    i_hi = tl.minimum(N, i_lo + tiles_per_split * BLOCK_M)
    for i0 in range(i_lo, i_hi, BLOCK_M):
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
    vm = (rus[:, None] < R) & (cols[None, :] < C)
    if FOLD:
        v = acc * (invb[None, :] * scale)
    else:
        v = acc
    if DIRECT:
        # One split: the final gradient straight from registers (no (R, C) float32 slab the size of l).
        if NORMALIZE:
            coef = tl.load(coefb_ptr + cols, mask=cols < C, other=0.0) * csum
            lbase = (cols // HW) * sl0 + (cols % HW) * sl2
            x = tl.load(l_ptr + lbase[None, :] + rus[:, None] * sl1, mask=vm, other=0.0).to(CT)
            v = v - coef[None, :] * x
        obase = (cols // HW) * (R * HW) + (cols % HW)
        tl.store(grad_ptr + obase[None, :] + rus[:, None] * HW, v.to(grad_ptr.dtype.element_ty), mask=vm)
    else:
        tl.store(out_ptr + (split * R + rus[:, None]) * C + cols[None, :], v, mask=vm)
        if NORMALIZE:
            tl.store(csum_ptr + split * C + cols, csum, mask=(cols < C) & (tl.program_id(1) == 0))


@triton.jit
def _grad_l_merge_kernel(part_ptr, csum_ptr, l_ptr, coefb_ptr, out_ptr, R, C, HW, sl0, sl1, sl2, splits,
                         NORMALIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_RU: tl.constexpr, CT: tl.constexpr,
                         DIRECT: tl.constexpr):
    # grad_l = sum of the splits' (R, C) slabs (order 0, 1, 2, ...) - coef_b (sum of their sum dS*S) l.
    # DIRECT (one split: the column kernel stored grad_l itself): one empty program, launched all the
    # same so that the launch count, and the node count of a captured CUDA graph, never depend on the shape.
    if DIRECT:
        return
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rus = tl.program_id(1) * BLOCK_RU + tl.arange(0, BLOCK_RU)
    vm = (rus[:, None] < R) & (cols[None, :] < C)
    v = tl.zeros((BLOCK_RU, BLOCK_K), CT)
    csum = tl.zeros((BLOCK_K,), CT)
    for sp in range(0, splits):
        v += tl.load(part_ptr + (sp * R + rus[:, None]) * C + cols[None, :], mask=vm, other=0.0)
        if NORMALIZE:
            csum += tl.load(csum_ptr + sp * C + cols, mask=cols < C, other=0.0)
    # grad_l is contiguous (N, R, HW): column c = j*HW + k, channel r at j*R*HW + r*HW + k.
    obase = (cols // HW) * (R * HW) + (cols % HW)
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


def _column_norms(x, n, r, hw, strides, normalize, eps, ct):
    # (inv, coef) of the N*HW flattened columns of a strided (N, R, HW) view, in ct: one launch.
    inv = torch.empty((n * hw,), dtype=ct, device=x.device)
    coef = torch.empty((n * hw,), dtype=ct, device=x.device)
    if n * hw == 0:
        return inv, coef
    bc, br = 32, _pow2_block(r, 16, 64)
    _norm_kernel[(triton.cdiv(n * hw, bc),)](x, inv, coef, n * hw, r, hw, *strides, *_f32_parts(eps),
                                             NORMALIZE=bool(normalize), BLOCK_C=bc, BLOCK_R=br, CT=_tl_dtype(ct))
    return inv, coef


def _scalings(l, m, normalize, eps, ct):
    """Inverse norms a (N,), b (N*HW,) and the normalization coefficients [||x|| > eps] / max(||x||, eps)^2
    (ones and zeros when not normalizing): two launches."""
    n, r, hw = l.shape
    inva, coefa = _column_norms(m, n, r, 1, (m.stride(0), m.stride(1), 0), normalize, eps, ct)
    invb, coefb = _column_norms(l, n, r, hw, (l.stride(0), l.stride(1), l.stride(2)), normalize, eps, ct)
    return inva, invb, coefa, coefb


def _self_parts(self_logit, hw):
    # HW * exp(self_logit) enters as the single logit self_logit + log(HW) (-inf when there is none).
    return _f32_parts(float(self_logit) + math.log(hw) if (self_logit is not None and hw > 0) else float("-inf"))


_MERGE_BLOCK = 128  # rows per program of the forward merge


def forward_plan(n, hw, meta, x):
    """(grid of the partial kernel, tiles per split, grid of the merge) of the forward."""
    rb = triton.cdiv(n, meta["BLOCK_M"])
    splits, per = configs.split_plan(rb, triton.cdiv(n * hw, meta["BLOCK_K"]), x)
    return (rb, splits), per, (triton.cdiv(n, _MERGE_BLOCK),)


def backward_plan(n, hw, r, meta, x):
    """((grid, tiles per split) of the m kernel, the same of the l kernel, the merge grids (m, l))."""
    nr = triton.cdiv(r, meta["BLOCK_RU"])
    rb, cb = triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n * hw, meta["BLOCK_K"])
    ms, mper = configs.split_plan(rb * nr, cb, x)
    ls, lper = configs.split_plan(cb * nr, rb, x)
    return ((rb, nr, ms), mper), ((cb, nr, ls), lper), ((rb, nr), (cb, nr))


def _check(l, m):
    if l.dim() != 3 or m.dim() != 2 or m.shape[0] != l.shape[0] or m.shape[1] != l.shape[1]:
        raise RuntimeError(f"infonce_lse: expected l (N, R, HW) and m (N, R), got {tuple(l.shape)} and {tuple(m.shape)}")
    if l.dtype != m.dtype or l.device != m.device:
        raise RuntimeError("infonce_lse: l and m must have the same dtype and device")


def infonce_lse_forward(l, m, scale, self_logit, normalize, eps):
    """(pos (N, HW), neg (N,)) in the compute dtype; see the module docstring and the reference.
    Launches, at every size: the two norm kernels, the partial kernel over (image blocks, column
    splits), the merge; no host sync and no host-to-device copy."""
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
    grid, per, merge_grid = forward_plan(n, hw, meta, l)
    ws = torch.empty((grid[1], n, 2), dtype=ct, device=l.device)
    _forward_kernel[grid](m, l, inva, invb, *_f32_parts(scale), pos, ws, n, r, n * hw, hw, m.stride(0), m.stride(1),
                          l.stride(0), l.stride(1), l.stride(2), per, **meta, **launch)
    _forward_merge_kernel[merge_grid](ws, *_self_parts(self_logit, hw), neg, n, grid[1],
                                      HAS_SELF=self_logit is not None, BLOCK=_MERGE_BLOCK, CT=meta["CT"])
    return pos, neg


def infonce_lse_backward(grad_pos, grad_neg, l, m, neg, scale, self_logit, normalize, eps):
    """(grad_l (N, R, HW) contiguous in l's dtype, grad_m (N, R) contiguous in m's dtype). Launches, at
    every size: the two norm kernels, the m and l kernels over (blocks, channel blocks, splits)
    writing partial gradients, and one merge per output (splits summed in order 0, 1, 2, ...)."""
    _check(l, m)
    n, r, hw = l.shape
    ct = _compute_dtype(l)
    if n == 0 or r == 0 or hw == 0:
        return (torch.zeros((n, r, hw), dtype=l.dtype, device=l.device),
                torch.zeros((n, r), dtype=m.dtype, device=m.device))
    # Every element is stored once by its owning program: no zero fill, no atomics.
    grad_l = torch.empty((n, r, hw), dtype=l.dtype, device=l.device)
    grad_m = torch.empty((n, r), dtype=m.dtype, device=m.device)
    meta, gmeta, launch = _meta(l, n, hw, r)
    inva, invb, coefa, coefb = _scalings(l, m, normalize, eps, ct)
    sc = _f32_parts(scale)
    gpos = grad_pos.to(ct).contiguous()
    gneg = grad_neg.to(ct).contiguous()
    negc = neg.to(ct).contiguous()
    c = n * hw
    (mgrid, mper), (lgrid, lper), (mmerge, lmerge) = backward_plan(n, hw, r, meta, l)
    pm = torch.empty((mgrid[2], n, r), dtype=ct, device=l.device)
    cm = torch.empty((mgrid[2], n), dtype=ct, device=l.device)
    direct = lgrid[2] == 1
    pl = torch.empty((0 if direct else lgrid[2] * r * c,), dtype=ct, device=l.device)
    cl = torch.empty((0 if direct else lgrid[2] * c,), dtype=ct, device=l.device)
    strides = (m.stride(0), m.stride(1), l.stride(0), l.stride(1), l.stride(2))
    common = (m, l, inva, invb, *sc, gpos, gneg, negc)
    _backward_m_kernel[mgrid](*common, pm, cm, n, r, c, hw, *strides, mper, NORMALIZE=bool(normalize), **meta,
                              **gmeta, **launch)
    _backward_l_kernel[lgrid](*common, pl, cl, coefb, grad_l, n, r, c, hw, *strides, lper, DIRECT=direct,
                              NORMALIZE=bool(normalize), **meta, **gmeta, **launch)
    _grad_m_merge_kernel[mmerge](pm, cm, m, coefa, grad_m, n, r, m.stride(0), m.stride(1), mgrid[2],
                                 NORMALIZE=bool(normalize), BLOCK_M=meta["BLOCK_M"], BLOCK_RU=meta["BLOCK_RU"],
                                 CT=meta["CT"])
    _grad_l_merge_kernel[(1, 1) if direct else lmerge](pl, cl, l, coefb, grad_l, r, c, hw, l.stride(0), l.stride(1),
                                                       l.stride(2), lgrid[2], NORMALIZE=bool(normalize),
                                                       BLOCK_K=meta["BLOCK_K"], BLOCK_RU=meta["BLOCK_RU"],
                                                       CT=meta["CT"], DIRECT=direct)
    return grad_l, grad_m
