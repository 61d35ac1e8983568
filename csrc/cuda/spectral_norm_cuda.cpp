// TORCH_LIBRARY_IMPL(fastgan, CUDA): torch glue around the launchers of csrc/cuda/spectral_norm.cu.
// Compiled only in CUDA builds. The multi-tensor power iteration and apply fill per-layer descriptors
// on the host, which the launchers pass to the kernels by value (no host-to-device copy, no host
// sync: CUDA-graph safe, see csrc/cuda/spectral_norm.h), and run every layer in a constant number of
// launches (power iteration: 4 per step, plus one; apply: one; its backward: two). float64 layers (rare:
// gradchecks, tests) run a per-layer loop of ATen ops in float64 instead, as the contract asks for
// float64 math there.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cuda/kernel_dtype.h"
#include "cuda/spectral_norm.h"

namespace fastgan {
namespace {

std::string indexed(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

// W_mat: 2-D on a CUDA device, floating point; any strides.
void check_matrix(const at::Tensor& w, const char* op, const std::string& name) {
  TORCH_CHECK(w.dim() == 2, op, ": ", name, " must be 2-D (out, in), got shape ", w.sizes());
  TORCH_CHECK(w.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", w.device());
  TORCH_CHECK(w.scalar_type() == at::kDouble || w.scalar_type() == at::kFloat || w.scalar_type() == at::kHalf ||
                  w.scalar_type() == at::kBFloat16,
              op, ": ", name, " must be float16, bfloat16, float32 or float64, got ", w.scalar_type());
}

// The kernels' view of a checked W_mat (not float64).
cuda::SnMatrix kernel_matrix(const at::Tensor& w, const char* op, const std::string& name) {
  cuda::SnMatrix m;
  m.p = w.data_ptr();
  m.rows = w.size(0);
  m.cols = w.size(1);
  m.stride_r = w.stride(0);
  m.stride_c = w.stride(1);
  m.dtype = cuda::kernel_dtype(w, op, name);
  return m;
}

// u (size entries) or v: 1-D, on w's device, in w's dtype or float32.
void check_vector(const at::Tensor& x, const at::Tensor& w, int64_t size, const char* op, const std::string& name,
                  const std::string& w_name) {
  TORCH_CHECK(x.dim() == 1 && x.size(0) == size, op, ": ", name, " must have shape (", size, ",) to match ", w_name,
              " of shape ", w.sizes(), ", got ", x.sizes());
  TORCH_CHECK(x.device() == w.device(), op, ": ", name, " must be on ", w_name, "'s device ", w.device(), ", got ",
              x.device());
  TORCH_CHECK(x.scalar_type() == w.scalar_type() || x.scalar_type() == at::kFloat, op, ": ", name,
              " must have the dtype of ", w_name, " (", w.scalar_type(), ") or float32, got ", x.scalar_type());
}

// The kernels' view of a checked u or v (not float64).
cuda::SnVector kernel_vector(const at::Tensor& x, const char* op, const std::string& name) {
  cuda::SnVector r;
  r.p = x.data_ptr();
  r.size = x.size(0);
  r.stride = x.stride(0);
  r.dtype = cuda::kernel_dtype(x, op, name);
  return r;
}

// sigma: one floating-point element on w's device.
void check_sigma(const at::Tensor& sigma, const at::Tensor& w, const char* op) {
  TORCH_CHECK(sigma.numel() == 1, op, ": sigma must have one element, got shape ", sigma.sizes());
  TORCH_CHECK(sigma.device() == w.device(), op, ": sigma must be on weight_mat's device ", w.device(), ", got ",
              sigma.device());
  TORCH_CHECK(at::isFloatingType(sigma.scalar_type()), op, ": sigma must be floating point, got ",
              sigma.scalar_type());
}

// float64 layer: the same steps in float64 ATen ops (one layer at a time). Returns sigma (float64).
at::Tensor power_iteration_float64(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v, int64_t n, double eps,
                                   bool hook_order) {
  at::Tensor uf = u.to(at::kDouble), vf = v.to(at::kDouble), sigma;
  if (n == 0) return at::dot(uf, at::mv(w, vf));
  // x / max(||x||, eps); on the last normalization sigma = ||x||^2 / max(||x||, eps).
  auto nrm = [&](const at::Tensor& x, bool last) {
    at::Tensor denom = x.norm(2).clamp_min(eps);
    if (last) sigma = at::dot(x, x) / denom;
    return x / denom;
  };
  for (int64_t k = 0; k < n; ++k) {
    const bool last = k == n - 1;
    if (hook_order) {
      vf = nrm(at::mv(w.t(), uf), false);
      uf = nrm(at::mv(w, vf), last);
    } else {
      uf = nrm(at::mv(w, vf), false);
      vf = nrm(at::mv(w.t(), uf), last);
    }
  }
  u.copy_(uf);
  v.copy_(vf);
  return sigma;
}

std::vector<at::Tensor> spectral_norm_power_iteration_cuda(at::TensorList weight_mats, at::TensorList us,
                                                           at::TensorList vs, int64_t n_power_iterations, double eps,
                                                           bool hook_order) {
  constexpr const char* op = "spectral_norm_power_iteration_";
  TORCH_CHECK(weight_mats.size() == us.size() && us.size() == vs.size(), op,
              ": weight_mats, us and vs must have the same length, got ", weight_mats.size(), ", ", us.size(),
              " and ", vs.size());
  TORCH_CHECK(n_power_iterations >= 0, op, ": n_power_iterations must be >= 0, got ", n_power_iterations);
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  if (weight_mats.empty()) return {};
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::NoGradGuard no_grad;
  const at::Tensor& w0 = weight_mats[0];
  TORCH_CHECK(w0.is_cuda(), op, ": weight_mats[0] must be a CUDA tensor, got device ", w0.device());
  c10::cuda::CUDAGuard guard(w0.device());
  const size_t num_layers = weight_mats.size();
  // Check everything before anything runs: a bad argument leaves every u and v untouched.
  for (size_t i = 0; i < num_layers; ++i) {
    const at::Tensor& w = weight_mats[i];
    const at::Tensor& u = us[i];
    const at::Tensor& v = vs[i];
    const std::string wn = indexed("weight_mats", i), un = indexed("us", i), vn = indexed("vs", i);
    check_matrix(w, op, wn);
    TORCH_CHECK(w.device() == w0.device(), op, ": ", wn, " must be on weight_mats[0]'s device ", w0.device(),
                ", got ", w.device());
    check_vector(u, w, w.size(0), op, un, wn);
    check_vector(v, w, w.size(1), op, vn, wn);
    TORCH_CHECK(at::has_internal_overlap(u) != at::MemOverlap::Yes, op, ": ", un,
                " is updated in place and must not have overlapping elements (an expanded tensor)");
    TORCH_CHECK(at::has_internal_overlap(v) != at::MemOverlap::Yes, op, ": ", vn,
                " is updated in place and must not have overlapping elements (an expanded tensor)");
    TORCH_CHECK(u.numel() == 0 || v.numel() == 0 || at::get_overlap_status(u, v) == at::MemOverlapStatus::No, op,
                ": ", un, " and ", vn, " must not share memory");
  }
  std::vector<at::Tensor> sigmas(num_layers);
  std::vector<cuda::SnLayer> layers;
  layers.reserve(num_layers);
  for (size_t i = 0; i < num_layers; ++i) {
    const at::Tensor& w = weight_mats[i];
    const at::Tensor& u = us[i];
    const at::Tensor& v = vs[i];
    if (w.scalar_type() == at::kDouble) {  // float64 math: ATen ops, on the same (current) stream
      sigmas[i] = power_iteration_float64(w, u, v, n_power_iterations, eps, hook_order);
      continue;
    }
    const std::string wn = indexed("weight_mats", i);
    const cuda::SnMatrix m = kernel_matrix(w, op, wn);
    const cuda::SnVector uu = kernel_vector(u, op, indexed("us", i));
    const cuda::SnVector vv = kernel_vector(v, op, indexed("vs", i));
    sigmas[i] = at::empty({}, w.options().dtype(at::kFloat));
    cuda::SnLayer L{};
    L.w = m.p;
    L.u = u.data_ptr();
    L.v = v.data_ptr();
    L.sigma = sigmas[i].data_ptr<float>();
    L.rows = m.rows;
    L.cols = m.cols;
    L.stride_r = m.stride_r;
    L.stride_c = m.stride_c;
    L.stride_u = uu.stride;
    L.stride_v = vv.stride;
    L.w_dtype = m.dtype;
    L.u_dtype = uu.dtype;
    L.v_dtype = vv.dtype;
    layers.push_back(L);
  }
  if (layers.empty()) return sigmas;
  const int64_t num = static_cast<int64_t>(layers.size());
  at::Tensor workspace =
      at::empty({cuda::spectral_norm_power_iteration_workspace(layers.data(), num)}, w0.options().dtype(at::kFloat));
  auto err = cuda::spectral_norm_power_iteration(layers.data(), num, workspace.data_ptr<float>(), n_power_iterations,
                                                 static_cast<float>(eps), hook_order, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(err));
  return sigmas;
}

at::Tensor spectral_norm_apply_cuda(const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v,
                                    const at::Tensor& sigma) {
  constexpr const char* op = "spectral_norm_apply";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_matrix(weight_mat, op, "weight_mat");
  check_vector(u, weight_mat, weight_mat.size(0), op, "u", "weight_mat");
  check_vector(v, weight_mat, weight_mat.size(1), op, "v", "weight_mat");
  check_sigma(sigma, weight_mat, op);
  c10::cuda::CUDAGuard guard(weight_mat.device());
  if (weight_mat.scalar_type() == at::kDouble) {
    return at::div(weight_mat.detach(), sigma.detach().reshape({}).to(at::kDouble)).contiguous();
  }
  const cuda::SnMatrix w = kernel_matrix(weight_mat, op, "weight_mat");
  const at::Tensor s = sigma.detach().reshape({}).to(at::kFloat).contiguous();
  at::Tensor out = at::empty({w.rows, w.cols}, weight_mat.options());
  cuda::SnApplyLayer L{};
  L.w = w;
  L.sigma = s.data_ptr<float>();
  L.out = out.data_ptr();
  auto err = cuda::spectral_norm_apply(&L, 1, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor spectral_norm_apply_backward_cuda(const at::Tensor& grad, const at::Tensor& weight_mat, const at::Tensor& u,
                                             const at::Tensor& v, const at::Tensor& sigma) {
  constexpr const char* op = "spectral_norm_apply_backward";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_matrix(weight_mat, op, "weight_mat");
  TORCH_CHECK(grad.sizes() == weight_mat.sizes(), op, ": grad must have weight_mat's shape ", weight_mat.sizes(),
              ", got ", grad.sizes());
  TORCH_CHECK(grad.device() == weight_mat.device(), op, ": grad must be on weight_mat's device ", weight_mat.device(),
              ", got ", grad.device());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op, ": grad must be floating point, got ", grad.scalar_type());
  check_vector(u, weight_mat, weight_mat.size(0), op, "u", "weight_mat");
  check_vector(v, weight_mat, weight_mat.size(1), op, "v", "weight_mat");
  check_sigma(sigma, weight_mat, op);
  c10::cuda::CUDAGuard guard(weight_mat.device());
  // The kernels read G in W's dtype (any strides); another dtype is converted once.
  const at::Tensor g =
      (grad.scalar_type() == weight_mat.scalar_type() ? grad : grad.to(weight_mat.scalar_type())).detach();
  if (weight_mat.scalar_type() == at::kDouble) {
    const at::Tensor w = weight_mat.detach();
    const at::Tensor s = sigma.detach().reshape({}).to(at::kDouble);
    const at::Tensor c = at::sum(g * w) / (s * s);
    return (g / s - at::outer(c * u.detach().to(at::kDouble), v.detach().to(at::kDouble))).contiguous();
  }
  const cuda::SnMatrix w = kernel_matrix(weight_mat, op, "weight_mat");
  const cuda::SnMatrix gm = kernel_matrix(g, op, "grad");
  const cuda::SnVector uu = kernel_vector(u, op, "u");
  const cuda::SnVector vv = kernel_vector(v, op, "v");
  const at::Tensor s = sigma.detach().reshape({}).to(at::kFloat).contiguous();
  at::Tensor out = at::empty({w.rows, w.cols}, weight_mat.options());
  cuda::SnApplyLayer L{w, gm, uu, vv, s.data_ptr<float>(), out.data_ptr()};
  at::Tensor workspace =
      at::empty({cuda::spectral_norm_apply_backward_workspace(&L, 1)}, weight_mat.options().dtype(at::kFloat));
  auto err = cuda::spectral_norm_apply_backward(&L, 1, workspace.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

// The group's checks: one float16 / bfloat16 / float32 dtype on one CUDA device, a 1-element sigma each.
void check_group(at::TensorList weight_mats, at::TensorList sigmas, const char* op) {
  TORCH_CHECK(weight_mats.size() == sigmas.size(), op, ": weight_mats and sigmas must have the same length, got ",
              weight_mats.size(), " and ", sigmas.size());
  for (size_t i = 0; i < weight_mats.size(); ++i) {
    const at::Tensor& w = weight_mats[i];
    const std::string wn = indexed("weight_mats", i);
    check_matrix(w, op, wn);
    TORCH_CHECK(w.scalar_type() != at::kDouble, op, ": ", wn, " must be float16, bfloat16 or float32 (float64 layers "
                "take the per-layer spectral_norm_apply), got ", w.scalar_type());
    TORCH_CHECK(w.device() == weight_mats[0].device() && w.scalar_type() == weight_mats[0].scalar_type(), op, ": ", wn,
                " must have weight_mats[0]'s device and dtype (", weight_mats[0].device(), ", ",
                weight_mats[0].scalar_type(), "), got ", w.device(), ", ", w.scalar_type());
    TORCH_CHECK(sigmas[i].numel() == 1 && sigmas[i].device() == w.device() && sigmas[i].scalar_type() == at::kFloat,
                op, ": ", indexed("sigmas", i), " must be one float32 element on ", wn, "'s device, got shape ",
                sigmas[i].sizes(), ", ", sigmas[i].scalar_type(), " on ", sigmas[i].device());
  }
}

// Contiguous outputs of the weights' shapes: views of ONE fresh buffer (one allocation per call).
std::vector<at::Tensor> group_outputs(at::TensorList weight_mats) {
  int64_t total = 0;
  for (const at::Tensor& w : weight_mats) total += w.numel();
  at::Tensor flat = at::empty({total}, weight_mats[0].options());
  std::vector<at::Tensor> outs;
  int64_t off = 0;
  for (const at::Tensor& w : weight_mats) {
    outs.push_back(flat.narrow(0, off, w.numel()).view(w.sizes()));
    off += w.numel();
  }
  return outs;
}

std::vector<at::Tensor> spectral_norm_apply_group_cuda(at::TensorList weight_mats, at::TensorList sigmas) {
  constexpr const char* op = "spectral_norm_apply_group";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_group(weight_mats, sigmas, op);
  if (weight_mats.empty()) return {};
  c10::cuda::CUDAGuard guard(weight_mats[0].device());
  std::vector<at::Tensor> outs = group_outputs(weight_mats);
  std::vector<cuda::SnApplyLayer> layers(weight_mats.size());
  for (size_t i = 0; i < weight_mats.size(); ++i) {
    layers[i].w = kernel_matrix(weight_mats[i], op, indexed("weight_mats", i));
    layers[i].sigma = sigmas[i].data_ptr<float>();
    layers[i].out = outs[i].data_ptr();
  }
  auto err = cuda::spectral_norm_apply(layers.data(), static_cast<int64_t>(layers.size()),
                                       c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(err));
  return outs;
}

std::vector<at::Tensor> spectral_norm_apply_group_backward_cuda(at::TensorList grads, at::TensorList weight_mats,
                                                                at::TensorList us, at::TensorList vs,
                                                                at::TensorList sigmas) {
  constexpr const char* op = "spectral_norm_apply_group_backward";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_group(weight_mats, sigmas, op);
  const size_t k = weight_mats.size();
  TORCH_CHECK(grads.size() == k && us.size() == k && vs.size() == k, op,
              ": grads, weight_mats, us and vs must have the same length, got ", grads.size(), ", ", k, ", ",
              us.size(), " and ", vs.size());
  if (k == 0) return {};
  c10::cuda::CUDAGuard guard(weight_mats[0].device());
  std::vector<at::Tensor> gs(k);
  std::vector<cuda::SnApplyLayer> layers(k);
  for (size_t i = 0; i < k; ++i) {
    const at::Tensor& w = weight_mats[i];
    const std::string wn = indexed("weight_mats", i), gn = indexed("grads", i);
    TORCH_CHECK(grads[i].sizes() == w.sizes() && grads[i].device() == w.device(), op, ": ", gn, " must have ", wn,
                "'s shape ", w.sizes(), " and device ", w.device(), ", got ", grads[i].sizes(), " on ",
                grads[i].device());
    check_vector(us[i], w, w.size(0), op, indexed("us", i), wn);
    check_vector(vs[i], w, w.size(1), op, indexed("vs", i), wn);
    gs[i] = grads[i].scalar_type() == w.scalar_type() ? grads[i] : grads[i].to(w.scalar_type());
    layers[i].w = kernel_matrix(w, op, wn);
    layers[i].g = kernel_matrix(gs[i], op, gn);
    layers[i].u = kernel_vector(us[i], op, indexed("us", i));
    layers[i].v = kernel_vector(vs[i], op, indexed("vs", i));
    layers[i].sigma = sigmas[i].data_ptr<float>();
  }
  std::vector<at::Tensor> outs = group_outputs(weight_mats);
  for (size_t i = 0; i < k; ++i) layers[i].out = outs[i].data_ptr();
  const int64_t num = static_cast<int64_t>(k);
  at::Tensor workspace = at::empty({cuda::spectral_norm_apply_backward_workspace(layers.data(), num)},
                                   weight_mats[0].options().dtype(at::kFloat));
  auto err = cuda::spectral_norm_apply_backward(layers.data(), num, workspace.data_ptr<float>(),
                                                c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(err));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("spectral_norm_apply_group", &spectral_norm_apply_group_cuda);
  m.impl("spectral_norm_apply_group_backward", &spectral_norm_apply_group_backward_cuda);
  m.impl("spectral_norm_power_iteration_", &spectral_norm_power_iteration_cuda);
  m.impl("spectral_norm_apply", &spectral_norm_apply_cuda);
  m.impl("spectral_norm_apply_backward", &spectral_norm_apply_backward_cuda);
}

}  // namespace fastgan
