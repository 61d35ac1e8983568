// CPU kernels of fastgan::contrastive_loss / _backward: 2C, D2D-CE, NT-Xent (stacked two views),
// SupCon and CLIP (symmetric InfoNCE of x = a against proxy = b) as one op each way. At N = 64 the
// N x N work is ~12 MFLOP and the cost is per-call
// overhead: the composition of pair_cosine + contrastive_lse_budget + about ten ATen ops with one
// autograd node each (lse[:, 0] - lse[:, 1], where, logaddexp, relu, mean, ...). Here the same kernels run
// from C++ and the combination and its gradient are written out, behind one C++ autograd node
// (csrc/ops/contrastive_autograd.cpp). Semantics: docs/semantics.md sections 2-4, the Python
// compositions in fastgan/functional/contrastive.py (kept for the other backends and process groups).
// Outputs besides the loss are what the backward reads: lse and rowmax (the LSE kernel's), scores
// (its kept scores), pos (2C: p_i / t, the kernel's extra; D2D: cos(e_i, p_i); NT-Xent: the logit
// cos(z_i, z_{(i + N/2) mod N}) / t of each row's partner; SupCon: the same-class logit sums
// sum_{p in P(i)} cos(x_i, x_p) / t; CLIP: cos(a_i, b_i) / t) and n_pos (SupCon: |P(i)|, int64; else
// empty). CLIP's lse is (2N, 1): the rows' then the columns' (one sweep, contrastive_lse_budget with
// columns), and its eps is the norm clamp (the caller's sqrt(eps)).
// NT-Xent's, SupCon's and CLIP's positives are entries of the score matrix itself: where the kernel
// keeps the scores on its bounded path (cpu/contrastive_lse.h: positive_in_scores) they are read off
// in the same sweep and their gradient joins the score gradient before its one product, so the loss
// is one product each way plus row passes; elsewhere (scores over the budget, t < 1/30) they come from
// pair_cosine / same_class_cosine_sum as before, in the same units.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>

#include "cpu/contrastive_lse.h"
#include "cpu/pair_cosine.h"
#include "ops/contrastive_calls.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

namespace fastgan {
namespace {

using OptT = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
constexpr int64_t PRED_ALL = 0, PRED_SAME = 1, PRED_DIFF = 2;  // fastgan/reference/contrastive.py

enum class Kind { C2, D2D, NTXent, SupCon, CLIP };
enum class Reduction { Mean, Sum, None };

Kind parse_kind(c10::string_view kind) {
  if (kind == "2c") return Kind::C2;
  if (kind == "d2d") return Kind::D2D;
  if (kind == "ntxent") return Kind::NTXent;
  if (kind == "supcon") return Kind::SupCon;
  if (kind == "clip") return Kind::CLIP;
  TORCH_CHECK(false, "contrastive_loss: kind must be one of 2c, d2d, ntxent, supcon, clip, got ", kind);
}

Reduction parse_reduction(c10::string_view r) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  TORCH_CHECK(false, "contrastive_loss: reduction must be one of mean, sum, none, got ", r);
}

// Each loss's LSE call: (scale, bias, relu, predicates) of z = scale s_ij + bias.
struct LseArgs {
  double scale, bias;
  bool relu;
  std::vector<int64_t> preds;
};

LseArgs lse_args(Kind kind, double t, double m_p) {
  switch (kind) {
    case Kind::C2: return {1.0 / t, 0.0, false, {PRED_ALL, PRED_SAME}};
    case Kind::D2D: return {1.0 / t, (m_p - 1.0) / t, true, {PRED_DIFF}};
    default: return {1.0 / t, 0.0, false, {PRED_ALL}};
  }
}

// Per-row combination and its gradient as plain loops over N (one pass each way instead of about
// ten ATen ops, each with its own dispatch and allocation). Inputs are contiguous, of the compute
// dtype T. pos: 2C none (its positive is the kernel's extra), D2D c_i = cos(e_i, p_i), NT-Xent the
// halves' cosines (N / 2), SupCon the same-class cosine sums, CLIP c_i = cos(a_i, b_i).
template <typename T>
inline T logaddexp(T a, T b) {  // torch.logaddexp's value, -inf in one argument included
  if (std::isinf(a) && a < 0) return b;
  if (std::isinf(b) && b < 0) return a;
  return std::max(a, b) + std::log1p(std::exp(-std::abs(a - b)));
}

template <typename T>
inline T d2d_shift(T rowmax) {  // N = 1 has no j != i: M_i is taken as 0 (the set is empty anyway)
  return std::isfinite(rowmax) ? rowmax : T(0);
}

template <typename T>
void per_row(Kind kind, int64_t n, int64_t k, const T* lse, const T* rowmax, const T* pos, const int64_t* n_pos,
             double t, double m_p, T* per) {
  for (int64_t i = 0; i < n; ++i) {
    const T l0 = lse[i * k];
    switch (kind) {
      case Kind::C2: per[i] = l0 - lse[i * k + 1]; break;
      case Kind::D2D: {
        const T q = std::max((static_cast<T>(m_p) - pos[i]) / static_cast<T>(t), T(0));
        per[i] = q + logaddexp(-q, l0 - d2d_shift(rowmax[i]));
        break;
      }
      case Kind::NTXent: per[i] = l0 - pos[i]; break;
      case Kind::SupCon: per[i] = n_pos[i] > 0 ? l0 - pos[i] / static_cast<T>(n_pos[i]) : T(0); break;
      case Kind::CLIP: per[i] = (l0 - pos[i]) + (lse[(n + i) * k] - pos[i]); break;  // row LSE + column LSE - 2 diag
    }
  }
}

// g[i] = d loss / d per_i; writes d loss / d lse (N, k) and d loss / d pos (2C: unused).
template <typename T>
void per_row_backward(Kind kind, int64_t n, int64_t k, const T* g, const T* lse, const T* rowmax, const T* pos,
                      const int64_t* n_pos, double t, double m_p, T* grad_lse, T* grad_pos) {
  const T tt = static_cast<T>(t);
  for (int64_t i = 0; i < n; ++i) {
    switch (kind) {
      case Kind::C2:
        grad_lse[i * k] = g[i];
        grad_lse[i * k + 1] = -g[i];
        break;
      case Kind::D2D: {
        // per = q + logaddexp(-q, u): d per / d u = d per / d q = sigmoid(u + q) (0 where u = -inf).
        const T q = std::max((static_cast<T>(m_p) - pos[i]) / tt, T(0));
        const T w = g[i] / (T(1) + std::exp(-(lse[i] - d2d_shift(rowmax[i]) + q)));
        grad_lse[i] = w;
        grad_pos[i] = q > 0 ? -w / tt : T(0);  // relu' (0 at 0, as torch)
        break;
      }
      case Kind::NTXent:
        grad_lse[i] = g[i];
        grad_pos[i] = -g[i];
        break;
      case Kind::SupCon:
        grad_lse[i] = n_pos[i] > 0 ? g[i] : T(0);
        grad_pos[i] = n_pos[i] > 0 ? -g[i] / static_cast<T>(n_pos[i]) : T(0);
        break;
      case Kind::CLIP:
        grad_lse[i] = g[i];
        grad_lse[n + i] = g[i];
        grad_pos[i] = -2 * g[i];
        break;
    }
  }
}

// The positive logits the kernel can read off its kept scores (cpu/contrastive_lse.h).
PositiveSet positive_set(Kind kind) {
  switch (kind) {
    case Kind::NTXent: return PositiveSet::Partner;
    case Kind::SupCon: return PositiveSet::SameClass;
    case Kind::CLIP: return PositiveSet::Diagonal;
    default: return PositiveSet::None;
  }
}

// The mean's divisor: N, or SupCon's number of anchors with a positive (at least 1).
double mean_count(Kind kind, int64_t n, const at::Tensor& n_pos) {
  if (kind != Kind::SupCon) return static_cast<double>(n);
  const int64_t* np = n_pos.data_ptr<int64_t>();
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += np[i] > 0;
  return static_cast<double>(std::max<int64_t>(c, 1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_loss_cpu(
    const at::Tensor& x, const OptT& proxy, const OptT& labels, c10::string_view kind_name, double t, double m_p,
    double eps, c10::string_view reduction_name, int64_t score_budget) {
  const Kind kind = parse_kind(kind_name);
  const Reduction reduction = parse_reduction(reduction_name);
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0, "contrastive_loss: x must be a non-empty 2-D tensor, got ", x.sizes());
  TORCH_CHECK((kind == Kind::C2 || kind == Kind::D2D || kind == Kind::CLIP) == proxy.has_value(),
              "contrastive_loss: proxy is required by 2c, d2d and clip only");
  TORCH_CHECK((kind != Kind::NTXent && kind != Kind::CLIP) == labels.has_value(),
              "contrastive_loss: labels are required except by ntxent and clip");
  TORCH_CHECK(kind != Kind::CLIP || proxy->sizes() == x.sizes(), "contrastive_loss: clip needs proxy of x's shape ",
              x.sizes(), ", got ", proxy->sizes());
  TORCH_CHECK(kind != Kind::NTXent || x.size(0) % 2 == 0, "contrastive_loss: ntxent needs an even number of rows");
  const int64_t n = x.size(0), h = n / 2;
  const LseArgs la = lse_args(kind, t, m_p);
  const PositiveSet pset = positive_set(kind);
  const bool both = kind == Kind::CLIP;  // a = x against b = proxy, rows and columns
  at::Tensor pos, n_pos;
  OptT extra;
  if (kind == Kind::C2) {
    pos = calls::pair_cosine(x, *proxy, eps).div_(t);
    extra = pos;
  } else if (kind == Kind::D2D) {
    pos = calls::pair_cosine(x, *proxy, eps);
  }
  auto [lse, rowmax, scores] =
      contrastive_lse_budget_cpu(x, both ? proxy : std::nullopt, labels, labels, extra, la.scale, la.bias, la.relu,
                                 true, eps, !both, 0, la.preds, both, score_budget, pset, &pos, &n_pos);
  if (pset != PositiveSet::None && !pos.defined()) {  // not read off the scores: their own kernels, same units
    if (kind == Kind::NTXent) {
      auto c = calls::pair_cosine(x.narrow(0, 0, h), x.narrow(0, h, h), eps).div_(t);  // row i's partner: i + N/2
      pos = at::cat({c, c});
    } else if (kind == Kind::SupCon) {
      std::tie(pos, n_pos) = calls::same_class_cosine_sum(x, *labels, eps);
      pos.div_(t);
    } else {
      pos = calls::pair_cosine(x, *proxy, eps).div_(t);
    }
  }
  lse = lse.contiguous();
  auto per = at::empty({n}, lse.options());
  auto empty = at::empty({0}, lse.options());
  if (!n_pos.defined()) n_pos = empty.to(at::kLong);
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES(lse.scalar_type(), "contrastive_loss_cpu", [&] {
    per_row<scalar_t>(kind, n, lse.size(1), lse.data_ptr<scalar_t>(), rowmax.data_ptr<scalar_t>(),
                      pos.defined() ? pos.data_ptr<scalar_t>() : nullptr, n_pos.data_ptr<int64_t>(), t, m_p,
                      per.data_ptr<scalar_t>());
    if (reduction == Reduction::None) {
      loss = per;
      return;
    }
    double sum = 0;  // float64 accumulation: deterministic, and exact enough for any N
    const scalar_t* pp = per.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) sum += pp[i];
    if (reduction == Reduction::Mean) sum /= mean_count(kind, n, n_pos);
    loss = at::scalar_tensor(sum, lse.options());
  });
  return {loss, lse, rowmax, pos, n_pos, scores};
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const OptT& proxy, const OptT& labels, const at::Tensor& lse,
    const at::Tensor& rowmax, const at::Tensor& pos, const at::Tensor& n_pos, const at::Tensor& scores,
    c10::string_view kind_name, double t, double m_p, double eps, c10::string_view reduction_name) {
  const Kind kind = parse_kind(kind_name);
  const Reduction reduction = parse_reduction(reduction_name);
  const LseArgs la = lse_args(kind, t, m_p);
  const int64_t n = x.size(0), h = n / 2, k = static_cast<int64_t>(la.preds.size());
  // d loss / d per_i: the incoming gradient per row, or the scalar's spread over the rows.
  at::Tensor g;
  if (reduction == Reduction::None) {
    g = grad.to(lse.scalar_type()).contiguous();
  } else {
    double s = grad.item<double>();
    if (reduction == Reduction::Mean) s /= mean_count(kind, n, n_pos);
    g = at::full({n}, s, lse.options());
  }
  auto grad_lse = at::empty({lse.size(0), k}, lse.options());  // CLIP: 2N rows
  auto grad_pos = at::empty({n}, lse.options());
  AT_DISPATCH_FLOATING_TYPES(lse.scalar_type(), "contrastive_loss_backward_cpu", [&] {
    per_row_backward<scalar_t>(kind, n, k, g.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                               rowmax.data_ptr<scalar_t>(), pos.numel() ? pos.data_ptr<scalar_t>() : nullptr,
                               n_pos.data_ptr<int64_t>(), t, m_p, grad_lse.data_ptr<scalar_t>(),
                               grad_pos.data_ptr<scalar_t>());
  });
  const PositiveSet pset = positive_set(kind);
  const bool both = kind == Kind::CLIP;
  const bool fused = positive_in_scores(pset, scores.numel() > 0, !both, la.scale, la.bias, la.relu, true, !both, 0,
                                        la.preds, both, false);
  OptT extra;
  if (kind == Kind::C2) extra = pos;
  auto [grad_x, grad_b, grad_extra] = contrastive_lse_budget_backward_cpu(
      grad_lse, x, both ? proxy : std::nullopt, labels, labels, extra, lse, scores, la.scale, la.bias, la.relu, true,
      eps, !both, 0, la.preds, both, pset, fused ? grad_pos : at::Tensor());
  at::Tensor grad_proxy;
  switch (kind) {
    case Kind::C2:
    case Kind::D2D: {
      auto gc = kind == Kind::C2 ? grad_extra.div(t) : grad_pos;  // 2C: extra = c / t
      grad_proxy = pair_cosine_backward_accumulate(gc, x, *proxy, eps, grad_x);
      break;
    }
    case Kind::NTXent:
      if (!fused) {  // a pair shares one cosine: d / d c_j = (d / d pos_j + d / d pos_{j + N/2}) / t
        auto gc = grad_pos.narrow(0, 0, h).add(grad_pos.narrow(0, h, h)).div_(t);
        auto [g1, g2] = calls::pair_cosine_backward(gc, x.narrow(0, 0, h), x.narrow(0, h, h), eps);
        grad_x.narrow(0, 0, h).add_(g1);
        grad_x.narrow(0, h, h).add_(g2);
      }
      break;
    case Kind::SupCon:
      if (!fused) grad_x.add_(calls::same_class_cosine_sum_backward(grad_pos.div(t), x, *labels, eps));
      break;
    case Kind::CLIP:
      if (fused) {
        grad_proxy = grad_b;
      } else {
        auto [gx, gp] = calls::pair_cosine_backward(grad_pos.div(t), x, *proxy, eps);
        grad_x.add_(gx);
        grad_proxy = grad_b.add_(gp);
      }
      break;
  }
  return {grad_x, grad_proxy.defined() ? grad_proxy : at::empty({0}, x.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("contrastive_loss", &contrastive_loss_cpu);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cpu);
}

}  // namespace fastgan
