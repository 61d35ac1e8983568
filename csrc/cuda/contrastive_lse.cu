// CUDA kernels of contrastive_lse and cosine_similarity_matrix (contract:
// fastgan/reference/contrastive.py).
//
// Tiles and CTAs. z is cut into 32 x 32 tiles; one CTA of 128 threads (4 warps) computes a tile in
// 32-wide slices of D. Operand slices are double-buffered in shared memory in the input dtype: the
// next slice is read from global memory into registers while the tensor cores work on the current
// one, so a slice costs one __syncthreads instead of two.
// - float16 / bfloat16: every one of the 4 warps owns a 16 x 16 quarter of the tile and runs WMMA
//   16x16x16 (HMMA on sm_80/sm_90) with float32 accumulation, for the z tile AND for both gradient
//   products. Why WMMA and not mma.sync/ldmatrix PTX: it compiles to the same HMMA.16816 (+ LDSM)
//   instructions at this tile size, keeps one source for nvcc and the CPU emulator (csrc/emu models
//   WMMA tile by tile; an mma.sync fragment layout would need a new, unverified emulation), and a
//   32 x 32 tile per 4-warp CTA is what gives GAN batch sizes (N = 64..2048) enough CTAs.
// - float32 with LseParams::allow_tf32 (the glue: torch.get_float32_matmul_precision() is not
//   "highest"): element type Tf32 (float32 storage), the same WMMA code in TF32 (m16n16k8, operands
//   rounded with __float_to_tf32 as loaded, mma_operand.h), dS~ split in 2 TF32 terms as for
//   float16: about 1e-3 relative, as torch.mm in TF32.
// - float32 otherwise: a SIMT product in float32 (8 outputs per thread), IEEE.
// Gradient products on tensor cores. dS~ is float32 (products of exponentials, inverse norms and
// grad_lse): rounding it once to 16 bits would cost 3 (fp16) or 2 (bf16) decimal digits. Each dS~
// tile is rescaled by exact powers of two (each output row into [0.5, 1); the operand row's inverse
// norm moved onto the staged operand, see stage_weights) and split into 2 (float16: 11 + 11 bits) or 3
// (bfloat16: 8 + 8 + 8 bits) terms of the input dtype, each multiplied on the tensor cores against the
// 16-bit operand: dS~ @ B is then as accurate as the float32 product (22 or 24 significant bits per
// element). Static SASS per D slice: forward 4 HMMA.16816, gradient kernels 4 + 8 (fp16) / 4 + 12 (bf16).
//
// Filling the chip (contrastive_lse_plan). Rows alone give ceil(N / 32) CTAs (2 at N = 64); the
// forward and the row-gradient kernel also split the column tiles into col_splits contiguous
// ranges (the column-gradient kernel splits the row tiles), as many as bring the grid to about 2 CTAs
// per SM, capped by the tile count. The split count is a function of N, M and the SM count only.
// Forward: each CTA keeps an online log-sum-exp (running max and sum, float32) per row and predicate,
// 4 threads per row (all 128 threads), merged by warp shuffles in a fixed order into a workspace
// slot per (split, row); a merge kernel folds the splits in split order and adds the extra logit.
// Backward: each CTA recomputes its z tiles, turns them into dS~ and accumulates its split's partial
// of U = dS~ B (V = dS~^T A) in float32, one writer per element (first tile stores, later tiles
// add: no atomics, no zeroing); with one split the partial is U itself, otherwise a finish kernel
// sums the splits in order. Launches: 2 forward + 3 backward for every N; the glue adds one
// inverse-norm launch each way and one normalization-backward launch (kernels at the end of this file).
// Floor: forward 2NMD flops, backward 2 x 4NMD (each gradient kernel recomputes z); (N + M) D
// inputs read per pass.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <type_traits>

#include "contrastive_lse.h"
#include "convert.h"
#include "launch.h"
#include "mma_operand.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kTile = 32;                          // rows and columns of a z tile, and the D slice
constexpr int kThreads = 128;                      // 4 warps, each a 16 x 16 quarter of a tile
constexpr int kPer = kTile * kTile / kThreads;     // 8 tile elements per thread
constexpr int kRowsPerThread = kTile / (kThreads / kTile);  // SIMT layout: column tx, rows 8 ty .. 8 ty + 7
constexpr int kLanesPerRow = kThreads / kTile;     // online LSE: 4 threads per row
constexpr int kWorkspaceSlot = 7;                  // forward partial per (split, row): 3 x (max, sum), rowmax
constexpr int kFinishThreads = 256;
constexpr int64_t kMaxSplits = 64;
static_assert(kPer == 8 && kRowsPerThread == 8 && kLanesPerRow == 4, "the thread layouts assume 128 threads");


template <typename T>
constexpr bool kTensorCores = !std::is_same<T, float>::value;  // 16-bit and Tf32
// Terms of the split of a dS~ tile: 2 x 11 bits (float16, Tf32), 3 x 8 bits (bfloat16).
template <typename T>
constexpr int kSplitTerms = std::is_same<T, __nv_bfloat16>::value ? 3 : 2;

__device__ __forceinline__ bool passes(const LseParams& p, int pred, int64_t i, int64_t j) {
  if (pred == 0) return true;
  const bool same = p.la[i] == p.lb[j];
  return pred == 1 ? same : !same;
}

__device__ __forceinline__ bool admissible(const LseParams& p, int64_t i, int64_t j) {
  return i < p.n && j < p.m && !(p.exclude_self && j == i + p.self_offset);
}

// Shared memory of every kernel. 16-bit rows hold 40 elements (80 bytes): WMMA needs ldm a multiple
// of 8 and 32-byte aligned fragment starts (rows 0 and 16, columns 0 and 16 are); float rows are
// padded by 1 against bank conflicts of the SIMT product. Float tiles use 36 (a multiple of 4, as
// WMMA's float store requires).
template <typename T>
struct Smem {
  static constexpr int kLd = !kTensorCores<T> ? kTile + 1 : (sizeof(T) == 4 ? kTile + 4 : kTile + 8);
  static constexpr int kLdz = kTile + 4;
  alignas(32) T a[2][kTile][kLd];  // A slice: a[buf][row][k]
  alignas(32) T b[2][kTile][kLd];  // B slice: b[buf][col][k]; also the gradient products' operand
  alignas(32) float z[kTile][kLdz];  // z, then dS~
  alignas(32) T split[kTensorCores<T> ? kSplitTerms<T> : 1][kTile][kLd];  // 16-bit terms of the scaled dS~ tile
  alignas(32) float stage[kTile][kLdz];  // each warp's 16 x 16 result, on its way to global memory
  float red[kThreads / 32][kTile];  // per-warp column maxima (columns kernel)
  float row_up[kTile];              // 2^e undoing each output row's scaling (16-bit gradient products)
  float op_scale[kTile];            // power of two near inv_a / inv_b of each staged operand row
};

// Registers of one thread's share (8 elements) of a 32 x 32 slice of a row-major matrix x (rows
// x0.., columns d0..; zeros outside): element e = tid + 128 q is (row e / 32, column e % 32), so a
// warp reads one row's 32 consecutive elements (coalesced).
template <typename T>
struct SliceRegs {
  T v[kPer];
};

template <typename T>
__device__ __forceinline__ void load_slice(SliceRegs<T>& r, const T* x, int64_t rows, int64_t cols, int64_t stride,
                                           int64_t x0, int64_t d0) {
  const T zero = from_float<T>(0.f);
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int e = threadIdx.x + kThreads * q;
    const int64_t i = x0 + e / kTile, d = d0 + e % kTile;
    r.v[q] = (i < rows && d < cols) ? x[i * stride + d] : zero;
  }
}

template <typename T, int Ld>
__device__ __forceinline__ void store_slice(const SliceRegs<T>& r, T (*dst)[Ld]) {
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int e = threadIdx.x + kThreads * q;
    dst[e / kTile][e % kTile] = r.v[q];
  }
}

// Multiplies each element of a staged slice by the power of two of its row (exact in T unless it
// under- or overflows; the scale brings the row near unit norm, so neither matters).
template <typename T>
__device__ __forceinline__ void scale_slice(SliceRegs<T>& r, const float* row_scale) {
#pragma unroll
  for (int q = 0; q < kPer; ++q) r.v[q] = from_float<T>(to_float(r.v[q]) * row_scale[(threadIdx.x + kThreads * q) / kTile]);
}

// sm.z[r][c] = z of rows r0.., columns c0.. (z = scale inv_a_i inv_b_j <a_i, b_j> + bias; 0 outside
// the matrix). Expects every thread done with sm.a, sm.b and sm.z (the caller's last barrier);
// returns with sm.z visible to every thread.
template <typename T>
__device__ void score_tile(const LseParams& p, int64_t r0, int64_t c0, Smem<T>& sm) {
  namespace wmma = nvcuda::wmma;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const int tid = threadIdx.x, warp = tid / 32;
  const int fr = (warp >> 1) * 16, fc = (warp & 1) * 16;  // tensor cores: this warp's quarter
  const int tx = tid % kTile, ty = tid / kTile;           // SIMT: column tx, rows 8 ty ..
  MmaAcc<T> facc;
  float acc[kRowsPerThread] = {};
  if constexpr (kTensorCores<T>) wmma::fill_fragment(facc, 0.f);
  SliceRegs<T> ra, rb;
  load_slice(ra, a, p.n, p.d, p.stride_a, r0, 0);
  load_slice(rb, b, p.m, p.d, p.stride_b, c0, 0);
  store_slice(ra, sm.a[0]);
  store_slice(rb, sm.b[0]);
  __syncthreads();
  int buf = 0;
  for (int64_t d0 = 0; d0 < p.d; d0 += kTile, buf ^= 1) {
    const bool next = d0 + kTile < p.d;
    if (next) {  // in flight while this slice is multiplied
      load_slice(ra, a, p.n, p.d, p.stride_a, r0, d0 + kTile);
      load_slice(rb, b, p.m, p.d, p.stride_b, c0, d0 + kTile);
    }
    if constexpr (kTensorCores<T>) {
#pragma unroll
      for (int kk = 0; kk < kTile; kk += kMmaK<T>) {
        MmaFrag<wmma::matrix_a, T, wmma::row_major> fa;
        MmaFrag<wmma::matrix_b, T, wmma::col_major> fb;  // b[col][k] is B^T column-major
        load_operand(fa, &sm.a[buf][fr][kk], Smem<T>::kLd);
        load_operand(fb, &sm.b[buf][fc][kk], Smem<T>::kLd);
        wmma::mma_sync(facc, fa, fb, facc);
      }
    } else {
#pragma unroll 8
      for (int k = 0; k < kTile; ++k) {
        const float bv = to_float(sm.b[buf][tx][k]);
#pragma unroll
        for (int q = 0; q < kRowsPerThread; ++q) acc[q] += to_float(sm.a[buf][ty * kRowsPerThread + q][k]) * bv;
      }
    }
    if (next) {  // the other buffer was last read before the previous barrier
      store_slice(ra, sm.a[buf ^ 1]);
      store_slice(rb, sm.b[buf ^ 1]);
    }
    __syncthreads();
  }
  if constexpr (kTensorCores<T>) {
    wmma::store_matrix_sync(&sm.z[fr][fc], facc, Smem<T>::kLdz, wmma::mem_row_major);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) acc[q] = sm.z[ty * kRowsPerThread + q][tx];
    __syncthreads();  // every raw value read before the scaled ones overwrite them
  }
  const int64_t j = c0 + tx;
  const float ib = j < p.m ? p.inv_b[j] : 0.f;
#pragma unroll
  for (int q = 0; q < kRowsPerThread; ++q) {
    const int r = ty * kRowsPerThread + q;
    const int64_t i = r0 + r;
    const float ia = i < p.n ? p.inv_a[i] : 0.f;
    sm.z[r][tx] = acc[q] * ia * p.scale * ib + p.bias;
  }
  __syncthreads();
}

// Online log-sum-exp state (max, sum of exp(x - max)). +inf == +inf adds 1 instead of exp(inf - inf);
// a NaN element makes the sum NaN (x > mx and x == mx are false, exp(NaN) is NaN).
__device__ __forceinline__ void lse_add(float& mx, float& sm, float x) {
  if (x > mx) {
    sm = sm * expf(mx - x) + 1.f;  // exp(-inf) = 0 on the first element
    mx = x;
  } else {
    sm += (x == mx) ? 1.f : expf(x - mx);
  }
}

// (mx, sm) <- the state of both element sets. Maxima are never NaN (see lse_add); a side whose max
// is the common max keeps its sum as is (no exp(inf - inf)).
__device__ __forceinline__ void lse_merge(float& mx, float& sm, float mx2, float sm2) {
  const float m = fmaxf(mx, mx2);
  const float s1 = (mx == m) ? sm : sm * expf(mx - m);
  const float s2 = (mx2 == m) ? sm2 : sm2 * expf(mx2 - m);
  mx = m;
  sm = s1 + s2;
}

__device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The column (row) tiles of split s of `tiles` tiles cut into `splits` contiguous ranges.
struct TileRange {
  int64_t begin, end;
};
__device__ __forceinline__ TileRange split_range(int64_t tiles, int64_t splits, int64_t s) {
  const int64_t per = ceil_div(tiles, splits);
  const int64_t b = s * per, e = b + per < tiles ? b + per : tiles;
  return TileRange{b, e};
}

// Grid (row blocks, column splits). Workspace slot (split, row): K x (max, sum), then rowmax.
template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(LseParams p, int64_t splits, float* ws) {
  __shared__ Smem<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile, s = blockIdx.y;
  const int tid = threadIdx.x, row = tid / kLanesPerRow, sub = tid % kLanesPerRow;
  const int64_t i = r0 + row;
  float mx[3] = {-INFINITY, -INFINITY, -INFINITY}, sum[3] = {0.f, 0.f, 0.f}, rmax = -INFINITY;
  const TileRange tr = split_range(ceil_div(p.m, kTile), splits, s);
  for (int64_t t = tr.begin; t < tr.end; ++t) {
    const int64_t c0 = t * kTile;
    score_tile<T>(p, r0, c0, sm);
    if (i < p.n) {
#pragma unroll
      for (int q = 0; q < kTile / kLanesPerRow; ++q) {
        const int c = sub + kLanesPerRow * q;  // 4 lanes of a row interleave: conflict-free reads
        const int64_t j = c0 + c;
        if (!admissible(p, i, j)) continue;
        const float z = sm.z[row][c];
        rmax = fmaxf(rmax, z);
        const float f = (p.relu && z < 0.f) ? 0.f : z;
        // Unrolled over all 3 predicate slots: a runtime bound would put mx[] and sum[] in local memory.
#pragma unroll
        for (int k = 0; k < 3; ++k)
          if (k < p.num_predicates && passes(p, p.predicates[k], i, j)) lse_add(mx[k], sum[k], f);
      }
    }
    __syncthreads();  // sm.z is rewritten by the next tile
  }
  // The 4 lanes of a row (consecutive lanes of one warp) merge: xor 1, then xor 2, a fixed order.
#pragma unroll
  for (int off = 1; off < kLanesPerRow; off <<= 1) {
    rmax = fmaxf(rmax, __shfl_xor_sync(0xffffffffu, rmax, off));
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const float m2 = __shfl_xor_sync(0xffffffffu, mx[k], off);
      const float s2 = __shfl_xor_sync(0xffffffffu, sum[k], off);
      lse_merge(mx[k], sum[k], m2, s2);
    }
  }
  if (sub == 0 && i < p.n) {
    float* slot = ws + (s * p.n + i) * kWorkspaceSlot;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      if (k >= p.num_predicates) break;
      slot[2 * k] = mx[k];
      slot[2 * k + 1] = sum[k];
    }
    slot[6] = rmax;
  }
}

// One thread per row: folds the splits in split order, adds the extra logit, writes lse and rowmax.
__global__ void __launch_bounds__(kThreads)
    forward_merge_kernel(LseParams p, int64_t splits, const float* ws, float* lse, float* rowmax) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.n) return;
  float rmax = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) rmax = fmaxf(rmax, ws[(s * p.n + i) * kWorkspaceSlot + 6]);
  rowmax[i] = rmax;
  for (int k = 0; k < p.num_predicates; ++k) {
    float m = -INFINITY, sum = 0.f;
    for (int64_t s = 0; s < splits; ++s) {
      const float* slot = ws + (s * p.n + i) * kWorkspaceSlot;
      lse_merge(m, sum, slot[2 * k], slot[2 * k + 1]);
    }
    if (p.extra) lse_add(m, sum, p.extra[i]);
    lse[i * p.num_predicates + k] = (m == -INFINITY && !isnan(sum)) ? -INFINITY : m + logf(sum);
  }
}

// A power of two within a factor 2 of x > 0 (1 for 0 and non-finite x): x / pow2_near(x) in [1, 2).
__device__ __forceinline__ float pow2_near(float x) {
  if (!(x > 0.f) || !(x <= 3.4e38f)) return 1.f;
  int e = 0;
  frexpf(x, &e);  // x = f 2^e, f in [0.5, 1)
  e = e < -125 ? -125 : (e > 126 ? 126 : e);
  return ldexpf(1.f, e - 1);
}

// This thread's 8 elements of dS~ (tile row 8 ty + q, column tx): the log-sum-exps' gradient.
template <typename T>
__device__ __forceinline__ void lse_weights(const LseParams& p, int64_t r0, int64_t c0, const float* lse,
                                            const float* w, const Smem<T>& sm, float (&g)[kRowsPerThread]) {
  const int tid = threadIdx.x, tx = tid % kTile, ty = tid / kTile;
  const int64_t j = c0 + tx;
#pragma unroll
  for (int q = 0; q < kRowsPerThread; ++q) {
    const int r = ty * kRowsPerThread + q;
    const int64_t i = r0 + r;
    float acc = 0.f;
    const float z = sm.z[r][tx];
    if (admissible(p, i, j) && (!p.relu || z > 0.f)) {
      const float f = p.relu ? fmaxf(z, 0.f) : z;
      for (int k = 0; k < p.num_predicates; ++k) {
        const float l = lse[i * p.num_predicates + k];
        if (l == -INFINITY || !passes(p, p.predicates[k], i, j)) continue;
        acc += w[i * p.num_predicates + k] * expf(f - l);
      }
      acc *= p.scale * p.inv_a[i] * p.inv_b[j];
    }
    g[q] = acc;
  }
}

// The same elements for the same-class cosine sums (same_class_backward_kernel): with b = a and the
// symmetric mask M_ij = [j != i, y_j = y_i], d/dx^ of sum_i w_i pos_i is W x^ with
// W_ij = M_ij (w_i + w_j); dS~ carries inv_a_i inv_b_j as above. No z is needed.
__device__ __forceinline__ void same_class_weights(const LseParams& p, int64_t r0, int64_t c0, const float* w,
                                                   float (&g)[kRowsPerThread]) {
  const int tid = threadIdx.x, tx = tid % kTile, ty = tid / kTile;
  const int64_t j = c0 + tx;
#pragma unroll
  for (int q = 0; q < kRowsPerThread; ++q) {
    const int64_t i = r0 + ty * kRowsPerThread + q;
    g[q] = (admissible(p, i, j) && p.la[i] == p.lb[j]) ? (w[i] + w[j]) * p.inv_a[i] * p.inv_b[j] : 0.f;
  }
}

// Stages this thread's elements g of the dS~ tile (rows r0.., columns c0..) for grad_product, and
// expects every thread done with the previous tile's sm.z, sm.split, sm.op_scale, sm.row_up.
// float32: into sm.z.
// 16-bit inputs, as 16-bit terms in sm.split that the tensor cores multiply with the staged operand
// X (B for U = dS~ B, A for V = dS~^T A; `transpose` selects V). Two exact power-of-two rescalings
// keep every term in range whatever the inverse norms (a zero vector has inv = 1 / eps):
// - dS~ carries inv of the operand's row (inv_b_j for U); dividing it by c_j = pow2_near(inv_b_j)
//   and multiplying the staged X row by c_j (grad_product) moves that factor onto X (X c_j is about
//   the unit vector x_j / ||x_j||, exact in T barring underflow of relatively negligible elements);
// - each output row (row i of dS~ for U, column j for V) is scaled by 2^-e so that its largest
//   |element| lies in [0.5, 1), undone on the float32 result (sm.row_up).
// Then a term's rounding error is relative to its output row's largest contribution, never another
// row's: 2 float16 terms give 22 significant bits, 3 bfloat16 terms 24.
template <typename T>
__device__ __forceinline__ void stage_weights(const LseParams& p, int64_t r0, int64_t c0, float (&g)[kRowsPerThread],
                                              bool transpose, Smem<T>& sm) {
  const int tid = threadIdx.x, tx = tid % kTile, ty = tid / kTile;
  if constexpr (!kTensorCores<T>) {
    (void)transpose;
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) sm.z[ty * kRowsPerThread + q][tx] = g[q];
    __syncthreads();
  } else {
    const int lane = tid % 32, warp = tid / 32;
    // Operand row scales: U's operand rows are the columns j, V's the rows i of the tile.
    if (tid < kTile) {
      const int64_t x = (transpose ? r0 : c0) + tid;
      const bool in = x < (transpose ? p.n : p.m);
      sm.op_scale[tid] = in ? pow2_near(transpose ? p.inv_a[x] : p.inv_b[x]) : 1.f;
    }
    __syncthreads();
    // Writes the terms of g[q] * down into sm.split (exact splits: each term takes the residue).
    auto split_store = [&](int q, float down) {
      float x = g[q] * down;
#pragma unroll
      for (int t = 0; t < kSplitTerms<T>; ++t) {
        const T h = to_operand<T>(x);
        sm.split[t][ty * kRowsPerThread + q][tx] = h;
        x -= to_float(h);  // exact: the rounding error of h
      }
    };
    if (!transpose) {
      // U: operand row = column tx; output row = tile row (8 ty + q), its 32 columns in this warp.
      const float inv_c = 1.f / sm.op_scale[tx];
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) {
        g[q] *= inv_c;
        float m = fabsf(g[q]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        const float up = m > 0.f ? pow2_near(m) * 2.f : 1.f;  // m / up in [0.5, 1)
        if (lane == 0) sm.row_up[ty * kRowsPerThread + q] = up;
        split_store(q, 1.f / up);
      }
    } else {
      // V: operand row = tile row (8 ty + q); output row = column tx, spread over the 4 warps.
      float m = 0.f;
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) {
        g[q] *= 1.f / sm.op_scale[ty * kRowsPerThread + q];
        m = fmaxf(m, fabsf(g[q]));
      }
      sm.red[warp][lane] = m;
      __syncthreads();
      m = fmaxf(fmaxf(sm.red[0][tx], sm.red[1][tx]), fmaxf(sm.red[2][tx], sm.red[3][tx]));
      const float up = m > 0.f ? pow2_near(m) * 2.f : 1.f;
      if (warp == 0) sm.row_up[tx] = up;
      const float down = 1.f / up;
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) split_store(q, down);
    }
    __syncthreads();
  }
}

// dS~ of the tile from z in sm.z (the log-sum-exps' gradient), staged.
template <typename T>
__device__ void grad_tile(const LseParams& p, int64_t r0, int64_t c0, const float* lse, const float* w, bool transpose,
                          Smem<T>& sm) {
  float g[kRowsPerThread];
  lse_weights<T>(p, r0, c0, lse, w, sm, g);
  stage_weights<T>(p, r0, c0, g, transpose, sm);
}

// out[o0 + o][d] (+)= sum_k P(o, k) x[x0 + k][d] for the 32 output rows o and every d, with
// P = dS~ (rows kernel) or dS~^T (columns kernel, transpose) of the tile left by stage_weights (16-bit
// inputs: its rescaled terms, the staged x rows times sm.op_scale, the result times sm.row_up);
// `first` stores instead of adding. The 32 rows of x are staged slice by slice (double-buffered in
// sm.b). Each output element has exactly one writer in the grid.
template <typename T>
__device__ void grad_product(const LseParams& p, const T* x, int64_t x_rows, int64_t x_stride, int64_t x0,
                             bool transpose, float* out, int64_t out_rows, int64_t o0, bool first, Smem<T>& sm) {
  namespace wmma = nvcuda::wmma;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int fr = (warp >> 1) * 16, fc = (warp & 1) * 16;
  const int tx = tid % kTile, ty = tid / kTile;
  SliceRegs<T> rx;
  load_slice(rx, x, x_rows, p.d, x_stride, x0, 0);
  if constexpr (kTensorCores<T>) scale_slice(rx, sm.op_scale);
  store_slice(rx, sm.b[0]);
  __syncthreads();
  int buf = 0;
  for (int64_t d0 = 0; d0 < p.d; d0 += kTile, buf ^= 1) {
    const bool next = d0 + kTile < p.d;
    if (next) {
      load_slice(rx, x, x_rows, p.d, x_stride, x0, d0 + kTile);
      if constexpr (kTensorCores<T>) scale_slice(rx, sm.op_scale);
    }
    if constexpr (kTensorCores<T>) {
      MmaAcc<T> facc;
      wmma::fill_fragment(facc, 0.f);
#pragma unroll
      for (int kk = 0; kk < kTile; kk += kMmaK<T>) {
        MmaFrag<wmma::matrix_b, T, wmma::row_major> fb;  // b[k][d]
        load_operand(fb, &sm.b[buf][kk][fc], Smem<T>::kLd);
#pragma unroll
        for (int t = 0; t < kSplitTerms<T>; ++t) {
          if (transpose) {  // P^T(o, k) = split[k][o]: column-major
            MmaFrag<wmma::matrix_a, T, wmma::col_major> fa;
            load_operand(fa, &sm.split[t][kk][fr], Smem<T>::kLd);
            wmma::mma_sync(facc, fa, fb, facc);
          } else {
            MmaFrag<wmma::matrix_a, T, wmma::row_major> fa;
            load_operand(fa, &sm.split[t][fr][kk], Smem<T>::kLd);
            wmma::mma_sync(facc, fa, fb, facc);
          }
        }
      }
      // The warp's own 16 x 16 staging area: a warp barrier suffices before its lanes read it.
      wmma::store_matrix_sync(&sm.stage[fr][fc], facc, Smem<T>::kLdz, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int q = 0; q < 16 * 16 / 32; ++q) {
        const int e = lane + 32 * q, rr = fr + e / 16, cc = fc + e % 16;
        const int64_t o = o0 + rr, d = d0 + cc;
        if (o < out_rows && d < p.d) {
          const float val = sm.stage[rr][cc] * sm.row_up[rr];
          float* dst = out + o * p.d + d;
          *dst = first ? val : *dst + val;
        }
      }
    } else {
      float acc[kRowsPerThread] = {};
#pragma unroll 8
      for (int k = 0; k < kTile; ++k) {
        const float xv = to_float(sm.b[buf][k][tx]);
#pragma unroll
        for (int q = 0; q < kRowsPerThread; ++q) {
          const int o = ty * kRowsPerThread + q;
          acc[q] += (transpose ? sm.z[k][o] : sm.z[o][k]) * xv;
        }
      }
      const int64_t d = d0 + tx;
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) {
        const int64_t o = o0 + ty * kRowsPerThread + q;
        if (o < out_rows && d < p.d) {
          float* dst = out + o * p.d + d;
          *dst = first ? acc[q] : *dst + acc[q];
        }
      }
    }
    if (next) store_slice(rx, sm.b[buf ^ 1]);
    __syncthreads();
  }
}

// Grid (row blocks, column splits): U's partial of split s over rows r0.. (U itself with one split).
// Minimum 1 CTA per SM: with the default, ptxas capped the float16 columns kernel at 128 registers
// on sm_90 and spilled 8 bytes; with it every backward kernel stays at 0 spills (about 150 registers).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    backward_rows_kernel(LseParams p, int64_t splits, const float* lse, const float* w, float* u, float* part) {
  __shared__ Smem<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile, s = blockIdx.y;
  float* out = splits == 1 ? u : part + s * p.n * p.d;
  const TileRange tr = split_range(ceil_div(p.m, kTile), splits, s);
  for (int64_t t = tr.begin; t < tr.end; ++t) {
    const int64_t c0 = t * kTile;
    score_tile<T>(p, r0, c0, sm);
    grad_tile<T>(p, r0, c0, lse, w, false, sm);
    grad_product<T>(p, static_cast<const T*>(p.b), p.m, p.stride_b, c0, false, out, p.n, r0, t == tr.begin, sm);
  }
}

// Grid (column blocks, row splits): V's partial of split s over columns c0.. (V itself with one split).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    backward_cols_kernel(LseParams p, int64_t splits, const float* lse, const float* w, float* v, float* part) {
  __shared__ Smem<T> sm;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile, s = blockIdx.y;
  float* out = splits == 1 ? v : part + s * p.m * p.d;
  const TileRange tr = split_range(ceil_div(p.n, kTile), splits, s);
  for (int64_t t = tr.begin; t < tr.end; ++t) {
    const int64_t r0 = t * kTile;
    score_tile<T>(p, r0, c0, sm);
    grad_tile<T>(p, r0, c0, lse, w, true, sm);
    grad_product<T>(p, static_cast<const T*>(p.a), p.n, p.stride_a, r0, true, out, p.m, c0, t == tr.begin, sm);
  }
}

// ---- SupCon's positive term (fastgan::same_class_cosine_sum), launchers same_class_cosine_sum_*:
// pos_i = sum_{j != i, y_j = y_i} cos(x_i, x_j) and its count n_pos_i, as a masked sweep of
// score_tile's cosine tiles (b = a, scale 1, bias 0, self excluded) with the label equality as the
// mask: no sort, nothing indexed by label value, whatever the labels. The grid and the column splits
// are contrastive_lse's plan; each CTA keeps 4 lanes per row (all 128 threads) that sum their columns
// in tile order, merged by shuffles in a fixed order into a workspace slot per (split, row), and a
// merge kernel folds the splits in split order: deterministic bits, no atomics.
// Backward: U = W B with W_ij = M_ij (w_i + w_j) inv_i inv_j (same_class_weights): the row-gradient
// machinery (stage_weights and grad_product, tensor cores for 16-bit and TF32 inputs, one writer per
// element) without any z (W needs none), then backward_finish_kernel over the splits.
// Floor: forward 2 N^2 D flops, backward 2 N^2 D (contrastive_lse's rows kernel: 4 N^2 D).
constexpr int kSameClassSlot = 2;  // workspace per (split, row): the sum, the count (as a float)

template <typename T>
__global__ void __launch_bounds__(kThreads) same_class_sum_kernel(LseParams p, int64_t splits, float* ws) {
  __shared__ Smem<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile, s = blockIdx.y;
  const int tid = threadIdx.x, row = tid / kLanesPerRow, sub = tid % kLanesPerRow;
  const int64_t i = r0 + row;
  float sum = 0.f;
  int count = 0;
  const int64_t label = i < p.n ? p.la[i] : 0;  // read once: no live 64-bit pointer math per column
  const TileRange tr = split_range(ceil_div(p.m, kTile), splits, s);
  for (int64_t t = tr.begin; t < tr.end; ++t) {
    const int64_t c0 = t * kTile;
    score_tile<T>(p, r0, c0, sm);
    if (i < p.n) {
      // Unrolled by 4, not 8: fully unrolled, ptxas caps the IEEE float instance at 128 registers and
      // spills 16 bytes on sm_80 (0 spills at 4 for every dtype and target).
#pragma unroll 4
      for (int q = 0; q < kTile / kLanesPerRow; ++q) {
        const int c = sub + kLanesPerRow * q;
        const int64_t j = c0 + c;
        if (admissible(p, i, j) && label == p.lb[j]) {
          sum += sm.z[row][c];
          ++count;
        }
      }
    }
    __syncthreads();  // sm.z is rewritten by the next tile
  }
#pragma unroll
  for (int off = 1; off < kLanesPerRow; off <<= 1) {
    sum += __shfl_xor_sync(0xffffffffu, sum, off);
    count += __shfl_xor_sync(0xffffffffu, count, off);
  }
  if (sub == 0 && i < p.n) {
    float* slot = ws + (s * p.n + i) * kSameClassSlot;
    slot[0] = sum;
    slot[1] = static_cast<float>(count);  // exact: the launcher keeps the columns below 2^24
  }
}

// One thread per row: the splits' sums and counts in split order.
__global__ void __launch_bounds__(kThreads)
    same_class_merge_kernel(int64_t n, int64_t splits, const float* ws, float* pos, int64_t* n_pos) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  float sum = 0.f;
  int64_t count = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const float* slot = ws + (s * n + i) * kSameClassSlot;
    sum += slot[0];
    count += static_cast<int64_t>(slot[1]);
  }
  pos[i] = sum;
  n_pos[i] = count;
}

// Grid (row blocks, column splits): U's partial of split s over rows r0.. (U itself with one split).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    same_class_backward_kernel(LseParams p, int64_t splits, const float* w, float* u, float* part) {
  __shared__ Smem<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile, s = blockIdx.y;
  float* out = splits == 1 ? u : part + s * p.n * p.d;
  const TileRange tr = split_range(ceil_div(p.m, kTile), splits, s);
  for (int64_t t = tr.begin; t < tr.end; ++t) {
    const int64_t c0 = t * kTile;
    float g[kRowsPerThread];
    same_class_weights(p, r0, c0, w, g);
    stage_weights<T>(p, r0, c0, g, false, sm);  // after the previous grad_product's last barrier
    grad_product<T>(p, static_cast<const T*>(p.b), p.m, p.stride_b, c0, false, out, p.n, r0, t == tr.begin, sm);
  }
}

// U = sum of its splits' partials in split order (when split), then V likewise; grid-stride.
__global__ void __launch_bounds__(kFinishThreads)
    backward_finish_kernel(int64_t nd, int64_t splits_u, const float* part_u, float* u, int64_t md,
                           int64_t splits_v, const float* part_v, float* v) {
  const int64_t nu = splits_u > 1 ? nd : 0, nv = splits_v > 1 ? md : 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kFinishThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kFinishThreads + threadIdx.x; e < nu + nv; e += stride) {
    const bool is_u = e < nu;
    const int64_t idx = is_u ? e : e - nu, count = is_u ? nd : md, splits = is_u ? splits_u : splits_v;
    const float* part = is_u ? part_u : part_v;
    float acc = part[idx];
    for (int64_t s = 1; s < splits; ++s) acc += part[s * count + idx];
    (is_u ? u : v)[idx] = acc;
  }
}

// out = scale * inv_a_i * inv_b_j * <a_i, b_j>, written in T. Grid (column tiles, row tiles).
template <typename T>
__global__ void __launch_bounds__(kThreads) cosine_kernel(LseParams p, T* out) {
  __shared__ Smem<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  score_tile<T>(p, r0, c0, sm);
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t j = c0 + tx;
  for (int q = 0; q < kRowsPerThread; ++q) {
    const int r = ty * kRowsPerThread + q;
    const int64_t i = r0 + r;
    if (i < p.n && j < p.m) out[i * p.m + j] = from_float<T>(sm.z[r][tx]);
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }



// ---- The normalization around the kernels (the glue used to run them as ATen ops: 3 per side for
// the inverse norms, 9 per side for the normalization backward, each a launch). One warp per row,
// rows of a then b in one launch; the warp's lanes stride over D and reduce by shuffles in a fixed
// order (deterministic). A warp's rows are uniform, so a warp past the last row leaves whole.
constexpr int kWarps = kThreads / 32;

template <typename T>
__device__ __forceinline__ float row_sum_squares(const T* x, int64_t d, int lane) {
  float ss = 0.0f;
  for (int64_t c = lane; c < d; c += 32) {
    const float v = to_float(x[c]);
    ss += v * v;
  }
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  return ss;
}

// inv_r = 1 / max(||x_r||, eps), or 1 without normalization.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    inverse_norms_kernel(const T* a, int64_t n, int64_t stride_a, const T* b, int64_t m, int64_t stride_b, int64_t d,
                         float eps, int normalize, float* inv_a, float* inv_b) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= n + m) return;
  const bool is_a = r < n;
  const int64_t row = is_a ? r : r - n;
  const float ss = normalize ? row_sum_squares(is_a ? a + row * stride_a : b + row * stride_b, d, lane) : 0.0f;
  if (lane == 0) (is_a ? inv_a : inv_b)[row] = normalize ? 1.0f / fmaxf(sqrtf(ss), eps) : 1.0f;
}

// grad_r = U_r - [||x_r|| > eps] x^_r (x^_r . U_r) with x^ = x inv (rounded to float before use, as
// csrc/cpu/common.h's normalization_backward_rows), written in T; U itself without normalization.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    normalization_backward_kernel(const T* a, int64_t n, int64_t stride_a, const float* inv_a, const float* u,
                                  T* grad_a, const T* b, int64_t m, int64_t stride_b, const float* inv_b,
                                  const float* v, T* grad_b, int64_t d, float eps, int normalize) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= n + m) return;
  const bool is_a = r < n;
  const int64_t row = is_a ? r : r - n;
  const T* x = is_a ? a + row * stride_a : b + row * stride_b;
  const float* g = (is_a ? u : v) + row * d;
  T* out = (is_a ? grad_a : grad_b) + row * d;
  const float ir = normalize ? (is_a ? inv_a : inv_b)[row] : 0.0f;
  float proj = 0.0f, ss = 0.0f;
  if (normalize) {
    for (int64_t c = lane; c < d; c += 32) {
      const float xv = to_float(x[c]);
      proj += (xv * ir) * g[c];
      ss += xv * xv;
    }
    for (int off = 16; off > 0; off >>= 1) {
      proj += __shfl_xor_sync(0xffffffffu, proj, off);
      ss += __shfl_xor_sync(0xffffffffu, ss, off);
    }
    if (!(sqrtf(ss) > eps)) proj = 0.0f;
  }
  for (int64_t c = lane; c < d; c += 32) {
    out[c] = from_float<T>(normalize ? g[c] - (to_float(x[c]) * ir) * proj : g[c]);
  }
}

// ---- The extra logit's gradient: grad_extra_i = sum_k w_ik exp(extra_i - lse_ik) over the finite
// lse_ik (an infinite one has no extra logit in it). One thread per row, the K <= 3 terms in order;
// it was 7 ATen launches in the glue.
__global__ void __launch_bounds__(kFinishThreads)
    extra_logit_backward_kernel(const float* extra, const float* lse, const float* w, int64_t n, int k, float* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kFinishThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kFinishThreads + threadIdx.x; i < n; i += stride) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
      const float l = lse[i * k + j];
      if (isfinite(l)) acc += w[i * k + j] * expf(extra[i] - l);
    }
    out[i] = acc;
  }
}


}  // namespace

LsePlan contrastive_lse_plan(const LseParams& p) {
  LsePlan q{};
  q.row_blocks = cdiv(p.n, kTile);
  q.col_blocks = cdiv(p.m, kTile);
  const int64_t target = 2 * static_cast<int64_t>(p.num_sms > 0 ? p.num_sms : 1);  // 2 CTAs per SM
  // Splits of `tiles` tiles for a grid of `blocks` blocks: enough for the target, at most one tile
  // per split; then as many as an even cut of the tiles needs (no empty split).
  auto splits_for = [&](int64_t blocks, int64_t tiles) -> int64_t {
    if (tiles <= 1 || blocks == 0) return 1;
    int64_t want = p.force_splits > 0 ? p.force_splits : cdiv(target, blocks);
    want = want < tiles ? want : tiles;
    want = want < kMaxSplits ? want : kMaxSplits;
    return cdiv(tiles, cdiv(tiles, want));
  };
  q.col_splits = splits_for(q.row_blocks, q.col_blocks);
  q.row_splits = splits_for(q.col_blocks, q.row_blocks);
  q.forward_workspace = q.col_splits * p.n * kWorkspaceSlot;
  q.same_class_forward_workspace = q.col_splits * p.n * kSameClassSlot;
  q.same_class_backward_workspace = q.col_splits > 1 ? q.col_splits * p.n * p.d : 0;
  q.backward_workspace = (q.col_splits > 1 ? q.col_splits * p.n * p.d : 0) + (q.row_splits > 1 ? q.row_splits * p.m * p.d : 0);
  return q;
}

cudaError_t contrastive_lse_forward(const LseParams& p, float* lse, float* rowmax, float* workspace,
                                    cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.num_predicates < 1 || p.num_predicates > 3) return cudaErrorInvalidValue;
  const LsePlan q = contrastive_lse_plan(p);
  if (q.row_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.col_splits));
  return dispatch(p.dtype, p.allow_tf32 != 0, [&](auto tag) {
    FASTGAN_LAUNCH(forward_kernel<decltype(tag)>, grid, kThreads, 0, stream)(p, q.col_splits, workspace);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTGAN_LAUNCH(forward_merge_kernel, static_cast<unsigned>(cdiv(p.n, kThreads)), kThreads, 0, stream)(
        p, q.col_splits, workspace, lse, rowmax);
    return cudaGetLastError();
  });
}

cudaError_t contrastive_lse_backward(const LseParams& p, const float* lse, const float* grad_lse, float* u, float* v,
                                     float* workspace, cudaStream_t stream) {
  if (p.n == 0 || p.m == 0 || p.d == 0) return cudaSuccess;
  const LsePlan q = contrastive_lse_plan(p);
  if (q.row_blocks > 0x7fffffff || q.col_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  float* part_u = workspace;
  float* part_v = workspace + (q.col_splits > 1 ? q.col_splits * p.n * p.d : 0);
  return dispatch(p.dtype, p.allow_tf32 != 0, [&](auto tag) {
    using T = decltype(tag);
    const dim3 rows(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.col_splits));
    const dim3 cols(static_cast<unsigned>(q.col_blocks), static_cast<unsigned>(q.row_splits));
    FASTGAN_LAUNCH(backward_rows_kernel<T>, rows, kThreads, 0, stream)(p, q.col_splits, lse, grad_lse, u, part_u);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTGAN_LAUNCH(backward_cols_kernel<T>, cols, kThreads, 0, stream)(p, q.row_splits, lse, grad_lse, v, part_v);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const int64_t work = (q.col_splits > 1 ? p.n * p.d : 0) + (q.row_splits > 1 ? p.m * p.d : 0);
    FASTGAN_LAUNCH(backward_finish_kernel, grid_stride_blocks(work, kFinishThreads), kFinishThreads, 0, stream)(
        p.n * p.d, q.col_splits, part_u, u, p.m * p.d, q.row_splits, part_v, v);
    return cudaGetLastError();
  });
}

namespace {

LseParams same_class_params(const LseParams& x) {
  LseParams p = x;
  p.b = p.a;
  p.inv_b = p.inv_a;
  p.lb = p.la;
  p.extra = nullptr;
  p.m = p.n;
  p.stride_b = p.stride_a;
  p.scale = 1.f;
  p.bias = 0.f;
  p.relu = 0;
  p.exclude_self = 1;
  p.self_offset = 0;
  return p;  // predicates unused: both same-class kernels test label equality themselves
}

// A count per split stays exact in the float slot below 2^24 columns (N^2 cosines beyond that are
// no GPU's work anyway); labels are required.
bool same_class_valid(const LseParams& p) { return p.la != nullptr && p.n < (int64_t(1) << 24); }

}  // namespace

LsePlan same_class_plan(const LseParams& x) { return contrastive_lse_plan(same_class_params(x)); }

cudaError_t same_class_cosine_sum_forward(const LseParams& x, float* pos, int64_t* n_pos, float* workspace,
                                          cudaStream_t stream) {
  if (x.n == 0) return cudaSuccess;
  if (!same_class_valid(x)) return cudaErrorInvalidValue;
  const LseParams p = same_class_params(x);
  const LsePlan q = contrastive_lse_plan(p);  // = same_class_plan(x)
  const dim3 grid(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.col_splits));
  return dispatch(p.dtype, p.allow_tf32 != 0, [&](auto tag) {
    FASTGAN_LAUNCH(same_class_sum_kernel<decltype(tag)>, grid, kThreads, 0, stream)(p, q.col_splits, workspace);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTGAN_LAUNCH(same_class_merge_kernel, static_cast<unsigned>(cdiv(p.n, kThreads)), kThreads, 0, stream)(
        p.n, q.col_splits, workspace, pos, n_pos);
    return cudaGetLastError();
  });
}

cudaError_t same_class_cosine_sum_backward(const LseParams& x, const float* grad, float* u, float* workspace,
                                           cudaStream_t stream) {
  if (x.n == 0 || x.d == 0) return cudaSuccess;
  if (!same_class_valid(x)) return cudaErrorInvalidValue;
  const LseParams p = same_class_params(x);
  const LsePlan q = contrastive_lse_plan(p);  // = same_class_plan(x)
  return dispatch(p.dtype, p.allow_tf32 != 0, [&](auto tag) {
    const dim3 rows(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.col_splits));
    FASTGAN_LAUNCH(same_class_backward_kernel<decltype(tag)>, rows, kThreads, 0, stream)(p, q.col_splits, grad, u,
                                                                                          workspace);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const int64_t work = q.col_splits > 1 ? p.n * p.d : 0;
    FASTGAN_LAUNCH(backward_finish_kernel, grid_stride_blocks(work, kFinishThreads), kFinishThreads, 0, stream)(
        p.n * p.d, q.col_splits, workspace, u, 0, 1, nullptr, nullptr);
    return cudaGetLastError();
  });
}

cudaError_t cosine_similarity_matrix_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                             int64_t n, int64_t m, int64_t d, int64_t stride_a, int64_t stride_b,
                                             float scale, DType dtype, bool allow_tf32, void* out,
                                             cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  if (cdiv(n, kTile) > 65535 || cdiv(m, kTile) > 0x7fffffff) return cudaErrorInvalidConfiguration;  // grid.y limit
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
  const dim3 grid(static_cast<unsigned>(cdiv(m, kTile)), static_cast<unsigned>(cdiv(n, kTile)));
  return dispatch(dtype, allow_tf32, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(cosine_kernel<T>, grid, kThreads, 0, stream)(p, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t inverse_norms(const void* a, int64_t n, int64_t stride_a, const void* b, int64_t m, int64_t stride_b,
                          int64_t d, DType dtype, float eps, bool normalize, float* inv_a, float* inv_b,
                          cudaStream_t stream) {
  if (n + m == 0) return cudaSuccess;
  if ((n + m + kWarps - 1) / kWarps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(inverse_norms_kernel<T>, warp_rows_blocks(n + m, kWarps), kThreads, 0, stream)(
        static_cast<const T*>(a), n, stride_a, static_cast<const T*>(b), m, stride_b, d, eps, normalize ? 1 : 0, inv_a,
        inv_b);
    return cudaGetLastError();
  });
}

cudaError_t extra_logit_backward(const float* extra, const float* lse, const float* grad_lse, int64_t n, int k,
                                 float* grad_extra, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FASTGAN_LAUNCH(extra_logit_backward_kernel, grid_stride_blocks(n, kFinishThreads), kFinishThreads, 0, stream)(
      extra, lse, grad_lse, n, k, grad_extra);
  return cudaGetLastError();
}

cudaError_t normalization_backward(const void* a, int64_t n, int64_t stride_a, const float* inv_a, const float* u,
                                   void* grad_a, const void* b, int64_t m, int64_t stride_b, const float* inv_b,
                                   const float* v, void* grad_b, int64_t d, DType dtype, float eps, bool normalize,
                                   cudaStream_t stream) {
  if (n + m == 0 || d == 0) return cudaSuccess;
  if ((n + m + kWarps - 1) / kWarps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    FASTGAN_LAUNCH(normalization_backward_kernel<T>, warp_rows_blocks(n + m, kWarps), kThreads, 0, stream)(
        static_cast<const T*>(a), n, stride_a, inv_a, u, static_cast<T*>(grad_a), static_cast<const T*>(b), m,
        stride_b, inv_b, v, static_cast<T*>(grad_b), d, eps, normalize ? 1 : 0);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fastgan
