// ReLU's rule for one element on the CPU, shared by relu_forward (relu.cpp) and the GEMM's ReLU
// epilogue (gemm_relu_epilogue.h), so that Linear + ReLU fused gives the bits of Linear then ReLU.
#pragma once

#include "common.h"
#include "simd.h"

#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#include <immintrin.h>
#define TM_RELU_AVX512 1
#endif

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

#ifdef TM_RELU_AVX512
// relu_elem on whole words of a half type with AVX-512 BW (only call where relu_avx512_cpu()):
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

// Whether relu_words16_avx512 may run here (AVX-512 F and BW).
inline bool relu_avx512_cpu() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}
#endif

}  // namespace torchmodules
