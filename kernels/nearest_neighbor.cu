// NearestNeighbor on CUDA (csrc/nearest_neighbor.cpp has the glue and the CPU twin). x [N, D], w [K, D]:
//   Forward:  index_n = argmin_k sum_d (x_nd - w_kd)^2 (lowest k at ties, the first NaN first), sqdist_n
//             its distance. A block of 256 threads (16 x 16) owns a tile of 64 rows and walks the
//             prototypes in tiles of 64; features go through shared memory 16 at a time (x and w tiles
//             converted to the accumulation type), each thread summing (x - w)^2 directly for 4 rows x 4
//             prototypes in registers, d in plain order. Each tile is reduced to a (distance, index) per
//             row by comparisons only (a total order: NaN first, then smaller, then lower index), so the
//             result does not depend on the order of the reduction. No (N, K) matrix is stored.
//   Backward: dx_n = 2 g_n (x_n - w_index_n), elementwise.
//             dw_k = -2 sum_{index_n = k} g_n (x_n - w_k) without atomics: a stable sort of the rows by
//             index (at::sort), each prototype's rows cut into chunks of kChunk, one partial sum per chunk
//             (fixed lanes, fixed shared-memory order), then per prototype the sum of its chunks in order:
//             the same bits on every run.
// Half types compute in float, float64 in double.
#include <ATen/ATen.h>  // the weight gradient's plan sorts the rows with torch's ops

#include <limits>

#include "elementwise.cuh"

namespace torchmodules {
namespace {

// ---- forward ---------------------------------------------------------------------------------

constexpr int kTR = 64, kTK = 64, kTD = 16;  // rows, prototypes, features per tile (16 x 16 threads, 4 x 4 each)

// (v, k) comes before (b, bk): NaN first, then the smaller distance, then the lower index.
template <class A>
__device__ __forceinline__ bool nn_before(A v, int64_t k, A b, int64_t bk) {
  const bool vn = v != v, bn = b != b;
  if (vn != bn) return vn;
  if (!vn && v != b) return v < b;
  return k < bk;
}

template <class T>
__global__ void __launch_bounds__(256)
    nn_forward_kernel(int64_t* __restrict__ index, T* __restrict__ sqdist, const T* __restrict__ x,
                      const T* __restrict__ w, int64_t N, int64_t K, int64_t D) {
  using A = dacc_t<T>;
  __shared__ A xs[kTD][kTR + 1];
  __shared__ A ws[kTD][kTK + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  for (int64_t row0 = (int64_t)blockIdx.x * kTR; row0 < N; row0 += (int64_t)gridDim.x * kTR) {
    A best[4];
    int64_t arg[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      best[i] = std::numeric_limits<A>::infinity();
      arg[i] = std::numeric_limits<int64_t>::max();
    }
    for (int64_t k0 = 0; k0 < K; k0 += kTK) {
      A acc[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
      for (int64_t d0 = 0; d0 < D; d0 += kTD) {
        __syncthreads();  // the previous tile is read
        for (int e = tid; e < kTR * kTD; e += 256) {
          const int r = e / kTD, d = e % kTD;
          const int64_t n = row0 + r, k = k0 + r, dd = d0 + d;
          xs[d][r] = n < N && dd < D ? A(to_float(x[n * D + dd])) : A(0);
          ws[d][r] = k < K && dd < D ? A(to_float(w[k * D + dd])) : A(0);
        }
        __syncthreads();
#pragma unroll
        for (int d = 0; d < kTD; ++d) {
          A xv[4], wv[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) xv[i] = xs[d][ty + 16 * i];
#pragma unroll
          for (int j = 0; j < 4; ++j) wv[j] = ws[d][tx + 16 * j];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const A t = xv[i] - wv[j];
              acc[i][j] += t * t;
            }
        }
      }
      // the tile's best per row: over this thread's 4 prototypes, then over the 16 threads of the row
      // (lanes tx = 0..15 of one half-warp)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        A v = std::numeric_limits<A>::infinity();
        int64_t k = std::numeric_limits<int64_t>::max();
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t kj = k0 + tx + 16 * j;
          if (kj < K && nn_before(acc[i][j], kj, v, k)) {
            v = acc[i][j];
            k = kj;
          }
        }
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) {
          const A ov = __shfl_xor_sync(0xffffffffu, v, off);
          const int64_t ok = __shfl_xor_sync(0xffffffffu, (long long)k, off);
          if (nn_before(ov, ok, v, k)) {
            v = ov;
            k = ok;
          }
        }
        if (nn_before(v, k, best[i], arg[i])) {
          best[i] = v;
          arg[i] = k;
        }
      }
    }
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t n = row0 + ty + 16 * i;
        if (n < N) {
          index[n] = arg[i];
          sqdist[n] = from_acc<T>(best[i]);
        }
      }
    }
  }
}

// ---- backward of the input: dx = 2 g (x - w[index]) ----------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads)
    nn_backward_input_kernel(T* __restrict__ dx, const T* __restrict__ g, const T* __restrict__ x,
                             const T* __restrict__ w, const int64_t* __restrict__ index, int64_t N, int64_t K,
                             int64_t D) {
  using A = dacc_t<T>;
  const int64_t total = N * D;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < total; i += (int64_t)gridDim.x * kThreads) {
    const int64_t n = i / D, d = i - n * D, k = index[n];
    if (k < 0 || k >= K) {  // a hand-made index out of range: NaN, not an out-of-bounds read
      dx[i] = from_acc<T>(std::numeric_limits<A>::quiet_NaN());
      continue;
    }
    const A c = A(2) * A(to_float(g[n]));
    dx[i] = from_acc<T>(c * (A(to_float(x[i])) - A(to_float(w[k * D + d]))));
  }
}

// ---- backward of the weight: a deterministic segmented sum ----------------------------------------

constexpr int64_t kChunk = 256;        // rows per partial sum
constexpr int kLanesD = 32, kLanesR = 8;  // a block: 32 features x 8 row lanes

// Chunk c of the rows sorted by prototype: the prototype k with chunk_off[k] <= c < chunk_off[k + 1], its
// rows perm[starts[k] + j kChunk, ...) (j = c - chunk_off[k]). partial[c, d] = sum over them of
// g_n (x_nd - w_kd): row lane y takes rows y, y + 8, ... of the chunk, then lanes 0..7 are added in order.
template <class T>
__global__ void __launch_bounds__(kLanesD * kLanesR)
    nn_weight_partial_kernel(dacc_t<T>* __restrict__ partial, const T* __restrict__ g, const T* __restrict__ x,
                             const T* __restrict__ w, const int64_t* __restrict__ perm,
                             const int64_t* __restrict__ starts, const int64_t* __restrict__ chunk_off, int64_t K,
                             int64_t D, int64_t max_chunks) {
  using A = dacc_t<T>;
  __shared__ A red[kLanesR][kLanesD + 1];
  const int64_t total = chunk_off[K];
  for (int64_t c = blockIdx.x; c < max_chunks && c < total; c += gridDim.x) {
    int64_t lo = 0, hi = K;  // chunk_off[lo] <= c < chunk_off[hi]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (chunk_off[mid] <= c) lo = mid;
      else hi = mid;
    }
    const int64_t k = lo;
    const int64_t p0 = starts[k] + (c - chunk_off[k]) * kChunk;
    const int64_t end = starts[k + 1], p1 = p0 + kChunk < end ? p0 + kChunk : end;
    for (int64_t d0 = (int64_t)blockIdx.y * kLanesD; d0 < D; d0 += (int64_t)gridDim.y * kLanesD) {
      const int64_t d = d0 + threadIdx.x;
      A s = A(0);
      if (d < D) {
        const A wv = to_float(w[k * D + d]);
        for (int64_t p = p0 + threadIdx.y; p < p1; p += kLanesR) {
          const int64_t n = perm[p];
          s += A(to_float(g[n])) * (A(to_float(x[n * D + d])) - wv);
        }
      }
      red[threadIdx.y][threadIdx.x] = s;
      __syncthreads();
      if (threadIdx.y == 0 && d < D) {
        A t = red[0][threadIdx.x];
#pragma unroll
        for (int y = 1; y < kLanesR; ++y) t += red[y][threadIdx.x];
        partial[c * D + d] = t;
      }
      __syncthreads();
    }
  }
}

// dw[k, d] = -2 (the sum of prototype k's chunks in order); 0 for a prototype no row chose.
template <class T>
__global__ void __launch_bounds__(kThreads)
    nn_weight_sum_kernel(T* __restrict__ dw, const dacc_t<T>* __restrict__ partial,
                         const int64_t* __restrict__ chunk_off, int64_t K, int64_t D) {
  using A = dacc_t<T>;
  const int64_t total = K * D;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < total; i += (int64_t)gridDim.x * kThreads) {
    const int64_t k = i / D, d = i - k * D;
    A s = A(0);
    for (int64_t c = chunk_off[k]; c < chunk_off[k + 1]; ++c) s += partial[c * D + d];
    dw[i] = from_acc<T>(A(-2) * s + A(0));  // + 0: a prototype no row chose gets +0, not -0
  }
}

}  // namespace

// ---- launchers -------------------------------------------------------------------------------

void nearest_neighbor_forward_cuda(at::TensorBase& index, at::TensorBase& sqdist, const at::TensorBase& x, const at::TensorBase& w) {
  const int64_t N = sqdist.numel(), K = w.size(0), D = w.size(1);
  TM_DISPATCH_FLOATING(x.scalar_type(), "nearest_neighbor_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    tm_launch(x, dim3(unsigned(tm_blocks(N, kTR))), dim3(256), 0, nn_forward_kernel<T>, index.data_ptr<int64_t>(),
              dptr<scalar_t>(sqdist), static_cast<const T*>(dptr<scalar_t>(x)),
              static_cast<const T*>(dptr<scalar_t>(w)), N, K, D);
  });
}

void nearest_neighbor_backward_input_cuda(at::TensorBase& dx, const at::TensorBase& grad, const at::TensorBase& x,
                                          const at::TensorBase& w, const at::TensorBase& index) {
  const int64_t N = index.numel(), K = w.size(0), D = w.size(1);
  TM_DISPATCH_FLOATING(x.scalar_type(), "nearest_neighbor_backward_input_cuda", [&] {
    using T = cuda_t<scalar_t>;
    tm_launch(x, dim3(unsigned(tm_blocks(N * D, kThreads))), dim3(kThreads), 0, nn_backward_input_kernel<T>,
              dptr<scalar_t>(dx), static_cast<const T*>(dptr<scalar_t>(grad)),
              static_cast<const T*>(dptr<scalar_t>(x)), static_cast<const T*>(dptr<scalar_t>(w)),
              static_cast<const int64_t*>(index.data_ptr<int64_t>()), N, K, D);
  });
}

void nearest_neighbor_backward_weight_cuda(at::TensorBase& dw, const at::TensorBase& grad, const at::TensorBase& x,
                                           const at::TensorBase& w, const at::TensorBase& index) {
  const int64_t N = index.numel(), K = w.size(0), D = w.size(1);
  if (N == 0) {  // no row chose any prototype
    at::Tensor(dw).zero_();
    return;
  }
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "torchmodules.nearest_neighbor: the weight gradient on CUDA "
              "takes at most 2^31 - 1 rows (torch's sort orders them by prototype), got ", N, " rows of input ",
              x.sizes());
  // The rows in a stable order by prototype (the same permutation on every run), each prototype's run
  // [starts[k], starts[k + 1]) found by binary search: no atomics. Indices outside [0, K) fall before
  // starts[0] or after starts[K] and are left out.
  const at::Tensor flat = at::Tensor(index).reshape({-1});
  const auto sorted = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& keys = std::get<0>(sorted);
  const at::Tensor perm = std::get<1>(sorted).contiguous();
  const at::Tensor starts = at::searchsorted(keys, at::arange(K + 1, flat.options())).contiguous();
  const at::Tensor counts = starts.slice(0, 1) - starts.slice(0, 0, K);
  const at::Tensor chunk_off = at::cat({at::zeros({1}, flat.options()),
                                        at::floor_divide(counts + (kChunk - 1), kChunk).cumsum(0)})
                                   .contiguous();
  const int64_t max_chunks = (N + kChunk - 1) / kChunk + std::min(K, N);  // >= the chunks there are
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor partial = at::empty({max_chunks, D}, x.options().dtype(acc_type));
  TM_DISPATCH_FLOATING(x.scalar_type(), "nearest_neighbor_backward_weight_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    const dim3 grid(unsigned(std::min<int64_t>(max_chunks, 65535LL * 8)),
                    unsigned(std::min<int64_t>((D + kLanesD - 1) / kLanesD, 65535)));
    tm_launch(x, grid, dim3(kLanesD, kLanesR), 0, nn_weight_partial_kernel<T>, partial.data_ptr<A>(),
              static_cast<const T*>(dptr<scalar_t>(grad)), static_cast<const T*>(dptr<scalar_t>(x)),
              static_cast<const T*>(dptr<scalar_t>(w)), static_cast<const int64_t*>(perm.data_ptr<int64_t>()),
              static_cast<const int64_t*>(starts.data_ptr<int64_t>()),
              static_cast<const int64_t*>(chunk_off.data_ptr<int64_t>()), K, D, max_chunks);
    tm_launch(x, dim3(unsigned(tm_blocks(K * D, kThreads))), dim3(kThreads), 0, nn_weight_sum_kernel<T>,
              dptr<scalar_t>(dw), static_cast<const A*>(partial.data_ptr<A>()),
              static_cast<const int64_t*>(chunk_off.data_ptr<int64_t>()), K, D);
  });
}


}  // namespace torchmodules
