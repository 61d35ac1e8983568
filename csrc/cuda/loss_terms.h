// Launchers of the CUDA kernels of the losses' terms around contrastive_lse (csrc/cuda/loss_terms.cu).
// Plain types only: no torch headers (.ci/nvcc_check.sh compiles the .cu with nvcc alone).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace fastgan {
namespace cuda {

// The positive logit of one row pair: out_r = scale (x_r . y_s) / (max(||x_r||, eps) max(||y_s||, eps)),
// s = (r + shift) mod n with shift in [0, n) (else cudaErrorInvalidValue), float32; x and y contiguous
// (n x d) of `dtype`. Backward: gx, gy (n x d, `dtype`, every element written) from grad (n, float32).
cudaError_t pair_cosine_forward(const void* x, const void* y, int64_t n, int64_t d, int64_t shift, DType dtype,
                                float eps, float scale, float* out, cudaStream_t stream);
cudaError_t pair_cosine_backward(const float* grad, const void* x, const void* y, int64_t n, int64_t d, int64_t shift,
                                 DType dtype, float eps, float scale, void* gx, void* gy, cudaStream_t stream);

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

// ReACGAN's D2D-CE epilogue (fastgan::d2d_epilogue): out (0-dim, float32) = scale * sum_i L_i with
// M_i = rowmax_i (0 where not finite), q_i = relu((m_p - cos_i) / t), L_i = q_i + logaddexp(-q_i,
// lse_i - M_i). lse (n, row stride lse_stride), rowmax, cos (n) float32. Backward: glse (n,
// contiguous), gcos (n) from grad (0-dim, on the device); rowmax is a constant.
struct D2dParams {
  const float* lse;
  int64_t lse_stride;
  const float* rowmax;
  const float* cos;
  int64_t n;
  float m_p, temperature, scale;
};

cudaError_t d2d_epilogue_forward(const D2dParams& p, float* out, cudaStream_t stream);
cudaError_t d2d_epilogue_backward(const D2dParams& p, const float* grad, float* glse, float* gcos,
                                  cudaStream_t stream);

// SupCon's epilogue (fastgan::supcon_epilogue): out (0-dim, float32) = sum_i [n_i > 0] (lse_i -
// pos_i / (t n_i)) / den, den = max(#{i : n_i > 0}, 1) when `mean`, else 1 (also written: the
// backward's, so no count leaves the device). lse (n, row stride lse_stride), pos (n) float32,
// n_pos (n) int64. Backward: glse (n, contiguous), gpos (n) from grad and den (0-dim each).
struct SupconParams {
  const float* lse;
  int64_t lse_stride;
  const float* pos;
  const int64_t* n_pos;
  int64_t n;
  float temperature;
  int mean;
};

cudaError_t supcon_epilogue_forward(const SupconParams& p, float* out, float* den, cudaStream_t stream);
cudaError_t supcon_epilogue_backward(const SupconParams& p, const float* grad, const float* den, float* glse,
                                     float* gpos, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
