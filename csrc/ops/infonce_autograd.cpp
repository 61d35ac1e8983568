// Autograd of fastgan::infonce_lse_budget as a C++ autograd kernel (the pattern of
// contrastive_autograd.cpp): no Python autograd.Function per call and step. The CPU kernel
// (csrc/cpu/infonce_lse.cpp) implements the forward and backward ops; their fakes are registered
// from Python (fastgan/ops/infonce_lse.py), so torch.compile traces both ops through this kernel.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

class InfonceLseBudget : public torch::autograd::Function<InfonceLseBudget> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& l, const at::Tensor& m, double scale,
                             std::optional<double> self_logit, bool normalize, double eps, int64_t score_budget) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::infonce_lse_budget", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, double, std::optional<double>, bool, double,
                             int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [pos, neg, scores] = op.call(l, m, scale, self_logit, normalize, eps, score_budget);
    ctx->mark_non_differentiable({scores});
    ctx->set_materialize_grads(false);  // the backward makes its own zeros where needed
    ctx->save_for_backward({l, m, neg, scores});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["self_logit"] = self_logit.has_value() ? c10::IValue(*self_logit) : c10::IValue();
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["eps"] = eps;
    return {pos, neg, scores};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastgan::infonce_lse_budget_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, double, std::optional<double>, bool, double)>();
    auto s = ctx->get_saved_variables();
    tensor_list out(7);
    if (!grads[0].defined() && !grads[1].defined()) return out;
    const at::Tensor& neg = s[2];
    // An unused output's gradient is undefined: zeros of its shape (the kernel skips zero rows).
    const int64_t n = s[0].size(0), hw = s[0].size(2);
    at::Tensor gp = grads[0].defined() ? grads[0].to(neg.scalar_type()).contiguous() : neg.new_zeros({n, hw});
    at::Tensor gn = grads[1].defined() ? grads[1].to(neg.scalar_type()).contiguous() : neg.new_zeros({n});
    const auto& d = ctx->saved_data;
    const auto& sl = d.at("self_logit");
    auto [gl, gm] = op.call(gp, gn, s[0], s[1], neg, s[3], d.at("scale").toDouble(),
                            sl.isNone() ? std::nullopt : std::optional<double>(sl.toDouble()),
                            d.at("normalize").toBool(), d.at("eps").toDouble());
    out[0] = gl;
    out[1] = gm;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> infonce_lse_budget_autograd(const at::Tensor& l, const at::Tensor& m,
                                                                           double scale,
                                                                           std::optional<double> self_logit,
                                                                           bool normalize, double eps,
                                                                           int64_t score_budget) {
  auto r = InfonceLseBudget::apply(l, m, scale, self_logit, normalize, eps, score_budget);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) { m.impl("infonce_lse_budget", &infonce_lse_budget_autograd); }

}  // namespace fastgan
