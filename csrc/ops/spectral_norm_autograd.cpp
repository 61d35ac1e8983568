// Autograd of fastgan::spectral_norm_apply (W / sigma with sigma = u^T W v, u and v constants), for
// every device that implements the op and fastgan::spectral_norm_apply_backward (CPU, CUDA), and
// fastgan::spectral_norm_group_step: a whole SpectralNormGroup's training step in one call (copies
// of u, v stepped by the multi-tensor power iteration, then W_i / sigma_i of every layer in the
// weight's own shape, one autograd node per layer), device-independent on top of those ops.
// Registered in C++ rather than through torch.library.register_autograd: the Python autograd
// wrapper costs ~25 us per call, more than the whole W / sigma of a small GAN layer, and a
// discriminator calls it once per spectral-norm layer per forward. The Triton op keeps its Python
// registration (fastgan/ops/spectral_norm.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/spectral_norm.h"

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

// W as a matrix: `dim` first, the rest flattened (fastgan/reference/spectral_norm.py:weight_to_matrix);
// a view for dim 0 of a contiguous weight.
at::Tensor to_matrix(const at::Tensor& w, int64_t dim) {
  if (dim == 0) return w.reshape({w.size(0), -1});
  return w.movedim(dim, 0).reshape({w.size(dim), -1});
}

// The inverse for a contiguous matrix (fastgan/functional/spectral_norm.py:matrix_to_weight).
at::Tensor from_matrix(const at::Tensor& m, at::IntArrayRef shape, int64_t dim) {
  if (dim == 0) return m.view(shape);
  std::vector<int64_t> permuted{shape[dim]};
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (d != dim) permuted.push_back(shape[d]);
  }
  return m.view(permuted).movedim(0, dim).contiguous();
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
      // Any strides: the kernels read an expanded G (the gradient of a sum) without materializing it.
      grad_w = call_apply_backward(grads[0], saved[0], saved[1], saved[2], saved[3]);
    }
    return {grad_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// W / sigma in W's own shape (the matrix view inside the node: no separate view nodes per layer).
class SpectralNormApplyWeight : public torch::autograd::Function<SpectralNormApplyWeight> {
 public:
  // `done`: W / sigma already computed by the caller (the CPU group step's parallel pass), moved out
  // as the output, or undefined. A pointer, not a tensor argument: autograd would make a returned
  // input a view of itself.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, const at::Tensor& u, const at::Tensor& v,
                            const at::Tensor& sigma, int64_t dim, at::Tensor* done) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor wm = to_matrix(w, dim);
    ctx->save_for_backward({wm, u, v, sigma});
    ctx->saved_data["dim"] = dim;
    ctx->set_materialize_grads(false);
    if (done->defined()) return std::move(*done);
    // CPU, dim 0: W / sigma written straight in W's shape (the matrix's row-major order), no view.
    if (w.is_cpu() && dim == 0) return apply_weight_cpu(wm, sigma, w.sizes());
    return from_matrix(call_apply(wm, u, v, sigma), w.sizes(), dim);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return tensor_list(6);
    auto saved = ctx->get_saved_variables();
    const int64_t dim = ctx->saved_data["dim"].toInt();
    if (dim == 0 && saved[0].is_cpu()) {
      // G in W's shape read as the matrix (contiguous, or expanded with every stride 0).
      at::Tensor grad_w = apply_backward_weight_cpu(grads[0], saved[0], saved[1], saved[2], saved[3], grads[0].sizes());
      return {grad_w, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const at::Tensor gm = to_matrix(grads[0], dim);  // a view for dim 0, also of an expanded G
    at::Tensor grad_w = call_apply_backward(gm, saved[0], saved[1], saved[2], saved[3]);
    std::vector<int64_t> shape(grads[0].sizes().begin(), grads[0].sizes().end());
    return {from_matrix(grad_w, shape, dim), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::vector<at::Tensor> call_power_iteration(at::TensorList ws, at::TensorList us, at::TensorList vs, int64_t n,
                                             double eps, bool hook_order) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::spectral_norm_power_iteration_", "")
                       .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList, at::TensorList, int64_t,
                                                      double, bool)>();
  return op.call(ws, us, vs, n, eps, hook_order);
}

// Layers up to this many elements are stepped whole by one thread, several side by side, on the
// CPU: a 128 x 1152 layer's gemv takes 17-20 us on one thread and no less on two (MKL splits it,
// then joins), and each of its passes split over the threads pays a fork and a join. Larger layers
// (SN-GAN-128's 1024 x 9216) are stepped one at a time, each pass over every thread.
constexpr int64_t kLayerParallelMax = int64_t(1) << 20;

// The CPU group step's layers of at most kLayerParallelMax elements, stepped in one parallel
// region when there are at least two threads and two such layers: each layer's power iteration (and, for
// dim 0, its W / sigma, into `done`) on one thread, layers dealt to the threads largest first, each
// to the least loaded. Every pass of a layer on one thread gives the bits of the same pass over
// several: the gemvs (MKL: the output split by rows), the norms of vectors under ATen's reduction
// grain, the element-wise division. Leaves the other layers' sigma undefined.
void step_small_layers_in_parallel(at::TensorList weights, const std::vector<at::Tensor>& mats, std::vector<at::Tensor>& us,
                                   std::vector<at::Tensor>& vs, at::IntArrayRef dims, int64_t n, double eps,
                                   bool hook_order, std::vector<at::Tensor>& sigmas, std::vector<at::Tensor>& done) {
  const int64_t threads = at::get_num_threads();
  std::vector<size_t> small;
  for (size_t i = 0; i < mats.size(); ++i) {
    if (mats[i].numel() <= kLayerParallelMax) small.push_back(i);
  }
  if (threads < 2 || small.size() < 2) return;
  std::stable_sort(small.begin(), small.end(), [&](size_t x, size_t y) { return mats[x].numel() > mats[y].numel(); });
  const int64_t parts = std::min<int64_t>(threads, static_cast<int64_t>(small.size()));
  std::vector<std::vector<size_t>> deal(parts);
  std::vector<int64_t> load(parts, 0);
  for (size_t i : small) {
    const auto p = std::min_element(load.begin(), load.end()) - load.begin();
    deal[p].push_back(i);
    load[p] += mats[i].numel() + 1024;  // + a layer's fixed cost, in elements
  }
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    // Thread-local state: the calling thread's guards do not reach the pool's threads.
    at::AutoDispatchBelowADInplaceOrView below;
    at::NoGradGuard no_grad;
    for (int64_t p = p0; p < p1; ++p) {
      for (size_t i : deal[p]) {
        sigmas[i] = power_iteration_one_cpu(mats[i], us[i], vs[i], n, eps, hook_order, i);
        if (dims[i] == 0) done[i] = apply_weight_cpu(mats[i], sigmas[i], weights[i].sizes());
      }
    }
  });
}

// [W_i / sigma_i in W_i's shape] + [u_i'] + [v_i'] + [sigma_i]: n power-iteration steps on copies
// of u, v (the caller's are only read), then every layer's W / sigma; with_autograd: one node per
// layer (a graph shared by all layers would be freed by the first backward through any of them).
std::vector<at::Tensor> group_step(at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
                                   int64_t n, double eps, bool hook_order, bool with_autograd) {
  const char* op = "spectral_norm_group_step";
  const size_t k = weights.size();
  TORCH_CHECK(us.size() == k && vs.size() == k && dims.size() == k, op,
              ": weights, us, vs and dims must have the same length, got ", k, ", ", us.size(), ", ", vs.size(),
              " and ", dims.size());
  TORCH_CHECK(n >= 1, op, ": n_power_iterations must be >= 1 (a training step), got ", n);
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  std::vector<at::Tensor> mats, u2, v2, out;
  mats.reserve(k);
  u2.reserve(k);
  v2.reserve(k);
  out.reserve(4 * k);
  std::vector<at::Tensor> sigmas(k);
  {
    at::AutoDispatchBelowADInplaceOrView below;
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < k; ++i) {
      const at::Tensor& w = weights[i];
      TORCH_CHECK(w.dim() >= 2, op, ": weights[", i, "] must have at least 2 dimensions, got shape ", w.sizes());
      TORCH_CHECK(dims[i] >= 0 && dims[i] < w.dim(), op, ": dims[", i, "] must lie in [0, ", w.dim(), "), got ",
                  dims[i]);
      mats.push_back(to_matrix(w.detach(), dims[i]));
      // Sizes here, naming the layer (the per-layer power iteration below would say "[0]").
      TORCH_CHECK(us[i].dim() == 1 && us[i].size(0) == mats[i].size(0), op, ": us[", i, "] must have ",
                  mats[i].size(0), " entries, got shape ", us[i].sizes());
      TORCH_CHECK(vs[i].dim() == 1 && vs[i].size(0) == mats[i].size(1), op, ": vs[", i, "] must have ",
                  mats[i].size(1), " entries, got shape ", vs[i].sizes());
      u2.push_back(us[i].clone(at::MemoryFormat::Contiguous));
      v2.push_back(vs[i].clone(at::MemoryFormat::Contiguous));
    }
  }
  // On a GPU one multi-tensor call steps every layer (a constant number of launches). On the CPU
  // each layer is stepped and divided right away, while its W is still in cache: its three passes
  // over W (W^T u, W v, W / sigma) run back to back instead of a whole model apart (measured on
  // SN-GAN-32's D, 12 layers, 4.8 MB of weights: the division pass costs about half as much).
  const bool per_layer = !weights.empty() && weights[0].is_cpu();
  std::vector<at::Tensor> done(k);  // CPU, dim 0: W / sigma of the layers stepped in parallel below
  if (!per_layer) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::NoGradGuard no_grad;
    sigmas = call_power_iteration(mats, u2, v2, n, eps, hook_order);
  } else {
    step_small_layers_in_parallel(weights, mats, u2, v2, dims, n, eps, hook_order, sigmas, done);
  }
  for (size_t i = 0; i < k; ++i) {
    if (per_layer && !sigmas[i].defined()) {
      at::AutoDispatchBelowADInplaceOrView below;
      at::NoGradGuard no_grad;
      // The CPU kernel itself: a dispatcher call per layer costs about what a small layer's step does.
      sigmas[i] = power_iteration_one_cpu(mats[i], u2[i], v2[i], n, eps, hook_order, i);
    }
    if (with_autograd) {
      out.push_back(SpectralNormApplyWeight::apply(weights[i], u2[i], v2[i], sigmas[i], dims[i], &done[i]));
    } else if (done[i].defined()) {
      out.push_back(done[i]);
    } else if (per_layer && dims[i] == 0) {
      out.push_back(apply_weight_cpu(mats[i], sigmas[i], weights[i].sizes()));
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      out.push_back(from_matrix(call_apply(mats[i], u2[i], v2[i], sigmas[i]), weights[i].sizes(), dims[i]));
    }
  }
  out.insert(out.end(), u2.begin(), u2.end());
  out.insert(out.end(), v2.begin(), v2.end());
  out.insert(out.end(), sigmas.begin(), sigmas.end());
  return out;
}

std::vector<at::Tensor> group_step_autograd(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                            at::IntArrayRef dims, int64_t n, double eps, bool hook_order) {
  return group_step(weights, us, vs, dims, n, eps, hook_order, /*with_autograd=*/true);
}

std::vector<at::Tensor> group_step_plain(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                         at::IntArrayRef dims, int64_t n, double eps, bool hook_order) {
  return group_step(weights, us, vs, dims, n, eps, hook_order, /*with_autograd=*/false);
}

at::Tensor spectral_norm_apply_autograd(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v,
                                        const at::Tensor& sigma) {
  return SpectralNormApply::apply(w, u, v, sigma);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("spectral_norm_apply", &spectral_norm_apply_autograd);
  m.impl("spectral_norm_group_step", &group_step_autograd);
}

// Below autograd: the same step without nodes (fakes: fastgan/ops/spectral_norm.py).
TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("spectral_norm_group_step", &group_step_plain);
}
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("spectral_norm_group_step", &group_step_plain);
}

}  // namespace fastgan
