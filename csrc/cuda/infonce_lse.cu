// CUDA kernels of infonce_lse and infonce_lse_backward (contract: fastgan/reference/infonce.py:
// infonce_lse; docs/semantics.md section 6).
//
// Notation. Rows are images i (the global features m_i), columns are c = j * HW + k, the local
// feature l_j[:, k] (N * HW columns, flattened so that small HW does not waste tile width).
// D[i, c] = <m_i, l_c> (raw), a_i = 1 / max(||m_i||, eps), b_c = 1 / max(||l_c||, eps) (both 1 when
// not normalizing), S = scale * a_i * b_c * D. Column c belongs to image j = c / HW, so the own
// block of row i is the columns with j == i: they give pos[i, k], every other column goes into neg[i].
//
// Tiles. A score tile is kBM (32) rows x kBN (64) columns, computed by one CTA of 128 threads
// (4 warps) in kBK (32)-wide slices of R staged through shared memory in the input dtype. float16
// and bfloat16 use tensor cores (nvcuda::wmma 16x16x16, float32 accumulators; each warp owns a
// 16 x 32 strip of the tile); float32 uses a SIMT register-blocked product (4 x 4 outputs per thread).
// Loads are bounds-checked (zeros outside), so every N, R, HW works, and use 64-bit offsets built from
// the three strides of l (and two of m): a permuted channels-last map is read in place. When R is
// the fastest dimension of l (channels-last), consecutive threads load consecutive r, otherwise
// consecutive k, so both layouts are read coalesced.
//
// Forward: grid (row blocks, column splits). Each CTA walks its share of column tiles and keeps
// an online log-sum-exp (running max and sum, float32) per row, 4 threads per row; the 4 partial
// states are merged by warp shuffles in a fixed order and written to a workspace, and a small
// kernel merges the splits in split order and adds the self logit. Splitting the columns gives the
// GPU work when N is small (N = 64 means 2 row blocks); the merge order is fixed by the sizes
// alone, so results are deterministic.
// Backward: dS[i, c] = grad_pos[i, k] on the own block, grad_neg[i] exp(S - neg[i]) elsewhere
// (exactly 0 when grad_neg[i] == 0, so no 0 * inf NaN); W = scale dS a_i b_c.
//   grad_m: grid (row blocks, column splits); each CTA recomputes its score tiles, turns them into
//     W, and accumulates U[i, :] += W[i, tile] @ l[tile, :]^T into its split's float32 partial (one
//     writer per element, first tile stores, later tiles add: no zeroing, no atomics), plus
//     C_i = sum_c scale dS cos. A finishing kernel sums the splits in order and applies the
//     normalization: grad_m_i = U_i - [||m_i|| > eps] a_i^2 C_i m_i.
//   grad_l: one CTA per column tile, looping over all row blocks (N is the short side); V[c, :] +=
//     W[rows, c]^T @ m[rows, :], stored in grad_l's (N, R, HW) layout in float32 (grad_l itself when
//     it is float32), and a finishing kernel applies the normalization term, converting to the dtype.
// The gradient products (W @ l, W^T @ m) are float32 SIMT products on the float32 W tile: W is a
// product of exponentials that float16 cannot hold without underflow, so it is never rounded.
// Floor: forward 2 N^2 HW R flops; backward 2 x 4 N^2 HW R (each gradient kernel recomputes S).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <type_traits>

#include "infonce_lse.h"
#include "launch.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kBM = 32;        // rows (images i) of a score tile
constexpr int kBN = 64;        // columns (j, k) of a score tile
constexpr int kBK = 32;        // R slice of the score product
constexpr int kRC = 64;        // R chunk of the gradient products
constexpr int kThreads = 128;  // 4 warps
constexpr int kSLd = kBN + 4;  // float rows: a multiple of 4 (wmma store), 68 mod 32 = 4 staggers banks
constexpr int kGLd = kRC + 4;
constexpr int64_t kTargetCtas = 264;  // about two waves of CTAs on 132 SMs (H100); sizes-only choice
constexpr int64_t kMaxSplits = 64;    // bounds the grad_m workspace: splits * N * R floats

static_assert(kThreads == 4 * kBM, "forward and grad_m: 4 threads per row of a tile");
static_assert(kThreads == 2 * kBN, "grad_l: 2 threads per column of a tile");
static_assert(kBM == 32 && kBN == 64 && kBK == 32, "the wmma warp layout assumes a 32 x 64 x 32 tile");

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// Operand tiles of the score product. 16-bit rows are padded by 8 elements (16 bytes): wmma needs
// ldm a multiple of 8 and 32-byte aligned fragment starts (rows of 80 and 144 bytes: every 16th row
// and every 16th column start on a 32-byte boundary); float rows are padded by 1 against bank
// conflicts of the SIMT product.
template <typename T>
struct ScoreSmem {
  static constexpr int kPad = sizeof(T) == 4 ? 1 : 8;
  alignas(32) T a[kBM][kBK + kPad];   // a[row][kk] = m[i0 + row, r0 + kk]
  alignas(32) T b[kBK][kBN + kPad];   // b[kk][col] = l[c0 + col] at channel r0 + kk
  alignas(32) float s[kBM][kSLd];     // D tile, then W tile
  int64_t colbase[kBN];               // offset of l_c's channel 0, or -1 past the last column
};

// l_c's element offset for channel 0: c = j * HW + k -> j * stride_n + k * stride_k (-1 if c is out).
__device__ __forceinline__ int64_t column_base(const InfonceParams& p, int64_t c) {
  if (c >= p.n * p.hw) return -1;
  const int64_t j = c / p.hw;
  return j * p.l_stride_n + (c - j * p.hw) * p.l_stride_k;
}

// sm.s[row][col] = D[i0 + row, c0 + col] (0 outside). Starts and ends with a barrier-complete state:
// the caller must have finished reading sm.s and sm.colbase of the previous tile (it ends each tile
// with __syncthreads()); on return sm.s and sm.colbase are visible to every thread.
template <typename T>
__device__ void score_tile(const InfonceParams& p, int64_t i0, int64_t c0, bool r_fast, ScoreSmem<T>& sm) {
  const T* L = static_cast<const T*>(p.l);
  const T* M = static_cast<const T*>(p.m);
  const int tid = threadIdx.x;
  if (tid < kBN) sm.colbase[tid] = column_base(p, c0 + tid);
  __syncthreads();
  const T zero = from_float<T>(0.f);

  constexpr bool kTensorCores = !std::is_same<T, float>::value;
  // wmma layout: warp w computes rows 16 * (w & 1) .. +15, columns 32 * (w >> 1) .. +31 (2 fragments).
  const int warp = tid / 32, fr = warp & 1, fc0 = (warp >> 1) * 2;
  // SIMT layout: rows 4 * ty + q, columns tx + 16 * q2 (tx = tid % 16 keeps a warp on 16
  // consecutive columns of sm.b and 2 rows of sm.a: no bank conflicts with the padding above).
  const int tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  using FragAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  FragAcc facc[2];
  if constexpr (kTensorCores) {
    nvcuda::wmma::fill_fragment(facc[0], 0.f);
    nvcuda::wmma::fill_fragment(facc[1], 0.f);
  }

  for (int64_t r0 = 0; r0 < p.r; r0 += kBK) {
    // m slice, kk fastest (m is normally contiguous in r): element e -> (row e / kBK, kk e % kBK).
    for (int e = tid; e < kBM * kBK; e += kThreads) {
      const int row = e / kBK, kk = e % kBK;
      const int64_t i = i0 + row, rr = r0 + kk;
      sm.a[row][kk] = (i < p.n && rr < p.r) ? M[i * p.m_stride_n + rr * p.m_stride_r] : zero;
    }
    // l slice: consecutive threads on the stride-1 dimension (r for channels-last, k otherwise).
    for (int e = tid; e < kBK * kBN; e += kThreads) {
      const int kk = r_fast ? e % kBK : e / kBN;
      const int col = r_fast ? e / kBK : e % kBN;
      const int64_t base = sm.colbase[col], rr = r0 + kk;
      sm.b[kk][col] = (base >= 0 && rr < p.r) ? L[base + rr * p.l_stride_r] : zero;
    }
    __syncthreads();
    if constexpr (kTensorCores) {
      using namespace nvcuda;
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, &sm.a[fr * 16][kk], kBK + ScoreSmem<T>::kPad);
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, &sm.b[kk][(fc0 + f) * 16], kBN + ScoreSmem<T>::kPad);
          wmma::mma_sync(facc[f], fa, fb, facc[f]);
        }
      }
    } else {
#pragma unroll 8
      for (int kk = 0; kk < kBK; ++kk) {
        float av[4], bv[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          av[q] = to_float(sm.a[4 * ty + q][kk]);
          bv[q] = to_float(sm.b[kk][tx + 16 * q]);
        }
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int q2 = 0; q2 < 4; ++q2) acc[q][q2] += av[q] * bv[q2];
      }
    }
    __syncthreads();  // sm.a / sm.b are rewritten by the next slice
  }
  if constexpr (kTensorCores) {
    for (int f = 0; f < 2; ++f)
      nvcuda::wmma::store_matrix_sync(&sm.s[fr * 16][(fc0 + f) * 16], facc[f], kSLd, nvcuda::wmma::mem_row_major);
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int q2 = 0; q2 < 4; ++q2) sm.s[4 * ty + q][tx + 16 * q2] = acc[q][q2];
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

__device__ __forceinline__ void lse_merge(float& mx, float& sm, float mx2, float sm2) {
  const float m = fmaxf(mx, mx2);  // maxima are never NaN (see lse_add)
  if (m == -INFINITY) {            // both empty (or only -inf elements): no exponentials
    sm += sm2;
    return;
  }
  const float t1 = (mx == m) ? sm : sm * expf(mx - m);
  const float t2 = (mx2 == m) ? sm2 : sm2 * expf(mx2 - m);
  mx = m;
  sm = t1 + t2;
}

__device__ __forceinline__ float lse_value(float mx, float sm) {
  if (mx == -INFINITY) return sm != sm ? NAN : -INFINITY;  // empty set: -inf; NaN inputs stay NaN
  return mx + logf(sm);
}

// inv[v] = 1 / max(||x_v||, eps), act[v] = ||x_v|| > eps, for vectors v = j * hw + k with element
// e at j * stride_outer + k * stride_inner + e * stride_elem (m: hw = 1, stride_inner = 0).
// Block (32, 8): threadIdx.x picks the vector, threadIdx.y strides over its elements; the 8
// partial sums are added in a fixed order.
template <typename T>
__global__ void __launch_bounds__(256)
    inv_norm_kernel(const T* x, int64_t count, int64_t len, int64_t hw, int64_t stride_outer, int64_t stride_inner,
                    int64_t stride_elem, float eps, float* inv, float* act) {
  __shared__ float part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  float ss = 0.f;
  if (v < count) {
    const int64_t j = v / hw;
    const T* base = x + j * stride_outer + (v - j * hw) * stride_inner;
    for (int64_t e = ty; e < len; e += 8) {
      const float f = to_float(base[e * stride_elem]);
      ss += f * f;
    }
  }
  part[ty][tx] = ss;
  __syncthreads();
  if (ty == 0 && v < count) {
    float t = 0.f;
    for (int q = 0; q < 8; ++q) t += part[q][tx];
    const float nrm = sqrtf(t);
    inv[v] = 1.f / fmaxf(nrm, eps);
    if (act) act[v] = nrm > eps ? 1.f : 0.f;
  }
}

struct Norms {
  const float* inv_m;  // null: 1 (no normalization)
  const float* inv_l;
  const float* act_m;  // backward only
  const float* act_l;
};

// Forward. Grid (row blocks, splits); split s owns column tiles [s * tps, min((s + 1) * tps, tiles)).
// Thread layout of the reduction: row tid / 4, columns tid % 4 + 4 q (q < 16): the 4 threads of a
// row are consecutive lanes of one warp, merged by __shfl_xor 1 then 2.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(InfonceParams p, Norms nm, int64_t tiles, int64_t tps, float* pos, float* part_max,
                   float* part_sum) {
  __shared__ ScoreSmem<T> sm;
  const int tid = threadIdx.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBM, split = blockIdx.y;
  const int64_t t_begin = split * tps, t_end = t_begin + tps < tiles ? t_begin + tps : tiles;
  const bool r_fast = p.l_stride_r < p.l_stride_k;
  const int row = tid / 4, sub = tid % 4;
  const int64_t i = i0 + row, ncols = p.n * p.hw;
  const float a_i = (i < p.n && nm.inv_m) ? nm.inv_m[i] : 1.f;
  float mx = -INFINITY, sum = 0.f;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c0 = t * kBN;
    score_tile<T>(p, i0, c0, r_fast, sm);
    if (i < p.n) {
      for (int q = 0; q < kBN / 4; ++q) {
        const int col = sub + 4 * q;
        const int64_t c = c0 + col;
        if (c >= ncols) break;
        // S = scale * cos with cos = a_i b_c D, rounded exactly as the backward kernels recompute it.
        const float s = p.scale * (a_i * (nm.inv_l ? nm.inv_l[c] : 1.f) * sm.s[row][col]);
        const int64_t j = c / p.hw;
        if (j == i) {
          pos[i * p.hw + (c - j * p.hw)] = s;  // the only writer of pos[i, k]
        } else {
          lse_add(mx, sum, s);
        }
      }
    }
    __syncthreads();  // sm.s and sm.colbase are rewritten by the next tile
  }
  // Merge the 4 lanes of each row (all lanes take part in the shuffles).
  for (int off = 1; off < 4; off <<= 1) {
    const float omx = __shfl_xor_sync(0xffffffffu, mx, off);
    const float osm = __shfl_xor_sync(0xffffffffu, sum, off);
    if ((sub & off) == 0) {
      lse_merge(mx, sum, omx, osm);
    } else {  // the partner merges in the same (lower lane first) order: identical state in both
      float m2 = omx, s2 = osm;
      lse_merge(m2, s2, mx, sum);
      mx = m2;
      sum = s2;
    }
  }
  if (sub == 0 && i < p.n) {
    part_max[split * p.n + i] = mx;
    part_sum[split * p.n + i] = sum;
  }
}

__global__ void forward_combine_kernel(InfonceParams p, int64_t splits, const float* part_max,
                                       const float* part_sum, float* neg) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float mx = -INFINITY, sum = 0.f;
  for (int64_t s = 0; s < splits; ++s) lse_merge(mx, sum, part_max[s * p.n + i], part_sum[s * p.n + i]);
  if (p.has_self) lse_merge(mx, sum, p.self_term, 1.f);
  neg[i] = lse_value(mx, sum);
}

// dS for (i, c) given S and cos: see the file comment. i < n and c < n * hw.
__device__ __forceinline__ float score_grad(const InfonceParams& p, int64_t i, int64_t c, float s,
                                            const float* grad_pos, const float* grad_neg, const float* neg) {
  const int64_t j = c / p.hw;
  if (j == i) return grad_pos[i * p.hw + (c - j * p.hw)];
  const float g = grad_neg[i];
  return g == 0.f ? 0.f : g * expf(s - neg[i]);
}

// grad_m partials. Grid (row blocks, splits) as in the forward. u_part: splits x N x R, c_part:
// splits x N.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_m_kernel(InfonceParams p, Norms nm, int64_t tiles, int64_t tps, const float* grad_pos,
                  const float* grad_neg, const float* neg, float* u_part, float* c_part) {
  __shared__ ScoreSmem<T> sm;
  __shared__ float g[kBN][kGLd];  // g[col][rr] = l_{c0 + col}[r0 + rr] in float32
  const T* L = static_cast<const T*>(p.l);
  const int tid = threadIdx.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBM, split = blockIdx.y;
  const int64_t t_begin = split * tps, t_end = t_begin + tps < tiles ? t_begin + tps : tiles;
  const bool r_fast = p.l_stride_r < p.l_stride_k;
  const int64_t ncols = p.n * p.hw;
  // dS layout (as the forward): row tid / 4, columns tid % 4 + 4 q.
  const int row = tid / 4, sub = tid % 4;
  const int64_t i = i0 + row;
  const float a_i = (i < p.n && nm.inv_m) ? nm.inv_m[i] : 1.f;
  float cterm = 0.f;  // sum over this thread's columns of scale * dS * cos
  // Product layout: rows 4 * ty + q, channels tx + 16 * q2 of the chunk.
  const int tx = tid % 16, ty = tid / 16;
  float* u = u_part + split * p.n * p.r;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c0 = t * kBN;
    score_tile<T>(p, i0, c0, r_fast, sm);
    for (int q = 0; q < kBN / 4; ++q) {
      const int col = sub + 4 * q;
      const int64_t c = c0 + col;
      float w = 0.f;
      if (i < p.n && c < ncols) {
        const float cosv = a_i * (nm.inv_l ? nm.inv_l[c] : 1.f) * sm.s[row][col];
        const float ds = score_grad(p, i, c, p.scale * cosv, grad_pos, grad_neg, neg);
        if (ds != 0.f) {  // 0 * inf (an infinite cos) must not become NaN
          cterm += p.scale * ds * cosv;
          w = p.scale * ds * a_i * (nm.inv_l ? nm.inv_l[c] : 1.f);
        }
      }
      sm.s[row][col] = w;  // each element is read and written by this thread only
    }
    __syncthreads();
    for (int64_t r0 = 0; r0 < p.r; r0 += kRC) {
      for (int e = tid; e < kBN * kRC; e += kThreads) {
        const int rr = r_fast ? e % kRC : e / kBN;
        const int col = r_fast ? e / kRC : e % kBN;
        const int64_t base = sm.colbase[col], r = r0 + rr;
        g[col][rr] = (base >= 0 && r < p.r) ? to_float(L[base + r * p.l_stride_r]) : 0.f;
      }
      __syncthreads();
      float acc[4][4] = {};
#pragma unroll 4
      for (int col = 0; col < kBN; ++col) {
        float wv[4], gv[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          wv[q] = sm.s[4 * ty + q][col];
          gv[q] = g[col][tx + 16 * q];
        }
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int q2 = 0; q2 < 4; ++q2) acc[q][q2] += wv[q] * gv[q2];
      }
      for (int q = 0; q < 4; ++q) {
        const int64_t ii = i0 + 4 * ty + q;
        if (ii >= p.n) continue;
        for (int q2 = 0; q2 < 4; ++q2) {
          const int64_t r = r0 + tx + 16 * q2;
          if (r >= p.r) continue;
          float* dst = u + ii * p.r + r;  // this thread is the only writer of this element
          *dst = (t == t_begin) ? acc[q][q2] : *dst + acc[q][q2];
        }
      }
      __syncthreads();  // g is rewritten by the next chunk
    }
  }
  for (int off = 1; off < 4; off <<= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, cterm, off);
    cterm = (sub & off) == 0 ? cterm + o : o + cterm;  // same operand order on both lanes
  }
  if (sub == 0 && i < p.n) c_part[split * p.n + i] = cterm;
}

// grad_m[i, r] (contiguous, T) = sum_s u_part[s, i, r] - [act_i] a_i^2 (sum_s c_part[s, i]) m[i, r].
template <typename T>
__global__ void grad_m_finish_kernel(InfonceParams p, Norms nm, int64_t splits, const float* u_part,
                                     const float* c_part, T* grad_m) {
  const T* M = static_cast<const T*>(p.m);
  const int64_t total = p.n * p.r;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / p.r, r = e - i * p.r;
    float u = 0.f;
    for (int64_t s = 0; s < splits; ++s) u += u_part[(s * p.n + i) * p.r + r];
    if (p.normalize && nm.act_m[i] != 0.f) {
      float ci = 0.f;
      for (int64_t s = 0; s < splits; ++s) ci += c_part[s * p.n + i];
      const float a = nm.inv_m[i];
      u -= a * a * ci * to_float(M[i * p.m_stride_n + r * p.m_stride_r]);
    }
    grad_m[e] = from_float<T>(u);
  }
}

// grad_l. One CTA per column tile c0 .. c0 + 63, looping over every row block.
//   dS layout: column tid % 64, rows 16 * (tid / 64) + q (q < 16): the column term accumulates in
//   registers and the two row halves are added at the end.
//   Product layout: columns tx, tx + 32 (tx = lane), channels warp + 4 q (q < 16) of the chunk:
//   consecutive lanes write consecutive k of v (coalesced for HW >= 32).
// v: (N, R, HW) float32 (grad_l's layout); c_l: N * HW.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_l_kernel(InfonceParams p, Norms nm, const float* grad_pos, const float* grad_neg, const float* neg,
                  float* v, float* c_l) {
  __shared__ ScoreSmem<T> sm;
  __shared__ float g[kBM][kGLd];  // g[row][rr] = m[i0 + row, r0 + rr] in float32
  __shared__ float red[2][kBN];
  const T* M = static_cast<const T*>(p.m);
  const int tid = threadIdx.x;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBN, ncols = p.n * p.hw;
  const bool r_fast = p.l_stride_r < p.l_stride_k;
  const int dcol = tid % kBN, dhalf = tid / kBN;
  const int64_t dc = c0 + dcol;
  const float b_c = (dc < ncols && nm.inv_l) ? nm.inv_l[dc] : 1.f;
  float cterm = 0.f;
  const int lane = tid % 32, warp = tid / 32;
  int64_t out_off[2];  // offset of (j, r = 0, k) in v for columns c0 + lane + 32 cc, -1 if out
  for (int cc = 0; cc < 2; ++cc) {
    const int64_t c = c0 + lane + 32 * cc;
    const int64_t j = c / p.hw;
    out_off[cc] = c < ncols ? j * p.r * p.hw + (c - j * p.hw) : -1;
  }
  for (int64_t i0 = 0; i0 < p.n; i0 += kBM) {
    score_tile<T>(p, i0, c0, r_fast, sm);
    for (int q = 0; q < kBM / 2; ++q) {
      const int row = dhalf * (kBM / 2) + q;
      const int64_t i = i0 + row;
      float w = 0.f;
      if (i < p.n && dc < ncols) {
        const float a_i = nm.inv_m ? nm.inv_m[i] : 1.f;
        const float cosv = a_i * b_c * sm.s[row][dcol];
        const float ds = score_grad(p, i, dc, p.scale * cosv, grad_pos, grad_neg, neg);
        if (ds != 0.f) {
          cterm += p.scale * ds * cosv;
          w = p.scale * ds * a_i * b_c;
        }
      }
      sm.s[row][dcol] = w;
    }
    __syncthreads();
    for (int64_t r0 = 0; r0 < p.r; r0 += kRC) {
      for (int e = tid; e < kBM * kRC; e += kThreads) {
        const int row = e / kRC, rr = e % kRC;
        const int64_t i = i0 + row, r = r0 + rr;
        g[row][rr] = (i < p.n && r < p.r) ? to_float(M[i * p.m_stride_n + r * p.m_stride_r]) : 0.f;
      }
      __syncthreads();
      float acc[2][16] = {};
#pragma unroll 4
      for (int row = 0; row < kBM; ++row) {
        const float w0 = sm.s[row][lane], w1 = sm.s[row][lane + 32];
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          const float gv = g[row][warp + 4 * q];  // one address per warp: broadcast
          acc[0][q] += w0 * gv;
          acc[1][q] += w1 * gv;
        }
      }
      for (int cc = 0; cc < 2; ++cc) {
        if (out_off[cc] < 0) continue;
        for (int q = 0; q < 16; ++q) {
          const int64_t r = r0 + warp + 4 * q;
          if (r >= p.r) continue;
          float* dst = v + out_off[cc] + r * p.hw;  // this thread is the only writer
          *dst = (i0 == 0) ? acc[cc][q] : *dst + acc[cc][q];
        }
      }
      __syncthreads();  // g is rewritten by the next chunk
    }
  }
  red[dhalf][dcol] = cterm;
  __syncthreads();
  if (tid < kBN && dc < ncols) c_l[dc] = red[0][tid] + red[1][tid];
}

// grad_l[j, r, k] (contiguous, T) = v[j, r, k] - [act_c] b_c^2 C_c l[j, r, k], c = j * HW + k.
// v may alias grad_l (float32): each element is read, then written, by one thread.
template <typename T>
__global__ void grad_l_finish_kernel(InfonceParams p, Norms nm, const float* v, const float* c_l, T* grad_l) {
  const T* L = static_cast<const T*>(p.l);
  const int64_t plane = p.r * p.hw, total = p.n * plane;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float x = v[e];
    if (p.normalize) {
      const int64_t j = e / plane, rem = e - j * plane, r = rem / p.hw, k = rem - r * p.hw, c = j * p.hw + k;
      if (nm.act_l[c] != 0.f) {
        const float b = nm.inv_l[c];
        x -= b * b * c_l[c] * to_float(L[j * p.l_stride_n + r * p.l_stride_r + k * p.l_stride_k]);
      }
    }
    grad_l[e] = from_float<T>(x);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Column split of the row-block kernels: a function of the sizes only (determinism).
struct Plan {
  int64_t ncols, tiles, row_blocks, tps, splits;
};

Plan make_plan(const InfonceParams& p) {
  Plan q{};
  q.ncols = p.n * p.hw;
  q.tiles = ceil_div(q.ncols, kBN);
  q.row_blocks = ceil_div(p.n, kBM);
  if (q.tiles == 0 || q.row_blocks == 0) {
    q.tps = 1;
    q.splits = 0;
    return q;
  }
  int64_t want = ceil_div(kTargetCtas, q.row_blocks);
  want = want < q.tiles ? want : q.tiles;
  want = want < kMaxSplits ? want : kMaxSplits;
  q.tps = ceil_div(q.tiles, want);
  q.splits = ceil_div(q.tiles, q.tps);  // no empty split: every split writes its partials
  return q;
}

unsigned grid_1d(int64_t count, int threads) {
  const int64_t b = ceil_div(count, threads);
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);  // grid-stride loops cover the rest
}

// Inverse norms (and activity flags) of m's rows and l's columns into the given buffers.
cudaError_t launch_norms(const InfonceParams& p, float* inv_m, float* act_m, float* inv_l, float* act_l,
                         cudaStream_t stream) {
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 threads(32, 8);
    FASTGAN_LAUNCH(inv_norm_kernel<T>, static_cast<unsigned>(ceil_div(p.n, 32)), threads, 0, stream)(
        static_cast<const T*>(p.m), p.n, p.r, 1, p.m_stride_n, 0, p.m_stride_r, p.eps, inv_m, act_m);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || p.hw == 0) return err;
    FASTGAN_LAUNCH(inv_norm_kernel<T>, static_cast<unsigned>(ceil_div(p.n * p.hw, 32)), threads, 0, stream)(
        static_cast<const T*>(p.l), p.n * p.hw, p.r, p.hw, p.l_stride_n, p.l_stride_k, p.l_stride_r, p.eps, inv_l,
        act_l);
    return cudaGetLastError();
  });
}

bool valid(const InfonceParams& p) {
  return p.n >= 0 && p.r >= 0 && p.hw >= 0 && p.l_stride_n >= 0 && p.l_stride_r >= 0 && p.l_stride_k >= 0 &&
         p.m_stride_n >= 0 && p.m_stride_r >= 0;
}

}  // namespace

// Forward workspace: inv_m (N), inv_l (N HW), part_max and part_sum (splits N each).
int64_t infonce_lse_forward_workspace(const InfonceParams& p) {
  const Plan q = make_plan(p);
  return p.n + q.ncols + 2 * q.splits * p.n;
}

// Backward workspace: inv_m, act_m (N each), inv_l, act_l, c_l (N HW each), u_part (splits N R),
// c_part (splits N), v (N R HW unless grad_l is float32 and serves as v).
int64_t infonce_lse_backward_workspace(const InfonceParams& p) {
  const Plan q = make_plan(p);
  const int64_t v = p.dtype == DType::kFloat32 ? 0 : p.n * p.r * p.hw;
  return 2 * p.n + 3 * q.ncols + q.splits * p.n * p.r + q.splits * p.n + v;
}

cudaError_t infonce_lse_forward(const InfonceParams& p, float* pos, float* neg, float* workspace,
                                cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  const Plan q = make_plan(p);
  if (q.splits > 65535 || q.row_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  float* inv_m = workspace;
  float* inv_l = inv_m + p.n;
  float* part_max = inv_l + q.ncols;
  float* part_sum = part_max + q.splits * p.n;
  cudaError_t err = cudaSuccess;
  Norms nm{nullptr, nullptr, nullptr, nullptr};
  if (p.normalize) {
    err = launch_norms(p, inv_m, nullptr, inv_l, nullptr, stream);
    if (err != cudaSuccess) return err;
    nm.inv_m = inv_m;
    nm.inv_l = inv_l;
  }
  if (q.splits > 0) {
    err = dispatch(p.dtype, [&](auto tag) {
      using T = decltype(tag);
      const dim3 grid(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.splits));
      FASTGAN_LAUNCH(forward_kernel<T>, grid, kThreads, 0, stream)(p, nm, q.tiles, q.tps, pos, part_max, part_sum);
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return err;
  }
  FASTGAN_LAUNCH(forward_combine_kernel, static_cast<unsigned>(ceil_div(p.n, 128)), 128, 0, stream)(
      p, q.splits, part_max, part_sum, neg);
  return cudaGetLastError();
}

cudaError_t infonce_lse_backward(const InfonceParams& p, const float* grad_pos, const float* grad_neg,
                                 const float* neg, void* grad_l, void* grad_m, float* workspace,
                                 cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.n == 0 || p.r == 0) return cudaSuccess;  // both gradients are empty
  const Plan q = make_plan(p);
  if (q.splits > 65535 || q.tiles > 0x7fffffff || q.row_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  float* inv_m = workspace;
  float* act_m = inv_m + p.n;
  float* inv_l = act_m + p.n;
  float* act_l = inv_l + q.ncols;
  float* c_l = act_l + q.ncols;
  float* u_part = c_l + q.ncols;
  float* c_part = u_part + q.splits * p.n * p.r;
  float* v = p.dtype == DType::kFloat32 ? static_cast<float*>(grad_l) : c_part + q.splits * p.n;
  cudaError_t err = cudaSuccess;
  Norms nm{nullptr, nullptr, nullptr, nullptr};
  if (p.normalize) {
    err = launch_norms(p, inv_m, act_m, inv_l, act_l, stream);
    if (err != cudaSuccess) return err;
    nm = Norms{inv_m, inv_l, act_m, act_l};
  }
  return dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (q.splits > 0) {
      const dim3 grid(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.splits));
      FASTGAN_LAUNCH(grad_m_kernel<T>, grid, kThreads, 0, stream)(
          p, nm, q.tiles, q.tps, grad_pos, grad_neg, neg, u_part, c_part);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
    FASTGAN_LAUNCH(grad_m_finish_kernel<T>, grid_1d(p.n * p.r, 256), 256, 0, stream)(
        p, nm, q.splits, u_part, c_part, static_cast<T*>(grad_m));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || q.tiles == 0) return e;  // HW = 0: grad_l is empty
    FASTGAN_LAUNCH(grad_l_kernel<T>, static_cast<unsigned>(q.tiles), kThreads, 0, stream)(
        p, nm, grad_pos, grad_neg, neg, v, c_l);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    FASTGAN_LAUNCH(grad_l_finish_kernel<T>, grid_1d(p.n * p.r * p.hw, 256), 256, 0, stream)(
        p, nm, v, c_l, static_cast<T*>(grad_l));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fastgan
