// LogSoftmax on CUDA, over the middle axis of Rows [outer, reduce, inner].
//   Forward:  y_i = (x_i - m) - log sum_j exp(x_j - m), m = max_j x_j.
//   Backward: dx_i = dy_i - exp(y_i) sum_j dy_j.
//   Double backward: d_dy_k = gg_k - sum_i gg_i exp(y_i),  d_y_k = -gg_k exp(y_k) sum_j dy_j.
// Each op is a policy run by the generic row kernels of rows.cuh.
// Half types compute in float, float64 in double. Reductions run in a fixed order (no atomics).
// Forward max and sum of exps are one online pass: (m, s) with s rescaled when m grows.
#include "rows.cuh"

namespace torchmodules {
namespace {


// ---- the three ops -------------------------------------------------------------------------

// Forward: y = (x - m) - log s, (m, s) = online (max, sum exp(x - max)).
// m ignores NaN (s carries it); a -inf entry adds 0, so an all -inf row ends at m = -inf,
// s = 0 and y = (-inf - -inf) - log 0 = NaN, and +inf gives exp(inf - inf) = NaN, as torch.
template <class T>
struct LsmForward {
  using Elem = T;
  using A = dacc<T>;
  static constexpr bool kSmemRow = true;  // x kept in shared memory between the passes (rows_stream, kSmem)
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 128 / int(sizeof(A)) / V;  // 32 (float) or 16 (double) values per lane
  static constexpr int kBlockK = 64 / int(sizeof(A)) / V;  // 16 or 8 values per thread
  static constexpr int kU = 4;
  static constexpr bool kRowOut = false;
  struct State {
    A m, s;
  };
  template <int W> struct Cache {
    A x[W];
  };
  T* y;
  const T* x;

  __device__ State init(int64_t) const { return {ninf<A>(), A(0)}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State&, const Sg& s, int64_t k) const {
    load_chunk<W>(c.x, x, s, k, ninf<A>());
  }
  // (m, s) <- (max(m, x_j), s exp(m - m') + sum_j exp(x_j - m')), -inf entries adding 0.
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
    A cm = ninf<A>();
#pragma unroll
    for (int j = 0; j < W; ++j) cm = c.x[j] > cm ? c.x[j] : cm;
    if (cm > st.m) {
      st.s *= dexp(st.m - cm);
      st.m = cm;
    }
#pragma unroll
    for (int j = 0; j < W; ++j) st.s += c.x[j] == ninf<A>() ? A(0) : dexp(c.x[j] - st.m);
  }
  // (m, s) of the union: m = max(m1, m2), s = s1 exp(m1 - m) + s2 exp(m2 - m).
  __device__ static State combine(const State& a, const State& b) {
    const A m = a.m > b.m ? a.m : b.m;
    return {m, (a.m == m ? a.s : a.s * dexp(a.m - m)) + (b.m == m ? b.s : b.s * dexp(b.m - m))};
  }
  __device__ void finish(State& st, int64_t) const { st.s = dlog(st.s); }
  // y = (x - m) - log s
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A o[W];
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = (c.x[j] - st.m) - st.s;
    store_chunk<W>(y, s, k, o);
  }
};

// Backward: dx = dy - exp(y) S, S = sum dy.
template <class T>
struct LsmBackward {
  using Elem = T;
  using A = dacc<T>;
  static constexpr bool kSmemRow = true;  // dy kept in shared memory between the passes (rows_stream, kSmem)
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 64 / int(sizeof(A)) / V;   // 16 (float) or 8 (double) values per lane
  static constexpr int kBlockK = 64 / int(sizeof(A)) / V;
  static constexpr int kU = sizeof(A) == 8 ? 1 : 2;  // pass 2 reads dy and y
  static constexpr bool kRowOut = false;
  struct State {
    A s;
  };
  template <int W> struct Cache {
    A g[W];
  };
  T* dx;
  const T* dy;
  const T* y;

  __device__ State init(int64_t) const { return {A(0)}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State&, const Sg& s, int64_t k) const {
    load_chunk<W>(c.g, dy, s, k, A(0));
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) st.s += c.g[j];
  }
  __device__ static State combine(const State& a, const State& b) { return {a.s + b.s}; }
  __device__ void finish(State&, int64_t) const {}
  // dx = dy - exp(y) S
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A yv[W], o[W];
    load_chunk<W>(yv, y, s, k, A(0));
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = c.g[j] - dexp(yv[j]) * st.s;
    store_chunk<W>(dx, s, k, o);
  }
};

// Double backward: d_dy = gg - A, d_y = (-B exp(y)) gg, A = sum gg exp(y), B = sum dy.
template <class T>
struct LsmDoubleBackward {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 64 / int(sizeof(A)) / V;  // two cached arrays: 32 registers
  static constexpr int kBlockK = 32 / int(sizeof(A)) / V;  // two cached arrays: 16 registers
  static constexpr int kU = sizeof(A) == 8 ? 1 : 2;
  static constexpr bool kRowOut = false;
  struct State {
    A a, b;
  };
  template <int W> struct Cache {
    A g[W], e[W], d[W];  // gg, exp(y), dy (d only feeds accumulate)
  };
  T* d_dy;
  T* d_y;
  const T* gg;
  const T* dy;
  const T* y;

  __device__ State init(int64_t) const { return {A(0), A(0)}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State&, const Sg& s, int64_t k) const {
    load_chunk<W>(c.g, gg, s, k, A(0));
    load_chunk<W>(c.e, y, s, k, ninf<A>());
#pragma unroll
    for (int j = 0; j < W; ++j) c.e[j] = dexp(c.e[j]);
    load_chunk<W>(c.d, dy, s, k, A(0));
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      st.a += c.g[j] * c.e[j];
      st.b += c.d[j];
    }
  }
  __device__ static State combine(const State& a, const State& b) { return {a.a + b.a, a.b + b.b}; }
  __device__ void finish(State&, int64_t) const {}
  // d_dy = gg - A,  d_y = (-B exp(y)) gg
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A o1[W], o2[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      o1[j] = c.g[j] - st.a;
      o2[j] = (-st.b * c.e[j]) * c.g[j];
    }
    store_chunk<W>(d_dy, s, k, o1);
    store_chunk<W>(d_y, s, k, o2);
  }
};

}  // namespace

// ---- launchers -------------------------------------------------------------------------------

void log_softmax_forward_cuda(at::TensorBase& y, const at::TensorBase& x, Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "log_softmax_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const LsmForward<T> p{dptr<scalar_t>(y), dptr<scalar_t>(x)};
    run_rows(x, p, r, {p.y, p.x});
  });
}

void log_softmax_backward_cuda(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& y, Rows r) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "log_softmax_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const LsmBackward<T> p{dptr<scalar_t>(dx), dptr<scalar_t>(dy), dptr<scalar_t>(y)};
    run_rows(y, p, r, {p.dx, p.dy, p.y});
  });
}

void log_softmax_double_backward_cuda(at::TensorBase& d_dy, at::TensorBase& d_y, const at::TensorBase& gg, const at::TensorBase& dy,
                                      const at::TensorBase& y, Rows r) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "log_softmax_double_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const LsmDoubleBackward<T> p{dptr<scalar_t>(d_dy), dptr<scalar_t>(d_y), dptr<scalar_t>(gg), dptr<scalar_t>(dy),
                                 dptr<scalar_t>(y)};
    run_rows(y, p, r, {p.d_dy, p.d_y, p.gg, p.dy, p.y});
  });
}


}  // namespace torchmodules
