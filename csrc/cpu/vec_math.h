// Vectorized exp and row reductions shared by the CPU kernels (contrastive_lse, infonce_lse,
// same_class_cosine).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fastgan {
namespace vec {

// exp that GCC vectorizes (std::exp does not, without -ffast-math): Cody-Waite range reduction and
// a degree-6 polynomial, about 2 ulp in float. exp(-inf) = 0; inputs below -87 flush to 0.
__attribute__((always_inline)) inline float fast_exp(float x_in) {
  float x = std::min(x_in, 88.3762626647949f);
  const bool tiny = x < -87.0f;
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p * r, r, r) + 1.0f;
  int32_t bits;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  std::memcpy(&bits, &p, 4);
  bits += e - (127 << 23);
  float out;
  std::memcpy(&out, &bits, 4);
  return tiny ? 0.0f : (x_in != x_in ? x_in : out);  // NaN propagates
}
inline double fast_exp(double x) { return std::exp(x); }

// Row reductions. GCC does not vectorize float max/sum reductions or this exp inside them without
// -ffast-math, so the float versions use 8-lane GCC vector extensions (AVX2 where the build has it,
// split into SSE halves otherwise); double (tests, gradcheck) stays scalar.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

// fast_exp on 8 lanes: rounding by the 1.5 * 2^23 trick instead of nearbyint.
inline v8f exp8(v8f x_in) {
  v8f x = x_in < 88.3762626647949f ? x_in : 88.3762626647949f + v8f{};
  const v8i tiny = x < -87.0f;
  x = x > -87.0f ? x : -87.0f + v8f{};
  const v8f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  v8f r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v8f p = 1.9875691500e-4f + v8f{};
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r) * r + r + 1.0f;
  v8i bits;
  std::memcpy(&bits, &p, sizeof(p));
  bits += __builtin_convertvector(n, v8i) << 23;
  v8f out;
  std::memcpy(&out, &bits, sizeof(out));
  out = tiny ? 0.0f + v8f{} : out;
  return x_in != x_in ? x_in : out;  // NaN propagates
}

inline float reduce_max(const float* v, int64_t n) {
  v8f m = -std::numeric_limits<float>::infinity() + v8f{};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const v8f x = load8(v + c);
    m = x > m ? x : m;
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < 8; ++l) r = std::max(r, m[l]);
  for (; c < n; ++c) r = std::max(r, v[c]);
  return r;
}
inline double reduce_max(const double* v, int64_t n) {
  double r = -std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < n; ++c) r = std::max(r, v[c]);
  return r;
}

// out[c] = exp(v[c] - m); returns the sum.
inline float exp_shifted(const float* v, int64_t n, float m, float* out) {
  v8f s = v8f{};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const v8f e = exp8(load8(v + c) - m);
    if (out) store8(out + c, e);
    s += e;
  }
  float r = 0;
  for (int l = 0; l < 8; ++l) r += s[l];
  for (; c < n; ++c) {
    const float e = fast_exp(v[c] - m);
    if (out) out[c] = e;
    r += e;
  }
  return r;
}
inline double exp_shifted(const double* v, int64_t n, double m, double* out) {
  double r = 0;
  for (int64_t c = 0; c < n; ++c) {
    const double e = std::exp(v[c] - m);
    if (out) out[c] = e;
    r += e;
  }
  return r;
}

// sum_c a[c] b[c]: a serial float sum is one add latency per element (4 cycles); 8 lanes, two
// accumulators. Fixed order: the same bits run after run.
inline float dot(const float* a, const float* b, int64_t n) {
  v8f s0 = v8f{}, s1 = v8f{};
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    s0 += load8(a + c) * load8(b + c);
    s1 += load8(a + c + 8) * load8(b + c + 8);
  }
  for (; c + 8 <= n; c += 8) s0 += load8(a + c) * load8(b + c);
  s0 += s1;
  float r = 0;
  for (int l = 0; l < 8; ++l) r += s0[l];
  for (; c < n; ++c) r += a[c] * b[c];
  return r;
}
inline double dot(const double* a, const double* b, int64_t n) {
  double r = 0;
  for (int64_t c = 0; c < n; ++c) r += a[c] * b[c];
  return r;
}

}  // namespace vec
}  // namespace fastgan
