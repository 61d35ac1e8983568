// Launchers of the CUDA kernels of infonce_lse (InfoMax-GAN's local x global InfoNCE, contract:
// fastgan/reference/infonce.py:infonce_lse). Plain types only: no torch headers, so CI
// compile-checks the .cu file with nvcc alone (.ci/nvcc_check.sh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace fastgan {
namespace cuda {

struct InfonceParams {
  const void* l;  // (N, R, HW), element (j, r, k) at l[j * l_stride_n + r * l_stride_r + k * l_stride_k]
  const void* m;  // (N, R), element (i, r) at m[i * m_stride_n + r * m_stride_r]; same dtype as l
  int64_t n, r, hw;
  int64_t l_stride_n, l_stride_r, l_stride_k;  // in elements, any non-negative values
  int64_t m_stride_n, m_stride_r;
  float scale;
  int has_self;     // self_logit given: neg also holds HW * exp(self_logit) ...
  float self_term;  // ... as the single logit self_logit + log(HW) (computed by the caller in double)
  int normalize;
  float eps;
  DType dtype;
  // CTAs the row-block kernels aim for when splitting the columns (0: the default, 264, two waves on
  // 132 SMs). The glue leaves 0; the emulation tests set small values to force several tiles per
  // split at small N.
  int64_t target_ctas;
  // float32 only: the score tiles and both gradient products on TF32 tensor cores (glue: set unless
  // torch.get_float32_matmul_precision() is "highest"); 0: the IEEE SIMT path.
  int allow_tf32;
};

// Launches: forward 2, backward 2, at every size (grids depend on the sizes only; no host syncs).
// Float32 scratch the launchers need (a count of floats; the caller allocates it, no zeroing needed).
int64_t infonce_lse_forward_workspace(const InfonceParams& p);
int64_t infonce_lse_backward_workspace(const InfonceParams& p);

// pos: (N, HW) float32 contiguous, neg: (N,) float32.
cudaError_t infonce_lse_forward(const InfonceParams& p, float* pos, float* neg, float* workspace,
                                cudaStream_t stream);

// grad_pos (N, HW), grad_neg (N,), neg (N,): float32 contiguous. grad_l: (N, R, HW) contiguous and
// grad_m: (N, R) contiguous, both in p.dtype.
cudaError_t infonce_lse_backward(const InfonceParams& p, const float* grad_pos, const float* grad_neg,
                                 const float* neg, void* grad_l, void* grad_m, float* workspace,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgan
