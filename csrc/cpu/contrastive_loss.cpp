// CPU kernels of fastgan::contrastive_loss / _backward: 2C, D2D-CE, NT-Xent (stacked two views) and
// SupCon as one op each way. At N = 64 the N x N work is ~12 MFLOP and the cost is per-call
// overhead: the composition of pair_cosine + contrastive_lse_budget + about ten ATen ops with one
// autograd node each (lse[:, 0] - lse[:, 1], where, logaddexp, relu, mean, ...). Here the same kernels run
// from C++ and the combination and its gradient are written out, behind one C++ autograd node
// (csrc/ops/contrastive_autograd.cpp). Semantics: docs/semantics.md sections 2-4, the Python
// compositions in fastgan/functional/contrastive.py (kept for the other backends and process groups).
// Outputs besides the loss are what the backward reads: lse and rowmax (the LSE kernel's), scores
// (its kept scores), pos (2C: p_i / t, the kernel's extra; D2D: cos(e_i, p_i); else empty) and
// n_pos (SupCon: |P(i)|, int64; else empty).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace fastgan {
namespace {

using OptT = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
constexpr int64_t PRED_ALL = 0, PRED_SAME = 1, PRED_DIFF = 2;  // fastgan/reference/contrastive.py

enum class Kind { C2, D2D, NTXent, SupCon };
enum class Reduction { Mean, Sum, None };

Kind parse_kind(c10::string_view kind) {
  if (kind == "2c") return Kind::C2;
  if (kind == "d2d") return Kind::D2D;
  if (kind == "ntxent") return Kind::NTXent;
  if (kind == "supcon") return Kind::SupCon;
  TORCH_CHECK(false, "contrastive_loss: kind must be one of 2c, d2d, ntxent, supcon, got ", kind);
}

Reduction parse_reduction(c10::string_view r) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  TORCH_CHECK(false, "contrastive_loss: reduction must be one of mean, sum, none, got ", r);
}

Tensor3 lse_op(const at::Tensor& a, const OptT& la, const OptT& extra, double scale, double bias, bool relu,
               double eps, at::IntArrayRef preds, int64_t budget) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::contrastive_lse_budget", "")
                       .typed<Tensor3(const at::Tensor&, const OptT&, const OptT&, const OptT&, const OptT&, double,
                                      double, bool, bool, double, bool, int64_t, at::IntArrayRef, bool, int64_t)>();
  return op.call(a, std::nullopt, la, la, extra, scale, bias, relu, true, eps, true, 0, preds, false, budget);
}

Tensor3 lse_backward_op(const at::Tensor& g, const at::Tensor& a, const OptT& la, const OptT& extra,
                        const at::Tensor& lse, const at::Tensor& scores, double scale, double bias, bool relu,
                        double eps, at::IntArrayRef preds) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::contrastive_lse_budget_backward", "")
                       .typed<Tensor3(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const OptT&,
                                      const OptT&, const at::Tensor&, const at::Tensor&, double, double, bool, bool,
                                      double, bool, int64_t, at::IntArrayRef, bool)>();
  return op.call(g, a, std::nullopt, la, la, extra, lse, scores, scale, bias, relu, true, eps, true, 0, preds, false);
}

at::Tensor pair_op(const at::Tensor& x, const at::Tensor& y, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::pair_cosine", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, y, eps);
}

std::tuple<at::Tensor, at::Tensor> pair_backward_op(const at::Tensor& g, const at::Tensor& x, const at::Tensor& y,
                                                    double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::pair_cosine_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double)>();
  return op.call(g, x, y, eps);
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

// NT-Xent's positive: row i's partner is (i + N/2) mod N, so cos(z_i, z_partner) is the cosine of
// the two halves, computed once for both.
at::Tensor halves_cosine(const at::Tensor& z, double eps) {
  const int64_t h = z.size(0) / 2;
  auto c = pair_op(z.narrow(0, 0, h), z.narrow(0, h, h), eps);
  return at::cat({c, c});
}

// The mean's divisor: N, or SupCon's number of anchors with a positive (at least 1).
at::Tensor mean_count(Kind kind, const at::Tensor& per, const at::Tensor& n_pos) {
  if (kind == Kind::SupCon) return (n_pos > 0).sum().clamp_min(1).to(per.scalar_type());
  return at::scalar_tensor(static_cast<double>(per.size(0)), per.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_loss_cpu(
    const at::Tensor& x, const OptT& proxy, const OptT& labels, c10::string_view kind_name, double t, double m_p,
    double eps, c10::string_view reduction_name, int64_t score_budget) {
  const Kind kind = parse_kind(kind_name);
  const Reduction reduction = parse_reduction(reduction_name);
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0, "contrastive_loss: x must be a non-empty 2-D tensor, got ", x.sizes());
  TORCH_CHECK((kind == Kind::C2 || kind == Kind::D2D) == proxy.has_value(),
              "contrastive_loss: proxy is required by 2c and d2d only");
  TORCH_CHECK((kind != Kind::NTXent) == labels.has_value(), "contrastive_loss: labels are required except by ntxent");
  TORCH_CHECK(kind != Kind::NTXent || x.size(0) % 2 == 0, "contrastive_loss: ntxent needs an even number of rows");
  const LseArgs la = lse_args(kind, t, m_p);
  at::Tensor pos, n_pos, per, none;
  OptT extra;
  if (kind == Kind::C2) {
    pos = pair_op(x, *proxy, eps).div_(t);
    extra = pos;
  }
  auto [lse, rowmax, scores] = lse_op(x, labels, extra, la.scale, la.bias, la.relu, eps, la.preds, score_budget);
  auto lse0 = lse.select(1, 0);
  switch (kind) {
    case Kind::C2: per = lse0 - lse.select(1, 1); break;
    case Kind::D2D: {
      // N = 1 has no j != i: M_i is taken as 0 (the set is empty and the term vanishes anyway).
      auto m_i = at::where(at::isfinite(rowmax), rowmax, at::zeros_like(rowmax));
      pos = pair_op(x, *proxy, eps);
      auto q = (m_p - pos).div_(t).relu_();
      per = q + at::logaddexp(-q, lse0 - m_i);
      break;
    }
    case Kind::NTXent: per = lse0 - halves_cosine(x, eps).div_(t); break;
    case Kind::SupCon: {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastgan::same_class_cosine_sum", "")
                           .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double)>();
      at::Tensor pos_sum;
      std::tie(pos_sum, n_pos) = op.call(x, *labels, eps);
      auto mean_pos = pos_sum / (n_pos.clamp_min(1).to(pos_sum.scalar_type()) * t);
      per = at::where(n_pos > 0, lse0 - mean_pos, at::zeros_like(mean_pos));
      break;
    }
  }
  at::Tensor loss;
  if (reduction == Reduction::None) loss = per;
  else if (reduction == Reduction::Sum) loss = per.sum();
  else loss = per.sum() / mean_count(kind, per, n_pos);
  auto empty = at::empty({0}, lse.options());
  return {loss, lse, rowmax, pos.defined() ? pos : empty, n_pos.defined() ? n_pos : empty.to(at::kLong), scores};
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const OptT& proxy, const OptT& labels, const at::Tensor& lse,
    const at::Tensor& rowmax, const at::Tensor& pos, const at::Tensor& n_pos, const at::Tensor& scores,
    c10::string_view kind_name, double t, double m_p, double eps, c10::string_view reduction_name) {
  const Kind kind = parse_kind(kind_name);
  const Reduction reduction = parse_reduction(reduction_name);
  const LseArgs la = lse_args(kind, t, m_p);
  const int64_t n = x.size(0), k = static_cast<int64_t>(la.preds.size());
  // d loss / d per_i
  at::Tensor g = grad.to(lse.scalar_type());
  if (reduction == Reduction::None) g = g.contiguous();
  else if (reduction == Reduction::Sum) g = g.expand({n});
  else g = (g / mean_count(kind, lse, n_pos)).expand({n});
  at::Tensor grad_lse, grad_pos, grad_proxy;  // grad_pos: d loss / d cos(x_i, partner_i)
  OptT extra;
  switch (kind) {
    case Kind::C2:
      grad_lse = at::stack({g, -g}, 1);
      extra = pos;
      break;
    case Kind::D2D: {
      // per = q + logaddexp(-q, u), u = lse0 - M_i, q = relu((m_p - c) / t):
      //   d per / d u = sigmoid(u + q), d per / d q = 1 - sigmoid(-q - u) = sigmoid(u + q) ... times relu'.
      auto m_i = at::where(at::isfinite(rowmax), rowmax, at::zeros_like(rowmax));
      auto q = (m_p - pos).div_(t).relu_();
      auto w = at::sigmoid(lse.select(1, 0) - m_i + q);  // 0 where the LSE is -inf (no other class)
      grad_lse = (g * w).unsqueeze(1);
      grad_pos = (g * w).mul_(q > 0).div_(-t);
      break;
    }
    case Kind::NTXent:
      grad_lse = g.unsqueeze(1);
      grad_pos = g / -t;
      break;
    case Kind::SupCon: {
      auto has = n_pos > 0;
      grad_lse = (g * has).unsqueeze(1);
      grad_pos = (g * has).div_(n_pos.clamp_min(1).to(g.scalar_type()) * -t);
      break;
    }
  }
  auto [grad_x, unused_b, grad_extra] = lse_backward_op(grad_lse.contiguous(), x, labels, extra, lse, scores, la.scale,
                                                        la.bias, la.relu, eps, la.preds);
  (void)k;
  (void)unused_b;
  switch (kind) {
    case Kind::C2: {
      auto [gx, gp] = pair_backward_op(grad_extra.div(t).contiguous(), x, *proxy, eps);
      grad_x.add_(gx);
      grad_proxy = gp;
      break;
    }
    case Kind::D2D: {
      auto [gx, gp] = pair_backward_op(grad_pos.contiguous(), x, *proxy, eps);
      grad_x.add_(gx);
      grad_proxy = gp;
      break;
    }
    case Kind::NTXent: {
      // Both rows of a pair share one cosine: its gradient is the sum of theirs.
      const int64_t h = n / 2;
      auto gc = grad_pos.narrow(0, 0, h) + grad_pos.narrow(0, h, h);
      auto [g1, g2] = pair_backward_op(gc, x.narrow(0, 0, h), x.narrow(0, h, h), eps);
      grad_x.narrow(0, 0, h).add_(g1);
      grad_x.narrow(0, h, h).add_(g2);
      break;
    }
    case Kind::SupCon: {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fastgan::same_class_cosine_sum_backward", "")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
      grad_x.add_(op.call(grad_pos.contiguous(), x, *labels, eps));
      break;
    }
  }
  return {grad_x, grad_proxy.defined() ? grad_proxy : at::empty({0}, x.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("contrastive_loss", &contrastive_loss_cpu);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cpu);
}

}  // namespace fastgan
