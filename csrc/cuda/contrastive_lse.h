// Launchers of the CUDA kernels of contrastive_lse and cosine_similarity_matrix. Plain types only:
// no torch headers, so CI compile-checks the .cu files with nvcc alone (.ci/nvcc_check.sh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace fastgan {
namespace cuda {

struct LseParams {
  const void* a;         // N x D, row stride stride_a, dtype `dtype`
  const void* b;         // M x D, row stride stride_b
  const float* inv_a;    // N: 1 / max(||a_i||, eps), or ones when not normalizing
  const float* inv_b;    // M
  const int64_t* la;     // N labels, or null when every predicate is "all"
  const int64_t* lb;     // M labels
  const float* extra;    // N extra logits, or null
  int64_t n, m, d, stride_a, stride_b;
  float scale, bias;
  int relu, exclude_self;
  int64_t self_offset;
  int num_predicates;    // 1..3
  int predicates[3];     // 0 all, 1 same label, 2 different label
  DType dtype;
};

// lse: N x K float32, rowmax: N float32.
cudaError_t contrastive_lse_forward(const LseParams& p, float* lse, float* rowmax, cudaStream_t stream);

// u (N x D) and v (M x D), float32 and zero-initialized by the caller, receive
// u = dS~ B and v = dS~^T A with dS~_ij = scale inv_a_i inv_b_j f'(z_ij) sum_k w_ik mask_k exp(f(z_ij) - lse_ik).
cudaError_t contrastive_lse_backward(const LseParams& p, const float* lse, const float* grad_lse, float* u, float* v,
                                     cudaStream_t stream);

// out (N x M, dtype) = scale * inv_a_i * inv_b_j * <a_i, b_j>.
cudaError_t cosine_similarity_matrix_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                             int64_t n, int64_t m, int64_t d, int64_t stride_a, int64_t stride_b,
                                             float scale, DType dtype, void* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
