"""Triton kernels of cosine_similarity_matrix: S = scale * nrm(a) nrm(b)^T, in a's dtype.

One strided GEMM kernel with fused row and column scalings serves forward and backward:
  forward   S = scale * diag(inv_a) (A B^T) diag(inv_b), written once in the output dtype;
  backward  dS~ = scale * inv_a_i * inv_b_j * G (one elementwise pass), U = dS~ B, V = dS~^T A,
            then the normalization backward (O((N + M) D) torch ops).
Tiles: BLOCK_M x BLOCK_N outputs, reduction in BLOCK_K slices, float32 accumulation (float64 for
float64). Floor: 2NMD flops forward, 4NMD backward; N*M outputs written.
"""
import torch
import triton
import triton.language as tl

from .contrastive_lse import _compute_dtype, _inverse_norms, _normalization_backward, _tl_dtype


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
    bk = 64 if k > 32 else (32 if k > 16 else 16)
    grid = (triton.cdiv(m, 32), triton.cdiv(n, 32))
    if m and n:
        _scaled_gemm_kernel[grid](x, y, r, c, out, m, n, k, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                  out.stride(0), out.stride(1), float(scale), BLOCK_M=32, BLOCK_N=32, BLOCK_K=bk,
                                  CT=_tl_dtype(ct), PREC="ieee" if x.dtype in (torch.float32, torch.float64) else "tf32")
    return out


def cosine_similarity_matrix_forward(a, b, scale, eps):
    ct = _compute_dtype(a)
    inva, invb = _inverse_norms(a, True, eps, ct), _inverse_norms(b, True, eps, ct)
    out = torch.empty((a.shape[0], b.shape[0]), dtype=a.dtype, device=a.device)
    return scaled_gemm(a, b.T, inva, invb, scale, out)


def cosine_similarity_matrix_backward(grad, a, b, scale, eps):
    ct = _compute_dtype(a)
    inva, invb = _inverse_norms(a, True, eps, ct), _inverse_norms(b, True, eps, ct)
    ds = grad.to(ct) * (inva[:, None] * scale) * invb[None, :]
    ones_n = torch.ones(a.shape[0], dtype=ct, device=a.device)
    ones_m = torch.ones(b.shape[0], dtype=ct, device=a.device)
    ones_d = torch.ones(a.shape[1], dtype=ct, device=a.device)
    u = scaled_gemm(ds, b.to(ct), ones_n, ones_d, 1.0, torch.empty(a.shape, dtype=ct, device=a.device))
    v = scaled_gemm(ds.T, a.to(ct), ones_m, ones_d, 1.0, torch.empty(b.shape, dtype=ct, device=a.device))
    grad_a = _normalization_backward(a, inva, u, True, eps).to(a.dtype)
    grad_b = _normalization_backward(b, invb, v, True, eps).to(b.dtype)
    return grad_a, grad_b
