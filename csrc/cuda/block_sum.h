// The one-CTA deterministic sum of the CUDA kernels (csrc/cuda/loss_terms.cu's one-CTA epilogues,
// csrc/cuda/spectral_norm.cu's norms): every thread of a kBlock-thread block passes its value, a fixed
// tree adds them (the same order on every run: bitwise reproducible, no atomics), and every thread
// gets the total. `red` is the block's shared scratch of kBlock floats, free again on return (the
// trailing barrier), so a kernel may call it twice in a row with the same scratch.
#pragma once
#include <cuda_runtime.h>

namespace fastgan {
namespace cuda {

template <int kBlock>
__device__ __forceinline__ float block_sum(float x, float* red) {
  static_assert(kBlock > 0 && (kBlock & (kBlock - 1)) == 0, "block_sum: the block size must be a power of 2");
  red[threadIdx.x] = x;
  __syncthreads();
  for (int w = kBlock / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  const float s = red[0];
  __syncthreads();
  return s;
}

}  // namespace cuda
}  // namespace fastgan
