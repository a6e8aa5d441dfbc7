// CrossEntropy on CUDA, fused with its log-softmax (formulas with the schemas in csrc/ops.cpp and
// in csrc/cross_entropy.cpp, which these kernels mirror). Rows [outer, C, inner] of x; per row r,
// u the weighted target, U = sum_c u_c, p = exp(x - lse) taken as exp((x - m) - log s) (CeLse, ops.h),
// G = g_r / den (mean) or g_r:
//   Forward:  a policy of the generic row kernels (rows.cuh), one online pass per row:
//             (m, s) = (max, sum exp(x - m)), s rescaled when m grows, and where the target has
//             more than one nonzero entry a = sum u (m - x), up = sum u (a grown by (m' - m) up);
//             one thread per row then writes lse = (m, log s) and loss_r (see the CPU file), or
//             the row's loss into a buffer that ce_reduce sums in a fixed order (one block).
//   Backward: dx = G (U p - u). Class indices: no reduction, a map over each row (ce_map_rows,
//             16-byte vectors); probabilities: a row policy (U first), with dq = -(1-eps) G w (x - lse).
//   Double backward: row policies; the per-row d/dg goes through the same fixed-order ce_reduce.
// Half types compute in float, float64 in double. No float atomics: the same inputs give the same
// bits. Class indices out of [0, C) that are not ignore_index are counted by target_check.cuh's
// kernel, queued before the loss (the host waits for it alone); the glue raises an IndexError.
// The forward and backward kernels write NaN rows for such targets instead of reading out of bounds.
#include "rows.cuh"
#include "target_check.cuh"

#include <c10/cuda/CUDAGraphsC10Utils.h>

namespace torchmodules {
namespace {

// exp for a sum of exponentials: __expf in float (the expf of the CUDA math library costs
// several instructions an element: the bfloat16 forward was compute-bound), exp in double.
__device__ __forceinline__ float fast_exp(float v) { return __expf(v); }
__device__ __forceinline__ double fast_exp(double v) { return exp(v); }

// exp for the class-index backward's exp(x - m) (p = that / s): __expf for the half types (a few ulp of
// float, far below their rounding; their bytes per element are half of float's for the same
// arithmetic), the accurate exp for float and double outputs.
template <class T> __device__ __forceinline__ dacc<T> out_exp(dacc<T> v) {
  if constexpr (sizeof(T) == 2) return fast_exp(v);
  else return dexp(v);
}

template <class A> __device__ __forceinline__ A ce_inf() { return A(INFINITY); }
template <class A> __device__ __forceinline__ A ce_nan() { return A(NAN); }

enum CeMode : int { kClass = 0, kSmooth = 1, kProb = 2 };  // class index (eps = 0), (eps > 0), probabilities

// Element c of row r of [outer, C, inner].
__device__ __forceinline__ int64_t ce_elem(int64_t r, int64_t c, int64_t C, int64_t inner) {
  return inner == 1 ? r * C + c : ((r / inner) * C + c) * inner + r % inner;
}

// What every kernel knows about the op.
template <class T>
struct CeArgs {
  using A = dacc<T>;
  const T* x;
  const int64_t* t;  // class indices (or nullptr)
  const T* q;        // probabilities (or nullptr)
  const T* w;        // weight (or nullptr)
  int64_t C, inner, ignore_index;
  A keep, epsc, eps;  // 1 - eps, eps / C, eps
  bool rows_out;     // reduction none: g and the loss have one entry per row
  bool mean;

  __device__ A weight(int64_t c) const { return w ? to_float(w[c]) : A(1); }
  // 0: a row to compute; 1: ignored (zeros); 2: target out of range (NaN).
  __device__ int row_mode(int64_t tr) const { return tr == ignore_index ? 1 : (tr < 0 || tr >= C) ? 2 : 0; }
};

// ---- forward ---------------------------------------------------------------------------------

// A row's loss term by term in torch's order (probabilities: sum_c w_c (keep q_c + epsc) nlp_c; class tr
// with label smoothing, g.q null: keep w_t nlp_t + epsc sum_c w_c nlp_c; nlp_c = (m - x_c) + log s), in
// double by one thread of ce_exact_rows, for the rare rows where the one-pass a + up log s is not
// finite (an infinite weight makes inf - inf or 0 * inf there where torch's sum is +-inf): as the
// CPU's ce_row_exact.
template <class T>
__device__ double ce_row_exact(const CeArgs<T>& g, int64_t r, int64_t tr, double keep, double epsc) {
  double m = -INFINITY, s = 0, L = 0, S = 0;
  for (int64_t c = 0; c < g.C; ++c) m = fmax(m, double(to_float(g.x[ce_elem(r, c, g.C, g.inner)])));  // (NaN: s)
  for (int64_t c = 0; c < g.C; ++c) s += exp(double(to_float(g.x[ce_elem(r, c, g.C, g.inner)])) - m);
  const double ls = log(s);
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t e = ce_elem(r, c, g.C, g.inner);
    const double wc = g.w ? double(to_float(g.w[c])) : 1.0, nlp = (m - double(to_float(g.x[e]))) + ls;
    if (g.q) {
      L += wc * (keep * double(to_float(g.q[e])) + epsc) * nlp;
    } else {
      S += wc * nlp;
      if (c == tr) L = keep * (wc * nlp);
    }
  }
  return g.q ? L : L + epsc * S;
}

template <class T, int M>
struct CeForward {
  using A = dacc<T>;
  static constexpr bool kTrack = M != kClass;  // a and up
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = (kTrack ? 16 : 32) / V;  // rows up to 512 / 1024 elements in the warp path
  static constexpr int kBlockK = 0;                      // one output per row: long rows stream, one pass
  static constexpr int kU = kTrack ? 2 : 4;              // chunks in flight (x, and u when tracked)
  static constexpr bool kRowOut = true;
  struct State {
    A m, s, a, up;
    int skip;  // an ignored row: nothing to read
  };
  template <int W> struct Cache {
    A x[W], u[W];
    int n;  // real elements of the chunk
  };
  CeArgs<T> g;
  T* loss;             // per-row losses (none) or nullptr
  A* buf;              // per-row losses to reduce (mean, sum) or nullptr
  A* lse;

  __device__ State init(int64_t r) const {
    return {ninf<A>(), A(0), A(0), A(0), M != kProb && g.t[r] == g.ignore_index};
  }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State& st, const Sg& s, int64_t k) const {
    if (st.skip) {
#pragma unroll
      for (int j = 0; j < W; ++j) c.x[j] = ninf<A>();
      c.n = 0;
      return;
    }
    c.n = load_chunk<W>(c.x, g.x, s, k, ninf<A>());
    if constexpr (M == kSmooth) {  // u = w
      if (g.w) {
        load_chunk<W>(c.u, g.w, Sg{0, s.n, 1}, k, A(0));
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) c.u[j] = A(1);
      }
    } else if constexpr (M == kProb) {  // u = w ((1-eps) q + eps/C)
      A wv[W];
      load_chunk<W>(c.u, g.q, s, k, A(0));
      if (g.w) load_chunk<W>(wv, g.w, Sg{0, s.n, 1}, k, A(0));
#pragma unroll
      for (int j = 0; j < W; ++j) c.u[j] = (g.w ? wv[j] : A(1)) * (g.keep * c.u[j] + g.epsc);
    }
  }
  // (m, s, a) <- (m', s exp(m - m') + sum exp(x - m'), a + (m' - m) up + sum u (m' - x)), m' = max(m, x).
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
    A cm = ninf<A>();
#pragma unroll
    for (int j = 0; j < W; ++j) cm = c.x[j] > cm ? c.x[j] : cm;
    if (cm > st.m) {
      if (st.m != ninf<A>()) {  // nothing to rescale while m = -inf
        st.s *= dexp(st.m - cm);
        if constexpr (kTrack) st.a += (cm - st.m) * st.up;
      }
      st.m = cm;
    }
    // exp(x - m) <= 1 by the fast exp (one multiply and one MUFU ex2 in float; ~2 ulp near the
    // max, and the terms far below it, where its error grows, add little to s). While m is -inf
    // (the max skips NaN) the chunk holds -inf and NaN only: exp(x - 0) adds 0, or NaN, which the
    // loss must keep, as torch's (x - m would make NaN of a -inf).
    const A shift = st.m == ninf<A>() ? A(0) : st.m;
#pragma unroll
    for (int j = 0; j < W; ++j) st.s += fast_exp(c.x[j] - shift);
    if constexpr (kTrack) {
#pragma unroll
      for (int j = 0; j < W; ++j)
        if (j < c.n) {
          st.up += c.u[j];
          st.a += c.u[j] * (c.x[j] == ninf<A>() ? ce_inf<A>() : st.m - c.x[j]);
        }
    }
  }
  // The union: m = max(m1, m2), s = s1 exp(m1 - m) + s2 exp(m2 - m), a = a1 + (m - m1) up1 + a2 + (m - m2) up2.
  __device__ static State combine(const State& a, const State& b) {
    const A m = a.m > b.m ? a.m : b.m;
    State r;
    r.m = m;
    r.skip = a.skip;
    r.s = (a.m == m ? a.s : a.s * dexp(a.m - m)) + (b.m == m ? b.s : b.s * dexp(b.m - m));
    if constexpr (kTrack) {
      r.a = (a.m == m || a.m == ninf<A>() ? a.a : a.a + (m - a.m) * a.up) +
            (b.m == m || b.m == ninf<A>() ? b.a : b.a + (m - b.m) * b.up);
      r.up = a.up + b.up;
    } else {
      r.a = A(0), r.up = A(0);
    }
    return r;
  }
  __device__ void finish(State&, int64_t) const {}
  // lse = (m, log s); loss = a + up log s (probabilities), w_t ((m - x_t) + log s) (class index),
  // (1-eps) w_t ((m - x_t) + log s) + (eps/C) (a + up log s) (smoothed); ignored rows 0.
  __device__ void store_row(const State& st, int64_t r) const {
    const A ls = dlog(st.s);
    A L;
    CeLse<A> l{st.m, ls};
    if constexpr (M == kProb) {
      L = st.a + st.up * ls;  // not finite: ce_exact_rows
    } else {
      const int64_t tr = g.t[r];
      const int mode = g.row_mode(tr);
      if (mode == 1) {
        L = A(0), l = {A(0), A(0)};
      } else if (mode == 2) {  // counted by the target check
        L = ce_nan<A>(), l = {ce_nan<A>(), ce_nan<A>()};
      } else {
        const A nll = g.weight(tr) * ((st.m - to_float(g.x[ce_elem(r, tr, g.C, g.inner)])) + ls);
        L = M == kSmooth ? g.keep * nll + g.epsc * (st.a + st.up * ls) : nll;  // not finite: ce_exact_rows
      }
    }
    l.store(lse, r);
    if (loss) loss[r] = from_acc<T>(L);
    else buf[r] = L;
  }
};

// The rows (probabilities, or label smoothing) whose one-pass loss is not finite, summed again by
// ce_row_exact in a pass of their own after the row kernel (the call inside it doubled the smoothed
// forward's registers: 39 -> 80 in the float warp path), with 1 - eps and eps / C in double as the
// CPU's (g has them rounded to A). Ignored rows (0) and out-of-range targets (NaN by design) stay.
template <class T>
__global__ void __launch_bounds__(256) ce_exact_rows(CeArgs<T> g, double eps, T* loss, dacc<T>* buf, int64_t rows) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const bool finite = loss ? isfinite(to_float(loss[r])) : isfinite(buf[r]);
    const int64_t tr = g.t ? g.t[r] : -1;
    if (finite || (g.t && g.row_mode(tr) != 0)) continue;
    const dacc<T> L = dacc<T>(ce_row_exact(g, r, tr, 1.0 - eps, eps / double(g.C)));
    if (loss) loss[r] = from_acc<T>(L);
    else buf[r] = L;
  }
}

// ---- fixed-order sums over rows (one block) ---------------------------------------------------

constexpr int kRedThreads = 1024;

template <class A>
struct CeRed {
  struct State {
    A l, d, ws;
  };
  __device__ static State combine(const State& a, const State& b) { return {a.l + b.l, a.d + b.d, a.ws + b.ws}; }
};

// out[0] = sum_r buf_r (/ den when divide; NaN for den = 0 with nan_zero_den: label smoothing, as
// the CPU's ce_smooth_zero_den); tw = [den, mean_c w_c] (each w_c / C summed: no overflow), den = sum
// of w_t over kept rows (t given) or the row count. Thread k sums rows k, k + 1024, ... in order, then
// a fixed tree.
template <class T>
__global__ void __launch_bounds__(kRedThreads) ce_reduce(T* out, dacc<T>* tw, const dacc<T>* buf, CeArgs<T> g,
                                                         int64_t rows, bool divide, bool nan_zero_den) {
  using A = dacc<T>;
  using R = CeRed<A>;
  __shared__ typename R::State red[32];
  typename R::State st{A(0), A(0), A(0)};
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    if (buf) st.l += buf[r];
    if (g.t) {
      const int64_t tr = g.t[r];
      st.d += g.row_mode(tr) == 0 ? g.weight(tr) : A(0);
    }
  }
  if (tw)
    for (int64_t c = threadIdx.x; c < g.C; c += blockDim.x) st.ws += g.w ? g.weight(c) / A(g.C) : A(0);
  st = block_allreduce<R>(st, red);
  if (threadIdx.x == 0) {
    const A den = g.t ? st.d : A(rows);
    if (tw) tw[0] = den, tw[1] = g.w ? st.ws : A(1);
    if (out) out[0] = from_acc<T>(!divide ? st.l : nan_zero_den && den == A(0) ? ce_nan<A>() : st.l / den);
  }
}

// ---- backward, class indices: a map over each row --------------------------------------------

// dx_c = G (U p_c - u_c), u_c = (1-eps) w_t [c == t] + (eps/C) w_c, U = (1-eps) w_t + (eps/C) sum w,
// with p_c = exp(x_c - m) / s: dx_c = GUs exp(x_c - m) - G u_c, GUs = G U exp(-log s) once per row.
template <class T, bool kSmoothM>
struct CeBackwardClass {
  using Elem = T;
  using A = dacc<T>;
  static constexpr bool kNeedW = kSmoothM;
  struct Row {
    A G, GUs, kw, m;
    int64_t t;
    int mode;
  };
  CeArgs<T> g;
  T* out;
  const T* grad;
  const A* lse;
  const A* tw;

  __device__ Row row(int64_t r) const {
    Row o;
    o.t = g.t[r];
    o.mode = g.row_mode(o.t);
    if (o.mode != 0) return o;
    const A wt = g.weight(o.t);
    // (smoothed mean over kept targets of total weight 0: NaN, as the CPU's ce_smooth_zero_den)
    const A sc = !g.mean ? A(1) : kSmoothM && tw[0] == A(0) ? ce_nan<A>() : A(1) / tw[0];
    o.G = to_float(grad[g.rows_out ? r : 0]) * sc;
    const CeLse<A> l = CeLse<A>::load(lse, r);
    o.GUs = o.G * (g.keep * wt + (kSmoothM ? g.eps * tw[1] : A(0))) * dexp(-l.ls);
    o.kw = g.keep * wt;
    o.m = l.m;
    return o;
  }
  __device__ A at(const Row& r, int64_t c, A xv, A wc) const {
    const A u = (c == r.t ? r.kw : A(0)) + (kSmoothM ? g.epsc * wc : A(0));
    return r.GUs * out_exp<T>(xv - r.m) - r.G * u;
  }
};

constexpr int kMapThreads = 256;
constexpr int kMapU = 4;  // chunks per thread in flight

template <class A> __device__ __forceinline__ A ce_fill(int mode) { return mode == 1 ? A(0) : ce_nan<A>(); }

// inner == 1: groups of G threads (a power of two <= blockDim.x) per row, 16-byte chunks.
template <class F, bool VEC>
__global__ void __launch_bounds__(kMapThreads) ce_map_rows(const F f, int64_t rows, int64_t n, int G) {
  using T = typename F::Elem;
  using A = typename F::A;
  constexpr int W = 16 / sizeof(T);
  const int lane = threadIdx.x & (G - 1);
  const int64_t gpb = blockDim.x / G, chunks = (n + W - 1) / W;
  for (int64_t row = blockIdx.x * gpb + threadIdx.x / G; row < rows; row += int64_t(gridDim.x) * gpb) {
    const Seg<VEC> seg{row * n, n, 1}, wseg{0, n, 1};
    const typename F::Row r = f.row(row);
    if (r.mode != 0) {
      A o[W];
#pragma unroll
      for (int j = 0; j < W; ++j) o[j] = ce_fill<A>(r.mode);
      for (int64_t k = lane; k < chunks; k += G) store_chunk<W>(f.out, seg, k, o);
      continue;
    }
    for (int64_t k0 = lane; k0 < chunks; k0 += kMapU * G) {
      A xv[kMapU][W], wv[kMapU][W];
#pragma unroll
      for (int u = 0; u < kMapU; ++u) {
        load_chunk<W>(xv[u], f.g.x, seg, k0 + u * G, A(0));
        if (F::kNeedW && f.g.w) {
          load_chunk<W>(wv[u], f.g.w, wseg, k0 + u * G, A(0));
        } else {
#pragma unroll
          for (int j = 0; j < W; ++j) wv[u][j] = A(1);
        }
      }
#pragma unroll
      for (int u = 0; u < kMapU; ++u) {
        const int64_t k = k0 + u * G;
        A o[W];
#pragma unroll
        for (int j = 0; j < W; ++j) o[j] = f.at(r, k * W + j, xv[u][j], wv[u][j]);
        store_chunk<W>(f.out, seg, k, o);
      }
    }
  }
}

// inner > 1: one thread per element, consecutive threads along inner.
template <class F>
__global__ void ce_map_flat(const F f, int64_t total, int64_t n, int64_t inner) {
  using A = typename F::A;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner, oc = e / inner, c = oc % n, o = oc / n;
    const typename F::Row r = f.row(o * inner + i);
    const A v = r.mode != 0 ? ce_fill<A>(r.mode) : f.at(r, c, to_float(f.g.x[e]), f.g.weight(c));
    f.out[e] = from_acc<typename F::Elem>(v);
  }
}

template <class F>
void launch_map(const at::TensorBase& on, const F& f, const CeParams& P) {
  using T = typename F::Elem;
  constexpr int W = 16 / sizeof(T);
  const int64_t rows = P.rows(), n = P.classes;
  if (rows == 0) return;
  if (P.inner > 1) {
    const int64_t total = rows * n;
    tm_launch(on, dim3(unsigned(tm_blocks(total, kMapThreads))), dim3(kMapThreads), 0, ce_map_flat<F>, f, total, n,
              P.inner);
    return;
  }
  const int64_t chunks = ceil_div(n, W);
  const int G = int(std::min<int64_t>(kMapThreads, next_pow2(ceil_div(chunks, kMapU))));
  const unsigned grid = unsigned(tm_blocks(rows, kMapThreads / G));
  if (n % W == 0 && tm_aligned(16, {f.out, f.g.x, f.g.w}))
    tm_launch(on, dim3(grid), dim3(kMapThreads), 0, ce_map_rows<F, true>, f, rows, n, G);
  else
    tm_launch(on, dim3(grid), dim3(kMapThreads), 0, ce_map_rows<F, false>, f, rows, n, G);
}

// ---- backward, probabilities: U first (a row reduction), then dx and dq ------------------------

template <class T>
struct CeBackwardProb {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = (sizeof(A) == 8 ? 8 : 16) / V;  // three cached arrays
  static constexpr int kBlockK = (sizeof(A) == 8 ? 4 : 8) / V;   // (64 registers a thread)
  static constexpr int kU = V >= 8 ? 1 : 2;
  static constexpr bool kRowOut = false;
  struct State {
    A U, G;  // U summed; G and l the row's (kept through combine)
    CeLse<A> l;
  };
  template <int W> struct Cache {
    A x[W], u[W], w[W];
  };
  CeArgs<T> g;
  T* dx;
  T* dq;  // or nullptr
  const T* grad;
  const A* lse;
  const A* tw;

  __device__ State init(int64_t r) const {
    return {A(0), to_float(grad[g.rows_out ? r : 0]) * (g.mean ? A(1) / tw[0] : A(1)), CeLse<A>::load(lse, r)};
  }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State&, const Sg& s, int64_t k) const {
    const int n = load_chunk<W>(c.x, g.x, s, k, A(0));
    A q[W];
    load_chunk<W>(q, g.q, s, k, A(0));
    if (g.w) {
      load_chunk<W>(c.w, g.w, Sg{0, s.n, 1}, k, A(0));
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) c.w[j] = j < n ? A(1) : A(0);
    }
#pragma unroll
    for (int j = 0; j < W; ++j) c.u[j] = c.w[j] * (g.keep * q[j] + g.epsc);  // 0 past the row (w = 0)
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) st.U += c.u[j];
  }
  __device__ static State combine(const State& a, const State& b) { return {a.U + b.U, a.G, a.l}; }
  __device__ void finish(State&, int64_t) const {}
  // dx = G (U p - u),  dq = -(1-eps) G w lp,  lp = (x - m) - log s
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A o[W];
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = st.G * (st.U * dexp(st.l.log_p(c.x[j])) - c.u[j]);
    store_chunk<W>(dx, s, k, o);
    if (dq) {
#pragma unroll
      for (int j = 0; j < W; ++j) o[j] = -g.keep * st.G * c.w[j] * st.l.log_p(c.x[j]);
      store_chunk<W>(dq, s, k, o);
    }
  }
};

// ---- double backward -------------------------------------------------------------------------

// Class indices: S = sum gg p, Sgw = sum gg w (smoothed); d_g = sc (U S - (1-eps) w_t gg_t - (eps/C) Sgw),
// d_x = G U p (gg - S).
template <class T, bool kSmoothM>
struct CeDoubleClass {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = (sizeof(A) == 8 ? 8 : 16) / V;
  static constexpr int kBlockK = (sizeof(A) == 8 ? 4 : 8) / V;
  static constexpr int kU = 1;
  static constexpr bool kRowOut = false;
  struct State {
    CeLse<A> l;
    A S, Sgw, G, U, dg;
    int64_t r;
    int mode;
  };
  template <int W> struct Cache {
    A p[W], gg[W], w[W];
  };
  CeArgs<T> g;
  T* d_x;
  T* d_g;  // per row (none) or nullptr
  A* buf;  // per row to reduce, or nullptr
  const T* gg;
  const T* grad;
  const A* lse;
  const A* tw;

  __device__ State init(int64_t r) const { return {CeLse<A>::load(lse, r), A(0), A(0), A(0), A(0), A(0), r, 0}; }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State& st, const Sg& s, int64_t k) const {
    load_chunk<W>(c.p, g.x, s, k, ninf<A>());
#pragma unroll
    for (int j = 0; j < W; ++j) c.p[j] = dexp(st.l.log_p(c.p[j]));
    if (gg) {
      load_chunk<W>(c.gg, gg, s, k, A(0));
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) c.gg[j] = A(0);
    }
    if constexpr (kSmoothM) {
      if (g.w) {
        load_chunk<W>(c.w, g.w, Sg{0, s.n, 1}, k, A(0));
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) c.w[j] = A(1);  // gg is 0 past the row
      }
    }
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      st.S += c.gg[j] * c.p[j];
      if constexpr (kSmoothM) st.Sgw += c.gg[j] * c.w[j];
    }
  }
  __device__ static State combine(const State& a, const State& b) {
    State r = a;
    r.S = a.S + b.S;
    r.Sgw = a.Sgw + b.Sgw;
    return r;
  }
  __device__ void finish(State& st, int64_t r) const {
    const int64_t tr = g.t[r];
    st.mode = g.row_mode(tr);
    if (st.mode != 0) {
      st.dg = ce_fill<A>(st.mode);
      return;
    }
    const A sc = !g.mean ? A(1) : kSmoothM && tw[0] == A(0) ? ce_nan<A>() : A(1) / tw[0], wt = g.weight(tr);
    const A ggt = gg ? to_float(gg[ce_elem(r, tr, g.C, g.inner)]) : A(0);
    st.G = to_float(grad[g.rows_out ? r : 0]) * sc;
    st.U = g.keep * wt + (kSmoothM ? g.eps * tw[1] : A(0));
    st.dg = sc * (st.U * st.S - (g.keep * wt * ggt + (kSmoothM ? g.epsc * st.Sgw : A(0))));
  }
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A o[W];
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = st.mode != 0 ? ce_fill<A>(st.mode) : st.G * st.U * c.p[j] * (c.gg[j] - st.S);
    store_chunk<W>(d_x, s, k, o);
    if (k == 0) {  // the one thread holding chunk 0 writes the row's d_g
      if (d_g) d_g[st.r] = from_acc<T>(st.dg);
      else buf[st.r] = st.dg;
    }
  }
};

// Probabilities: S = sum gg p, Sgu = sum gg u, U = sum u, Hw = sum hh w, Hl = sum hh w lp;
// d_g = sc (U S - Sgu - (1-eps) Hl),  d_x = G U p (gg - S) - (1-eps) G (hh w - p Hw),  d_q = (1-eps) G w (S - gg).
template <class T>
struct CeDoubleProb {
  using A = dacc<T>;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int kWarpK = 1;  // six cached arrays: longer rows stream (read twice)
  static constexpr int kBlockK = 0;
  static constexpr int kU = 1;
  static constexpr bool kRowOut = false;
  struct State {
    CeLse<A> l;
    A S, Sgu, U, Hw, Hl, G, dg;
    int64_t r;
  };
  template <int W> struct Cache {
    A p[W], lp[W], gg[W], h[W], w[W], u[W];
  };
  CeArgs<T> g;
  T* d_x;
  T* d_q;
  T* d_g;
  A* buf;
  const T* gg;
  const T* hh;
  const T* grad;
  const A* lse;
  const A* tw;

  __device__ State init(int64_t r) const {
    return {CeLse<A>::load(lse, r), A(0), A(0), A(0), A(0), A(0), A(0), A(0), r};
  }
  template <int W, class Sg> __device__ void load(Cache<W>& c, const State& st, const Sg& s, int64_t k) const {
    A q[W];
    const int n = load_chunk<W>(c.lp, g.x, s, k, A(0));
    load_chunk<W>(q, g.q, s, k, A(0));
    if (gg) load_chunk<W>(c.gg, gg, s, k, A(0));
    if (hh) load_chunk<W>(c.h, hh, s, k, A(0));
    if (g.w) load_chunk<W>(c.w, g.w, Sg{0, s.n, 1}, k, A(0));
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const bool in = j < n;  // past the row every term is 0
      if (!gg) c.gg[j] = A(0);
      if (!hh) c.h[j] = A(0);
      if (!g.w) c.w[j] = A(1);
      c.lp[j] = in ? st.l.log_p(c.lp[j]) : A(0);
      c.p[j] = in ? dexp(c.lp[j]) : A(0);
      c.w[j] = in ? c.w[j] : A(0);
      c.u[j] = c.w[j] * (g.keep * q[j] + g.epsc);
    }
  }
  template <int W> __device__ void accumulate(State& st, const Cache<W>& c) const {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      st.S += c.gg[j] * c.p[j];
      st.Sgu += c.gg[j] * c.u[j];
      st.U += c.u[j];
      st.Hw += c.h[j] * c.w[j];
      st.Hl += c.h[j] * c.w[j] * c.lp[j];
    }
  }
  __device__ static State combine(const State& a, const State& b) {
    State r = a;
    r.S = a.S + b.S, r.Sgu = a.Sgu + b.Sgu, r.U = a.U + b.U, r.Hw = a.Hw + b.Hw, r.Hl = a.Hl + b.Hl;
    return r;
  }
  __device__ void finish(State& st, int64_t r) const {
    const A sc = g.mean ? A(1) / tw[0] : A(1);
    st.G = to_float(grad[g.rows_out ? r : 0]) * sc;
    st.dg = sc * (st.U * st.S - st.Sgu - g.keep * st.Hl);
  }
  template <int W, class Sg> __device__ void store(const State& st, const Cache<W>& c, const Sg& s, int64_t k) const {
    A o[W], oq[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      o[j] = st.G * st.U * c.p[j] * (c.gg[j] - st.S) - g.keep * st.G * (c.h[j] * c.w[j] - c.p[j] * st.Hw);
      oq[j] = g.keep * st.G * c.w[j] * (st.S - c.gg[j]);
    }
    store_chunk<W>(d_x, s, k, o);
    store_chunk<W>(d_q, s, k, oq);
    if (k == 0) {
      if (d_g) d_g[st.r] = from_acc<T>(st.dg);
      else buf[st.r] = st.dg;
    }
  }
};

template <class T>
CeArgs<T> ce_args(const at::TensorBase& x, const at::TensorBase& target, const at::TensorBase& weight, const CeParams& P) {
  using A = dacc<T>;
  CeArgs<T> g;
  g.x = reinterpret_cast<const T*>(x.data_ptr());
  g.t = P.prob ? nullptr : target.data_ptr<int64_t>();
  g.q = P.prob ? reinterpret_cast<const T*>(target.data_ptr()) : nullptr;
  g.w = weight.defined() ? reinterpret_cast<const T*>(weight.data_ptr()) : nullptr;
  g.C = P.classes, g.inner = P.inner, g.ignore_index = P.ignore_index;
  g.keep = A(1.0 - P.smoothing), g.epsc = A(P.smoothing / double(P.classes)), g.eps = A(P.smoothing);
  g.rows_out = P.reduction == 0, g.mean = P.reduction == 1;
  return g;
}

template <class T>
const T* cptr(const at::TensorBase& t) { return t.defined() ? reinterpret_cast<const T*>(t.data_ptr()) : nullptr; }
template <class T>
T* mptr(const at::TensorBase& t) { return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr; }

template <class T, int M>
void ce_forward_rows(const at::TensorBase& x, const CeArgs<T>& g, T* loss, dacc<T>* buf, dacc<T>* lse, const CeParams& P) {
  const CeForward<T, M> p{g, loss, buf, lse};
  run_rows(x, p, Rows{P.outer, P.classes, P.inner}, {g.x, g.q, g.w});
}

}  // namespace

// ---- launchers -------------------------------------------------------------------------------

void cross_entropy_forward_cuda(at::TensorBase& loss, at::TensorBase& lse, at::TensorBase& total_weight, at::TensorBase& bad,
                                const at::TensorBase& x, const at::TensorBase& target, const at::TensorBase& weight,
                                const CeParams& P) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "cross_entropy_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc<T>;
    const CeArgs<T> g = ce_args<T>(x, target, weight, P);
    TargetCheck check(x, g.t, g.t ? P.rows() : 0, P.classes, P.ignore_index);  // first, then the loss
    const bool rows_out = P.reduction == 0;
    const at::TensorBase buf = rows_out ? at::TensorBase() : new_workspace({P.rows()}, lse.options());
    T* lo = rows_out ? mptr<T>(loss) : nullptr;
    A* bp = mptr<A>(buf);
    if (P.prob) ce_forward_rows<T, kProb>(x, g, lo, bp, mptr<A>(lse), P);
    else if (P.smoothing > 0) ce_forward_rows<T, kSmooth>(x, g, lo, bp, mptr<A>(lse), P);
    else ce_forward_rows<T, kClass>(x, g, lo, bp, mptr<A>(lse), P);
    if ((P.prob || P.smoothing > 0) && P.rows() > 0)
      tm_launch(x, dim3(unsigned(tm_blocks(P.rows(), 256))), dim3(256), 0, ce_exact_rows<T>, g, P.smoothing, lo, bp,
                P.rows());
    tm_launch(x, dim3(1), dim3(kRedThreads), 0, ce_reduce<T>, rows_out ? nullptr : mptr<T>(loss),
              mptr<A>(total_weight), static_cast<const A*>(bp), g, P.rows(), P.reduction == 1,
              !P.prob && P.smoothing > 0);
    const TargetStatus st = check.wait();  // the loss runs meanwhile
    if (bad.defined()) bad.data_ptr<int64_t>()[0] = st.count, bad.data_ptr<int64_t>()[1] = st.last + 1;
  });
}

void cross_entropy_backward_cuda(at::TensorBase& dx, at::TensorBase& dq, const at::TensorBase& grad, const at::TensorBase& x,
                                 const at::TensorBase& target, const at::TensorBase& weight, const at::TensorBase& lse,
                                 const at::TensorBase& total_weight, const CeParams& P) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "cross_entropy_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc<T>;
    const CeArgs<T> g = ce_args<T>(x, target, weight, P);
    if (P.prob) {
      const CeBackwardProb<T> p{g, mptr<T>(dx), mptr<T>(dq), cptr<T>(grad), cptr<A>(lse), cptr<A>(total_weight)};
      run_rows(x, p, Rows{P.outer, P.classes, P.inner}, {p.dx, p.dq, g.x, g.q, g.w});
    } else if (P.smoothing > 0) {
      launch_map(x, CeBackwardClass<T, true>{g, mptr<T>(dx), cptr<T>(grad), cptr<A>(lse), cptr<A>(total_weight)}, P);
    } else {
      launch_map(x, CeBackwardClass<T, false>{g, mptr<T>(dx), cptr<T>(grad), cptr<A>(lse), cptr<A>(total_weight)}, P);
    }
  });
}

void cross_entropy_double_backward_cuda(at::TensorBase& d_g, at::TensorBase& d_x, at::TensorBase& d_q, const at::TensorBase& gg,
                                        const at::TensorBase& hh, const at::TensorBase& grad, const at::TensorBase& x,
                                        const at::TensorBase& target, const at::TensorBase& weight, const at::TensorBase& lse,
                                        const at::TensorBase& total_weight, const CeParams& P) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "cross_entropy_double_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc<T>;
    const CeArgs<T> g = ce_args<T>(x, target, weight, P);
    const bool rows_out = P.reduction == 0;
    const at::TensorBase buf = rows_out ? at::TensorBase() : new_workspace({P.rows()}, lse.options());
    T* dg_rows = rows_out ? mptr<T>(d_g) : nullptr;
    const Rows r{P.outer, P.classes, P.inner};
    if (P.prob) {
      const CeDoubleProb<T> p{g, mptr<T>(d_x), mptr<T>(d_q), dg_rows, mptr<A>(buf), cptr<T>(gg), cptr<T>(hh),
                              cptr<T>(grad), cptr<A>(lse), cptr<A>(total_weight)};
      run_rows(x, p, r, {p.d_x, p.d_q, g.x, g.q, g.w, p.gg, p.hh});
    } else if (P.smoothing > 0) {
      const CeDoubleClass<T, true> p{g, mptr<T>(d_x), dg_rows, mptr<A>(buf), cptr<T>(gg), cptr<T>(grad),
                                     cptr<A>(lse), cptr<A>(total_weight)};
      run_rows(x, p, r, {p.d_x, g.x, g.w, p.gg});
    } else {
      const CeDoubleClass<T, false> p{g, mptr<T>(d_x), dg_rows, mptr<A>(buf), cptr<T>(gg), cptr<T>(grad),
                                      cptr<A>(lse), cptr<A>(total_weight)};
      run_rows(x, p, r, {p.d_x, g.x, g.w, p.gg});
    }
    if (!rows_out) {  // d_g = sum over rows, fixed order
      CeArgs<T> none = g;
      none.t = nullptr;
      tm_launch(x, dim3(1), dim3(kRedThreads), 0, ce_reduce<T>, mptr<T>(d_g), static_cast<A*>(nullptr),
                static_cast<const A*>(mptr<A>(buf)), none, P.rows(), false, false);
    }
  });
}

bool cuda_stream_capturing(const at::TensorBase& on) {
  const c10::cuda::CUDAGuard guard(on.device());
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}


}  // namespace torchmodules
