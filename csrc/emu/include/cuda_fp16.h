// Emulated __half (IEEE binary16) for the CPU build of the CUDA kernels (csrc/emu/simt.h).
// Deliberately the interface torch's nvcc flags leave (-D__CUDA_NO_HALF_CONVERSIONS__,
// -D__CUDA_NO_HALF_OPERATORS__): no implicit conversion to or from float and no arithmetic, only the
// explicit functions, so code that compiles here also compiles in the real extension build.
// Conversions round to nearest even, as __float2half does; NaN becomes the canonical 0x7fff.
#pragma once
#include <cstdint>
#include <cstring>

struct __half_raw {
  unsigned short x;
};

struct __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(const __half_raw& r) : __x(r.x) {}
  constexpr operator __half_raw() const { return __half_raw{__x}; }
};

namespace fastgan_emu {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round-to-nearest-even float -> binary16 bits.
inline unsigned short float_to_half_bits(float f) {
  uint32_t x = f32_bits(f);
  const unsigned short sign = static_cast<unsigned short>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return 0x7fff;                   // NaN (CUDA's canonical half NaN)
  if (x >= 0x477ff000u) return sign | 0x7c00u;          // >= 65520 rounds to infinity
  if (x >= 0x38800000u) {                               // normal half: |f| >= 2^-14
    x += 0x0fffu + ((x >> 13) & 1u);                    // round the 13 dropped mantissa bits, ties to even
    return sign | static_cast<unsigned short>((x - 0x38000000u) >> 13);
  }
  if (x < 0x33000000u) return sign;                     // < 2^-25 (and 2^-25 itself, a tie) -> 0
  // Subnormal half: value = mant * 2^(e - 150), unit 2^-24 -> mant >> (126 - e), rounded to even.
  const uint32_t e = x >> 23, mant = (x & 0x7fffffu) | 0x800000u, shift = 126 - e;
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<unsigned short>(q);
}
inline float half_bits_to_float(unsigned short h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return f32_from_bits(sign | 0x7f800000u | (m << 13));
  if (e != 0) return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
  const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
  return sign ? -v : v;
}
}  // namespace fastgan_emu

inline __half __float2half(float f) { return __half_raw{fastgan_emu::float_to_half_bits(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return fastgan_emu::half_bits_to_float(h.__x); }
inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
