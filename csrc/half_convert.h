// Runs of elements widened to float and rounded back, for kernels that compute the half types
// in float blocks. float16 <-> float by the F16C instructions (one instruction per 8 or 16
// elements), chosen at run time by vector_isa(): GCC 12 vectorises no _Float16 conversion, and
// simd.h's integer form for TM_SIMD loops costs ~8 vector instructions per vector one way and
// ~12 the other. bfloat16 and the rest go through TM_SIMD loops (bfloat16 <-> float is a shift
// and a rounding add).
#pragma once

#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace torchmodules {

// dst[k] = float(src[k]) for k < n, exact.
void widen_half(float* dst, const c10::Half* src, int64_t n);
// dst[k] = src[k] rounded to float16, to nearest even (a NaN stays a NaN, quiet).
void narrow_half(c10::Half* dst, const float* src, int64_t n);
// acc[k] += float(x[r s + k]) for k < n, over the rows r < R in order (float16 rows summed in float),
// on F16C; false, having done nothing, on a CPU without it (the caller's own loop then).
bool add_half_rows(float* acc, const c10::Half* x, int64_t R, int64_t s, int64_t n);
// *sum = sum_k float(x[k]) for k < n (T: c10::Half or c10::BFloat16) in row_sum's order (simd.h: so bit
// for bit row_sum of the widened run), converting in registers, on AVX-512; false, having done
// nothing, on other CPUs.
template <typename T>
bool half_row_sum(const T* x, int64_t n, float* sum);

template <typename T>
TM_SIMD void widen_simd(float* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = to_acc(src[k]);
}
template <typename T>
TM_SIMD void narrow_simd(T* __restrict dst, const float* __restrict src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = from_acc<T>(src[k]);
}

// dst[k] = to_acc(src[k]) as float, for a half type T.
template <typename T>
inline void widen_run(float* dst, const T* src, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) widen_half(dst, src, n);
  else widen_simd(dst, src, n);
}
// dst[k] = from_acc<T>(src[k]), for a half type T.
template <typename T>
inline void narrow_run(T* dst, const float* src, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) narrow_half(dst, src, n);
  else narrow_simd(dst, src, n);
}

// A run of len float16 elements at stride st as floats in buf (len <= its size): one element for
// st = 0, widened on F16C for st = 1, gathered otherwise. Returns the floats and their stride.
inline std::pair<const float*, int64_t> widen_strided(float* buf, const c10::Half* src, int64_t st, int64_t len) {
  if (st == 0) {
    buf[0] = to_acc(src[0]);
    return {buf, 0};
  }
  if (st == 1) widen_half(buf, src, len);
  else
    for (int64_t k = 0; k < len; ++k) buf[k] = to_acc(src[k * st]);
  return {buf, 1};
}

// Elements per block of the float16 paths: 4 KiB of floats per buffer, L1-resident.
constexpr int64_t kHalfBlock = 1024;

// For float16 over [s, e): the inputs' blocks widened to float buffers, f(out, ins..., len) on
// them (a float kernel), its output rounded into y. Other types: f on the arrays themselves.
// f's float arithmetic is what the kernel does for a half type in acc_t, so results match bit
// for bit; only the conversions run on F16C.
template <typename T, typename F, typename... In>
void in_float_blocks(T* y, int64_t s, int64_t e, const F& f, const In*... ins) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    constexpr size_t kIn = sizeof...(In);
    float out[kHalfBlock], in[kIn][kHalfBlock];
    const c10::Half* src[kIn] = {ins...};
    for (int64_t c = s; c < e; c += kHalfBlock) {
      const int64_t len = std::min(kHalfBlock, e - c);
      for (size_t k = 0; k < kIn; ++k) widen_half(in[k], src[k] + c, len);
      [&]<size_t... K>(std::index_sequence<K...>) { f(out, static_cast<const float*>(in[K])..., len); }
      (std::make_index_sequence<kIn>());
      narrow_half(y + c, out, len);
    }
  } else {
    f(y + s, (ins + s)..., e - s);
  }
}

}  // namespace torchmodules
