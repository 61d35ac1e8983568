// Fused CPU kernel of fastgan::same_class_cosine_sum, SupCon's positive term: for each row i of x,
//   pos_i = sum_{p != i, y_p = y_i} cos(x_i, x_p) = x^_i . (C_{y_i} - x^_i),  n_pos_i = |{p != i, y_p = y_i}|,
// x^ = x / max(||x||, eps), C_y the sum of x^ over class y. Rows are grouped by a sort of (label, index),
// so each class sum adds its rows in index order (deterministic for any thread count); the only
// workspace is O(N D) (no array indexed by label value, whatever the labels).
//   backward: dx^_j = g_j (C_{y_j} - 2 x^_j) + sum_{i in y_j} g_i x^_i, then the normalization backward.
// The ATen form (normalize, sort, searchsorted, index_add, gather, dot) is about twenty ops with
// autograd: at N = 256, D = 768 more than the whole N x N kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/common.h"
#include "cpu/vec_math.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace fastgan {
namespace {

void check_scc(const at::Tensor& x, const at::Tensor& labels) {
  TORCH_CHECK(x.dim() == 2, "same_class_cosine_sum: x must be 2-D, got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "same_class_cosine_sum: x must be floating point");
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong && labels.size(0) == x.size(0),
              "same_class_cosine_sum: labels must be 1-D int64 with one entry per row of x");
  TORCH_CHECK(x.device().is_cpu() && labels.device().is_cpu(), "same_class_cosine_sum (CPU kernel): tensors must be on the CPU");
}

// Row order sorted by (label, index) and the class segments [starts[s], starts[s + 1]).
void group_rows(const at::Tensor& labels, std::vector<int64_t>& order, std::vector<int64_t>& starts) {
  const int64_t n = labels.size(0);
  auto lc = labels.contiguous();
  const int64_t* y = lc.data_ptr<int64_t>();
  order.resize(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return y[p] != y[q] ? y[p] < y[q] : p < q; });
  starts.clear();
  for (int64_t k = 0; k < n; ++k) {
    if (k == 0 || y[order[k]] != y[order[k - 1]]) starts.push_back(k);
  }
  starts.push_back(n);
}

template <typename T>
void normalized(const T* x, T* xh, T* inv, T* nrm, int64_t n, int64_t d, T eps) {
  at::parallel_for(0, n, row_grain(d, 16), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = x + i * d;
      nrm[i] = std::sqrt(vec::dot(xr, xr, d));
      inv[i] = T(1) / std::max(nrm[i], eps);
      for (int64_t k = 0; k < d; ++k) xh[i * d + k] = xr[k] * inv[i];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> same_class_cosine_sum_cpu(const at::Tensor& x, const at::Tensor& labels,
                                                             double eps) {
  check_scc(x, labels);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = compute_type(x);
  auto xt = x.detach().to(ct).contiguous();
  const int64_t n = xt.size(0), d = xt.size(1);
  std::vector<int64_t> order, starts;
  group_rows(labels, order, starts);
  auto pos = at::empty({n}, xt.options());
  auto n_pos = at::empty({n}, labels.options());
  int64_t* np = n_pos.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(ct, "same_class_cosine_sum_cpu", [&] {
    using T = scalar_t;
    auto xh = at::empty_like(xt);
    std::vector<T> inv(n), nrm(n);
    normalized<T>(xt.data_ptr<T>(), xh.data_ptr<T>(), inv.data(), nrm.data(), n, d, static_cast<T>(eps));
    const T* h = xh.data_ptr<T>();
    T* p = pos.data_ptr<T>();
    const int64_t segs = static_cast<int64_t>(starts.size()) - 1;
    at::parallel_for(0, segs, 1, [&](int64_t s0, int64_t s1) {
      std::vector<T> c(d), w(d);
      for (int64_t s = s0; s < s1; ++s) {
        std::fill(c.begin(), c.end(), T(0));
        for (int64_t k = starts[s]; k < starts[s + 1]; ++k) {
          const T* hr = h + order[k] * d;
          for (int64_t q = 0; q < d; ++q) c[q] += hr[q];
        }
        for (int64_t k = starts[s]; k < starts[s + 1]; ++k) {
          const int64_t i = order[k];
          const T* hr = h + i * d;
          for (int64_t q = 0; q < d; ++q) w[q] = c[q] - hr[q];  // the class sum without i, then one dot
          p[i] = vec::dot(hr, w.data(), d);
          np[i] = starts[s + 1] - starts[s] - 1;
        }
      }
    });
  });
  return {pos, n_pos};
}

at::Tensor same_class_cosine_sum_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& labels,
                                              double eps) {
  check_scc(x, labels);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0), "same_class_cosine_sum_backward: grad must have shape (N,)");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = compute_type(x);
  auto xt = x.detach().to(ct).contiguous();
  auto g = grad.detach().to(ct).contiguous();
  const int64_t n = xt.size(0), d = xt.size(1);
  std::vector<int64_t> order, starts;
  group_rows(labels, order, starts);
  auto gx = at::empty_like(xt);
  AT_DISPATCH_FLOATING_TYPES(ct, "same_class_cosine_sum_backward_cpu", [&] {
    using T = scalar_t;
    auto xh = at::empty_like(xt);
    std::vector<T> inv(n), nrm(n);
    const T e = static_cast<T>(eps);
    normalized<T>(xt.data_ptr<T>(), xh.data_ptr<T>(), inv.data(), nrm.data(), n, d, e);
    const T* h = xh.data_ptr<T>();
    const T* gp = g.data_ptr<T>();
    T* out = gx.data_ptr<T>();
    const int64_t segs = static_cast<int64_t>(starts.size()) - 1;
    at::parallel_for(0, segs, 1, [&](int64_t s0, int64_t s1) {
      std::vector<T> c(d), gc(d), u(d);
      for (int64_t s = s0; s < s1; ++s) {
        std::fill(c.begin(), c.end(), T(0));
        std::fill(gc.begin(), gc.end(), T(0));
        for (int64_t k = starts[s]; k < starts[s + 1]; ++k) {
          const int64_t i = order[k];
          const T* hr = h + i * d;
          for (int64_t q = 0; q < d; ++q) {
            c[q] += hr[q];
            gc[q] += gp[i] * hr[q];
          }
        }
        for (int64_t k = starts[s]; k < starts[s + 1]; ++k) {
          const int64_t j = order[k];
          const T* hr = h + j * d;
          // U = inv_j dx^_j, then dx_j = U - [||x_j|| > eps] x^_j (x^_j . U) (common.h's rows).
          for (int64_t q = 0; q < d; ++q) u[q] = inv[j] * (gp[j] * (c[q] - 2 * hr[q]) + gc[q]);
          const T proj = nrm[j] > e ? vec::dot(hr, u.data(), d) : T(0);
          T* o = out + j * d;
          for (int64_t q = 0; q < d; ++q) o[q] = u[q] - hr[q] * proj;
        }
      }
    });
  });
  return gx.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("same_class_cosine_sum", &same_class_cosine_sum_cpu);
  m.impl("same_class_cosine_sum_backward", &same_class_cosine_sum_backward_cpu);
}

}  // namespace fastgan
