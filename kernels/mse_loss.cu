// MSELoss on CUDA (csrc/mse_loss.cpp has the glue and the CPU twin).  x, t broadcast to n elements:
//   Forward:         y = (x - t)^2 (none), or sum (x - t)^2 [/ n] (sum, mean).
//   Backward:        dx = c (x - t) dy, c = 2 (none, sum) or 2 / n (mean), one dy for mean and sum.
//   Double backward: d_dy = c (x - t) gg (summed for mean and sum), d_x = c dy gg, d_t = -d_x.
// Elementwise parts: a grid-stride loop, x and t read through the broadcast offsets (directly
// when both are flat). Sums: the fixed-order two-pass reduction of loss_reduce.cuh (no atomics).
// Half types compute in float, float64 in double.
#include "elementwise.cuh"
#include "loss_reduce.cuh"
#include "loss_reduce.h"

namespace torchmodules {
namespace {

// x and t both flat and of the broadcast shape.
struct FlatIdx {
  __device__ __forceinline__ void offsets(int64_t i, int64_t& ox, int64_t& ot) const { ox = ot = i; }
};

// Calls f(indexer) with the cheapest indexer that serves bc (n = numel of the broadcast shape).
template <class F>
void with_indexer(const Broadcast2& bc, int64_t n, const F& f) {
  if (n == 0 || (bc.ndim == 1 && bc.stride_a[0] == 1 && bc.stride_b[0] == 1)) f(FlatIdx{});
  else if (n <= INT32_MAX) f(make_fast(bc));  // 32-bit divisions by multiplication
  else f(bc);
}

enum MseMode { kFwd, kBwd, kDbl };

// kFwd: o0 = (x - t)^2.   kBwd: o0 = c (x - t) g.
// kDbl: o1 = c g gg, o2 = -o1, and (g per element: reduction none) o0 = c (x - t) gg.
// g is per element when g_per, else one value.
template <class T, int M, class Idx>
__global__ void __launch_bounds__(kThreads)
    mse_elementwise(T* __restrict__ o0, T* __restrict__ o1, T* __restrict__ o2, const T* __restrict__ x,
                    const T* __restrict__ t, const T* __restrict__ g, const T* __restrict__ gg, int64_t n, bool g_per,
                    dacc_t<T> c, Idx idx) {
  using A = dacc_t<T>;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (int64_t)gridDim.x * kThreads) {
    if constexpr (M == kDbl) {
      const A u = to_float(gg[i]);
      const A v = c * to_float(g[g_per ? i : 0]) * u;
      o1[i] = from_acc<T>(v);
      o2[i] = from_acc<T>(-v);
      if (!g_per) continue;
      int64_t ox, ot;
      idx.offsets(i, ox, ot);
      o0[i] = from_acc<T>(c * (to_float(x[ox]) - to_float(t[ot])) * u);
    } else {
      int64_t ox, ot;
      idx.offsets(i, ox, ot);
      const A d = to_float(x[ox]) - to_float(t[ot]);
      if constexpr (M == kFwd) o0[i] = from_acc<T>(d * d);
      else o0[i] = from_acc<T>(c * d * to_float(g[g_per ? i : 0]));
    }
  }
}

// The sums: sum (x - t)^2, then [/ n] (forward); or sum c (x - t) gg (double backward: each
// term scaled before the sum, so n = 0 gives 0, not inf * 0).
template <class T, class Idx, bool kDouble>
struct MseSum {
  using A = dacc_t<T>;
  static constexpr int K = 1;
  T* out;
  const T* x;
  const T* t;
  const T* gg;
  Idx idx;
  A c;  // the double backward's scale
  int64_t n;
  bool mean;  // the forward's mean: s / n

  __device__ void add(A (&acc)[1], int64_t i) const {
    int64_t ox, ot;
    idx.offsets(i, ox, ot);
    const A d = to_float(x[ox]) - to_float(t[ot]);
    if constexpr (kDouble) acc[0] += c * d * to_float(gg[i]);
    else acc[0] += d * d;
  }
  __device__ void finish(const A (&s)[1]) const {
    out[0] = from_acc<T>(!kDouble && mean ? s[0] / A(n) : s[0]);
  }
};

template <class A>
A mse_scale(int64_t reduction, int64_t n) {  // c = 2 / n (mean) or 2
  return reduction == kMean ? A(2) / A(n) : A(2);
}

template <class T, int M, class Idx>
void launch_elementwise(const at::TensorBase& on, T* o0, T* o1, T* o2, const T* x, const T* t, const T* g, const T* gg,
                        int64_t n, bool g_per, dacc_t<T> c, const Idx& idx) {
  tm_launch(on, dim3(unsigned(tm_blocks(n, kThreads))), dim3(kThreads), 0, mse_elementwise<T, M, Idx>, o0, o1, o2, x,
            t, g, gg, n, g_per, c, idx);
}

}  // namespace

// ---- launchers -------------------------------------------------------------------------------

void mse_loss_forward_cuda(at::TensorBase& y, const at::TensorBase& x, const at::TensorBase& t, const Broadcast2& bc, int64_t n,
                           int64_t reduction) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "mse_loss_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    T* py = dptr<scalar_t>(y);
    const T* px = dptr<scalar_t>(x);
    const T* pt = dptr<scalar_t>(t);
    with_indexer(bc, n, [&](const auto& idx) {
      using Idx = std::decay_t<decltype(idx)>;
      if (reduction == kNone) {
        if (n > 0) launch_elementwise<T, kFwd>(x, py, nullptr, nullptr, px, pt, nullptr, nullptr, n, false, A(0), idx);
      } else {
        const MseSum<T, Idx, false> p{py, px, pt, nullptr, idx, A(0), n, reduction == kMean};
        run_loss_sum(x, p, n);
      }
    });
  });
}

void mse_loss_backward_cuda(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& t,
                            const Broadcast2& bc, int64_t n, int64_t reduction) {
  if (n == 0) return;
  TM_DISPATCH_FLOATING(x.scalar_type(), "mse_loss_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    with_indexer(bc, n, [&](const auto& idx) {
      launch_elementwise<T, kBwd>(x, dptr<scalar_t>(dx), nullptr, nullptr, dptr<scalar_t>(x), dptr<scalar_t>(t),
                                  dptr<scalar_t>(dy), nullptr, n, reduction == kNone, mse_scale<A>(reduction, n), idx);
    });
  });
}

void mse_loss_double_backward_cuda(at::TensorBase& d_dy, at::TensorBase& d_x, at::TensorBase& d_t, const at::TensorBase& gg,
                                   const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& t,
                                   const Broadcast2& bc, int64_t n, int64_t reduction) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "mse_loss_double_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    const A c = mse_scale<A>(reduction, n);
    T* p_ddy = dptr<scalar_t>(d_dy);
    const T* px = dptr<scalar_t>(x);
    const T* pt = dptr<scalar_t>(t);
    const T* pgg = dptr<scalar_t>(gg);
    with_indexer(bc, n, [&](const auto& idx) {
      using Idx = std::decay_t<decltype(idx)>;
      const bool per = reduction == kNone;
      if (n > 0)
        launch_elementwise<T, kDbl>(x, p_ddy, dptr<scalar_t>(d_x), dptr<scalar_t>(d_t), px, pt, dptr<scalar_t>(dy),
                                    pgg, n, per, c, idx);
      if (!per) {
        const MseSum<T, Idx, true> p{p_ddy, px, pt, pgg, idx, c, n, false};
        run_loss_sum(x, p, n);
      }
    });
  });
}


}  // namespace torchmodules
