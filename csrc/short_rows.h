// Softmax of short contiguous rows (log_softmax's forward, cross_entropy's forward and backward).
// A vector loop along a row of 10 elements never fills a register, and a call per row costs
// more than the row: so the rows of a block are shifted by their max into a scratch buffer,
// and the exps run as one flat vector loop over the whole block:
//   t = x - m (per row),  t = exp(t) (flat),  s = sum_row t,
// giving m and s = sum exp(x - m) per row (log-sum-exp = m + log s). An all -inf row keeps
// s = 0 (shifted by 0, not by -inf: its log-sum-exp is -inf, as torch's logsumexp); a NaN or
// +inf in a row makes s NaN.
#pragma once

#include "common.h"
#include "ops.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace torchmodules {

constexpr int64_t kShortRow = 32;      // rows shorter than this take the flat path
constexpr int64_t kShortBlock = 2048;  // elements per block (scratch on the stack)

template <typename A>
TM_SIMD static void exp_in_place(A* __restrict t, int64_t len) {
  for (int64_t k = 0; k < len; ++k) t[k] = fast_exp(t[k]);
}
// s[b] = log s[b] for a block's normalisers (s >= 1 or NaN), vectorised.
template <typename A>
TM_SIMD static void log_in_place(A* __restrict s, int64_t len) {
  for (int64_t k = 0; k < len; ++k) s[k] = fast_log(s[k]);
}

// m[b], s[b] for the `rows` rows of n elements at x (rows * n <= kShortBlock); t: scratch.
// The max by row_max (vectorised from 16 elements; any order gives the same max), the sums in order.
template <typename T, typename A = acc_t<T>>
TM_SIMD static void short_rows_max_sumexp(const T* __restrict x, int64_t n, int64_t rows, A* __restrict m,
                                          A* __restrict s, A* __restrict t) {
  for (int64_t b = 0; b < rows; ++b) {
    const A mb = row_max(x + b * n, n);
    m[b] = mb;
    const A shift = mb == -std::numeric_limits<A>::infinity() ? A(0) : mb;
    for (int64_t r = 0; r < n; ++r) t[b * n + r] = static_cast<A>(x[b * n + r]) - shift;
  }
  exp_in_place(t, rows * n);
  for (int64_t b = 0; b < rows; ++b) {
    A sb = 0;
    for (int64_t r = 0; r < n; ++r) sb += t[b * n + r];
    s[b] = sb;
  }
}

// p = exp((x - m) - log s) for the `rows` rows of n elements at x (lse: each row's (m, log s), so p is
// the row's softmax), rows * n <= kShortBlock.
template <typename T, typename A = acc_t<T>>
static void short_rows_softmax(const T* x, const A* lse, int64_t n, int64_t rows, A* p) {
  for (int64_t b = 0; b < rows; ++b) {
    const CeLse<A> l = CeLse<A>::load(lse, b);
    for (int64_t r = 0; r < n; ++r) p[b * n + r] = l.log_p(static_cast<A>(x[b * n + r]));
  }
  exp_in_place(p, rows * n);
}

}  // namespace torchmodules
