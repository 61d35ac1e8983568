"""Triton kernels of contrastive_lse (contract: fastgan/reference/contrastive.py:contrastive_lse).

Tiling (flash-attention style, written for this contract):
  forward   one program per BLOCK_N rows; loop over BLOCK_M column tiles, each S tile built by
            tl.dot over BLOCK_D slices of D; masks, relu and an online (max, sum) per predicate
            in float32 registers; writes one float32 LSE per row and predicate, and the row max.
  backward  no atomics: a row kernel computes U = dS~ B, program (i, j) owning rows block i and D
            block j (BLOCK_DU wide) of U; a column kernel computes V = dS~^T A the same way. Each
            program recomputes S tile by tile over the full D, sweeps every column (row) tile with
            its BLOCK_N x BLOCK_DU accumulator in registers, and stores it once
            (dS~_ij = scale inv_a_i inv_b_j f'(z_ij) sum_k w_ik mask_k exp(f(z_ij) - lse_ik)).
            Both gradient products are tl.dot on the input's half type (tensor cores) with float32
            accumulation: inv_b (inv_a) is folded into the unit-norm operand B^ (A^), scale and the
            other inverse norm into the store, so no half operand holds an unbounded value.
            The normalization backward and grad_extra are O((N + M) D) torch ops.
Configurations: triton_kernels/configs.py (per architecture on a GPU, _blocks in the interpreter).
float32 operands follow torch.get_float32_matmul_precision() (TF32 for "high"/"medium").
Floor: forward 2NMD flops, backward 2 x (2NMD (D / BLOCK_DU) + 2NMD) (S recomputed per D block);
(N + M) D inputs read. Inverse norms are a torch prologue (O(N + M)); inputs are never copied.
"""
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
def _forward_kernel(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, extra_ptr, lse_ptr, rowmax_ptr,
                    N, M, D, stride_a, stride_b, scale, bias, self_offset,
                    HAS_LABELS: tl.constexpr, HAS_EXTRA: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                    K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                    CT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
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
    for c0 in range(0, M, BLOCK_M):
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
    if HAS_EXTRA:
        e = tl.load(extra_ptr + rows, mask=rows < N, other=0.0).to(CT)
        m0, s0 = _online_update(m0, s0, e[:, None])
        m1, s1 = _online_update(m1, s1, e[:, None])
        m2, s2 = _online_update(m2, s2, e[:, None])
    tl.store(rowmax_ptr + rows, rmax, mask=rows < N)
    # m = -inf: nothing admissible (s = 0, lse = -inf), or only NaN (s = NaN, lse = NaN as the reference).
    tl.store(lse_ptr + rows * K, tl.where((m0 == ninf) & (s0 == s0), ninf, m0 + tl.log(s0)), mask=rows < N)
    if K > 1:
        tl.store(lse_ptr + rows * K + 1, tl.where((m1 == ninf) & (s1 == s1), ninf, m1 + tl.log(s1)), mask=rows < N)
    if K > 2:
        tl.store(lse_ptr + rows * K + 2, tl.where((m2 == ninf) & (s2 == s2), ninf, m2 + tl.log(s2)), mask=rows < N)


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
                          N, M, D, stride_a, stride_b, scale, bias, self_offset,
                          HAS_LABELS: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                          K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr, GT: tl.constexpr,
                          GPREC: tl.constexpr):
    # U[rows, dus] = scale inv_a[rows] sum over column tiles of G @ B^[cols, dus]. Program (i, j) owns
    # rows block i and D block j of U: its accumulator stays in registers over the whole column sweep
    # and is stored once (S is recomputed per D block: D / BLOCK_DU times, which also gives the grid
    # D / BLOCK_DU times more programs at small N).
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dus = tl.program_id(1) * BLOCK_DU + tl.arange(0, BLOCK_DU)
    acc = tl.zeros((BLOCK_N, BLOCK_DU), CT)
    for c0 in range(0, M, BLOCK_M):
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
    tl.store(u_ptr + rows[:, None] * D + dus[None, :], acc, mask=(rows[:, None] < N) & (dus[None, :] < D))


@triton.jit
def _backward_cols_kernel(a_ptr, b_ptr, inva_ptr, invb_ptr, la_ptr, lb_ptr, lse_ptr, w_ptr, v_ptr,
                          N, M, D, stride_a, stride_b, scale, bias, self_offset,
                          HAS_LABELS: tl.constexpr, RELU: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
                          K: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DU: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr, GT: tl.constexpr,
                          GPREC: tl.constexpr):
    # V[cols, dus] = scale inv_b[cols] sum over row tiles of G^T @ A^[rows, dus]; as the row kernel,
    # program (i, j) owns column block i and D block j of V, accumulated in registers, stored once.
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dus = tl.program_id(1) * BLOCK_DU + tl.arange(0, BLOCK_DU)
    acc = tl.zeros((BLOCK_M, BLOCK_DU), CT)
    for r0 in range(0, N, BLOCK_N):
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
    tl.store(v_ptr + cols[:, None] * D + dus[None, :], acc, mask=(cols[:, None] < M) & (dus[None, :] < D))


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


def contrastive_lse_forward(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self,
                            self_offset, predicates):
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
    inva, invb = _inverse_norms(a, normalize, eps, ct), _inverse_norms(b, normalize, eps, ct)
    grid = (triton.cdiv(n, meta["BLOCK_N"]),)
    _forward_kernel[grid](a, b, inva, invb, la, lb, ex, lse, rowmax, n, m, d, a.stride(0), b.stride(0),
                          float(scale), float(bias), int(self_offset), HAS_EXTRA=extra is not None, **meta,
                          **launch)
    return lse, rowmax


def _normalization_backward(x, inv, u, normalize, eps):
    # dX = U - [||x|| > eps] x^ (x^ . U), x^ = x * inv (U already carries the factor inv).
    if not normalize:
        return u
    xc = x.to(u.dtype)
    xhat = xc * inv[:, None]
    active = (xc.norm(dim=1, keepdim=True) > eps).to(u.dtype)
    return u - xhat * ((xhat * u).sum(dim=1, keepdim=True) * active)


def contrastive_lse_backward(grad_lse, a, b, label_a, label_b, extra, lse, scale, bias, relu, normalize, eps,
                             exclude_self, self_offset, predicates):
    a_in, b_in = a, b
    a, b, la, lb = _prepare(a, b, label_a, label_b)
    n, d = a.shape
    m = b.shape[0]
    ct = _compute_dtype(a)
    meta, gmeta, launch = _meta(a, label_a, label_b, extra, relu, exclude_self, predicates)
    w = grad_lse.to(ct).contiguous()
    lse = lse.to(ct).contiguous()
    inva, invb = _inverse_norms(a, normalize, eps, ct), _inverse_norms(b, normalize, eps, ct)
    # Each program stores its block once: no zero fill needed where n, m, d > 0.
    u = torch.empty((n, d), dtype=ct, device=a.device)
    v = torch.empty((m, d), dtype=ct, device=a.device)
    if n > 0 and m > 0 and d > 0:
        args = (a, b, inva, invb, la, lb, lse, w)
        scalars = (n, m, d, a.stride(0), b.stride(0), float(scale), float(bias), int(self_offset))
        nd = triton.cdiv(d, meta["BLOCK_DU"])
        _backward_rows_kernel[(triton.cdiv(n, meta["BLOCK_N"]), nd)](*args, u, *scalars, **meta, **gmeta, **launch)
        _backward_cols_kernel[(triton.cdiv(m, meta["BLOCK_M"]), nd)](*args, v, *scalars, **meta, **gmeta, **launch)
    else:
        u.zero_()
        v.zero_()
    grad_a = _normalization_backward(a, inva, u, normalize, eps).to(a_in.dtype)
    grad_b = _normalization_backward(b, invb, v, normalize, eps).to(b_in.dtype)
    if extra is not None:
        p = torch.where(torch.isfinite(lse), (extra.to(ct)[:, None] - lse).exp(), torch.zeros_like(lse))
        grad_extra = (w * p).sum(dim=1).to(extra.dtype)
    else:
        grad_extra = torch.zeros((n,), dtype=ct, device=a.device)
    return grad_a, grad_b, grad_extra
