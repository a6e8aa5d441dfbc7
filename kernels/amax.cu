// amax on CUDA, over the middle axis of Rows [outer, reduce, inner]; y, dy, d_dy are [outer, inner].
//   Forward:         y = max_r x (NaN if any x in the row is NaN).
//   Backward:        dx = (dy / c) [x == y], c = #{r : x == y} (c = 0 when y is NaN: NaN row, as torch).
//   Double backward: d_dy = (sum_r gg [x == y]) / c (torch's own order; c = 0 gives NaN).
// Each op is a policy run by the generic row kernels of rows.cuh.
// Half types compare and accumulate in float, float64 in double; fixed reduction order.
#include "rows.cuh"

namespace torchmodules {
namespace {

// ---- the three ops -------------------------------------------------------------------------

// max that keeps NaN: once either side is NaN the result is NaN.
template <class A> __device__ __forceinline__ A nanmax(A a, A b) { return (b > a || b != b) ? b : a; }

// Forward: y = max_r x, NaN-propagating.
template <class T>
struct AmaxForward {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 32 / V;  // rows up to 1024 in the warp path
  static constexpr int kBlockK = 0;      // nothing to hold: long rows stream, one pass
  static constexpr int kU = 4;
  static constexpr bool kRowOut = true;
  struct State {
    A m;
  };
  template <int W> struct Cache {
    A x[W];
  };
  T* y;
  const T* x;

  __device__ State init(int64_t) const { return {ninf<A>()}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State&, const Sg& s, int64_t k) const {
    load_chunk<W>(c.x, x, s, k, ninf<A>());
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) st.m = nanmax(st.m, c.x[j]);
  }
  __device__ static State combine(const State& a, const State& b) { return {nanmax(a.m, b.m)}; }
  __device__ void finish(State&, int64_t) const {}
  __device__ void store_row(const State& st, int64_t ridx) const { y[ridx] = from_acc<T>(st.m); }
};

// Backward: dx = q [x == y], q = dy / c, c = #{x == y}. The mask is a multiply, not a
// select, so q = inf or NaN (c = 0, or dy not finite) spreads NaN over the row as in torch.
template <class T>
struct AmaxBackward {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 16 / V;  // rows up to 512 in the warp path
  static constexpr int kBlockK = 32 / V < 8 ? 32 / V : 8;  // rows up to 32k (float64: 16k) as mask bits
  static constexpr int kU = 4;
  static constexpr bool kRowOut = false;
  struct State {
    A y, q;       // the row's max; dy / c after finish
    int64_t c;    // #{x == y}
  };
  template <int W> struct Cache {
    uint32_t mask;  // bit j: element j of the chunk is real and equals y
  };
  T* dx;
  const T* dy;
  const T* x;
  const T* y;

  __device__ State init(int64_t ridx) const { return {to_float(y[ridx]), A(0), 0}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State& st, const Sg& s, int64_t k) const {
    A v[W];
    const int nv = load_chunk<W>(v, x, s, k, A(0));
    c.mask = 0;
#pragma unroll
    for (int j = 0; j < W; ++j) c.mask |= uint32_t(j < nv && v[j] == st.y) << j;
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const { st.c += __popc(c.mask); }
  __device__ static State combine(const State& a, const State& b) { return {a.y, a.q, a.c + b.c}; }
  __device__ void finish(State& st, int64_t ridx) const { st.q = to_float(dy[ridx]) / A(st.c); }
  // dx = (dy / c) * [x == y]
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A o[W];
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = st.q * A((c.mask >> j) & 1u);
    store_chunk<W>(dx, s, k, o);
  }
};

// Double backward: d_dy = (sum_r gg [x == y]) / c, the mask again a multiply (a NaN or inf
// gg anywhere in the row gives NaN, as torch's gg * mask).
template <class T>
struct AmaxDoubleBackward {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 16 / V;  // two inputs in flight: rows up to 512 in the warp path
  static constexpr int kBlockK = 0;
  static constexpr int kU = 2;
  static constexpr bool kRowOut = true;
  struct State {
    A y, sum;   // the row's max; sum gg [x == y]
    int64_t c;  // #{x == y}
  };
  template <int W> struct Cache {
    A g[W];
    uint32_t mask;
  };
  T* d_dy;
  const T* gg;
  const T* x;
  const T* y;

  __device__ State init(int64_t ridx) const { return {to_float(y[ridx]), A(0), 0}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State& st, const Sg& s, int64_t k) const {
    A v[W];
    const int nv = load_chunk<W>(v, x, s, k, A(0));
    load_chunk<W>(c.g, gg, s, k, A(0));
    c.mask = 0;
#pragma unroll
    for (int j = 0; j < W; ++j) c.mask |= uint32_t(j < nv && v[j] == st.y) << j;
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) st.sum += c.g[j] * A((c.mask >> j) & 1u);
    st.c += __popc(c.mask);
  }
  __device__ static State combine(const State& a, const State& b) { return {a.y, a.sum + b.sum, a.c + b.c}; }
  __device__ void finish(State&, int64_t) const {}
  __device__ void store_row(const State& st, int64_t ridx) const { d_dy[ridx] = from_acc<T>(st.sum / A(st.c)); }
};

}  // namespace

// ---- launchers -------------------------------------------------------------------------------

void amax_forward_cuda(at::TensorBase& y, const at::TensorBase& x, Rows r) {
  TORCH_CHECK(r.reduce > 0 || r.outer * r.inner == 0, "torchmodules.amax: max over an empty set");
  TM_DISPATCH_FLOATING(x.scalar_type(), "amax_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const AmaxForward<T> p{dptr<scalar_t>(y), dptr<scalar_t>(x)};
    run_rows(x, p, r, {p.x});
  });
}

void amax_backward_cuda(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& y, Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "amax_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const AmaxBackward<T> p{dptr<scalar_t>(dx), dptr<scalar_t>(dy), dptr<scalar_t>(x), dptr<scalar_t>(y)};
    run_rows(x, p, r, {p.dx, p.x});
  });
}

void amax_double_backward_cuda(at::TensorBase& d_dy, const at::TensorBase& gg, const at::TensorBase& x, const at::TensorBase& y,
                               Rows r) {
  TORCH_CHECK(r.reduce > 0 || r.outer * r.inner == 0, "torchmodules.amax_double_backward: max over an empty set");
  TM_DISPATCH_FLOATING(x.scalar_type(), "amax_double_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const AmaxDoubleBackward<T> p{dptr<scalar_t>(d_dy), dptr<scalar_t>(gg), dptr<scalar_t>(x), dptr<scalar_t>(y)};
    run_rows(x, p, r, {p.gg, p.x});
  });
}


}  // namespace torchmodules
