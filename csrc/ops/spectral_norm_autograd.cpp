// Autograd of fastgan::spectral_norm_apply (W / sigma with sigma = u^T W v, u and v constants), for
// every device that implements the op and fastgan::spectral_norm_apply_backward (CPU, CUDA).
// Registered in C++ rather than through torch.library.register_autograd: the Python autograd
// wrapper costs ~25 us per call, more than the whole W / sigma of a small GAN layer, and a
// discriminator calls it once per spectral-norm layer per forward. The Triton op keeps its Python
// registration (fastgan/ops/spectral_norm.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

at::Tensor call_apply(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v, const at::Tensor& sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::spectral_norm_apply", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(w, u, v, sigma);
}

at::Tensor call_apply_backward(const at::Tensor& g, const at::Tensor& w, const at::Tensor& u, const at::Tensor& v,
                               const at::Tensor& sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::spectral_norm_apply_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  return op.call(g, w, u, v, sigma);
}

class SpectralNormApply : public torch::autograd::Function<SpectralNormApply> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, const at::Tensor& u, const at::Tensor& v,
                            const at::Tensor& sigma) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // u and v must be clones owned by this graph (the caller's job): the buffers change in place at
    // the next training forward, before this one's backward (D(real) + D(fake), one backward).
    ctx->save_for_backward({w, u, v, sigma});
    return call_apply(w, u, v, sigma);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor grad_w;
    if (ctx->needs_input_grad(0)) {
      grad_w = call_apply_backward(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3]);
    }
    return {grad_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor spectral_norm_apply_autograd(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v,
                                        const at::Tensor& sigma) {
  return SpectralNormApply::apply(w, u, v, sigma);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("spectral_norm_apply", &spectral_norm_apply_autograd);
}

}  // namespace fastgan
