// Autograd of fastgan::contrastive_loss, contrastive_lse, contrastive_lse_budget, pair_cosine,
// same_class_cosine_sum and cosine_similarity_matrix_self as C++ autograd kernels
// (the pattern of spectral_norm_autograd.cpp): the Python wrapper of torch.library.register_autograd
// costs about 100-150 us per call and step, a tenth of a whole 2C step at N = 64. The devices
// implement the forward and backward ops; the fakes are registered from Python
// (fastgan/ops/contrastive_lse.py), so torch.compile traces both ops through this kernel.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/contrastive_calls.h"

#include <optional>
#include <string>
#include <vector>

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using OptT = std::optional<at::Tensor>;
using calls::opt;
using calls::undef;

// The LSE ops' scalar arguments (z = scale s_ij + bias, ...), saved on the node for the backward op.
struct SavedLseArgs {
  double scale, bias;
  bool relu, normalize;
  double eps;
  bool exclude_self;
  int64_t self_offset;
  std::vector<int64_t> predicates;

  void save(AutogradContext* ctx) const {
    auto& d = ctx->saved_data;
    d["scale"] = scale;
    d["bias"] = bias;
    d["relu"] = relu;
    d["normalize"] = normalize;
    d["eps"] = eps;
    d["exclude_self"] = exclude_self;
    d["self_offset"] = self_offset;
    d["predicates"] = predicates;
  }

  static SavedLseArgs saved(AutogradContext* ctx) {
    const auto& d = ctx->saved_data;
    return {d.at("scale").toDouble(),     d.at("bias").toDouble(),
            d.at("relu").toBool(),        d.at("normalize").toBool(),
            d.at("eps").toDouble(),       d.at("exclude_self").toBool(),
            d.at("self_offset").toInt(),  d.at("predicates").toIntVector()};
  }
};

// fastgan::contrastive_lse (the CUDA losses' LSE; the CPU backend calls contrastive_lse_budget).
class ContrastiveLse : public torch::autograd::Function<ContrastiveLse> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b, const OptT& la,
                             const OptT& lb, const OptT& extra, double scale, double bias, bool relu, bool normalize,
                             double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [lse, rowmax] = calls::contrastive_lse(a, b, la, lb, extra, scale, bias, relu, normalize, eps, exclude_self,
                                                self_offset, predicates);
    ctx->mark_non_differentiable({rowmax});  // D2D-CE's detached shift: no zero-filled gradient for it
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({a, b, undef(la), undef(lb), undef(extra), lse});
    SavedLseArgs{scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates.vec()}.save(ctx);
    return {lse, rowmax};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto s = ctx->get_saved_variables();
    tensor_list out(13);
    if (!grads[0].defined()) return out;  // only rowmax reached the loss: no gradient
    const auto p = SavedLseArgs::saved(ctx);
    auto [ga, gb, ge] = calls::contrastive_lse_backward(grads[0].contiguous(), s[0], s[1], opt(s[2]), opt(s[3]),
                                                        opt(s[4]), s[5], p.scale, p.bias, p.relu, p.normalize, p.eps,
                                                        p.exclude_self, p.self_offset, p.predicates);
    out[0] = ga;
    out[1] = gb;
    if (s[4].defined()) out[4] = ge;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> contrastive_lse_autograd(const at::Tensor& a, const at::Tensor& b, const OptT& la,
                                                            const OptT& lb, const OptT& extra, double scale,
                                                            double bias, bool relu, bool normalize, double eps,
                                                            bool exclude_self, int64_t self_offset,
                                                            at::IntArrayRef predicates) {
  auto r = ContrastiveLse::apply(a, b, la, lb, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                                 predicates);
  return {r[0], r[1]};
}

class ContrastiveLseBudget : public torch::autograd::Function<ContrastiveLseBudget> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& a, const OptT& b, const OptT& la, const OptT& lb,
                             const OptT& extra, double scale, double bias, bool relu, bool normalize, double eps,
                             bool exclude_self, int64_t self_offset, at::IntArrayRef predicates, bool columns,
                             int64_t score_budget) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [lse, rowmax, scores] = calls::contrastive_lse_budget(a, b, la, lb, extra, scale, bias, relu, normalize, eps,
                                                               exclude_self, self_offset, predicates, columns,
                                                               score_budget);
    ctx->mark_non_differentiable({rowmax, scores});  // rowmax: D2D-CE's detached shift
    ctx->set_materialize_grads(false);  // no zero tensors for the unused outputs' gradients
    ctx->save_for_backward({a, undef(b), undef(la), undef(lb), undef(extra), lse, scores});
    SavedLseArgs{scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates.vec()}.save(ctx);
    ctx->saved_data["columns"] = columns;
    return {lse, rowmax, scores};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto s = ctx->get_saved_variables();
    tensor_list out(15);
    if (!grads[0].defined()) return out;
    const auto p = SavedLseArgs::saved(ctx);
    auto [ga, gb, ge] = calls::contrastive_lse_budget_backward(
        grads[0].contiguous(), s[0], opt(s[1]), opt(s[2]), opt(s[3]), opt(s[4]), s[5], s[6], p.scale, p.bias, p.relu,
        p.normalize, p.eps, p.exclude_self, p.self_offset, p.predicates, ctx->saved_data["columns"].toBool());
    out[0] = ga;
    if (s[1].defined()) out[1] = gb;  // b = None: the whole gradient is in ga
    if (s[4].defined()) out[4] = ge;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_autograd(
    const at::Tensor& a, const OptT& b, const OptT& la, const OptT& lb, const OptT& extra, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns, int64_t score_budget) {
  auto r = ContrastiveLseBudget::apply(a, b, la, lb, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                                       predicates, columns, score_budget);
  return {r[0], r[1], r[2]};
}

class PairCosine : public torch::autograd::Function<PairCosine> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, double eps, double scale,
                            int64_t shift) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, y});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["shift"] = shift;
    return calls::pair_cosine(x, y, eps, scale, shift);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    auto [gx, gy] = calls::pair_cosine_backward(grads[0].contiguous(), s[0], s[1], d.at("eps").toDouble(),
                                                d.at("scale").toDouble(), d.at("shift").toInt());
    return {gx, gy, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor pair_cosine_autograd(const at::Tensor& x, const at::Tensor& y, double eps, double scale, int64_t shift) {
  return PairCosine::apply(x, y, eps, scale, shift);
}

class SameClassCosineSum : public torch::autograd::Function<SameClassCosineSum> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& labels, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [pos, n_pos] = calls::same_class_cosine_sum(x, labels, eps);
    ctx->mark_non_differentiable({n_pos});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, labels});
    ctx->saved_data["eps"] = eps;
    return {pos, n_pos};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto s = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    return {calls::same_class_cosine_sum_backward(grads[0].contiguous(), s[0], s[1], ctx->saved_data["eps"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> same_class_cosine_sum_autograd(const at::Tensor& x, const at::Tensor& labels,
                                                                  double eps) {
  auto r = SameClassCosineSum::apply(x, labels, eps);
  return {r[0], r[1]};
}

// S = scale nrm(a) nrm(a)^T (fastgan::cosine_similarity_matrix_self). The incoming gradient is
// passed with its strides (the backward kernels read any layout: S.sum()'s is an expanded scalar).
class CosineSimilarityMatrixSelf : public torch::autograd::Function<CosineSimilarityMatrixSelf> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, double scale, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::cosine_similarity_matrix_self", "")
                         .typed<at::Tensor(const at::Tensor&, double, double)>();
    ctx->save_for_backward({a});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["eps"] = eps;
    return op.call(a, scale, eps);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::cosine_similarity_matrix_self_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double)>();
    auto s = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    return {op.call(grads[0], s[0], ctx->saved_data["scale"].toDouble(), ctx->saved_data["eps"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor cosine_similarity_matrix_self_autograd(const at::Tensor& a, double scale, double eps) {
  return CosineSimilarityMatrixSelf::apply(a, scale, eps);
}

// A whole loss (fastgan::contrastive_loss): one node whose backward is one op.
class ContrastiveLoss : public torch::autograd::Function<ContrastiveLoss> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& proxy, const OptT& labels,
                             c10::string_view kind, double temperature, double m_p, double eps,
                             c10::string_view reduction, int64_t score_budget) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::contrastive_loss", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const OptT&, const OptT&, c10::string_view, double, double, double,
                             c10::string_view, int64_t)>();
    auto [loss, lse, rowmax, pos, n_pos, scores] =
        op.call(x, proxy, labels, kind, temperature, m_p, eps, reduction, score_budget);
    ctx->mark_non_differentiable({lse, rowmax, pos, n_pos, scores});
    // Only the loss is differentiable: without this the engine would allocate and zero five
    // gradients (scores: N x N) on every backward only for them to be ignored.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, undef(proxy), undef(labels), lse, rowmax, pos, n_pos, scores});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["m_p"] = m_p;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["reduction"] = std::string(reduction);
    return {loss, lse, rowmax, pos, n_pos, scores};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::contrastive_loss_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             c10::string_view, double, double, double, c10::string_view)>();
    tensor_list out(9);
    if (!grads[0].defined()) return out;
    auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const std::string kind = d.at("kind").toStringRef(), reduction = d.at("reduction").toStringRef();
    auto [gx, gp] = op.call(grads[0], s[0], opt(s[1]), opt(s[2]), s[3], s[4], s[5], s[6], s[7], kind,
                            d.at("temperature").toDouble(), d.at("m_p").toDouble(), d.at("eps").toDouble(), reduction);
    out[0] = gx;
    if (s[1].defined()) out[1] = gp;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_loss_autograd(
    const at::Tensor& x, const OptT& proxy, const OptT& labels, c10::string_view kind, double temperature, double m_p,
    double eps, c10::string_view reduction, int64_t score_budget) {
  auto r = ContrastiveLoss::apply(x, proxy, labels, kind, temperature, m_p, eps, reduction, score_budget);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("contrastive_loss", &contrastive_loss_autograd);
  m.impl("same_class_cosine_sum", &same_class_cosine_sum_autograd);
  m.impl("contrastive_lse", &contrastive_lse_autograd);
  m.impl("contrastive_lse_budget", &contrastive_lse_budget_autograd);
  m.impl("pair_cosine", &pair_cosine_autograd);
  m.impl("cosine_similarity_matrix_self", &cosine_similarity_matrix_self_autograd);
}

}  // namespace fastgan
