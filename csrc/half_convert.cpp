// float16 <-> float runs on F16C: vcvtph2ps (exact) and vcvtps2ph with round to nearest even
// in the instruction (not MXCSR's mode), 16 elements per instruction with AVX-512, 8 with AVX2.
// A CPU without either takes simd.h's integer conversions (TM_SIMD loops).
#include "half_convert.h"

#include "vector_isa.h"

namespace torchmodules {

#ifdef TM_X86
// GCC 12 takes the undefined pass-through of its unmasked AVX-512 conversions (_mm512_undefined_*)
// for an uninitialized read once they are inlined here: a false alarm.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// The tail (n % 16 elements) through masked loads and stores.
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void widen_half_avx512(float* dst, const c10::Half* src,
                                                                                  int64_t n) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm512_storeu_ps(dst + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k))));
  if (k < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - k)) - 1);
    _mm512_mask_storeu_ps(dst + k, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + k)));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void narrow_half_avx512(c10::Half* dst, const float* src,
                                                                                   int64_t n) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm512_cvtps_ph(_mm512_loadu_ps(src + k), kRne));
  if (k < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - k)) - 1);
    _mm256_mask_storeu_epi16(dst + k, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + k), kRne));
  }
}

// 8 at a time; the tail one at a time through the 128-bit forms (F16C has no masked ones).
__attribute__((target("avx2,f16c"))) static void widen_half_f16c(float* dst, const c10::Half* src, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  for (; k < n; ++k) dst[k] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(src[k].x)));
}

__attribute__((target("avx2,f16c"))) static void narrow_half_f16c(c10::Half* dst, const float* src, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm256_cvtps_ph(_mm256_loadu_ps(src + k), kRne));
  for (; k < n; ++k)
    dst[k] = c10::Half(static_cast<uint16_t>(_mm_cvtsi128_si32(_mm_cvtps_ph(_mm_set_ss(src[k]), kRne))),
                       c10::Half::from_bits());
}

// acc[k] += float(x[r s + k]): the conversion inside the add's loop (widening a row first, then
// adding, is a second pass over it: slower).
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void add_half_rows_avx512(float* acc, const c10::Half* x,
                                                                                     int64_t R, int64_t s, int64_t n) {
  for (int64_t r = 0; r < R; ++r) {
    const c10::Half* row = x + r * s;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
      const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k)));
      _mm512_storeu_ps(acc + k, _mm512_add_ps(_mm512_loadu_ps(acc + k), v));
    }
    if (k < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - k)) - 1);
      const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + k));
      _mm512_mask_storeu_ps(acc + k, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, acc + k), v));
    }
  }
}

// 16 elements as floats (exact): float16 by vcvtph2ps, bfloat16 by a 16-bit shift of each.
TM_AVX512 inline __m512 widen16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
TM_AVX512 inline __m512 widen16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
TM_AVX512 inline float widen1(c10::Half v) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v.x))); }
TM_AVX512 inline float widen1(c10::BFloat16 v) { return float(v); }

// sum_k float(x[k]) in row_reduce4's order for float (simd.h): four chains of 16 lanes over consecutive
// vectors, the rest's whole vectors into c0, c1, c2 and its last part vector (the row's last 16, those
// already counted as 0) into c3, the chains combined lane by lane as (c0 + c1) + (c2 + c3), the lanes
// in halves; a row of fewer than 16 in order. So bit for bit row_sum of the widened run, without
// writing it out (GCC's vectors of 16 floats add lane by lane).
template <typename T>
TM_AVX512 float half_row_sum_avx512(const T* x, int64_t n) {
  using V = float __attribute__((vector_size(64)));
  if (n < 16) {
    float r = 0;
    for (int64_t i = 0; i < n; ++i) r = r + widen1(x[i]);
    return r;
  }
  const int64_t q = n / 64, rest = n - 64 * q;
  V c0{}, c1{}, c2{}, c3{};
  for (int64_t b = 0; b < q; ++b) {
    const T* p = x + b * 64;
    c0 += V(widen16(p));
    c1 += V(widen16(p + 16));
    c2 += V(widen16(p + 32));
    c3 += V(widen16(p + 48));
  }
  const T* p = x + 64 * q;
  if (rest >= 16) c0 += V(widen16(p));
  if (rest >= 32) c1 += V(widen16(p + 16));
  if (rest >= 48) c2 += V(widen16(p + 32));
  if (const int t = int(rest % 16))  // lanes 16 - t .. 15: the last t elements (+ 0.0 in the others)
    c3 += V(_mm512_maskz_mov_ps(static_cast<__mmask16>(0xFFFFu << (16 - t)), widen16(x + n - 16)));
  V c = (c0 + c1) + (c2 + c3);
  for (int h = 8; h >= 1; h /= 2)
    for (int k = 0; k < h; ++k) c[k] = c[k] + c[k + h];
  return c[0];
}

__attribute__((target("avx2,f16c"))) static void add_half_rows_f16c(float* acc, const c10::Half* x, int64_t R,
                                                                   int64_t s, int64_t n) {
  for (int64_t r = 0; r < R; ++r) {
    const c10::Half* row = x + r * s;
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
      const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)));
      _mm256_storeu_ps(acc + k, _mm256_add_ps(_mm256_loadu_ps(acc + k), v));
    }
    for (; k < n; ++k) acc[k] += _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(row[k].x)));
  }
}
#pragma GCC diagnostic pop
#endif

template <typename T>
bool half_row_sum(const T* x, int64_t n, float* sum) {
#ifdef TM_X86
  if (vector_isa() == 2) return *sum = half_row_sum_avx512(x, n), true;
#endif
  return false;
}
template bool half_row_sum(const c10::Half*, int64_t, float*);
template bool half_row_sum(const c10::BFloat16*, int64_t, float*);

bool add_half_rows(float* acc, const c10::Half* x, int64_t R, int64_t s, int64_t n) {
#ifdef TM_X86
  if (vector_isa() == 2) return add_half_rows_avx512(acc, x, R, s, n), true;
  if (vector_isa() == 1) return add_half_rows_f16c(acc, x, R, s, n), true;
#endif
  return false;
}

void widen_half(float* dst, const c10::Half* src, int64_t n) {
#ifdef TM_X86
  if (vector_isa() == 2) return widen_half_avx512(dst, src, n);
  if (vector_isa() == 1) return widen_half_f16c(dst, src, n);
#endif
  widen_simd(dst, src, n);
}

void narrow_half(c10::Half* dst, const float* src, int64_t n) {
#ifdef TM_X86
  if (vector_isa() == 2) return narrow_half_avx512(dst, src, n);
  if (vector_isa() == 1) return narrow_half_f16c(dst, src, n);
#endif
  narrow_simd(dst, src, n);
}

}  // namespace torchmodules
