// CUDA kernels of the contrastive losses' O(N D) and O(N) terms around contrastive_lse, one launch
// each way (the CUDA counterparts of triton_kernels/loss_terms.py; in ATen with autograd these were
// 10-30 launches per loss step, most of a small batch's time on a GPU):
// - pair_cosine: the positive logit c_r = (x_r . y_r) / (max(||x_r||, eps) max(||y_r||, eps)) of
//   2C, NT-Xent and the CLIP diagonal (fastgan::pair_cosine; csrc/cpu/pair_cosine.cpp is the CPU
//   form, whose formulas these are). One warp per row, the three dot products reduced by shuffles
//   in a fixed order; float32 out.
// - lse_combine: a loss's combination of its log-sum-exps and positive terms with its mean or sum,
//   scale * sum_i (sum_k coefs_k x_ik + c1 y1_i + c2 y2_i) (fastgan::lse_combine). One CTA: each
//   thread sums a fixed strided set of rows in order, then a fixed tree in shared memory, so the
//   result is bitwise deterministic and needs no atomics (at N = 65536, K = 2: ~500 loads a thread).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

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
    pair_cosine_kernel(const T* x, const T* y, int64_t n, int64_t d, float eps, float* out) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= n) return;
  float p, sx, sy;
  pair_dots(x + r * d, y + r * d, d, lane, p, sx, sy);
  if (lane == 0) out[r] = p / (fmaxf(sqrtf(sx), eps) * fmaxf(sqrtf(sy), eps));
}

// dx_r = g_r ix (iy y_r - [||x_r|| > eps] c_r ix x_r), dy_r symmetrically (a norm clamped at eps
// makes the cosine linear in that side: no projection term), written in T.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pair_cosine_backward_kernel(const float* grad, const T* x, const T* y, int64_t n, int64_t d, float eps, T* gx,
                                T* gy) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= n) return;
  const T* xr = x + r * d;
  const T* yr = y + r * d;
  float p, sx, sy;
  pair_dots(xr, yr, d, lane, p, sx, sy);
  const float nx = sqrtf(sx), ny = sqrtf(sy);
  const float ix = 1.0f / fmaxf(nx, eps), iy = 1.0f / fmaxf(ny, eps);
  const float c = p * ix * iy;
  const float cx = nx > eps ? c * ix : 0.0f, cy = ny > eps ? c * iy : 0.0f;
  const float gxi = grad[r] * ix, gyi = grad[r] * iy;
  for (int64_t k = lane; k < d; k += 32) {
    const float xv = to_float(xr[k]), yv = to_float(yr[k]);
    gx[r * d + k] = from_float<T>(gxi * (iy * yv - cx * xv));
    gy[r * d + k] = from_float<T>(gyi * (ix * xv - cy * yv));
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
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kCombineThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = p.scale * part[0];
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

}  // namespace

cudaError_t pair_cosine_forward(const void* x, const void* y, int64_t n, int64_t d, DType dtype, float eps, float* out,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if ((n + kWarps - 1) / kWarps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(pair_cosine_kernel<T>, warp_rows_blocks(n, kWarps), kThreads, 0, stream)(
        static_cast<const T*>(x), static_cast<const T*>(y), n, d, eps, out);
    return cudaGetLastError();
  });
}

cudaError_t pair_cosine_backward(const float* grad, const void* x, const void* y, int64_t n, int64_t d, DType dtype,
                                 float eps, void* gx, void* gy, cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  if ((n + kWarps - 1) / kWarps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(pair_cosine_backward_kernel<T>, warp_rows_blocks(n, kWarps), kThreads, 0, stream)(
        grad, static_cast<const T*>(x), static_cast<const T*>(y), n, d, eps, static_cast<T*>(gx), static_cast<T*>(gy));
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

}  // namespace cuda
}  // namespace fastgan
