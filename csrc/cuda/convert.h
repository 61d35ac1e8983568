// float <-> storage-type conversions of the CUDA kernels (float, Tf32, __half, __nv_bfloat16), one copy
// for every .cu file. Explicit intrinsics, since torch's nvcc flags (-D__CUDA_NO_HALF_CONVERSIONS__,
// -D__CUDA_NO_BFLOAT16_CONVERSIONS__) remove the implicit ones; under csrc/emu the same intrinsics
// round to nearest even as on the device.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype.h"

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(fastgan::cuda::Tf32 x) { return x.x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// from_float<T>(x): x rounded to T.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>  // exact: Tf32 stores float32 (the TF32 rounding happens at the fragment loads)
__device__ __forceinline__ fastgan::cuda::Tf32 from_float<fastgan::cuda::Tf32>(float x) {
  return fastgan::cuda::Tf32{x};
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
