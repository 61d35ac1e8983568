// CPU kernels of spectral normalization (docs/semantics.md section 7; contract in fastgan/ops/spectral_norm.py):
//
//   fastgan::spectral_norm_power_iteration_   n power-iteration steps for a list of layers in one
//       call (the multi-tensor idea of docs/semantics.md section 7 on the CPU), u, v updated in place; returns one
//       0-dim sigma = <u, W v> per layer, read off the last normalization (no extra pass over W).
//   fastgan::spectral_norm_apply               W / sigma
//   fastgan::spectral_norm_apply_backward      G / sigma - (<G, W> / sigma^2) u v^T: one reduction
//       pass for <G, W>, one elementwise pass.
//
// Power iteration, per layer and step: two passes over W (W^T u, then W v), each an ATen/BLAS gemv,
// plus two vector normalizations nrm(x) = x / max(||x||, eps). The gemvs and norms are the same
// ATen kernels, in the same order, as torch.nn.utils' Python code, and the division is the same
// IEEE x / d per element, so for float32 (and float64) weights u and v are bitwise equal to
// PyTorch's. Half/bfloat16 weights are converted to float32 once per call (math in float32), and u,
// v of another dtype than the compute type are worked on in a float32 copy and written back.
// sigma, hook order: after the last step x = W v, <u, W v> = <nrm(x), x> (= ||x||^2 / max(||x||,
// eps)): a dot over the vector, no pass over W, and bitwise PyTorch's dot(u, mv(W, v)).
// Parametrization order: dot(u, mv(W, v)) with one more gemv, bitwise PyTorch's (see below).
// With n == 0, sigma = dot(u, mv(W, v)) by one pass, as PyTorch's eval mode.
// Floor: 2 * |W| multiply-adds and 2 * |W| elements read per layer and step (bandwidth bound).
// This op runs layers one after another: each gemv is itself parallel inside BLAS/ATen, and running
// gemvs inside an outer parallel region would make them single-threaded for the large layers. The
// group step (ops/spectral_norm_autograd.cpp) runs small layers side by side, one per thread.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/common.h"
#include "cpu/recycling_allocator.h"
#include "cpu/spectral_norm.h"

namespace fastgan {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel chunk of the elementwise passes

// out = x / max(||x||_2, eps) with ATen's norm and an exact per-element division (as
// torch.nn.functional.normalize(x, dim=0, out=out)); x and out contiguous, of dtype scalar_t.
template <typename scalar_t>
void normalize_into(const at::Tensor& x, double eps, at::Tensor& out) {
  const scalar_t norm = *x.norm(2, {0}, /*keepdim=*/true).data_ptr<scalar_t>();
  const scalar_t e = static_cast<scalar_t>(eps);
  // clamp_min propagates NaN: keep norm when it is NaN.
  const scalar_t denom = (norm < e) ? e : norm;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) op[i] = xp[i] / denom;
}

// A contiguous working vector of dtype ct: the caller's buffer itself when it already is one.
at::Tensor working_vector(const at::Tensor& x, at::ScalarType ct) {
  if (x.scalar_type() == ct && x.is_contiguous()) return x;
  return x.to(ct).contiguous();
}

template <typename scalar_t>
at::Tensor power_iteration_layer(const at::Tensor& w, at::Tensor& u, at::Tensor& v, int64_t n, double eps,
                                 bool hook_order) {
  const at::ScalarType ct = c10::CppTypeToScalarType<scalar_t>::value;
  const at::Tensor wc = w.scalar_type() == ct ? w : w.to(ct);
  at::Tensor uc = working_vector(u, ct);
  at::Tensor vc = working_vector(v, ct);
  if (n == 0) return at::dot(uc, at::mv(wc, vc));
  at::Tensor wt = wc.t();
  at::Tensor tu = at::empty({wc.size(0)}, wc.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor tv = at::empty({wc.size(1)}, wc.options().memory_format(at::MemoryFormat::Contiguous));
  for (int64_t k = 0; k < n; ++k) {
    if (hook_order) {
      at::mv_out(tv, wt, uc);
      normalize_into<scalar_t>(tv, eps, vc);
      at::mv_out(tu, wc, vc);
      normalize_into<scalar_t>(tu, eps, uc);
    } else {
      at::mv_out(tu, wc, vc);
      normalize_into<scalar_t>(tu, eps, uc);
      at::mv_out(tv, wt, uc);
      normalize_into<scalar_t>(tv, eps, vc);
    }
  }
  // Hook order: sigma = <u, W v> = <nrm(x), x> with x = W v the last gemv's output (= ||x||^2 /
  // max(||x||, eps)), a dot over a vector and no pass over W; since x is W v with the final v, this
  // is bitwise PyTorch's torch.dot(u, torch.mv(W, v)).
  // Parametrization order: <nrm(x), x> with x = W^T u is the same number up to float rounding but not
  // PyTorch's bits, and PyTorch's parametrization recomputes vdot(u, mv(W, v)) on every access; a
  // rounding-level difference in sigma makes every weight of W / sigma differ in its last bit and
  // training drift away from PyTorch's. The CPU kernel keeps bitwise identity with
  // torch.nn.utils.parametrizations.spectral_norm here at the price of one more gemv (as PyTorch).
  at::Tensor sigma = hook_order ? at::dot(uc, tu) : at::dot(uc, at::mv_out(tu, wc, vc));
  if (!uc.is_same(u)) u.copy_(uc);
  if (!vc.is_same(v)) v.copy_(vc);
  return sigma;
}

void check_vector(const at::Tensor& x, const at::Tensor& w, int64_t size, const char* op, const char* name,
                  size_t i) {
  TORCH_CHECK(x.dim() == 1 && x.size(0) == size, op, ": ", name, "[", i, "] must have ", size, " entries, got shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type() || x.scalar_type() == at::kFloat, op, ": ", name, "[", i,
              "] must have the dtype of the weight or float32, got ", x.scalar_type(), " for a ", w.scalar_type(),
              " weight");
  TORCH_CHECK(x.device() == w.device(), op, ": ", name, "[", i, "] must be on the weight's device");
}

void check_weight(const at::Tensor& w, const char* op) {
  TORCH_CHECK(w.dim() == 2, op, ": the weight matrix must be 2-D, got shape ", w.sizes());
  const auto t = w.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": the weight must be float16, bfloat16, float32 or float64, got ", t);
}

std::vector<at::Tensor> spectral_norm_power_iteration_cpu(at::TensorList weight_mats, at::TensorList us,
                                                          at::TensorList vs, int64_t n_power_iterations, double eps,
                                                          bool hook_order) {
  const char* op = "spectral_norm_power_iteration_";
  TORCH_CHECK(weight_mats.size() == us.size() && us.size() == vs.size(), op,
              ": weight_mats, us and vs must have the same length");
  TORCH_CHECK(n_power_iterations >= 0, op, ": n_power_iterations must be >= 0");
  TORCH_CHECK(eps > 0, op, ": eps must be positive");
  for (size_t i = 0; i < weight_mats.size(); ++i) {
    TORCH_CHECK(weight_mats[i].dim() == 2, op, ": weight_mats[", i, "] must be 2-D, got shape ",
                weight_mats[i].sizes());
    check_weight(weight_mats[i], op);
    check_vector(us[i], weight_mats[i], weight_mats[i].size(0), op, "us", i);
    check_vector(vs[i], weight_mats[i], weight_mats[i].size(1), op, "vs", i);
  }
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> sigmas;
  sigmas.reserve(weight_mats.size());
  for (size_t i = 0; i < weight_mats.size(); ++i) {
    at::Tensor u = us[i];
    at::Tensor v = vs[i];
    if (compute_type(weight_mats[i]) == at::kDouble) {
      sigmas.push_back(power_iteration_layer<double>(weight_mats[i], u, v, n_power_iterations, eps, hook_order));
    } else {
      sigmas.push_back(power_iteration_layer<float>(weight_mats[i], u, v, n_power_iterations, eps, hook_order));
    }
  }
  return sigmas;
}

void check_apply_args(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v, const at::Tensor& sigma,
                      const char* op) {
  check_weight(w, op);
  check_vector(u, w, w.size(0), op, "u", 0);
  check_vector(v, w, w.size(1), op, "v", 0);
  TORCH_CHECK(sigma.numel() == 1, op, ": sigma must have one element, got shape ", sigma.sizes());
}

// sigma's one value as ct; no aten::to when it already is ct (a .to() returning its input is an
// aliasing op call inside the group step's autograd, which opcheck's schema test rejects).
template <typename ct>
ct scalar_value(const at::Tensor& sigma) {
  const at::ScalarType cst = c10::CppTypeToScalarType<ct>::value;
  if (sigma.scalar_type() == cst) return *sigma.data_ptr<ct>();
  return *sigma.to(cst).data_ptr<ct>();
}

// out = W / sigma into `out` (contiguous, W's number of elements, W's dtype; any shape: the group
// step writes the weight's own shape). w contiguous. An exact per-element division, as PyTorch's
// weight / sigma (IEEE division: the same bits however it is vectorized).
void apply_into(const at::Tensor& w, const at::Tensor& sigma, at::Tensor& out) {
  const int64_t n = w.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "spectral_norm_apply", [&] {
    using ct = at::opmath_type<scalar_t>;  // float for half/bfloat16
    // sigma is float32 (float64 for float64 weights): for a float32 weight this is float32's own
    // division (PyTorch's weight / sigma), for half/bfloat16 float32 math rounded once.
    const ct s = scalar_value<ct>(sigma);
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = static_cast<scalar_t>(static_cast<ct>(wp[i]) / s);
    });
  });
}

at::Tensor spectral_norm_apply_cpu(const at::Tensor& weight_mat, const at::Tensor& u, const at::Tensor& v,
                                   const at::Tensor& sigma) {
  check_apply_args(weight_mat, u, v, sigma, "spectral_norm_apply");
  return apply_weight_cpu(weight_mat, sigma, weight_mat.sizes());
}

// Rows [begin, end) of out = G / s + (coef u_r) v_c, or gs + (coef u_r) v_c for an expanded G (g
// null), in PyTorch's float operations: the rank-1 term rounded to ct before the add. GCC contracts
// a * b + c into an FMA by default (in C++ also under -std=c++17), which would skip that rounding,
// hence fp-contract=off for this function only (a separate term array per row did the same at
// 2.5x the time: 21 us vs 8 us for a 128 x 1152 layer on this AMD EPYC, one thread).
template <typename scalar_t, typename ct>
__attribute__((optimize("fp-contract=off"))) void backward_rows(const scalar_t* g, ct gs, int64_t cols, int64_t begin,
                                                                 int64_t end, const ct* up, const ct* vp, ct coef, ct s,
                                                                 scalar_t* out) {
  for (int64_t r = begin; r < end; ++r) {
    scalar_t* orow = out + r * cols;
    const ct cu = coef * up[r];
    if (g == nullptr) {
      for (int64_t c = 0; c < cols; ++c) orow[c] = static_cast<scalar_t>(gs + cu * vp[c]);
    } else {
      const scalar_t* gr = g + r * cols;
      for (int64_t c = 0; c < cols; ++c) orow[c] = static_cast<scalar_t>(static_cast<ct>(gr[c]) / s + cu * vp[c]);
    }
  }
}

// G / sigma - (<G, W> / sigma^2) u v^T into `out` (contiguous, W's number of elements). w
// contiguous (rows, cols); g: (rows, cols) contiguous, or `scalar_g`: one value (an expanded G,
// the gradient of a sum, every stride 0), read as that value rather than materialized.
void apply_backward_into(const at::Tensor& g, bool scalar_g, const at::Tensor& w, const at::Tensor& u,
                         const at::Tensor& v, const at::Tensor& sigma, at::Tensor& out) {
  const int64_t rows = w.size(0), cols = w.size(1);
  if (w.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "spectral_norm_apply_backward", [&] {
    using ct = at::opmath_type<scalar_t>;
    const at::ScalarType cst = c10::CppTypeToScalarType<ct>::value;
    const ct s = scalar_value<ct>(sigma);
    const at::Tensor uc = working_vector(u, cst);
    const at::Tensor vc = working_vector(v, cst);
    const ct* up = uc.data_ptr<ct>();
    const ct* vp = vc.data_ptr<ct>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t row_grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
    // <G, W>: one partial per row (double accumulation), summed in row order: deterministic for any
    // thread count. kLanes independent accumulators: a single one would be a serial add chain (no
    // reassociation without -ffast-math), these vectorize. Fixed order: deterministic.
    constexpr int kLanes = 16;
    std::vector<double> partial(rows, 0.0);
    const double g0 = scalar_g ? static_cast<double>(gp[0]) : 0.0;
    at::parallel_for(0, rows, row_grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* wr = wp + r * cols;
        const scalar_t* gr = gp + r * cols;
        double acc[kLanes] = {0.0};
        int64_t c = 0;
        if (scalar_g) {
          for (; c + kLanes <= cols; c += kLanes) {
            for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(wr[c + k]);
          }
          for (; c < cols; ++c) acc[0] += static_cast<double>(wr[c]);
        } else {
          for (; c + kLanes <= cols; c += kLanes) {
            for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(gr[c + k]) * static_cast<double>(wr[c + k]);
          }
          for (; c < cols; ++c) acc[0] += static_cast<double>(gr[c]) * static_cast<double>(wr[c]);
        }
        double total = 0.0;
        for (int k = 0; k < kLanes; ++k) total += acc[k];
        partial[r] = scalar_g ? g0 * total : total;
      }
    });
    double dot = 0.0;
    for (int64_t r = 0; r < rows; ++r) dot += partial[r];
    // PyTorch's autograd of W / (u^T W v): G / s + (c u_i) v_j with c = -<G, W> / s^2 (backward_rows).
    const ct coef = static_cast<ct>(-dot / (static_cast<double>(s) * static_cast<double>(s)));
    const ct gs = scalar_g ? static_cast<ct>(gp[0]) / s : ct(0);
    at::parallel_for(0, rows, row_grain, [&](int64_t begin, int64_t end) {
      backward_rows<scalar_t, ct>(scalar_g ? nullptr : gp, gs, cols, begin, end, up, vp, coef, s, op);
    });
  });
}

bool all_strides_zero(const at::Tensor& t) {
  return t.numel() > 0 && std::all_of(t.strides().begin(), t.strides().end(), [](int64_t s) { return s == 0; });
}

at::Tensor spectral_norm_apply_backward_cpu(const at::Tensor& grad, const at::Tensor& weight_mat, const at::Tensor& u,
                                            const at::Tensor& v, const at::Tensor& sigma) {
  const char* opname = "spectral_norm_apply_backward";
  check_apply_args(weight_mat, u, v, sigma, opname);
  TORCH_CHECK(grad.sizes() == weight_mat.sizes(), opname, ": grad must have the weight's shape ", weight_mat.sizes(),
              ", got ", grad.sizes());
  return apply_backward_weight_cpu(grad, weight_mat, u, v, sigma, weight_mat.sizes());
}

}  // namespace

// The group step's CPU calls (cpu/spectral_norm.h): the kernels above without the dispatcher, for
// arguments the group step has checked.
at::Tensor power_iteration_one_cpu(const at::Tensor& weight_mat, at::Tensor& u, at::Tensor& v, int64_t n, double eps,
                                   bool hook_order, size_t layer) {
  const char* op = "spectral_norm_group_step";
  check_weight(weight_mat, op);
  check_vector(u, weight_mat, weight_mat.size(0), op, "us", layer);
  check_vector(v, weight_mat, weight_mat.size(1), op, "vs", layer);
  if (compute_type(weight_mat) == at::kDouble) {
    return power_iteration_layer<double>(weight_mat, u, v, n, eps, hook_order);
  }
  return power_iteration_layer<float>(weight_mat, u, v, n, eps, hook_order);
}

at::Tensor apply_weight_cpu(const at::Tensor& weight_mat, const at::Tensor& sigma, at::IntArrayRef shape) {
  const at::Tensor w = weight_mat.contiguous();
  // A new tensor every training step, of the same size: recycled memory (cpu/recycling_allocator.h).
  at::Tensor out = RecyclingCPUAllocator::empty(shape, w.scalar_type());
  apply_into(w, sigma, out);
  return out;
}

at::Tensor apply_backward_weight_cpu(const at::Tensor& grad, const at::Tensor& weight_mat, const at::Tensor& u,
                                     const at::Tensor& v, const at::Tensor& sigma, at::IntArrayRef shape) {
  const at::Tensor w = weight_mat.contiguous();
  const bool scalar_g = all_strides_zero(grad);
  const at::Tensor g = grad.scalar_type() == w.scalar_type() ? grad : grad.to(w.scalar_type());
  at::Tensor out = RecyclingCPUAllocator::empty(shape, w.scalar_type());
  apply_backward_into(scalar_g ? g : g.contiguous(), scalar_g, w, u, v, sigma, out);
  return out;
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("spectral_norm_power_iteration_", &spectral_norm_power_iteration_cpu);
  m.impl("spectral_norm_apply", &spectral_norm_apply_cpu);
  m.impl("spectral_norm_apply_backward", &spectral_norm_apply_backward_cpu);
}

}  // namespace fastgan
