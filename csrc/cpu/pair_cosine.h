// The CPU pair_cosine backward for callers in C++ (fastgan::contrastive_loss's 2C and D2D-CE), and
// the op's shift rule, shared with its CUDA glue (csrc/cuda/loss_terms_cuda.cpp).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace fastgan {

// fastgan::pair_cosine's shift mod N in [0, N), as Python's % (the Triton wrapper's int(shift) % n);
// 0 for N = 0. The CUDA launchers take the shift so reduced.
inline int64_t wrap_shift(int64_t shift, int64_t n) { return n > 0 ? ((shift % n) + n) % n : 0; }

// d cos(x_i, y_i) / d x into gx (gx += g_i dcos_i / dx_i: the caller's gradient of x, one pass and
// one N x D buffer fewer than a separate gradient and an add), returns d / d y (y's dtype).
at::Tensor pair_cosine_backward_accumulate(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, double eps,
                                           at::Tensor& gx);

}  // namespace fastgan
