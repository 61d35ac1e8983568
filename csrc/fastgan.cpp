// fastgan._C: every op's schema, declared once. Implementations register per device:
//   csrc/cpu/<op>.cpp   TORCH_LIBRARY_IMPL(fastgan, CPU, m)
//   csrc/cuda/<op>.cu   plain CUDA kernels and launchers (no torch headers, compile-checked in CI)
//   csrc/cuda/<op>_cuda.cpp  TORCH_LIBRARY_IMPL(fastgan, CUDA, m): torch glue around the launchers
// Fake (meta) kernels and autograd are registered from Python: fastgan/ops/<op>.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fastgan._C` loads this library, which runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastgan, m) {
  // ---- normalized (cosine) similarity matrix: S = scale * nrm(a, eps) @ nrm(b, eps)^T ----------
  m.def("cosine_similarity_matrix(Tensor a, Tensor b, float scale, float eps) -> Tensor");
  m.def(
      "cosine_similarity_matrix_backward(Tensor grad, Tensor a, Tensor b, float scale, float eps)"
      " -> (Tensor, Tensor)");
  // b is a (S = scale nrm(a) nrm(a)^T): the backward is one product, dA~ = (G + G^T) A~ (CPU).
  m.def("cosine_similarity_matrix_self(Tensor a, float scale, float eps) -> Tensor");
  m.def("cosine_similarity_matrix_self_backward(Tensor grad, Tensor a, float scale, float eps) -> Tensor");

  // ---- masked row log-sum-exp over z = scale * <nrm(a_i), nrm(b_j)> + bias --------------------
  // (optionally relu(z)), one float32 LSE per row and predicate, plus the row max of z over
  // all admissible columns. See fastgan/reference/contrastive.py:contrastive_lse for the contract.
  m.def(
      "contrastive_lse(Tensor a, Tensor b, Tensor? label_a, Tensor? label_b, Tensor? extra,"
      " float scale, float bias, bool relu, bool normalize, float eps, bool exclude_self,"
      " int self_offset, int[] predicates) -> (Tensor lse, Tensor rowmax)");
  m.def(
      "contrastive_lse_backward(Tensor grad_lse, Tensor a, Tensor b, Tensor? label_a,"
      " Tensor? label_b, Tensor? extra, Tensor lse, float scale, float bias, bool relu,"
      " bool normalize, float eps, bool exclude_self, int self_offset, int[] predicates)"
      " -> (Tensor grad_a, Tensor grad_b, Tensor grad_extra)");

  // ---- the same log-sum-exps under a memory budget: save or recompute by size ------------------
  // When N x M scores of the compute dtype fit in score_budget bytes (0: never), the forward keeps
  // them (`scores`, (N, M); else an empty tensor) and the backward is one elementwise pass plus the
  // gradient products; beyond it both recompute tile by tile (extra memory O((N + M) D)).
  // b = None: b is a (self-similarity); the whole gradient is returned as grad_a, grad_b is empty,
  // and the saved backward needs one product, dA = (G + G^T) A. columns: lse is (N + M, K),
  // the rows' LSEs then the columns' (column j over rows i, predicates with the labels' roles
  // swapped, self row i = j - self_offset; no extra), for losses with both directions (CLIP).
  m.def(
      "contrastive_lse_budget(Tensor a, Tensor? b, Tensor? label_a, Tensor? label_b, Tensor? extra,"
      " float scale, float bias, bool relu, bool normalize, float eps, bool exclude_self,"
      " int self_offset, int[] predicates, bool columns, int score_budget)"
      " -> (Tensor lse, Tensor rowmax, Tensor scores)");
  m.def(
      "contrastive_lse_budget_backward(Tensor grad_lse, Tensor a, Tensor? b, Tensor? label_a,"
      " Tensor? label_b, Tensor? extra, Tensor lse, Tensor scores, float scale, float bias, bool relu,"
      " bool normalize, float eps, bool exclude_self, int self_offset, int[] predicates, bool columns)"
      " -> (Tensor grad_a, Tensor grad_b, Tensor grad_extra)");

  // ---- a whole loss on the CPU: kind "2c" | "d2d" | "ntxent" (stacked views) | "supcon" | "clip", reduction
  // "mean" | "sum" | "none"; proxy for 2c / d2d / clip (CLIP's b), labels (int64) except for ntxent and clip;
  // m_p: D2D's margin; eps: the norm clamp (CLIP: sqrt of its eps on the squared norm).
  // Besides the loss, what the backward reads (csrc/cpu/contrastive_loss.cpp). One C++ autograd node.
  m.def(
      "contrastive_loss(Tensor x, Tensor? proxy, Tensor? labels, str kind, float temperature, float m_p, float eps,"
      " str reduction, int score_budget)"
      " -> (Tensor loss, Tensor lse, Tensor rowmax, Tensor pos, Tensor n_pos, Tensor scores)");
  m.def(
      "contrastive_loss_backward(Tensor grad, Tensor x, Tensor? proxy, Tensor? labels, Tensor lse, Tensor rowmax,"
      " Tensor pos, Tensor n_pos, Tensor scores, str kind, float temperature, float m_p, float eps, str reduction)"
      " -> (Tensor grad_x, Tensor grad_proxy)");

  // ---- row-wise cosine of two (N, D) tensors, each norm clamped at eps (the losses' positive terms):
  // c_i = scale (x_i . y_j) / (max(||x_i||, eps) max(||y_j||, eps)) with j = (i + shift) mod N,
  // float32 (float64 if either is float64). scale: a loss's 1/t (2C's extra logit) without a division
  // each way; shift: NT-Xent's partner row N/2 away, with no rolled copy of y (any integer, taken mod
  // N as Python's %). The arguments of the Triton op (fastgan::pair_cosine_triton), in its order.
  m.def("pair_cosine(Tensor x, Tensor y, float eps, float scale=1.0, int shift=0) -> Tensor");
  m.def(
      "pair_cosine_backward(Tensor grad, Tensor x, Tensor y, float eps, float scale=1.0, int shift=0)"
      " -> (Tensor, Tensor)");

  // ---- a loss's combination of its log-sum-exps and positive terms with its mean or sum:
  // scale * sum_i (sum_k coefs[k] x_ik + c1 y1_i + c2 y2_i), 0-dim in x's dtype; y1, y2 (N,) or (N, 1).
  // The backward gives every gradient (those of absent y1, y2 shaped (N,)). CUDA: one launch each way
  // (csrc/cuda/loss_terms.cu); CPU: ATen (the CPU losses run as one op each way instead).
  m.def("lse_combine(Tensor x, Tensor? y1, Tensor? y2, float[] coefs, float c1, float c2, float scale) -> Tensor");
  m.def(
      "lse_combine_backward(Tensor grad, Tensor x, Tensor? y1, Tensor? y2, float[] coefs, float c1, float c2,"
      " float scale) -> (Tensor, Tensor, Tensor)");

  // ---- D2D-CE's epilogue with the loss's mean (scale 1/N) or sum: scale * sum_i [q_i + logaddexp(-q_i,
  // lse_i - M_i)], q_i = relu((m_p - cos_i) / temperature), M_i = rowmax_i (0 where not finite; a
  // constant: no gradient). lse (N, 1), rowmax and cos (N,); 0-dim in lse's dtype. The backward gives
  // (grad_lse shaped as lse, grad_cos). CUDA: one launch each way (csrc/cuda/loss_terms.cu).
  m.def("d2d_epilogue(Tensor lse, Tensor rowmax, Tensor cos, float m_p, float temperature, float scale) -> Tensor");
  m.def(
      "d2d_epilogue_backward(Tensor grad, Tensor lse, Tensor rowmax, Tensor cos, float m_p, float temperature,"
      " float scale) -> (Tensor, Tensor)");
  // ---- SupCon's epilogue: sum_i [n_i > 0] (lse_i - pos_i / (temperature n_i)) / den with den the
  // number of anchors with a positive (at least 1) when `mean`, else 1; returns (loss, den), both
  // 0-dim in lse's dtype (den stays on the device for the backward). lse (N, 1), pos (N,), n_pos (N,)
  // int64. CUDA: one launch each way.
  m.def("supcon_epilogue(Tensor lse, Tensor pos, Tensor n_pos, float temperature, bool mean) -> (Tensor, Tensor)");
  m.def(
      "supcon_epilogue_backward(Tensor grad, Tensor den, Tensor lse, Tensor pos, Tensor n_pos, float temperature)"
      " -> (Tensor, Tensor)");

  // ---- SupCon's positive term: per row the sum of its cosines to the other rows of its class (norms
  // clamped at eps; float32, float64 for float64) and their count (int64). labels: 1-D int64.
  // CPU: grouped by a sort (csrc/cpu/same_class_cosine.cpp); CUDA: a masked sweep of the cosine tiles,
  // 3 launches forward and 4 backward, no sort and no host sync (csrc/cuda/contrastive_lse.cu).
  m.def("same_class_cosine_sum(Tensor x, Tensor labels, float eps) -> (Tensor pos, Tensor n_pos)");
  m.def("same_class_cosine_sum_backward(Tensor grad, Tensor x, Tensor labels, float eps) -> Tensor");

  // ---- InfoMax-GAN's local x global InfoNCE: per image i the positives S[i, i, :] and the LSE over
  // the other images' local features (+ HW exp(self_logit)), S[i, j, k] = scale <nrm(m_i), nrm(l_j[:, k])>.
  // l (N, R, HW) any strides, m (N, R). See fastgan/reference/infonce.py:infonce_lse for the contract.
  m.def("infonce_lse(Tensor l, Tensor m, float scale, float? self_logit, bool normalize, float eps) -> (Tensor, Tensor)");
  m.def(
      "infonce_lse_backward(Tensor grad_pos, Tensor grad_neg, Tensor l, Tensor m, Tensor neg, float scale,"
      " float? self_logit, bool normalize, float eps) -> (Tensor, Tensor)");
  // The same under the score budget (CPU): scores is the (N, N, HW) tensor S[:, j, :] at [j] when
  // N^2 HW scores of the compute dtype fit in score_budget bytes (the backward then skips the
  // recompute product), else empty. Autograd: csrc/ops/infonce_autograd.cpp.
  m.def(
      "infonce_lse_budget(Tensor l, Tensor m, float scale, float? self_logit, bool normalize, float eps,"
      " int score_budget) -> (Tensor pos, Tensor neg, Tensor scores)");
  m.def(
      "infonce_lse_budget_backward(Tensor grad_pos, Tensor grad_neg, Tensor l, Tensor m, Tensor neg, Tensor scores,"
      " float scale, float? self_logit, bool normalize, float eps) -> (Tensor grad_l, Tensor grad_m)");

  // ---- spectral normalization (schemas added by fastgan/ops/spectral_norm.py's C++ side) -------
  // SPECTRAL_NORM_SCHEMAS
  // n power-iteration steps for a list of layers; u, v updated in place. hook_order: v = nrm(W^T u)
  // then u = nrm(W v) (torch.nn.utils.spectral_norm), else the parametrization's opposite order.
  // Returns one 0-dim sigma = <u, W v> per layer (float32; float64 for float64 weights), taken
  // from the last normalization (n == 0: one pass). Contract: fastgan/ops/spectral_norm.py.
  m.def(
      "spectral_norm_power_iteration_(Tensor[] weight_mats, Tensor(a!)[] us, Tensor(b!)[] vs,"
      " int n_power_iterations, float eps, bool hook_order) -> Tensor[]");
  // A SpectralNormGroup's training step: copies of us, vs stepped n >= 1 times, then W_i / sigma_i
  // in each weight's own shape (W_mat: dims[i] first). Returns outs + us' + vs' + sigmas.
  m.def(
      "spectral_norm_group_step(Tensor[] weights, Tensor[] us, Tensor[] vs, int[] dims,"
      " int n_power_iterations, float eps, bool hook_order) -> Tensor[]");
  // weight_mat / sigma (contiguous, weight_mat's dtype); autograd with sigma = u^T W v (u, v
  // constants): grad_w = G / sigma - (<G, W> / sigma^2) u v^T. The autograd kernel is C++ and
  // device-independent (csrc/ops/spectral_norm_autograd.cpp); devices implement the two ops.
  m.def("spectral_norm_apply(Tensor weight_mat, Tensor u, Tensor v, Tensor sigma) -> Tensor");
  m.def(
      "spectral_norm_apply_backward(Tensor grad, Tensor weight_mat, Tensor u, Tensor v, Tensor sigma)"
      " -> Tensor");
  // The same for a whole group of layers of one dtype (a SpectralNormGroup's step on CUDA): W_i / sigma_i
  // of every layer in one launch, its backward in two (csrc/cuda/spectral_norm.cu). The outputs are views
  // of one buffer; u_i, v_i must be constants of the graph (clones), as for spectral_norm_apply.
  m.def("spectral_norm_apply_group(Tensor[] weight_mats, Tensor[] sigmas) -> Tensor[]");
  m.def(
      "spectral_norm_apply_group_backward(Tensor[] grads, Tensor[] weight_mats, Tensor[] us, Tensor[] vs,"
      " Tensor[] sigmas) -> Tensor[]");
}
