// Helpers shared by the CPU kernels: the row normalization x / max(||x||, eps) and its backward.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <optional>

namespace fastgan {

inline at::ScalarType compute_type(const at::Tensor& a) {
  // float64 stays float64; half, bfloat16 and float32 are computed in float32.
  return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::Tensor inverse_norms(const at::Tensor& x, bool normalize, double eps) {
  if (!normalize) return at::ones({x.size(0)}, x.options());
  return x.norm(2, {1}).clamp_min(eps).reciprocal();
}

// The device-independent argument contract of fastgan::contrastive_lse and its backward, checked
// by the CPU kernel and the CUDA glue alike: 1 to 3 known predicates (0 all, 1 same label, 2 other
// label), both labels where a predicate needs them, labels 1-D int64 with one entry per row of a and
// b, and extra of shape (N,).
inline void check_contrastive_args(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& la,
                                   const std::optional<at::Tensor>& lb, const std::optional<at::Tensor>& extra,
                                   at::IntArrayRef predicates) {
  TORCH_CHECK(!predicates.empty() && predicates.size() <= 3, "contrastive_lse: predicates must hold 1 to 3 entries");
  bool need_labels = false;
  for (auto p : predicates) {
    TORCH_CHECK(p >= 0 && p <= 2, "contrastive_lse: unknown predicate ", p);
    need_labels |= p != 0;
  }
  if (need_labels) {
    TORCH_CHECK(la.has_value() && lb.has_value(), "contrastive_lse: label_a and label_b are required by the predicates");
  }
  for (auto* l : {&la, &lb}) {
    if (l->has_value()) {
      TORCH_CHECK((*l)->scalar_type() == at::kLong && (*l)->dim() == 1, "contrastive_lse: labels must be 1-D int64");
    }
  }
  if (la.has_value()) TORCH_CHECK(la->size(0) == a.size(0), "contrastive_lse: label_a must have a.size(0) entries");
  if (lb.has_value()) TORCH_CHECK(lb->size(0) == b.size(0), "contrastive_lse: label_b must have b.size(0) entries");
  if (extra.has_value()) {
    TORCH_CHECK(extra->dim() == 1 && extra->size(0) == a.size(0), "contrastive_lse: extra must have shape (N,)");
  }
}

// The CPU rows of normalization_backward below: out_r = U_r - [||x_r|| > eps] x^_r (x^_r . U_r). x^ is
// rounded as x * inv before use, as in the ATen form: at D = 1, x^ = +-1 exactly and the gradient
// cancels to exactly 0 (inv^2 (x . U) x would leave a rounding residue).
template <typename T>
void normalization_backward_rows(const T* x, const T* U, const T* inv, T* out, int64_t n, int64_t d, double eps) {
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * d;
      const T* ur = U + r * d;
      const T ir = inv[r];
      T proj = 0, ss = 0;
#pragma omp simd reduction(+ : proj, ss)
      for (int64_t c = 0; c < d; ++c) {
        proj += (xr[c] * ir) * ur[c];
        ss += xr[c] * xr[c];
      }
      if (!(std::sqrt(ss) > eps)) proj = 0;
      T* o = out + r * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] = ur[c] - (xr[c] * ir) * proj;
    }
  });
}

// dX = U - [||x|| > eps] x^ (x^ . U), x^ = x * inv: the normalization's backward. On the CPU two
// passes per row (x^ . U and ||x||, then the update), parallel over rows; elsewhere (the CUDA glue)
// ATen ops. The eager form costs about six passes over N x D, a few ms of a 2C step at N=1024, D=768.
inline at::Tensor normalization_backward(const at::Tensor& x, const at::Tensor& inv, const at::Tensor& U, bool normalize,
                                  double eps) {
  if (!normalize) return U;
  if (x.device().is_cpu() && x.is_contiguous() && U.is_contiguous() && inv.is_contiguous() &&
      x.scalar_type() == U.scalar_type() && x.scalar_type() == inv.scalar_type() && x.dim() == 2) {
    auto out = at::empty_like(U);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normalization_backward", [&] {
      normalization_backward_rows(x.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
                                  out.data_ptr<scalar_t>(), x.size(0), x.size(1), eps);
    });
    return out;
  }
  auto xhat = x * inv.unsqueeze(1);
  auto proj = (xhat * U).sum(1, true);
  auto active = (x.norm(2, {1}, true) > eps).to(x.scalar_type());
  return U - xhat * (proj * active);
}

}  // namespace fastgan
