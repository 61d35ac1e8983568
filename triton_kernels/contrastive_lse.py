"""Triton kernels of contrastive_lse (contract: fastgan/reference/contrastive.py:contrastive_lse).

Tiling (flash-attention style, written for this contract):
  norms     _norms_kernel: ||x_i|| and 1 / max(||x_i||, eps) per row, one launch per input (one when
            b is a).
  forward   program (i, s) per BLOCK_N rows block i and column split s: loop over the split's run of
            BLOCK_M column tiles, each S tile built by tl.dot over BLOCK_D slices of D; masks, relu
            and an online (max, sum) per predicate in float32 registers; writes its partial states
            and row max to a (SPLITS, N, 7) workspace. _forward_merge_kernel merges the splits in
            the fixed order 0, 1, 2, ... (so the bits depend on the shapes only), then the extra
            logit, and writes one LSE per row and predicate and the row max.
  backward  no atomics: a row kernel computes U = dS~ B, program (i, j, s) owning rows block i,
            D block j (BLOCK_DU wide) and column split s; a column kernel computes V = dS~^T A the
            same way. Each program recomputes S tile by tile over the full D, sweeps its split's
            column (row) tiles with its BLOCK_N x BLOCK_DU accumulator in registers, and stores it
            once into slab s of a (SPLITS, rows, D) workspace
            (dS~_ij = scale inv_a_i inv_b_j f'(z_ij) sum_k w_ik mask_k exp(f(z_ij) - lse_ik)).
            Both gradient products are tl.dot on the input's half type (tensor cores) with float32
            accumulation: inv_b (inv_a) is folded into the unit-norm operand B^ (A^), scale and the
            other inverse norm into the store, so no half operand holds an unbounded value.
            _grad_merge_kernel (one per side) sums the slabs in order 0, 1, 2, ..., applies the
            normalization backward and stores in the input dtype; the A side also writes grad_extra.
            Why partial slabs and not column-owned gradient rows: the row kernel's outputs are the
            rows of U, which every column tile contributes to; splitting its column sweep needs a
            sum, and summing slabs in a fixed order is deterministic where atomics are not.
Split count: configs.split_plan, from N, M, D, the tiles and the SM count only (no host sync, no
data-dependent choice): rows (x D blocks) alone when they reach one program per SM, else the sweep
split into equal runs of tiles. Launches per call, at every N: forward 3 (2 when b is a) + backward
6 (5 when b is a): 2C (b is a) 8 for forward + backward.
Configurations: triton_kernels/configs.py (per architecture on a GPU, _blocks in the interpreter).
float32 operands follow torch.get_float32_matmul_precision() (TF32 for "high"/"medium").
Floor: forward 2NMD flops, backward 2 x (2NMD (D / BLOCK_DU) + 2NMD) (S recomputed per D block);
(N + M) D inputs read; the workspaces are O(SPLITS N D) with SPLITS > 1 only while the grid is
smaller than the SM count (bounded by 2 x SMs x BLOCK_N x BLOCK_DU elements); inputs are never copied.
"""
import math
import struct

import torch
import triton
import triton.language as tl

from . import configs

PRED_ALL, PRED_SAME, PRED_DIFF = 0, 1, 2


@triton.jit
def _pred_mask(P: tl.constexpr, la, lb):
    # [rows, cols] mask of predicate P from row labels la[:, None] and column labels lb[None, :].
    if P == 1:
        return la[:, None] == lb[None, :]
    elif P == 2:
        return la[:, None] != lb[None, :]
    else:
        return la[:, None] == la[:, None]  # all true, right shape


@triton.jit
def _logits(a_ptr, b_ptr, inva_ptr, invb_ptr, rows, cols, N, M, D, stride_a, stride_b, scale, bias,
            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=CT)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(a_ptr + rows[:, None] * stride_a + ds[None, :], mask=(rows[:, None] < N) & (ds[None, :] < D), other=0.0)
        b = tl.load(b_ptr + cols[:, None] * stride_b + ds[None, :], mask=(cols[:, None] < M) & (ds[None, :] < D), other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision=PREC, out_dtype=CT)
    inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
    invb = tl.load(invb_ptr + cols, mask=cols < M, other=0.0)
    return acc * (inva[:, None] * scale) * invb[None, :] + bias


@triton.jit
def _online_update(m, s, v):
    # Merge a tile's values v (rows x cols, -inf where excluded) into running (max, sum) per row.
    m_new = tl.maximum(m, tl.max(v, axis=1))
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - safe) + tl.sum(tl.exp(v - safe[:, None]), axis=1)
    # A +inf logit makes the LSE +inf (as torch.logsumexp), not inf - inf = NaN.
    s = tl.where(m_new == float("inf"), 1.0, s)
    return m_new, s


@triton.jit
def _merge_state(m, s, mj, sj):
    # Merge a partial (max, sum) state (mj, sj) into (m, s): the split merge, in the order of the calls.
    m_new = tl.maximum(m, mj)
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - safe) + sj * tl.exp(mj - safe)
    s = tl.where(m_new == float("inf"), 1.0, s)
    return m_new, s


# Partial-state slots per (split, row) of the forward workspace: m_k at k, s_k at 3 + k, the row max at 6.
_WS = 7


@triton.jit
def _forward_kernel(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, ws_ptr,
                    N, M, D, stride_a, stride_b, scale, bias, self_offset, tiles_per_split,
                    HAS_LABELS: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                    K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                    CT: tl.constexpr, PREC: tl.constexpr):
    # Program (i, s): rows block i over the s-th run of tiles_per_split column tiles; writes its
    # partial (max, sum) per predicate and its row max to the workspace (SPLITS, N, _WS).
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_LABELS:
        la = tl.load(la_ptr + rows, mask=rows < N, other=0)
    else:
        la = rows
    ninf = float("-inf")
    rmax = tl.full((BLOCK_N,), ninf, CT)
    m0 = tl.full((BLOCK_N,), ninf, CT)
    s0 = tl.zeros((BLOCK_N,), CT)
    m1 = tl.full((BLOCK_N,), ninf, CT)
    s1 = tl.zeros((BLOCK_N,), CT)
    m2 = tl.full((BLOCK_N,), ninf, CT)
    s2 = tl.zeros((BLOCK_N,), CT)
    c_lo = split * tiles_per_split * BLOCK_M
    c_hi = tl.minimum(M, c_lo + tiles_per_split * BLOCK_M)
    for c0 in range(c_lo, c_hi, BLOCK_M):
        cols = c0 + tl.arange(0, BLOCK_M)
        z = _logits(a_ptr, b_ptr, inva_ptr, invb_ptr, rows, cols, N, M, D, stride_a, stride_b, scale, bias,
                    BLOCK_N, BLOCK_M, BLOCK_D, CT, PREC)
        ok = (cols[None, :] < M) & (rows[:, None] < N)
        if EXCLUDE_SELF:
            ok = ok & (cols[None, :] != rows[:, None] + self_offset)
        rmax = tl.maximum(rmax, tl.max(tl.where(ok, z, ninf), axis=1))
        if RELU:
            z = tl.maximum(z, 0.0)
        if HAS_LABELS:
            lb = tl.load(lb_ptr + cols, mask=cols < M, other=0)
        else:
            lb = cols
        m0, s0 = _online_update(m0, s0, tl.where(ok & _pred_mask(P0, la, lb), z, ninf))
        if K > 1:
            m1, s1 = _online_update(m1, s1, tl.where(ok & _pred_mask(P1, la, lb), z, ninf))
        if K > 2:
            m2, s2 = _online_update(m2, s2, tl.where(ok & _pred_mask(P2, la, lb), z, ninf))
    w = ws_ptr + (split * N + rows) * 7
    live = rows < N
    tl.store(w + 6, rmax, mask=live)
    tl.store(w + 0, m0, mask=live)
    tl.store(w + 3, s0, mask=live)
    if K > 1:
        tl.store(w + 1, m1, mask=live)
        tl.store(w + 4, s1, mask=live)
    if K > 2:
        tl.store(w + 2, m2, mask=live)
        tl.store(w + 5, s2, mask=live)


@triton.jit
def _lse_of(m, s):
    # m = -inf: nothing admissible (s = 0, lse = -inf), or only NaN (s = NaN, lse = NaN as the reference).
    return tl.where((m == float("-inf")) & (s == s), float("-inf"), m + tl.log(s))


@triton.jit
def _forward_merge_kernel(ws_ptr, extra_ptr, lse_ptr, rowmax_ptr, N, splits,
                          HAS_EXTRA: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr, CT: tl.constexpr):
    # The partial states of every split merged in the fixed order 0, 1, 2, ... (bitwise deterministic
    # for a given split count), then the extra logit, then one LSE per row and predicate.
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < N
    ninf = float("-inf")
    rmax = tl.full((BLOCK,), ninf, CT)
    m0 = tl.full((BLOCK,), ninf, CT)
    s0 = tl.zeros((BLOCK,), CT)
    m1 = tl.full((BLOCK,), ninf, CT)
    s1 = tl.zeros((BLOCK,), CT)
    m2 = tl.full((BLOCK,), ninf, CT)
    s2 = tl.zeros((BLOCK,), CT)
    for sp in range(0, splits):
        w = ws_ptr + (sp * N + rows) * 7
        rmax = tl.maximum(rmax, tl.load(w + 6, mask=live, other=ninf))
        m0, s0 = _merge_state(m0, s0, tl.load(w + 0, mask=live, other=ninf), tl.load(w + 3, mask=live, other=0.0))
        if K > 1:
            m1, s1 = _merge_state(m1, s1, tl.load(w + 1, mask=live, other=ninf), tl.load(w + 4, mask=live, other=0.0))
        if K > 2:
            m2, s2 = _merge_state(m2, s2, tl.load(w + 2, mask=live, other=ninf), tl.load(w + 5, mask=live, other=0.0))
    if HAS_EXTRA:
        e = tl.load(extra_ptr + rows, mask=live, other=0.0).to(CT)
        m0, s0 = _online_update(m0, s0, e[:, None])
        m1, s1 = _online_update(m1, s1, e[:, None])
        m2, s2 = _online_update(m2, s2, e[:, None])
    tl.store(rowmax_ptr + rows, rmax, mask=live)
    tl.store(lse_ptr + rows * K, _lse_of(m0, s0), mask=live)
    if K > 1:
        tl.store(lse_ptr + rows * K + 1, _lse_of(m1, s1), mask=live)
    if K > 2:
        tl.store(lse_ptr + rows * K + 2, _lse_of(m2, s2), mask=live)


@triton.jit
def _pred_term(P: tl.constexpr, k: tl.constexpr, K: tl.constexpr, ok, la, lb, fz, lse_ptr, w_ptr, rows, N):
    # w_ik mask_k exp(f(z_ij) - lse_ik) for predicate k (0 where the set is empty: lse = -inf).
    lse = tl.load(lse_ptr + rows * K + k, mask=rows < N, other=float("-inf"))
    w = tl.load(w_ptr + rows * K + k, mask=rows < N, other=0.0)
    live = lse != float("-inf")
    safe = tl.where(live, lse, 0.0)
    keep = ok & _pred_mask(P, la, lb) & live[:, None]
    return tl.where(keep, w[:, None] * tl.exp(fz - safe[:, None]), 0.0)


@triton.jit
def _grad_logits(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, lse_ptr, w_ptr, rows, cols,
                 N, M, D, stride_a, stride_b, scale, bias, self_offset,
                 HAS_LABELS: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                 K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 CT: tl.constexpr, PREC: tl.constexpr):
    # G tile: f'(z_ij) sum_k w_ik mask_k exp(f(z_ij) - lse_ik), so dS~ = scale inv_a_i inv_b_j G.
    # The scalings are left to the callers: they fold inv into the operand they multiply (x^ = x inv,
    # a unit vector) and scale into the store, so a half operand never holds an unbounded value.
    z = _logits(a_ptr, b_ptr, inva_ptr, invb_ptr, rows, cols, N, M, D, stride_a, stride_b, scale, bias,
                BLOCK_N, BLOCK_M, BLOCK_D, CT, PREC)
    ok = (cols[None, :] < M) & (rows[:, None] < N)
    if EXCLUDE_SELF:
        ok = ok & (cols[None, :] != rows[:, None] + self_offset)
    if RELU:
        ok = ok & (z > 0)
        fz = tl.maximum(z, 0.0)
    else:
        fz = z
    if HAS_LABELS:
        la = tl.load(la_ptr + rows, mask=rows < N, other=0)
        lb = tl.load(lb_ptr + cols, mask=cols < M, other=0)
    else:
        la = rows
        lb = cols
    # One term per predicate, each with its own constexpr P (a constexpr cannot be reassigned inside a
    # static_range loop: that failed to compile for K >= 2 on every real target).
    g = _pred_term(P0, 0, K, ok, la, lb, fz, lse_ptr, w_ptr, rows, N)
    if K > 1:
        g += _pred_term(P1, 1, K, ok, la, lb, fz, lse_ptr, w_ptr, rows, N)
    if K > 2:
        g += _pred_term(P2, 2, K, ok, la, lb, fz, lse_ptr, w_ptr, rows, N)
    return g


@triton.jit
def _backward_rows_kernel(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, lse_ptr, w_ptr, u_ptr,
                          N, M, D, stride_a, stride_b, scale, bias, self_offset, tiles_per_split,
                          HAS_LABELS: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                          K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr, GT: tl.constexpr,
                          GPREC: tl.constexpr):
    # U[rows, dus] = scale inv_a[rows] sum over column tiles of G @ B^[cols, dus]. Program (i, j) owns
    # rows block i and D block j of U: its accumulator stays in registers over the whole column sweep
    # and is stored once (S is recomputed per D block: D / BLOCK_DU times, which also gives the grid
    # D / BLOCK_DU times more programs at small N). Axis 2 splits the column sweep (see split_plan):
    # split s writes its partial U to slab s of the (SPLITS, N, D) workspace u_ptr, merged in order later.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dus = tl.program_id(1) * BLOCK_DU + tl.arange(0, BLOCK_DU)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_N, BLOCK_DU), CT)
    c_lo = split * tiles_per_split * BLOCK_M
    c_hi = tl.minimum(M, c_lo + tiles_per_split * BLOCK_M)
    for c0 in range(c_lo, c_hi, BLOCK_M):
        cols = c0 + tl.arange(0, BLOCK_M)
        g = _grad_logits(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, lse_ptr, w_ptr, rows, cols,
                         N, M, D, stride_a, stride_b, scale, bias, self_offset, HAS_LABELS, RELU, EXCLUDE_SELF,
                         K, P0, P1, P2, BLOCK_N, BLOCK_M, BLOCK_D, CT, PREC)
        invb = tl.load(invb_ptr + cols, mask=cols < M, other=0.0)
        b = tl.load(b_ptr + cols[:, None] * stride_b + dus[None, :], mask=(cols[:, None] < M) & (dus[None, :] < D),
                    other=0.0).to(CT)
        bhat = (b * invb[:, None]).to(GT)
        acc += tl.dot(g.to(GT), bhat, input_precision=GPREC, out_dtype=CT)
    inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
    acc = acc * (inva[:, None] * scale)
    tl.store(u_ptr + (split * N + rows[:, None]) * D + dus[None, :], acc, mask=(rows[:, None] < N) & (dus[None, :] < D))


@triton.jit
def _backward_cols_kernel(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, lse_ptr, w_ptr, v_ptr,
                          N, M, D, stride_a, stride_b, scale, bias, self_offset, tiles_per_split,
                          HAS_LABELS: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                          K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr, GT: tl.constexpr,
                          GPREC: tl.constexpr):
    # V[cols, dus] = scale inv_b[cols] sum over row tiles of G^T @ A^[rows, dus]; as the row kernel,
    # program (i, j, s) owns column block i and D block j of V over the s-th run of row tiles,
    # accumulated in registers, stored once to slab s of the (SPLITS, M, D) workspace v_ptr.
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dus = tl.program_id(1) * BLOCK_DU + tl.arange(0, BLOCK_DU)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_M, BLOCK_DU), CT)
    r_lo = split * tiles_per_split * BLOCK_N
    r_hi = tl.minimum(N, r_lo + tiles_per_split * BLOCK_N)
    for r0 in range(r_lo, r_hi, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        g = _grad_logits(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, lse_ptr, w_ptr, rows, cols,
                         N, M, D, stride_a, stride_b, scale, bias, self_offset, HAS_LABELS, RELU, EXCLUDE_SELF,
                         K, P0, P1, P2, BLOCK_N, BLOCK_M, BLOCK_D, CT, PREC)
        inva = tl.load(inva_ptr + rows, mask=rows < N, other=0.0)
        a = tl.load(a_ptr + rows[:, None] * stride_a + dus[None, :], mask=(rows[:, None] < N) & (dus[None, :] < D),
                    other=0.0).to(CT)
        ahat = (a * inva[:, None]).to(GT)
        acc += tl.dot(tl.trans(g.to(GT)), ahat, input_precision=GPREC, out_dtype=CT)
    invb = tl.load(invb_ptr + cols, mask=cols < M, other=0.0)
    acc = acc * (invb[:, None] * scale)
    tl.store(v_ptr + (split * M + cols[:, None]) * D + dus[None, :], acc, mask=(cols[:, None] < M) & (dus[None, :] < D))


@triton.jit
def _from_parts(p0, p1, p2, CT: tl.constexpr):
    # A host double from its three float32 parts (_f32_parts; Triton passes a Python float as float32):
    # float64 gets the double back (72 bits of parts), float32 gets float32(x).
    # (A (1,) tensor: the interpreter passes the parts as Python floats, which have no .to.)
    return ((tl.zeros((1,), CT) + p0) + p1) + p2


@triton.jit
def _grad_merge_kernel(part_ptr, x_ptr, inv_ptr, nrm_ptr, out_ptr, extra_ptr, lse_ptr, w_ptr, gextra_ptr,
                       N, D, stride_x, stride_xd, splits, eps0, eps1, eps2,
                       NORMALIZE: tl.constexpr, EXTRA: tl.constexpr, HAS_EXTRA: tl.constexpr, K: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr):
    # One side's gradient from its (SPLITS, N, D) partials: U = sum of the splits in the fixed order
    # 0, 1, 2, ... (the same order in both passes, so the same bits), then the normalization backward
    # dX = U - [||x|| > eps] x^ (x^ . U), x^ = x inv, stored once in x's dtype. EXTRA (the A side):
    # also grad_extra_i = sum_k w_ik exp(extra_i - lse_ik) over the finite lse (0 without extra).
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < N
    inv = tl.load(inv_ptr + rows, mask=live, other=0.0)
    dot = tl.zeros((BLOCK_R,), CT)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_C):
            ds = d0 + tl.arange(0, BLOCK_C)
            mask = live[:, None] & (ds[None, :] < D)
            u = tl.zeros((BLOCK_R, BLOCK_C), CT)
            for sp in range(0, splits):
                u += tl.load(part_ptr + (sp * N + rows[:, None]) * D + ds[None, :], mask=mask, other=0.0)
            x = tl.load(x_ptr + rows[:, None] * stride_x + ds[None, :] * stride_xd, mask=mask, other=0.0).to(CT)
            dot += tl.sum(x * inv[:, None] * u, axis=1)
        nrm = tl.load(nrm_ptr + rows, mask=live, other=0.0)
        dot = tl.where(nrm > _from_parts(eps0, eps1, eps2, CT), dot, 0.0)
    for d0 in range(0, D, BLOCK_C):
        ds = d0 + tl.arange(0, BLOCK_C)
        mask = live[:, None] & (ds[None, :] < D)
        u = tl.zeros((BLOCK_R, BLOCK_C), CT)
        for sp in range(0, splits):
            u += tl.load(part_ptr + (sp * N + rows[:, None]) * D + ds[None, :], mask=mask, other=0.0)
        if NORMALIZE:
            x = tl.load(x_ptr + rows[:, None] * stride_x + ds[None, :] * stride_xd, mask=mask, other=0.0).to(CT)
            u = u - x * inv[:, None] * dot[:, None]
        tl.store(out_ptr + rows[:, None] * D + ds[None, :], u.to(out_ptr.dtype.element_ty), mask=mask)
    if EXTRA:
        g = tl.zeros((BLOCK_R,), CT)
        if HAS_EXTRA:
            e = tl.load(extra_ptr + rows, mask=live, other=0.0).to(CT)
            for k in tl.static_range(K):
                lse = tl.load(lse_ptr + rows * K + k, mask=live, other=float("-inf"))
                wk = tl.load(w_ptr + rows * K + k, mask=live, other=0.0)
                fin = (lse == lse) & (lse != float("inf")) & (lse != float("-inf"))
                g += wk * tl.where(fin, tl.exp(tl.where(fin, e - lse, 0.0)), 0.0)
        tl.store(gextra_ptr + rows, g.to(gextra_ptr.dtype.element_ty), mask=live)


@triton.jit
def _norms_kernel(x_ptr, nrm_ptr, inv_ptr, N, D, stride_x, stride_xd, eps0, eps1, eps2,
                  NORMALIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr):
    # ||x_i|| and 1 / max(||x_i||, eps) per row in the compute dtype (1 when not normalizing): one
    # launch instead of the norm / clamp / reciprocal ATen chain.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < N
    acc = tl.zeros((BLOCK_R,), CT)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_C):
            ds = d0 + tl.arange(0, BLOCK_C)
            x = tl.load(x_ptr + rows[:, None] * stride_x + ds[None, :] * stride_xd, mask=live[:, None] & (ds[None, :] < D),
                        other=0.0).to(CT)
            acc += tl.sum(x * x, axis=1)
        nrm = tl.sqrt(acc)
        tl.store(nrm_ptr + rows, nrm, mask=live)
        tl.store(inv_ptr + rows, 1.0 / tl.maximum(nrm, _from_parts(eps0, eps1, eps2, CT)), mask=live)
    else:
        tl.store(nrm_ptr + rows, acc, mask=live)
        tl.store(inv_ptr + rows, acc + 1.0, mask=live)


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _tl_dtype(dt):
    return tl.float64 if dt == torch.float64 else tl.float32


def _inverse_norms(x, normalize, eps, ct):
    if not normalize:
        return torch.ones(x.shape[0], dtype=ct, device=x.device)
    return x.to(ct).norm(dim=1).clamp_min(eps).reciprocal()


def _blocks(d):
    # The interpreter's configuration (CPU tests): 32 x 32 tiles, D in slices of up to 64.
    return 32, 32, 64 if d > 32 else (32 if d > 16 else 16)


def _fp32_precision(dtype):
    """tl.dot input precision: for float32 operands TF32 where torch allows it for matmuls
    (torch.get_float32_matmul_precision() "high" or "medium"), IEEE for "highest"; float64 is always
    IEEE; half operands have no choice (the flag is ignored for them)."""
    if dtype != torch.float32:
        return "ieee" if dtype == torch.float64 else "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _meta(a, label_a, label_b, extra, relu, exclude_self, predicates):
    preds = list(predicates) + [0] * (3 - len(predicates))
    d = a.shape[1]
    arch = configs.arch_of(a)
    ct = _compute_dtype(a)
    if arch is None:
        bn, bm, bd = _blocks(d)
        cfg = dict(BLOCK_N=bn, BLOCK_M=bm, BLOCK_D=bd, BLOCK_DU=configs.pow2_clamp(d, 16, 128))
        launch = {}
    else:
        cfg, launch = configs.contrastive(arch, a.dtype, d)
    half = a.dtype in (torch.float16, torch.bfloat16)
    # Gradient products on tensor cores in the input's half type. The interpreter runs the same path for
    # float16 (so CI executes the GPU's operands), float32 for bfloat16 (its bfloat16 tl.dot is wrong in
    # Triton 3.6).
    gt = _tl_half(a.dtype) if (half and (arch is not None or a.dtype == torch.float16)) else _tl_dtype(ct)
    prec = _fp32_precision(a.dtype)
    meta = dict(HAS_LABELS=label_a is not None and label_b is not None, RELU=bool(relu), EXCLUDE_SELF=bool(exclude_self),
                K=len(predicates), P0=preds[0], P1=preds[1], P2=preds[2], CT=_tl_dtype(ct), PREC=prec, **cfg)
    return meta, dict(GT=gt, GPREC=prec), launch


def _tl_half(dt):
    return tl.float16 if dt == torch.float16 else tl.bfloat16


def _prepare(a, b, label_a, label_b):
    a, b = a.contiguous(), b.contiguous()
    la = label_a.contiguous() if label_a is not None else a.new_empty(0, dtype=torch.int64)
    lb = label_b.contiguous() if label_b is not None else a.new_empty(0, dtype=torch.int64)
    return a, b, la, lb


def _f32(x):
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # beyond float32's range: its infinity (as a float32 argument would be)
        return math.copysign(math.inf, x)


def _f32_parts(x):
    """Three float32 values summing to the double x (see _from_parts): a scalar argument of full
    float64 precision without a host-to-device copy (which a CUDA graph could not capture)."""
    x = float(x)
    if not math.isfinite(x):
        return x, 0.0, 0.0
    p0 = _f32(x)
    if not math.isfinite(p0):
        return p0, 0.0, 0.0
    p1 = _f32(x - p0)
    return p0, p1, _f32(x - p0 - p1)


# Rows per program of the O(N D) norm and merge kernels (their loops run over D in BLOCK_C slices).
_ROWS_BLOCK, _COLS_BLOCK = 16, 64
_MERGE_BLOCK = 128  # rows per program of the forward merge
# The gradient merge (memory-bound, 16 x 64 tiles): 2 warps. With 4, ptxas spilled 4 bytes at 48 registers
# for half inputs on sm_80 (docs/triton_compile_table.md); with 8 it fell to 32 registers.
_GRAD_MERGE_LAUNCH = dict(num_warps=2)


def _norms(x, normalize, eps, ct):
    """(||x_i||, 1 / max(||x_i||, eps)) per row (ones when not normalizing): one Triton launch."""
    n, d = x.shape
    nrm = torch.empty((n,), dtype=ct, device=x.device)
    inv = torch.empty((n,), dtype=ct, device=x.device)
    if n:
        _norms_kernel[(triton.cdiv(n, _ROWS_BLOCK),)](x, nrm, inv, n, d, x.stride(0), x.stride(1), *_f32_parts(eps),
                                                      NORMALIZE=bool(normalize), BLOCK_R=_ROWS_BLOCK,
                                                      BLOCK_C=_COLS_BLOCK, CT=_tl_dtype(ct))
    return nrm, inv


def _same(a, b):
    # b is a (self-similarity: one norm launch) by its metadata: autograd and the dispatcher hand the
    # wrappers separate Python objects for one tensor, so `b is a` misses it. No device access.
    return (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            and a.data_ptr() == b.data_ptr())


def _both_norms(a, b, same, normalize, eps, ct):
    na = _norms(a, normalize, eps, ct)
    return na, (na if same else _norms(b, normalize, eps, ct))


def forward_plan(n, m, meta, x):
    """(grid of the partial kernel, tiles per split, grid of the merge) of the forward."""
    row_blocks = triton.cdiv(n, meta["BLOCK_N"])
    splits, per = configs.split_plan(row_blocks, triton.cdiv(m, meta["BLOCK_M"]), x)
    return (row_blocks, splits), per, (triton.cdiv(n, _MERGE_BLOCK),)


def contrastive_lse_forward(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self,
                            self_offset, predicates):
    """(lse (N, K), rowmax (N,)) in the compute dtype. Launches, at every N: the norms (one, or two
    when b is not a), the partial kernel over (row blocks, column splits), the merge: no host sync."""
    same = _same(a, b)
    a, b, la, lb = _prepare(a, b, label_a, label_b)
    n, d = a.shape
    m = b.shape[0]
    ct = _compute_dtype(a)
    meta, _, launch = _meta(a, label_a, label_b, extra, relu, exclude_self, predicates)
    meta.pop("BLOCK_DU")
    lse = torch.empty((n, len(predicates)), dtype=ct, device=a.device)
    rowmax = torch.empty((n,), dtype=ct, device=a.device)
    if n == 0:
        return lse, rowmax
    ex = extra.to(ct).contiguous() if extra is not None else lse
    (_, inva), (_, invb) = _both_norms(a, b, same, normalize, eps, ct)
    grid, per, merge_grid = forward_plan(n, m, meta, a)
    ws = torch.empty((grid[1], n, _WS), dtype=ct, device=a.device)
    _forward_kernel[grid](a, b, inva, invb, la, lb, ws, n, m, d, a.stride(0), b.stride(0),
                          float(scale), float(bias), int(self_offset), per, **meta, **launch)
    _forward_merge_kernel[merge_grid](ws, ex, lse, rowmax, n, grid[1], HAS_EXTRA=extra is not None,
                                      K=meta["K"], BLOCK=_MERGE_BLOCK, CT=meta["CT"])
    return lse, rowmax


def _normalization_backward(x, inv, u, normalize, eps):
    # dX = U - [||x|| > eps] x^ (x^ . U), x^ = x * inv (U already carries the factor inv).
    if not normalize:
        return u
    xc = x.to(u.dtype)
    xhat = xc * inv[:, None]
    active = (xc.norm(dim=1, keepdim=True) > eps).to(u.dtype)
    return u - xhat * ((xhat * u).sum(dim=1, keepdim=True) * active)


def backward_plan(n, m, d, meta, x):
    """((grid, tiles per split) of the row kernel, the same of the column kernel, the merge grids (A, B))."""
    nd = triton.cdiv(d, meta["BLOCK_DU"])
    rb, cb = triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"])
    rs, rper = configs.split_plan(rb * nd, cb, x)
    cs, cper = configs.split_plan(cb * nd, rb, x)
    return ((rb, nd, rs), rper), ((cb, nd, cs), cper), ((triton.cdiv(n, _ROWS_BLOCK),), (triton.cdiv(m, _ROWS_BLOCK),))


def contrastive_lse_backward(grad_lse, a, b, label_a, label_b, extra, lse, scale, bias, relu, normalize, eps,
                             exclude_self, self_offset, predicates):
    """(grad_a, grad_b, grad_extra). Launches, at every N: the norms (one or two), the row kernel and
    the column kernel, each over (blocks, D blocks, splits) writing partial gradients to a
    (SPLITS, rows, D) workspace, and one merge per side that sums the splits in order, applies the
    normalization backward and stores in the input dtype (the A side also grad_extra). No atomics:
    every workspace element has one writer, so the result is the same bits run after run."""
    same = _same(a, b)
    a_in, b_in = a, b
    a, b, la, lb = _prepare(a, b, label_a, label_b)
    n, d = a.shape
    m = b.shape[0]
    ct = _compute_dtype(a)
    meta, gmeta, launch = _meta(a, label_a, label_b, extra, relu, exclude_self, predicates)
    grad_a = torch.empty((n, d), dtype=a_in.dtype, device=a.device)
    grad_b = torch.empty((m, d), dtype=b_in.dtype, device=a.device)
    grad_extra = torch.empty((n,), dtype=extra.dtype if extra is not None else ct, device=a.device)
    if n == 0 or m == 0 or d == 0:
        # Nothing to sweep: zero gradients (grad_extra: exp(extra - lse) where lse = extra is finite).
        grad_a.zero_()
        grad_b.zero_()
        if extra is not None and n > 0:
            w = grad_lse.to(ct)
            p = torch.where(torch.isfinite(lse), (extra.to(ct)[:, None] - lse.to(ct)).exp(), torch.zeros_like(w))
            grad_extra.copy_((w * p).sum(dim=1))
        else:
            grad_extra.zero_()
        return grad_a, grad_b, grad_extra
    w = grad_lse.to(ct).contiguous()
    lse = lse.to(ct).contiguous()
    (nrma, inva), (nrmb, invb) = _both_norms(a, b, same, normalize, eps, ct)
    (rgrid, rper), (cgrid, cper), (ma, mb) = backward_plan(n, m, d, meta, a)
    u = torch.empty((rgrid[2], n, d), dtype=ct, device=a.device)
    v = torch.empty((cgrid[2], m, d), dtype=ct, device=a.device)
    args = (a, b, inva, invb, la, lb, lse, w)
    scalars = (n, m, d, a.stride(0), b.stride(0), float(scale), float(bias), int(self_offset))
    _backward_rows_kernel[rgrid](*args, u, *scalars, rper, **meta, **gmeta, **launch)
    _backward_cols_kernel[cgrid](*args, v, *scalars, cper, **meta, **gmeta, **launch)
    epair = _f32_parts(eps)
    ex = extra.contiguous() if extra is not None else w
    common = dict(NORMALIZE=bool(normalize), HAS_EXTRA=extra is not None, K=meta["K"], BLOCK_R=_ROWS_BLOCK,
                  BLOCK_C=_COLS_BLOCK, CT=meta["CT"])
    _grad_merge_kernel[ma](u, a, inva, nrma, grad_a, ex, lse, w, grad_extra, n, d, a.stride(0), a.stride(1), rgrid[2], *epair,
                           EXTRA=True, **common, **_GRAD_MERGE_LAUNCH)
    _grad_merge_kernel[mb](v, b, invb, nrmb, grad_b, ex, lse, w, grad_extra, m, d, b.stride(0), b.stride(1), cgrid[2], *epair,
                           EXTRA=False, **common, **_GRAD_MERGE_LAUNCH)
    return grad_a, grad_b, grad_extra
