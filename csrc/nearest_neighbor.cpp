// NearestNeighbor.  x (*, D) seen as N rows [N, D], K prototypes w [K, D], per row n:
//   Forward:  e_nk = sum_d (x_nd - w_kd)^2, summed directly in the accumulation type (float for the
//             half types, double for float64), never as |x|^2 - 2 x.w + |w|^2 (which cancels);
//             index_n = argmin_k e_nk (lowest k at ties; the first NaN if there is one, as
//             torch.argmin), sqdist_n = e_n,index_n. The (N, K) matrix e is never stored: tiles of
//             rows x prototypes are computed and reduced to a running argmin per row.
//   Backward: with g = d/d(sqdist), r_n = x_n - w_index_n:
//             dx_n = 2 g_n r_n  (per row),
//             dw_k = -2 sum_{n: index_n = k} g_n r_n, each prototype's rows summed in a fixed order
//             (ascending n; on the GPU fixed chunks), so the result has the same bits on every run.
//   The index output is not differentiable; the double backward reuses these two ops (ops.cpp).
#include <vector>

#include "ops.h"
#include "simd.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

namespace {
void check_nn(const char* op, const at::Tensor& x, const at::Tensor& w) {
  check_floating(op, "input", x);
  check_floating(op, "weight", w);
  check_same_dtype_device(op, "input", x, "weight", w);
  TORCH_CHECK(w.dim() == 2, "torchmodules.", op, ": weight must be 2-D [K, D] (K prototypes of D features), "
              "got shape ", w.sizes());
  TORCH_CHECK(x.dim() >= 1, "torchmodules.", op, ": input must have shape (*, D), at least 1-D, got shape ",
              x.sizes());
  TORCH_CHECK(x.size(-1) == w.size(1), "torchmodules.", op, ": input of shape ", x.sizes(), " has ", x.size(-1),
              " features but weight of shape ", w.sizes(), " has ", w.size(1));
  TORCH_CHECK_INDEX(w.size(0) > 0, "torchmodules.", op, ": weight of shape ", w.sizes(),  // (argmin's type)
                    " has no prototypes (argmin over an empty set)");
  TORCH_CHECK(w.size(0) <= INT32_MAX, "torchmodules.", op, ": at most 2^31 - 1 prototypes, got ", w.size(0));
}

// grad (x's dtype) and index (int64) must have x's shape without its last dim, on x's device.
void check_backward(const char* op, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                    const at::Tensor& index) {
  check_nn(op, x, w);
  check_floating(op, "grad", grad);
  check_same_dtype_device(op, "input", x, "grad", grad);
  check_same_device(op, "input", x, "index", index);
  const at::IntArrayRef rows = x.sizes().slice(0, x.dim() - 1);
  TORCH_CHECK(grad.sizes() == rows, "torchmodules.", op, ": grad has shape ", grad.sizes(), ", expected ", rows,
              " for input of shape ", x.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong, "torchmodules.", op, ": index must be int64, got ",
              index.scalar_type());
  TORCH_CHECK(index.sizes() == rows, "torchmodules.", op, ": index has shape ", index.sizes(), ", expected ",
              rows, " for input of shape ", x.sizes());
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> nearest_neighbor_forward(const at::Tensor& x, const at::Tensor& w) {
  check_nn("nearest_neighbor", x, w);
  const at::IntArrayRef rows = x.sizes().slice(0, x.dim() - 1);
  at::Tensor index = new_output(rows, x.options().dtype(at::kLong));
  at::Tensor sqdist = new_output(rows, x.options());
  if (sqdist.numel() > 0) {
    const at::Tensor xc = x.contiguous(), wc = w.contiguous();
    TM_LAUNCH(nearest_neighbor_forward, x, index, sqdist, xc, wc);
  }
  return {sqdist, index};
}

at::Tensor nearest_neighbor_backward_input(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                           const at::Tensor& index) {
  check_backward("nearest_neighbor_backward_input", grad, x, w, index);
  at::Tensor dx = new_output(x.sizes(), x.options());
  if (dx.numel() > 0) {
    const at::Tensor gc = grad.contiguous(), xc = x.contiguous(), wc = w.contiguous(), ic = index.contiguous();
    TM_LAUNCH(nearest_neighbor_backward_input, x, dx, gc, xc, wc, ic);
  }
  return dx;
}

at::Tensor nearest_neighbor_backward_weight(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                            const at::Tensor& index) {
  check_backward("nearest_neighbor_backward_weight", grad, x, w, index);
  at::Tensor dw = new_output(w.sizes(), w.options());
  if (dw.numel() > 0) {  // N = 0 too: every prototype gets 0
    const at::Tensor gc = grad.contiguous(), xc = x.contiguous(), wc = w.contiguous(), ic = index.contiguous();
    TM_LAUNCH(nearest_neighbor_backward_weight, w, dw, gc, xc, wc, ic);
  }
  return dw;
}

// ---- CPU kernels ---------------------------------------------------------------------------
// Forward tiling: a tile is kRows rows x kCols prototypes, its kRows * kCols sums held in vector
// registers while d runs over the features (each sum in plain order d = 0, 1, ..., D-1). The
// prototypes are first transposed (and converted to the accumulation type) to wT [D, Kp], Kp = K
// rounded up to kCols with zero columns, so a tile reads kCols adjacent values per d; the rows of a
// tile are likewise transposed to xt [D, kRows]. Threads take blocks of kBlockTiles row tiles and walk
// every prototype tile for the whole block (wT's tile stays in cache across the block's rows).

namespace {
constexpr int kRows = 4;
template <typename A>
constexpr int kCols = 64 / sizeof(A);  // one AVX-512 vector: 16 floats, 8 doubles
constexpr int64_t kBlockTiles = 16;    // 64 rows per block

// out[r][k] = sum_d (xt[d][r] - wT[d][k])^2 for the tile's kRows rows and kCols prototypes. Written so
// the vectoriser widens k (one vector of prototypes per row, broadcast x): the kRows accumulator
// vectors stay in registers over the whole d loop.
template <typename A>
TM_SIMD void nn_tile(A* __restrict out, const A* __restrict xt, const A* __restrict wT, int64_t Kp, int64_t D) {
  constexpr int C = kCols<A>;
  A acc[kRows][C];
  for (int r = 0; r < kRows; ++r)
#pragma omp simd
    for (int k = 0; k < C; ++k) acc[r][k] = A(0);
  for (int64_t d = 0; d < D; ++d) {
    const A* wd = wT + d * Kp;
    A xv[kRows];
    for (int r = 0; r < kRows; ++r) xv[r] = xt[d * kRows + r];
#pragma omp simd
    for (int k = 0; k < C; ++k) {
      const A wk = wd[k];
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const A t = xv[r] - wk;
        acc[r][k] += t * t;
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
#pragma omp simd
    for (int k = 0; k < C; ++k) out[r * C + k] = acc[r][k];
}

// (v, k) beats the running best (b, bk), scanning k upwards: smaller, or the first NaN.
template <typename A>
inline bool nn_better(A v, A b) {
  return v < b || (v != v && b == b);
}

template <typename T>
void nn_forward_kernel(int64_t* index, T* sqdist, const T* x, const T* w, int64_t N, int64_t K, int64_t D) {
  using A = acc_t<T>;
  constexpr int C = kCols<A>;
  const int64_t tiles_k = (K + C - 1) / C, Kp = tiles_k * C;
  std::vector<A> wT(static_cast<size_t>(D * Kp), A(0));
  at::parallel_for(0, D, std::max<int64_t>(1, kGrain / std::max<int64_t>(K, 1)), [&](int64_t d0, int64_t d1) {
    for (int64_t d = d0; d < d1; ++d)
      for (int64_t k = 0; k < K; ++k) wT[d * Kp + k] = static_cast<A>(w[k * D + d]);
  });
  const int64_t row_tiles = (N + kRows - 1) / kRows;
  const int64_t blocks = (row_tiles + kBlockTiles - 1) / kBlockTiles;
  // a block costs ~64 * Kp * D flops: one block per task unless tiny
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, kRows * kBlockTiles * Kp * std::max<int64_t>(D, 1)));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<A> xt(static_cast<size_t>(kBlockTiles * D * kRows));
    A out[kRows * C];
    A best[kBlockTiles * kRows];
    int64_t arg[kBlockTiles * kRows];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * kBlockTiles, nt = std::min(kBlockTiles, row_tiles - t0);
      // the block's rows, transposed per tile; rows past N repeat row N - 1 (their results are dropped)
      for (int64_t t = 0; t < nt; ++t)
        for (int r = 0; r < kRows; ++r) {
          const T* xr = x + std::min((t0 + t) * kRows + r, N - 1) * D;
          A* dst = xt.data() + t * D * kRows + r;
          for (int64_t d = 0; d < D; ++d) dst[d * kRows] = static_cast<A>(xr[d]);
        }
      for (int64_t i = 0; i < nt * kRows; ++i) {
        best[i] = std::numeric_limits<A>::infinity();
        arg[i] = 0;
      }
      for (int64_t kt = 0; kt < tiles_k; ++kt) {
        const int64_t k0 = kt * C, kn = std::min<int64_t>(C, K - k0);
        for (int64_t t = 0; t < nt; ++t) {
          nn_tile<A>(out, xt.data() + t * D * kRows, wT.data() + k0, Kp, D);
          for (int r = 0; r < kRows; ++r) {
            A& bb = best[t * kRows + r];
            int64_t& ba = arg[t * kRows + r];
            for (int64_t k = 0; k < kn; ++k)
              if (nn_better(out[r * C + k], bb)) {
                bb = out[r * C + k];
                ba = k0 + k;
              }
          }
        }
      }
      for (int64_t i = 0; i < nt * kRows; ++i) {
        const int64_t n = t0 * kRows + i;
        if (n >= N) break;
        index[n] = arg[i];
        sqdist[n] = static_cast<T>(best[i]);
      }
    }
  });
}

// dx[d] = c (x[d] - w[d]), c = 2 g of the row.
template <typename T>
TM_SIMD void nn_row_diff(T* __restrict dx, const T* __restrict x, const T* __restrict w, acc_t<T> c, int64_t D) {
  using A = acc_t<T>;
  for (int64_t d = 0; d < D; ++d) dx[d] = static_cast<T>(c * (static_cast<A>(x[d]) - static_cast<A>(w[d])));
}

// acc[d] += g (x[d] - w[d]) over one row.
template <typename T>
TM_SIMD void nn_row_accum(acc_t<T>* __restrict acc, const T* __restrict x, const T* __restrict w, acc_t<T> g,
                          int64_t D) {
  using A = acc_t<T>;
  for (int64_t d = 0; d < D; ++d) acc[d] += g * (static_cast<A>(x[d]) - static_cast<A>(w[d]));
}

void check_index(const char* op, int64_t k, int64_t n, int64_t K) {
  TORCH_CHECK_INDEX(k >= 0 && k < K, "torchmodules.", op, ": index ", k, " of row ", n, " is out of range for ", K,
                    " prototypes");
}

template <typename T>
void nn_backward_input_kernel(T* dx, const T* g, const T* x, const T* w, const int64_t* index, int64_t N, int64_t K,
                              int64_t D) {
  using A = acc_t<T>;
  at::parallel_for(0, N, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t k = index[n];
      check_index("nearest_neighbor_backward_input", k, n, K);
      nn_row_diff<T>(dx + n * D, x + n * D, w + k * D, A(2) * static_cast<A>(g[n]), D);
    }
  });
}

// The rows of each prototype in ascending order (a counting sort), then per (prototype, chunk of
// features) one sequential sum over its rows: the same bits for any number of threads.
template <typename T>
void nn_backward_weight_kernel(T* dw, const T* g, const T* x, const T* w, const int64_t* index, int64_t N, int64_t K,
                               int64_t D) {
  using A = acc_t<T>;
  std::vector<int64_t> start(static_cast<size_t>(K + 1), 0), rows(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    check_index("nearest_neighbor_backward_weight", index[n], n, K);
    ++start[index[n] + 1];
  }
  for (int64_t k = 0; k < K; ++k) start[k + 1] += start[k];
  {
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) rows[pos[index[n]]++] = n;
  }
  constexpr int64_t kChunkD = 512;
  const int64_t chunks = (D + kChunkD - 1) / kChunkD;
  const int64_t per_k = std::max<int64_t>(1, N / K) * std::min(D, kChunkD);
  at::parallel_for(0, K * chunks, std::max<int64_t>(1, kGrain / std::max<int64_t>(per_k, 1)), [&](int64_t i0,
                                                                                                  int64_t i1) {
    A acc[kChunkD];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t k = i / chunks, d0 = (i % chunks) * kChunkD, dn = std::min(kChunkD, D - d0);
      for (int64_t d = 0; d < dn; ++d) acc[d] = A(0);
      const T* wk = w + k * D + d0;
      for (int64_t p = start[k]; p < start[k + 1]; ++p) {
        const int64_t n = rows[p];
        nn_row_accum<T>(acc, x + n * D + d0, wk, static_cast<A>(g[n]), dn);
      }
      T* out = dw + k * D + d0;
      for (int64_t d = 0; d < dn; ++d) out[d] = static_cast<T>(A(-2) * acc[d] + A(0));  // + 0: no -0
    }
  });
}
}  // namespace

void nearest_neighbor_forward_cpu(at::TensorBase& index, at::TensorBase& sqdist, const at::TensorBase& x, const at::TensorBase& w) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "nearest_neighbor_forward_cpu", [&] {
    nn_forward_kernel<scalar_t>(index.data_ptr<int64_t>(), sqdist.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                w.data_ptr<scalar_t>(), sqdist.numel(), w.size(0), w.size(1));
  });
}

void nearest_neighbor_backward_input_cpu(at::TensorBase& dx, const at::TensorBase& grad, const at::TensorBase& x,
                                         const at::TensorBase& w, const at::TensorBase& index) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "nearest_neighbor_backward_input_cpu", [&] {
    nn_backward_input_kernel<scalar_t>(dx.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                       w.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), index.numel(), w.size(0),
                                       w.size(1));
  });
}

void nearest_neighbor_backward_weight_cpu(at::TensorBase& dw, const at::TensorBase& grad, const at::TensorBase& x,
                                          const at::TensorBase& w, const at::TensorBase& index) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "nearest_neighbor_backward_weight_cpu", [&] {
    nn_backward_weight_kernel<scalar_t>(dw.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        w.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), index.numel(), w.size(0),
                                        w.size(1));
  });
}

static void register_glue(torch::Library& m) {
  m.impl("nearest_neighbor_forward", &nearest_neighbor_forward);
  m.impl("nearest_neighbor_backward_input", &nearest_neighbor_backward_input);
  m.impl("nearest_neighbor_backward_weight", &nearest_neighbor_backward_weight);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
