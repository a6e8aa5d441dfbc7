// The deterministic sums of the losses (NLLLoss, MSELoss) on the CPU.
// n terms are cut into fixed blocks of kSumBlock; each block is summed in order (the op's
// block function, e.g. with a few interleaved accumulators), and the block sums are added
// pairwise in a fixed tree. Rounding error grows as kSumBlock + log2(n / kSumBlock), not n,
// and the bits depend on n alone, never on the number of threads.
#pragma once

#include <array>
#include <vector>

#include <ATen/Parallel.h>

#include "common.h"

namespace torchmodules {

constexpr int64_t kSumBlock = 4096;

// out[k] = sum over blocks of s[k], where block(i0, i1, s) adds terms i0 .. i1-1 into s
// (s starts at zero). K sums run side by side (NLLLoss: the loss and the total weight).
template <int K, typename A, typename Block>
std::array<A, K> blocked_sum(int64_t n, const Block& block) {
  const int64_t nb = (n + kSumBlock - 1) / kSumBlock;
  std::vector<std::array<A, K>> part(std::max<int64_t>(nb, 1));
  part[0].fill(A(0));
  at::parallel_for(0, nb, std::max<int64_t>(1, kGrain / kSumBlock), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      std::array<A, K> s;
      s.fill(A(0));
      block(b * kSumBlock, std::min(n, (b + 1) * kSumBlock), s);
      part[b] = s;
    }
  });
  for (int64_t w = 1; w < nb; w *= 2)  // pairwise: part[b] += part[b + w] for b = 0, 2w, 4w, ...
    for (int64_t b = 0; b + w < nb; b += 2 * w)
      for (int k = 0; k < K; ++k) part[b][k] += part[b + w][k];
  return part[0];
}

// Adds terms i0 .. i1-1 into s: term(i, acc) adds term i into acc, the terms dealt round
// kLanes interleaved accumulators (independent adds, which the compiler may vectorise),
// combined pairwise at the end.
template <int K, typename A, typename Term>
void lane_sum(int64_t i0, int64_t i1, std::array<A, K>& s, const Term& term) {
  constexpr int kLanes = 8;
  std::array<A, K> acc[kLanes];
  for (auto& a : acc) a.fill(A(0));
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes)
    for (int l = 0; l < kLanes; ++l) term(i + l, acc[l]);
  for (int l = 0; i < i1; ++i, ++l) term(i, acc[l]);
  for (int w = 1; w < kLanes; w *= 2)
    for (int l = 0; l + w < kLanes; l += 2 * w)
      for (int k = 0; k < K; ++k) acc[l][k] += acc[l + w][k];
  for (int k = 0; k < K; ++k) s[k] += acc[0][k];
}

// The dtype of acc_t: float for the half types, the dtype itself otherwise.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
}

// Loss reductions, numbered as torch's (at::Reduction): none, mean, sum.
enum LossReduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

inline void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK(reduction >= kNone && reduction <= kSum, "torchmodules.", op, ": reduction must be 0 (none), ",
              "1 (mean) or 2 (sum), got ", reduction);
}

}  // namespace torchmodules
