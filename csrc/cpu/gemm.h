// Float32 matrix products of the CPU kernels (the kept-scores paths of contrastive_lse, the small
// self product) through oneDNN (shipped inside libtorch_cpu) where it runs, else at::mm. Why: at::mm
// sends float32 to MKL's sgemm, which on AMD CPUs takes its AVX2 path; oneDNN picks its kernels by
// ISA, so on an AVX-512 AMD EPYC the three 1024 x 768 x 1024 products of a CLIP step take 8 ms each
// instead of 18 ms, and a 64 x 512 x 64 product 31 us instead of 46 us (1 thread; within 1.1e-6 of
// float64, as MKL's 4e-7: both float32 with float32 accumulation). oneDNN follows torch's float32
// matmul precision exactly as at::mm does (bf16 only under set_float32_matmul_precision("medium")).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Context.h>

#include <atomic>

#include "cpu/recycling_allocator.h"

#if AT_MKLDNN_ENABLED()
namespace at {
namespace native {
// Exported by libtorch_cpu (aten/src/ATen/native/mkldnn/Matmul.h, not among torch's installed
// headers): result = beta * result + alpha * mat1 @ mat2, for contiguous or transposed 2-D views.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace native
}  // namespace at
#endif

namespace fastgan {

// Contiguous, or the transpose of a contiguous matrix: the layouts oneDNN takes without a copy.
inline bool blas_layout(const at::Tensor& x) { return x.is_contiguous() || x.t().is_contiguous(); }

// out = beta * out + a @ b, beta 0 or 1, for a (n x k), b (k x m) and out (n x m). oneDNN takes
// float32 operands that are contiguous or transposed-contiguous and a contiguous out; anything else
// goes to at::mm_out / addmm_. oneDNN refuses CPUs without AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT
// before it writes anything: the first refusal is remembered and every later call goes to ATen.
// Inside an at::parallel_for task it runs on the calling thread, as MKL does there.
inline void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
#if AT_MKLDNN_ENABLED()
  static std::atomic<bool> usable{true};
  if (usable.load(std::memory_order_relaxed) && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
      out.scalar_type() == at::kFloat && a.size(0) > 0 && a.size(1) > 0 && b.size(1) > 0 && blas_layout(a) &&
      blas_layout(b) && out.is_contiguous() && at::globalContext().userEnabledMkldnn()) {
    try {
      at::native::mkldnn_matmul(a, b, out, beta, 1.0f);
      return;
    } catch (const c10::Error&) {
      usable.store(false, std::memory_order_relaxed);
    }
  }
#endif
  if (beta == 0.0f) {
    at::Tensor o = out;
    at::mm_out(o, a, b);
  } else {
    out.addmm_(a, b);
  }
}

// a @ b into a new contiguous (n x m) CPU tensor (gemm_out's paths), in recycled memory: the
// products are the kept scores and the raw-row gradients of every training step, the same sizes
// each step, and fresh blocks of this size cost a page fault per 4 KB (cpu/recycling_allocator.h).
inline at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = RecyclingCPUAllocator::empty({a.size(0), b.size(1)}, a.scalar_type());
  gemm_out(out, a, b, 0.0f);
  return out;
}

}  // namespace fastgan
