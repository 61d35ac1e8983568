// TORCH_LIBRARY_IMPL(fastgan, CUDA): torch glue around the launchers of csrc/cuda/infonce_lse.cu
// (contract: fastgan/reference/infonce.py:infonce_lse). Compiled only in CUDA builds. l and m are
// passed with their strides (a permuted channels-last map is read in place, no copy); the kernels
// compute the inverse norms themselves; partial log-sum-exps and gradient partials live in one
// float32 workspace allocated here. No host syncs: 4 launches per forward + backward, graph-capturable.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "cuda/infonce_lse.h"
#include "cuda/kernel_dtype.h"

namespace fastgan {
namespace {

struct Inputs {
  at::Tensor l, m;  // detached, original strides; one dtype (float32 copies when l and m differ)
  cuda::InfonceParams p;
};

Inputs prepare(const at::Tensor& l_in, const at::Tensor& m_in, double scale, const std::optional<double>& self_logit,
               bool normalize, double eps, const char* op) {
  TORCH_CHECK(l_in.dim() == 3, op, ": l must have shape (N, R, HW), got ", l_in.sizes());
  TORCH_CHECK(m_in.dim() == 2, op, ": m must have shape (N, R), got ", m_in.sizes());
  TORCH_CHECK(m_in.size(0) == l_in.size(0) && m_in.size(1) == l_in.size(1), op,
              ": m must have shape (N, R) = (", l_in.size(0), ", ", l_in.size(1), ") to match l, got ", m_in.sizes());
  TORCH_CHECK(l_in.is_cuda(), op, ": l must be a CUDA tensor, got device ", l_in.device());
  TORCH_CHECK(m_in.is_cuda() && m_in.device() == l_in.device(), op, ": m must be on l's device ", l_in.device(),
              ", got ", m_in.device());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and non-negative, got ", eps);
  Inputs r;
  r.l = l_in.detach();
  r.m = m_in.detach();
  cuda::InfonceParams& p = r.p;
  p.dtype = cuda::one_kernel_dtype(r.l, r.m, op, "l", "m", "l and m");
  p.l = r.l.data_ptr();  // data_ptr includes the storage offset; strides are in elements
  p.m = r.m.data_ptr();
  p.n = r.l.size(0);
  p.r = r.l.size(1);
  p.hw = r.l.size(2);
  p.l_stride_n = r.l.stride(0);
  p.l_stride_r = r.l.stride(1);
  p.l_stride_k = r.l.stride(2);
  p.m_stride_n = r.m.stride(0);
  p.m_stride_r = r.m.stride(1);
  p.scale = static_cast<float>(scale);
  p.has_self = self_logit.has_value();
  // The self block is the one logit self_logit + log(HW) (reference: float(self_logit) + math.log(hw)).
  p.self_term = self_logit.has_value()
                    ? static_cast<float>(*self_logit + std::log(static_cast<double>(p.hw)))
                    : 0.f;
  p.normalize = normalize;
  p.eps = static_cast<float>(eps);
  p.target_ctas = 0;  // the launchers' default split
  p.allow_tf32 = cuda::allow_tf32();
  return r;
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_cuda(const at::Tensor& l, const at::Tensor& m, double scale,
                                                    std::optional<double> self_logit, bool normalize, double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(l.is_cuda(), "infonce_lse: l must be a CUDA tensor, got device ", l.device());
  c10::cuda::CUDAGuard guard(l.device());
  auto r = prepare(l, m, scale, self_logit, normalize, eps, "infonce_lse");
  auto opts = l.options().dtype(at::kFloat);
  auto pos = at::empty({r.p.n, r.p.hw}, opts);
  auto neg = at::empty({r.p.n}, opts);
  auto ws = at::empty({cuda::infonce_lse_forward_workspace(r.p)}, opts);
  auto err = cuda::infonce_lse_forward(r.p, pos.data_ptr<float>(), neg.data_ptr<float>(), ws.data_ptr<float>(),
                                       c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "infonce_lse CUDA kernel failed: ", cudaGetErrorString(err));
  return {pos, neg};
}

at::Tensor float_arg(const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.sizes() == shape, "infonce_lse_backward: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "infonce_lse_backward: ", name, " must be on l's device ",
              like.device(), ", got ", t.device());
  return t.detach().to(at::kFloat).contiguous();
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_backward_cuda(const at::Tensor& grad_pos, const at::Tensor& grad_neg,
                                                             const at::Tensor& l, const at::Tensor& m,
                                                             const at::Tensor& neg, double scale,
                                                             std::optional<double> self_logit, bool normalize,
                                                             double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(l.is_cuda(), "infonce_lse_backward: l must be a CUDA tensor, got device ", l.device());
  c10::cuda::CUDAGuard guard(l.device());
  auto r = prepare(l, m, scale, self_logit, normalize, eps, "infonce_lse_backward");
  const int64_t n = r.p.n, hw = r.p.hw;
  auto gp = float_arg(grad_pos, {n, hw}, l, "grad_pos");
  auto gn = float_arg(grad_neg, {n}, l, "grad_neg");
  auto ng = float_arg(neg, {n}, l, "neg");
  auto grad_l = at::empty({n, r.p.r, hw}, r.l.options().memory_format(at::MemoryFormat::Contiguous));
  auto grad_m = at::empty({n, r.p.r}, r.m.options().memory_format(at::MemoryFormat::Contiguous));
  auto ws = at::empty({cuda::infonce_lse_backward_workspace(r.p)}, l.options().dtype(at::kFloat));
  auto err = cuda::infonce_lse_backward(r.p, gp.data_ptr<float>(), gn.data_ptr<float>(), ng.data_ptr<float>(),
                                        grad_l.data_ptr(), grad_m.data_ptr(), ws.data_ptr<float>(),
                                        c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "infonce_lse_backward CUDA kernel failed: ", cudaGetErrorString(err));
  // Computed in the kernel dtype; returned in each input's own dtype (they differ only if l and m do).
  return {grad_l.to(l.scalar_type()), grad_m.to(m.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("infonce_lse", &infonce_lse_cuda);
  m.impl("infonce_lse_backward", &infonce_lse_backward_cuda);
}

}  // namespace fastgan
