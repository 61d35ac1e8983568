// Torch side of csrc/cuda/dtype.h: maps a tensor's dtype onto the kernels' DType, with the error the
// CUDA glue (*_cuda.cpp, CUDA builds only) raises for any other dtype.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "cuda/dtype.h"

namespace fastgan {
namespace cuda {

inline DType kernel_dtype(const at::Tensor& x, const char* op, const std::string& name) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " must be float32, float16 or bfloat16 for the CUDA kernels (float64 runs "
                  "on the cpu and reference backends), got ", x.scalar_type());
  }
}

}  // namespace cuda
}  // namespace fastgan
