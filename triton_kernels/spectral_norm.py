"""Triton kernels of spectral normalization (contract: fastgan/ops/spectral_norm.py, docs/semantics.md section 7).

  power iteration  per layer and step: a gemv kernel (W v, or W^T u through swapped strides; one
                   program per BLOCK_R outputs, a [BLOCK_R, BLOCK_K] float32 (float64) accumulator
                   reduced once at the end), then a one-program normalization kernel that writes
                   nrm(x) = x / max(||x||, eps) into the working vector and, after the last step,
                   sigma = <nrm(x), x> (= ||x||^2 / max(||x||, eps) = <u, W v>, no extra pass over W).
                   n == 0: W v, then a one-program dot kernel for sigma = <u, W v>.
                   Per layer (the interpreter cannot dereference raw pointer arrays).
  apply            one elementwise pass: out = W / sigma (any strides in, contiguous out); sigma is
                   read on the device (no host synchronization).
  apply_backward   G / sigma - (<G, W> / sigma^2) u v^T without atomics: a tile kernel writes one
                   partial of <G, W> per tile, then every program of the elementwise kernel sums the
                   partials in the same fixed order (deterministic) and writes its tile.
Floor: power iteration 2 |W| reads per step; apply |W| read + |W| written; backward 2 |W| + |G|
reads and |W| written.
"""
from typing import List

import torch
import triton
import triton.language as tl


def _ct(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _mv_kernel(a_ptr, x_ptr, y_ptr, R, K, stride_r, stride_k,
               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, CT: tl.constexpr):
    # y[r] = sum_k A[r, k] x[k] for this program's BLOCK_R rows.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=CT)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * stride_r + ks[None, :] * stride_k,
                    mask=(rows[:, None] < R) & (ks[None, :] < K), other=0.0).to(CT)
        x = tl.load(x_ptr + ks, mask=ks < K, other=0.0).to(CT)
        acc += a * x[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, axis=1), mask=rows < R)


@triton.jit
def _normalize_kernel(x_ptr, out_ptr, sigma_ptr, eps_ptr, L, BLOCK: tl.constexpr, CT: tl.constexpr):
    # out = x / max(||x||, eps); sigma = <out, x> (= ||x||^2 / max(||x||, eps) = <u, W v> after the
    # last step: the CPU kernel's formula). One program. eps is read from a tensor of the compute
    # dtype (a Python float argument would be rounded to float32).
    eps = tl.load(eps_ptr)
    sq = tl.zeros((BLOCK,), dtype=CT)
    for i0 in range(0, L, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + idx, mask=idx < L, other=0.0).to(CT)
        sq += x * x
    norm = tl.sqrt(tl.sum(sq, axis=0))
    denom = tl.where(norm < eps, eps, norm)  # keeps a NaN norm NaN, as clamp_min
    dot = tl.zeros((BLOCK,), dtype=CT)
    for i0 in range(0, L, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + idx, mask=idx < L, other=0.0).to(CT)
        xn = x / denom
        dot += xn * x
        tl.store(out_ptr + idx, xn.to(out_ptr.dtype.element_ty), mask=idx < L)
    tl.store(sigma_ptr, tl.sum(dot, axis=0))


@triton.jit
def _dot_kernel(a_ptr, b_ptr, out_ptr, L, BLOCK: tl.constexpr, CT: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=CT)
    for i0 in range(0, L, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        a = tl.load(a_ptr + idx, mask=idx < L, other=0.0).to(CT)
        b = tl.load(b_ptr + idx, mask=idx < L, other=0.0).to(CT)
        acc += a * b
    tl.store(out_ptr, tl.sum(acc, axis=0))


@triton.jit
def _apply_kernel(w_ptr, sigma_ptr, out_ptr, M, N, stride_m, stride_n,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    s = tl.load(sigma_ptr).to(CT)
    w = tl.load(w_ptr + rows[:, None] * stride_m + cols[None, :] * stride_n, mask=mask, other=0.0).to(CT)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], (w / s).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dot_partial_kernel(g_ptr, w_ptr, part_ptr, M, N, sg_m, sg_n, sw_m, sw_n,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(g_ptr + rows[:, None] * sg_m + cols[None, :] * sg_n, mask=mask, other=0.0).to(CT)
    w = tl.load(w_ptr + rows[:, None] * sw_m + cols[None, :] * sw_n, mask=mask, other=0.0).to(CT)
    tl.store(part_ptr + pid_m * tl.num_programs(1) + pid_n, tl.sum(tl.sum(g * w, axis=1), axis=0))


@triton.jit
def _apply_backward_kernel(g_ptr, u_ptr, v_ptr, sigma_ptr, part_ptr, n_part, out_ptr, M, N, sg_m, sg_n,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, CT: tl.constexpr):
    # Every program sums the partials of <G, W> in the same order, so all use the same value.
    acc = tl.zeros((BLOCK_P,), dtype=CT)
    for p0 in range(0, n_part, BLOCK_P):
        idx = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + idx, mask=idx < n_part, other=0.0)
    dot = tl.sum(acc, axis=0)
    s = tl.load(sigma_ptr).to(CT)
    coef = dot / (s * s)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(g_ptr + rows[:, None] * sg_m + cols[None, :] * sg_n, mask=mask, other=0.0).to(CT)
    u = tl.load(u_ptr + rows, mask=rows < M, other=0.0).to(CT)
    v = tl.load(v_ptr + cols, mask=cols < N, other=0.0).to(CT)
    out = g / s - (coef * u)[:, None] * v[None, :]
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


_BLOCK_R, _BLOCK_K, _BLOCK_VEC = 32, 128, 1024
_BLOCK_M, _BLOCK_N = 32, 128


def _mv(a_rows: int, a_cols: int, stride_r: int, stride_k: int, a: torch.Tensor, x: torch.Tensor,
        y: torch.Tensor, ct) -> None:
    grid = (triton.cdiv(a_rows, _BLOCK_R),)
    _mv_kernel[grid](a, x, y, a_rows, a_cols, stride_r, stride_k, BLOCK_R=_BLOCK_R, BLOCK_K=_BLOCK_K, CT=ct)


def _working(x: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    return x if (x.dtype == ct and x.is_contiguous()) else x.to(ct).contiguous()


def _check_vector(x, w, size, name, i):
    if x.dim() != 1 or x.shape[0] != size:
        raise RuntimeError(f"spectral_norm_power_iteration_triton_: {name}[{i}] must have {size} entries, "
                           f"got shape {tuple(x.shape)}")
    if x.dtype not in (w.dtype, torch.float32):
        raise RuntimeError(f"spectral_norm_power_iteration_triton_: {name}[{i}] must have the dtype of the weight "
                           f"or float32, got {x.dtype} for a {w.dtype} weight")


def power_iteration_(weight_mats: List[torch.Tensor], us: List[torch.Tensor], vs: List[torch.Tensor],
                     n_power_iterations: int, eps: float, hook_order: bool) -> List[torch.Tensor]:
    if not (len(weight_mats) == len(us) == len(vs)):
        raise RuntimeError("spectral_norm_power_iteration_triton_: weight_mats, us and vs must have the same length")
    if n_power_iterations < 0:
        raise RuntimeError("spectral_norm_power_iteration_triton_: n_power_iterations must be >= 0")
    for i, w in enumerate(weight_mats):
        if w.dim() != 2:
            raise RuntimeError(f"spectral_norm_power_iteration_triton_: weight_mats[{i}] must be 2-D")
        _check_vector(us[i], w, w.shape[0], "us", i)
        _check_vector(vs[i], w, w.shape[1], "vs", i)
    sigmas = []
    for w, u, v in zip(weight_mats, us, vs):
        ct = _ct(w.dtype)
        tct = _tl(w.dtype)
        m, n = w.shape
        uc, vc = _working(u, ct), _working(v, ct)
        sigma = torch.empty((), dtype=ct, device=w.device)
        tu = torch.empty(m, dtype=ct, device=w.device)
        if n_power_iterations == 0:
            _mv(m, n, w.stride(0), w.stride(1), w, vc, tu, tct)
            _dot_kernel[(1,)](uc, tu, sigma, m, BLOCK=_BLOCK_VEC, CT=tct)
        else:
            tv = torch.empty(n, dtype=ct, device=w.device)
            eps_t = torch.full((), eps, dtype=ct, device=w.device)
            for _ in range(n_power_iterations):
                if hook_order:
                    _mv(n, m, w.stride(1), w.stride(0), w, uc, tv, tct)  # W^T u
                    _normalize_kernel[(1,)](tv, vc, sigma, eps_t, n, BLOCK=_BLOCK_VEC, CT=tct)
                    _mv(m, n, w.stride(0), w.stride(1), w, vc, tu, tct)  # W v
                    _normalize_kernel[(1,)](tu, uc, sigma, eps_t, m, BLOCK=_BLOCK_VEC, CT=tct)
                else:
                    _mv(m, n, w.stride(0), w.stride(1), w, vc, tu, tct)
                    _normalize_kernel[(1,)](tu, uc, sigma, eps_t, m, BLOCK=_BLOCK_VEC, CT=tct)
                    _mv(n, m, w.stride(1), w.stride(0), w, uc, tv, tct)
                    _normalize_kernel[(1,)](tv, vc, sigma, eps_t, n, BLOCK=_BLOCK_VEC, CT=tct)
            if uc is not u:
                u.copy_(uc)
            if vc is not v:
                v.copy_(vc)
        sigmas.append(sigma)
    return sigmas


def _check_apply(weight_mat, u, v, sigma, op):
    if weight_mat.dim() != 2:
        raise RuntimeError(f"{op}: the weight matrix must be 2-D, got shape {tuple(weight_mat.shape)}")
    if u.shape != (weight_mat.shape[0],) or v.shape != (weight_mat.shape[1],):
        raise RuntimeError(f"{op}: u and v must have {weight_mat.shape[0]} and {weight_mat.shape[1]} entries")
    if sigma.numel() != 1:
        raise RuntimeError(f"{op}: sigma must have one element")


def apply(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    _check_apply(weight_mat, u, v, sigma, "spectral_norm_apply_triton")
    m, n = weight_mat.shape
    out = torch.empty((m, n), dtype=weight_mat.dtype, device=weight_mat.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N))
    _apply_kernel[grid](weight_mat, sigma, out, m, n, weight_mat.stride(0), weight_mat.stride(1),
                        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, CT=_tl(weight_mat.dtype))
    return out


def apply_backward(grad: torch.Tensor, weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    _check_apply(weight_mat, u, v, sigma, "spectral_norm_apply_triton_backward")
    if grad.shape != weight_mat.shape:
        raise RuntimeError("spectral_norm_apply_triton_backward: grad must have the weight's shape")
    m, n = weight_mat.shape
    ct = _ct(weight_mat.dtype)
    tct = _tl(weight_mat.dtype)
    out = torch.empty((m, n), dtype=weight_mat.dtype, device=weight_mat.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N))
    part = torch.empty(grid[0] * grid[1], dtype=ct, device=weight_mat.device)
    _dot_partial_kernel[grid](grad, weight_mat, part, m, n, grad.stride(0), grad.stride(1),
                              weight_mat.stride(0), weight_mat.stride(1), BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, CT=tct)
    _apply_backward_kernel[grid](grad, u, v, sigma, part, part.numel(), out, m, n, grad.stride(0), grad.stride(1),
                                 BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_P=256, CT=tct)
    return out
