// TORCH_LIBRARY_IMPL(fastgan, CUDA): torch glue around the launchers of csrc/cuda/loss_terms.cu, the
// losses' terms around contrastive_lse (pair_cosine, lse_combine, d2d_epilogue, supcon_epilogue).
// Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>

#include "cpu/pair_cosine.h"  // wrap_shift: the op's shift rule, one definition for CPU and CUDA
#include "cuda/kernel_dtype.h"
#include "cuda/loss_terms.h"

namespace fastgan {
namespace {

// fastgan::pair_cosine on CUDA: one launch each way (csrc/cuda/contrastive_lse.cu), float32 out. x
// and y of different dtypes (a bfloat16 projection against a float32 embedding under autocast) are
// both computed in float32, as the CPU kernel does; the gradients come back in each input's dtype.
struct PairInputs {
  at::Tensor x, y;
  cuda::DType dtype;
};

PairInputs pair_inputs(const at::Tensor& x_in, const at::Tensor& y_in, const char* op) {
  TORCH_CHECK(x_in.dim() == 2 && y_in.dim() == 2 && x_in.sizes() == y_in.sizes(), op,
              ": x and y must be 2-D of one shape, got ", x_in.sizes(), " and ", y_in.sizes());
  TORCH_CHECK(x_in.is_cuda() && y_in.is_cuda() && x_in.device() == y_in.device(), op,
              ": x and y must be on one CUDA device");
  PairInputs r;
  r.x = x_in.detach();
  r.y = y_in.detach();
  r.dtype = cuda::one_kernel_dtype(r.x, r.y, op, "x", "y", "x and y");
  r.x = r.x.contiguous();
  r.y = r.y.contiguous();
  return r;
}

at::Tensor pair_cosine_cuda(const at::Tensor& x, const at::Tensor& y, double eps, double scale, int64_t shift) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(x.device());
  auto r = pair_inputs(x, y, "pair_cosine");
  auto out = at::empty({r.x.size(0)}, r.x.options().dtype(at::kFloat));
  auto err = cuda::pair_cosine_forward(r.x.data_ptr(), r.y.data_ptr(), r.x.size(0), r.x.size(1),
                                       wrap_shift(shift, r.x.size(0)), r.dtype, static_cast<float>(eps),
                                       static_cast<float>(scale), out.data_ptr<float>(),
                                       c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "pair_cosine CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor> pair_cosine_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& y, double eps, double scale,
                                                             int64_t shift) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(x.device());
  auto r = pair_inputs(x, y, "pair_cosine_backward");
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == r.x.size(0) && grad.device() == r.x.device(),
              "pair_cosine_backward: grad must have shape (N,) on x's device, got ", grad.sizes());
  auto g = grad.detach().to(at::kFloat).contiguous();
  auto gx = at::empty(r.x.sizes(), r.x.options());
  auto gy = at::empty(r.y.sizes(), r.y.options());
  auto err = cuda::pair_cosine_backward(g.data_ptr<float>(), r.x.data_ptr(), r.y.data_ptr(), r.x.size(0), r.x.size(1),
                                        wrap_shift(shift, r.x.size(0)), r.dtype, static_cast<float>(eps),
                                        static_cast<float>(scale), gx.data_ptr(), gy.data_ptr(),
                                        c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "pair_cosine_backward CUDA kernel failed: ", cudaGetErrorString(err));
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

// fastgan::lse_combine on CUDA: a loss's combination and mean (or sum) in one launch each way, no
// host sync (the backward reads grad on the device). Every input float32 (the LSEs are, and so are
// the positive terms of the CUDA losses); y1, y2 of shape (N,) or (N, 1), any row stride.
cuda::CombineParams combine_params(const at::Tensor& x, const std::optional<at::Tensor>& y1,
                                   const std::optional<at::Tensor>& y2, at::ArrayRef<double> coefs, double c1,
                                   double c2, double scale, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1 && x.size(1) <= 3, op, ": x must have shape (N, K), K = 1..3, got ",
              x.sizes());
  TORCH_CHECK(static_cast<int64_t>(coefs.size()) == x.size(1), op, ": coefs must have K = ", x.size(1),
              " entries, got ", coefs.size());
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat, op, ": x must be a float32 CUDA tensor, got ",
              x.scalar_type(), " on ", x.device());
  cuda::CombineParams p{};
  p.x = x.data_ptr<float>();
  p.n = x.size(0);
  p.k = x.size(1);
  p.x_stride_n = x.stride(0);
  p.x_stride_k = x.stride(1);
  const std::optional<at::Tensor>* ys[2] = {&y1, &y2};
  for (int t = 0; t < 2; ++t) {
    const auto& y = *ys[t];
    if (!y.has_value()) continue;
    TORCH_CHECK((y->dim() == 1 || (y->dim() == 2 && y->size(1) == 1)) && y->size(0) == p.n, op, ": y", t + 1,
                " must have shape (N,) or (N, 1) with N = ", p.n, ", got ", y->sizes());
    TORCH_CHECK(y->device() == x.device() && y->scalar_type() == at::kFloat, op, ": y", t + 1,
                " must be float32 on x's device");
    (t == 0 ? p.y1 : p.y2) = y->data_ptr<float>();
    (t == 0 ? p.y1_stride : p.y2_stride) = y->stride(0);
  }
  for (int64_t j = 0; j < p.k; ++j) p.coefs[j] = static_cast<float>(coefs[j]);
  p.c1 = static_cast<float>(c1);
  p.c2 = static_cast<float>(c2);
  p.scale = static_cast<float>(scale);
  return p;
}

at::Tensor lse_combine_cuda(const at::Tensor& x, const std::optional<at::Tensor>& y1,
                            const std::optional<at::Tensor>& y2, at::ArrayRef<double> coefs, double c1, double c2,
                            double scale) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(x.device());
  const auto p = combine_params(x, y1, y2, coefs, c1, c2, scale, "lse_combine");
  auto out = at::empty({}, x.options());
  auto err = cuda::lse_combine_forward(p, out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "lse_combine CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_combine_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& y1,
    const std::optional<at::Tensor>& y2, at::ArrayRef<double> coefs, double c1, double c2, double scale) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(x.device());
  const auto p = combine_params(x, y1, y2, coefs, c1, c2, scale, "lse_combine_backward");
  TORCH_CHECK(grad.numel() == 1 && grad.device() == x.device(), "lse_combine_backward: grad must be one element on ",
              x.device(), ", got ", grad.sizes(), " on ", grad.device());
  auto g = grad.detach().to(at::kFloat).contiguous();
  auto gx = at::empty({p.n, p.k}, x.options());
  // Shaped as y1, y2 ((N,) or (N, 1): one element a row, contiguous), so autograd needs no reshape.
  auto gy1 = at::empty(y1.has_value() ? y1->sizes() : at::IntArrayRef{p.n}, x.options());
  auto gy2 = at::empty(y2.has_value() ? y2->sizes() : at::IntArrayRef{p.n}, x.options());
  auto err = cuda::lse_combine_backward(p, g.data_ptr<float>(), gx.data_ptr<float>(), gy1.data_ptr<float>(),
                                        gy2.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "lse_combine_backward CUDA kernel failed: ", cudaGetErrorString(err));
  return {gx, gy1, gy2};
}

// The epilogues' inputs: lse (N, 1) and the per-row tensors (N,), contiguous, on one CUDA device,
// float32 (what the CUDA losses produce: their log-sum-exps and pair cosines) except n_pos (int64).
struct RowInput {
  const at::Tensor* t;
  const char* name;
  at::ScalarType dtype;
};

void check_epilogue(const at::Tensor& lse, std::initializer_list<RowInput> rows, const char* op) {
  TORCH_CHECK(lse.dim() == 2 && lse.size(1) == 1, op, ": lse must have shape (N, 1), got ", lse.sizes());
  TORCH_CHECK(lse.is_cuda() && lse.scalar_type() == at::kFloat, op, ": lse must be a float32 CUDA tensor, got ",
              lse.scalar_type(), " on ", lse.device());
  for (const auto& r : rows) {
    TORCH_CHECK(r.t->dim() == 1 && r.t->size(0) == lse.size(0) && r.t->is_contiguous(), op, ": ", r.name,
                " must be contiguous of shape (N,) with N = ", lse.size(0), ", got ", r.t->sizes());
    TORCH_CHECK(r.t->device() == lse.device() && r.t->scalar_type() == r.dtype, op, ": ", r.name, " must be ",
                r.dtype, " on lse's device, got ", r.t->scalar_type(), " on ", r.t->device());
  }
}

void check_scalar(const at::Tensor& t, const at::Tensor& lse, const char* name, const char* op) {
  TORCH_CHECK(t.numel() == 1 && t.device() == lse.device(), op, ": ", name, " must be one element on ", lse.device(),
              ", got ", t.sizes(), " on ", t.device());
}

cuda::D2dParams d2d_params(const at::Tensor& lse, const at::Tensor& rowmax, const at::Tensor& cos, double m_p,
                           double temperature, double scale, const char* op) {
  check_epilogue(lse, {{&rowmax, "rowmax", at::kFloat}, {&cos, "cos", at::kFloat}}, op);
  cuda::D2dParams p{};
  p.lse = lse.data_ptr<float>();
  p.lse_stride = lse.stride(0);
  p.rowmax = rowmax.data_ptr<float>();
  p.cos = cos.data_ptr<float>();
  p.n = lse.size(0);
  p.m_p = static_cast<float>(m_p);
  p.temperature = static_cast<float>(temperature);
  p.scale = static_cast<float>(scale);
  return p;
}

at::Tensor d2d_epilogue_cuda(const at::Tensor& lse, const at::Tensor& rowmax, const at::Tensor& cos, double m_p,
                             double temperature, double scale) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(lse.device());
  const auto p = d2d_params(lse, rowmax, cos, m_p, temperature, scale, "d2d_epilogue");
  auto out = at::empty({}, lse.options());
  auto err = cuda::d2d_epilogue_forward(p, out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "d2d_epilogue CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor> d2d_epilogue_backward_cuda(const at::Tensor& grad, const at::Tensor& lse,
                                                              const at::Tensor& rowmax, const at::Tensor& cos,
                                                              double m_p, double temperature, double scale) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(lse.device());
  const char* op = "d2d_epilogue_backward";
  const auto p = d2d_params(lse, rowmax, cos, m_p, temperature, scale, op);
  check_scalar(grad, lse, "grad", op);
  auto g = grad.detach().to(at::kFloat).contiguous();
  auto glse = at::empty(lse.sizes(), lse.options());
  auto gcos = at::empty(cos.sizes(), cos.options());
  auto err = cuda::d2d_epilogue_backward(p, g.data_ptr<float>(), glse.data_ptr<float>(), gcos.data_ptr<float>(),
                                         c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "d2d_epilogue_backward CUDA kernel failed: ", cudaGetErrorString(err));
  return {glse, gcos};
}

cuda::SupconParams supcon_params(const at::Tensor& lse, const at::Tensor& pos, const at::Tensor& n_pos,
                                 double temperature, bool mean, const char* op) {
  check_epilogue(lse, {{&pos, "pos", at::kFloat}, {&n_pos, "n_pos", at::kLong}}, op);
  cuda::SupconParams p{};
  p.lse = lse.data_ptr<float>();
  p.lse_stride = lse.stride(0);
  p.pos = pos.data_ptr<float>();
  p.n_pos = n_pos.data_ptr<int64_t>();
  p.n = lse.size(0);
  p.temperature = static_cast<float>(temperature);
  p.mean = mean ? 1 : 0;
  return p;
}

std::tuple<at::Tensor, at::Tensor> supcon_epilogue_cuda(const at::Tensor& lse, const at::Tensor& pos,
                                                        const at::Tensor& n_pos, double temperature, bool mean) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(lse.device());
  const auto p = supcon_params(lse, pos, n_pos, temperature, mean, "supcon_epilogue");
  auto out = at::empty({}, lse.options());
  auto den = at::empty({}, lse.options());
  auto err = cuda::supcon_epilogue_forward(p, out.data_ptr<float>(), den.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "supcon_epilogue CUDA kernel failed: ", cudaGetErrorString(err));
  return {out, den};
}

std::tuple<at::Tensor, at::Tensor> supcon_epilogue_backward_cuda(const at::Tensor& grad, const at::Tensor& den,
                                                                 const at::Tensor& lse, const at::Tensor& pos,
                                                                 const at::Tensor& n_pos, double temperature) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::cuda::CUDAGuard guard(lse.device());
  const char* op = "supcon_epilogue_backward";
  const auto p = supcon_params(lse, pos, n_pos, temperature, false, op);
  check_scalar(grad, lse, "grad", op);
  check_scalar(den, lse, "den", op);
  auto g = grad.detach().to(at::kFloat).contiguous();
  auto d = den.detach().to(at::kFloat).contiguous();
  auto glse = at::empty(lse.sizes(), lse.options());
  auto gpos = at::empty(pos.sizes(), pos.options());
  auto err = cuda::supcon_epilogue_backward(p, g.data_ptr<float>(), d.data_ptr<float>(), glse.data_ptr<float>(),
                                            gpos.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "supcon_epilogue_backward CUDA kernel failed: ", cudaGetErrorString(err));
  return {glse, gpos};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("d2d_epilogue", &d2d_epilogue_cuda);
  m.impl("d2d_epilogue_backward", &d2d_epilogue_backward_cuda);
  m.impl("supcon_epilogue", &supcon_epilogue_cuda);
  m.impl("supcon_epilogue_backward", &supcon_epilogue_backward_cuda);
  m.impl("pair_cosine", &pair_cosine_cuda);
  m.impl("pair_cosine_backward", &pair_cosine_backward_cuda);
  m.impl("lse_combine", &lse_combine_cuda);
  m.impl("lse_combine_backward", &lse_combine_backward_cuda);
}

}  // namespace fastgan
