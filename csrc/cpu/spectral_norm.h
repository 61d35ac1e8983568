// The CPU spectral-norm kernels (cpu/spectral_norm.cpp) as plain functions, for the CPU path of
// fastgan::spectral_norm_group_step (ops/spectral_norm_autograd.cpp): per layer they are a few
// microseconds of work on a small GAN layer, about what a dispatcher call with its list
// conversions costs, so the group step calls them directly.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>

namespace fastgan {

// n power-iteration steps on u, v in place (contiguous working copies of the compute type); the
// sigma of fastgan::spectral_norm_power_iteration_. Checks the weight's dtype and the vectors
// (error messages name the group step's `layer`).
at::Tensor power_iteration_one_cpu(const at::Tensor& weight_mat, at::Tensor& u, at::Tensor& v, int64_t n, double eps,
                                   bool hook_order, size_t layer);

// W / sigma as a new contiguous tensor of `shape` (W's number of elements, row-major order of the
// matrix): fastgan::spectral_norm_apply's numbers.
at::Tensor apply_weight_cpu(const at::Tensor& weight_mat, const at::Tensor& sigma, at::IntArrayRef shape);

// fastgan::spectral_norm_apply_backward's numbers for a gradient `grad` of `shape` laid out as the
// matrix (row-major; contiguous, or every stride 0), as a new contiguous tensor of `shape`.
at::Tensor apply_backward_weight_cpu(const at::Tensor& grad, const at::Tensor& weight_mat, const at::Tensor& u,
                                     const at::Tensor& v, const at::Tensor& sigma, at::IntArrayRef shape);

}  // namespace fastgan
