// The CPU pair_cosine backward for callers in C++ (fastgan::contrastive_loss's 2C and D2D-CE).
#pragma once
#include <ATen/ATen.h>

namespace fastgan {

// d cos(x_i, y_i) / d x into gx (gx += g_i dcos_i / dx_i: the caller's gradient of x, one pass and
// one N x D buffer fewer than a separate gradient and an add), returns d / d y (y's dtype).
at::Tensor pair_cosine_backward_accumulate(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, double eps,
                                           at::Tensor& gx);

}  // namespace fastgan
