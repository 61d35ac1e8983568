"""Triton kernels of the O(N D) and O(N) terms around contrastive_lse in the losses (issue 14.5: on a
GPU at GAN sizes a loss costs its launches, and these terms were ~45 ATen launches with autograd).

  pair cosine   out_i = scale cos(x_i, y_{(i + shift) mod N}), each norm clamped at eps (2C's and
                D2D-CE's positive logit, NT-Xent's positive with shift N/2 instead of a rolled copy,
                CLIP's diagonal): one launch forward (_pair_cosine_kernel), one backward
                (_pair_cosine_backward_kernel: grad_x and grad_y, each row written once, y's at its
                shifted row).
  combine       scale sum_i (sum_k c_k x_ik + c_y1 y1_i + c_y2 y2_i) (the loss from the LSEs and the
                positive logits, mean or sum): one program sums the rows in the fixed order of its
                blocks (deterministic, no atomics), one launch forward (_combine_kernel); the backward
                (_combine_backward_kernel) writes every gradient (scale g c), one launch.
Scalars of float64 precision travel as three float32 parts (contrastive_lse._f32_parts): no host-to-
device copy, no host sync.
"""
import torch
import triton
import triton.language as tl

from . import configs
from .contrastive_lse import _compute_dtype, _f32_parts, _fp32_precision, _from_parts, _logits, _norms, _tl_dtype

_ROWS, _COLS = 16, 64  # rows per program, D slice of the pair-cosine kernels
_COMBINE_BLOCK = 256  # rows per step of the single combine program


@triton.jit
def _pair_sums(x_ptr, y_ptr, rows, yrows, live, D, sx, sxd, sy, syd, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
               CT: tl.constexpr):
    # (x_i . y_i, ||x_i||^2, ||y_i||^2) per row, in the compute dtype.
    dot = tl.zeros((BLOCK_R,), CT)
    xx = tl.zeros((BLOCK_R,), CT)
    yy = tl.zeros((BLOCK_R,), CT)
    for d0 in range(0, D, BLOCK_C):
        ds = d0 + tl.arange(0, BLOCK_C)
        mask = live[:, None] & (ds[None, :] < D)
        x = tl.load(x_ptr + rows[:, None] * sx + ds[None, :] * sxd, mask=mask, other=0.0).to(CT)
        y = tl.load(y_ptr + yrows[:, None] * sy + ds[None, :] * syd, mask=mask, other=0.0).to(CT)
        dot += tl.sum(x * y, axis=1)
        xx += tl.sum(x * x, axis=1)
        yy += tl.sum(y * y, axis=1)
    return dot, xx, yy


@triton.jit
def _pair_prologue(x_ptr, y_ptr, N, D, sx, sxd, sy, syd, shift, eps0, eps1, eps2, BLOCK_R: tl.constexpr,
                   BLOCK_C: tl.constexpr, CT: tl.constexpr):
    # The program's rows, their shifted y rows, eps, the norms ||x||, ||y||, their clamped inverses
    # ix = 1 / max(||x||, eps), iy, and cos = (x . y) ix iy (the value of functional._pair_cosine): the
    # common part of the forward and the backward.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < N
    yrows = (rows + shift) % N
    dot, xx, yy = _pair_sums(x_ptr, y_ptr, rows, yrows, live, D, sx, sxd, sy, syd, BLOCK_R, BLOCK_C, CT)
    eps = _from_parts(eps0, eps1, eps2, CT)
    nx, ny = tl.sqrt(xx), tl.sqrt(yy)
    ix = 1.0 / tl.maximum(nx, eps)
    iy = 1.0 / tl.maximum(ny, eps)
    return rows, live, yrows, eps, nx, ny, ix, iy, dot * ix * iy


@triton.jit
def _pair_cosine_kernel(x_ptr, y_ptr, out_ptr, N, D, sx, sxd, sy, syd, shift, eps0, eps1, eps2, sc0, sc1, sc2,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr):
    rows, live, yrows, eps, nx, ny, ix, iy, cos = _pair_prologue(x_ptr, y_ptr, N, D, sx, sxd, sy, syd, shift,
                                                                 eps0, eps1, eps2, BLOCK_R, BLOCK_C, CT)
    tl.store(out_ptr + rows, cos * _from_parts(sc0, sc1, sc2, CT), mask=live)


@triton.jit
def _pair_cosine_backward_kernel(g_ptr, x_ptr, y_ptr, gx_ptr, gy_ptr, N, D, sg, sx, sxd, sy, syd, shift,
                                 eps0, eps1, eps2, sc0, sc1, sc2,
                                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr):
    # With c = (x . y) ix iy, ix = 1 / max(||x||, eps):
    #   dc/dx = ix (iy y - [||x|| > eps] c ix x),  dc/dy = iy (ix x - [||y|| > eps] c iy y).
    rows, live, yrows, eps, nx, ny, ix, iy, c = _pair_prologue(x_ptr, y_ptr, N, D, sx, sxd, sy, syd, shift,
                                                               eps0, eps1, eps2, BLOCK_R, BLOCK_C, CT)
    g = tl.load(g_ptr + rows * sg, mask=live, other=0.0).to(CT) * _from_parts(sc0, sc1, sc2, CT)
    cx = tl.where(nx > eps, c * ix, 0.0)
    cy = tl.where(ny > eps, c * iy, 0.0)
    for d0 in range(0, D, BLOCK_C):
        ds = d0 + tl.arange(0, BLOCK_C)
        mask = live[:, None] & (ds[None, :] < D)
        x = tl.load(x_ptr + rows[:, None] * sx + ds[None, :] * sxd, mask=mask, other=0.0).to(CT)
        y = tl.load(y_ptr + yrows[:, None] * sy + ds[None, :] * syd, mask=mask, other=0.0).to(CT)
        gx = (g * ix)[:, None] * (iy[:, None] * y - cx[:, None] * x)
        gy = (g * iy)[:, None] * (ix[:, None] * x - cy[:, None] * y)
        tl.store(gx_ptr + rows[:, None] * D + ds[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)
        tl.store(gy_ptr + yrows[:, None] * D + ds[None, :], gy.to(gy_ptr.dtype.element_ty), mask=mask)


def pair_cosine_forward(x, y, eps, scale, shift):
    """(N,) scale cos(x_i, y_{(i + shift) mod N}) in the compute dtype of x and y: one launch."""
    n, d = x.shape
    ct = torch.promote_types(_compute_dtype(x), _compute_dtype(y))
    out = torch.empty((n,), dtype=ct, device=x.device)
    if n:
        _pair_cosine_kernel[(triton.cdiv(n, _ROWS),)](x, y, out, n, d, x.stride(0), x.stride(1), y.stride(0),
                                                      y.stride(1), int(shift) % n, *_f32_parts(eps),
                                                      *_f32_parts(scale), BLOCK_R=_ROWS, BLOCK_C=_COLS,
                                                      CT=_tl_dtype(ct))
    return out


def pair_cosine_backward(grad, x, y, eps, scale, shift):
    """(grad_x, grad_y) in x's and y's dtypes: one launch, every row of both written once."""
    n, d = x.shape
    ct = torch.promote_types(_compute_dtype(x), _compute_dtype(y))
    gx = torch.empty((n, d), dtype=x.dtype, device=x.device)
    gy = torch.empty((n, d), dtype=y.dtype, device=x.device)
    if n:
        _pair_cosine_backward_kernel[(triton.cdiv(n, _ROWS),)](
            grad, x, y, gx, gy, n, d, grad.stride(0), x.stride(0), x.stride(1), y.stride(0), y.stride(1),
            int(shift) % n, *_f32_parts(eps), *_f32_parts(scale), BLOCK_R=_ROWS, BLOCK_C=_COLS, CT=_tl_dtype(ct))
    return gx, gy


@triton.jit
def _combine_kernel(x_ptr, y1_ptr, y2_ptr, out_ptr, N, sx, sxk, sy1, sy2, c0, c1, c2, cy1, cy2, s0, s1, s2,
                    K: tl.constexpr, HAS_Y1: tl.constexpr, HAS_Y2: tl.constexpr, BLOCK: tl.constexpr,
                    CT: tl.constexpr):
    # One program: the per-row terms summed block after block (a fixed order: the same bits every run).
    acc = tl.zeros((BLOCK,), CT)
    for r0 in range(0, N, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        live = rows < N
        t = c0 * tl.load(x_ptr + rows * sx, mask=live, other=0.0).to(CT)
        if K > 1:
            t += c1 * tl.load(x_ptr + rows * sx + sxk, mask=live, other=0.0).to(CT)
        if K > 2:
            t += c2 * tl.load(x_ptr + rows * sx + 2 * sxk, mask=live, other=0.0).to(CT)
        if HAS_Y1:
            t += cy1 * tl.load(y1_ptr + rows * sy1, mask=live, other=0.0).to(CT)
        if HAS_Y2:
            t += cy2 * tl.load(y2_ptr + rows * sy2, mask=live, other=0.0).to(CT)
        acc += tl.where(live, t, 0.0)
    total = tl.sum(acc, axis=0) * _from_parts(s0, s1, s2, CT)
    tl.store(out_ptr + tl.arange(0, 1), tl.zeros((1,), CT) + total)


@triton.jit
def _combine_backward_kernel(g_ptr, gx_ptr, gy1_ptr, gy2_ptr, N, c0, c1, c2, cy1, cy2, s0, s1, s2,
                             K: tl.constexpr, HAS_Y1: tl.constexpr, HAS_Y2: tl.constexpr, BLOCK: tl.constexpr,
                             CT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < N
    g = tl.load(g_ptr + rows * 0, mask=live, other=0.0).to(CT) * _from_parts(s0, s1, s2, CT)
    tl.store(gx_ptr + rows * K, g * c0, mask=live)
    if K > 1:
        tl.store(gx_ptr + rows * K + 1, g * c1, mask=live)
    if K > 2:
        tl.store(gx_ptr + rows * K + 2, g * c2, mask=live)
    if HAS_Y1:
        tl.store(gy1_ptr + rows, (g * cy1).to(gy1_ptr.dtype.element_ty), mask=live)
    if HAS_Y2:
        tl.store(gy2_ptr + rows, (g * cy2).to(gy2_ptr.dtype.element_ty), mask=live)


def _coefs(coefs):
    return [float(c) for c in coefs] + [0.0] * (3 - len(coefs))


def combine_forward(x, y1, y2, coefs, cy1, cy2, scale):
    """0-dim scale * sum_i (sum_k coefs[k] x_ik + cy1 y1_i + cy2 y2_i) in x's dtype: one launch."""
    n, k = x.shape
    out = torch.empty((), dtype=x.dtype, device=x.device)
    _combine_kernel[(1,)](x, y1 if y1 is not None else x, y2 if y2 is not None else x, out, n, x.stride(0),
                          x.stride(1), y1.stride(0) if y1 is not None else 0, y2.stride(0) if y2 is not None else 0,
                          *_coefs(coefs), float(cy1), float(cy2), *_f32_parts(scale), K=k, HAS_Y1=y1 is not None,
                          HAS_Y2=y2 is not None, BLOCK=_COMBINE_BLOCK, CT=_tl_dtype(x.dtype))
    return out


def combine_backward(grad, x, y1, y2, coefs, cy1, cy2, scale):
    """(grad_x (N, K) contiguous, grad_y1, grad_y2): every element written, one launch."""
    n, k = x.shape
    gx = torch.empty((n, k), dtype=x.dtype, device=x.device)
    # Shaped as y1, y2 ((N,) or (N, 1): one row each, contiguous), so autograd needs no reshape.
    gy1 = torch.empty(y1.shape if y1 is not None else (n,), dtype=(y1 if y1 is not None else x).dtype, device=x.device)
    gy2 = torch.empty(y2.shape if y2 is not None else (n,), dtype=(y2 if y2 is not None else x).dtype, device=x.device)
    if n:
        _combine_backward_kernel[(triton.cdiv(n, _COMBINE_BLOCK),)](
            grad, gx, gy1, gy2, n, *_coefs(coefs), float(cy1), float(cy2), *_f32_parts(scale), K=k,
            HAS_Y1=y1 is not None, HAS_Y2=y2 is not None, BLOCK=_COMBINE_BLOCK, CT=_tl_dtype(x.dtype))
    return gx, gy1, gy2


@triton.jit
def _d2d_terms(lse_ptr, rmax_ptr, cos_ptr, rows, live, mp, inv_t, CT: tl.constexpr):
    # D2D-CE per row (docs/semantics.md section 3): x = LSE_diff - M (M = the row max, 0 where it is
    # not finite), q = relu((m_p - cos) / t), L = q + logaddexp(-q, x); dL/dx = dL/dq = sigmoid(x + q).
    lse = tl.load(lse_ptr + rows, mask=live, other=float("-inf")).to(CT)
    m = tl.load(rmax_ptr + rows, mask=live, other=0.0).to(CT)
    m = tl.where((m == m) & (m != float("inf")) & (m != float("-inf")), m, 0.0)
    pre = (mp - tl.load(cos_ptr + rows, mask=live, other=0.0).to(CT)) * inv_t
    q = tl.maximum(pre, 0.0)
    x = lse - m
    hi = tl.maximum(-q, x)
    lo = tl.minimum(-q, x)
    # logaddexp as torch computes it: max + log1p(exp(min - max)) (x = -inf: exactly -q, so L = 0).
    term = q + hi + tl.log(1.0 + tl.exp(lo - hi))
    sig = tl.where(x == float("-inf"), 0.0, 1.0 / (1.0 + tl.exp(-(x + q))))
    return term, sig, pre


@triton.jit
def _d2d_kernel(lse_ptr, rmax_ptr, cos_ptr, out_ptr, N, mp0, mp1, mp2, it0, it1, it2, s0, s1, s2,
                BLOCK: tl.constexpr, CT: tl.constexpr):
    mp = _from_parts(mp0, mp1, mp2, CT)
    inv_t = _from_parts(it0, it1, it2, CT)
    acc = tl.zeros((BLOCK,), CT)
    for r0 in range(0, N, BLOCK):  # one program, the rows in a fixed order
        rows = r0 + tl.arange(0, BLOCK)
        live = rows < N
        term, _, _ = _d2d_terms(lse_ptr, rmax_ptr, cos_ptr, rows, live, mp, inv_t, CT)
        acc += tl.where(live, term, 0.0)
    tl.store(out_ptr + tl.arange(0, 1), tl.zeros((1,), CT) + tl.sum(acc, axis=0) * _from_parts(s0, s1, s2, CT))


@triton.jit
def _d2d_backward_kernel(g_ptr, lse_ptr, rmax_ptr, cos_ptr, glse_ptr, gcos_ptr, N, mp0, mp1, mp2, it0, it1, it2,
                         s0, s1, s2, BLOCK: tl.constexpr, CT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < N
    inv_t = _from_parts(it0, it1, it2, CT)
    _, sig, pre = _d2d_terms(lse_ptr, rmax_ptr, cos_ptr, rows, live, _from_parts(mp0, mp1, mp2, CT), inv_t, CT)
    g = tl.load(g_ptr + rows * 0, mask=live, other=0.0).to(CT) * _from_parts(s0, s1, s2, CT) * sig
    tl.store(glse_ptr + rows, g, mask=live)
    tl.store(gcos_ptr + rows, (tl.where(pre > 0, -g * inv_t, 0.0)).to(gcos_ptr.dtype.element_ty), mask=live)


def d2d_forward(lse, rowmax, cos, m_p, t, scale):
    """0-dim scale * sum_i D2D-CE_i from lse (N, 1) contiguous, rowmax (N,), cos (N,): one launch."""
    out = torch.empty((), dtype=lse.dtype, device=lse.device)
    _d2d_kernel[(1,)](lse, rowmax, cos, out, lse.shape[0], *_f32_parts(m_p), *_f32_parts(1.0 / t),
                      *_f32_parts(scale), BLOCK=_COMBINE_BLOCK, CT=_tl_dtype(lse.dtype))
    return out


def d2d_backward(grad, lse, rowmax, cos, m_p, t, scale):
    """(grad_lse shaped as lse, grad_cos): one launch; rowmax is a constant (no gradient)."""
    n = lse.shape[0]
    glse = torch.empty(lse.shape, dtype=lse.dtype, device=lse.device)
    gcos = torch.empty(cos.shape, dtype=cos.dtype, device=lse.device)
    if n:
        _d2d_backward_kernel[(triton.cdiv(n, _COMBINE_BLOCK),)](
            grad, lse, rowmax, cos, glse, gcos, n, *_f32_parts(m_p), *_f32_parts(1.0 / t), *_f32_parts(scale),
            BLOCK=_COMBINE_BLOCK, CT=_tl_dtype(lse.dtype))
    return glse, gcos


# ---------------------------------------------------------------- SupCon's positive term and epilogue
# pos_i = sum_{p != i, y_p = y_i} cos(x_i, x_p) and n_pos_i = |{p != i, y_p = y_i}| as a masked sweep
# of the N x N cosine tiles (the label equality is the mask): no sort, no searchsorted, no index_add,
# no array indexed by label value, whatever the labels; two launches forward (the norms, the sweep), one
# backward, no host sync. The CPU
# backend's fastgan::same_class_cosine_sum (csrc/cpu/same_class_cosine.cpp) has the same semantics.
# Cost: one more N x N x D product forward, two backward, against the ~60 ATen launches of the sorted
# composition (at GAN sizes a loss step costs its launches, issue 14). The norms come from
# contrastive_lse's _norms_kernel (one launch, kept for the backward): computing them inside the sweep
# took 210-255 registers and spilled (docs/triton_compile_table.md).


@triton.jit
def _same_class_tile(x_ptr, inv_ptr, lab_ptr, la, rows, c0, N, D, sx,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, CT: tl.constexpr,
                     PREC: tl.constexpr):
    # The column tile at c0: (cos(x_i, x_j) tile, the positive mask [j != i, y_j = y_i], the columns).
    # contrastive_lse's score tile at scale 1, bias 0 (its product on the input type: tensor cores for
    # half inputs, float32 accumulation).
    cols = c0 + tl.arange(0, BLOCK_M)
    cos = _logits(x_ptr, x_ptr, inv_ptr, inv_ptr, rows, cols, N, N, D, sx, sx, 1.0, 0.0, BLOCK_N, BLOCK_M, BLOCK_D,
                  CT, PREC)
    lb = tl.load(lab_ptr + cols, mask=cols < N, other=0)
    pos = (la[:, None] == lb[None, :]) & (cols[None, :] < N) & (rows[:, None] < N) & (cols[None, :] != rows[:, None])
    return cos, pos, cols


@triton.jit
def _same_class_cosine_kernel(x_ptr, inv_ptr, lab_ptr, pos_ptr, npos_ptr, N, D, sx,
                              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                              CT: tl.constexpr, PREC: tl.constexpr):
    # Program i: rows block i against every column tile, in column order (deterministic).
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = rows < N
    la = tl.load(lab_ptr + rows, mask=live, other=0)
    pos = tl.zeros((BLOCK_N,), CT)
    cnt = tl.zeros((BLOCK_N,), tl.int32)
    for c0 in range(0, N, BLOCK_M):
        cos, m, cols = _same_class_tile(x_ptr, inv_ptr, lab_ptr, la, rows, c0, N, D, sx, BLOCK_N, BLOCK_M, BLOCK_D,
                                        CT, PREC)
        pos += tl.sum(tl.where(m, cos, 0.0), axis=1)
        cnt += tl.sum(m.to(tl.int32), axis=1)
    tl.store(pos_ptr + rows, pos, mask=live)
    tl.store(npos_ptr + rows, cnt.to(tl.int64), mask=live)


@triton.jit
def _same_class_cosine_backward_kernel(g_ptr, sg, x_ptr, nrm_ptr, inv_ptr, lab_ptr, gx_ptr, N, D, sx, eps0, eps1,
                                       eps2, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                                       BLOCK_DU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    # With x^ = x inv, inv = 1 / max(||x||, eps), and the mask M (symmetric):
    #   dL/dx^_k = U_k = sum_j M_kj (g_k + g_j) x^_j,   x^_k . U_k = sum_j M_kj (g_k + g_j) cos_kj = r_k,
    #   dx_k = inv_k (U_k - [||x_k|| > eps] x^_k r_k).
    # Program (i, j) owns rows block i and D block j of dx: U's slice accumulates in registers over the
    # column sweep (S recomputed over the full D per column tile, r_k from the same tiles), stored once.
    # The product is float32 (float64) operands at the float32 matmul precision, whatever the input
    # type: g is unbounded, so no half operand holds it.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dus = tl.program_id(1) * BLOCK_DU + tl.arange(0, BLOCK_DU)
    live = rows < N
    la = tl.load(lab_ptr + rows, mask=live, other=0)
    g_r = tl.load(g_ptr + rows * sg, mask=live, other=0.0).to(CT)
    acc = tl.zeros((BLOCK_N, BLOCK_DU), CT)
    r = tl.zeros((BLOCK_N,), CT)
    for c0 in range(0, N, BLOCK_M):
        cos, m, cols = _same_class_tile(x_ptr, inv_ptr, lab_ptr, la, rows, c0, N, D, sx, BLOCK_N, BLOCK_M, BLOCK_D,
                                        CT, PREC)
        g_c = tl.load(g_ptr + cols * sg, mask=cols < N, other=0.0).to(CT)
        w = tl.where(m, g_r[:, None] + g_c[None, :], 0.0)
        r += tl.sum(w * cos, axis=1)
        inv_c = tl.load(inv_ptr + cols, mask=cols < N, other=0.0)
        b = tl.load(x_ptr + cols[:, None] * sx + dus[None, :], mask=(cols[:, None] < N) & (dus[None, :] < D),
                    other=0.0).to(CT)
        acc += tl.dot(w, b * inv_c[:, None], input_precision=PREC, out_dtype=CT)
    mask = live[:, None] & (dus[None, :] < D)
    inv_r = tl.load(inv_ptr + rows, mask=live, other=0.0)
    x = tl.load(x_ptr + rows[:, None] * sx + dus[None, :], mask=mask, other=0.0).to(CT)
    r = tl.where(tl.load(nrm_ptr + rows, mask=live, other=0.0) > _from_parts(eps0, eps1, eps2, CT), r, 0.0)
    gx = inv_r[:, None] * (acc - x * inv_r[:, None] * r[:, None])
    tl.store(gx_ptr + rows[:, None] * D + dus[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)


def _same_class_meta(x):
    d = x.shape[1]
    arch = configs.arch_of(x)
    if arch is None:  # the interpreter: 32 x 32 tiles (CPU tests stay fast)
        cfg = dict(BLOCK_N=32, BLOCK_M=32, BLOCK_D=configs.pow2_clamp(d, 16, 64), BLOCK_DU=configs.pow2_clamp(d, 16, 64))
        launch = {}
    else:
        cfg, launch = configs.same_class_cosine(arch, x.dtype, d)
    # float32 inputs follow torch.get_float32_matmul_precision(), float64 is IEEE; for half inputs the
    # forward's half product has no choice and the backward's float32 operands (see its kernel) take
    # TF32, whose 10-bit mantissa holds a half input's exactly.
    return cfg, launch, _fp32_precision(x.dtype)


def same_class_cosine_forward(x, labels, eps):
    """(pos (N,) in the compute dtype, n_pos (N,) int64, ||x_i||, 1 / max(||x_i||, eps)): two launches,
    the norms (contrastive_lse's kernel) and the sweep; the norms are kept for the backward."""
    n, d = x.shape
    ct = _compute_dtype(x)
    x = x.contiguous()
    pos = torch.empty((n,), dtype=ct, device=x.device)
    n_pos = torch.empty((n,), dtype=torch.int64, device=x.device)
    nrm, inv = _norms(x, True, eps, ct)
    if n:
        cfg, launch, prec = _same_class_meta(x)
        cfg.pop("BLOCK_DU")
        _same_class_cosine_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
            x, inv, labels.contiguous(), pos, n_pos, n, d, x.stride(0), CT=_tl_dtype(ct), PREC=prec, **cfg, **launch)
    return pos, n_pos, nrm, inv


def same_class_cosine_backward(grad, x, labels, nrm, inv, eps):
    """grad_x (N, D) contiguous in x's dtype from the forward's norms: one launch, every element written once."""
    n, d = x.shape
    ct = _compute_dtype(x)
    x = x.contiguous()
    gx = torch.empty((n, d), dtype=x.dtype, device=x.device)
    if n and d:
        cfg, launch, prec = _same_class_meta(x)
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(d, cfg["BLOCK_DU"]))
        _same_class_cosine_backward_kernel[grid](grad, grad.stride(0), x, nrm, inv, labels.contiguous(), gx, n, d,
                                                 x.stride(0), *_f32_parts(eps), CT=_tl_dtype(ct), PREC=prec, **cfg,
                                                 **launch)
    return gx


@triton.jit
def _supcon_kernel(lse_ptr, slse, pos_ptr, npos_ptr, out_ptr, den_ptr, N, it0, it1, it2,
                   MEAN: tl.constexpr, BLOCK: tl.constexpr, CT: tl.constexpr):
    # One program, the rows in a fixed order: sum_i [n_i > 0] (lse_i - pos_i / (t n_i)), over the
    # number of anchors with a positive (at least 1) for the mean, which stays on the device.
    inv_t = _from_parts(it0, it1, it2, CT)
    acc = tl.zeros((BLOCK,), CT)
    cnt = tl.zeros((BLOCK,), CT)
    for r0 in range(0, N, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        live = rows < N
        n = tl.load(npos_ptr + rows, mask=live, other=0)
        has = n > 0
        lse = tl.load(lse_ptr + rows * slse, mask=has, other=0.0).to(CT)
        pos = tl.load(pos_ptr + rows, mask=has, other=0.0).to(CT)
        acc += tl.where(has, lse - pos * inv_t / tl.maximum(n, 1).to(CT), 0.0)
        cnt += has.to(CT)
    if MEAN:
        den = tl.maximum(tl.sum(cnt, axis=0), 1.0)
    else:
        den = tl.sum(cnt, axis=0) * 0.0 + 1.0
    one = tl.arange(0, 1)
    tl.store(out_ptr + one, tl.zeros((1,), CT) + tl.sum(acc, axis=0) / den)
    tl.store(den_ptr + one, tl.zeros((1,), CT) + den)


@triton.jit
def _supcon_backward_kernel(g_ptr, den_ptr, npos_ptr, glse_ptr, gpos_ptr, N, it0, it1, it2, BLOCK: tl.constexpr,
                            CT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < N
    n = tl.load(npos_ptr + rows, mask=live, other=0)
    has = n > 0
    g = tl.load(g_ptr + rows * 0, mask=live, other=0.0).to(CT) / tl.load(den_ptr + rows * 0, mask=live, other=1.0)
    tl.store(glse_ptr + rows, tl.where(has, g, 0.0), mask=live)
    gp = tl.where(has, -g * _from_parts(it0, it1, it2, CT) / tl.maximum(n, 1).to(CT), 0.0)
    tl.store(gpos_ptr + rows, gp.to(gpos_ptr.dtype.element_ty), mask=live)


def supcon_forward(lse, pos, n_pos, t, mean):
    """(0-dim loss, 0-dim denominator) in lse's dtype from lse (N, 1), pos (N,), n_pos (N,) int64: one launch."""
    out = torch.empty((), dtype=lse.dtype, device=lse.device)
    den = torch.empty((), dtype=lse.dtype, device=lse.device)
    _supcon_kernel[(1,)](lse, lse.stride(0), pos, n_pos, out, den, lse.shape[0], *_f32_parts(1.0 / t),
                         MEAN=bool(mean), BLOCK=_COMBINE_BLOCK, CT=_tl_dtype(lse.dtype))
    return out, den


def supcon_backward(grad, den, lse, pos, n_pos, t):
    """(grad_lse shaped as lse, grad_pos): one launch."""
    n = lse.shape[0]
    glse = torch.empty(lse.shape, dtype=lse.dtype, device=lse.device)
    gpos = torch.empty(pos.shape, dtype=pos.dtype, device=lse.device)
    if n:
        _supcon_backward_kernel[(triton.cdiv(n, _COMBINE_BLOCK),)](
            grad, den, n_pos, glse, gpos, n, *_f32_parts(1.0 / t), BLOCK=_COMBINE_BLOCK, CT=_tl_dtype(lse.dtype))
    return glse, gpos
