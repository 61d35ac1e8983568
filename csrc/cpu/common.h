// Helpers shared by the CPU kernels: the row normalization x / max(||x||, eps) and its backward.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include "cpu/gemm.h"

#include <algorithm>
#include <cmath>
#include <optional>

namespace fastgan {

inline at::ScalarType compute_type(const at::Tensor& a) {
  // float64 stays float64; half, bfloat16 and float32 are computed in float32.
  return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Rows per at::parallel_for task for a loop of about `work_per_row` element operations per row. A
// task under kMinTaskWork elements (a few microseconds) gains less from a second thread than the
// fork/join costs, and on a busy host the wake-up of an idle core can cost more than the whole loop
// (a 64 x 512 loss step is ~20 such loops): small problems run on the calling thread.
constexpr int64_t kMinTaskWork = 32768;
inline int64_t row_grain(int64_t work_per_row, int64_t min_rows = 1) {
  return std::max(min_rows, kMinTaskWork / std::max<int64_t>(work_per_row, 1));
}

template <typename T>
void inverse_norm_rows(const T* x, int64_t n, int64_t d, T eps, T* out) {
  at::parallel_for(0, n, row_grain(d, 16), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * d;
      T ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < d; ++c) ss += xr[c] * xr[c];
      out[r] = T(1) / std::max(std::sqrt(ss), eps);
    }
  });
}

// 1 / max(||x_r||, eps) per row. On the CPU (contiguous float rows) one pass and one allocation
// instead of the three ATen ops (norm, clamp, reciprocal) of the generic form.
inline at::Tensor inverse_norms(const at::Tensor& x, bool normalize, double eps) {
  if (!normalize) return at::ones({x.size(0)}, x.options());
  if (x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() &&
      (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) {
    auto inv = at::empty({x.size(0)}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "inverse_norms", [&] {
      inverse_norm_rows(x.data_ptr<scalar_t>(), x.size(0), x.size(1), static_cast<scalar_t>(eps),
                        inv.data_ptr<scalar_t>());
    });
    return inv;
  }
  return x.norm(2, {1}).clamp_min(eps).reciprocal();
}

// Calls pair(i, j) once for every i <= j < n of a square n x n matrix, in B x B blocks, parallel over
// block rows: task bi owns the pairs whose smaller index lies in block bi, so a pair function that
// reads (i, j) and (j, i) and writes both never touches an element another task writes. Both ends
// of a pair are in cache-sized blocks (the column walk of (j, i) stays within B rows). The one
// walker of G <- G + G^T (contrastive_lse.cpp) and of the symmetric cosine-matrix backward.
template <typename F>
void for_each_upper_pair(int64_t n, const F& pair) {
  constexpr int64_t B = 64;
  const int64_t nb = (n + B - 1) / B;
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i0 = bi * B, i1 = std::min(n, i0 + B);
      for (int64_t j0 = i0; j0 < n; j0 += B) {
        const int64_t j1 = std::min(n, j0 + B);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = std::max(j0, i); j < j1; ++j) pair(i, j);
        }
      }
    }
  });
}

// A A^T for a contiguous (n, d) a: symmetric, so from n >= 512 only the 256-row blocks on and above
// the diagonal are multiplied (about half the flops of one product) and mirrored by a transposed
// copy. Below that one product (cpu/gemm.h: oneDNN where it runs) is cheaper than the extra calls.
inline at::Tensor self_product(const at::Tensor& a_t) {
  const int64_t n = a_t.size(0);
  constexpr int64_t kSym = 256;
  if (n < 2 * kSym) return gemm(a_t, a_t.t());
  at::Tensor Z = RecyclingCPUAllocator::empty({n, n}, a_t.scalar_type());  // as gemm's
  for (int64_t i0 = 0; i0 < n; i0 += kSym) {
    const int64_t bi = std::min(kSym, n - i0);
    // Row block i, columns [i0, n): one product, written in place into Z's rows (row stride n).
    auto out = Z.narrow(0, i0, bi).narrow(1, i0, n - i0);
    at::mm_out(out, a_t.narrow(0, i0, bi), a_t.narrow(0, i0, n - i0).t());
    if (n - i0 - bi > 0) Z.narrow(0, i0 + bi, n - i0 - bi).narrow(1, i0, bi).copy_(out.narrow(1, bi, n - i0 - bi).t());
  }
  return Z;
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
  at::parallel_for(0, n, row_grain(2 * d, 16), [&](int64_t r0, int64_t r1) {
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
// in_place: the caller owns U (a temporary of its own) and the result may overwrite it, one
// N x D buffer fewer (each row is read before it is written).
inline at::Tensor normalization_backward(const at::Tensor& x, const at::Tensor& inv, const at::Tensor& U, bool normalize,
                                  double eps, bool in_place = false) {
  if (!normalize) return U;
  if (x.device().is_cpu() && x.is_contiguous() && U.is_contiguous() && inv.is_contiguous() &&
      x.scalar_type() == U.scalar_type() && x.scalar_type() == inv.scalar_type() && x.dim() == 2) {
    auto out = in_place ? U : at::empty_like(U);
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
