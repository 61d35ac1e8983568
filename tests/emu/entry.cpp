// extern "C" entry points of the emulated CUDA kernels for tests/test_cuda_emulation.py (ctypes).
// Flat arguments (pointers from tensors' data_ptr, sizes, flags) so the Python side needs no struct
// mirrors; each returns the launcher's cudaError_t. Test-only: never part of the extension.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda/contrastive_lse.h"
#include "cuda/infonce_lse.h"
#include "cuda/loss_terms.h"
#include "cuda/spectral_norm.h"

using namespace fastgan::cuda;

namespace {
int g_allow_tf32 = 0;  // LseParams::allow_tf32 and cosine's, set by emu_set_allow_tf32

LseParams lse_params(const void* a, const void* b, const float* inv_a, const float* inv_b, const int64_t* la,
                     const int64_t* lb, const float* extra, int64_t n, int64_t m, int64_t d, int64_t stride_a,
                     int64_t stride_b, float scale, float bias, int relu, int exclude_self, int64_t self_offset,
                     int num_predicates, const int* predicates, int dtype, int num_sms, int force_splits) {
  LseParams p{};
  p.a = a;
  p.b = b;
  p.inv_a = inv_a;
  p.inv_b = inv_b;
  p.la = la;
  p.lb = lb;
  p.extra = extra;
  p.n = n;
  p.m = m;
  p.d = d;
  p.stride_a = stride_a;
  p.stride_b = stride_b;
  p.scale = scale;
  p.bias = bias;
  p.relu = relu;
  p.exclude_self = exclude_self;
  p.self_offset = self_offset;
  p.num_predicates = num_predicates;
  for (int k = 0; k < 3; ++k) p.predicates[k] = k < num_predicates ? predicates[k] : 0;
  p.dtype = static_cast<DType>(dtype);
  p.num_sms = num_sms;
  p.force_splits = force_splits;
  p.allow_tf32 = g_allow_tf32;
  return p;
}

// The launchers promise that the workspace needs no zeroing: hand them NaN. A dry run (launches
// recorded, not run) needs none.
std::vector<float> nan_workspace(int64_t count) {
  return std::vector<float>(fastgan_emu::state().dry_run ? 1 : count, std::nanf(""));
}
}  // namespace

extern "C" {
void emu_set_allow_tf32(int allow) { g_allow_tf32 = allow; }

int emu_contrastive_lse_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                const int64_t* la, const int64_t* lb, const float* extra, int64_t n, int64_t m,
                                int64_t d, int64_t stride_a, int64_t stride_b, float scale, float bias, int relu,
                                int exclude_self, int64_t self_offset, int num_predicates, const int* predicates,
                                int dtype, int num_sms, int force_splits, float* lse, float* rowmax) {
  const LseParams p = lse_params(a, b, inv_a, inv_b, la, lb, extra, n, m, d, stride_a, stride_b, scale, bias, relu,
                                 exclude_self, self_offset, num_predicates, predicates, dtype, num_sms, force_splits);
  std::vector<float> ws = nan_workspace(contrastive_lse_plan(p).forward_workspace);
  return contrastive_lse_forward(p, lse, rowmax, ws.data(), nullptr);
}

int emu_contrastive_lse_backward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                 const int64_t* la, const int64_t* lb, const float* extra, int64_t n, int64_t m,
                                 int64_t d, int64_t stride_a, int64_t stride_b, float scale, float bias, int relu,
                                 int exclude_self, int64_t self_offset, int num_predicates, const int* predicates,
                                 int dtype, int num_sms, int force_splits, const float* lse, const float* grad_lse,
                                 float* u, float* v) {
  const LseParams p = lse_params(a, b, inv_a, inv_b, la, lb, extra, n, m, d, stride_a, stride_b, scale, bias, relu,
                                 exclude_self, self_offset, num_predicates, predicates, dtype, num_sms, force_splits);
  std::vector<float> ws = nan_workspace(contrastive_lse_plan(p).backward_workspace);
  return contrastive_lse_backward(p, lse, grad_lse, u, v, ws.data(), nullptr);
}

// The plan's split counts: out[0] = column splits (forward, row gradient), out[1] = row splits.
void emu_contrastive_lse_plan(int64_t n, int64_t m, int64_t d, int num_sms, int force_splits, int64_t* out) {
  LseParams p{};
  p.n = n;
  p.m = m;
  p.d = d;
  p.num_sms = num_sms;
  p.force_splits = force_splits;
  const LsePlan q = contrastive_lse_plan(p);
  out[0] = q.col_splits;
  out[1] = q.row_splits;
}

int emu_cosine_similarity_matrix_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                         int64_t n, int64_t m, int64_t d, int64_t stride_a, int64_t stride_b,
                                         float scale, int dtype, void* out) {
  return cosine_similarity_matrix_forward(a, b, inv_a, inv_b, n, m, d, stride_a, stride_b, scale,
                                          static_cast<DType>(dtype), g_allow_tf32 != 0, out, nullptr);
}

int emu_inverse_norms(const void* a, int64_t n, int64_t stride_a, const void* b, int64_t m, int64_t stride_b, int64_t d,
                      int dtype, float eps, int normalize, float* inv_a, float* inv_b) {
  return inverse_norms(a, n, stride_a, b, m, stride_b, d, static_cast<DType>(dtype), eps, normalize != 0, inv_a, inv_b,
                       nullptr);
}

int emu_normalization_backward(const void* a, int64_t n, int64_t stride_a, const float* inv_a, const float* u,
                               void* grad_a, const void* b, int64_t m, int64_t stride_b, const float* inv_b,
                               const float* v, void* grad_b, int64_t d, int dtype, float eps, int normalize) {
  return normalization_backward(a, n, stride_a, inv_a, u, grad_a, b, m, stride_b, inv_b, v, grad_b, d,
                                static_cast<DType>(dtype), eps, normalize != 0, nullptr);
}

int emu_extra_logit_backward(const float* extra, const float* lse, const float* grad_lse, int64_t n, int k,
                             float* grad_extra) {
  return extra_logit_backward(extra, lse, grad_lse, n, k, grad_extra, nullptr);
}

int emu_pair_cosine_forward(const void* x, const void* y, int64_t n, int64_t d, int64_t shift, int dtype, float eps,
                            float scale, float* out) {
  return pair_cosine_forward(x, y, n, d, shift, static_cast<DType>(dtype), eps, scale, out, nullptr);
}

int emu_pair_cosine_backward(const float* grad, const void* x, const void* y, int64_t n, int64_t d, int64_t shift,
                             int dtype, float eps, float scale, void* gx, void* gy) {
  return pair_cosine_backward(grad, x, y, n, d, shift, static_cast<DType>(dtype), eps, scale, gx, gy, nullptr);
}

int emu_lse_combine_forward(const float* x, int64_t n, int64_t k, int64_t x_stride_n, int64_t x_stride_k,
                            const float* y1, int64_t y1_stride, const float* y2, int64_t y2_stride, const double* coefs,
                            double c1, double c2, double scale, float* out) {
  CombineParams p{x, n, k, x_stride_n, x_stride_k, y1, y1_stride, y2, y2_stride, {}, static_cast<float>(c1),
                  static_cast<float>(c2), static_cast<float>(scale)};
  for (int64_t j = 0; j < k && j < 3; ++j) p.coefs[j] = static_cast<float>(coefs[j]);
  return lse_combine_forward(p, out, nullptr);
}

int emu_lse_combine_backward(int64_t n, int64_t k, const double* coefs, double c1, double c2, double scale,
                             const float* grad, float* gx, float* gy1, float* gy2) {
  CombineParams p{nullptr, n, k, k, 1, nullptr, 0, nullptr, 0, {}, static_cast<float>(c1), static_cast<float>(c2),
                  static_cast<float>(scale)};
  for (int64_t j = 0; j < k && j < 3; ++j) p.coefs[j] = static_cast<float>(coefs[j]);
  return lse_combine_backward(p, grad, gx, gy1, gy2, nullptr);
}

// SupCon's same-class cosine sums: x (n x d, contiguous, dtype) with its inverse norms and labels,
// one side only (b, m, scale, ... left null or 0): the launchers fill in the self-similarity, so a
// launcher that read one of them would fail these tests.
int emu_same_class_cosine_sum_forward(const void* x, const float* inv, const int64_t* labels, int64_t n, int64_t d,
                                      int dtype, int num_sms, int force_splits, float* pos, int64_t* n_pos) {
  const LseParams p = lse_params(x, nullptr, inv, nullptr, labels, nullptr, nullptr, n, 0, d, d, 0, 0.f, 0.f, 0, 0,
                                 0, 0, nullptr, dtype, num_sms, force_splits);
  std::vector<float> ws = nan_workspace(same_class_plan(p).same_class_forward_workspace);
  return same_class_cosine_sum_forward(p, pos, n_pos, ws.data(), nullptr);
}

int emu_same_class_cosine_sum_backward(const void* x, const float* inv, const int64_t* labels, int64_t n, int64_t d,
                                       int dtype, int num_sms, int force_splits, const float* grad, float* u) {
  const LseParams p = lse_params(x, nullptr, inv, nullptr, labels, nullptr, nullptr, n, 0, d, d, 0, 0.f, 0.f, 0, 0,
                                 0, 0, nullptr, dtype, num_sms, force_splits);
  std::vector<float> ws = nan_workspace(same_class_plan(p).same_class_backward_workspace);
  return same_class_cosine_sum_backward(p, grad, u, ws.data(), nullptr);
}

int emu_d2d_epilogue_forward(const float* lse, int64_t lse_stride, const float* rowmax, const float* cos, int64_t n,
                             float m_p, float temperature, float scale, float* out) {
  const D2dParams p{lse, lse_stride, rowmax, cos, n, m_p, temperature, scale};
  return d2d_epilogue_forward(p, out, nullptr);
}

int emu_d2d_epilogue_backward(const float* lse, int64_t lse_stride, const float* rowmax, const float* cos, int64_t n,
                              float m_p, float temperature, float scale, const float* grad, float* glse, float* gcos) {
  const D2dParams p{lse, lse_stride, rowmax, cos, n, m_p, temperature, scale};
  return d2d_epilogue_backward(p, grad, glse, gcos, nullptr);
}

int emu_supcon_epilogue_forward(const float* lse, int64_t lse_stride, const float* pos, const int64_t* n_pos,
                                int64_t n, float temperature, int mean, float* out, float* den) {
  const SupconParams p{lse, lse_stride, pos, n_pos, n, temperature, mean};
  return supcon_epilogue_forward(p, out, den, nullptr);
}

int emu_supcon_epilogue_backward(const float* lse, int64_t lse_stride, const float* pos, const int64_t* n_pos,
                                 int64_t n, float temperature, const float* grad, const float* den, float* glse,
                                 float* gpos) {
  const SupconParams p{lse, lse_stride, pos, n_pos, n, temperature, 0};
  return supcon_epilogue_backward(p, grad, den, glse, gpos, nullptr);
}

// ---- spectral norm ----

// Layer i: ptrs[4 i ..] = w, u, v, sigma; ints[9 i ..] = rows, cols, stride_r, stride_c, stride_u,
// stride_v, w_dtype, u_dtype, v_dtype. The planned descriptors live in host memory, which is the
// emulator's device memory.
int emu_spectral_norm_power_iteration(int64_t num_layers, void* const* ptrs, const int64_t* ints,
                                      int64_t n_power_iterations, float eps, int hook_order) {
  std::vector<SnLayer> layers(static_cast<size_t>(num_layers));
  for (int64_t i = 0; i < num_layers; ++i) {
    SnLayer& L = layers[static_cast<size_t>(i)];
    L = SnLayer{};
    L.w = ptrs[4 * i];
    L.u = ptrs[4 * i + 1];
    L.v = ptrs[4 * i + 2];
    L.sigma = static_cast<float*>(ptrs[4 * i + 3]);
    const int64_t* q = ints + 9 * i;
    L.rows = q[0];
    L.cols = q[1];
    L.stride_r = q[2];
    L.stride_c = q[3];
    L.stride_u = q[4];
    L.stride_v = q[5];
    L.w_dtype = static_cast<DType>(q[6]);
    L.u_dtype = static_cast<DType>(q[7]);
    L.v_dtype = static_cast<DType>(q[8]);
  }
  std::vector<float> ws = nan_workspace(spectral_norm_power_iteration_workspace(layers.data(), num_layers));
  return spectral_norm_power_iteration(layers.data(), num_layers, ws.data(), n_power_iterations, eps, hook_order != 0,
                                       nullptr);
}

int emu_spectral_norm_apply(const void* w, int64_t rows, int64_t cols, int64_t stride_r, int64_t stride_c, int dtype,
                            const float* sigma, void* out) {
  SnApplyLayer L{};
  L.w = SnMatrix{w, rows, cols, stride_r, stride_c, static_cast<DType>(dtype)};
  L.sigma = sigma;
  L.out = out;
  return spectral_norm_apply(&L, 1, nullptr);
}

// mats: grad and w (same dtype, each with its strides); vecs: u and v.
int emu_spectral_norm_apply_backward(const void* g, const void* w, int64_t rows, int64_t cols, const int64_t* strides,
                                     int dtype, const void* u, int64_t stride_u, int u_dtype, const void* v,
                                     int64_t stride_v, int v_dtype, const float* sigma, void* out) {
  SnApplyLayer L{};
  L.g = SnMatrix{g, rows, cols, strides[0], strides[1], static_cast<DType>(dtype)};
  L.w = SnMatrix{w, rows, cols, strides[2], strides[3], static_cast<DType>(dtype)};
  L.u = SnVector{u, rows, stride_u, static_cast<DType>(u_dtype)};
  L.v = SnVector{v, cols, stride_v, static_cast<DType>(v_dtype)};
  L.sigma = sigma;
  L.out = out;
  std::vector<float> ws = nan_workspace(spectral_norm_apply_backward_workspace(&L, 1));
  return spectral_norm_apply_backward(&L, 1, ws.data(), nullptr);
}

// The multi-tensor apply (backward != 0: its backward) of num_layers layers of one dtype. Layer i:
// ptrs[6 i ..] = w, g, u, v, sigma, out; ints[10 i ..] = rows, cols, w stride_r, stride_c, g stride_r,
// stride_c, u stride, v stride, u dtype, v dtype (g, u, v: backward only).
int emu_spectral_norm_apply_group(int64_t num_layers, void* const* ptrs, const int64_t* ints, int dtype, int backward) {
  std::vector<SnApplyLayer> layers(static_cast<size_t>(num_layers));
  const DType t = static_cast<DType>(dtype);
  for (int64_t i = 0; i < num_layers; ++i) {
    SnApplyLayer& L = layers[static_cast<size_t>(i)];
    void* const* p = ptrs + 6 * i;
    const int64_t* q = ints + 10 * i;
    L.w = SnMatrix{p[0], q[0], q[1], q[2], q[3], t};
    L.g = SnMatrix{p[1], q[0], q[1], q[4], q[5], t};
    L.u = SnVector{p[2], q[0], q[6], static_cast<DType>(q[8])};
    L.v = SnVector{p[3], q[1], q[7], static_cast<DType>(q[9])};
    L.sigma = static_cast<const float*>(p[4]);
    L.out = p[5];
  }
  if (!backward) return spectral_norm_apply(layers.data(), num_layers, nullptr);
  std::vector<float> ws = nan_workspace(spectral_norm_apply_backward_workspace(layers.data(), num_layers));
  return spectral_norm_apply_backward(layers.data(), num_layers, ws.data(), nullptr);
}

}  // extern "C"

namespace {
// target_ctas, allow_tf32: InfonceParams::target_ctas (0: the launchers' default split), ::allow_tf32.
InfonceParams infonce_params(const void* l, const void* m, int64_t n, int64_t r, int64_t hw, const int64_t* l_strides,
                             const int64_t* m_strides, float scale, int has_self, float self_term, int normalize,
                             float eps, int dtype, int64_t target_ctas, int allow_tf32) {
  InfonceParams p{};
  p.l = l;
  p.m = m;
  p.n = n;
  p.r = r;
  p.hw = hw;
  p.l_stride_n = l_strides[0];
  p.l_stride_r = l_strides[1];
  p.l_stride_k = l_strides[2];
  p.m_stride_n = m_strides[0];
  p.m_stride_r = m_strides[1];
  p.scale = scale;
  p.has_self = has_self;
  p.self_term = self_term;
  p.normalize = normalize;
  p.eps = eps;
  p.dtype = static_cast<DType>(dtype);
  p.target_ctas = target_ctas;
  p.allow_tf32 = allow_tf32;
  return p;
}
}  // namespace

extern "C" {
int emu_infonce_lse_forward(const void* l, const void* m, int64_t n, int64_t r, int64_t hw, const int64_t* l_strides,
                            const int64_t* m_strides, float scale, int has_self, float self_term, int normalize,
                            float eps, int dtype, int64_t target_ctas, int allow_tf32, float* pos, float* neg) {
  const InfonceParams p = infonce_params(l, m, n, r, hw, l_strides, m_strides, scale, has_self, self_term, normalize,
                                         eps, dtype, target_ctas, allow_tf32);
  std::vector<float> ws = nan_workspace(infonce_lse_forward_workspace(p));
  return infonce_lse_forward(p, pos, neg, ws.data(), nullptr);
}

int emu_infonce_lse_backward(const void* l, const void* m, int64_t n, int64_t r, int64_t hw,
                             const int64_t* l_strides, const int64_t* m_strides, float scale, int has_self,
                             float self_term, int normalize, float eps, int dtype, int64_t target_ctas,
                             int allow_tf32, const float* grad_pos,
                             const float* grad_neg, const float* neg, void* grad_l, void* grad_m) {
  const InfonceParams p = infonce_params(l, m, n, r, hw, l_strides, m_strides, scale, has_self, self_term, normalize,
                                         eps, dtype, target_ctas, allow_tf32);
  std::vector<float> ws = nan_workspace(infonce_lse_backward_workspace(p));
  return infonce_lse_backward(p, grad_pos, grad_neg, neg, grad_l, grad_m, ws.data(), nullptr);
}

// ---- launch records and errors ----

int64_t emu_launch_count() { return static_cast<int64_t>(fastgan_emu::state().records.size()); }
void emu_clear_launches() { fastgan_emu::state().records.clear(); }
// 1: launches are recorded and checked but not run (outputs untouched), for launch-count tests at
// sizes the emulator would take minutes over.
void emu_set_dry_run(int on) { fastgan_emu::state().dry_run = on != 0; }
// name into buf (NUL-terminated, truncated to len), dims = grid x, y, z, block x, y, z.
int emu_launch_record(int64_t i, char* buf, int len, unsigned* dims) {
  const auto& r = fastgan_emu::state().records;
  if (i < 0 || i >= static_cast<int64_t>(r.size())) return -1;
  std::snprintf(buf, len, "%s", r[i].name.c_str());
  const unsigned d[6] = {r[i].grid.x, r[i].grid.y, r[i].grid.z, r[i].block.x, r[i].block.y, r[i].block.z};
  std::memcpy(dims, d, sizeof d);
  return 0;
}
const char* emu_last_message() { return fastgan_emu::last_message().c_str(); }
int emu_take_last_error() { return cudaGetLastError(); }

// ---- the emulated half types' conversions ----

void emu_float_to_half(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2half(x[i]).__x;
}
void emu_half_to_float(const uint16_t* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half2float(__ushort_as_half(x[i]));
}
void emu_float_to_bfloat16(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2bfloat16(x[i]).__x;
}
void emu_bfloat16_to_float(const uint16_t* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(__nv_bfloat16(__nv_bfloat16_raw{x[i]}));
}

}  // extern "C"
