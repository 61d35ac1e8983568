// The element types of the CUDA kernels, shared by every launcher header (plain types, no torch
// headers, so .ci/nvcc_check.sh compiles the .cu files with nvcc alone), and the one switch that
// turns a runtime DType into a compile-time element type inside the .cu files.
#pragma once
#include <cuda_runtime.h>
#if defined(__CUDACC__) || defined(FASTGAN_EMU)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fastgan {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

#if defined(__CUDACC__) || defined(FASTGAN_EMU)
// Calls fn(T{}) with T the element type of dtype; the launchers instantiate their kernels there.
template <typename Fn>
cudaError_t dispatch(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(float{});
    case DType::kFloat16:
      return fn(__half{});
    case DType::kBFloat16:
      return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fastgan
