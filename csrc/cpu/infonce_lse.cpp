// Fused CPU kernel of fastgan::infonce_lse and its backward: InfoMax-GAN's local x global InfoNCE
// (docs/semantics.md section 6; contract: fastgan/reference/infonce.py:infonce_lse).
//
// With m^_i = m_i * a_i, l^_jk = l_j[:, k] * b_jk (a, b the inverse norms when normalizing, else 1):
//   S[i, j, k] = scale * <m^_i, l^_jk>,  pos[i, k] = S[i, i, k],
//   neg[i] = log( sum_{j != i, k} exp(S[i, j, k]) [+ HW exp(self_logit)] ).
//
// The work is cut by image j: block j is the (N x HW) score block Z = M @ L_j from BLAS, M = m
// and L_j = l[j] (R x HW) read in place with their strides (a channels-last map is a transposed
// BLAS operand, no copy; half and bfloat16 are converted to float32, m once and l one block at a
// time); row i is then scaled by s_i = scale * a_i and column k by b_jk.
// Forward: row j of the block is pos[j]; the other rows feed an online (max, sum exp) per image i.
// Threads own contiguous ranges of j, keep (max, sum) partials of size N, merged in task order
// (bitwise reproducible for a given thread count).
// Backward reads the block from the kept scores or recomputes it, forms
// D[i, k] = dS[i, j, k] * s_i * b_jk, writes
//   grad_l[j] = M^T @ D - [||l_jk|| > eps] b_jk^2 (sum_i dS S)_k l_jk           (normalize only)
// straight into grad_l's (R, HW) slice, and accumulates P^T += L_j @ D^T per task (R x N); then
//   grad_m = P_i - [||m_i|| > eps] a_i^2 (sum_jk dS S)_i m_i.
// Flops: forward 2 N^2 HW R, backward 6 N^2 HW R (4 N^2 HW R when fastgan::infonce_lse_budget kept
// the (N, N, HW) scores, see below). Extra memory: O(T (N HW + N R + R HW)) for T threads, beside
// the outputs and the kept scores.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/common.h"
#include "cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace fastgan {
namespace {

using namespace vec;

struct Split {
  int64_t tasks;
  std::pair<int64_t, int64_t> range(int64_t n, int64_t t) const { return {n * t / tasks, n * (t + 1) / tasks}; }
};
inline Split make_split(int64_t n) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return {std::max<int64_t>(1, std::min(threads, n))};
}

// State shared by forward and backward.
struct Prep {
  at::Tensor mt;         // (N, R) ct: m itself (any strides) when it has the compute dtype
  at::Tensor inv_m;      // (N,) ct: a_i
  at::Tensor row_scale;  // (N,) ct contiguous: s_i = scale * a_i
  at::ScalarType ct;
  bool convert;  // l's blocks must be converted to ct
};

Prep prepare(const at::Tensor& l, const at::Tensor& m, double scale, bool normalize, double eps) {
  Prep p;
  p.ct = compute_type(l);
  p.convert = l.scalar_type() != p.ct;
  p.mt = m.detach().to(p.ct);
  p.inv_m = inverse_norms(p.mt, normalize, eps);
  p.row_scale = (p.inv_m * scale).contiguous();
  return p;
}

// l[j] as an (R, HW) ct matrix: the view itself, or a float32 copy in `scratch` (half / bfloat16).
inline at::Tensor block_of(const at::Tensor& l, int64_t j, const Prep& p, at::Tensor& scratch) {
  at::Tensor lj = l.select(0, j);
  if (!p.convert) return lj;
  auto out = scratch.narrow(0, 0, lj.numel()).view(lj.sizes());
  out.copy_(lj);
  return out;
}

// b_jk and the column norms of block j (normalize only).
inline void column_norms(const at::Tensor& lj, double eps, at::Tensor& inv_l, at::Tensor& norm_l) {
  norm_l = lj.norm(2, {0});
  inv_l = norm_l.clamp_min(eps).reciprocal().contiguous();
}

// Z = S[:, j, :] (N x HW) into `z` (a contiguous (N, HW) matrix: per-thread scratch, or block j of
// the kept scores), and (normalize) b_jk and the column norms of block j.
template <typename T>
void score_block(const Prep& p, const at::Tensor& lj, at::Tensor& z, bool normalize, double eps, at::Tensor& inv_l,
                 at::Tensor& norm_l) {
  gemm_out(z, p.mt, lj, 0.0f);  // cpu/gemm.h: oneDNN where it runs
  const int64_t n = z.size(0), hw = z.size(1);
  T* zp = z.data_ptr<T>();
  const T* s = p.row_scale.data_ptr<T>();
  if (normalize) {
    column_norms(lj, eps, inv_l, norm_l);
    const T* b = inv_l.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      T* zr = zp + i * hw;
      const T si = s[i];
#pragma omp simd
      for (int64_t k = 0; k < hw; ++k) zr[k] = zr[k] * si * b[k];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      T* zr = zp + i * hw;
      const T si = s[i];
#pragma omp simd
      for (int64_t k = 0; k < hw; ++k) zr[k] *= si;
    }
  }
}

// (max, sum exp(v - max)) over n values; +inf counts as exp(0) (the LSE is +inf), a row of only
// -inf / NaN gives (-inf, 0) or a NaN sum when a NaN is present (NaN propagates as in the reference).
template <typename T>
inline void row_lse(const T* v, int64_t n, T& m_out, T& s_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const T m = reduce_max(v, n);
  m_out = m;
  if (m == -ninf) {
    s_out = T(1);
    return;
  }
  if (m == ninf) {
    s_out = T(0);
    for (int64_t c = 0; c < n; ++c)
      if (v[c] != v[c]) {
        m_out = T(0);
        s_out = v[c];
        return;
      }
    return;
  }
  s_out = exp_shifted(v, n, m, static_cast<T*>(nullptr));
}

template <typename T>
inline void merge(T& M, T& S, T m, T s) {
  const T ninf = -std::numeric_limits<T>::infinity();
  if (m == ninf && s == T(0)) return;
  if (m > M) {
    S = S * (M == ninf ? T(0) : fast_exp(M - m)) + s;
    M = m;
  } else {
    S += s * (m == M ? T(1) : fast_exp(m - M));  // m == M == +inf must not give inf - inf
  }
}

// ---------------------------------------------------------------- forward
template <typename T>
void forward_impl(const at::Tensor& l, const Prep& p, bool normalize, double eps, std::optional<double> self_logit,
                  at::Tensor& pos, at::Tensor& neg, const at::Tensor& scores) {
  const int64_t n = l.size(0), r = l.size(1), hw = l.size(2);
  const T ninf = -std::numeric_limits<T>::infinity();
  const Split sp = make_split(n);
  std::vector<T> pmax(sp.tasks * n, ninf), psum(sp.tasks * n, T(0));
  T* pos_p = pos.data_ptr<T>();
  at::parallel_for(0, sp.tasks, 1, [&](int64_t t0, int64_t t1) {
    auto opts = l.options().dtype(p.ct);
    const bool keep = scores.defined();  // block j's scores go straight into the kept (N, N, HW) tensor
    at::Tensor z = keep ? at::Tensor() : at::empty({n, hw}, opts);
    at::Tensor scratch = p.convert ? at::empty({r * hw}, opts) : at::Tensor();
    at::Tensor inv_l, norm_l;
    for (int64_t task = t0; task < t1; ++task) {
      auto [j0, j1] = sp.range(n, task);
      T* M = pmax.data() + task * n;
      T* S = psum.data() + task * n;
      for (int64_t j = j0; j < j1; ++j) {
        at::Tensor lj = block_of(l, j, p, scratch);
        if (keep) z = scores.select(0, j);
        score_block<T>(p, lj, z, normalize, eps, inv_l, norm_l);
        const T* zp = z.data_ptr<T>();
        std::copy(zp + j * hw, zp + (j + 1) * hw, pos_p + j * hw);
        for (int64_t i = 0; i < n; ++i) {
          if (i == j || hw == 0) continue;
          T bm, bs;
          row_lse(zp + i * hw, hw, bm, bs);
          merge(M[i], S[i], bm, bs);
        }
      }
    }
  });
  T* neg_p = neg.data_ptr<T>();
  const bool has_self = self_logit.has_value();
  const T extra = has_self ? static_cast<T>(*self_logit + std::log(static_cast<double>(hw))) : ninf;
  for (int64_t i = 0; i < n; ++i) {
    T M = ninf, S = T(0);
    for (int64_t t = 0; t < sp.tasks; ++t) merge(M, S, pmax[t * n + i], psum[t * n + i]);
    if (has_self) merge(M, S, extra, T(1));
    neg_p[i] = (M == ninf) ? ninf : (M == -ninf ? M : M + std::log(S));
  }
}

// ---------------------------------------------------------------- backward
template <typename T>
void backward_impl(const at::Tensor& l, const Prep& p, bool normalize, double eps, double scale,
                   const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& neg, const at::Tensor& scores,
                   at::Tensor& grad_l, at::Tensor& grad_m) {
  const int64_t n = l.size(0), r = l.size(1), hw = l.size(2);
  const T ninf = -std::numeric_limits<T>::infinity();
  const Split sp = make_split(n);
  const T* gp = grad_pos.data_ptr<T>();
  const T* gn = grad_neg.data_ptr<T>();
  const T* ng = neg.data_ptr<T>();
  const T* rs = p.row_scale.data_ptr<T>();
  auto opts = l.options().dtype(p.ct);
  // BLAS operand layouts measured fastest here (bench/infonce_cpu_gemms.py, one thread, 64x64x1024):
  // grad_l[j] = M^T D with M^T copied contiguous once (a transposed view costs ~30% more over the
  // 64 products), and grad_m accumulated transposed, P^T += L_j D^T (~13% less than P += D L_j^T).
  const at::Tensor mtc = p.mt.t().contiguous();  // (R, N)
  at::Tensor P = at::zeros({sp.tasks, r, n}, opts);
  std::vector<T> cm(sp.tasks * n, T(0));  // sum_{j,k} dS * S per row i and task (normalize)
  const bool out_direct = !p.convert;     // grad_l has the compute dtype: BLAS writes into it
  at::parallel_for(0, sp.tasks, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor z = at::empty({n, hw}, opts);
    at::Tensor scratch = p.convert ? at::empty({r * hw}, opts) : at::Tensor();
    at::Tensor gscratch = out_direct ? at::Tensor() : at::empty({r, hw}, opts);
    at::Tensor cl_t = normalize ? at::empty({hw}, opts) : at::Tensor();
    at::Tensor inv_l, norm_l;
    std::vector<T> e(hw);
    for (int64_t task = t0; task < t1; ++task) {
      auto [j0, j1] = sp.range(n, task);
      at::Tensor Pt = P.select(0, task);
      T* cmt = cm.data() + task * n;
      for (int64_t j = j0; j < j1; ++j) {
        at::Tensor lj = block_of(l, j, p, scratch);
        // The scores S[:, j, :]: kept by the forward (read only: a second backward reads them
        // again), or recomputed into z. D is written into z either way.
        const T* sj;
        if (scores.defined()) {
          sj = scores.data_ptr<T>() + j * n * hw;
          if (normalize) column_norms(lj, eps, inv_l, norm_l);
        } else {
          score_block<T>(p, lj, z, normalize, eps, inv_l, norm_l);
          sj = z.data_ptr<T>();
        }
        T* zp = z.data_ptr<T>();
        T* cl = normalize ? cl_t.data_ptr<T>() : nullptr;
        if (normalize) std::fill(cl, cl + hw, T(0));
        // z <- dS * s_i (row by row, in place), with sum dS * S per row (cm) and per column (cl).
        for (int64_t i = 0; i < n; ++i) {
          const T* sr = sj + i * hw;
          T* zr = zp + i * hw;
          T* ep = e.data();
          if (i == j) {
            std::copy(gp + j * hw, gp + (j + 1) * hw, ep);
          } else if (gn[i] == T(0) || ng[i] == ninf) {
            std::fill(ep, ep + hw, T(0));
          } else {
            exp_shifted(sr, hw, ng[i], ep);
            const T g = gn[i];
#pragma omp simd
            for (int64_t k = 0; k < hw; ++k) ep[k] *= g;
          }
          if (normalize) {
            T acc = 0;
            for (int64_t k = 0; k < hw; ++k) {
              const T t = ep[k] * sr[k];
              acc += t;
              cl[k] += t;
            }
            cmt[i] += acc;
          }
          const T si = rs[i];
#pragma omp simd
          for (int64_t k = 0; k < hw; ++k) zr[k] = ep[k] * si;
        }
        if (normalize) z.mul_(inv_l.unsqueeze(0));  // D = dS * s_i * b_jk
        // grad_l[j] = M^T D (- the normalization term); grad_m partial += D L_j^T.
        at::Tensor gl = out_direct ? grad_l.select(0, j) : gscratch;
        gemm_out(gl, mtc, z, 0.0f);
        if (normalize) {
          auto coef = inv_l * inv_l * cl_t * (norm_l > eps).to(inv_l.scalar_type());
          gl.addcmul_(lj, coef.unsqueeze(0), -1);
        }
        if (!out_direct) grad_l.select(0, j).copy_(gl);
        gemm_out(Pt, lj, z.t(), 1.0f);
      }
    }
  });
  // Merge the task partials in order.
  at::Tensor Pm = P.select(0, 0);
  for (int64_t t = 1; t < sp.tasks; ++t) Pm.add_(P.select(0, t));
  at::Tensor gm = Pm.t();
  if (normalize) {
    at::Tensor cmv = at::empty({n}, opts);
    T* c = cmv.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      T s = 0;
      for (int64_t t = 0; t < sp.tasks; ++t) s += cm[t * n + i];
      c[i] = s;
    }
    auto active = (p.mt.norm(2, {1}) > eps).to(p.ct);
    gm.sub_(p.mt * (p.inv_m * p.inv_m * cmv * active).unsqueeze(1));
  }
  grad_m.copy_(gm);
}

// ---------------------------------------------------------------- checks and entry points
void check_inputs(const char* op, const at::Tensor& l, const at::Tensor& m, double eps) {
  TORCH_CHECK(l.dim() == 3, op, ": l must have shape (N, R, HW), got ", l.sizes());
  TORCH_CHECK(m.dim() == 2, op, ": m must have shape (N, R), got ", m.sizes());
  TORCH_CHECK(l.size(0) == m.size(0), op, ": l and m must have the same batch size N, got ", l.size(0), " and ",
              m.size(0));
  TORCH_CHECK(l.size(1) == m.size(1), op, ": l and m must have the same feature size R, got ", l.size(1), " and ",
              m.size(1));
  TORCH_CHECK(l.scalar_type() == m.scalar_type(), op, ": l and m must have the same dtype, got ", l.scalar_type(),
              " and ", m.scalar_type());
  const auto st = l.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": l must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(l.device().is_cpu() && m.device().is_cpu(), op, " (CPU kernel): l and m must be on the CPU, got ",
              l.device(), " and ", m.device());
  TORCH_CHECK(eps > 0 && std::isfinite(eps), op, ": eps must be positive and finite, got ", eps);
}

void check_vector(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, at::ScalarType ct) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ct, op, ": ", name, " must have dtype ", ct, " (the compute dtype), got ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, " (CPU kernel): ", name, " must be on the CPU, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_cpu(const at::Tensor& l, const at::Tensor& m, double scale,
                                                   std::optional<double> self_logit, bool normalize, double eps) {
  // Below autograd: the ATen calls inside the kernel must not record (or refuse) autograd history.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_inputs("infonce_lse", l, m, eps);
  const int64_t n = l.size(0), hw = l.size(2);
  // detach(): at::parallel_for workers do not inherit the autograd TLS of the guard above.
  const at::Tensor ld = l.detach();
  Prep p = prepare(ld, m, scale, normalize, eps);
  auto pos = at::empty({n, hw}, l.options().dtype(p.ct));
  auto neg = at::empty({n}, l.options().dtype(p.ct));
  AT_DISPATCH_FLOATING_TYPES(p.ct, "infonce_lse_cpu", [&] {
    forward_impl<scalar_t>(ld, p, normalize, eps, self_logit, pos, neg, at::Tensor());
  });
  return {pos, neg};
}

// ---------------------------------------------------------------- score budget: save or recompute
// fastgan::infonce_lse_budget keeps the (N, N, HW) scores, block j at scores[j] = S[:, j, :], when
// they fit in score_budget bytes (the rule of fastgan/ops/infonce_lse.py:_keeps_scores): the
// backward then skips the recompute product (two products instead of three: 4 N^2 HW R flops
// instead of 6). Beyond the budget (or 0) scores is empty and the backward recomputes block by block.
inline bool keep_scores(int64_t n, int64_t hw, int64_t elem_size, int64_t budget) {
  return budget > 0 && n > 0 && hw > 0 && n * n * hw <= budget / elem_size;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> infonce_lse_budget_cpu(const at::Tensor& l, const at::Tensor& m,
                                                                      double scale, std::optional<double> self_logit,
                                                                      bool normalize, double eps,
                                                                      int64_t score_budget) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_inputs("infonce_lse_budget", l, m, eps);
  TORCH_CHECK(score_budget >= 0, "infonce_lse_budget: score_budget must be >= 0 bytes, got ", score_budget);
  const int64_t n = l.size(0), hw = l.size(2);
  const at::Tensor ld = l.detach();
  Prep p = prepare(ld, m, scale, normalize, eps);
  auto opts = l.options().dtype(p.ct);
  auto pos = at::empty({n, hw}, opts);
  auto neg = at::empty({n}, opts);
  const bool keep = keep_scores(n, hw, at::elementSize(p.ct), score_budget);
  auto scores = keep ? at::empty({n, n, hw}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(p.ct, "infonce_lse_budget_cpu", [&] {
    forward_impl<scalar_t>(ld, p, normalize, eps, self_logit, pos, neg, keep ? scores : at::Tensor());
  });
  return {pos, neg, scores};
}

// Both backwards (recompute: scores empty; budget: the forward's kept scores or empty), one set of
// checks; `op` names the calling op in errors.
std::tuple<at::Tensor, at::Tensor> backward_cpu(const char* op, const at::Tensor& grad_pos, const at::Tensor& grad_neg,
                                                const at::Tensor& l, const at::Tensor& m, const at::Tensor& neg,
                                                const at::Tensor& scores, double scale,
                                                std::optional<double> self_logit, bool normalize, double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_inputs(op, l, m, eps);
  const int64_t n = l.size(0), r = l.size(1), hw = l.size(2);
  const at::Tensor ld = l.detach();
  Prep p = prepare(ld, m, scale, normalize, eps);
  check_vector(op, "grad_pos", grad_pos, {n, hw}, p.ct);
  check_vector(op, "grad_neg", grad_neg, {n}, p.ct);
  check_vector(op, "neg", neg, {n}, p.ct);
  const bool kept = scores.numel() > 0;
  TORCH_CHECK(scores.numel() == 0 || (scores.sizes() == at::IntArrayRef({n, n, hw}) && scores.is_contiguous()), op,
              ": scores must be the forward's (N, N, HW) scores or empty, got ", scores.sizes());
  if (kept) check_vector(op, "scores", scores, {n, n, hw}, p.ct);
  auto gp = grad_pos.detach().contiguous(), gn = grad_neg.detach().contiguous(), ng = neg.detach().contiguous();
  auto grad_l = at::empty({n, r, hw}, l.options().memory_format(at::MemoryFormat::Contiguous));
  auto grad_m = at::empty({n, r}, m.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(p.ct, "infonce_lse_budget_backward_cpu", [&] {
    backward_impl<scalar_t>(ld, p, normalize, eps, scale, gp, gn, ng, kept ? scores.detach() : at::Tensor(), grad_l,
                            grad_m);
  });
  return {grad_l, grad_m};
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_backward_cpu(const at::Tensor& grad_pos, const at::Tensor& grad_neg,
                                                            const at::Tensor& l, const at::Tensor& m,
                                                            const at::Tensor& neg, double scale,
                                                            std::optional<double> self_logit, bool normalize,
                                                            double eps) {
  return backward_cpu("infonce_lse_backward", grad_pos, grad_neg, l, m, neg, at::empty({0}, neg.options()), scale,
                      self_logit, normalize, eps);
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_budget_backward_cpu(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& l, const at::Tensor& m,
    const at::Tensor& neg, const at::Tensor& scores, double scale, std::optional<double> self_logit, bool normalize,
    double eps) {
  return backward_cpu("infonce_lse_budget_backward", grad_pos, grad_neg, l, m, neg, scores, scale, self_logit,
                      normalize, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("infonce_lse", &infonce_lse_cpu);
  m.impl("infonce_lse_backward", &infonce_lse_backward_cpu);
  m.impl("infonce_lse_budget", &infonce_lse_budget_cpu);
  m.impl("infonce_lse_budget_backward", &infonce_lse_budget_backward_cpu);
}

}  // namespace fastgan
