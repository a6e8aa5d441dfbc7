// ReLU's rule for one element on the CPU, shared by relu_forward (relu.cpp) and the GEMM's ReLU
// epilogue (gemm_relu_epilogue.h), so that Linear + ReLU fused gives the bits of Linear then ReLU.
#pragma once

#include "common.h"
#include "simd.h"
#include "vector_isa.h"

#include <cstdint>
#include <type_traits>

namespace torchmodules {

// The element as relu_elem reads and writes it: the half types as their 16 bits.
template <typename T>
using relu_elem_t = std::conditional_t<sizeof(T) == 2, uint16_t, T>;

// y = x < 0 ? 0 : x (-0.0 and NaN kept, as torch), and returns the bit the backward keeps,
// !(x <= 0) (NaN passes). The half types are tested as their bits, with no conversion (through
// c10's conversions, and T(0), the loops around this did not vectorise):
//   x < 0: sign set, not -0.0, not NaN;   !(x <= 0): NaN, or sign clear and not +0.0;
//   0 is +0.0, the bits 0x0000.
// float and double compare in their own type (as torch: a float64 1e-310 is > 0).
template <typename T>
TM_INLINE bool relu_elem(relu_elem_t<T> x, relu_elem_t<T>& y) {
  if constexpr (sizeof(T) == 2) {
    const uint16_t mag = x & 0x7fff;
    const bool neg = x >> 15, nan = mag > kInfBits<T>;
    y = neg && mag != 0 && !nan ? uint16_t(0) : x;
    return nan || (!neg && mag != 0);
  } else {
    static_assert(std::is_same<T, acc_t<T>>::value, "float and double compare in their own type");
    y = x < T(0) ? T(0) : x;
    return !(x <= T(0));
  }
}

#ifdef TM_X86
// relu_elem on whole words of a half type with AVX-512 BW (only call where vector_isa() == 2):
// for w < nw, y[32w .. 32w + 31] = relu(x[..]) (y may be x) and m[w] = their 32 bits, the bits
// straight from the compare masks. (GCC builds them from relu_elem's loop by shifting lanes and
// OR-ing them across the vector: in the AMX GEMM's bfloat16 epilogue that took a third of the
// time of the tile kernel itself, at 8192x128x128.) The same rule on the bits s as int16, with
// ninf = the bits of -inf (0xff80, 0xfc00); x < 0 is s in [0x8001, ninf] (below that -0.0,
// above it the negative NaNs), so
//   keep x:  s - 1 >= ninf   (s = 0x8000 wraps to 0x7fff: -0.0 is kept too),
//   bit:     kept and s & 0x7fff != 0   (the kept ones but ±0.0: x > 0 and the NaNs).
// A compare and a masked test, no mask-register logic: a literal transcription's AND / OR /
// NOT of masks (which run on one port) took 21% of the tile kernel's time at 8192x128x128,
// this 5% (perf samples).
template <typename T>
__attribute__((target("avx512f,avx512bw"))) void relu_words16_avx512(const uint16_t* x, uint16_t* y, uint32_t* m,
                                                                     int64_t nw) {
  static_assert(sizeof(T) == 2, "the half types");
  const __m512i ninf = _mm512_set1_epi16(int16_t(0x8000 | kInfBits<T>)), one = _mm512_set1_epi16(1),
                mag = _mm512_set1_epi16(0x7fff);
  for (int64_t w = 0; w < nw; ++w) {
    const __m512i v = _mm512_loadu_si512(x + w * 32);
    const __mmask32 keep = _mm512_cmpge_epi16_mask(_mm512_sub_epi16(v, one), ninf);
    _mm512_storeu_si512(y + w * 32, _mm512_maskz_mov_epi16(keep, v));
    m[w] = _mm512_mask_test_epi16_mask(keep, v, mag);
  }
}

// The same on AVX2, two vectors of 16 a word: no compare into mask registers, so the lanes a
// compare sets to all ones are packed to bytes (_mm256_packs_epi16 interleaves the two vectors'
// 128-bit halves; a 64-bit permute puts the bytes back in element order) and their top bits
// gathered by _mm256_movemask_epi8.
//   drop (x < 0):  ninf > s - 1   (the complement of the keep test above),
//   bit 0:         drop, or s & 0x7fff == 0.
template <typename T>
__attribute__((target("avx2"))) void relu_words16_avx2(const uint16_t* x, uint16_t* y, uint32_t* m, int64_t nw) {
  static_assert(sizeof(T) == 2, "the half types");
  const __m256i ninf = _mm256_set1_epi16(int16_t(0x8000 | kInfBits<T>)), one = _mm256_set1_epi16(1),
                mag = _mm256_set1_epi16(0x7fff), zero = _mm256_setzero_si256();
  for (int64_t w = 0; w < nw; ++w) {
    __m256i off[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + w * 32 + h * 16));
      const __m256i drop = _mm256_cmpgt_epi16(ninf, _mm256_sub_epi16(v, one));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + w * 32 + h * 16), _mm256_andnot_si256(drop, v));
      off[h] = _mm256_or_si256(drop, _mm256_cmpeq_epi16(_mm256_and_si256(v, mag), zero));
    }
    const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packs_epi16(off[0], off[1]), 0xD8);
    m[w] = ~uint32_t(_mm256_movemask_epi8(bytes));
  }
}

// float and double with AVX-512 F: the bits straight from a compare mask, as above (GCC's loop
// over relu_elem OR-ed the lanes' bits across the vector: 30 instructions a word, this about 15).
//   y = max(0, x): x86's MAXPS returns its second operand when either is NaN or both are zero,
//                  so NaN and -0.0 pass through, as relu_elem's x < 0 ? 0 : x;
//   bit:           !(x <= 0)   (the unordered not-less-or-equal: NaN passes).
// (GCC 12 takes the undefined pass-through of the unmasked _mm512_max_* for an uninitialized read once
// inlined: a false alarm, silenced here as in half_convert.cpp.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <typename T>
__attribute__((target("avx512f"))) void relu_words_fp_avx512(const T* x, T* y, uint32_t* m, int64_t nw) {
  static_assert(std::is_floating_point<T>::value, "float and double");
  constexpr int L = 64 / sizeof(T);  // lanes a vector: 16 floats, 8 doubles
  for (int64_t w = 0; w < nw; ++w) {
    uint32_t bits = 0;
    for (int h = 0; h < 32 / L; ++h) {
      const T* xv = x + w * 32 + h * L;
      T* yv = y + w * 32 + h * L;
      uint32_t b;
      if constexpr (sizeof(T) == 4) {
        const __m512 v = _mm512_loadu_ps(xv), zero = _mm512_setzero_ps();
        _mm512_storeu_ps(yv, _mm512_max_ps(zero, v));
        b = _mm512_cmp_ps_mask(v, zero, _CMP_NLE_UQ);
      } else {
        const __m512d v = _mm512_loadu_pd(xv), zero = _mm512_setzero_pd();
        _mm512_storeu_pd(yv, _mm512_max_pd(zero, v));
        b = _mm512_cmp_pd_mask(v, zero, _CMP_NLE_UQ);
      }
      bits |= b << (h * L);
    }
    m[w] = bits;
  }
}
#pragma GCC diagnostic pop

// The same on AVX2, the bits gathered by movemask from the compare's all-ones lanes.
template <typename T>
__attribute__((target("avx2"))) void relu_words_fp_avx2(const T* x, T* y, uint32_t* m, int64_t nw) {
  static_assert(std::is_floating_point<T>::value, "float and double");
  constexpr int L = 32 / sizeof(T);  // 8 floats, 4 doubles
  for (int64_t w = 0; w < nw; ++w) {
    uint32_t bits = 0;
    for (int h = 0; h < 32 / L; ++h) {
      const T* xv = x + w * 32 + h * L;
      T* yv = y + w * 32 + h * L;
      uint32_t b;
      if constexpr (sizeof(T) == 4) {
        const __m256 v = _mm256_loadu_ps(xv), zero = _mm256_setzero_ps();
        _mm256_storeu_ps(yv, _mm256_max_ps(zero, v));
        b = uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NLE_UQ)));
      } else {
        const __m256d v = _mm256_loadu_pd(xv), zero = _mm256_setzero_pd();
        _mm256_storeu_pd(yv, _mm256_max_pd(zero, v));
        b = uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(v, zero, _CMP_NLE_UQ)));
      }
      bits |= b << (h * L);
    }
    m[w] = bits;
  }
}

// relu_elem over nw whole words in the widest vector form here (vector_isa(); y may be x), on the
// elements as relu_elem reads them (relu_elem_t<T>: the half types as their bits); false, having
// done nothing, where there is none (the scalar loop then).
template <typename T>
bool relu_words_x86(const relu_elem_t<T>* x, relu_elem_t<T>* y, uint32_t* m, int64_t nw) {
  switch (vector_isa()) {
    case 2:
      if constexpr (sizeof(T) == 2) relu_words16_avx512<T>(x, y, m, nw);
      else relu_words_fp_avx512(x, y, m, nw);
      return true;
    case 1:
      if constexpr (sizeof(T) == 2) relu_words16_avx2<T>(x, y, m, nw);
      else relu_words_fp_avx2(x, y, m, nw);
      return true;
    default: return false;
  }
}
#endif

}  // namespace torchmodules
