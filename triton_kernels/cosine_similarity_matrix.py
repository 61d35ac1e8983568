"""Triton kernels of cosine_similarity_matrix: S = scale * nrm(a) nrm(b)^T, in a's dtype.

One strided GEMM kernel with fused row and column scalings serves forward and backward:
  forward   S = scale * diag(inv_a) (A B^T) diag(inv_b), written once in the output dtype;
  backward  U = scale diag(inv_a) G B^, V = scale diag(inv_b) G^T A^ with the unit-norm rows
            X^ = X inv_x (one O((N + M) D) pass each) as the second operand, both in the inputs'
            dtype (tensor cores for half), then the normalization backward (contrastive_lse's
            merge kernel, one launch per input). Norms: contrastive_lse's norm kernel, one launch per input.
  launches  forward 3 (2 norms + GEMM), backward 6 (2 norms, 2 GEMMs, 2 normalization backwards) at every
            size. The GEMM grid is 2-D over output tiles already (N M / tile programs); its reduction
            over D is not split (D <= 1536 at GAN sizes: one K loop per tile).
Tiles: BLOCK_M x BLOCK_N outputs, reduction in BLOCK_K slices, float32 accumulation (float64 for
float64); sizes per architecture from configs.gemm (32 x 32 in the interpreter).
Floor: 2NMD flops forward, 4NMD backward; N*M outputs written.
"""
import torch
import triton
import triton.language as tl

from . import configs
from .contrastive_lse import (_COLS_BLOCK, _GRAD_MERGE_LAUNCH, _ROWS_BLOCK, _both_norms, _compute_dtype, _f32_parts,
                             _fp32_precision, _grad_merge_kernel, _same, _tl_dtype)


@triton.jit
def _scaled_gemm_kernel(x_ptr, y_ptr, r_ptr, c_ptr, out_ptr, M, N, K, sxm, sxk, syk, syn, som, son, scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        CT: tl.constexpr, PREC: tl.constexpr):
    # out[i, j] = scale * r[i] * c[j] * sum_k x[i, k] y[k, j]
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), CT)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * sxm + ks[None, :] * sxk, mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
        y = tl.load(y_ptr + ks[:, None] * syk + cols[None, :] * syn, mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
        acc += tl.dot(x, y, input_precision=PREC, out_dtype=CT)
    r = tl.load(r_ptr + rows, mask=rows < M, other=0.0)
    c = tl.load(c_ptr + cols, mask=cols < N, other=0.0)
    acc = acc * (r[:, None] * scale) * c[None, :]
    tl.store(out_ptr + rows[:, None] * som + cols[None, :] * son, acc.to(out_ptr.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


def scaled_gemm(x, y, r, c, scale, out):
    """out = scale * diag(r) (x @ y) diag(c) for 2-D strided x (M x K), y (K x N)."""
    m, k = x.shape
    n = y.shape[1]
    ct = r.dtype
    arch = configs.arch_of(x)
    if arch is None:  # the interpreter's configuration
        bm, bn, bk, launch = 32, 32, (64 if k > 32 else (32 if k > 16 else 16)), {}
    else:
        (bm, bn, bk), launch = configs.gemm(arch, x.dtype, k)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    if m and n:
        _scaled_gemm_kernel[grid](x, y, r, c, out, m, n, k, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                  out.stride(0), out.stride(1), float(scale), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                  CT=_tl_dtype(ct), PREC=_fp32_precision(x.dtype), **launch)
    return out


def cosine_similarity_matrix_forward(a, b, scale, eps):
    ct = _compute_dtype(a)
    (_, inva), (_, invb) = _both_norms(a, b, _same(a, b), True, eps, ct)
    out = torch.empty((a.shape[0], b.shape[0]), dtype=a.dtype, device=a.device)
    return scaled_gemm(a, b.T, inva, invb, scale, out)


def _unit_rows(x, inv, dtype):
    # x^ = x inv in x's dtype: unit-norm rows, a safe tensor-core operand even in float16.
    return (x.to(inv.dtype) * inv[:, None]).to(dtype)


def cosine_similarity_matrix_backward(grad, a, b, scale, eps):
    # U = scale diag(inv_a) G B^, V = scale diag(inv_b) G^T A^: both products on the inputs' dtype
    # (tensor cores for half inputs), float32 accumulation; G is the incoming gradient as it is.
    ct = _compute_dtype(a)
    (nrma, inva), (nrmb, invb) = _both_norms(a, b, _same(a, b), True, eps, ct)
    # The operands' dtype: a's on a GPU; float32 for bfloat16 in the interpreter, whose tl.dot is wrong
    # for bfloat16 operands (Triton 3.6).
    od = ct if (a.dtype == torch.bfloat16 and configs.arch_of(a) is None) else a.dtype
    g = grad.to(od)
    ones_d = torch.ones(a.shape[1], dtype=ct, device=a.device)
    u = scaled_gemm(g, _unit_rows(b, invb, od), inva, ones_d, scale, torch.empty(a.shape, dtype=ct, device=a.device))
    v = scaled_gemm(g.T, _unit_rows(a, inva, od), invb, ones_d, scale, torch.empty(b.shape, dtype=ct, device=a.device))
    # The normalization backward, stored in the inputs' dtype: contrastive_lse's merge kernel with one split.
    return _unnormalize(u, a, inva, nrma, eps), _unnormalize(v, b, invb, nrmb, eps)


def _unnormalize(u, x, inv, nrm, eps):
    n, d = x.shape
    out = torch.empty((n, d), dtype=x.dtype, device=x.device)
    if n and d:
        _grad_merge_kernel[(triton.cdiv(n, _ROWS_BLOCK),)](u, x, inv, nrm, out, u, u, u, u, n, d, x.stride(0), x.stride(1), 1,
                                                           *_f32_parts(eps), NORMALIZE=True, EXTRA=False,
                                                           HAS_EXTRA=False, K=1, BLOCK_R=_ROWS_BLOCK,
                                                           BLOCK_C=_COLS_BLOCK, CT=_tl_dtype(u.dtype),
                                                           **_GRAD_MERGE_LAUNCH)
    elif n:
        out.zero_()
    return out
