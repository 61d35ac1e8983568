// CPU kernel of fastgan::spectral_norm_power_iteration_: n power-iteration steps for a list of
// spectral-norm layers in one call (the multi-tensor idea of SPEC.md 7 on the CPU).
//
// Per layer and step: two passes over W (W^T u, then W v), each a BLAS gemv, plus two vector
// normalizations nrm(x) = x / max(||x||, eps) written in place into the caller's u, v buffers.
// Floor: 2 * |W| multiply-adds and 2 * |W| elements read per layer and step (bandwidth bound).
// The ops are the same ATen kernels, in the same order, as torch.nn.utils' Python code, so u and v
// are bitwise equal to PyTorch's; what is saved is the per-op Python and dispatcher overhead
// (about ten small ops per layer), which dominates for the small layers of a GAN discriminator.
// Layers run one after another: each gemv is itself parallel inside BLAS/ATen, and running gemvs
// inside an outer parallel region would make them single-threaded for the large layers.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace fastgan {
namespace {

// out = x / max(||x||_2, eps), the same ATen ops as torch.nn.functional.normalize(x, dim=0, out=out).
void normalize_into(const at::Tensor& x, double eps, at::Tensor& out) {
  at::Tensor denom = x.norm(2, {0}, /*keepdim=*/true).clamp_min(eps);
  at::div_out(out, x, denom);
}

void spectral_norm_power_iteration_cpu(at::TensorList weight_mats, at::TensorList us, at::TensorList vs,
                                       int64_t n_power_iterations, double eps, bool hook_order) {
  TORCH_CHECK(weight_mats.size() == us.size() && us.size() == vs.size(),
              "spectral_norm_power_iteration_: weight_mats, us and vs must have the same length");
  TORCH_CHECK(n_power_iterations >= 0, "spectral_norm_power_iteration_: n_power_iterations must be >= 0");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < weight_mats.size(); ++i) {
    const at::Tensor& w = weight_mats[i];
    at::Tensor u = us[i];
    at::Tensor v = vs[i];
    TORCH_CHECK(w.dim() == 2, "spectral_norm_power_iteration_: weight_mats[", i, "] must be 2-D");
    TORCH_CHECK(u.dim() == 1 && u.size(0) == w.size(0), "spectral_norm_power_iteration_: us[", i,
                "] must have ", w.size(0), " entries");
    TORCH_CHECK(v.dim() == 1 && v.size(0) == w.size(1), "spectral_norm_power_iteration_: vs[", i,
                "] must have ", w.size(1), " entries");
    TORCH_CHECK(u.scalar_type() == w.scalar_type() && v.scalar_type() == w.scalar_type(),
                "spectral_norm_power_iteration_: us[", i, "] and vs[", i, "] must have the dtype of the weight");
    for (int64_t k = 0; k < n_power_iterations; ++k) {
      if (hook_order) {
        normalize_into(at::mv(w.t(), u), eps, v);
        normalize_into(at::mv(w, v), eps, u);
      } else {
        normalize_into(at::mv(w, v), eps, u);
        normalize_into(at::mv(w.t(), u), eps, v);
      }
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("spectral_norm_power_iteration_", &spectral_norm_power_iteration_cpu);
}

}  // namespace fastgan
