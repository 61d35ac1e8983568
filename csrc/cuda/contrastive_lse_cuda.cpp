// TORCH_LIBRARY_IMPL(fastgan, CUDA): torch glue around the launchers of csrc/cuda/contrastive_lse.cu.
// Compiled only in CUDA builds. The inverse norms and the normalization backward are kernels of
// csrc/cuda/contrastive_lse.cu (one launch each for both sides), in contrastive_lse and in the cosine
// matrix (whose backward's two products are cuBLAS), and so is the extra logit's gradient. SupCon's
// same-class cosine sums run on contrastive_lse's tiles and plan, so their glue is here too.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <tuple>
#include <utility>

#include "cpu/common.h"
#include "cuda/contrastive_lse.h"
#include "cuda/kernel_dtype.h"

namespace fastgan {
namespace {

void check_cuda(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "a and b must be 2-D, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1), "a and b must have the same feature size");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "a and b must have the same dtype");
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && a.device() == b.device(), "a and b must be on one CUDA device");
}

// The SM count of a device, asked once (cudaDeviceGetAttribute is no stream operation: no sync, and
// allowed while a CUDA graph is captured). The launchers' split plan is a function of it and the sizes.
int sm_count(int device) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device < 0 || device >= static_cast<int>(cache.size())) device = 0;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    const cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    TORCH_CHECK(err == cudaSuccess && n > 0, "contrastive_lse: cannot query the SM count of CUDA device ", device, ": ",
                cudaGetErrorString(err));
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Both sides' inverse norms (float32, one launch: csrc/cuda/contrastive_lse.cu) of contiguous a, b.
std::pair<at::Tensor, at::Tensor> inverse_norms_both(const at::Tensor& a, const at::Tensor& b, cuda::DType dtype,
                                                     double eps, bool normalize, const char* op) {
  auto fopts = a.options().dtype(at::kFloat);
  auto inv_a = at::empty({a.size(0)}, fopts);
  auto inv_b = at::empty({b.size(0)}, fopts);
  auto err = cuda::inverse_norms(a.data_ptr(), a.size(0), a.size(1), b.data_ptr(), b.size(0), b.size(1), a.size(1),
                                 dtype, static_cast<float>(eps), normalize, inv_a.data_ptr<float>(),
                                 inv_b.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": the inverse-norm kernel failed: ", cudaGetErrorString(err));
  return {inv_a, inv_b};
}

// Both sides' normalization backward (one launch) from the raw-row gradients U, V (contiguous float32),
// written in the inputs' dtype.
std::pair<at::Tensor, at::Tensor> normalization_backward_both(const at::Tensor& a, const at::Tensor& b,
                                                              const at::Tensor& inv_a, const at::Tensor& inv_b,
                                                              const at::Tensor& U, const at::Tensor& V,
                                                              cuda::DType dtype, double eps, bool normalize,
                                                              const char* op) {
  auto grad_a = at::empty(a.sizes(), a.options());
  auto grad_b = at::empty(b.sizes(), b.options());
  auto err = cuda::normalization_backward(a.data_ptr(), a.size(0), a.size(1), inv_a.data_ptr<float>(),
                                          U.data_ptr<float>(), grad_a.data_ptr(), b.data_ptr(), b.size(0), b.size(1),
                                          inv_b.data_ptr<float>(), V.data_ptr<float>(), grad_b.data_ptr(), a.size(1),
                                          dtype, static_cast<float>(eps), normalize, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": the normalization-backward kernel failed: ", cudaGetErrorString(err));
  return {grad_a, grad_b};
}

struct Prepared {
  at::Tensor a, b, inv_a, inv_b, la, lb, extra;
  cuda::LseParams p;
};

Prepared prepare(const at::Tensor& a_in, const at::Tensor& b_in, const std::optional<at::Tensor>& label_a,
                 const std::optional<at::Tensor>& label_b, const std::optional<at::Tensor>& extra, double scale,
                 double bias, bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset,
                 at::IntArrayRef predicates) {
  check_cuda(a_in, b_in);
  check_contrastive_args(a_in, b_in, label_a, label_b, extra, predicates);
  Prepared r;
  r.a = a_in.detach().contiguous();
  r.b = b_in.detach().contiguous();
  r.p.dtype = cuda::kernel_dtype(r.a, "contrastive_lse", "a");
  std::tie(r.inv_a, r.inv_b) = inverse_norms_both(r.a, r.b, r.p.dtype, eps, normalize, "contrastive_lse");
  if (label_a.has_value() && label_b.has_value()) {
    r.la = label_a->to(r.a.device()).contiguous();
    r.lb = label_b->to(r.a.device()).contiguous();
  }
  if (extra.has_value()) r.extra = extra->detach().to(r.a.device(), at::kFloat).contiguous();
  cuda::LseParams& p = r.p;
  p.a = r.a.data_ptr();
  p.b = r.b.data_ptr();
  p.inv_a = r.inv_a.data_ptr<float>();
  p.inv_b = r.inv_b.data_ptr<float>();
  p.la = r.la.defined() ? r.la.data_ptr<int64_t>() : nullptr;
  p.lb = r.lb.defined() ? r.lb.data_ptr<int64_t>() : nullptr;
  p.extra = r.extra.defined() ? r.extra.data_ptr<float>() : nullptr;
  p.n = r.a.size(0);
  p.m = r.b.size(0);
  p.d = r.a.size(1);
  p.stride_a = r.a.size(1);
  p.stride_b = r.b.size(1);
  p.scale = static_cast<float>(scale);
  p.bias = static_cast<float>(bias);
  p.relu = relu;
  p.exclude_self = exclude_self;
  p.self_offset = self_offset;
  p.num_predicates = static_cast<int>(predicates.size());
  for (size_t k = 0; k < 3; ++k) p.predicates[k] = k < predicates.size() ? static_cast<int>(predicates[k]) : 0;
  p.num_sms = sm_count(r.a.get_device());
  p.force_splits = 0;
  p.allow_tf32 = cuda::allow_tf32();
  return r;
}

std::tuple<at::Tensor, at::Tensor> contrastive_lse_cuda(const at::Tensor& a, const at::Tensor& b,
                                                        const std::optional<at::Tensor>& label_a,
                                                        const std::optional<at::Tensor>& label_b,
                                                        const std::optional<at::Tensor>& extra, double scale,
                                                        double bias, bool relu, bool normalize, double eps,
                                                        bool exclude_self, int64_t self_offset,
                                                        at::IntArrayRef predicates) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(a.device());
  auto r = prepare(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                   predicates);
  auto opts = a.options().dtype(at::kFloat);
  auto lse = at::empty({a.size(0), static_cast<int64_t>(predicates.size())}, opts);
  auto rowmax = at::empty({a.size(0)}, opts);
  // Sized by the plan (N, M, D and the SM count), never by data: no host sync, graph-capturable.
  auto ws = at::empty({std::max<int64_t>(cuda::contrastive_lse_plan(r.p).forward_workspace, 1)}, opts);
  auto err = cuda::contrastive_lse_forward(r.p, lse.data_ptr<float>(), rowmax.data_ptr<float>(), ws.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "contrastive_lse CUDA kernel failed: ", cudaGetErrorString(err));
  return {lse, rowmax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_backward_cuda(
    const at::Tensor& grad_lse, const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& label_a,
    const std::optional<at::Tensor>& label_b, const std::optional<at::Tensor>& extra, const at::Tensor& lse,
    double scale, double bias, bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset,
    at::IntArrayRef predicates) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(a.device());
  auto r = prepare(a, b, label_a, label_b, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                   predicates);
  auto w = grad_lse.detach().to(at::kFloat).contiguous();
  auto l = lse.detach().to(at::kFloat).contiguous();
  TORCH_CHECK(w.sizes() == l.sizes() && l.dim() == 2 && l.size(0) == a.size(0) &&
                  l.size(1) == static_cast<int64_t>(predicates.size()),
              "contrastive_lse_backward: grad_lse and lse must have shape (N, K)");
  // The kernels write every element of U and V, except when N or M is 0 (no launch; the sums are 0).
  auto fopts = a.options().dtype(at::kFloat);
  const bool empty_sum = r.p.n == 0 || r.p.m == 0;
  auto U = empty_sum ? at::zeros({r.p.n, r.p.d}, fopts) : at::empty({r.p.n, r.p.d}, fopts);
  auto V = empty_sum ? at::zeros({r.p.m, r.p.d}, fopts) : at::empty({r.p.m, r.p.d}, fopts);
  auto ws = at::empty({std::max<int64_t>(cuda::contrastive_lse_plan(r.p).backward_workspace, 1)}, fopts);
  auto err = cuda::contrastive_lse_backward(r.p, l.data_ptr<float>(), w.data_ptr<float>(), U.data_ptr<float>(),
                                            V.data_ptr<float>(), ws.data_ptr<float>(),
                                            c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "contrastive_lse_backward CUDA kernel failed: ", cudaGetErrorString(err));
  auto [grad_a, grad_b] = normalization_backward_both(r.a, r.b, r.inv_a, r.inv_b, U, V, r.p.dtype, eps, normalize,
                                                      "contrastive_lse_backward");
  at::Tensor grad_extra;
  if (extra.has_value()) {  // one launch (csrc/cuda/contrastive_lse.cu), + a cast to a 16-bit extra's dtype
    grad_extra = at::empty({a.size(0)}, fopts);
    err = cuda::extra_logit_backward(r.extra.data_ptr<float>(), l.data_ptr<float>(), w.data_ptr<float>(), r.p.n,
                                     r.p.num_predicates, grad_extra.data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "contrastive_lse_backward: the extra-logit kernel failed: ",
                cudaGetErrorString(err));
    grad_extra = grad_extra.to(extra->scalar_type());
  } else {
    grad_extra = at::zeros({a.size(0)}, a.options().dtype(at::kFloat));
  }
  return {grad_a, grad_b, grad_extra};
}

at::Tensor cosine_similarity_matrix_cuda(const at::Tensor& a_in, const at::Tensor& b_in, double scale, double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_cuda(a_in, b_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  auto a = a_in.detach().contiguous(), b = b_in.detach().contiguous();
  const auto dtype = cuda::kernel_dtype(a, "cosine_similarity_matrix", "a");
  auto [inv_a, inv_b] = inverse_norms_both(a, b, dtype, eps, true, "cosine_similarity_matrix");
  auto out = at::empty({a.size(0), b.size(0)}, a.options());
  auto err = cuda::cosine_similarity_matrix_forward(a.data_ptr(), b.data_ptr(), inv_a.data_ptr<float>(),
                                                    inv_b.data_ptr<float>(), a.size(0), b.size(0), a.size(1),
                                                    a.size(1), b.size(1), static_cast<float>(scale),
                                                    dtype, cuda::allow_tf32(),
                                                    out.data_ptr(),
                                                    c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "cosine_similarity_matrix CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_matrix_backward_cuda(const at::Tensor& grad, const at::Tensor& a_in,
                                                                          const at::Tensor& b_in, double scale,
                                                                          double eps) {
  // dS~ = scale * G * inv_a_i * inv_b_j, then the raw-row gradients U = dS~ B and V = dS~^T A (two
  // cuBLAS products, float32) and the normalization backward of both sides: the inverse norms and the
  // normalization backward are the kernels contrastive_lse's glue runs (one launch each, both sides),
  // U and V the contiguous float32 (N, D) / (M, D) rows they read there. 7 launches in float32
  // (inverse norms, 3 elementwise for dS~, 2 products, normalization backward), + 3 casts in 16 bits.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_cuda(a_in, b_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  auto a = a_in.detach().contiguous(), b = b_in.detach().contiguous();
  const auto dtype = cuda::kernel_dtype(a, "cosine_similarity_matrix_backward", "a");
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == a.size(0) && grad.size(1) == b.size(0),
              "cosine_similarity_matrix_backward: grad must have shape (N, M) = (", a.size(0), ", ", b.size(0),
              "), got ", grad.sizes());
  const char* op = "cosine_similarity_matrix_backward";
  auto [inv_a, inv_b] = inverse_norms_both(a, b, dtype, eps, true, op);
  auto ds = grad.detach().to(at::kFloat) * (inv_a.unsqueeze(1) * scale) * inv_b.unsqueeze(0);
  auto U = at::mm(ds, b.to(at::kFloat)).contiguous();
  auto V = at::mm(ds.t(), a.to(at::kFloat)).contiguous();
  return normalization_backward_both(a, b, inv_a, inv_b, U, V, dtype, eps, true, op);
}

// fastgan::same_class_cosine_sum on CUDA, SupCon's positive term (csrc/cuda/contrastive_lse.cu): the
// inverse norms, the masked sweep of the cosine tiles and its merge, 3 launches; the backward
// recomputes the norms (the schema saves none: one O(N D) launch), then the product, its finish and
// the normalization backward, 4 launches. Workspaces sized by the plan: no host sync.
struct SameClass {
  at::Tensor x, inv, labels;
  cuda::LseParams p;
};

SameClass same_class_prepare(const at::Tensor& x_in, const at::Tensor& labels, double eps, const char* op) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.is_cuda(), op, ": x must be a 2-D CUDA tensor, got ", x_in.sizes(), " on ",
              x_in.device());
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong && labels.size(0) == x_in.size(0) &&
                  labels.device() == x_in.device(),
              op, ": labels must be 1-D int64 on x's device with one entry per row of x, got ", labels.scalar_type(),
              " of shape ", labels.sizes(), " on ", labels.device());
  SameClass r;
  r.x = x_in.detach().contiguous();
  r.labels = labels.contiguous();
  const int64_t n = r.x.size(0), d = r.x.size(1);
  cuda::LseParams& p = r.p;
  p.dtype = cuda::kernel_dtype(r.x, op, "x");
  r.inv = at::empty({n}, r.x.options().dtype(at::kFloat));
  auto err = cuda::inverse_norms(r.x.data_ptr(), n, d, nullptr, 0, d, d, p.dtype, static_cast<float>(eps), true,
                                 r.inv.data_ptr<float>(), nullptr, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": the inverse-norm kernel failed: ", cudaGetErrorString(err));
  p.a = r.x.data_ptr();  // one side only: the launchers (and same_class_plan) make b = a
  p.inv_a = r.inv.data_ptr<float>();
  p.la = r.labels.data_ptr<int64_t>();
  p.n = n;
  p.d = d;
  p.stride_a = d;
  p.num_sms = sm_count(r.x.get_device());
  p.allow_tf32 = cuda::allow_tf32();
  return r;
}

std::tuple<at::Tensor, at::Tensor> same_class_cosine_sum_cuda(const at::Tensor& x, const at::Tensor& labels,
                                                              double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(x.device());
  auto r = same_class_prepare(x, labels, eps, "same_class_cosine_sum");
  auto pos = at::empty({r.p.n}, r.x.options().dtype(at::kFloat));
  auto n_pos = at::empty({r.p.n}, r.labels.options());
  auto ws = at::empty({std::max<int64_t>(cuda::same_class_plan(r.p).same_class_forward_workspace, 1)},
                      pos.options());
  auto err = cuda::same_class_cosine_sum_forward(r.p, pos.data_ptr<float>(), n_pos.data_ptr<int64_t>(),
                                                 ws.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "same_class_cosine_sum CUDA kernel failed: ", cudaGetErrorString(err));
  return {pos, n_pos};
}

at::Tensor same_class_cosine_sum_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& labels,
                                               double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(x.device());
  const char* op = "same_class_cosine_sum_backward";
  auto r = same_class_prepare(x, labels, eps, op);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == r.p.n && grad.device() == r.x.device(), op,
              ": grad must have shape (N,) on x's device, got ", grad.sizes(), " on ", grad.device());
  auto g = grad.detach().to(at::kFloat).contiguous();
  auto fopts = r.x.options().dtype(at::kFloat);
  auto U = at::empty({r.p.n, r.p.d}, fopts);  // every element written (no launch, and no element, for N or D = 0)
  auto ws = at::empty({std::max<int64_t>(cuda::same_class_plan(r.p).same_class_backward_workspace, 1)}, fopts);
  auto err = cuda::same_class_cosine_sum_backward(r.p, g.data_ptr<float>(), U.data_ptr<float>(), ws.data_ptr<float>(),
                                                  c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "same_class_cosine_sum_backward CUDA kernel failed: ", cudaGetErrorString(err));
  auto gx = at::empty(r.x.sizes(), r.x.options());
  err = cuda::normalization_backward(r.x.data_ptr(), r.p.n, r.p.d, r.inv.data_ptr<float>(), U.data_ptr<float>(),
                                     gx.data_ptr(), nullptr, 0, r.p.d, nullptr, nullptr, nullptr, r.p.d, r.p.dtype,
                                     static_cast<float>(eps), true, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": the normalization-backward kernel failed: ", cudaGetErrorString(err));
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("same_class_cosine_sum", &same_class_cosine_sum_cuda);
  m.impl("same_class_cosine_sum_backward", &same_class_cosine_sum_backward_cuda);
  m.impl("contrastive_lse", &contrastive_lse_cuda);
  m.impl("contrastive_lse_backward", &contrastive_lse_backward_cuda);
  m.impl("cosine_similarity_matrix", &cosine_similarity_matrix_cuda);
  m.impl("cosine_similarity_matrix_backward", &cosine_similarity_matrix_backward_cuda);
}

}  // namespace fastgan
