// Typed dispatcher calls of the contrastive kernels' ops (LSE, pair cosine, same-class sums, the
// losses' combination and epilogues), shared by the C++ autograd nodes (contrastive_autograd.cpp,
// loss_terms_autograd.cpp) and the whole-loss op (cpu/contrastive_loss.cpp).
// Through the dispatcher, not the CPU functions directly, so that fake and functional tensors
// (torch.compile, opcheck) reach the registered fakes.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace fastgan {
namespace calls {

using OptT = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// An optional argument as the autograd nodes save it (an undefined tensor for none) and back.
inline OptT opt(const at::Tensor& t) { return t.defined() ? OptT(t) : std::nullopt; }
inline at::Tensor undef(const OptT& t) { return t.has_value() ? *t : at::Tensor(); }

// fastgan::contrastive_lse: (lse, rowmax).
inline std::tuple<at::Tensor, at::Tensor> contrastive_lse(const at::Tensor& a, const at::Tensor& b, const OptT& la,
                                                          const OptT& lb, const OptT& extra, double scale, double bias,
                                                          bool relu, bool normalize, double eps, bool exclude_self,
                                                          int64_t self_offset, at::IntArrayRef predicates) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::contrastive_lse", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptT&,
                                                                 const OptT&, const OptT&, double, double, bool, bool,
                                                                 double, bool, int64_t, at::IntArrayRef)>();
  return op.call(a, b, la, lb, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates);
}

// fastgan::contrastive_lse_backward: (grad_a, grad_b, grad_extra).
inline Tensor3 contrastive_lse_backward(const at::Tensor& g, const at::Tensor& a, const at::Tensor& b, const OptT& la,
                                        const OptT& lb, const OptT& extra, const at::Tensor& lse, double scale,
                                        double bias, bool relu, bool normalize, double eps, bool exclude_self,
                                        int64_t self_offset, at::IntArrayRef predicates) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::contrastive_lse_backward", "")
                       .typed<Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                                      const OptT&, const OptT&, const at::Tensor&, double, double, bool, bool, double,
                                      bool, int64_t, at::IntArrayRef)>();
  return op.call(g, a, b, la, lb, extra, lse, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                 predicates);
}

// fastgan::contrastive_lse_budget: (lse, rowmax, kept scores).
inline Tensor3 contrastive_lse_budget(const at::Tensor& a, const OptT& b, const OptT& la, const OptT& lb,
                                      const OptT& extra, double scale, double bias, bool relu, bool normalize,
                                      double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
                                      bool columns, int64_t score_budget) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::contrastive_lse_budget", "")
                       .typed<Tensor3(const at::Tensor&, const OptT&, const OptT&, const OptT&, const OptT&, double,
                                      double, bool, bool, double, bool, int64_t, at::IntArrayRef, bool, int64_t)>();
  return op.call(a, b, la, lb, extra, scale, bias, relu, normalize, eps, exclude_self, self_offset, predicates, columns,
                 score_budget);
}

// fastgan::contrastive_lse_budget_backward: (grad_a, grad_b, grad_extra).
inline Tensor3 contrastive_lse_budget_backward(const at::Tensor& g, const at::Tensor& a, const OptT& b,
                                               const OptT& la, const OptT& lb, const OptT& extra,
                                               const at::Tensor& lse, const at::Tensor& scores, double scale,
                                               double bias, bool relu, bool normalize, double eps, bool exclude_self,
                                               int64_t self_offset, at::IntArrayRef predicates, bool columns) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::contrastive_lse_budget_backward", "")
                       .typed<Tensor3(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const OptT&,
                                      const OptT&, const at::Tensor&, const at::Tensor&, double, double, bool, bool,
                                      double, bool, int64_t, at::IntArrayRef, bool)>();
  return op.call(g, a, b, la, lb, extra, lse, scores, scale, bias, relu, normalize, eps, exclude_self, self_offset,
                 predicates, columns);
}

// fastgan::pair_cosine: scale cos(x_i, y_{(i + shift) mod N}), each norm clamped at eps.
inline at::Tensor pair_cosine(const at::Tensor& x, const at::Tensor& y, double eps, double scale = 1.0,
                              int64_t shift = 0) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::pair_cosine", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double, int64_t)>();
  return op.call(x, y, eps, scale, shift);
}

inline std::tuple<at::Tensor, at::Tensor> pair_cosine_backward(const at::Tensor& g, const at::Tensor& x,
                                                               const at::Tensor& y, double eps, double scale = 1.0,
                                                               int64_t shift = 0) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::pair_cosine_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double, double, int64_t)>();
  return op.call(g, x, y, eps, scale, shift);
}

// fastgan::same_class_cosine_sum: (sum_{p != i, y_p = y_i} cos(x_i, x_p), that count) per row.
inline std::tuple<at::Tensor, at::Tensor> same_class_cosine_sum(const at::Tensor& x, const at::Tensor& labels,
                                                                double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::same_class_cosine_sum", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, labels, eps);
}

inline at::Tensor same_class_cosine_sum_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& labels,
                                                 double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::same_class_cosine_sum_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(g, x, labels, eps);
}

// fastgan::lse_combine: scale * sum_i (sum_k coefs[k] x_ik + c1 y1_i + c2 y2_i), 0-dim.
inline at::Tensor lse_combine(const at::Tensor& x, const OptT& y1, const OptT& y2, at::ArrayRef<double> coefs,
                              double c1, double c2, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::lse_combine", "")
                       .typed<at::Tensor(const at::Tensor&, const OptT&, const OptT&, at::ArrayRef<double>, double,
                                         double, double)>();
  return op.call(x, y1, y2, coefs, c1, c2, scale);
}

// fastgan::lse_combine_backward: (grad_x, grad_y1, grad_y2), the last two also without y1, y2.
inline Tensor3 lse_combine_backward(const at::Tensor& g, const at::Tensor& x, const OptT& y1, const OptT& y2,
                                    at::ArrayRef<double> coefs, double c1, double c2, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::lse_combine_backward", "")
                       .typed<Tensor3(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&,
                                      at::ArrayRef<double>, double, double, double)>();
  return op.call(g, x, y1, y2, coefs, c1, c2, scale);
}

// fastgan::d2d_epilogue: D2D-CE's per-row terms with their mean or sum, 0-dim.
inline at::Tensor d2d_epilogue(const at::Tensor& lse, const at::Tensor& rowmax, const at::Tensor& cos, double m_p,
                               double temperature, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::d2d_epilogue", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                                         double)>();
  return op.call(lse, rowmax, cos, m_p, temperature, scale);
}

// fastgan::d2d_epilogue_backward: (grad_lse, grad_cos).
inline std::tuple<at::Tensor, at::Tensor> d2d_epilogue_backward(const at::Tensor& g, const at::Tensor& lse,
                                                                const at::Tensor& rowmax, const at::Tensor& cos,
                                                                double m_p, double temperature, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::d2d_epilogue_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, double, double,
                                                                 double)>();
  return op.call(g, lse, rowmax, cos, m_p, temperature, scale);
}

// fastgan::supcon_epilogue: (loss, den), den the mean's divisor (kept on the device).
inline std::tuple<at::Tensor, at::Tensor> supcon_epilogue(const at::Tensor& lse, const at::Tensor& pos,
                                                          const at::Tensor& n_pos, double temperature, bool mean) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::supcon_epilogue", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double, bool)>();
  return op.call(lse, pos, n_pos, temperature, mean);
}

// fastgan::supcon_epilogue_backward: (grad_lse, grad_pos).
inline std::tuple<at::Tensor, at::Tensor> supcon_epilogue_backward(const at::Tensor& g, const at::Tensor& den,
                                                                   const at::Tensor& lse, const at::Tensor& pos,
                                                                   const at::Tensor& n_pos, double temperature) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::supcon_epilogue_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double)>();
  return op.call(g, den, lse, pos, n_pos, temperature);
}

}  // namespace calls
}  // namespace fastgan
