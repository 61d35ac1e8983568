// Emulated CUDA runtime for compiling csrc/cuda/*.cu as plain C++ on the CPU (see csrc/emu/simt.h
// and docs/cuda_emulation.md). Only what the kernels and launchers use: the execution-space
// keywords, dim3/uint3, cudaError_t, cudaStream_t, cudaGetLastError. Put csrc/emu/include first on
// the include path and never next to the real toolkit's headers.
#pragma once
#ifdef __CUDACC__
#error "csrc/emu/include is the CPU emulation of CUDA; nvcc must use the real cuda_runtime.h"
#endif
#define FASTGAN_EMU 1

#include <cmath>
#include <cstddef>

// Execution-space and storage keywords. __shared__ becomes a function-local static: blocks run one
// after another, so one copy serves every block (see simt.h for what that cannot catch).
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __constant__ static
#define __grid_constant__
#define __restrict__ __restrict

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 719,
  cudaErrorInvalidConfiguration = 9,
};
typedef struct CUstream_st* cudaStream_t;

// Device code calls the C math functions unqualified (expf, isnan, ...), as CUDA allows.
using std::isinf;
using std::isnan;
using std::isfinite;

#include "../simt.h"

inline cudaError_t cudaGetLastError() { return ::fastgan_emu::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return ::fastgan_emu::state().last_error; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches run to completion
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (emulator)";
  }
  return "unknown error";
}
