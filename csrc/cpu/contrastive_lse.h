// The CPU contrastive_lse_budget kernels as C++ functions, for fastgan::contrastive_loss
// (csrc/cpu/contrastive_loss.cpp), which calls them directly: no second dispatch, one preparation
// of the inputs, and the positive logits that are entries of the score matrix itself taken from the
// kept scores in the same sweep instead of a kernel of their own.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastgan {

// Positive logits read off the kept scores: per row i, P_i = sum of z_ij over the set below
// (z = scale * cos + bias, the kernel's logits), and its gradient added to the score gradient.
//   Diagonal:  j = i (CLIP: a_i against b_i; b given, columns)
//   Partner:   j = (i + N/2) mod N (NT-Xent's stacked views; b = a, N even)
//   SameClass: j != i with label_j = label_i (SupCon; b = a), and the set's size
enum class PositiveSet { None, Diagonal, Partner, SameClass };

// Whether P comes from the scores: the kernel keeps them (scores_kept) and runs its bounded
// one-shift path (the only one that reads the logits back). Else the caller computes P itself.
bool positive_in_scores(PositiveSet set, bool scores_kept, bool b_is_a, double scale, double bias, bool relu,
                        bool normalize, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
                        bool columns, bool has_extra);

// fastgan::contrastive_lse_budget's CPU kernel: (lse, rowmax, scores). With a PositiveSet and
// positive_in_scores true, *pos gets P (N,) and, for SameClass, *count the set sizes (int64, N).
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_cpu(
    const at::Tensor& a, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& label_a,
    const std::optional<at::Tensor>& label_b, const std::optional<at::Tensor>& extra, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns, int64_t score_budget, PositiveSet positives = PositiveSet::None, at::Tensor* pos = nullptr,
    at::Tensor* count = nullptr);

// Its backward: (grad_a, grad_b, grad_extra); pos_weight (N,) = d loss / d P_i where the forward
// took P from the scores (positive_in_scores), else undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_budget_backward_cpu(
    const at::Tensor& grad_lse, const at::Tensor& a, const std::optional<at::Tensor>& b,
    const std::optional<at::Tensor>& label_a, const std::optional<at::Tensor>& label_b,
    const std::optional<at::Tensor>& extra, const at::Tensor& lse, const at::Tensor& scores, double scale, double bias,
    bool relu, bool normalize, double eps, bool exclude_self, int64_t self_offset, at::IntArrayRef predicates,
    bool columns, PositiveSet positives = PositiveSet::None, const at::Tensor& pos_weight = at::Tensor());

}  // namespace fastgan
