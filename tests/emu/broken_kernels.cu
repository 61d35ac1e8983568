// Deliberately broken kernels (test-only): tests/test_cuda_emulation.py checks that the emulator
// turns each into a clear launch failure (or, for the race, an order-dependent result) instead of a
// hang or a silent pass. Not part of the extension.
#include <cuda_runtime.h>

#include "cuda/launch.h"

namespace {

// Only warp 0 reaches the barrier; the other threads return: a deadlock on a GPU.
__global__ void partial_sync_kernel(float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = static_cast<float>(t);
  if (t < 32) __syncthreads();
  out[t] = s[63 - t];
}

// Two halves of the block wait at two different barriers.
__global__ void split_sync_kernel(float* out) {
  const int t = threadIdx.x;
  if (t < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = 1.f;
}

// Half of a warp skips a full-mask shuffle.
__global__ void divergent_shuffle_kernel(float* out) {
  const int t = threadIdx.x;
  float x = static_cast<float>(t);
  if (t < 16) x = __shfl_xor_sync(0xffffffffu, x, 1);
  out[t] = x;
}

// Reads a neighbour's shared value without a barrier: a race, visible as a result that depends on
// the emulator's thread order (FASTGAN_EMU_ORDER).
__global__ void race_kernel(float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = static_cast<float>(t + 1);
  out[t] = s[(t + 1) % 64];  // missing __syncthreads() before this read
}

// A correct use of every warp operation, for the emulator's own test.
__global__ void warp_ops_kernel(int* out) {
  const int t = threadIdx.x, lane = t % 32;
  int k = 0;
  out[t * 8 + k++] = __shfl_sync(0xffffffffu, t, 3);
  out[t * 8 + k++] = __shfl_xor_sync(0xffffffffu, t, 5);
  out[t * 8 + k++] = __shfl_down_sync(0xffffffffu, t, 4);
  out[t * 8 + k++] = __shfl_up_sync(0xffffffffu, t, 4);
  out[t * 8 + k++] = __shfl_xor_sync(0xffffffffu, t, 1, 8);
  out[t * 8 + k++] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  out[t * 8 + k++] = __any_sync(0xffffffffu, t == 40) ? 1 : 0;
  __syncwarp();
  out[t * 8 + k++] = __all_sync(0xffffffffu, lane < 31) ? 1 : 0;
}

}  // namespace

extern "C" {
int emu_partial_sync(float* out) {
  FASTGAN_LAUNCH(partial_sync_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
int emu_split_sync(float* out) {
  FASTGAN_LAUNCH(split_sync_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
int emu_divergent_shuffle(float* out) {
  FASTGAN_LAUNCH(divergent_shuffle_kernel, 1, 32, 0, nullptr)(out);
  return cudaGetLastError();
}
int emu_race(float* out) {
  FASTGAN_LAUNCH(race_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
int emu_warp_ops(int* out) {
  FASTGAN_LAUNCH(warp_ops_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}
}
