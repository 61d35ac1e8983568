// Fused CPU kernels of fastgan::contrastive_lse and fastgan::cosine_similarity_matrix.
//
// contrastive_lse: for each row i of a (N x D) and the columns j of b (M x D),
//   z_ij = scale * <a_i, b_j> * inv_a_i * inv_b_j + bias        (inv = 1/max(||x||, eps) if normalize)
// and, per predicate k, the log-sum-exp of f(z_ij) (f = relu or identity) over the admissible columns
// that pass the predicate, plus an optional extra logit per row; and the row max of z.
//
// Tiling: the work is cut into tasks (a range of rows x a range of columns, one task per thread);
// each task sweeps BR x BC tiles whose raw dot products come from BLAS (at::mm_out into a
// per-task buffer), then applies scaling, masks and the online log-sum-exp in fused loops. Partial
// (max, sum) states of the column ranges are merged in a fixed order, so results are bitwise
// reproducible for a given thread count. Backward recomputes the tiles (the N x M matrix is never
// stored): dS tiles feed two more BLAS products, dA += dS B and dB += dS^T A, each into per-task
// partial buffers reduced in a fixed order (no atomics).
// Floor: forward 2NMD flops and (N+M)D reads; backward 6NMD flops. Extra memory: O((N+M)(D + K))
// plus T tiles of BR x BC and T partial gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/common.h"
#include "cpu/contrastive_lse.h"
#include "cpu/gemm.h"
#include "cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace fastgan {
namespace {

constexpr int64_t kBlockRows = 128;
constexpr int64_t kBlockCols = 512;
enum Predicate : int64_t { kAll = 0, kSame = 1, kDiff = 2 };

using namespace vec;  // fast_exp, exp8, reduce_max, exp_shifted: cpu/vec_math.h

struct Params {
  double scale, bias, eps;
  bool relu, normalize, exclude_self;
  int64_t self_offset;
  std::vector<int64_t> predicates;
};

template <typename T>
struct Inputs {
  const T* a;  // N x D, row-major
  const T* b;  // M x D
  const T* inv_a;
  const T* inv_b;
  const int32_t* la;  // dense class ids (labels remapped), null when every predicate is kAll
  const int32_t* lb;
  const T* extra;  // may be null
  int64_t n, m, d;
};

// Split [0, N) x [0, M) into `tasks` rectangles: rows when there are many, else columns.
struct Split {
  int64_t row_parts, col_parts;
};
inline Split make_split(int64_t n, int64_t m) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t row_blocks = (n + kBlockRows - 1) / kBlockRows;
  if (row_blocks >= threads || m <= kBlockCols) return {std::min(threads, std::max<int64_t>(row_blocks, 1)), 1};
  const int64_t col_blocks = (m + kBlockCols - 1) / kBlockCols;
  return {1, std::min(threads, col_blocks)};
}
inline std::pair<int64_t, int64_t> part(int64_t total, int64_t parts, int64_t k, int64_t align) {
  const int64_t blocks = (total + align - 1) / align;
  const int64_t lo = blocks * k / parts, hi = blocks * (k + 1) / parts;
  return {std::min(total, lo * align), std::min(total, hi * align)};
}

// Computes z for the tile rows [r0, r0+br) x cols [c0, c0+bc) into `z` (br x bc, row stride bc).
template <typename T>
void tile_logits(const Inputs<T>& in, const Params& prm, at::Tensor& a_t, at::Tensor& b_t, at::Tensor& buf,
                 int64_t r0, int64_t br, int64_t c0, int64_t bc) {
  auto out = buf.narrow(0, 0, br * bc).view({br, bc});
  at::mm_out(out, a_t.narrow(0, r0, br), b_t.narrow(0, c0, bc).t());
  T* z = buf.data_ptr<T>();
  const T scale = static_cast<T>(prm.scale), bias = static_cast<T>(prm.bias);
  for (int64_t r = 0; r < br; ++r) {
    const T sa = scale * in.inv_a[r0 + r];
    T* zr = z + r * bc;
    const T* ib = in.inv_b + c0;
    for (int64_t c = 0; c < bc; ++c) zr[c] = zr[c] * sa * ib[c] + bias;
  }
}

// The one column of row i excluded as "self", as an index into the tile [c0, c0 + bc), or -1.
inline int64_t self_column(const Params& prm, int64_t i, int64_t c0, int64_t bc) {
  if (!prm.exclude_self) return -1;
  const int64_t j = i + prm.self_offset - c0;
  return (j >= 0 && j < bc) ? j : -1;
}

// fz = f(z) for one tile row with the self column at -inf (it then drops out of every sum, since
// exp(-inf) = 0), and the row max of the admissible z (pre-relu).
template <typename T>
inline T prepare_row(const T* zr, T* fz, int64_t bc, int64_t self, bool relu) {
  const T ninf = -std::numeric_limits<T>::infinity();
  if (relu) {
#pragma omp simd
    for (int64_t c = 0; c < bc; ++c) fz[c] = std::max(zr[c], T(0));
  } else {
#pragma omp simd
    for (int64_t c = 0; c < bc; ++c) fz[c] = zr[c];
  }
  if (self < 0) return reduce_max(zr, bc);
  const T mz = std::max(reduce_max(zr, self), reduce_max(zr + self + 1, bc - self - 1));
  fz[self] = ninf;
  return mz;
}

// (max, sum exp(v - max)) of fz over the columns that pass predicate p (class id li vs lb).
template <typename T>
inline void masked_lse_tile(const T* fz, const int32_t* lb, int32_t li, int64_t p, int64_t bc, T* val, T& m_out,
                            T& s_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const T* v = fz;
  if (p != kAll) {
    const bool want_same = p == kSame;
#pragma omp simd
    for (int64_t c = 0; c < bc; ++c) val[c] = ((lb[c] == li) == want_same) ? fz[c] : ninf;
    v = val;
  }
  const T m = reduce_max(v, bc);  // skips NaN
  m_out = m;
  // A +inf logit makes the LSE +inf (as torch.logsumexp): count it as exp(0) instead of inf - inf.
  if (m == -ninf) {
    s_out = T(1);
    return;
  }
  if (m == ninf) {  // empty, or only NaN: the sum is 0 or NaN (then the LSE is NaN, as the reference's)
    T nan_sum = 0;
    for (int64_t c = 0; c < bc; ++c) nan_sum += std::isnan(v[c]) ? v[c] : T(0);
    s_out = nan_sum;
    return;
  }
  s_out = exp_shifted(v, bc, m, static_cast<T*>(nullptr));
}

// ---------------------------------------------------------------- forward
template <typename T>
void forward_impl(const Inputs<T>& in, const Params& prm, at::Tensor a_t, at::Tensor b_t, T* lse, T* rowmax) {
  const int64_t K = static_cast<int64_t>(prm.predicates.size());
  const T ninf = -std::numeric_limits<T>::infinity();
  const Split sp = make_split(in.n, in.m);
  // Partial states per column part: (max, sum) per row and predicate, and the row max of z.
  std::vector<T> pmax(sp.col_parts * in.n * K, ninf), psum(sp.col_parts * in.n * K, 0), prow(sp.col_parts * in.n, ninf);
  at::parallel_for(0, sp.row_parts * sp.col_parts, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor buf = at::empty({kBlockRows * kBlockCols}, a_t.options());
    std::vector<T> fz(kBlockCols), val(kBlockCols);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t rp = task / sp.col_parts, cp = task % sp.col_parts;
      auto [rlo, rhi] = part(in.n, sp.row_parts, rp, kBlockRows);
      auto [clo, chi] = part(in.m, sp.col_parts, cp, kBlockCols);
      for (int64_t r0 = rlo; r0 < rhi; r0 += kBlockRows) {
        const int64_t br = std::min(kBlockRows, rhi - r0);
        for (int64_t c0 = clo; c0 < chi; c0 += kBlockCols) {
          const int64_t bc = std::min(kBlockCols, chi - c0);
          tile_logits(in, prm, a_t, b_t, buf, r0, br, c0, bc);
          const T* z = buf.data_ptr<T>();
          for (int64_t r = 0; r < br; ++r) {
            const int64_t i = r0 + r;
            const T mz = prepare_row(z + r * bc, fz.data(), bc, self_column(prm, i, c0, bc), prm.relu);
            T& row_max = prow[cp * in.n + i];
            row_max = std::max(row_max, mz);
            for (int64_t k = 0; k < K; ++k) {
              T m, s;
              masked_lse_tile(fz.data(), in.lb ? in.lb + c0 : nullptr, in.la ? in.la[i] : 0, prm.predicates[k], bc,
                              val.data(), m, s);
              if (m == ninf && s == T(0)) continue;  // nothing admissible in this tile (a NaN sum goes on)
              T& M = pmax[(cp * in.n + i) * K + k];
              T& S = psum[(cp * in.n + i) * K + k];
              if (m > M) {
                S = S * fast_exp(M - m) + s;
                M = m;
              } else {
                S += s * (m == M ? T(1) : fast_exp(m - M));  // m == M == +inf must not give inf - inf
              }
            }
          }
        }
      }
    }
  });
  // Merge the column parts in order, then the extra logit.
  for (int64_t i = 0; i < in.n; ++i) {
    T mz = ninf;
    for (int64_t cp = 0; cp < sp.col_parts; ++cp) mz = std::max(mz, prow[cp * in.n + i]);
    rowmax[i] = mz;
    for (int64_t k = 0; k < K; ++k) {
      T M = in.extra ? in.extra[i] : ninf;
      for (int64_t cp = 0; cp < sp.col_parts; ++cp) M = std::max(M, pmax[(cp * in.n + i) * K + k]);
      // M = -inf (nothing admissible) gives S = 0 and lse = -inf, or S = NaN (only NaN) and lse = NaN.
      T S = in.extra ? (in.extra[i] == M ? T(1) : std::exp(in.extra[i] - M)) : T(0);
      for (int64_t cp = 0; cp < sp.col_parts; ++cp) {
        const T pm = pmax[(cp * in.n + i) * K + k], ps = psum[(cp * in.n + i) * K + k];
        S += pm != ninf ? ps * (pm == M ? T(1) : std::exp(pm - M)) : ps;  // ps is 0 or NaN when pm = -inf
      }
      lse[i * K + k] = M + std::log(S);
    }
  }
}

// ---------------------------------------------------------------- backward
// dS~_ij = scale * inv_a_i * inv_b_j * f'(z_ij) * sum_k w_ik mask_k exp(f(z_ij) - lse_ik); then
// U = dS~ B (raw rows), V = dS~^T A, and the normalization backward dA_i = U_i - a^_i (a^_i . U_i).
template <typename T>
void backward_impl(const Inputs<T>& in, const Params& prm, at::Tensor a_t, at::Tensor b_t, const T* w,
                   const T* lse, at::Tensor U, at::Tensor V) {
  const int64_t K = static_cast<int64_t>(prm.predicates.size());
  const T ninf = -std::numeric_limits<T>::infinity();
  const Split sp = make_split(in.n, in.m);
  // Row parts write disjoint rows of U but share all of V (and vice versa for column parts): part 0
  // accumulates its share of the shared one into V itself, every other part into its own partial
  // buffer, added to V afterwards in part order (fixed: deterministic).
  const int64_t tasks = sp.row_parts * sp.col_parts;
  at::Tensor Uextra = sp.col_parts > 1 ? at::zeros({sp.col_parts - 1, in.n, in.d}, a_t.options()) : at::Tensor();
  at::Tensor Vextra = sp.row_parts > 1 ? at::zeros({sp.row_parts - 1, in.m, in.d}, a_t.options()) : at::Tensor();
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor buf = at::empty({kBlockRows * kBlockCols}, a_t.options());
    std::vector<T> fz(kBlockCols), g(kBlockCols), e(kBlockCols);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t rp = task / sp.col_parts, cp = task % sp.col_parts;
      auto [rlo, rhi] = part(in.n, sp.row_parts, rp, kBlockRows);
      auto [clo, chi] = part(in.m, sp.col_parts, cp, kBlockCols);
      at::Tensor Ut = cp == 0 ? U : Uextra[cp - 1];
      at::Tensor Vt = rp == 0 ? V : Vextra[rp - 1];
      for (int64_t r0 = rlo; r0 < rhi; r0 += kBlockRows) {
        const int64_t br = std::min(kBlockRows, rhi - r0);
        for (int64_t c0 = clo; c0 < chi; c0 += kBlockCols) {
          const int64_t bc = std::min(kBlockCols, chi - c0);
          tile_logits(in, prm, a_t, b_t, buf, r0, br, c0, bc);
          T* z = buf.data_ptr<T>();
          for (int64_t r = 0; r < br; ++r) {
            const int64_t i = r0 + r;
            T* zr = z + r * bc;
            const int64_t self = self_column(prm, i, c0, bc);
            T* gp = g.data();  // raw pointers: vector::operator[] (with assertions) blocks vectorization
            const T* fp = fz.data();
            prepare_row(zr, fz.data(), bc, self, prm.relu);
            std::fill(gp, gp + bc, T(0));
            for (int64_t k = 0; k < K; ++k) {
              const T l = lse[i * K + k], wk = w[i * K + k];
              if (l == ninf || wk == T(0)) continue;
              const int64_t p = prm.predicates[k];
              // exp first into its own buffer: GCC vectorizes this map, not the fused multiply-add.
              T* ep = e.data();
              exp_shifted(fp, bc, l, ep);
              if (p == kAll) {
#pragma omp simd
                for (int64_t c = 0; c < bc; ++c) gp[c] += wk * ep[c];
              } else {
                const int32_t* lbt = in.lb + c0;
                const int32_t li = in.la[i];
                const bool want_same = p == kSame;
                // A select, not a 0/1 multiply: outside the predicate z may exceed lse_ik by any amount,
                // and exp(z - lse_ik) = inf (float64) or wk * FLT_MAX = inf would make 0 * inf = NaN.
#pragma omp simd
                for (int64_t c = 0; c < bc; ++c) gp[c] += ((lbt[c] == li) == want_same) ? wk * ep[c] : T(0);
              }
            }
            const T sa = static_cast<T>(prm.scale) * in.inv_a[i];
            const T* ib = in.inv_b + c0;
            if (prm.relu) {
#pragma omp simd
              for (int64_t c = 0; c < bc; ++c) zr[c] = static_cast<T>(zr[c] > T(0)) * gp[c] * sa * ib[c];
            } else {
#pragma omp simd
              for (int64_t c = 0; c < bc; ++c) zr[c] = gp[c] * sa * ib[c];
            }
            if (self >= 0) zr[self] = 0;
          }
          auto dS = buf.narrow(0, 0, br * bc).view({br, bc});
          auto Urows = Ut.narrow(0, r0, br);
          Urows.addmm_(dS, b_t.narrow(0, c0, bc));
          auto Vrows = Vt.narrow(0, c0, bc);
          Vrows.addmm_(dS.t(), a_t.narrow(0, r0, br));
        }
      }
    }
  });
  for (int64_t k = 1; k < sp.col_parts; ++k) U.add_(Uextra[k - 1]);
  for (int64_t k = 1; k < sp.row_parts; ++k) V.add_(Vextra[k - 1]);
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& la,
                  const std::optional<at::Tensor>& lb, const std::optional<at::Tensor>& extra,
                  const std::vector<int64_t>& predicates) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "contrastive_lse: a and b must be 2-D, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1), "contrastive_lse: a and b must have the same feature size, got ", a.size(1),
              " and ", b.size(1));
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "contrastive_lse: a and b must have the same dtype");
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), "contrastive_lse: a must be floating point, got ", a.scalar_type());
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "contrastive_lse (CPU kernel): tensors must be on the CPU");
  check_contrastive_args(a, b, la, lb, extra, predicates);
  for (auto* t : {&la, &lb, &extra}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->device().is_cpu(), "contrastive_lse (CPU kernel): labels and extra must be on the CPU");
    }
  }
}

// int64 labels -> dense int32 class ids shared by a and b (so label compares vectorize beside float
// math); only equality between labels matters to the predicates.
std::pair<at::Tensor, at::Tensor> class_ids(const std::optional<at::Tensor>& label_a,
                                            const std::optional<at::Tensor>& label_b) {
  if (!label_a.has_value() || !label_b.has_value()) return {at::Tensor(), at::Tensor()};
  // Labels that fit int32 are their own class ids (a cast keeps equality): one range check and one
  // cast per label, in plain loops (at N = 64 the ATen form, a cat, a min/max, two host reads, a
  // cast and two narrow copies, cost as much as the exp pass). The same tensor for both sides
  // (every self-similarity loss) is converted once. Labels outside int32 are remapped by unique.
  auto a = label_a->detach().contiguous(), b = label_b->detach().contiguous();
  const bool same = label_a->is_same(*label_b);
  auto fits = [](const at::Tensor& l) {
    const int64_t* p = l.data_ptr<int64_t>();
    bool ok = true;
    for (int64_t i = 0; i < l.numel(); ++i)
      ok &= p[i] >= std::numeric_limits<int32_t>::min() && p[i] <= std::numeric_limits<int32_t>::max();
    return ok;
  };
  auto cast = [](const at::Tensor& l) {
    auto ids = at::empty({l.numel()}, l.options().dtype(at::kInt));
    const int64_t* p = l.data_ptr<int64_t>();
    int32_t* q = ids.data_ptr<int32_t>();
    for (int64_t i = 0; i < l.numel(); ++i) q[i] = static_cast<int32_t>(p[i]);
    return ids;
  };
  if (fits(a) && (same || fits(b))) {
    auto ia = cast(a);
    return {ia, same ? ia : cast(b)};
  }
  const int64_t n = a.numel();
  auto both = at::cat({a.view(-1), b.view(-1)});
  auto inverse = std::get<1>(at::_unique(both, /*sorted=*/true, /*return_inverse=*/true)).to(at::kInt);
  return {inverse.narrow(0, 0, n).contiguous(), inverse.narrow(0, n, b.numel()).contiguous()};
}

template <typename T>
Inputs<T> make_inputs(const at::Tensor& a_t, const at::Tensor& b_t, const at::Tensor& inv_a, const at::Tensor& inv_b,
                      const at::Tensor& la, const at::Tensor& lb, const at::Tensor& extra) {
  return Inputs<T>{a_t.data_ptr<T>(),
                   b_t.data_ptr<T>(),
                   inv_a.data_ptr<T>(),
                   inv_b.data_ptr<T>(),
                   la.defined() ? la.data_ptr<int32_t>() : nullptr,
                   lb.defined() ? lb.data_ptr<int32_t>() : nullptr,
                   extra.defined() ? extra.data_ptr<T>() : nullptr,
                   a_t.size(0),
                   b_t.size(0),
                   a_t.size(1)};
}

std::tuple<at::Tensor, at::Tensor> contrastive_lse_cpu(const at::Tensor& a, const at::Tensor& b,
                                                       const std::optional<at::Tensor>& label_a,
                                                       const std::optional<at::Tensor>& label_b,
                                                       const std::optional<at::Tensor>& extra, double scale,
                                                       double bias, bool relu, bool normalize, double eps,
                                                       bool exclude_self, int64_t self_offset,
                                                       at::IntArrayRef predicates) {
  // Below autograd: the ATen calls inside the kernel must not record (or refuse) autograd history.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<int64_t> preds(predicates.begin(), predicates.end());
  check_inputs(a, b, label_a, label_b, extra, preds);
  const auto ct = compute_type(a);
  // detach(): at::parallel_for workers do not inherit the autograd TLS of the guard above.
  auto a_t = a.detach().to(ct).contiguous(), b_t = b.detach().to(ct).contiguous();
  auto inv_a = inverse_norms(a_t, normalize, eps), inv_b = inverse_norms(b_t, normalize, eps);
  auto [la, lb] = class_ids(label_a, label_b);
  at::Tensor ex = extra.has_value() ? extra->detach().to(ct).contiguous() : at::Tensor();
  const int64_t K = static_cast<int64_t>(preds.size());
  auto lse = at::empty({a.size(0), K}, a.options().dtype(ct));
  auto rowmax = at::empty({a.size(0)}, a.options().dtype(ct));
  Params prm{scale, bias, eps, relu, normalize, exclude_self, self_offset, preds};
  AT_DISPATCH_FLOATING_TYPES(ct, "contrastive_lse_cpu", [&] {
    forward_impl<scalar_t>(make_inputs<scalar_t>(a_t, b_t, inv_a, inv_b, la, lb, ex), prm, a_t, b_t,
                           lse.data_ptr<scalar_t>(), rowmax.data_ptr<scalar_t>());
  });
  return {lse, rowmax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_backward_cpu(
    const at::Tensor& grad_lse, const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& label_a,
    const std::optional<at::Tensor>& label_b, const std::optional<at::Tensor>& extra, const at::Tensor& lse,
    double scale, double bias, bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset,
    at::IntArrayRef predicates) {
  // Below autograd: the ATen calls inside the kernel must not record (or refuse) autograd history.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<int64_t> preds(predicates.begin(), predicates.end());
  check_inputs(a, b, label_a, label_b, extra, preds);
  const int64_t K = static_cast<int64_t>(preds.size());
  TORCH_CHECK(grad_lse.sizes() == lse.sizes() && lse.dim() == 2 && lse.size(0) == a.size(0) && lse.size(1) == K,
              "contrastive_lse_backward: grad_lse and lse must have shape (N, K)");
  const auto ct = compute_type(a);
  // detach(): at::parallel_for workers do not inherit the autograd TLS of the guard above.
  auto a_t = a.detach().to(ct).contiguous(), b_t = b.detach().to(ct).contiguous();
  auto inv_a = inverse_norms(a_t, normalize, eps), inv_b = inverse_norms(b_t, normalize, eps);
  auto [la, lb] = class_ids(label_a, label_b);
  at::Tensor ex = extra.has_value() ? extra->detach().to(ct).contiguous() : at::Tensor();
  auto w = grad_lse.to(ct).contiguous(), l = lse.to(ct).contiguous();
  auto U = at::zeros_like(a_t), V = at::zeros_like(b_t);
  Params prm{scale, bias, eps, relu, normalize, exclude_self, self_offset, preds};
  AT_DISPATCH_FLOATING_TYPES(ct, "contrastive_lse_backward_cpu", [&] {
    backward_impl<scalar_t>(make_inputs<scalar_t>(a_t, b_t, inv_a, inv_b, la, lb, ex), prm, a_t, b_t,
                            w.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), U, V);
  });
  auto grad_a = normalization_backward(a_t, inv_a, U, normalize, eps).to(a.scalar_type());
  auto grad_b = normalization_backward(b_t, inv_b, V, normalize, eps).to(b.scalar_type());
  // d lse_ik / d extra_i = exp(extra_i - lse_ik) (0 for an empty set, lse = -inf).
  at::Tensor grad_extra;
  if (extra.has_value()) {
    auto p = (ex.unsqueeze(1) - l).exp();
    p = at::where(at::isfinite(l), p, at::zeros_like(p));
    grad_extra = (w * p).sum(1).to(extra->scalar_type());
  } else {
    grad_extra = at::zeros({a.size(0)}, a.options().dtype(ct));
  }
  return {grad_a, grad_b, grad_extra};
}

// ---------------------------------------------------------------- score budget: save or recompute
// fastgan::contrastive_lse_budget keeps the N x M logits z (the "scores") when they fit in
// score_budget bytes: the forward is then one BLAS product plus row sweeps, and the backward one
// elementwise pass plus the gradient products (two, or one when b is a: dA = (G + G^T) A), against
// three products for the recompute path. Beyond the budget it falls back to the tiled kernels above
// (extra memory O((N + M) D)). `columns` adds the column log-sum-exps (CLIP-style losses): from the
// same saved scores, or from a second tiled sweep with a and b swapped.

inline bool keep_scores(int64_t n, int64_t m, int64_t elem_size, int64_t budget) {
  // Same rule as fastgan/ops/contrastive_lse.py:_keeps_scores (the fake kernel's output shape).
  return n > 0 && m > 0 && budget > 0 && n * m <= budget / elem_size;
}

// Row log-sum-exps of stored logits Z (n x m, row-major), one row per task: the same per-row
// arithmetic as forward_impl with a single column part (deterministic for any thread count).
template <typename T>
void rows_lse_from_scores(const T* Z, int64_t n, int64_t m, const int32_t* la, const int32_t* lb, const T* extra,
                          const Params& prm, T* lse, T* rowmax) {
  const int64_t K = static_cast<int64_t>(prm.predicates.size());
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, n, row_grain(m * K, 8), [&](int64_t i0, int64_t i1) {
    std::vector<T> fz(m), val(m);
    for (int64_t i = i0; i < i1; ++i) {
      const T mz = prepare_row(Z + i * m, fz.data(), m, self_column(prm, i, 0, m), prm.relu);
      if (rowmax) rowmax[i] = mz;
      for (int64_t k = 0; k < K; ++k) {
        T pm, ps;
        masked_lse_tile(fz.data(), lb, la ? la[i] : 0, prm.predicates[k], m, val.data(), pm, ps);
        T M = extra ? std::max(extra[i], pm) : pm;
        T S = extra ? (extra[i] == M ? T(1) : std::exp(extra[i] - M)) : T(0);
        S += pm != ninf ? ps * (pm == M ? T(1) : std::exp(pm - M)) : ps;
        lse[i * K + k] = M + std::log(S);
      }
    }
  });
}

// Column log-sum-exps of stored logits Z (n x m) without transposing Z: per column chunk (one task
// each, a fixed split: deterministic), a max pass and a sum pass down the rows, vectorized along the
// contiguous columns. Column j's self row is the element row i's prepare_row already excludes.
// An empty set gives -inf, a set with only NaN and -inf NaN, a +inf entry +inf (masked_lse_tile's rules).
template <typename T>
void cols_lse_from_scores(const T* Z, int64_t n, int64_t m, const int32_t* la, const int32_t* lb, const Params& prm,
                          T* lse /* m x K */) {
  const int64_t K = static_cast<int64_t>(prm.predicates.size());
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t chunks = n * m < kMinTaskWork ? 1 : std::max<int64_t>(1, std::min(threads, (m + 63) / 64));
  at::parallel_for(0, chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      auto [c0, c1] = part(m, chunks, t, 16);
      const int64_t bc = c1 - c0;
      if (bc <= 0) continue;
      std::vector<T> fz(bc), mx(bc * K, ninf), sm(bc * K, T(0)), v(bc);
      std::vector<char> nan(bc * K, 0);
      for (int pass = 0; pass < 2; ++pass) {
        for (int64_t i = 0; i < n; ++i) {
          prepare_row(Z + i * m + c0, fz.data(), bc, self_column(prm, i, c0, bc), prm.relu);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t p = prm.predicates[k];
            const T* val = fz.data();
            if (p != kAll) {
              const bool want_same = p == kSame;
              const int32_t li = la[i];
              T* vp = v.data();
              const T* fp = fz.data();
              const int32_t* lbc = lb + c0;
#pragma omp simd
              for (int64_t c = 0; c < bc; ++c) vp[c] = ((lbc[c] == li) == want_same) ? fp[c] : ninf;
              val = v.data();
            }
            T* M = mx.data() + k * bc;
            if (pass == 0) {
              char* nn = nan.data() + k * bc;
#pragma omp simd
              for (int64_t c = 0; c < bc; ++c) {
                M[c] = val[c] > M[c] ? val[c] : M[c];  // skips NaN
                nn[c] |= std::isnan(val[c]);
              }
            } else {
              T* S = sm.data() + k * bc;
#pragma omp simd
              for (int64_t c = 0; c < bc; ++c) {
                const bool finite = M[c] != ninf && M[c] != -ninf;
                S[c] += finite ? fast_exp(val[c] - M[c]) : T(0);
              }
            }
          }
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t c = 0; c < bc; ++c) {
          const T M = mx[k * bc + c];
          T out;
          if (M == -ninf) out = M;
          else if (M == ninf) out = nan[k * bc + c] ? std::numeric_limits<T>::quiet_NaN() : ninf;
          else out = M + std::log(sm[k * bc + c]);
          lse[(c0 + c) * K + k] = out;
        }
      }
    }
  });
}

// z = scale inv_a_i inv_b_j (a_i . b_j) + bias for all (i, j): one BLAS product (half of one when b
// is a: common.h's self_product), one scaling pass (the same operation order as tile_logits).
template <typename T>
at::Tensor all_logits(const at::Tensor& a_t, const at::Tensor& b_t, const T* inv_a, const T* inv_b,
                      const Params& prm) {
  at::Tensor Z = a_t.is_same(b_t) ? self_product(a_t) : gemm(a_t, b_t.t());
  const int64_t n = Z.size(0), m = Z.size(1);
  T* z = Z.data_ptr<T>();
  const T scale = static_cast<T>(prm.scale), bias = static_cast<T>(prm.bias);
  at::parallel_for(0, n, row_grain(m, 16), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T sa = scale * inv_a[i];
      T* zr = z + i * m;
#pragma omp simd
      for (int64_t c = 0; c < m; ++c) zr[c] = zr[c] * sa * inv_b[c] + bias;
    }
  });
  return Z;
}

// G_ij = scale inv_a_i inv_b_j f'(z_ij) (sum_k w_ik [pred_k] e^{f(z_ij) - lse_ik}
//                                       + sum_k wc_jk [pred_k] e^{f(z_ij) - lsec_jk})
// from the stored logits; the column terms only when wc (the column weights) is given.
template <typename T>
at::Tensor score_gradient(const at::Tensor& Z, const Inputs<T>& in, const Params& prm, const T* w, const T* lse,
                          const T* wc, const T* lsec) {
  const int64_t K = static_cast<int64_t>(prm.predicates.size());
  const int64_t n = in.n, m = in.m;
  const T ninf = -std::numeric_limits<T>::infinity();
  at::Tensor G = at::empty_like(Z);
  const T* z = Z.data_ptr<T>();
  T* gout = G.data_ptr<T>();
  at::parallel_for(0, n, row_grain(m * K, 8), [&](int64_t i0, int64_t i1) {
    std::vector<T> fz(m), g(m), e(m), sh(m);
    T* gp = g.data();
    T* ep = e.data();
    T* shp = sh.data();
    const T* fp = fz.data();
    for (int64_t i = i0; i < i1; ++i) {
      const T* zr = z + i * m;
      const int64_t self = self_column(prm, i, 0, m);
      prepare_row(zr, fz.data(), m, self, prm.relu);
      std::fill(gp, gp + m, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const int64_t p = prm.predicates[k];
        const bool want_same = p == kSame;
        const int32_t li = in.la ? in.la[i] : 0;
        const T l = lse[i * K + k], wk = w[i * K + k];
        if (!(l == ninf || wk == T(0))) {
          exp_shifted(fp, m, l, ep);
          if (p == kAll) {
#pragma omp simd
            for (int64_t c = 0; c < m; ++c) gp[c] += wk * ep[c];
          } else {
            // A select, not a 0/1 multiply (see backward_impl).
#pragma omp simd
            for (int64_t c = 0; c < m; ++c) gp[c] += ((in.lb[c] == li) == want_same) ? wk * ep[c] : T(0);
          }
        }
        if (wc) {
          // Column j's own shift lsec_jk: exp(f(z) - lsec) per element; skipped (selected out, never
          // multiplied by 0) where the column's set is empty (lsec = -inf) or its weight is 0.
#pragma omp simd
          for (int64_t c = 0; c < m; ++c) shp[c] = fp[c] - lsec[c * K + k];
          exp_shifted(shp, m, T(0), ep);
          if (p == kAll) {
#pragma omp simd
            for (int64_t c = 0; c < m; ++c) {
              const T wj = wc[c * K + k];
              gp[c] += (lsec[c * K + k] != ninf && wj != T(0)) ? wj * ep[c] : T(0);
            }
          } else {
#pragma omp simd
            for (int64_t c = 0; c < m; ++c) {
              const T wj = wc[c * K + k];
              const bool on = lsec[c * K + k] != ninf && wj != T(0) && ((in.lb[c] == li) == want_same);
              gp[c] += on ? wj * ep[c] : T(0);
            }
          }
        }
      }
      const T sa = static_cast<T>(prm.scale) * in.inv_a[i];
      T* gr = gout + i * m;
      if (prm.relu) {
#pragma omp simd
        for (int64_t c = 0; c < m; ++c) gr[c] = static_cast<T>(zr[c] > T(0)) * gp[c] * sa * in.inv_b[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < m; ++c) gr[c] = gp[c] * sa * in.inv_b[c];
      }
      if (self >= 0) gr[self] = 0;
    }
  });
  return G;
}

// ---- both directions with a known bound (CLIP-style: all columns, normalized rows, no relu, no
// self exclusion, no extra). Then z = scale cos + bias lies in [c - 2|scale|, c] with c = |scale| +
// bias, so one fixed shift serves every row and every column: e = exp(z - c) >= exp(-2|scale|) is
// a normal float (no underflow) as long as 2|scale| <= kBoundedRange, and
//   lse_row_i = c + log sum_j e_ij,  lse_col_j = c + log sum_i e_ij
// come from ONE exp per element in one sweep (instead of a max and an exp per element and
// direction). The kept scores are then E = e itself, and the backward needs no exp at all:
//   e^{z_ij - lse_i} = e_ij exp(c - lse_i),  e^{z_ij - lsec_j} = e_ij exp(c - lsec_j),
// with both factors <= exp(2|scale|) (finite). Rounding: a few ulps per term (float32 ~1e-7).
constexpr double kBoundedRange = 60.0;  // exp(-60) ~ 1e-26, far above float32's 1e-38

// Two independent products (CLIP's backward, dA = G B and dB = G^T A) run one per thread side by
// side rather than each split over the threads in turn, up to this many multiply-adds each (n m d):
// with more than two threads up to kSmallProducts (64 x 64 x 512 is 2M; there a split product
// spends as long in its fork/join as in arithmetic), with exactly two up to kTwoThreadProducts.
// Measured with two threads on an AVX2 AMD EPYC, CLIP at 256 x 768 (50M each): 3.3 ms a step
// instead of 3.7 (1.37x torch.compile instead of 1.24x); at 1024 x 768 (805M) both ways cost the
// same, and side by side would leave more threads idle.
constexpr int64_t kSmallProducts = int64_t(1) << 23;
constexpr int64_t kTwoThreadProducts = int64_t(1) << 27;

inline bool side_by_side(int64_t multiply_adds) {
  const int64_t threads = at::get_num_threads();
  return threads >= 2 && multiply_adds <= (threads == 2 ? kTwoThreadProducts : kSmallProducts);
}

inline bool bounded_both(const Params& prm, bool columns, bool has_extra) {
  return columns && !has_extra && prm.normalize && !prm.relu && !prm.exclude_self && prm.predicates.size() == 1 &&
         prm.predicates[0] == kAll && std::isfinite(prm.bias) && 2.0 * std::abs(prm.scale) <= kBoundedRange;
}

inline double bounded_shift(const Params& prm) { return std::abs(prm.scale) + prm.bias; }

// E = exp(z - c) in place of the product, row and column LSEs (lse: (n + m) x 1), rowmax = max_j z_ij.
// Rows are split into a fixed number of parts (the thread count), each with its own column sums,
// added in part order: deterministic for a given thread count. The product is one call split over
// the threads (each part multiplying its own rows on its thread measured slower: 0.93 ms against
// 0.80 for this forward at 256 x 768, two threads).
template <typename T>
at::Tensor bounded_both_forward(const at::Tensor& a_t, const at::Tensor& b_t, const T* inv_a, const T* inv_b,
                                const Params& prm, T* lse, T* rowmax, T* diag /* z_ii (N = M), or null */) {
  at::Tensor E = a_t.is_same(b_t) ? self_product(a_t) : gemm(a_t, b_t.t());
  const int64_t n = E.size(0), m = E.size(1);
  T* e = E.data_ptr<T>();
  const T scale = static_cast<T>(prm.scale), bias = static_cast<T>(prm.bias);
  const T c0 = static_cast<T>(bounded_shift(prm));
  const int64_t parts = n * m < kMinTaskWork ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  std::vector<T> colsum(parts * m, T(0));
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const auto [r0, r1] = part(n, parts, p, 1);
      T* S = colsum.data() + p * m;
      for (int64_t i = r0; i < r1; ++i) {
        const T sa = scale * inv_a[i];
        T* er = e + i * m;
#pragma omp simd
        for (int64_t c = 0; c < m; ++c) er[c] = er[c] * sa * inv_b[c] + bias;  // z, as all_logits
        rowmax[i] = reduce_max(er, m);
        if (diag) diag[i] = er[i];
#pragma omp simd
        for (int64_t c = 0; c < m; ++c) er[c] -= c0;
        const T rs = exp_shifted(er, m, T(0), er);
#pragma omp simd
        for (int64_t c = 0; c < m; ++c) S[c] += er[c];
        lse[i] = c0 + std::log(rs);
      }
    }
  });
  for (int64_t j = 0; j < m; ++j) {
    T cs = 0;
    for (int64_t p = 0; p < parts; ++p) cs += colsum[p * m + j];
    lse[n + j] = c0 + std::log(cs);
  }
  return E;
}

// G_ij = scale inv_a_i inv_b_j E_ij (w_i exp(c - lse_i) + wc_j exp(c - lsec_j)) from the kept E.
template <typename T>
at::Tensor bounded_both_gradient(const at::Tensor& E, const T* inv_a, const T* inv_b, const Params& prm, const T* w,
                                 const T* lse, const T* pw /* d loss / d z_ii (N = M), or null */) {
  const int64_t n = E.size(0), m = E.size(1);
  const T c0 = static_cast<T>(bounded_shift(prm)), scale = static_cast<T>(prm.scale);
  std::vector<T> q(m);  // the column factors wc_j exp(c - lsec_j)
  for (int64_t j = 0; j < m; ++j) q[j] = w[n + j] * std::exp(c0 - lse[n + j]);
  at::Tensor G = RecyclingCPUAllocator::empty(E.sizes(), E.scalar_type());  // as gemm's
  const T* e = E.data_ptr<T>();
  T* g = G.data_ptr<T>();
  const T* qp = q.data();
  at::parallel_for(0, n, row_grain(m, 8), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T r = w[i] * std::exp(c0 - lse[i]), sa = scale * inv_a[i];
      const T* er = e + i * m;
      T* gr = g + i * m;
#pragma omp simd
      for (int64_t c = 0; c < m; ++c) gr[c] = er[c] * (r + qp[c]) * sa * inv_b[c];
      if (pw) gr[i] += pw[i] * sa * inv_b[i];
    }
  });
  return G;
}

// ---- rows of b = a with the same bound (2C, NT-Xent, SupCon: normalized, no relu, self offset 0,
// any predicates and extra): one exp per element, e = exp(z - c) with the self column at 0, then a
// masked sum per predicate, lse_ik = logaddexp(extra_i, c + log sum_j [pred_k] e_ij) (-inf for an
// empty set). The kept scores are E; the backward's H = G + G^T needs no exp:
//   H_ij = scale inv_i inv_j e_ij sum_k [pred_k(i, j)] (f_ik + f_jk),  f_ik = w_ik exp(c - lse_ik)
// (f = 0 where the set is empty or the weight 0: selected out, never inf * 0). The predicates are
// symmetric in i and j (same / other label / all), so row j's term at column i has the same mask.
inline bool bounded_self(const Params& prm, bool b_is_a, bool columns) {
  return b_is_a && !columns && prm.self_offset == 0 && prm.normalize && !prm.relu && std::isfinite(prm.bias) &&
         2.0 * std::abs(prm.scale) <= kBoundedRange;
}

template <typename T>
at::Tensor bounded_self_forward(const at::Tensor& a_t, const Inputs<T>& in, const Params& prm, T* lse, T* rowmax,
                                PositiveSet pset, T* psum, int64_t* pcount) {
  at::Tensor E = self_product(a_t);
  const int64_t n = E.size(0), K = static_cast<int64_t>(prm.predicates.size());
  T* e = E.data_ptr<T>();
  const T scale = static_cast<T>(prm.scale), bias = static_cast<T>(prm.bias);
  const T c0 = static_cast<T>(bounded_shift(prm)), ninf = -std::numeric_limits<T>::infinity();
  const T* inv = in.inv_a;
  at::parallel_for(0, n, row_grain(n * K, 8), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T sa = scale * inv[i];
      T* er = e + i * n;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) er[c] = er[c] * sa * inv[c] + bias;  // z, as all_logits
      const int64_t self = prm.exclude_self ? i : -1;
      rowmax[i] = self < 0 ? reduce_max(er, n) : std::max(reduce_max(er, i), reduce_max(er + i + 1, n - i - 1));
      if (pset == PositiveSet::Partner) {
        psum[i] = er[(i + n / 2) % n];
      } else if (pset == PositiveSet::SameClass) {
        const int32_t li = in.la[i];
        T ps = 0;
        int64_t cnt = 0;
#pragma omp simd reduction(+ : ps, cnt)
        for (int64_t c = 0; c < n; ++c) {
          const bool on = in.lb[c] == li && c != i;
          ps += on ? er[c] : T(0);
          cnt += on;
        }
        psum[i] = ps;
        pcount[i] = cnt;
      }
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) er[c] -= c0;
      exp_shifted(er, n, T(0), er);
      if (self >= 0) er[self] = 0;  // summed without it: e_ii = 1 would swamp the others
      const int32_t li = in.la ? in.la[i] : 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t p = prm.predicates[k];
        T rs = 0;
        if (p == kAll) {
#pragma omp simd reduction(+ : rs)
          for (int64_t c = 0; c < n; ++c) rs += er[c];
        } else {
          const bool want_same = p == kSame;
#pragma omp simd reduction(+ : rs)
          for (int64_t c = 0; c < n; ++c) rs += ((in.lb[c] == li) == want_same) ? er[c] : T(0);
        }
        // rs = 0: the empty set (-inf); NaN propagates (neither comparison holds).
        T l = rs > T(0) ? c0 + std::log(rs) : (rs == T(0) ? ninf : std::numeric_limits<T>::quiet_NaN());
        if (in.extra) {
          const T x = in.extra[i];
          const T M = std::max(x, l);
          l = l == ninf ? x : M + std::log(std::exp(x - M) + std::exp(l - M));
        }
        lse[i * K + k] = l;
      }
    }
  });
  return E;
}

template <typename T>
at::Tensor bounded_self_gradient(const at::Tensor& E, const Inputs<T>& in, const Params& prm, const T* w,
                                 const T* lse, PositiveSet pset, const T* pw) {
  const int64_t n = E.size(0), K = static_cast<int64_t>(prm.predicates.size());
  const T c0 = static_cast<T>(bounded_shift(prm)), scale = static_cast<T>(prm.scale);
  const T ninf = -std::numeric_limits<T>::infinity();
  std::vector<T> f(K * n);  // f[k * n + i]: predicate-major, contiguous along the columns
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const T l = lse[i * K + k], wk = w[i * K + k];
      f[k * n + i] = (l == ninf || wk == T(0)) ? T(0) : wk * std::exp(c0 - l);
    }
  }
  at::Tensor H = RecyclingCPUAllocator::empty(E.sizes(), E.scalar_type());  // as gemm's
  const T* e = E.data_ptr<T>();
  T* h = H.data_ptr<T>();
  const T* inv = in.inv_a;
  at::parallel_for(0, n, row_grain(n * K, 8), [&](int64_t i0, int64_t i1) {
    std::vector<T> acc(n);
    T* ac = acc.data();
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(ac, ac + n, T(0));
      const int32_t li = in.la ? in.la[i] : 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t p = prm.predicates[k];
        const T* fk = f.data() + k * n;
        const T fi = fk[i];
        if (p == kAll) {
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) ac[c] += fi + fk[c];
        } else {
          const bool want_same = p == kSame;
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) ac[c] += ((in.lb[c] == li) == want_same) ? fi + fk[c] : T(0);
        }
      }
      const T sa = scale * inv[i];
      const T* er = e + i * n;
      T* hr = h + i * n;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) hr[c] = er[c] * ac[c] * sa * inv[c];
      // The positives' terms, symmetrized as the rest: row i's P_i holds z_ij and row j's P_j holds
      // z_ji for the same pairs (the sets are symmetric), so H_ij gets pw_i + pw_j.
      if (pset == PositiveSet::Partner) {
        const int64_t j = (i + n / 2) % n;
        hr[j] += (pw[i] + pw[j]) * sa * inv[j];
      } else if (pset == PositiveSet::SameClass) {
        const T pi = pw[i];
#pragma omp simd
        for (int64_t c = 0; c < n; ++c) hr[c] += in.lb[c] == li ? (pi + pw[c]) * sa * inv[c] : T(0);
      }
      if (prm.exclude_self) hr[i] = 0;
    }
  });
  return H;
}

// G <- G + G^T in place (square G); common.h's walker gives each unordered pair to one task.
template <typename T>
void symmetrize_(at::Tensor& G) {
  const int64_t n = G.size(0);
  T* g = G.data_ptr<T>();
  for_each_upper_pair(n, [g, n](int64_t i, int64_t j) {
    const T s = g[i * n + j] + g[j * n + i];
    g[i * n + j] = s;
    g[j * n + i] = s;
  });
}

void check_budget_args(const std::optional<at::Tensor>& extra, bool columns) {
  TORCH_CHECK(!(columns && extra.has_value()), "contrastive_lse_budget: columns does not take an extra logit");
}

Params swapped(const Params& prm) {
  Params p = prm;
  p.self_offset = -prm.self_offset;  // column j's excluded row is i = j - self_offset
  return p;
}

}  // namespace

bool positive_in_scores(PositiveSet set, bool scores_kept, bool b_is_a, double scale, double bias, bool relu,
                        bool normalize, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
                        bool columns, bool has_extra) {
  if (set == PositiveSet::None || !scores_kept) return false;
  Params prm{scale, bias, 0.0, relu, normalize, exclude_self, self_offset, std::vector<int64_t>(predicates.begin(), predicates.end())};
  if (set == PositiveSet::Diagonal) return !b_is_a && bounded_both(prm, columns, has_extra);
  return bounded_self(prm, b_is_a, columns);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_cpu(
    const at::Tensor& a, const std::optional<at::Tensor>& b_opt, const std::optional<at::Tensor>& label_a,
    const std::optional<at::Tensor>& label_b, const std::optional<at::Tensor>& extra, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns, int64_t score_budget, PositiveSet positives, at::Tensor* pos, at::Tensor* count) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<int64_t> preds(predicates.begin(), predicates.end());
  const bool b_is_a = !b_opt.has_value();  // b = None: the columns are a's rows (self-similarity)
  const at::Tensor& b = b_is_a ? a : *b_opt;
  check_inputs(a, b, label_a, label_b, extra, preds);
  check_budget_args(extra, columns);
  const auto ct = compute_type(a);
  auto a_t = a.detach().to(ct).contiguous();
  auto b_t = b_is_a ? a_t : b.detach().to(ct).contiguous();
  auto inv_a = inverse_norms(a_t, normalize, eps);
  auto inv_b = b_is_a ? inv_a : inverse_norms(b_t, normalize, eps);
  auto [la, lb] = class_ids(label_a, label_b);
  at::Tensor ex = extra.has_value() ? extra->detach().to(ct).contiguous() : at::Tensor();
  const int64_t n = a.size(0), m = b.size(0), K = static_cast<int64_t>(preds.size());
  auto lse = at::empty({columns ? n + m : n, K}, a.options().dtype(ct));
  auto rowmax = at::empty({n}, a.options().dtype(ct));
  at::Tensor scores;
  Params prm{scale, bias, eps, relu, normalize, exclude_self, self_offset, preds};
  const bool kept = keep_scores(n, m, c10::elementSize(ct), score_budget);
  const bool take_pos = positive_in_scores(positives, kept, b_is_a, scale, bias, relu, normalize, exclude_self,
                                           self_offset, preds, columns, extra.has_value());
  TORCH_CHECK(!take_pos || (pos != nullptr && (positives != PositiveSet::SameClass || (count && la.defined()))),
              "contrastive_lse_budget: positives need an output (and labels for SameClass)");
  TORCH_CHECK(!take_pos || positives == PositiveSet::SameClass || (n == m && (positives != PositiveSet::Partner || n % 2 == 0)),
              "contrastive_lse_budget: Diagonal needs N = M, Partner an even N");
  if (take_pos) {
    *pos = at::empty({n}, a.options().dtype(ct));
    if (positives == PositiveSet::SameClass) *count = at::empty({n}, a.options().dtype(at::kLong));
  }
  AT_DISPATCH_FLOATING_TYPES(ct, "contrastive_lse_budget_cpu", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(a_t, b_t, inv_a, inv_b, la, lb, ex);
    T* L = lse.data_ptr<T>();
    T* P = take_pos ? pos->data_ptr<T>() : nullptr;
    if (kept && bounded_both(prm, columns, extra.has_value())) {
      scores = bounded_both_forward<T>(a_t, b_t, in.inv_a, in.inv_b, prm, L, rowmax.data_ptr<T>(), P);  // E, not z
    } else if (kept && bounded_self(prm, b_is_a, columns)) {
      scores = bounded_self_forward<T>(a_t, in, prm, L, rowmax.data_ptr<T>(), take_pos ? positives : PositiveSet::None,
                                       P, take_pos && count->defined() ? count->data_ptr<int64_t>() : nullptr);  // E
    } else if (kept) {
      scores = all_logits<T>(a_t, b_t, in.inv_a, in.inv_b, prm);
      rows_lse_from_scores<T>(scores.data_ptr<T>(), n, m, in.la, in.lb, in.extra, prm, L, rowmax.data_ptr<T>());
      if (columns) cols_lse_from_scores<T>(scores.data_ptr<T>(), n, m, in.la, in.lb, prm, L + n * K);
    } else {
      scores = at::empty({0}, a_t.options());
      forward_impl<T>(in, prm, a_t, b_t, L, rowmax.data_ptr<T>());
      if (columns) {
        auto colmax = at::empty({m}, a_t.options());
        const auto in_t = make_inputs<T>(b_t, a_t, inv_b, inv_a, lb, la, at::Tensor());
        forward_impl<T>(in_t, swapped(prm), b_t, a_t, L + n * K, colmax.data_ptr<T>());
      }
    }
  });
  return {lse, rowmax, scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_backward_cpu(
    const at::Tensor& grad_lse, const at::Tensor& a, const std::optional<at::Tensor>& b_opt,
    const std::optional<at::Tensor>& label_a, const std::optional<at::Tensor>& label_b,
    const std::optional<at::Tensor>& extra, const at::Tensor& lse, const at::Tensor& scores, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns, PositiveSet positives, const at::Tensor& pos_weight) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<int64_t> preds(predicates.begin(), predicates.end());
  const bool b_is_a = !b_opt.has_value();
  const at::Tensor& b = b_is_a ? a : *b_opt;
  check_inputs(a, b, label_a, label_b, extra, preds);
  check_budget_args(extra, columns);
  const int64_t n = a.size(0), m = b.size(0), K = static_cast<int64_t>(preds.size());
  const int64_t rows = columns ? n + m : n;
  TORCH_CHECK(grad_lse.sizes() == lse.sizes() && lse.dim() == 2 && lse.size(0) == rows && lse.size(1) == K,
              "contrastive_lse_budget_backward: grad_lse and lse must have shape (", rows, ", ", K, ")");
  const bool saved = scores.numel() > 0;
  TORCH_CHECK(!saved || (scores.dim() == 2 && scores.size(0) == n && scores.size(1) == m && scores.is_contiguous()),
              "contrastive_lse_budget_backward: scores must be the forward's (N, M) scores or empty");
  const auto ct = compute_type(a);
  auto a_t = a.detach().to(ct).contiguous();
  auto b_t = b_is_a ? a_t : b.detach().to(ct).contiguous();
  auto inv_a = inverse_norms(a_t, normalize, eps);
  auto inv_b = b_is_a ? inv_a : inverse_norms(b_t, normalize, eps);
  auto [la, lb] = class_ids(label_a, label_b);
  at::Tensor ex = extra.has_value() ? extra->detach().to(ct).contiguous() : at::Tensor();
  auto w = grad_lse.to(ct).contiguous(), l = lse.to(ct).contiguous();
  Params prm{scale, bias, eps, relu, normalize, exclude_self, self_offset, preds};
  const bool fused_pos = pos_weight.defined();
  TORCH_CHECK(!fused_pos || (positive_in_scores(positives, saved, b_is_a, scale, bias, relu, normalize, exclude_self,
                                                self_offset, preds, columns, extra.has_value()) &&
                             pos_weight.dim() == 1 && pos_weight.size(0) == n),
              "contrastive_lse_budget_backward: pos_weight only where the forward took the positives from the scores");
  at::Tensor pw = fused_pos ? pos_weight.to(ct).contiguous() : at::Tensor();
  at::Tensor U, V;  // raw-row gradients of a and b (before the normalization backward)
  AT_DISPATCH_FLOATING_TYPES(ct, "contrastive_lse_budget_backward_cpu", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(a_t, b_t, inv_a, inv_b, la, lb, ex);
    const T* W = w.data_ptr<T>();
    const T* L = l.data_ptr<T>();
    if (saved) {
      TORCH_CHECK(scores.scalar_type() == ct, "contrastive_lse_budget_backward: scores dtype mismatch");
      if (bounded_both(prm, columns, extra.has_value())) {
        at::Tensor G = bounded_both_gradient<T>(scores, in.inv_a, in.inv_b, prm, W, L,
                                                fused_pos ? pw.data_ptr<T>() : nullptr);  // scores hold E
        if (!b_is_a && side_by_side(n * m * a_t.size(1))) {
          // The two products side by side, one task each (side_by_side).
          at::parallel_for(0, 2, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t side = t0; side < t1; ++side) {
              if (side == 0) {
                U = gemm(G, b_t);
              } else {
                V = gemm(G.t(), a_t);
              }
            }
          });
          return;
        }
        U = gemm(G, b_t);
        V = gemm(G.t(), a_t);
        if (b_is_a) U.add_(V);
        return;
      }
      if (bounded_self(prm, b_is_a, columns)) {
        U = gemm(bounded_self_gradient<T>(scores, in, prm, W, L, fused_pos ? positives : PositiveSet::None,
                                          fused_pos ? pw.data_ptr<T>() : nullptr),
                 a_t);  // scores hold E
        return;
      }
      if (b_is_a && !columns && self_offset == 0) {
        // dA = (G + G^T) A. With b = a and the diagonal as the self column, G^T_ij = G_ji is row j's
        // term at column i, i.e. the columns' term of score_gradient with the rows' own weights and
        // LSEs (z_ji = z_ij up to rounding): one pass forms G + G^T, one product.
        at::Tensor H = score_gradient<T>(scores, in, prm, W, L, W, L);
        U = gemm(H, a_t);
        return;
      }
      at::Tensor G = score_gradient<T>(scores, in, prm, W, L, columns ? W + n * K : nullptr,
                                       columns ? L + n * K : nullptr);
      if (b_is_a) {
        symmetrize_<T>(G);  // dA = G A + G^T A = (G + G^T) A: one product
        U = gemm(G, a_t);
      } else {
        U = gemm(G, b_t);
        V = gemm(G.t(), a_t);
      }
    } else {
      U = at::zeros_like(a_t);
      V = at::zeros_like(b_t);
      backward_impl<T>(in, prm, a_t, b_t, W, L, U, V);
      if (columns) {
        const auto in_t = make_inputs<T>(b_t, a_t, inv_b, inv_a, lb, la, at::Tensor());
        backward_impl<T>(in_t, swapped(prm), b_t, a_t, W + n * K, L + n * K, V, U);
      }
      if (b_is_a) U.add_(V);
    }
  });
  // U and V are this function's own buffers: the normalization backward overwrites them.
  auto grad_a = normalization_backward(a_t, inv_a, U, normalize, eps, true).to(a.scalar_type());
  auto grad_b = b_is_a ? at::empty({0}, a.options())
                       : normalization_backward(b_t, inv_b, V, normalize, eps, true).to(b.scalar_type());
  at::Tensor grad_extra;
  if (extra.has_value()) {
    // d lse_ik / d extra_i = exp(extra_i - lse_ik) (0 where lse_ik is not finite), weighted and summed
    // over k: one loop over N x K (the ATen form is eight ops).
    grad_extra = at::empty({n}, ex.options());
    AT_DISPATCH_FLOATING_TYPES(ct, "contrastive_lse_budget_grad_extra", [&] {
      using T = scalar_t;
      const T* W = w.data_ptr<T>();
      const T* L = l.data_ptr<T>();
      const T* X = ex.data_ptr<T>();
      T* G = grad_extra.data_ptr<T>();
      for (int64_t i = 0; i < n; ++i) {
        T acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          const T lk = L[i * K + k];
          acc += W[i * K + k] * (std::isfinite(lk) ? std::exp(X[i] - lk) : T(0));
        }
        G[i] = acc;
      }
    });
    grad_extra = grad_extra.to(extra->scalar_type());
  } else {
    grad_extra = at::zeros({n}, a.options().dtype(ct));
  }
  return {grad_a, grad_b, grad_extra};
}

namespace {

// The registered ops: the kernels above without positives (the schema has none).
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_op(
    const at::Tensor& a, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& label_a,
    const std::optional<at::Tensor>& label_b, const std::optional<at::Tensor>& extra, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns, int64_t score_budget) {
  return contrastive_lse_budget_cpu(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self,
                                    self_offset, predicates, columns, score_budget);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_backward_op(
    const at::Tensor& grad_lse, const at::Tensor& a, const std::optional<at::Tensor>& b,
    const std::optional<at::Tensor>& label_a, const std::optional<at::Tensor>& label_b,
    const std::optional<at::Tensor>& extra, const at::Tensor& lse, const at::Tensor& scores, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns) {
  return contrastive_lse_budget_backward_cpu(grad_lse, a, b, label_a, label_b, extra, lse, scores, scale, bias, relu,
                                             normalize, eps, exclude_self, self_offset, predicates, columns);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("contrastive_lse", &contrastive_lse_cpu);
  m.impl("contrastive_lse_backward", &contrastive_lse_backward_cpu);
  m.impl("contrastive_lse_budget", &contrastive_lse_budget_op);
  m.impl("contrastive_lse_budget_backward", &contrastive_lse_budget_backward_op);
}

}  // namespace fastgan
