// Emulated __nv_bfloat16 for the CPU build of the CUDA kernels (csrc/emu/simt.h). As cuda_fp16.h:
// only the explicit conversions (torch builds with -D__CUDA_NO_BFLOAT16_CONVERSIONS__); float ->
// bfloat16 rounds to nearest even, NaN becomes the canonical 0x7fff, as __float2bfloat16 does.
#pragma once
#include "cuda_fp16.h"

struct __nv_bfloat16_raw {
  unsigned short x;
};

struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

namespace fastgan_emu {
inline unsigned short float_to_bf16_bits(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return static_cast<unsigned short>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
}  // namespace fastgan_emu

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16_raw{fastgan_emu::float_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return fastgan_emu::f32_from_bits(static_cast<uint32_t>(h.__x) << 16); }
