// wmma operand fragments per element type, shared by the .cu files: float16 / bfloat16 m16n16k16;
// Tf32 (float32 storage, TF32 allowed) m16n16k8 in precision::tf32 with its elements rounded to
// TF32 (cvt.rna) as they are loaded. Plain float has no fragments here: it is the IEEE SIMT path.
#pragma once
#include <mma.h>

#include <type_traits>

#include "convert.h"
#include "dtype.h"

namespace fastgan {
namespace cuda {

template <typename T>
constexpr int kMmaK = std::is_same<T, Tf32>::value ? 8 : 16;  // k of one mma_sync
template <typename T>
struct MmaElement {
  using type = T;
};
template <>
struct MmaElement<Tf32> {
  using type = nvcuda::wmma::precision::tf32;
};
template <typename Use, typename T, typename Layout>
using MmaFrag = nvcuda::wmma::fragment<Use, 16, 16, kMmaK<T>, typename MmaElement<T>::type, Layout>;
template <typename T>
using MmaAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kMmaK<T>, float>;

// f <- the 16 x kMmaK (or kMmaK x 16) operand at src; Tf32 elements rounded to TF32, as the tensor
// core needs (it reads only the top 19 bits: unrounded, they would be truncated).
template <typename Frag, typename T>
__device__ __forceinline__ void load_operand(Frag& f, const T* src, unsigned ld) {
  if constexpr (std::is_same<T, Tf32>::value) {
    nvcuda::wmma::load_matrix_sync(f, &src->x, ld);
#pragma unroll
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
  } else {
    nvcuda::wmma::load_matrix_sync(f, src, ld);
  }
}

// x rounded to the operand type T (to TF32 for Tf32; from_float<Tf32> itself is exact).
template <typename T>
__device__ __forceinline__ T to_operand(float x) {
  if constexpr (std::is_same<T, Tf32>::value) {
    return Tf32{nvcuda::wmma::__float_to_tf32(x)};
  } else {
    return from_float<T>(x);
  }
}

}  // namespace cuda
}  // namespace fastgan
