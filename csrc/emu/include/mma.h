// Emulated nvcuda::wmma for the CPU build of the CUDA kernels (csrc/emu/simt.h).
// A fragment holds the WHOLE tile in every thread (x[] row-major over the tile's logical rows and
// columns, num_elements = rows * cols), so code that treats fragment elements uniformly (fill,
// scale every element, ...) computes what it computes on a GPU, but code that relies on which
// element a lane holds (the undocumented per-architecture layout) is NOT checked. mma_sync sums the
// K products in float32 in order k = 0..K-1 (tensor cores sum in an unspecified order and internal
// precision). load/store check what the hardware requires: ldm a multiple of 16 bytes and a 32-byte
// aligned pointer.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct tile_shape;
template <int M, int N, int K>
struct tile_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct tile_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct tile_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

// TF32 operands (m16n16k8): as in CUDA, a precision::tf32 fragment stores float elements, is loaded
// from float memory, and its elements must be rounded with __float_to_tf32 by the caller; mma_sync
// reads only the top 19 bits of each (the tensor core ignores the low 13 mantissa bits), so an
// operand left unrounded is truncated here as on the GPU.
namespace precision {
struct tf32 {};
}  // namespace precision
template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = tile_shape<Use, M, N, K>::rows, cols = tile_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  typename storage<T>::type x[num_elements];
};

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero; inf and NaN pass unchanged.
inline float __float_to_tf32(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}
inline float tf32_operand(float v) {  // what the tensor core reads of a float element
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) != 0x7f800000u) b &= 0xffffe000u;
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

inline float to_f(float v) { return v; }
inline float to_f(__half v) { return __half2float(v); }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
inline void check_access(const void* p, unsigned ldm, const char* what) {
  char msg[160];
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    std::snprintf(msg, sizeof msg, "%s: pointer %p is not 32-byte aligned", what, p);
    ::fastgan_emu::fail(msg);
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    std::snprintf(msg, sizeof msg, "%s: ldm %u is not a multiple of 16 bytes", what, ldm);
    ::fastgan_emu::fail(msg);
  }
}

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const T& v) {
  for (auto& e : f.x) e = v;
}

// Operand fragments: the layout is part of the type (row_major: element (r, c) at p[r * ldm + c]).
template <typename Use, int M, int N, int K, typename T, typename L, typename S>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const S* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load takes a layout_t");
  check_access<typename storage<T>::type>(p, ldm, "wmma::load_matrix_sync");
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<L, col_major>::value ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  check_access<T>(p, ldm, "wmma::load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  check_access<T>(p, ldm, "wmma::store_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}

// TF32: d = a b + c in float32 over operands truncated to TF32 (d may alias c).
// Every lane of a warp computes the same whole-tile product here, 32 times the work of the GPU's
// one product per warp; so each lane's n-th call is remembered per warp, and a later lane whose
// operands are bit-identical to the remembered call's (all of them, unless the kernel diverges)
// takes its result instead of recomputing it: same bits, a fraction of the emulation time.
template <int M, int N, int K, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
                     const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  struct Memo {
    bool valid = false;
    float a[M * K], b[K * N], c[M * N], d[M * N];
  };
  constexpr unsigned kSlots = 256;  // calls of one lane between two barriers, at most, to be reused
  static std::vector<Memo> memo[::fastgan_emu::kMaxThreads / ::fastgan_emu::kWarp];
  static unsigned calls[::fastgan_emu::kMaxThreads];
  const int t = ::fastgan_emu::current("wmma::mma_sync").linear;
  std::vector<Memo>& warp_memo = memo[t / ::fastgan_emu::kWarp];
  if (warp_memo.empty()) warp_memo.resize(kSlots);
  Memo& e = warp_memo[calls[t]++ % kSlots];
  if (e.valid && std::memcmp(e.a, a.x, sizeof e.a) == 0 && std::memcmp(e.b, b.x, sizeof e.b) == 0 &&
      std::memcmp(e.c, c.x, sizeof e.c) == 0) {
    std::memcpy(d.x, e.d, sizeof e.d);
    return;
  }
  std::memcpy(e.a, a.x, sizeof e.a);
  std::memcpy(e.b, b.x, sizeof e.b);
  std::memcpy(e.c, c.x, sizeof e.c);  // before d (which may alias c) is written
  float fa[M * K], fb[K * N], out[M * N];
  for (int q = 0; q < M * K; ++q) fa[q] = tf32_operand(a.x[q]);
  for (int q = 0; q < K * N; ++q) fb[q] = tf32_operand(b.x[q]);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) out[i * N + j] = c.x[i * N + j];
    for (int k = 0; k < K; ++k) {
      const float av = fa[i * K + k];
      for (int j = 0; j < N; ++j) out[i * N + j] += av * fb[k * N + j];
    }
  }
  std::memcpy(e.d, out, sizeof e.d);
  e.valid = true;
  for (int q = 0; q < M * N; ++q) d.x[q] = out[q];
}

// d = a b + c in float32 (d may alias c).
template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float fa[M * K], fb[K * N], out[M * N];  // operands converted once: the emulation's hot loop
  for (int e = 0; e < M * K; ++e) fa[e] = to_f(a.x[e]);
  for (int e = 0; e < K * N; ++e) fb[e] = to_f(b.x[e]);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) out[i * N + j] = c.x[i * N + j];
    for (int k = 0; k < K; ++k) {
      const float av = fa[i * K + k];
      for (int j = 0; j < N; ++j) out[i * N + j] += av * fb[k * N + j];
    }
  }
  for (int e = 0; e < M * N; ++e) d.x[e] = out[e];
}

}  // namespace wmma
}  // namespace nvcuda
