// CUDA kernels of the fused spectral-norm ops (docs/semantics.md section 7, contract: fastgan/reference/spectral_norm.py).
//
// Multi-tensor power iteration: every layer of a model in a constant number of launches. The glue
// fills per-layer descriptors (SnLayer: W's pointer, shape, strides and dtype, u / v pointers,
// strides and dtypes); the launcher plans them and passes them BY VALUE as one kernel argument
// (SnBatch, see spectral_norm.h: no descriptor copy per call, CUDA-graph safe). Work is split into tiles of kTile
// outputs: a layer has ceil(cols / kTile) column tiles (outputs of W^T u) and ceil(rows / kTile) row
// tiles (outputs of W v), at least one of each; the descriptors hold the prefix sums of tiles per
// layer, and a block finds its (layer, tile) from its flattened tile index by binary search. So many
// small layers share one launch, and a big layer spreads over many blocks.
// Launches: one load of u, v into float32 working vectors, then per step and half step
//   matvec: block (layer, tile) computes its kTile outputs of W^T u (or W v), each a full dot product
//           over the layer's other dimension (float32 accumulation), stores them raw into the float32
//           working vector, and writes the tile's sum of squares to partials[tile] (fixed-order warp
//           reduction);
//   norm:   block (layer, tile) reduces the layer's partials in a fixed order (the same in every block
//           of the layer, so every block gets the same bits), divides its tile by max(||x||, eps) and
//           writes the working vector and the caller's u or v (in its dtype, in place); the layer's
//           first block writes sigma = ||x||^2 / max(||x||, eps) on the last half step.
// That is 4 launches per step whatever the number of layers, no atomics: deterministic, and a layer's
// results do not depend on the other layers in the call (multi-tensor == per-layer, bitwise).
// Matvec layouts: lanes run along the reduction dimension (warp-shuffle reduction, 4 outputs per warp)
// when its stride is 1 (W v of a row-major W), else along the outputs with the 8 warps splitting the
// reduction (W^T u of a row-major W); both coalesce for row-major and column-major W, any strides work.
// Floor per step: 2 |W| elements read, 4 |W| flops.
//
// apply (multi-tensor, one launch for all layers of one dtype): block (layer, tile of kApplyTile
// elements) writes out = W / sigma (any input strides, contiguous output).
// apply_backward (multi-tensor, two launches): <G, W> as per-layer block partial sums (a fixed number
// per shape, fixed order), then an elementwise kernel whose every block of a layer reduces that
// layer's partials in the same fixed order and writes G / sigma - (<G, W> / sigma^2) u v^T. A layer's
// bits do not depend on the other layers of the call. One layer = a batch of one (the per-layer ops).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "spectral_norm.h"
#include "block_sum.h"
#include "convert.h"
#include "launch.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int kTile = 32;                       // outputs per tile (one warp's lanes)
constexpr int kWarps = 8;                       // warps per matvec / norm block
constexpr int kThreads = kTile * kWarps;        // 256
constexpr int kPerWarp = kTile / kWarps;        // outputs per warp in the lane-over-reduction layout
constexpr int64_t kMaxGrid = int64_t{1} << 20;  // grid-stride loops beyond this
constexpr int kMaxPartials = 1024;              // blocks of the <G, W> reduction
constexpr int64_t kApplyTile = 4 * kThreads;    // elements per block of the apply kernels

// Element idx of a vector of runtime dtype.
__device__ __forceinline__ float load(const void* p, DType t, int64_t idx) {
  switch (t) {
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(p)[idx]);
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[idx]);
    default:
      return static_cast<const float*>(p)[idx];
  }
}

__device__ __forceinline__ void store(void* p, DType t, int64_t idx, float x) {
  switch (t) {
    case DType::kFloat16:
      static_cast<__half*>(p)[idx] = __float2half(x);
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[idx] = __float2bfloat16(x);
      break;
    default:
      static_cast<float*>(p)[idx] = x;
  }
}

// Sum over the warp's lanes in a fixed butterfly order (every lane gets the same bits).
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__host__ __device__ __forceinline__ int64_t tiles_of(int64_t n) { return n <= 0 ? 1 : (n + kTile - 1) / kTile; }

// One half step of a layer seen as out = M x: kCols is W^T u (outputs are W's columns), else W v.
struct PassView {
  const void* m;        // M[o, k] at m[o * so + k * sk]
  int64_t n_out, n_red, so, sk;
  DType m_dtype;
  const float* x;       // float32 working input (n_red)
  float* y;             // float32 working output (n_out)
  void* user;           // the caller's output vector (v for kCols, u otherwise)
  int64_t user_stride;
  DType user_dtype;
  int64_t first_tile;
};

template <bool kCols>
__device__ __forceinline__ PassView view(const SnLayer& L, float* ws) {
  PassView p;
  p.m = L.w;
  p.m_dtype = L.w_dtype;
  if (kCols) {
    p.n_out = L.cols;
    p.n_red = L.rows;
    p.so = L.stride_c;
    p.sk = L.stride_r;
    p.x = ws + L.off_u;
    p.y = ws + L.off_v;
    p.user = L.v;
    p.user_stride = L.stride_v;
    p.user_dtype = L.v_dtype;
    p.first_tile = L.tile_c;
  } else {
    p.n_out = L.rows;
    p.n_red = L.cols;
    p.so = L.stride_r;
    p.sk = L.stride_c;
    p.x = ws + L.off_v;
    p.y = ws + L.off_u;
    p.user = L.u;
    p.user_stride = L.stride_u;
    p.user_dtype = L.u_dtype;
    p.first_tile = L.tile_r;
  }
  return p;
}

// The layer owning flattened tile g: the last layer whose first tile is <= g (every layer has >= 1 tile).
template <bool kCols>
__device__ __forceinline__ int64_t find_layer(const SnLayer* layers, int64_t num_layers, int64_t g) {
  int64_t lo = 0, hi = num_layers - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    const int64_t start = kCols ? layers[mid].tile_c : layers[mid].tile_r;
    if (start <= g) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// ys[t] = sum_k M[o0 + t, k] x[k] for t < kTile (0 past n_out), all threads; ends with a barrier.
template <typename T>
__device__ void tile_matvec(const PassView& p, int64_t o0, float* ys, float (*red)[kTile + 1]) {
  const T* m = static_cast<const T*>(p.m);
  const int lane = static_cast<int>(threadIdx.x) % kTile, warp = static_cast<int>(threadIdx.x) / kTile;
  const bool lanes_over_k = p.sk == 1 || (p.so != 1 && p.sk <= p.so);
  if (lanes_over_k) {
    // Warp `warp` owns outputs warp + kWarps * q; lanes stride over k (coalesced when sk == 1).
    float acc[kPerWarp];
    int64_t base[kPerWarp];
    bool ok[kPerWarp];
#pragma unroll
    for (int q = 0; q < kPerWarp; ++q) {
      const int64_t o = o0 + warp + kWarps * q;
      ok[q] = o < p.n_out;
      base[q] = ok[q] ? o * p.so : 0;
      acc[q] = 0.f;
    }
    for (int64_t k = lane; k < p.n_red; k += kTile) {
      const float xk = p.x[k];
      const T* col = m + k * p.sk;
#pragma unroll
      for (int q = 0; q < kPerWarp; ++q) {
        if (ok[q]) acc[q] += to_float(col[base[q]]) * xk;
      }
    }
#pragma unroll
    for (int q = 0; q < kPerWarp; ++q) {
      const float s = warp_sum(acc[q]);
      if (lane == 0) ys[warp + kWarps * q] = s;
    }
  } else {
    // Lane = output (coalesced when so == 1); the warps split k, then a fixed-order sum over warps.
    const int64_t o = o0 + lane;
    float acc = 0.f;
    if (o < p.n_out) {
      const T* row = m + o * p.so;
      for (int64_t k = warp; k < p.n_red; k += kWarps) acc += to_float(row[k * p.sk]) * p.x[k];
    }
    red[warp][lane] = acc;
    __syncthreads();
    if (warp == 0) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[w][lane];
      ys[lane] = s;
    }
  }
  __syncthreads();
}

// One matvec half step for every layer. dot_mode == 0: y = M x stored raw, partials[g] = the tile's
// sum of y^2. dot_mode == 1 (row pass only, n == 0): nothing stored, partials[g] = the tile's sum of
// u_o y_o with u the working u (= p.y, which this mode leaves untouched).
template <bool kCols>
__global__ void __launch_bounds__(kThreads)
    matvec_kernel(const __grid_constant__ SnLayerBatch b, float* ws, int dot_mode) {
  __shared__ float ys[kTile];
  __shared__ float red[kWarps][kTile + 1];
  const SnLayer* layers = b.layer;
  const int64_t num_layers = b.plan.num_layers, total = kCols ? b.plan.col_tiles : b.plan.row_tiles;
  float* partials = ws + b.plan.off_partials;
  for (int64_t g = blockIdx.x; g < total; g += gridDim.x) {
    const SnLayer& L = layers[find_layer<kCols>(layers, num_layers, g)];
    const PassView p = view<kCols>(L, ws);
    const int64_t o0 = (g - p.first_tile) * kTile;
    switch (p.m_dtype) {
      case DType::kFloat16:
        tile_matvec<__half>(p, o0, ys, red);
        break;
      case DType::kBFloat16:
        tile_matvec<__nv_bfloat16>(p, o0, ys, red);
        break;
      default:
        tile_matvec<float>(p, o0, ys, red);
    }
    if (threadIdx.x < kTile) {
      const int64_t o = o0 + threadIdx.x;
      float val = 0.f;
      if (o < p.n_out) {
        const float y = ys[threadIdx.x];
        if (dot_mode) {
          val = p.y[o] * y;
        } else {
          p.y[o] = y;
          val = y * y;
        }
      }
      val = warp_sum(val);
      if (threadIdx.x == 0) partials[g] = val;
    }
    __syncthreads();  // ys and red are reused by the next tile
  }
}

enum : int { kNormalize = 1, kSigmaFromNorm = 2, kSigmaFromSum = 4 };

// One normalization for every layer: s = the layer's partials summed in a fixed order;
// kNormalize: y /= max(sqrt(s), eps) into the working vector and the caller's u or v;
// kSigmaFromNorm: sigma = s / max(sqrt(s), eps); kSigmaFromSum: sigma = s (the n == 0 dot product).
template <bool kCols>
__global__ void __launch_bounds__(kThreads)
    norm_kernel(const __grid_constant__ SnLayerBatch b, float* ws, float eps, int flags) {
  __shared__ float red[kThreads];
  const SnLayer* layers = b.layer;
  const int64_t num_layers = b.plan.num_layers, total = kCols ? b.plan.col_tiles : b.plan.row_tiles;
  const float* partials = ws + b.plan.off_partials;
  for (int64_t g = blockIdx.x; g < total; g += gridDim.x) {
    const SnLayer& L = layers[find_layer<kCols>(layers, num_layers, g)];
    const PassView p = view<kCols>(L, ws);
    const int64_t count = tiles_of(p.n_out);
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < count; i += kThreads) s += partials[p.first_tile + i];
    s = block_sum<kThreads>(s, red);
    const float nrm = sqrtf(s);
    const float denom = nrm < eps ? eps : nrm;  // clamp_min as F.normalize: a NaN norm stays NaN (fmaxf drops it)
    if ((flags & kNormalize) && threadIdx.x < kTile) {
      const int64_t o = (g - p.first_tile) * kTile + threadIdx.x;
      if (o < p.n_out) {
        const float x = p.y[o] / denom;
        p.y[o] = x;
        store(p.user, p.user_dtype, o * p.user_stride, x);
      }
    }
    if (g == p.first_tile && threadIdx.x == 0) {
      if (flags & kSigmaFromNorm) {
        *L.sigma = s / denom;
      } else if (flags & kSigmaFromSum) {
        *L.sigma = s;
      }
    }
  }
}

// Working float32 copies of v (column tiles 0 .. col_tiles) and u (then the row tiles); kTile threads.
__global__ void __launch_bounds__(kTile)
    load_kernel(const __grid_constant__ SnLayerBatch b, float* ws) {
  const SnLayer* layers = b.layer;
  const int64_t num_layers = b.plan.num_layers, col_tiles = b.plan.col_tiles, row_tiles = b.plan.row_tiles;
  for (int64_t g = blockIdx.x; g < col_tiles + row_tiles; g += gridDim.x) {
    if (g < col_tiles) {
      const SnLayer& L = layers[find_layer<true>(layers, num_layers, g)];
      const int64_t o = (g - L.tile_c) * kTile + threadIdx.x;
      if (o < L.cols) ws[L.off_v + o] = load(L.v, L.v_dtype, o * L.stride_v);
    } else {
      const int64_t gr = g - col_tiles;
      const SnLayer& L = layers[find_layer<false>(layers, num_layers, gr)];
      const int64_t o = (gr - L.tile_r) * kTile + threadIdx.x;
      if (o < L.rows) ws[L.off_u + o] = load(L.u, L.u_dtype, o * L.stride_u);
    }
  }
}

// (i, j) of flattened element e of a rows x cols matrix; 32-bit division when everything fits.
__device__ __forceinline__ void coords(int64_t e, int64_t cols, bool small, int64_t& i, int64_t& j) {
  if (small) {
    const uint32_t ii = static_cast<uint32_t>(e) / static_cast<uint32_t>(cols);
    i = ii;
    j = static_cast<int64_t>(static_cast<uint32_t>(e) - ii * static_cast<uint32_t>(cols));
  } else {
    i = e / cols;
    j = e - i * cols;
  }
}

__device__ __forceinline__ bool is_contiguous(const SnMatrix& a) { return a.stride_c == 1 && a.stride_r == a.cols; }

// The layer owning flattened item g (an element tile, or a <G, W> partial with kParts): the last layer
// whose first item is <= g (every layer has >= 1 of each).
template <bool kParts>
__device__ __forceinline__ const SnApplyLayer& find_apply_layer(const SnApplyBatch& b, int64_t g) {
  int64_t lo = 0, hi = b.plan.num_layers - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if ((kParts ? b.layer[mid].first_part : b.layer[mid].first_tile) <= g) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return b.layer[lo];
}

// Element index of W's element e (row-major order) for W's strides.
__device__ __forceinline__ int64_t strided(const SnMatrix& a, int64_t e, bool small) {
  if (is_contiguous(a)) return e;
  int64_t i, j;
  coords(e, a.cols, small, i, j);
  return i * a.stride_r + j * a.stride_c;
}

// out_i = W_i / sigma_i: block = (layer, tile of kApplyTile elements), grid-stride over the tiles.
template <typename T>
__global__ void __launch_bounds__(kThreads) apply_kernel(const __grid_constant__ SnApplyBatch b) {
  for (int64_t t = blockIdx.x; t < b.plan.tiles; t += gridDim.x) {
    const SnApplyLayer& L = find_apply_layer<false>(b, t);
    const int64_t numel = L.w.rows * L.w.cols;
    const bool small = numel <= int64_t{0xffffffff};
    const float s = *L.sigma;
    const T* wp = static_cast<const T*>(L.w.p);
    T* out = static_cast<T*>(L.out);
    const int64_t e0 = (t - L.first_tile) * kApplyTile;
    for (int64_t e = e0 + threadIdx.x; e < numel && e < e0 + kApplyTile; e += kThreads) {
      out[e] = from_float<T>(to_float(wp[strided(L.w, e, small)]) / s);
    }
  }
}

// partials[first_part + p] = block p's share of <G, W> of its layer: elements p * kThreads + t +
// k * parts * kThreads (fixed for a shape, so the sum's order is that of the layer alone), fixed tree order.
template <typename T>
__global__ void __launch_bounds__(kThreads) dot_partials_kernel(const __grid_constant__ SnApplyBatch b, float* partials) {
  __shared__ float red[kThreads];
  for (int64_t q = blockIdx.x; q < b.plan.parts; q += gridDim.x) {
    const SnApplyLayer& L = find_apply_layer<true>(b, q);
    const int64_t numel = L.w.rows * L.w.cols;
    const bool small = numel <= int64_t{0xffffffff};
    const T* gp = static_cast<const T*>(L.g.p);
    const T* wp = static_cast<const T*>(L.w.p);
    const int64_t step = L.parts * kThreads;
    float acc = 0.f;
    for (int64_t e = (q - L.first_part) * kThreads + threadIdx.x; e < numel; e += step) {
      acc += to_float(gp[strided(L.g, e, small)]) * to_float(wp[strided(L.w, e, small)]);
    }
    acc = block_sum<kThreads>(acc, red);
    if (threadIdx.x == 0) partials[q] = acc;
  }
}

// out = G / sigma - (<G, W> / sigma^2) u v^T; every block of a layer sums its partials in the same order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    apply_backward_kernel(const __grid_constant__ SnApplyBatch b, const float* partials) {
  __shared__ float red[kThreads];
  for (int64_t t = blockIdx.x; t < b.plan.tiles; t += gridDim.x) {
    const SnApplyLayer& L = find_apply_layer<false>(b, t);
    float d = 0.f;
    for (int64_t i = threadIdx.x; i < L.parts; i += kThreads) d += partials[L.first_part + i];
    d = block_sum<kThreads>(d, red);
    const float s = *L.sigma;
    const float c = d / (s * s);
    const int64_t numel = L.w.rows * L.w.cols;
    const bool small = numel <= int64_t{0xffffffff};
    const T* gp = static_cast<const T*>(L.g.p);
    T* out = static_cast<T*>(L.out);
    const int64_t e0 = (t - L.first_tile) * kApplyTile;
    for (int64_t e = e0 + threadIdx.x; e < numel && e < e0 + kApplyTile; e += kThreads) {
      int64_t i, j;
      coords(e, L.w.cols, small, i, j);
      const int64_t ig = is_contiguous(L.g) ? e : i * L.g.stride_r + j * L.g.stride_c;
      const float cu = c * load(L.u.p, L.u.dtype, i * L.u.stride);
      out[e] = from_float<T>(to_float(gp[ig]) / s - cu * load(L.v.p, L.v.dtype, j * L.v.stride));
    }
  }
}

unsigned grid_of(int64_t work_items) {
  const int64_t g = work_items < 1 ? 1 : (work_items < kMaxGrid ? work_items : kMaxGrid);
  return static_cast<unsigned>(g);
}

// Blocks of the <G, W> reduction: a function of the shape only (never of the device), so the
// reduction order, hence the result, is the same on every GPU.
int partial_blocks(int64_t numel) {
  const int64_t b = (numel + kThreads * 8 - 1) / (kThreads * 8);
  return static_cast<int>(b < 1 ? 1 : (b > kMaxPartials ? kMaxPartials : b));
}

bool valid_dtype(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }


// Plans one batch (layers[0 .. num_layers), at most a batch's capacity) in place; returns its plan.
SnPlan plan_batch(SnLayer* layers, int64_t num_layers) {
  SnPlan plan{};
  plan.num_layers = num_layers;
  int64_t off = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    SnLayer& L = layers[l];
    L.off_u = off;
    off += L.rows;
    L.off_v = off;
    off += L.cols;
    L.tile_c = plan.col_tiles;
    plan.col_tiles += tiles_of(L.cols);
    L.tile_r = plan.row_tiles;
    plan.row_tiles += tiles_of(L.rows);
  }
  plan.off_partials = off;
  plan.workspace = off + (plan.col_tiles > plan.row_tiles ? plan.col_tiles : plan.row_tiles);
  return plan;
}

// Calls fn(batch) for each batch of layers[0 .. num_layers) in order (the layers copied in by value).
template <typename Batch, typename Layer, typename Fn>
cudaError_t for_each_batch(Layer* layers, int64_t num_layers, Fn fn) {
  for (int64_t first = 0; first < num_layers; first += Batch::kCapacity) {
    Batch b{};
    const int64_t count = num_layers - first < Batch::kCapacity ? num_layers - first : Batch::kCapacity;
    for (int64_t l = 0; l < count; ++l) b.layer[l] = layers[first + l];
    b.plan.num_layers = count;
    const cudaError_t err = fn(b);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t spectral_norm_power_iteration_workspace(SnLayer* layers, int64_t num_layers) {
  int64_t ws = 0;
  for (int64_t first = 0; first < num_layers; first += SnLayerBatch::kCapacity) {
    const int64_t count = num_layers - first < SnLayerBatch::kCapacity ? num_layers - first : SnLayerBatch::kCapacity;
    const int64_t w = plan_batch(layers + first, count).workspace;
    ws = w > ws ? w : ws;
  }
  return ws;
}

cudaError_t spectral_norm_power_iteration(SnLayer* layers, int64_t num_layers, float* workspace,
                                          int64_t n_power_iterations, float eps, bool hook_order,
                                          cudaStream_t stream) {
  if (num_layers == 0) return cudaSuccess;
  if (n_power_iterations < 0 || layers == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
  return for_each_batch<SnLayerBatch>(layers, num_layers, [&](SnLayerBatch& b) {
    b.plan = plan_batch(b.layer, b.plan.num_layers);
    const SnPlan& plan = b.plan;
    FASTGAN_LAUNCH(load_kernel, grid_of(plan.col_tiles + plan.row_tiles), kTile, 0, stream)(b, workspace);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    // v = nrm(W^T u) (the column pass) or u = nrm(W v) (the row pass), with `flags` for the norm.
    auto cols_pass = [&](int flags) {
      const unsigned grid = grid_of(plan.col_tiles);
      FASTGAN_LAUNCH(matvec_kernel<true>, grid, kThreads, 0, stream)(b, workspace, 0);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
      FASTGAN_LAUNCH(norm_kernel<true>, grid, kThreads, 0, stream)(b, workspace, eps, flags);
      return cudaGetLastError();
    };
    auto rows_pass = [&](int flags, int dot_mode) {
      const unsigned grid = grid_of(plan.row_tiles);
      FASTGAN_LAUNCH(matvec_kernel<false>, grid, kThreads, 0, stream)(b, workspace, dot_mode);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
      FASTGAN_LAUNCH(norm_kernel<false>, grid, kThreads, 0, stream)(b, workspace, eps, flags);
      return cudaGetLastError();
    };
    if (n_power_iterations == 0) return rows_pass(kSigmaFromSum, 1);  // sigma = <u, W v>, one pass
    for (int64_t k = 0; k < n_power_iterations; ++k) {
      const int last = k == n_power_iterations - 1 ? kSigmaFromNorm : 0;
      if (hook_order) {
        err = cols_pass(kNormalize);
        if (err == cudaSuccess) err = rows_pass(kNormalize | last, 0);
      } else {
        err = rows_pass(kNormalize, 0);
        if (err == cudaSuccess) err = cols_pass(kNormalize | last);
      }
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

namespace {

// Plans one apply batch: element tiles and (backward) <G, W> partials per layer. Returns false on a
// bad layer (shape, dtype, or a dtype other than the batch's first W's).
bool plan_apply(SnApplyBatch& b, DType dtype, bool backward) {
  b.plan.tiles = 0;
  b.plan.parts = 0;
  for (int64_t l = 0; l < b.plan.num_layers; ++l) {
    SnApplyLayer& L = b.layer[l];
    if (L.w.rows < 0 || L.w.cols < 0 || L.w.dtype != dtype) return false;
    if (backward && (L.g.rows != L.w.rows || L.g.cols != L.w.cols || L.g.dtype != dtype || L.u.size != L.w.rows ||
                     L.v.size != L.w.cols || !valid_dtype(L.u.dtype) || !valid_dtype(L.v.dtype))) {
      return false;
    }
    const int64_t numel = L.w.rows * L.w.cols;
    L.first_tile = b.plan.tiles;
    b.plan.tiles += numel <= 0 ? 1 : (numel + kApplyTile - 1) / kApplyTile;
    L.parts = partial_blocks(numel);
    L.first_part = b.plan.parts;
    b.plan.parts += L.parts;
  }
  return true;
}

}  // namespace

cudaError_t spectral_norm_apply(SnApplyLayer* layers, int64_t num_layers, cudaStream_t stream) {
  if (num_layers == 0) return cudaSuccess;
  if (layers == nullptr || !valid_dtype(layers[0].w.dtype)) return cudaErrorInvalidValue;
  const DType dtype = layers[0].w.dtype;
  return for_each_batch<SnApplyBatch>(layers, num_layers, [&](SnApplyBatch& b) {
    if (!plan_apply(b, dtype, false)) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
      using T = decltype(tag);
      FASTGAN_LAUNCH(apply_kernel<T>, grid_of(b.plan.tiles), kThreads, 0, stream)(b);
      return cudaGetLastError();
    });
  });
}

int64_t spectral_norm_apply_backward_workspace(const SnApplyLayer* layers, int64_t num_layers) {
  int64_t ws = 0;  // the largest batch's partials (batches run one after another on the stream)
  for (int64_t first = 0; first < num_layers; first += SnApplyBatch::kCapacity) {
    int64_t parts = 0;
    for (int64_t l = first; l < num_layers && l < first + SnApplyBatch::kCapacity; ++l) {
      const SnMatrix& w = layers[l].w;
      parts += partial_blocks(w.rows < 0 || w.cols < 0 ? 0 : w.rows * w.cols);
    }
    ws = parts > ws ? parts : ws;
  }
  return ws;
}

cudaError_t spectral_norm_apply_backward(SnApplyLayer* layers, int64_t num_layers, float* workspace,
                                         cudaStream_t stream) {
  if (num_layers == 0) return cudaSuccess;
  if (layers == nullptr || workspace == nullptr || !valid_dtype(layers[0].w.dtype)) return cudaErrorInvalidValue;
  const DType dtype = layers[0].w.dtype;
  return for_each_batch<SnApplyBatch>(layers, num_layers, [&](SnApplyBatch& b) {
    if (!plan_apply(b, dtype, true)) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
      using T = decltype(tag);
      FASTGAN_LAUNCH(dot_partials_kernel<T>, grid_of(b.plan.parts), kThreads, 0, stream)(b, workspace);
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      FASTGAN_LAUNCH(apply_backward_kernel<T>, grid_of(b.plan.tiles), kThreads, 0, stream)(b, workspace);
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace fastgan
