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
// float32 storage whose products run on TF32 tensor cores (operands rounded with __float_to_tf32
// where a fragment is loaded; the stored values and every output stay float32). The element type
// the launchers pick for float32 when allow_tf32 is set (torch.get_float32_matmul_precision() is
// not "highest"); plain float is the IEEE SIMT path.
struct Tf32 {
  float x;
};
static_assert(sizeof(Tf32) == sizeof(float), "Tf32 reads float32 memory in place");

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

// The same with Tf32 for float32 when allow_tf32 (kernels with a TF32 tensor-core path).
template <typename Fn>
cudaError_t dispatch(DType dtype, bool allow_tf32, Fn fn) {
  if (dtype == DType::kFloat32 && allow_tf32) return fn(Tf32{});
  return dispatch(dtype, fn);
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fastgan
