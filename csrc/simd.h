// SIMD for the CPU kernels, without intrinsics: a function marked TM_SIMD is compiled three
// times (AVX-512, AVX2+FMA, baseline SSE2) and the widest one this CPU runs is picked when
// the library loads (GCC/Clang target_clones). Its loops are written for the vectoriser:
// fixed trip counts, selects instead of branches, `#pragma omp simd` for reductions.
// Such a function cannot be inlined into its caller: mark the loop over a chunk, not the
// body of one element.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define TM_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TM_SIMD
#endif
// For the helpers below, which must be inlined into a TM_SIMD loop to vectorise with it.
#if defined(__GNUC__)
#define TM_INLINE inline __attribute__((always_inline))
#else
#define TM_INLINE inline
#endif

namespace torchmodules {

template <typename To, typename From>
TM_INLINE To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}

// lo <= v <= hi by selects (std::fmin/fmax do not vectorise); NaN passes through.
template <typename T>
TM_INLINE T clamp_select(T v, T lo, T hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

// exp(v) in plain arithmetic the vectoriser can widen (std::exp stays a scalar call).
//   v = n ln2 + r, |r| <= ln2 / 2:  exp(v) = 2^n exp(r),  exp(r) = sum_{k <= K} r^k / k!
// ln2 is split in a high part with few mantissa bits (n * ln2_hi is exact) and the rest.
// Truncation error r^(K+1) / (K+1)! relative: 5e-9 for float (K = 7, < 1/10 ulp),
// 2e-18 for double (K = 13). 2^n is built from exponent bits in two halves, 2^n1 2^n2,
// so results near the overflow and in the denormal range come out right; past them
// the result is 0 or +inf, and NaN stays NaN.
TM_INLINE float fast_exp(float v) {
  const float n = clamp_select(std::nearbyint(v * 1.44269504088896341f), -252.f, 254.f);
  const float r = (v - n * 0.693145751953125f) - n * 1.42860682e-6f;
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t n1 = static_cast<int32_t>(n) / 2, n2 = static_cast<int32_t>(n) - n1;  // each in [-126, 127]
  const float e = p * bits_as<float>((static_cast<uint32_t>(n1) + 127u) << 23) *
                  bits_as<float>((static_cast<uint32_t>(n2) + 127u) << 23);
  return v < -104.f ? 0.f : v > 88.7228394f ? std::numeric_limits<float>::infinity() : e;
}

TM_INLINE double fast_exp(double v) {
  const double n = clamp_select(std::nearbyint(v * 1.4426950408889634), -2044.0, 2046.0);
  const double r = (v - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int32_t n1 = static_cast<int32_t>(n) / 2, n2 = static_cast<int32_t>(n) - n1;  // each in [-1022, 1023]
  const double e = p * bits_as<double>((static_cast<uint64_t>(n1) + 1023u) << 52) *
                   bits_as<double>((static_cast<uint64_t>(n2) + 1023u) << 52);
  return v < -746.0 ? 0.0 : v > 709.782712893384 ? std::numeric_limits<double>::infinity() : e;
}

}  // namespace torchmodules
