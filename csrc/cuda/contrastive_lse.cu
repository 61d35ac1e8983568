// CUDA kernels of contrastive_lse and cosine_similarity_matrix (contract:
// fastgan/reference/contrastive.py).
//
// Tiling: 32 x 32 tiles of z, one thread block (32 x 8 threads, 4 outputs each) per 32 rows in the
// forward and the row-gradient kernel, per 32 columns in the column-gradient kernel. Operands are
// staged through shared memory in 32-wide slices of D and converted to float32 (fp16 and bf16
// inputs accumulate in float32). The online log-sum-exp keeps, per row and predicate, a running
// max and sum in float32 registers of one thread per row. Backward recomputes the z tiles and never
// uses atomics: each (row, feature) of u and each (column, feature) of v has one writer, so results
// are deterministic.
// Tensor cores: for float16 and bfloat16 inputs the z tiles (the 2NMD-flop part of every kernel)
// come from WMMA 16x16x16 fragments with float32 accumulation (tile_logits_tc); float32 inputs and
// the gradient products dS @ B, dS^T @ A stay SIMT in float32.
// Floor: forward 2NMD flops, backward 2 x 4NMD (each gradient kernel recomputes z); (N + M) D
// inputs read per pass.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>

#include "contrastive_lse.h"
#include "launch.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kTile = 32;     // rows and columns of a z tile, and the D slice
constexpr int kThreadsY = 8;  // 32 x 8 threads; each computes 4 rows (or columns) of a tile column
constexpr int kPer = kTile / kThreadsY;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float x, float* o) { *o = x; }
__device__ __forceinline__ void from_float(float x, __half* o) { *o = __float2half(x); }
__device__ __forceinline__ void from_float(float x, __nv_bfloat16* o) { *o = __float2bfloat16(x); }

__device__ __forceinline__ bool passes(const LseParams& p, int pred, int64_t i, int64_t j) {
  if (pred == 0) return true;
  const bool same = p.la[i] == p.lb[j];
  return pred == 1 ? same : !same;
}

__device__ __forceinline__ bool admissible(const LseParams& p, int64_t i, int64_t j) {
  return i < p.n && j < p.m && !(p.exclude_self && j == i + p.self_offset);
}

template <typename T>
struct IsHalfLike {
  static constexpr bool value = false;
};
template <>
struct IsHalfLike<__half> {
  static constexpr bool value = true;
};
template <>
struct IsHalfLike<__nv_bfloat16> {
  static constexpr bool value = true;
};

// Staged half rows: 40 elements (80 bytes), a multiple of 8 as WMMA's ldm requires; the fragments
// start at rows 0 and 16 and columns 0 and 16, all 32-byte aligned as load_matrix_sync requires.
constexpr int kLdh = kTile + 8;
constexpr int kLdc = kTile + 4;  // float accumulator staging: ldm a multiple of 4

// The tensor-core version of tile_logits for float16 / bfloat16: the block's 8 warps load the
// 32 x 32 slices of A and B (raw, no conversion), warps 0-3 each own one 16 x 16 quarter of z and
// accumulate it in float32 over D; the epilogue applies the inverse norms, scale and bias.
// z = A_tile B_tile^T: B's slice stored as bh[c][k] is B^T in column-major order (ldm kLdh).
template <typename T>
__device__ void tile_logits_tc(const LseParams& p, int64_t r0, int64_t c0, float (*zs)[kTile + 1]) {
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) T ah[kTile][kLdh];
  __shared__ __align__(32) T bh[kTile][kLdh];
  __shared__ __align__(32) float cs[kTile][kLdc];
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int warp = ty;  // blockDim.x == 32: row ty of the block is warp ty
  const int fr = (warp >> 1) * 16, fc = (warp & 1) * 16;
  T zero;
  from_float(0.f, &zero);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.f);
  for (int64_t d0 = 0; d0 < p.d; d0 += kTile) {
    for (int q = 0; q < kPer; ++q) {
      const int r = ty * kPer + q;
      const int64_t dd = d0 + tx;
      const int64_t ia = r0 + r, jb = c0 + r;
      ah[r][tx] = (ia < p.n && dd < p.d) ? a[ia * p.stride_a + dd] : zero;
      bh[r][tx] = (jb < p.m && dd < p.d) ? b[jb * p.stride_b + dd] : zero;
    }
    __syncthreads();
    if (warp < 4) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
#pragma unroll
      for (int kk = 0; kk < kTile; kk += 16) {
        wmma::load_matrix_sync(fa, &ah[fr][kk], kLdh);
        wmma::load_matrix_sync(fb, &bh[fc][kk], kLdh);
        wmma::mma_sync(acc, fa, fb, acc);
      }
    }
    __syncthreads();  // ah, bh are rewritten by the next slice
  }
  if (warp < 4) wmma::store_matrix_sync(&cs[fr][fc], acc, kLdc, wmma::mem_row_major);
  __syncthreads();
  const int64_t j = c0 + tx;
  const float ib = j < p.m ? p.inv_b[j] : 0.f;
  for (int q = 0; q < kPer; ++q) {
    const int r = ty * kPer + q;
    const int64_t i = r0 + r;
    const float ia = i < p.n ? p.inv_a[i] : 0.f;
    zs[r][tx] = cs[r][tx] * ia * p.scale * ib + p.bias;
  }
  __syncthreads();
}

// z[r][c] for rows r0.. and columns c0.. of the tile into zs (kTile x kTile + 1), all threads.
template <typename T>
__device__ void tile_logits(const LseParams& p, int64_t r0, int64_t c0, float (*as)[kTile + 1],
                            float (*bs)[kTile + 1], float (*zs)[kTile + 1]) {
  if constexpr (IsHalfLike<T>::value) {
    tile_logits_tc<T>(p, r0, c0, zs);
    return;
  }
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const int tx = threadIdx.x, ty = threadIdx.y;
  float acc[kPer] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t d0 = 0; d0 < p.d; d0 += kTile) {
    for (int q = 0; q < kPer; ++q) {
      const int r = ty * kPer + q;  // tile row for A, tile column for B
      const int64_t dd = d0 + tx;
      const int64_t ia = r0 + r, jb = c0 + r;
      as[r][tx] = (ia < p.n && dd < p.d) ? to_float(a[ia * p.stride_a + dd]) : 0.f;
      bs[r][tx] = (jb < p.m && dd < p.d) ? to_float(b[jb * p.stride_b + dd]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTile; ++k) {
      const float bv = bs[tx][k];
      for (int q = 0; q < kPer; ++q) acc[q] += as[ty * kPer + q][k] * bv;
    }
    __syncthreads();
  }
  const int64_t j = c0 + tx;
  const float ib = j < p.m ? p.inv_b[j] : 0.f;
  for (int q = 0; q < kPer; ++q) {
    const int r = ty * kPer + q;
    const int64_t i = r0 + r;
    const float ia = i < p.n ? p.inv_a[i] : 0.f;
    zs[r][tx] = acc[q] * ia * p.scale * ib + p.bias;
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kTile* kThreadsY) forward_kernel(LseParams p, float* lse, float* rowmax) {
  __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1], zs[kTile][kTile + 1];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tid = threadIdx.y * kTile + threadIdx.x;
  const int64_t i = r0 + tid;  // the row this thread reduces (tid < kTile)
  float mx[3] = {-INFINITY, -INFINITY, -INFINITY}, sm[3] = {0.f, 0.f, 0.f}, rmax = -INFINITY;
  for (int64_t c0 = 0; c0 < p.m; c0 += kTile) {
    tile_logits<T>(p, r0, c0, as, bs, zs);
    if (tid < kTile && i < p.n) {
      for (int c = 0; c < kTile; ++c) {
        const int64_t j = c0 + c;
        if (!admissible(p, i, j)) continue;
        const float z = zs[tid][c];
        rmax = fmaxf(rmax, z);
        const float f = (p.relu && z < 0.f) ? 0.f : z;
        for (int k = 0; k < p.num_predicates; ++k) {
          if (!passes(p, p.predicates[k], i, j)) continue;
          if (f > mx[k]) {
            sm[k] = sm[k] * expf(mx[k] - f) + 1.f;  // exp(-inf) = 0 on the first element
            mx[k] = f;
          } else {
            sm[k] += (f == mx[k]) ? 1.f : expf(f - mx[k]);  // +inf == +inf must not give inf - inf
          }
        }
      }
    }
    __syncthreads();  // zs is rewritten by the next tile
  }
  if (tid < kTile && i < p.n) {
    rowmax[i] = rmax;
    for (int k = 0; k < p.num_predicates; ++k) {
      float m = mx[k], s = sm[k];
      if (p.extra) {
        const float e = p.extra[i];
        if (e > m) {
          s = s * expf(m - e) + 1.f;
          m = e;
        } else {
          s += (e == m) ? 1.f : expf(e - m);
        }
      }
      lse[i * p.num_predicates + k] = (m == -INFINITY && !isnan(s)) ? -INFINITY : m + logf(s);
    }
  }
}

// dS~ of the tile (rows r0.., columns c0..) into zs, from z already in zs.
__device__ void tile_grad(const LseParams& p, int64_t r0, int64_t c0, const float* lse, const float* w,
                          float (*zs)[kTile + 1]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = c0 + tx;
  for (int q = 0; q < kPer; ++q) {
    const int r = ty * kPer + q;
    const int64_t i = r0 + r;
    float g = 0.f;
    const float z = zs[r][tx];
    if (admissible(p, i, j) && (!p.relu || z > 0.f)) {
      const float f = p.relu ? fmaxf(z, 0.f) : z;
      for (int k = 0; k < p.num_predicates; ++k) {
        const float l = lse[i * p.num_predicates + k];
        if (l == -INFINITY || !passes(p, p.predicates[k], i, j)) continue;
        g += w[i * p.num_predicates + k] * expf(f - l);
      }
      g *= p.scale * p.inv_a[i] * p.inv_b[j];
    }
    zs[r][tx] = g;
  }
  __syncthreads();
}

// u[rows of this block] += dS~ @ B, over every column tile.
template <typename T>
__global__ void __launch_bounds__(kTile* kThreadsY)
    backward_rows_kernel(LseParams p, const float* lse, const float* w, float* u) {
  __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1], zs[kTile][kTile + 1];
  const T* b = static_cast<const T*>(p.b);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t c0 = 0; c0 < p.m; c0 += kTile) {
    tile_logits<T>(p, r0, c0, as, bs, zs);
    tile_grad(p, r0, c0, lse, w, zs);
    for (int64_t d0 = 0; d0 < p.d; d0 += kTile) {
      for (int q = 0; q < kPer; ++q) {  // bs[c][x] = B[c0 + c, d0 + x]
        const int c = ty * kPer + q;
        const int64_t jb = c0 + c, dd = d0 + tx;
        bs[c][tx] = (jb < p.m && dd < p.d) ? to_float(b[jb * p.stride_b + dd]) : 0.f;
      }
      __syncthreads();
      const int64_t dd = d0 + tx;
      for (int q = 0; q < kPer; ++q) {
        const int r = ty * kPer + q;
        const int64_t i = r0 + r;
        float acc = 0.f;
#pragma unroll 8
        for (int c = 0; c < kTile; ++c) acc += zs[r][c] * bs[c][tx];
        if (i < p.n && dd < p.d) u[i * p.d + dd] += acc;  // this thread is the only writer
      }
      __syncthreads();
    }
  }
}

// v[columns of this block] += dS~^T @ A, over every row tile.
template <typename T>
__global__ void __launch_bounds__(kTile* kThreadsY)
    backward_cols_kernel(LseParams p, const float* lse, const float* w, float* v) {
  __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1], zs[kTile][kTile + 1];
  const T* a = static_cast<const T*>(p.a);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t r0 = 0; r0 < p.n; r0 += kTile) {
    tile_logits<T>(p, r0, c0, as, bs, zs);
    tile_grad(p, r0, c0, lse, w, zs);
    for (int64_t d0 = 0; d0 < p.d; d0 += kTile) {
      for (int q = 0; q < kPer; ++q) {  // as[r][x] = A[r0 + r, d0 + x]
        const int r = ty * kPer + q;
        const int64_t ia = r0 + r, dd = d0 + tx;
        as[r][tx] = (ia < p.n && dd < p.d) ? to_float(a[ia * p.stride_a + dd]) : 0.f;
      }
      __syncthreads();
      const int64_t dd = d0 + tx;
      for (int q = 0; q < kPer; ++q) {
        const int c = ty * kPer + q;
        const int64_t j = c0 + c;
        float acc = 0.f;
#pragma unroll 8
        for (int r = 0; r < kTile; ++r) acc += zs[r][c] * as[r][tx];
        if (j < p.m && dd < p.d) v[j * p.d + dd] += acc;
      }
      __syncthreads();
    }
  }
}

// out = scale * inv_a_i * inv_b_j * <a_i, b_j>, written in T.
template <typename T>
__global__ void __launch_bounds__(kTile* kThreadsY) cosine_kernel(LseParams p, T* out) {
  __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1], zs[kTile][kTile + 1];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  tile_logits<T>(p, r0, c0, as, bs, zs);
  const int64_t j = c0 + threadIdx.x;
  for (int q = 0; q < kPer; ++q) {
    const int r = threadIdx.y * kPer + q;
    const int64_t i = r0 + r;
    if (i < p.n && j < p.m) from_float(zs[r][threadIdx.x], out + i * p.m + j);
  }
}

unsigned blocks(int64_t count) { return static_cast<unsigned>((count + kTile - 1) / kTile); }

}  // namespace

cudaError_t contrastive_lse_forward(const LseParams& p, float* lse, float* rowmax, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.num_predicates < 1 || p.num_predicates > 3) return cudaErrorInvalidValue;
  const dim3 threads(kTile, kThreadsY);
  return dispatch(p.dtype, [&](auto tag) {
    FASTGAN_LAUNCH(forward_kernel<decltype(tag)>, blocks(p.n), threads, 0, stream)(p, lse, rowmax);
    return cudaGetLastError();
  });
}

cudaError_t contrastive_lse_backward(const LseParams& p, const float* lse, const float* grad_lse, float* u, float* v,
                                     cudaStream_t stream) {
  if (p.n == 0 || p.m == 0 || p.d == 0) return cudaSuccess;
  const dim3 threads(kTile, kThreadsY);
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(backward_rows_kernel<T>, blocks(p.n), threads, 0, stream)(p, lse, grad_lse, u);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTGAN_LAUNCH(backward_cols_kernel<T>, blocks(p.m), threads, 0, stream)(p, lse, grad_lse, v);
    return cudaGetLastError();
  });
}

cudaError_t cosine_similarity_matrix_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                             int64_t n, int64_t m, int64_t d, int64_t stride_a, int64_t stride_b,
                                             float scale, DType dtype, void* out, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (blocks(n) > 65535u) return cudaErrorInvalidConfiguration;  // grid.y limit
  LseParams p{};
  p.a = a;
  p.b = b;
  p.inv_a = inv_a;
  p.inv_b = inv_b;
  p.n = n;
  p.m = m;
  p.d = d;
  p.stride_a = stride_a;
  p.stride_b = stride_b;
  p.scale = scale;
  p.bias = 0.f;
  p.dtype = dtype;
  const dim3 threads(kTile, kThreadsY), grid(blocks(m), blocks(n));
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(cosine_kernel<T>, grid, threads, 0, stream)(p, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fastgan
