// Launchers of the CUDA kernels of the fused spectral-norm ops (docs/semantics.md section 7, contract:
// fastgan/reference/spectral_norm.py). Plain types only: no torch headers, so CI compile-checks the
// .cu file with nvcc alone (.ci/nvcc_check.sh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace fastgan {
namespace cuda {

// One layer of the multi-tensor power iteration. The caller fills the first block; the launcher
// (spectral_norm_power_iteration_workspace) plans the second.
struct SnLayer {
  const void* w;  // rows x cols, element (i, j) at w[i * stride_r + j * stride_c] (elements, >= 0)
  void* u;        // rows entries, element i at u[i * stride_u]; dtype u_dtype; updated in place
  void* v;        // cols entries, element j at v[j * stride_v]; dtype v_dtype; updated in place
  float* sigma;   // one float32, written by the launcher
  int64_t rows, cols, stride_r, stride_c, stride_u, stride_v;
  DType w_dtype, u_dtype, v_dtype;
  // Filled by the launcher (relative to the layer's batch):
  int64_t off_u, off_v;    // float32 working copies of u and v in the workspace
  int64_t tile_c, tile_r;  // first flattened tile of this layer over column tiles (W^T u) and row tiles (W v)
};

// The multi-tensor kernels take their layer descriptors BY VALUE, as one kernel argument (PyTorch's
// multi_tensor_apply does the same), not as a device array: no host-to-device copy per call and no
// device-side table to cache or invalidate, so a call is CUDA-graph safe (a captured launch keeps its
// parameters; a replay reuses the captured tensors anyway). Kernel parameters are limited to 4 KB, so
// a call with more layers than a batch holds runs batch after batch (launches x ceil(layers / capacity)).
constexpr int64_t kSnParamBytes = 4096 - 128;  // room left for the other kernel arguments
template <typename Layer, typename Plan>
struct SnBatch {
  static constexpr int64_t kCapacity = (kSnParamBytes - static_cast<int64_t>(sizeof(Plan))) / sizeof(Layer);
  Layer layer[kCapacity];
  Plan plan;
};

// The plan of one batch of the power iteration.
struct SnPlan {
  int64_t num_layers;
  int64_t col_tiles, row_tiles;  // tiles of the batch's layers together (every layer has at least one of each)
  int64_t off_partials;          // per-tile partial sums in the workspace (max(col_tiles, row_tiles) floats)
  int64_t workspace;             // float32 workspace size in floats (no zeroing needed)
};
using SnLayerBatch = SnBatch<SnLayer, SnPlan>;

// Float32 workspace of spectral_norm_power_iteration, in floats (no zeroing needed). Plans the
// layers' second block of fields (host memory), batch by batch.
int64_t spectral_norm_power_iteration_workspace(SnLayer* layers, int64_t num_layers);

// n_power_iterations steps for every layer, a constant number of launches per step (4) whatever the
// number of layers (up to SnLayerBatch::kCapacity per batch), plus one launch loading u and v
// into float32. Math in float32; deterministic; a layer's bits do not depend on the other layers.
//   hook_order: v = nrm(W^T u); u = nrm(W v)   else: u = nrm(W v); v = nrm(W^T u);  nrm(x) = x / max(||x||, eps)
// sigma = <u, W v> after the update, from the last normalization (||x||^2 / max(||x||, eps));
// n_power_iterations == 0: sigma = <u, W v> in one pass over W.
// layers: host memory (planned here); workspace: spectral_norm_power_iteration_workspace floats on the device.
cudaError_t spectral_norm_power_iteration(SnLayer* layers, int64_t num_layers, float* workspace,
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

// One layer of the multi-tensor apply and its backward (all layers of a call share W's dtype). The
// caller fills the first block (g, u, v: backward only), the launcher the second.
struct SnApplyLayer {
  SnMatrix w;          // W (rows x cols, any strides)
  SnMatrix g;          // backward: G, W's shape and dtype, any strides
  SnVector u, v;       // backward: u (rows), v (cols), W's dtype or float32
  const float* sigma;  // one float32 on the device
  void* out;           // rows x cols, contiguous, W's dtype
  // Filled by the launcher:
  int64_t first_tile;  // first flattened element tile of this layer
  int64_t first_part;  // backward: first of its <G, W> partial sums in the workspace
  int64_t parts;       // backward: number of them (a function of the shape only)
};

// The plan of one batch of the apply or its backward.
struct SnApplyPlan {
  int64_t num_layers;
  int64_t tiles;  // element tiles of the batch's layers together
  int64_t parts;  // backward: <G, W> partial sums of the batch's layers together
};
using SnApplyBatch = SnBatch<SnApplyLayer, SnApplyPlan>;

// out_i = W_i / sigma_i for every layer: one launch per batch of SnApplyBatch::kCapacity layers.
cudaError_t spectral_norm_apply(SnApplyLayer* layers, int64_t num_layers, cudaStream_t stream);

// Float32 scratch of spectral_norm_apply_backward, in floats (no zeroing needed).
int64_t spectral_norm_apply_backward_workspace(const SnApplyLayer* layers, int64_t num_layers);

// out_i = G_i / sigma_i - (<G_i, W_i> / sigma_i^2) u_i v_i^T for every layer, with <G, W> reduced in
// a fixed order per layer (block partials, then one ordered reduction): deterministic, and the same
// bits whatever the other layers. Two launches per batch.
cudaError_t spectral_norm_apply_backward(SnApplyLayer* layers, int64_t num_layers, float* workspace,
                                         cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
