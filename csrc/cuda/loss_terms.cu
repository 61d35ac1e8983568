// CUDA kernels of the contrastive losses' O(N D) and O(N) terms around contrastive_lse, one launch
// each way (the CUDA counterparts of triton_kernels/loss_terms.py; in ATen with autograd these were
// 10-30 launches per loss step, most of a small batch's time on a GPU):
// - pair_cosine: the positive logit c_r = scale (x_r . y_s) / (max(||x_r||, eps) max(||y_s||, eps)),
//   s = (r + shift) mod N, of 2C (scale 1/t), NT-Xent (shift N/2: no rolled copy of z) and the CLIP diagonal
//   (fastgan::pair_cosine; csrc/cpu/pair_cosine.cpp is the CPU form, whose formulas these are). One
//   warp per row, the three dot products reduced by shuffles in a fixed order; float32 out.
// - lse_combine: a loss's combination of its log-sum-exps and positive terms with its mean or sum,
//   scale * sum_i (sum_k coefs_k x_ik + c1 y1_i + c2 y2_i) (fastgan::lse_combine). One CTA: each
//   thread sums a fixed strided set of rows in order, then a fixed tree in shared memory, so the
//   result is bitwise deterministic and needs no atomics (at N = 65536, K = 2: ~500 loads a thread).
// - d2d_epilogue, supcon_epilogue: D2D-CE's and SupCon's per-row terms with their mean or sum, the
//   same one-CTA reduction (fastgan::d2d_epilogue, fastgan::supcon_epilogue; in ATen with autograd
//   35 and about 20 launches a step). SupCon's mean divides by the number of anchors with a positive,
//   counted in the same pass and kept on the device for the backward (no host sync).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "block_sum.h"
#include "convert.h"
#include "launch.h"
#include "loss_terms.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // pair_cosine: 4 warps, one row each
constexpr int kWarps = kThreads / 32;
constexpr int kCombineThreads = 256;

template <typename T>
__device__ __forceinline__ void pair_dots(const T* x, const T* y, int64_t d, int lane, float& p, float& sx, float& sy) {
  p = sx = sy = 0.0f;
  for (int64_t c = lane; c < d; c += 32) {
    const float xv = to_float(x[c]), yv = to_float(y[c]);
    p += xv * yv;
    sx += xv * xv;
    sy += yv * yv;
  }
  for (int off = 16; off > 0; off >>= 1) {
    p += __shfl_xor_sync(0xffffffffu, p, off);
    sx += __shfl_xor_sync(0xffffffffu, sx, off);
    sy += __shfl_xor_sync(0xffffffffu, sy, off);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pair_cosine_kernel(const T* x, const T* y, int64_t n, int64_t d, int64_t shift, float eps, float scale,
                       float* out) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= n) return;
  const int64_t s = r + shift < n ? r + shift : r + shift - n;  // shift in [0, n): the launcher's check
  float p, sx, sy;
  pair_dots(x + r * d, y + s * d, d, lane, p, sx, sy);
  if (lane == 0) out[r] = scale * (p / (fmaxf(sqrtf(sx), eps) * fmaxf(sqrtf(sy), eps)));
}

// dx_r = g_r ix (iy y_s - [||x_r|| > eps] c_r ix x_r), g_r = scale grad_r, c_r the cosine, dy_s
// symmetrically (a norm clamped at eps
// makes the cosine linear in that side: no projection term), written in T. Row s of gy has the one
// writer r (the shift is a permutation of the rows).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pair_cosine_backward_kernel(const float* grad, const T* x, const T* y, int64_t n, int64_t d, int64_t shift,
                                float eps, float scale, T* gx, T* gy) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= n) return;
  const int64_t s = r + shift < n ? r + shift : r + shift - n;
  const T* xr = x + r * d;
  const T* yr = y + s * d;
  float p, sx, sy;
  pair_dots(xr, yr, d, lane, p, sx, sy);
  const float nx = sqrtf(sx), ny = sqrtf(sy);
  const float ix = 1.0f / fmaxf(nx, eps), iy = 1.0f / fmaxf(ny, eps);
  const float c = p * ix * iy;
  const float cx = nx > eps ? c * ix : 0.0f, cy = ny > eps ? c * iy : 0.0f;
  const float g = scale * grad[r];
  const float gxi = g * ix, gyi = g * iy;
  for (int64_t k = lane; k < d; k += 32) {
    const float xv = to_float(xr[k]), yv = to_float(yr[k]);
    gx[r * d + k] = from_float<T>(gxi * (iy * yv - cx * xv));
    gy[s * d + k] = from_float<T>(gyi * (ix * xv - cy * yv));
  }
}

__global__ void __launch_bounds__(kCombineThreads) lse_combine_kernel(CombineParams p, float* out) {
  __shared__ float part[kCombineThreads];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += kCombineThreads) {
    float v = 0.0f;
    for (int j = 0; j < p.k; ++j) v += p.coefs[j] * p.x[i * p.x_stride_n + j * p.x_stride_k];
    if (p.y1 != nullptr) v += p.c1 * p.y1[i * p.y1_stride];
    if (p.y2 != nullptr) v += p.c2 * p.y2[i * p.y2_stride];
    acc += v;
  }
  const float total = block_sum<kCombineThreads>(acc, part);
  if (threadIdx.x == 0) *out = p.scale * total;
}

// d/dx_ik = grad scale coefs_k, d/dy1_i = grad scale c1, d/dy2_i = grad scale c2: every element
// written (gy1, gy2 also without y1, y2: the caller's placeholders), grad read on the device.
__global__ void __launch_bounds__(kCombineThreads)
    lse_combine_backward_kernel(CombineParams p, const float* grad, float* gx, float* gy1, float* gy2) {
  const float g = *grad * p.scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCombineThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCombineThreads + threadIdx.x; i < p.n; i += stride) {
    for (int j = 0; j < p.k; ++j) gx[i * p.k + j] = g * p.coefs[j];
    gy1[i] = g * p.c1;
    gy2[i] = g * p.c2;
  }
}

// D2D-CE of row i (docs/semantics.md section 3): x = lse_i - M_i, q = relu(pre), pre = (m_p - cos_i) / t,
// L = q + logaddexp(-q, x) as torch evaluates logaddexp (max + log1p(exp(min - max)); x = -inf, a row
// without other-class columns: exactly 0); dL/dx = dL/dq (q > 0) = sigmoid(x + q).
struct D2dTerm {
  float loss, sig, pre;
};

__device__ __forceinline__ D2dTerm d2d_term(const D2dParams& p, int64_t i) {
  const float rm = p.rowmax[i];
  const float m = isfinite(rm) ? rm : 0.0f;
  const float pre = (p.m_p - p.cos[i]) / p.temperature;
  const float q = fmaxf(pre, 0.0f);
  const float x = p.lse[i * p.lse_stride] - m;
  const float hi = fmaxf(-q, x), lo = fminf(-q, x);
  D2dTerm t;
  t.loss = q + hi + log1pf(expf(lo - hi));
  t.sig = x == -INFINITY ? 0.0f : 1.0f / (1.0f + expf(-(x + q)));
  t.pre = pre;
  return t;
}

__global__ void __launch_bounds__(kCombineThreads) d2d_epilogue_kernel(D2dParams p, float* out) {
  __shared__ float part[kCombineThreads];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += kCombineThreads) acc += d2d_term(p, i).loss;
  const float total = block_sum<kCombineThreads>(acc, part);
  if (threadIdx.x == 0) *out = p.scale * total;
}

__global__ void __launch_bounds__(kCombineThreads)
    d2d_epilogue_backward_kernel(D2dParams p, const float* grad, float* glse, float* gcos) {
  const float gs = *grad * p.scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCombineThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCombineThreads + threadIdx.x; i < p.n; i += stride) {
    const D2dTerm t = d2d_term(p, i);
    const float g = gs * t.sig;
    glse[i] = g;
    gcos[i] = t.pre > 0.0f ? -g / p.temperature : 0.0f;
  }
}

__global__ void __launch_bounds__(kCombineThreads) supcon_epilogue_kernel(SupconParams p, float* out, float* den) {
  __shared__ float part[kCombineThreads];
  float acc = 0.0f, count = 0.0f;  // count: exact in float32 below 2^24 anchors a thread
  for (int64_t i = threadIdx.x; i < p.n; i += kCombineThreads) {
    const int64_t k = p.n_pos[i];
    if (k > 0) {
      acc += p.lse[i * p.lse_stride] - p.pos[i] / (p.temperature * static_cast<float>(k));
      count += 1.0f;
    }
  }
  const float total = block_sum<kCombineThreads>(acc, part);
  const float anchors = block_sum<kCombineThreads>(count, part);
  if (threadIdx.x == 0) {
    const float d = p.mean ? fmaxf(anchors, 1.0f) : 1.0f;
    *out = total / d;
    *den = d;
  }
}

__global__ void __launch_bounds__(kCombineThreads)
    supcon_epilogue_backward_kernel(SupconParams p, const float* grad, const float* den, float* glse, float* gpos) {
  const float g = *grad / *den;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCombineThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCombineThreads + threadIdx.x; i < p.n; i += stride) {
    const int64_t k = p.n_pos[i];
    glse[i] = k > 0 ? g : 0.0f;
    gpos[i] = k > 0 ? -g / (p.temperature * static_cast<float>(k)) : 0.0f;
  }
}

}  // namespace

cudaError_t pair_cosine_forward(const void* x, const void* y, int64_t n, int64_t d, int64_t shift, DType dtype,
                                float eps, float scale, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (shift < 0 || shift >= n) return cudaErrorInvalidValue;
  if ((n + kWarps - 1) / kWarps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(pair_cosine_kernel<T>, warp_rows_blocks(n, kWarps), kThreads, 0, stream)(
        static_cast<const T*>(x), static_cast<const T*>(y), n, d, shift, eps, scale, out);
    return cudaGetLastError();
  });
}

cudaError_t pair_cosine_backward(const float* grad, const void* x, const void* y, int64_t n, int64_t d, int64_t shift,
                                 DType dtype, float eps, float scale, void* gx, void* gy, cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  if (shift < 0 || shift >= n) return cudaErrorInvalidValue;
  if ((n + kWarps - 1) / kWarps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(pair_cosine_backward_kernel<T>, warp_rows_blocks(n, kWarps), kThreads, 0, stream)(
        grad, static_cast<const T*>(x), static_cast<const T*>(y), n, d, shift, eps, scale, static_cast<T*>(gx),
        static_cast<T*>(gy));
    return cudaGetLastError();
  });
}

cudaError_t lse_combine_forward(const CombineParams& p, float* out, cudaStream_t stream) {
  if (p.k < 1 || p.k > 3) return cudaErrorInvalidValue;
  FASTGAN_LAUNCH(lse_combine_kernel, 1, kCombineThreads, 0, stream)(p, out);
  return cudaGetLastError();
}

cudaError_t lse_combine_backward(const CombineParams& p, const float* grad, float* gx, float* gy1, float* gy2,
                                 cudaStream_t stream) {
  if (p.k < 1 || p.k > 3) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  FASTGAN_LAUNCH(lse_combine_backward_kernel, grid_stride_blocks(p.n, kCombineThreads), kCombineThreads, 0, stream)(
      p, grad, gx, gy1, gy2);
  return cudaGetLastError();
}

cudaError_t d2d_epilogue_forward(const D2dParams& p, float* out, cudaStream_t stream) {
  FASTGAN_LAUNCH(d2d_epilogue_kernel, 1, kCombineThreads, 0, stream)(p, out);
  return cudaGetLastError();
}

cudaError_t d2d_epilogue_backward(const D2dParams& p, const float* grad, float* glse, float* gcos,
                                  cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  FASTGAN_LAUNCH(d2d_epilogue_backward_kernel, grid_stride_blocks(p.n, kCombineThreads), kCombineThreads, 0, stream)(
      p, grad, glse, gcos);
  return cudaGetLastError();
}

cudaError_t supcon_epilogue_forward(const SupconParams& p, float* out, float* den, cudaStream_t stream) {
  FASTGAN_LAUNCH(supcon_epilogue_kernel, 1, kCombineThreads, 0, stream)(p, out, den);
  return cudaGetLastError();
}

cudaError_t supcon_epilogue_backward(const SupconParams& p, const float* grad, const float* den, float* glse,
                                     float* gpos, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  FASTGAN_LAUNCH(supcon_epilogue_backward_kernel, grid_stride_blocks(p.n, kCombineThreads), kCombineThreads, 0,
                 stream)(p, grad, den, glse, gpos);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastgan
