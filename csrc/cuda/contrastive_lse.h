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
  // The grid plan (contrastive_lse_plan) is a pure function of N, M and these two, never of data:
  int num_sms;       // SMs of the device (the glue asks cudaDeviceGetAttribute); the plan aims at 2 CTAs per SM
  int force_splits;  // > 0: use this many column (row) splits, capped by the tile count; tests set it
  // float32 only: z tiles and both gradient products on TF32 tensor cores (glue: set unless
  // torch.get_float32_matmul_precision() is "highest"); 0: the IEEE SIMT path.
  int allow_tf32;
};

// How the launchers cut the work. Rows and columns come in 32-wide tiles. The forward and the
// row-gradient kernel run row_blocks x col_splits CTAs, each over a contiguous range of column tiles;
// the column-gradient kernel col_blocks x row_splits. Partial results per split go to the caller's
// float32 workspace (no zeroing needed) and are merged in split order: deterministic bits.
struct LsePlan {
  int64_t row_blocks, col_blocks;  // ceil(N / 32), ceil(M / 32)
  int64_t col_splits, row_splits;  // >= 1 each
  int64_t forward_workspace;       // floats: col_splits * N * 7
  int64_t backward_workspace;      // floats: (col_splits > 1) * col_splits * N * D + (row_splits > 1) * row_splits * M * D
  // The same-class cosine sums' (of a plan with M = N): col_splits * N * 2 and (col_splits > 1) * col_splits * N * D.
  int64_t same_class_forward_workspace, same_class_backward_workspace;
};
LsePlan contrastive_lse_plan(const LseParams& p);

// lse: N x K float32, rowmax: N float32. workspace: plan.forward_workspace floats.
cudaError_t contrastive_lse_forward(const LseParams& p, float* lse, float* rowmax, float* workspace,
                                    cudaStream_t stream);

// u (N x D) and v (M x D), float32, receive (every element written, no zeroing needed)
// u = dS~ B and v = dS~^T A with dS~_ij = scale inv_a_i inv_b_j f'(z_ij) sum_k w_ik mask_k exp(f(z_ij) - lse_ik).
// workspace: plan.backward_workspace floats (may be null when that is 0).
cudaError_t contrastive_lse_backward(const LseParams& p, const float* lse, const float* grad_lse, float* u, float* v,
                                     float* workspace, cudaStream_t stream);

// SupCon's positive term: pos_i = sum_{j != i, la_j = la_i} inv_i inv_j <a_i, a_j> (float32) and
// n_pos_i, the count of such j (int64). Reads a, inv_a, la (required), n, d, stride_a, dtype,
// num_sms, force_splits and allow_tf32 of p, and nothing else: the self-similarity (b = a, m = n,
// exclude_self, ...) is the launchers' own.
// workspace: same_class_plan(p).same_class_forward_workspace floats.
LsePlan same_class_plan(const LseParams& p);  // the plan the two same-class launchers run on p
cudaError_t same_class_cosine_sum_forward(const LseParams& p, float* pos, int64_t* n_pos, float* workspace,
                                          cudaStream_t stream);
// u (N x D, float32, every element written) = W A~ with W_ij = [j != i, la_j = la_i] (grad_i + grad_j)
// inv_i inv_j: the raw-row gradient of sum_i grad_i pos_i, for normalization_backward.
// workspace: same_class_plan(p).same_class_backward_workspace floats (may be null when that is 0).
cudaError_t same_class_cosine_sum_backward(const LseParams& p, const float* grad, float* u, float* workspace,
                                           cudaStream_t stream);

// out (N x M, dtype) = scale * inv_a_i * inv_b_j * <a_i, b_j>.
cudaError_t cosine_similarity_matrix_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                             int64_t n, int64_t m, int64_t d, int64_t stride_a, int64_t stride_b,
                                             float scale, DType dtype, bool allow_tf32, void* out,
                                             cudaStream_t stream);

// The normalization around the kernels, one launch each for both sides (rows of a, then of b; m = 0
// and b null for one side). inv_a (n), inv_b (m), float32: 1 / max(||x_r||, eps), or 1 without
// normalization. Rows of a and b have row strides stride_a, stride_b and dtype `dtype`.
cudaError_t inverse_norms(const void* a, int64_t n, int64_t stride_a, const void* b, int64_t m, int64_t stride_b,
                          int64_t d, DType dtype, float eps, bool normalize, float* inv_a, float* inv_b,
                          cudaStream_t stream);

// grad_a (n x d) and grad_b (m x d), contiguous, in `dtype`, from the raw-row gradients u, v (float32,
// contiguous, contrastive_lse_backward's): grad_r = u_r - [||x_r|| > eps] x^_r (x^_r . u_r) with
// x^ = x inv; u itself without normalization.
cudaError_t normalization_backward(const void* a, int64_t n, int64_t stride_a, const float* inv_a, const float* u,
                                   void* grad_a, const void* b, int64_t m, int64_t stride_b, const float* inv_b,
                                   const float* v, void* grad_b, int64_t d, DType dtype, float eps, bool normalize,
                                   cudaStream_t stream);

// grad_extra (n, float32) = sum_k grad_lse_ik exp(extra_i - lse_ik) over the finite lse_ik; lse and
// grad_lse (n x k, k <= 3) and extra (n) float32, contiguous.
cudaError_t extra_logit_backward(const float* extra, const float* lse, const float* grad_lse, int64_t n, int k,
                                 float* grad_extra, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
