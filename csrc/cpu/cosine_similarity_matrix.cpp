// Fused CPU kernel of fastgan::cosine_similarity_matrix: S = scale * nrm(a) nrm(b)^T.
//
// One BLAS product of the raw rows, then one fused pass that applies scale * inv_a_i * inv_b_j and
// casts to the output dtype: no normalized copies of a and b. Backward: one fused pass forming
// dS~ = scale * G * inv_a_i * inv_b_j, two BLAS products U = dS~ B, V = dS~^T A, and the
// normalization backward. Floor: 2NMD flops forward, 4NMD backward; NM outputs written.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/common.h"

namespace fastgan {
namespace {

void check(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "cosine_similarity_matrix: a and b must be 2-D, got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1), "cosine_similarity_matrix: a and b must have the same feature size");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "cosine_similarity_matrix: a and b must have the same dtype");
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), "cosine_similarity_matrix: a must be floating point");
}

// x[i][j] *= scale * ra[i] * rb[j], in parallel over rows.
template <typename T>
void scale_outer(T* x, const T* ra, const T* rb, int64_t n, int64_t m, T scale) {
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(m, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T s = scale * ra[i];
      T* xi = x + i * m;
      for (int64_t j = 0; j < m; ++j) xi[j] *= s * rb[j];
    }
  });
}

at::Tensor cosine_similarity_matrix_cpu(const at::Tensor& a, const at::Tensor& b, double scale, double eps) {
  check(a, b);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = compute_type(a);
  auto a_t = a.detach().to(ct).contiguous(), b_t = b.detach().to(ct).contiguous();
  auto inv_a = inverse_norms(a_t, true, eps), inv_b = inverse_norms(b_t, true, eps);
  auto s = at::mm(a_t, b_t.t());
  AT_DISPATCH_FLOATING_TYPES(ct, "cosine_similarity_matrix_cpu", [&] {
    scale_outer<scalar_t>(s.data_ptr<scalar_t>(), inv_a.data_ptr<scalar_t>(), inv_b.data_ptr<scalar_t>(), s.size(0),
                          s.size(1), static_cast<scalar_t>(scale));
  });
  return s.to(a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_matrix_backward_cpu(const at::Tensor& grad, const at::Tensor& a,
                                                                         const at::Tensor& b, double scale,
                                                                         double eps) {
  check(a, b);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == a.size(0) && grad.size(1) == b.size(0),
              "cosine_similarity_matrix_backward: grad must have shape (N, M)");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = compute_type(a);
  auto a_t = a.detach().to(ct).contiguous(), b_t = b.detach().to(ct).contiguous();
  auto inv_a = inverse_norms(a_t, true, eps), inv_b = inverse_norms(b_t, true, eps);
  auto ds = grad.detach().to(ct).contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(ct, "cosine_similarity_matrix_backward_cpu", [&] {
    scale_outer<scalar_t>(ds.data_ptr<scalar_t>(), inv_a.data_ptr<scalar_t>(), inv_b.data_ptr<scalar_t>(),
                          ds.size(0), ds.size(1), static_cast<scalar_t>(scale));
  });
  auto grad_a = normalization_backward(a_t, inv_a, at::mm(ds, b_t), true, eps).to(a.scalar_type());
  auto grad_b = normalization_backward(b_t, inv_b, at::mm(ds.t(), a_t), true, eps).to(b.scalar_type());
  return {grad_a, grad_b};
}

// ---- b is a: S = scale nrm(a) nrm(a)^T. Forward: A A^T is symmetric, so from N >= 512 only the
// blocks on and above the diagonal are multiplied (common.h's self_product: about half the flops).
// Backward: the gradients of the two sides add, dA~ = (G + G^T) A~, so one product instead of two:
// one blocked pass forms dS~_ij = dS~_ji = scale inv_i inv_j (G_ij + G_ji), then U = dS~ A and the
// normalization backward.

at::Tensor cosine_similarity_matrix_self_cpu(const at::Tensor& a, double scale, double eps) {
  check(a, a);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = compute_type(a);
  auto a_t = a.detach().to(ct).contiguous();
  auto inv = inverse_norms(a_t, true, eps);
  auto s = self_product(a_t);
  AT_DISPATCH_FLOATING_TYPES(ct, "cosine_similarity_matrix_self_cpu", [&] {
    scale_outer<scalar_t>(s.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), s.size(0),
                          s.size(1), static_cast<scalar_t>(scale));
  });
  return s.to(a.scalar_type());
}

// g is read through its strides: the gradient of S.sum() arrives as an expanded scalar (strides 0),
// which a .contiguous() would first write out as a whole N x N matrix.
template <typename T>
void symmetric_scaled(const T* g, int64_t gs0, int64_t gs1, T* out, const T* inv, int64_t n, T scale) {
  for_each_upper_pair(n, [=](int64_t i, int64_t j) {
    const T v = (g[i * gs0 + j * gs1] + g[j * gs0 + i * gs1]) * (scale * inv[i]) * inv[j];
    out[i * n + j] = v;
    out[j * n + i] = v;
  });
}

at::Tensor cosine_similarity_matrix_self_backward_cpu(const at::Tensor& grad, const at::Tensor& a, double scale,
                                                      double eps) {
  check(a, a);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == a.size(0) && grad.size(1) == a.size(0),
              "cosine_similarity_matrix_self_backward: grad must have shape (N, N)");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = compute_type(a);
  auto a_t = a.detach().to(ct).contiguous();
  auto inv = inverse_norms(a_t, true, eps);
  auto g = grad.detach().to(ct);  // any strides (see symmetric_scaled)
  auto ds = at::empty({a.size(0), a.size(0)}, a_t.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "cosine_similarity_matrix_self_backward_cpu", [&] {
    symmetric_scaled<scalar_t>(g.data_ptr<scalar_t>(), g.stride(0), g.stride(1), ds.data_ptr<scalar_t>(),
                               inv.data_ptr<scalar_t>(), g.size(0), static_cast<scalar_t>(scale));
  });
  return normalization_backward(a_t, inv, at::mm(ds, a_t), true, eps).to(a.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("cosine_similarity_matrix", &cosine_similarity_matrix_cpu);
  m.impl("cosine_similarity_matrix_backward", &cosine_similarity_matrix_backward_cpu);
  m.impl("cosine_similarity_matrix_self", &cosine_similarity_matrix_self_cpu);
  m.impl("cosine_similarity_matrix_self_backward", &cosine_similarity_matrix_self_backward_cpu);
}

}  // namespace fastgan
