// Launchers of the CUDA kernels of the losses' terms around contrastive_lse (csrc/cuda/loss_terms.cu).
// Plain types only: no torch headers (.ci/nvcc_check.sh compiles the .cu with nvcc alone).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace fastgan {
namespace cuda {

// The positive logit of one row pair: out_r = (x_r . y_r) / (max(||x_r||, eps) max(||y_r||, eps)),
// float32; x and y contiguous (n x d) of `dtype`. Backward: gx, gy (n x d, `dtype`) from grad (n, float32).
cudaError_t pair_cosine_forward(const void* x, const void* y, int64_t n, int64_t d, DType dtype, float eps, float* out,
                                cudaStream_t stream);
cudaError_t pair_cosine_backward(const float* grad, const void* x, const void* y, int64_t n, int64_t d, DType dtype,
                                 float eps, void* gx, void* gy, cudaStream_t stream);

// out (0-dim, float32) = scale * sum_i (sum_k coefs[k] x_ik + c1 y1_i + c2 y2_i); x (n x k, k <= 3), y1,
// y2 (n, or null) float32 with the strides given. Backward: gx (n x k, contiguous), gy1, gy2 (n) from
// grad (0-dim, float32, on the device).
struct CombineParams {
  const float* x;
  int64_t n, k, x_stride_n, x_stride_k;
  const float* y1;  // or null
  int64_t y1_stride;
  const float* y2;  // or null
  int64_t y2_stride;
  float coefs[3];
  float c1, c2, scale;
};

cudaError_t lse_combine_forward(const CombineParams& p, float* out, cudaStream_t stream);
cudaError_t lse_combine_backward(const CombineParams& p, const float* grad, float* gx, float* gy1, float* gy2,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
