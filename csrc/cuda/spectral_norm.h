// Launchers of the CUDA kernels of the fused spectral-norm ops (docs/semantics.md section 7, contract:
// fastgan/reference/spectral_norm.py). Plain types only: no torch headers, so CI compile-checks the
// .cu file with nvcc alone (.ci/nvcc_check.sh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace fastgan {
namespace cuda {

// One layer of the multi-tensor power iteration. The caller fills the first block; the planner
// (spectral_norm_power_iteration_plan) fills the second. The launcher reads an array of these in
// device memory.
struct SnLayer {
  const void* w;  // rows x cols, element (i, j) at w[i * stride_r + j * stride_c] (elements, >= 0)
  void* u;        // rows entries, element i at u[i * stride_u]; dtype u_dtype; updated in place
  void* v;        // cols entries, element j at v[j * stride_v]; dtype v_dtype; updated in place
  float* sigma;   // one float32, written by the launcher
  int64_t rows, cols, stride_r, stride_c, stride_u, stride_v;
  DType w_dtype, u_dtype, v_dtype;
  // Filled by the planner:
  int64_t off_u, off_v;    // float32 working copies of u and v in the workspace
  int64_t tile_c, tile_r;  // first flattened tile of this layer over column tiles (W^T u) and row tiles (W v)
};

struct SnPlan {
  int64_t num_layers;
  int64_t col_tiles, row_tiles;  // tiles of all layers together (every layer has at least one of each)
  int64_t off_partials;          // per-tile partial sums in the workspace (max(col_tiles, row_tiles) floats)
  int64_t workspace;             // float32 workspace size in floats (no zeroing needed)
};

// Fills the planned fields of layers[0 .. num_layers) (host memory) and returns the plan. Copy the
// array to the device afterwards.
SnPlan spectral_norm_power_iteration_plan(SnLayer* layers, int64_t num_layers);

// n_power_iterations steps for every layer, a constant number of launches per step (4) whatever the
// number of layers, plus one launch loading u and v into float32. Math in float32; deterministic.
//   hook_order: v = nrm(W^T u); u = nrm(W v)   else: u = nrm(W v); v = nrm(W^T u);  nrm(x) = x / max(||x||, eps)
// sigma = <u, W v> after the update, from the last normalization (||x||^2 / max(||x||, eps));
// n_power_iterations == 0: sigma = <u, W v> in one pass over W.
// d_layers: the planned array in device memory; workspace: plan.workspace floats on the device.
cudaError_t spectral_norm_power_iteration(const SnLayer* d_layers, const SnPlan& plan, float* workspace,
                                          int64_t n_power_iterations, float eps, bool hook_order,
                                          cudaStream_t stream);

// A strided matrix (element (i, j) at p[i * stride_r + j * stride_c]) and a strided vector.
struct SnMatrix {
  const void* p;
  int64_t rows, cols, stride_r, stride_c;
  DType dtype;
};
struct SnVector {
  const void* p;
  int64_t size, stride;
  DType dtype;
};

// out (rows x cols, contiguous, w.dtype) = W / sigma; sigma: one float32 on the device.
cudaError_t spectral_norm_apply(const SnMatrix& w, const float* sigma, void* out, cudaStream_t stream);

// Float32 scratch of spectral_norm_apply_backward, in floats (no zeroing needed).
int64_t spectral_norm_apply_backward_workspace(int64_t rows, int64_t cols);

// out (rows x cols, contiguous, w.dtype) = G / sigma - (<G, W> / sigma^2) u v^T, with <G, W> reduced
// in a fixed order (block partials, then one ordered reduction): deterministic.
cudaError_t spectral_norm_apply_backward(const SnMatrix& grad, const SnMatrix& w, const SnVector& u,
                                         const SnVector& v, const float* sigma, float* workspace, void* out,
                                         cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
