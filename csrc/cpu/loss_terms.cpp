// The loss-term ops fastgan::lse_combine, d2d_epilogue and supcon_epilogue on the CPU (the schemas and
// the contracts: csrc/fastgan.cpp; the CUDA kernels: csrc/cuda/loss_terms.cu). ATen ops in the
// inputs' dtype: the CPU losses run as one fused op each way (fastgan::contrastive_loss) and never
// call these; they serve the ops' tests and the CPU count of the CUDA compositions
// (fastgan/benchmark/perf_model.py), with the same formulas as the kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <initializer_list>
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

void check_rows(const at::Tensor& lse, std::initializer_list<const at::Tensor*> rows, const char* op) {
  TORCH_CHECK(lse.dim() == 2 && lse.size(1) == 1, op, ": lse must have shape (N, 1), got ", lse.sizes());
  for (const auto* r : rows) {
    TORCH_CHECK(r->dim() == 1 && r->size(0) == lse.size(0), op, ": the per-row inputs must have shape (N,) with N = ",
                lse.size(0), ", got ", r->sizes());
  }
}

// D2D-CE's per-row pieces: x = lse - M (M = rowmax, 0 where not finite), pre = (m_p - cos) / t.
struct D2dRows {
  at::Tensor x, pre, q;
};

D2dRows d2d_rows(const at::Tensor& lse, const at::Tensor& rowmax, const at::Tensor& cos, double m_p, double t) {
  const auto dt = lse.scalar_type();
  auto rm = rowmax.detach().to(dt);
  D2dRows r;
  r.x = lse.detach().reshape({-1}) - at::where(at::isfinite(rm), rm, at::zeros_like(rm));
  r.pre = (m_p - cos.detach().to(dt)) / t;
  r.q = at::relu(r.pre);
  return r;
}

at::Tensor d2d_epilogue_cpu(const at::Tensor& lse, const at::Tensor& rowmax, const at::Tensor& cos, double m_p,
                            double temperature, double scale) {
  check_rows(lse, {&rowmax, &cos}, "d2d_epilogue");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto r = d2d_rows(lse, rowmax, cos, m_p, temperature);
  return (r.q + at::logaddexp(-r.q, r.x)).sum() * scale;
}

std::tuple<at::Tensor, at::Tensor> d2d_epilogue_backward_cpu(const at::Tensor& grad, const at::Tensor& lse,
                                                             const at::Tensor& rowmax, const at::Tensor& cos,
                                                             double m_p, double temperature, double scale) {
  check_rows(lse, {&rowmax, &cos}, "d2d_epilogue_backward");
  TORCH_CHECK(grad.numel() == 1, "d2d_epilogue_backward: grad must be one element, got ", grad.sizes());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto r = d2d_rows(lse, rowmax, cos, m_p, temperature);
  // dL/dx = dL/dq (where q > 0) = sigmoid(x + q); 0 for x = -inf (a row without other-class columns).
  auto sig = at::where(r.x == -INFINITY, at::zeros_like(r.x), at::sigmoid(r.x + r.q));
  auto g = grad.detach().reshape({}).to(lse.scalar_type()) * scale * sig;
  auto gcos = at::where(r.pre > 0, -g / temperature, at::zeros_like(g));
  return {g.reshape(lse.sizes()).contiguous(), gcos.to(cos.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> supcon_epilogue_cpu(const at::Tensor& lse, const at::Tensor& pos,
                                                       const at::Tensor& n_pos, double temperature, bool mean) {
  check_rows(lse, {&pos, &n_pos}, "supcon_epilogue");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto dt = lse.scalar_type();
  auto has = n_pos > 0;
  auto per = at::where(has, lse.detach().reshape({-1}) - pos.detach().to(dt) / (temperature * n_pos.clamp_min(1).to(dt)),
                       at::zeros({}, lse.options()));
  auto den = mean ? has.sum().to(dt).clamp_min(1) : at::ones({}, lse.options());
  return {per.sum() / den, den};
}

std::tuple<at::Tensor, at::Tensor> supcon_epilogue_backward_cpu(const at::Tensor& grad, const at::Tensor& den,
                                                                const at::Tensor& lse, const at::Tensor& pos,
                                                                const at::Tensor& n_pos, double temperature) {
  check_rows(lse, {&pos, &n_pos}, "supcon_epilogue_backward");
  TORCH_CHECK(grad.numel() == 1 && den.numel() == 1, "supcon_epilogue_backward: grad and den must be one element each");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto dt = lse.scalar_type();
  auto has = n_pos > 0;
  auto g = grad.detach().reshape({}).to(dt) / den.detach().reshape({}).to(dt);
  auto zero = at::zeros({}, lse.options());
  auto glse = at::where(has, g, zero);
  auto gpos = at::where(has, -g / (temperature * n_pos.clamp_min(1).to(dt)), zero);
  return {glse.reshape(lse.sizes()).contiguous(), gpos.to(pos.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("lse_combine", &lse_combine_cpu);
  m.impl("lse_combine_backward", &lse_combine_backward_cpu);
  m.impl("d2d_epilogue", &d2d_epilogue_cpu);
  m.impl("d2d_epilogue_backward", &d2d_epilogue_backward_cpu);
  m.impl("supcon_epilogue", &supcon_epilogue_cpu);
  m.impl("supcon_epilogue_backward", &supcon_epilogue_backward_cpu);
}

}  // namespace fastgan
