// fastgan::lse_combine on the CPU (the schema and the contract: csrc/fastgan.cpp). ATen ops: the
// CPU losses run as one fused op each way (fastgan::contrastive_loss) and never call this; it serves
// the op's tests and the CPU count of the CUDA compositions (fastgan/benchmark/perf_model.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

namespace fastgan {
namespace {

void check_combine(const at::Tensor& x, const std::optional<at::Tensor>& y1, const std::optional<at::Tensor>& y2,
                   at::ArrayRef<double> coefs, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1 && x.size(1) <= 3, op, ": x must have shape (N, K), K = 1..3, got ",
              x.sizes());
  TORCH_CHECK(static_cast<int64_t>(coefs.size()) == x.size(1), op, ": coefs must have K = ", x.size(1),
              " entries, got ", coefs.size());
  for (const auto* y : {&y1, &y2}) {
    if (y->has_value()) {
      TORCH_CHECK(((*y)->dim() == 1 || ((*y)->dim() == 2 && (*y)->size(1) == 1)) && (*y)->size(0) == x.size(0), op,
                  ": y1 and y2 must have shape (N,) or (N, 1) with N = ", x.size(0), ", got ", (*y)->sizes());
    }
  }
}

at::Tensor lse_combine_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y1,
                           const std::optional<at::Tensor>& y2, at::ArrayRef<double> coefs, double c1, double c2,
                           double scale) {
  check_combine(x, y1, y2, coefs, "lse_combine");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto per = at::mv(x.detach(), at::tensor(coefs, x.options()));
  if (y1.has_value()) per = per + c1 * y1->detach().reshape({-1}).to(x.scalar_type());
  if (y2.has_value()) per = per + c2 * y2->detach().reshape({-1}).to(x.scalar_type());
  return per.sum() * scale;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_combine_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& y1,
    const std::optional<at::Tensor>& y2, at::ArrayRef<double> coefs, double c1, double c2, double scale) {
  check_combine(x, y1, y2, coefs, "lse_combine_backward");
  TORCH_CHECK(grad.numel() == 1, "lse_combine_backward: grad must be one element, got ", grad.sizes());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto g = grad.detach().reshape({}).to(x.scalar_type()) * scale;
  const int64_t n = x.size(0);
  auto gx = (g * at::tensor(coefs, x.options())).expand({n, x.size(1)}).contiguous();
  auto like = [&](const std::optional<at::Tensor>& y, double c) {
    auto sizes = y.has_value() ? y->sizes().vec() : std::vector<int64_t>{n};
    auto dtype = y.has_value() ? y->scalar_type() : x.scalar_type();
    return (g * c).to(dtype).expand(sizes).contiguous();
  };
  return {gx, like(y1, c1), like(y2, c2)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("lse_combine", &lse_combine_cpu);
  m.impl("lse_combine_backward", &lse_combine_backward_cpu);
}

}  // namespace fastgan
