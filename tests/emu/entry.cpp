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
#include "cuda/spectral_norm.h"

using namespace fastgan::cuda;

namespace {
LseParams lse_params(const void* a, const void* b, const float* inv_a, const float* inv_b, const int64_t* la,
                     const int64_t* lb, const float* extra, int64_t n, int64_t m, int64_t d, int64_t stride_a,
                     int64_t stride_b, float scale, float bias, int relu, int exclude_self, int64_t self_offset,
                     int num_predicates, const int* predicates, int dtype) {
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
  return p;
}
}  // namespace

extern "C" {

int emu_contrastive_lse_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                const int64_t* la, const int64_t* lb, const float* extra, int64_t n, int64_t m,
                                int64_t d, int64_t stride_a, int64_t stride_b, float scale, float bias, int relu,
                                int exclude_self, int64_t self_offset, int num_predicates, const int* predicates,
                                int dtype, float* lse, float* rowmax) {
  const LseParams p = lse_params(a, b, inv_a, inv_b, la, lb, extra, n, m, d, stride_a, stride_b, scale, bias, relu,
                                 exclude_self, self_offset, num_predicates, predicates, dtype);
  return contrastive_lse_forward(p, lse, rowmax, nullptr);
}

int emu_contrastive_lse_backward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                 const int64_t* la, const int64_t* lb, const float* extra, int64_t n, int64_t m,
                                 int64_t d, int64_t stride_a, int64_t stride_b, float scale, float bias, int relu,
                                 int exclude_self, int64_t self_offset, int num_predicates, const int* predicates,
                                 int dtype, const float* lse, const float* grad_lse, float* u, float* v) {
  const LseParams p = lse_params(a, b, inv_a, inv_b, la, lb, extra, n, m, d, stride_a, stride_b, scale, bias, relu,
                                 exclude_self, self_offset, num_predicates, predicates, dtype);
  return contrastive_lse_backward(p, lse, grad_lse, u, v, nullptr);
}

int emu_cosine_similarity_matrix_forward(const void* a, const void* b, const float* inv_a, const float* inv_b,
                                         int64_t n, int64_t m, int64_t d, int64_t stride_a, int64_t stride_b,
                                         float scale, int dtype, void* out) {
  return cosine_similarity_matrix_forward(a, b, inv_a, inv_b, n, m, d, stride_a, stride_b, scale,
                                          static_cast<DType>(dtype), out, nullptr);
}

// ---- launch records and errors ----

int64_t emu_launch_count() { return static_cast<int64_t>(fastgan_emu::state().records.size()); }
void emu_clear_launches() { fastgan_emu::state().records.clear(); }
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
