// CUDA kernels of infonce_lse and infonce_lse_backward (contract: fastgan/reference/infonce.py:
// infonce_lse; docs/semantics.md section 6).
//
// Notation. Rows are images i (the global features m_i), columns are c = j * HW + k, the local
// feature l_j[:, k] (N * HW columns, flattened so that small HW does not waste tile width).
// D[i, c] = <m_i, l_c> (raw), a_i = 1 / max(||m_i||, eps), b_c = 1 / max(||l_c||, eps) (both 1 when
// not normalizing), S = scale * a_i * b_c * D. Column c belongs to image j = c / HW, so the own
// block of row i is the columns with j == i: they give pos[i, k], every other column goes into neg[i].
//
// Launches: 4 at every N (forward 2, backward 2), sizes-only grids, no host syncs, no atomics, no
// zeroed buffers, so a forward + backward captures in a CUDA graph:
//   forward_kernel (row blocks x column splits), forward_combine_kernel (merges the splits);
//   backward_kernel (grad_m CTAs and grad_l CTAs in one grid), grad_m_finish_kernel.
// The norms a_i, b_c are not a launch of their own: every score tile stages all of m_i and l_c
// through shared memory anyway, so it sums their squares on the way (float32, a fixed order that
// depends only on a vector's position in its tile, so every kernel gets the same bits for a_i, b_c
// and the backward recomputes exactly the forward's S).
//
// Tiles. A score tile is kBM (32) rows x kBN (64) columns, computed by one CTA of 128 threads
// (4 warps) in kBK (32)-wide slices of R staged through shared memory in the input dtype. float16
// and bfloat16 use tensor cores (nvcuda::wmma 16x16x16, float32 accumulators; each of the 4 warps
// owns a 16 x 32 strip of the tile); float32 follows InfonceParams::allow_tf32 (the glue: unless
// torch.get_float32_matmul_precision() is "highest"): allowed, the element type is Tf32 (float32
// storage) and the same tile code runs wmma 16x16x8 in TF32, operands rounded with __float_to_tf32
// at the fragment loads (about 1e-3 relative, as torch.mm in TF32); otherwise float, a SIMT
// register-blocked product (4 x 4 outputs per thread), IEEE. Loads are bounds-checked (zeros outside), so every N, R, HW works, and use 64-bit offsets
// built from the three strides of l (and two of m): a permuted channels-last map is read in place.
// When R is the fastest dimension of l (channels-last), consecutive threads load consecutive r,
// otherwise consecutive k, so both layouts are read coalesced.
//
// Filling the GPU. The row-block kernels split the column tiles into `splits` contiguous ranges so
// that row blocks x splits reaches about kTargetCtas CTAs (N = 64, HW = 64: 2 row blocks x 64
// splits, every one of the 128 score tiles its own CTA); each split writes its own partial state
// (max, sum) or gradient partial, and a later kernel merges them in split order. The plan is a
// function of the sizes alone, so results are deterministic.
//
// Forward: each CTA walks its share of column tiles and keeps an online log-sum-exp (running max and
// sum, float32) per row, 4 threads per row; the 4 partial states are merged by warp shuffles in a
// fixed order and written to a workspace, and forward_combine_kernel merges the splits in split
// order and adds the self logit.
// Backward: dS[i, c] = grad_pos[i, k] on the own block, grad_neg[i] exp(S - neg[i]) elsewhere
// (exactly 0 when grad_neg[i] == 0, so no 0 * inf NaN); W = scale dS a_i b_c (float32).
//   grad_m CTAs (row block, split), the first row_blocks x splits CTAs of backward_kernel: each
//     recomputes its score tiles, turns them into W, and accumulates U[i, :] += W[i, tile] @
//     l[tile, :]^T into its split's float32 partial (one writer per element, first tile stores,
//     later tiles add: no zeroing, no atomics), plus C_i = sum_c scale dS cos. grad_m_finish_kernel
//     sums the splits in order and applies the normalization: grad_m_i = U_i - [||m_i|| > eps] a_i^2
//     C_i m_i.
//   grad_l CTAs, one per column tile, the rest of the grid: each loops over all row blocks (N is the
//     short side), V[c, :] += W[rows, c]^T @ m[rows, :], kept in grad_l's (N, R, HW) layout in
//     float32 (grad_l itself when it is float32), then applies the normalization term of its own
//     columns and writes grad_l in its dtype: it owns its columns, so it needs no finishing kernel.
//   The two kinds of CTA read only the inputs, so they share one launch; the long grad_m CTAs
//   (tps tiles each) come first in the grid so that the short grad_l CTAs fill in behind them.
// Gradient products. float16/bfloat16: tensor cores in TF32 (wmma 16x16x8, float32 accumulators),
//   W split into hi + lo TF32 parts (two MMAs): W is a product of exponentials that a 16-bit type
//   cannot hold (float16 underflows and, with the 1 / eps of a zero vector, overflows), while TF32
//   has float32's range; the other operand (l or m in float32) is a 16-bit value, exact in TF32. So
//   the products carry about 21 bits of W and every bit of l, m: float32 accuracy on tensor cores.
//   float32 with allow_tf32 (Tf32): the same two-MMA products, W still split hi + lo; l, m rounded
//   to TF32 (the 11 bits torch's TF32 matmuls keep too). float32 otherwise: SIMT float32 products (IEEE).
// Floor: forward 2 N^2 HW R flops; backward 2 x 4 N^2 HW R (each gradient recomputes S), the
// gradient products twice on TF32 tensor cores for 16-bit and Tf32 inputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <type_traits>

#include "infonce_lse.h"
#include "convert.h"
#include "launch.h"
#include "mma_operand.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kBM = 32;        // rows (images i) of a score tile
constexpr int kBN = 64;        // columns (j, k) of a score tile
constexpr int kBK = 32;        // R slice of the score product
constexpr int kRC = 64;        // R chunk of the gradient products
constexpr int kThreads = 128;  // 4 warps
// The score kernels are declared __launch_bounds__(kThreads, 1): at least one CTA per SM lets ptxas
// use up to 255 registers. With the bare __launch_bounds__(kThreads) it aimed at 168 (backward) and
// 72 (float32 forward) and spilled 4-28 bytes on sm_90; this way every kernel has 0 spill bytes and
// no stack frame on sm_80 and sm_90 (registers on sm_90: backward 144-212, 2 CTAs per SM; forward
// 105-123, 4 CTAs per SM; sm_80 a little fewer).
constexpr int kSLd = kBN + 4;  // float rows: a multiple of 4 (wmma), 68 mod 32 = 4 staggers banks
constexpr int kGLd = kRC + 4;
// About two waves of CTAs on 132 SMs (H100/H200); a sizes-only choice. It also bounds the grad_m
// workspace, splits * N * R floats: splits <= ceil(264 / row blocks) and N <= 32 row blocks give
// splits * N <= 8448 + N (35 MB + 4 N R bytes at R = 1024).
constexpr int64_t kTargetCtas = 264;

static_assert(kThreads == 4 * kBM, "forward and grad_m: 4 threads per row of a tile");
static_assert(kThreads == 2 * kBN, "grad_l and the column norms: 2 threads per column of a tile");
static_assert(kBM == 32 && kBN == 64 && kBK == 32 && kRC == 64, "the wmma warp layouts assume these tiles");


// out(16 x 16 per fragment) += A(16 x 8 ksteps) B: A's float32 elements split into TF32 hi + lo
// (both products accumulated in float32), B's rounded to TF32 (exact for 16-bit inputs).
using TfA_row = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32,
                                       nvcuda::wmma::row_major>;
using TfA_col = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32,
                                       nvcuda::wmma::col_major>;
using TfB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32,
                                   nvcuda::wmma::row_major>;
using TfAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>;

template <typename FragA>
__device__ __forceinline__ void split_tf32(FragA& hi, FragA& lo) {  // hi holds the float32 values
#pragma unroll
  for (int e = 0; e < hi.num_elements; ++e) {
    const float x = hi.x[e];
    hi.x[e] = nvcuda::wmma::__float_to_tf32(x);
    lo.x[e] = nvcuda::wmma::__float_to_tf32(x - hi.x[e]);
  }
}

__device__ __forceinline__ void round_tf32(TfB& b) {
#pragma unroll
  for (int e = 0; e < b.num_elements; ++e) b.x[e] = nvcuda::wmma::__float_to_tf32(b.x[e]);
}

// Operand tiles of the score product. 16-bit rows are padded by 8 elements (16 bytes): wmma needs
// ldm a multiple of 8 and 32-byte aligned fragment starts (rows of 80 and 144 bytes: every 16th row
// and every 16th column start on a 32-byte boundary); Tf32 rows by 4 (ldm a multiple of 4; rows of
// 144 and 272 bytes, fragment starts every 8th row / 8th column on 32-byte boundaries); float rows
// are padded by 1 against bank conflicts of the SIMT product.
template <typename T>
struct ScoreSmem {
  static constexpr int kPad = std::is_same<T, float>::value ? 1 : (sizeof(T) == 4 ? 4 : 8);
  alignas(32) T a[kBM][kBK + kPad];   // a[row][kk] = m[i0 + row, r0 + kk]
  alignas(32) T b[kBK][kBN + kPad];   // b[kk][col] = l[c0 + col] at channel r0 + kk
  alignas(32) float s[kBM][kSLd];     // D tile, then W tile
  int64_t colbase[kBN];               // offset of l_c's channel 0, or -1 past the last column
  float sq_row[4][kBM];               // partial squared norms of the tile's m rows (4 R phases)
  float sq_col[2][kBN];               // ... of its l columns (2 R phases)
  float inv_row[kBM], act_row[kBM];   // a_i and [||m_i|| > eps] (1 when not normalizing)
  float inv_col[kBN], act_col[kBN];   // b_c and [||l_c|| > eps]
};

// l_c's element offset for channel 0: c = j * HW + k -> j * stride_n + k * stride_k (-1 if c is out).
__device__ __forceinline__ int64_t column_base(const InfonceParams& p, int64_t c) {
  if (c >= p.n * p.hw) return -1;
  const int64_t j = c / p.hw;
  return j * p.l_stride_n + (c - j * p.hw) * p.l_stride_k;
}

// sm.s[row][col] = D[i0 + row, c0 + col] (0 outside), and sm.inv_row/act_row, inv_col/act_col the
// norms of the tile's vectors. Starts and ends with a barrier-complete state: the caller must have
// finished reading sm of the previous tile (it ends each tile with __syncthreads()); on return all
// of it is visible to every thread.
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
  // Norm layout: row tid / 4 over kk = 8 (tid % 4) .. +7, column tid % 64 over kk = 16 (tid / 64) .. +15.
  const int nrow = tid / 4, nrk = 8 * (tid % 4), ncol = tid % kBN, nck = 16 * (tid / kBN);
  float sq_r = 0.f, sq_c = 0.f;
  float acc[4][4] = {};
  MmaAcc<T> facc[2];
  if constexpr (kTensorCores) {
    nvcuda::wmma::fill_fragment(facc[0], 0.f);
    nvcuda::wmma::fill_fragment(facc[1], 0.f);
  }

  for (int64_t r0 = 0; r0 < p.r; r0 += kBK) {
    // m slice, kk fastest (m is normally contiguous in r): element e -> (row e / kBK, kk e % kBK).
#pragma unroll 4
    for (int e = tid; e < kBM * kBK; e += kThreads) {
      const int row = e / kBK, kk = e % kBK;
      const int64_t i = i0 + row, rr = r0 + kk;
      sm.a[row][kk] = (i < p.n && rr < p.r) ? M[i * p.m_stride_n + rr * p.m_stride_r] : zero;
    }
    // l slice: consecutive threads on the stride-1 dimension (r for channels-last, k otherwise).
#pragma unroll 4
    for (int e = tid; e < kBK * kBN; e += kThreads) {
      const int kk = r_fast ? e % kBK : e / kBN;
      const int col = r_fast ? e / kBK : e % kBN;
      const int64_t base = sm.colbase[col], rr = r0 + kk;
      sm.b[kk][col] = (base >= 0 && rr < p.r) ? L[base + rr * p.l_stride_r] : zero;
    }
    __syncthreads();
    if (p.normalize) {  // zeros outside add nothing
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const float v = to_float(sm.a[nrow][nrk + q]);
        sq_r += v * v;
      }
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const float v = to_float(sm.b[nck + q][ncol]);
        sq_c += v * v;
      }
    }
    if constexpr (kTensorCores) {
      using namespace nvcuda;
#pragma unroll
      for (int kk = 0; kk < kBK; kk += kMmaK<T>) {
        MmaFrag<wmma::matrix_a, T, wmma::row_major> fa;
        load_operand(fa, &sm.a[fr * 16][kk], kBK + ScoreSmem<T>::kPad);
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          MmaFrag<wmma::matrix_b, T, wmma::row_major> fb;
          load_operand(fb, &sm.b[kk][(fc0 + f) * 16], kBN + ScoreSmem<T>::kPad);
          wmma::mma_sync(facc[f], fa, fb, facc[f]);
        }
      }
    } else {
#pragma unroll 4
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
  sm.sq_row[tid % 4][nrow] = sq_r;
  sm.sq_col[tid / kBN][ncol] = sq_c;
  __syncthreads();
  // inv = 1 / max(||x||, eps), act = ||x|| > eps: the partials added in phase order.
  if (tid < kBN) {
    const float nrm = sqrtf(sm.sq_col[0][tid] + sm.sq_col[1][tid]);
    sm.inv_col[tid] = p.normalize ? 1.f / fmaxf(nrm, p.eps) : 1.f;
    sm.act_col[tid] = nrm > p.eps ? 1.f : 0.f;
  } else if (tid < kBN + kBM) {
    const int row = tid - kBN;
    const float nrm = sqrtf(((sm.sq_row[0][row] + sm.sq_row[1][row]) + sm.sq_row[2][row]) + sm.sq_row[3][row]);
    sm.inv_row[row] = p.normalize ? 1.f / fmaxf(nrm, p.eps) : 1.f;
    sm.act_row[row] = nrm > p.eps ? 1.f : 0.f;
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

// Forward. Grid (row blocks, splits); split s owns column tiles [s * tps, min((s + 1) * tps, tiles)).
// Thread layout of the reduction: row tid / 4, columns tid % 4 + 4 q (q < 16): the 4 threads of a
// row are consecutive lanes of one warp, merged by __shfl_xor 1 then 2.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(InfonceParams p, int64_t tiles, int64_t tps, float* pos, float* part_max, float* part_sum) {
  __shared__ ScoreSmem<T> sm;
  const int tid = threadIdx.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBM, split = blockIdx.y;
  const int64_t t_begin = split * tps, t_end = t_begin + tps < tiles ? t_begin + tps : tiles;
  const bool r_fast = p.l_stride_r < p.l_stride_k;
  const int row = tid / 4, sub = tid % 4;
  const int64_t i = i0 + row, ncols = p.n * p.hw;
  float mx = -INFINITY, sum = 0.f;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c0 = t * kBN;
    score_tile<T>(p, i0, c0, r_fast, sm);
    if (i < p.n) {
      const float a_i = sm.inv_row[row];
      for (int q = 0; q < kBN / 4; ++q) {
        const int col = sub + 4 * q;
        const int64_t c = c0 + col;
        if (c >= ncols) break;
        // S = scale * cos with cos = a_i b_c D, rounded exactly as the backward recomputes it.
        const float s = p.scale * (a_i * sm.inv_col[col] * sm.s[row][col]);
        const int64_t j = c / p.hw;
        if (j == i) {
          pos[i * p.hw + (c - j * p.hw)] = s;  // the only writer of pos[i, k]
        } else {
          lse_add(mx, sum, s);
        }
      }
    }
    __syncthreads();  // sm is rewritten by the next tile
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

// The shared memory of backward_kernel: both kinds of CTA use the same arrays.
template <typename T>
struct BackwardSmem {
  ScoreSmem<T> sm;
  alignas(32) float g[kBN][kGLd];  // the float32 operand chunk (l or m), then the product chunk
  float red[2][kBN];
  float inv_col[kBN], act_col[kBN];
};

// grad_m CTA: row block i0, column tiles [t_begin, t_end). u: its split's N x R partial, c_out: its
// split's N partial of C; split 0 also writes a_i, act_i to row_inv, row_act for the finish.
template <typename T>
__device__ void grad_m_cta(const InfonceParams& p, int64_t i0, int64_t t_begin, int64_t t_end, bool first_split,
                           const float* grad_pos, const float* grad_neg, const float* neg, float* u, float* c_out,
                           float* row_inv, float* row_act, BackwardSmem<T>& bs) {
  ScoreSmem<T>& sm = bs.sm;
  auto& g = bs.g;  // g[col][rr] = l_{c0 + col}[r0 + rr] in float32; then U chunk [row][rr]
  const T* L = static_cast<const T*>(p.l);
  const int tid = threadIdx.x;
  const bool r_fast = p.l_stride_r < p.l_stride_k;
  const int64_t ncols = p.n * p.hw;
  // dS layout (as the forward): row tid / 4, columns tid % 4 + 4 q.
  const int row = tid / 4, sub = tid % 4;
  const int64_t i = i0 + row;
  float cterm = 0.f;  // sum over this thread's columns of scale * dS * cos
  // Accumulation layout: rows 4 * ty + q, channels tx + 16 * q2 of the chunk.
  const int tx = tid % 16, ty = tid / 16;
  constexpr bool kTensorCores = !std::is_same<T, float>::value;
  const int warp = tid / 32;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t c0 = t * kBN;
    score_tile<T>(p, i0, c0, r_fast, sm);
    const float a_i = sm.inv_row[row];
    if (t == t_begin && first_split && sub == 0 && i < p.n) {
      row_inv[i] = a_i;
      row_act[i] = sm.act_row[row];
    }
    for (int q = 0; q < kBN / 4; ++q) {
      const int col = sub + 4 * q;
      const int64_t c = c0 + col;
      float w = 0.f;
      if (i < p.n && c < ncols) {
        const float b_c = sm.inv_col[col];
        const float cosv = a_i * b_c * sm.s[row][col];
        const float ds = score_grad(p, i, c, p.scale * cosv, grad_pos, grad_neg, neg);
        if (ds != 0.f) {  // 0 * inf (an infinite cos) must not become NaN
          cterm += p.scale * ds * cosv;
          w = p.scale * ds * a_i * b_c;
        }
      }
      sm.s[row][col] = w;  // each element is read and written by this thread only
    }
    __syncthreads();
    for (int64_t r0 = 0; r0 < p.r; r0 += kRC) {
#pragma unroll 4
      for (int e = tid; e < kBN * kRC; e += kThreads) {
        const int rr = r_fast ? e % kRC : e / kBN;
        const int col = r_fast ? e / kRC : e % kBN;
        const int64_t base = sm.colbase[col], r = r0 + rr;
        g[col][rr] = (base >= 0 && r < p.r) ? to_float(L[base + r * p.l_stride_r]) : 0.f;
      }
      __syncthreads();
      float acc[4][4] = {};
      if constexpr (kTensorCores) {
        // U chunk (32 rows x 64 channels) = W (32 x 64 columns) @ g (64 columns x 64 channels):
        // warp w owns rows 16 (w & 1) .. +15, channels 32 (w >> 1) .. +31 (2 fragments).
        using namespace nvcuda;
        const int fr = warp & 1, fc = (warp >> 1) * 32;
        TfAcc out[2];
        wmma::fill_fragment(out[0], 0.f);
        wmma::fill_fragment(out[1], 0.f);
#pragma unroll 1
        for (int k = 0; k < kBN; k += 8) {
          TfA_row hi, lo;
          wmma::load_matrix_sync(hi, &sm.s[fr * 16][k], kSLd);
          split_tf32(hi, lo);
#pragma unroll
          for (int f = 0; f < 2; ++f) {
            TfB b;
            wmma::load_matrix_sync(b, &g[k][fc + 16 * f], kGLd);
            round_tf32(b);
            wmma::mma_sync(out[f], hi, b, out[f]);
            wmma::mma_sync(out[f], lo, b, out[f]);
          }
        }
        __syncthreads();  // every warp has read g: the products go into its first 32 rows
        for (int f = 0; f < 2; ++f) wmma::store_matrix_sync(&g[fr * 16][fc + 16 * f], out[f], kGLd, wmma::mem_row_major);
        __syncthreads();
      } else {
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
      }
      for (int q = 0; q < 4; ++q) {
        const int64_t ii = i0 + 4 * ty + q;
        if (ii >= p.n) continue;
        for (int q2 = 0; q2 < 4; ++q2) {
          const int64_t r = r0 + tx + 16 * q2;
          if (r >= p.r) continue;
          float* dst = u + ii * p.r + r;  // this thread is the only writer of this element
          const float x = kTensorCores ? g[4 * ty + q][tx + 16 * q2] : acc[q][q2];
          *dst = (t == t_begin) ? x : *dst + x;
        }
      }
      __syncthreads();  // g is rewritten by the next chunk
    }
  }
  for (int off = 1; off < 4; off <<= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, cterm, off);
    cterm = (sub & off) == 0 ? cterm + o : o + cterm;  // same operand order on both lanes
  }
  if (sub == 0 && i < p.n) c_out[i] = cterm;
}

// grad_l CTA: column tile c0 .. c0 + 63, looping over every row block.
//   dS layout: column tid % 64, rows 16 * (tid / 64) + q (q < 16): the column term accumulates in
//   registers and the two row halves are added at the end.
//   Accumulation layout: columns tx, tx + 32 (tx = lane), channels warp + 4 q (q < 16) of the chunk:
//   consecutive lanes write consecutive k of v (coalesced for HW >= 32).
// v: (N, R, HW) float32 (grad_l's layout, grad_l itself when T is float).
template <typename T>
__device__ void grad_l_cta(const InfonceParams& p, int64_t c0, const float* grad_pos, const float* grad_neg,
                           const float* neg, float* v, T* grad_l, BackwardSmem<T>& bs) {
  ScoreSmem<T>& sm = bs.sm;
  auto& g = bs.g;  // g[row][rr] = m[i0 + row, r0 + rr] in float32 (32 rows); then V chunk [rr][col]
  const T* M = static_cast<const T*>(p.m);
  const T* L = static_cast<const T*>(p.l);
  const int tid = threadIdx.x;
  const int64_t ncols = p.n * p.hw;
  const bool r_fast = p.l_stride_r < p.l_stride_k;
  const int dcol = tid % kBN, dhalf = tid / kBN;
  const int64_t dc = c0 + dcol;
  float cterm = 0.f;
  const int lane = tid % 32, warp = tid / 32;
  constexpr bool kTensorCores = !std::is_same<T, float>::value;
  int64_t out_off[2];  // offset of (j, r = 0, k) in v for columns c0 + lane + 32 cc, -1 if out
  for (int cc = 0; cc < 2; ++cc) {
    const int64_t c = c0 + lane + 32 * cc;
    const int64_t j = c / p.hw;
    out_off[cc] = c < ncols ? j * p.r * p.hw + (c - j * p.hw) : -1;
  }
  for (int64_t i0 = 0; i0 < p.n; i0 += kBM) {
    score_tile<T>(p, i0, c0, r_fast, sm);
    const float b_c = sm.inv_col[dcol];
    if (i0 == 0 && dhalf == 0) {  // the columns' norms, for the normalization term at the end
      bs.inv_col[dcol] = b_c;
      bs.act_col[dcol] = sm.act_col[dcol];
    }
    for (int q = 0; q < kBM / 2; ++q) {
      const int row = dhalf * (kBM / 2) + q;
      const int64_t i = i0 + row;
      float w = 0.f;
      if (i < p.n && dc < ncols) {
        const float a_i = sm.inv_row[row];
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
#pragma unroll 4
      for (int e = tid; e < kBM * kRC; e += kThreads) {
        const int row = e / kRC, rr = e % kRC;
        const int64_t i = i0 + row, r = r0 + rr;
        g[row][rr] = (i < p.n && r < p.r) ? to_float(M[i * p.m_stride_n + r * p.m_stride_r]) : 0.f;
      }
      __syncthreads();
      float acc[2][16] = {};
      if constexpr (kTensorCores) {
        // V chunk (64 columns x 64 channels) = W^T (64 columns x 32 rows) @ g (32 rows x 64
        // channels): warp w owns columns 16 w .. +15, all 64 channels (4 fragments); W^T is sm.s
        // read column-major.
        using namespace nvcuda;
        TfAcc out[4];
#pragma unroll
        for (int f = 0; f < 4; ++f) wmma::fill_fragment(out[f], 0.f);
#pragma unroll 1
        for (int k = 0; k < kBM; k += 8) {
          TfA_col hi, lo;
          wmma::load_matrix_sync(hi, &sm.s[k][16 * warp], kSLd);
          split_tf32(hi, lo);
#pragma unroll
          for (int f = 0; f < 4; ++f) {
            TfB b;
            wmma::load_matrix_sync(b, &g[k][16 * f], kGLd);
            round_tf32(b);
            wmma::mma_sync(out[f], hi, b, out[f]);
            wmma::mma_sync(out[f], lo, b, out[f]);
          }
        }
        __syncthreads();  // every warp has read g: the products go into it, transposed ([rr][col])
        for (int f = 0; f < 4; ++f)
          wmma::store_matrix_sync(&g[16 * f][16 * warp], out[f], kGLd, wmma::mem_col_major);
        __syncthreads();
      } else {
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
      }
      for (int cc = 0; cc < 2; ++cc) {
        if (out_off[cc] < 0) continue;
        for (int q = 0; q < 16; ++q) {
          const int64_t r = r0 + warp + 4 * q;
          if (r >= p.r) continue;
          float* dst = v + out_off[cc] + r * p.hw;  // this thread is the only writer
          // g[rr][col]: consecutive lanes read consecutive words (no bank conflicts).
          const float x = kTensorCores ? g[warp + 4 * q][lane + 32 * cc] : acc[cc][q];
          *dst = (i0 == 0) ? x : *dst + x;
        }
      }
      __syncthreads();  // g is rewritten by the next chunk
    }
  }
  bs.red[dhalf][dcol] = cterm;
  __syncthreads();
  // grad_l[j, r, k] = v[j, r, k] - [act_c] b_c^2 C_c l[j, r, k]: each thread finishes the elements
  // it accumulated (v may alias grad_l: read, then written, by the same thread).
  for (int cc = 0; cc < 2; ++cc) {
    if (out_off[cc] < 0) continue;
    const int col = lane + 32 * cc;
    const int64_t c = c0 + col, j = c / p.hw, k = c - j * p.hw;
    const float b = bs.inv_col[col];
    const float coef = (p.normalize && bs.act_col[col] != 0.f) ? b * b * (bs.red[0][col] + bs.red[1][col]) : 0.f;
    for (int64_t r = warp; r < p.r; r += 4) {
      float x = v[out_off[cc] + r * p.hw];
      if (coef != 0.f) x -= coef * to_float(L[j * p.l_stride_n + r * p.l_stride_r + k * p.l_stride_k]);
      grad_l[out_off[cc] + r * p.hw] = from_float<T>(x);
    }
  }
}

// Grid: row_blocks * splits grad_m CTAs (block b: row block b % row_blocks, split b / row_blocks),
// then `tiles` grad_l CTAs.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(InfonceParams p, int64_t tiles, int64_t tps, int64_t row_blocks, int64_t splits,
                    const float* grad_pos, const float* grad_neg, const float* neg, float* u_part, float* c_part,
                    float* row_inv, float* row_act, float* v, T* grad_l) {
  __shared__ BackwardSmem<T> bs;
  const int64_t b = blockIdx.x, m_ctas = row_blocks * splits;
  if (b < m_ctas) {
    const int64_t rb = b % row_blocks, split = b / row_blocks;
    const int64_t t_begin = split * tps, t_end = t_begin + tps < tiles ? t_begin + tps : tiles;
    grad_m_cta<T>(p, rb * kBM, t_begin, t_end, split == 0, grad_pos, grad_neg, neg, u_part + split * p.n * p.r,
                  c_part + split * p.n, row_inv, row_act, bs);
  } else {
    grad_l_cta<T>(p, (b - m_ctas) * kBN, grad_pos, grad_neg, neg, v, grad_l, bs);
  }
}

// grad_m[i, r] (contiguous, T) = sum_s u_part[s, i, r] - [act_i] a_i^2 (sum_s c_part[s, i]) m[i, r].
template <typename T>
__global__ void grad_m_finish_kernel(InfonceParams p, int64_t splits, const float* u_part, const float* c_part,
                                     const float* row_inv, const float* row_act, T* grad_m) {
  const T* M = static_cast<const T*>(p.m);
  const int64_t total = p.n * p.r;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / p.r, r = e - i * p.r;
    float u = 0.f;
    for (int64_t s = 0; s < splits; ++s) u += u_part[(s * p.n + i) * p.r + r];
    if (p.normalize && splits > 0 && row_act[i] != 0.f) {  // no split (HW = 0): no score, no term
      float ci = 0.f;
      for (int64_t s = 0; s < splits; ++s) ci += c_part[s * p.n + i];
      const float a = row_inv[i];
      u -= a * a * ci * to_float(M[i * p.m_stride_n + r * p.m_stride_r]);
    }
    grad_m[e] = from_float<T>(u);
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
  const int64_t target = p.target_ctas > 0 ? p.target_ctas : kTargetCtas;
  int64_t want = ceil_div(target, q.row_blocks);
  want = want < q.tiles ? want : q.tiles;
  q.tps = ceil_div(q.tiles, want);
  q.splits = ceil_div(q.tiles, q.tps);  // no empty split: every split writes its partials
  return q;
}

unsigned grid_1d(int64_t count, int threads) {
  const int64_t b = ceil_div(count, threads);
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);  // grid-stride loops cover the rest
}

bool valid(const InfonceParams& p) {
  return p.n >= 0 && p.r >= 0 && p.hw >= 0 && p.l_stride_n >= 0 && p.l_stride_r >= 0 && p.l_stride_k >= 0 &&
         p.m_stride_n >= 0 && p.m_stride_r >= 0 && p.target_ctas >= 0;
}

}  // namespace

// Forward workspace: part_max and part_sum (splits N each).
int64_t infonce_lse_forward_workspace(const InfonceParams& p) {
  const Plan q = make_plan(p);
  return 2 * q.splits * p.n;
}

// Backward workspace: row_inv, row_act (N each), u_part (splits N R), c_part (splits N), v (N R HW
// unless grad_l is float32 and serves as v).
int64_t infonce_lse_backward_workspace(const InfonceParams& p) {
  const Plan q = make_plan(p);
  const int64_t v = p.dtype == DType::kFloat32 ? 0 : p.n * p.r * p.hw;
  return 2 * p.n + q.splits * p.n * p.r + q.splits * p.n + v;
}

cudaError_t infonce_lse_forward(const InfonceParams& p, float* pos, float* neg, float* workspace,
                                cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  const Plan q = make_plan(p);
  if (q.splits > 65535 || q.row_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  float* part_max = workspace;
  float* part_sum = part_max + q.splits * p.n;
  if (q.splits > 0) {
    const cudaError_t err = dispatch(p.dtype, p.allow_tf32 != 0, [&](auto tag) {
      using T = decltype(tag);
      const dim3 grid(static_cast<unsigned>(q.row_blocks), static_cast<unsigned>(q.splits));
      FASTGAN_LAUNCH(forward_kernel<T>, grid, kThreads, 0, stream)(p, q.tiles, q.tps, pos, part_max, part_sum);
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
  const int64_t ctas = q.row_blocks * q.splits + q.tiles;
  if (ctas > 0x7fffffff) return cudaErrorInvalidConfiguration;
  float* row_inv = workspace;
  float* row_act = row_inv + p.n;
  float* u_part = row_act + p.n;
  float* c_part = u_part + q.splits * p.n * p.r;
  float* v = p.dtype == DType::kFloat32 ? static_cast<float*>(grad_l) : c_part + q.splits * p.n;
  return dispatch(p.dtype, p.allow_tf32 != 0, [&](auto tag) {
    using T = decltype(tag);
    if (ctas > 0) {  // HW = 0: no score, grad_l is empty
      FASTGAN_LAUNCH(backward_kernel<T>, static_cast<unsigned>(ctas), kThreads, 0, stream)(
          p, q.tiles, q.tps, q.row_blocks, q.splits, grad_pos, grad_neg, neg, u_part, c_part, row_inv, row_act, v,
          static_cast<T*>(grad_l));
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
    FASTGAN_LAUNCH(grad_m_finish_kernel<T>, grid_1d(p.n * p.r, 256), 256, 0, stream)(
        p, q.splits, u_part, c_part, row_inv, row_act, static_cast<T*>(grad_m));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fastgan
