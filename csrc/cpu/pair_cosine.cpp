// Fused CPU kernel of fastgan::pair_cosine: c_i = scale (x_i . y_j) / (max(||x_i||, eps) max(||y_j||, eps)),
// j = (i + shift) mod N, the positive term of 2C (scale 1/t), D2D-CE, NT-Xent (shift N/2) and the CLIP
// diagonal.
// One pass per row forward (three dot products), two per row backward; the ATen form is about ten
// ops and fifteen passes over N x D with autograd, which at N = 64 costs more than the N x N kernel
// beside it.
//   backward (c_i the cosine, g_i the incoming gradient times scale):
//   dx_i = g_i ix (iy y_j - [||x_i|| > eps] c_i ix x_i), dy_j symmetrically,
//   ix = 1 / max(||x_i||, eps), iy = 1 / max(||y_j||, eps). Row j of dy has the one writer i.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/common.h"
#include "cpu/pair_cosine.h"

#include <algorithm>
#include <cmath>

namespace fastgan {
namespace {

at::ScalarType pair_type(const at::Tensor& x, const at::Tensor& y) {
  // float32 for half, bfloat16 and float32 (also mixed), float64 if either side is float64.
  return (x.scalar_type() == at::kDouble || y.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

void check_pair(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.sizes() == y.sizes(), "pair_cosine: x and y must be 2-D of one shape, got ",
              x.sizes(), " and ", y.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(y.scalar_type()),
              "pair_cosine: x and y must be floating point");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "pair_cosine (CPU kernel): tensors must be on the CPU");
}

template <typename T>
inline void row_dots(const T* x, const T* y, int64_t d, T& p, T& sx, T& sy) {
  T a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c)
  for (int64_t k = 0; k < d; ++k) {
    a += x[k] * y[k];
    b += x[k] * x[k];
    c += y[k] * y[k];
  }
  p = a;
  sx = b;
  sy = c;
}

// (A pragma cannot sit inside AT_DISPATCH's macro argument: the loop is a function.)
// Accumulate: ox += dx (the caller's gradient buffer) instead of ox = dx.
template <bool Accumulate, typename T>
inline void row_update(const T* xr, const T* yr, T* ox, T* oy, int64_t d, T gxi, T gyi, T ix, T iy, T cx, T cy) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) {
    const T dx = gxi * (iy * yr[k] - cx * xr[k]);
    if constexpr (Accumulate) {
      ox[k] += dx;
    } else {
      ox[k] = dx;
    }
    oy[k] = gyi * (ix * xr[k] - cy * yr[k]);
  }
}

at::Tensor pair_cosine_cpu(const at::Tensor& x, const at::Tensor& y, double eps, double scale, int64_t shift) {
  check_pair(x, y);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = pair_type(x, y);
  auto xt = x.detach().to(ct).contiguous(), yt = y.detach().to(ct).contiguous();
  const int64_t n = xt.size(0), d = xt.size(1), s = wrap_shift(shift, n);
  auto out = at::empty({n}, xt.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "pair_cosine_cpu", [&] {
    using T = scalar_t;
    const T* xp = xt.data_ptr<T>();
    const T* yp = yt.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const T e = static_cast<T>(eps), sc = static_cast<T>(scale);
    at::parallel_for(0, n, row_grain(d), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j = i + s < n ? i + s : i + s - n;
        T p, sx, sy;
        row_dots(xp + i * d, yp + j * d, d, p, sx, sy);
        const T c = p / (std::max(std::sqrt(sx), e) * std::max(std::sqrt(sy), e));
        o[i] = sc * c;  // exact for scale 1
      }
    });
  });
  return out;
}

// dx into gx (accumulate: gx += dx, gx of the compute dtype, contiguous) or a new tensor; dy new.
std::tuple<at::Tensor, at::Tensor> pair_cosine_backward_impl(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& y, double eps, double scale,
                                                             int64_t shift, at::Tensor gx, bool accumulate) {
  check_pair(x, y);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0), "pair_cosine_backward: grad must have shape (N,)");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = pair_type(x, y);
  auto xt = x.detach().to(ct).contiguous(), yt = y.detach().to(ct).contiguous();
  auto g = grad.detach().to(ct).contiguous();
  const int64_t n = xt.size(0), d = xt.size(1), s = wrap_shift(shift, n);
  if (!accumulate) gx = at::empty_like(xt);
  auto gy = at::empty_like(yt);
  AT_DISPATCH_FLOATING_TYPES(ct, "pair_cosine_backward_cpu", [&] {
    using T = scalar_t;
    const T* xp = xt.data_ptr<T>();
    const T* yp = yt.data_ptr<T>();
    const T* gp = g.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    T* gyp = gy.data_ptr<T>();
    const T e = static_cast<T>(eps), sc = static_cast<T>(scale);
    at::parallel_for(0, n, row_grain(d), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j = i + s < n ? i + s : i + s - n;
        const T* xr = xp + i * d;
        const T* yr = yp + j * d;
        T p, sx, sy;
        row_dots(xr, yr, d, p, sx, sy);
        const T nx = std::sqrt(sx), ny = std::sqrt(sy);
        const T ix = T(1) / std::max(nx, e), iy = T(1) / std::max(ny, e);
        const T c = p * ix * iy;
        // Where a norm is clamped at eps the cosine is linear in that side: no projection term.
        const T cx = nx > e ? c * ix : T(0), cy = ny > e ? c * iy : T(0);
        const T gi = sc * gp[i];
        const T gxi = gi * ix, gyi = gi * iy;
        if (accumulate) {
          row_update<true>(xr, yr, gxp + i * d, gyp + j * d, d, gxi, gyi, ix, iy, cx, cy);
        } else {
          row_update<false>(xr, yr, gxp + i * d, gyp + j * d, d, gxi, gyi, ix, iy, cx, cy);
        }
      }
    });
  });
  return {accumulate ? gx : gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> pair_cosine_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                            const at::Tensor& y, double eps, double scale,
                                                            int64_t shift) {
  return pair_cosine_backward_impl(grad, x, y, eps, scale, shift, at::Tensor(), false);
}

}  // namespace

at::Tensor pair_cosine_backward_accumulate(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, double eps,
                                           at::Tensor& gx) {
  const bool fits = gx.defined() && gx.is_contiguous() && gx.scalar_type() == pair_type(x, y) && gx.sizes() == x.sizes();
  if (!fits) {
    auto [dx, dy] = pair_cosine_backward_impl(grad, x, y, eps, 1.0, 0, at::Tensor(), false);
    gx.add_(dx);
    return dy;
  }
  return std::get<1>(pair_cosine_backward_impl(grad, x, y, eps, 1.0, 0, gx, true));
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("pair_cosine", &pair_cosine_cpu);
  m.impl("pair_cosine_backward", &pair_cosine_backward_cpu);
}

}  // namespace fastgan
