// The deterministic sums of the losses (nll_loss.cu, mse_loss.cu), the CUDA twin of
// csrc/loss_reduce.h. Pass 1: block b sums chunk b, kRedChunk consecutive terms (thread j takes
// terms j, j + kRedThreads, ... in order, then a fixed shared-memory tree), into partial b.
// Pass 2: one block sums the partials the same way and hands the totals to the policy.
// No atomics: the bits depend on n alone, not on the grid, the timing or the GPU.
//
// A policy P has: A (accumulation type), K (sums side by side), and
//   add(A (&acc)[K], i)  adds term i;   finish(const A (&s)[K])  writes the result (one thread).
#pragma once

#include <type_traits>

#include "launch.cuh"

namespace torchmodules {
namespace {

constexpr int kRedThreads = 256;
constexpr int64_t kRedChunk = kRedThreads * 16;

// acc summed over the block in a fixed tree; every thread gets the totals.
template <int K, class A>
__device__ __forceinline__ void block_sum(A (&acc)[K], A (*sm)[kRedThreads]) {
#pragma unroll
  for (int k = 0; k < K; ++k) sm[k][threadIdx.x] = acc[k];
  __syncthreads();
  for (int h = kRedThreads / 2; h > 0; h >>= 1) {
    if ((int)threadIdx.x < h) {
#pragma unroll
      for (int k = 0; k < K; ++k) sm[k][threadIdx.x] += sm[k][threadIdx.x + h];
    }
    __syncthreads();
  }
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = sm[k][0];
  __syncthreads();  // sm is reused by the next chunk
}

template <class P>
__global__ void __launch_bounds__(kRedThreads) reduce_chunks(const P p, int64_t n, typename P::A* __restrict__ part) {
  using A = typename P::A;
  __shared__ A sm[P::K][kRedThreads];
  const int64_t chunks = (n + kRedChunk - 1) / kRedChunk;
  for (int64_t b = blockIdx.x; b < chunks; b += gridDim.x) {  // uniform across the block
    A acc[P::K];
#pragma unroll
    for (int k = 0; k < P::K; ++k) acc[k] = A(0);
    const int64_t end = b * kRedChunk + kRedChunk < n ? b * kRedChunk + kRedChunk : n;
    for (int64_t i = b * kRedChunk + threadIdx.x; i < end; i += kRedThreads) p.add(acc, i);
    block_sum<P::K>(acc, sm);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < P::K; ++k) part[b * P::K + k] = acc[k];
    }
  }
}

template <class P>
__global__ void __launch_bounds__(kRedThreads)
    reduce_finish(const P p, int64_t chunks, const typename P::A* __restrict__ part) {
  using A = typename P::A;
  __shared__ A sm[P::K][kRedThreads];
  A acc[P::K];
#pragma unroll
  for (int k = 0; k < P::K; ++k) acc[k] = A(0);
  for (int64_t b = threadIdx.x; b < chunks; b += kRedThreads) {
#pragma unroll
    for (int k = 0; k < P::K; ++k) acc[k] += part[b * P::K + k];
  }
  block_sum<P::K>(acc, sm);
  if (threadIdx.x == 0) p.finish(acc);
}

// Sums the n terms of policy p (n = 0: finish sees zeros); `on` gives the device and stream.
template <class P>
void run_loss_sum(const at::TensorBase& on, const P& p, int64_t n) {
  using A = typename P::A;
  const int64_t chunks = (n + kRedChunk - 1) / kRedChunk;
  const at::TensorBase part = new_workspace({std::max<int64_t>(chunks, 1) * P::K},
                                    on.options().dtype(std::is_same<A, double>::value ? at::kDouble : at::kFloat));
  A* pp = reinterpret_cast<A*>(part.data_ptr());
  if (chunks > 0) tm_launch(on, dim3(unsigned(tm_blocks(chunks, 1))), dim3(kRedThreads), 0, reduce_chunks<P>, p, n, pp);
  tm_launch(on, dim3(1), dim3(kRedThreads), 0, reduce_finish<P>, p, chunks, (const A*)pp);
}

}  // namespace
}  // namespace torchmodules
