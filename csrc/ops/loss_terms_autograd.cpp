// Autograd of the losses' terms around contrastive_lse, fastgan::lse_combine, d2d_epilogue and
// supcon_epilogue, as C++ autograd kernels (the pattern of contrastive_autograd.cpp): what the CUDA
// 2C, D2D-CE, NT-Xent, SupCon and CLIP end with. The Python wrapper of
// torch.library.register_autograd they had cost ~45 us of host time per op and step (2-core CI
// machine: lse_combine forward + backward 77 us with it, the C++-autograd pair_cosine 32 us), against
// a GPU time of a few us per op at GAN batch sizes. The devices
// implement the forward and backward ops; the fakes are registered from Python
// (fastgan/ops/loss_terms.py), so torch.compile traces both ops through these kernels.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/contrastive_calls.h"

#include <optional>
#include <vector>

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using OptT = std::optional<at::Tensor>;
using calls::opt;
using calls::undef;

class LseCombine : public torch::autograd::Function<LseCombine> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const OptT& y1, const OptT& y2,
                            at::ArrayRef<double> coefs, double c1, double c2, double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, undef(y1), undef(y2)});
    ctx->saved_data["coefs"] = coefs.vec();
    ctx->saved_data["c1"] = c1;
    ctx->saved_data["c2"] = c2;
    ctx->saved_data["scale"] = scale;
    return calls::lse_combine(x, y1, y2, coefs, c1, c2, scale);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const auto coefs = d.at("coefs").toDoubleVector();
    auto [gx, g1, g2] = calls::lse_combine_backward(grads[0], s[0], opt(s[1]), opt(s[2]), coefs, d.at("c1").toDouble(),
                                                    d.at("c2").toDouble(), d.at("scale").toDouble());
    tensor_list out(7);
    out[0] = gx;
    if (s[1].defined()) out[1] = g1;  // without y1, y2 the backward's placeholders are dropped
    if (s[2].defined()) out[2] = g2;
    return out;
  }
};

at::Tensor lse_combine_autograd(const at::Tensor& x, const OptT& y1, const OptT& y2, at::ArrayRef<double> coefs,
                                double c1, double c2, double scale) {
  return LseCombine::apply(x, y1, y2, coefs, c1, c2, scale);
}

class D2dEpilogue : public torch::autograd::Function<D2dEpilogue> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& lse, const at::Tensor& rowmax,
                            const at::Tensor& cos, double m_p, double temperature, double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({lse, rowmax, cos});
    ctx->saved_data["m_p"] = m_p;
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["scale"] = scale;
    return calls::d2d_epilogue(lse, rowmax, cos, m_p, temperature, scale);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    auto [glse, gcos] = calls::d2d_epilogue_backward(grads[0], s[0], s[1], s[2], d.at("m_p").toDouble(),
                                                     d.at("temperature").toDouble(), d.at("scale").toDouble());
    return {glse, at::Tensor(), gcos, at::Tensor(), at::Tensor(), at::Tensor()};  // rowmax: a constant shift
  }
};

at::Tensor d2d_epilogue_autograd(const at::Tensor& lse, const at::Tensor& rowmax, const at::Tensor& cos, double m_p,
                                 double temperature, double scale) {
  return D2dEpilogue::apply(lse, rowmax, cos, m_p, temperature, scale);
}

class SupconEpilogue : public torch::autograd::Function<SupconEpilogue> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& lse, const at::Tensor& pos,
                             const at::Tensor& n_pos, double temperature, bool mean) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, den] = calls::supcon_epilogue(lse, pos, n_pos, temperature, mean);
    ctx->mark_non_differentiable({den});  // the mean's divisor, a count
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({den, lse, pos, n_pos});
    ctx->saved_data["temperature"] = temperature;
    return {loss, den};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    tensor_list out(5);
    if (!grads[0].defined()) return out;
    auto s = ctx->get_saved_variables();
    auto [glse, gpos] =
        calls::supcon_epilogue_backward(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data["temperature"].toDouble());
    out[0] = glse;
    out[1] = gpos;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> supcon_epilogue_autograd(const at::Tensor& lse, const at::Tensor& pos,
                                                            const at::Tensor& n_pos, double temperature, bool mean) {
  auto r = SupconEpilogue::apply(lse, pos, n_pos, temperature, mean);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("lse_combine", &lse_combine_autograd);
  m.impl("d2d_epilogue", &d2d_epilogue_autograd);
  m.impl("supcon_epilogue", &supcon_epilogue_autograd);
}

}  // namespace fastgan
