// Helpers shared by the CPU kernels: the row normalization x / max(||x||, eps) and its backward.
#pragma once
#include <ATen/ATen.h>

namespace fastgan {

inline at::ScalarType compute_type(const at::Tensor& a) {
  // float64 stays float64; half, bfloat16 and float32 are computed in float32.
  return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::Tensor inverse_norms(const at::Tensor& x, bool normalize, double eps) {
  if (!normalize) return at::ones({x.size(0)}, x.options());
  return x.norm(2, {1}).clamp_min(eps).reciprocal();
}

// dX = U - [||x|| > eps] x^ (x^ . U), x^ = x * inv: the normalization's backward.
inline at::Tensor normalization_backward(const at::Tensor& x, const at::Tensor& inv, const at::Tensor& U, bool normalize,
                                  double eps) {
  if (!normalize) return U;
  auto xhat = x * inv.unsqueeze(1);
  auto proj = (xhat * U).sum(1, true);
  auto active = (x.norm(2, {1}, true) > eps).to(x.scalar_type());
  return U - xhat * (proj * active);
}

}  // namespace fastgan
