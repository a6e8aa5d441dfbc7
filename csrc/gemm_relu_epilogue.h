// The ReLU epilogue of the CPU GEMM (gemm_cpu.cpp) for Linear + ReLU (linear_relu_forward):
// any kernel path calls relu_epilogue on a block of C once that block is final.
#pragma once

#include "common.h"
#include "relu_rule.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>

namespace torchmodules {
namespace {  // (one copy per file that includes it: TM_SIMD functions are multiversioned)

// Once C[i, j0:j1) is final (bias added; for the half types rounded and stored), for rows
// i in [i0, i1), in place while it is in cache:
//   C = C < 0 ? 0 : C  (-0.0 and NaN kept),   bit of C(i, j) in the mask = !(C <= 0),
// on the stored value, by relu.cpp's rule (relu_elem, relu_rule.h). The bit of C(i, j) sits at
// flat index f = i * N + j. Threads own disjoint blocks of C, but a 32-bit word of the mask can
// straddle two blocks (a block edge in j, or a row end when N % 32 != 0). So the mask is zeroed
// before the GEMM; a word wholly inside a row segment [f0, f1) belongs to that segment alone and
// is stored plainly; a word it covers only in part is OR-ed in (an atomic fetch_or,
// relaxed: the final join orders it before any read), and so is it by every other segment
// covering the rest of it. OR commutes: the same bits whatever the order or the thread count.

// Whole words: x[32w .. 32w + 31] for w < nw, in place, and m[w] = their bits.
template <typename S>
TM_SIMD void relu_words_vec(S* __restrict x, uint32_t* __restrict m, int64_t nw) {
  using E = relu_elem_t<S>;
  E* xe = reinterpret_cast<E*>(x);
  for (int64_t w = 0; w < nw; ++w) {
    E* xw = xe + w * 32;
    uint32_t bits = 0;
    for (int i = 0; i < 32; ++i) bits |= uint32_t(relu_elem<S>(xw[i], xw[i])) << i;
    m[w] = bits;
  }
}

// relu_rule.h's vector forms where the CPU has one (AVX-512 or AVX2, under the same
// TORCHMODULES_CPU_ISA cap as the GEMM).
template <typename S>
void relu_words(S* x, uint32_t* m, int64_t nw) {
#ifdef TM_X86
  auto* xe = reinterpret_cast<relu_elem_t<S>*>(x);
  if (relu_words_x86<S>(xe, xe, m, nw)) return;
#endif
  relu_words_vec(x, m, nw);
}

// Part of a word: x[0 .. f1 - f0) at flat indices [f0, f1), within one word; its bits OR-ed in.
template <typename S>
void relu_part_word(S* x, uint32_t* mask, int64_t f0, int64_t f1) {
  using E = relu_elem_t<S>;
  E* xe = reinterpret_cast<E*>(x);
  uint32_t bits = 0;
  for (int64_t f = f0; f < f1; ++f) bits |= uint32_t(relu_elem<S>(xe[f - f0], xe[f - f0])) << (f % 32);
  // GCC's builtin: std::atomic_ref is C++20, and torch 2.11 builds extensions as C++17.
  if (bits) __atomic_fetch_or(&mask[f0 / 32], bits, __ATOMIC_RELAXED);
}

// Flat indices [f0, f1), element f at base[f]: whole words plainly, the partial ones at the ends OR-ed.
template <typename S>
void relu_segment(S* base, uint32_t* mask, int64_t f0, int64_t f1) {
  const int64_t wa = (f0 + 31) / 32, wb = f1 / 32;  // whole words [wa, wb)
  if (wa >= wb) {  // within at most two words, neither whole
    const int64_t cut = std::min(f1, wa * 32);
    relu_part_word(base + f0, mask, f0, cut);
    if (cut < f1) relu_part_word(base + cut, mask, cut, f1);
    return;
  }
  if (f0 < wa * 32) relu_part_word(base + f0, mask, f0, wa * 32);
  relu_words(base + wa * 32, mask + wa, wb - wa);
  if (wb * 32 < f1) relu_part_word(base + wb * 32, mask, wb * 32, f1);
}

template <typename S>
void relu_epilogue(S* c, int64_t ldc, int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1, uint32_t* mask) {
  if (j0 == 0 && j1 == N && ldc == N) return relu_segment(c, mask, i0 * N, i1 * N);  // whole rows: one run
  for (int64_t i = i0; i < i1; ++i)
    relu_segment(c + i * ldc - i * N, mask, i * N + j0, i * N + j1);  // C(i, j) at flat index i * N + j
}

}  // namespace
}  // namespace torchmodules
