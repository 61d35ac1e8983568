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

// The kernels' allow_tf32 flag for float32 inputs: TF32 tensor cores unless
// torch.get_float32_matmul_precision() is "highest", the setting torch.mm on CUDA follows. Read here,
// at every call, rather than in the Python wrappers: an op traced by torch.compile then still follows
// the setting at run time, where Triton's tl.dot precision is baked in at trace time.
inline bool allow_tf32() {
  return at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
}

}  // namespace cuda
}  // namespace fastgan
