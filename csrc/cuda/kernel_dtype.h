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

// Two inputs of one kernel in one dtype: as they are when their dtypes agree, else both in float32
// (a 16-bit projection against a float32 embedding under autocast), each a kernel dtype itself: a
// float64 (or integer) input is never cast silently. Returns the kernel dtype.
inline DType one_kernel_dtype(at::Tensor& x, at::Tensor& y, const char* op, const char* x_name, const char* y_name,
                              const std::string& both_name) {
  if (x.scalar_type() != y.scalar_type()) {
    kernel_dtype(x, op, x_name);
    kernel_dtype(y, op, y_name);
    x = x.to(at::kFloat);
    y = y.to(at::kFloat);
  }
  return kernel_dtype(x, op, both_name);
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
