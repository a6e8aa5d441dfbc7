// LogSoftmax over one dim.
//   Forward:  y_i = x_i - m - log sum_j exp(x_j - m), m = max_j x_j (stable for |x| ~ 1e4;
//             -inf entries give -inf; an all -inf row or a NaN gives NaN, as torch).
//   Backward: dx_i = dy_i - exp(y_i) sum_j dy_j.
//   Double backward, for gg = d/d(dx):
//             d_dy_k = gg_k - sum_i gg_i exp(y_i),   d_y_k = -gg_k exp(y_k) sum_j dy_j.
#include "half_convert.h"
#include "ops.h"
#include "short_rows.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

static Rows softmax_rows(const char* op, const at::Tensor& t, int64_t dim) {
  const int64_t d = wrap_dim(op, dim, t.dim());
  return t.dim() == 0 ? Rows{1, 1, 1} : make_rows(t.sizes(), d, d);
}

at::Tensor log_softmax_forward(const at::Tensor& x, int64_t dim) {
  check_floating("log_softmax", "input", x);
  const Rows r = softmax_rows("log_softmax", x, dim);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = new_output(x.sizes(), x.options());
  if (y.numel() > 0) TM_LAUNCH(log_softmax_forward, x, y, xc, r);
  return y;
}

at::Tensor log_softmax_backward(const at::Tensor& grad_y, const at::Tensor& y, int64_t dim) {
  check_floating("log_softmax_backward", "grad_y", grad_y);
  check_same_dtype_device("log_softmax_backward", "grad_y", grad_y, "y", y);
  TORCH_CHECK(grad_y.sizes() == y.sizes(), "torchmodules.log_softmax_backward: grad_y has shape ",
              grad_y.sizes(), ", y has shape ", y.sizes());
  const Rows r = softmax_rows("log_softmax_backward", y, dim);
  const at::Tensor dyc = grad_y.contiguous(), yc = y.contiguous();
  at::Tensor dx = new_output(y.sizes(), y.options());
  if (dx.numel() > 0) TM_LAUNCH(log_softmax_backward, y, dx, dyc, yc, r);
  return dx;
}

std::tuple<at::Tensor, at::Tensor> log_softmax_double_backward(const at::Tensor& gg, const at::Tensor& grad_y,
                                                               const at::Tensor& y, int64_t dim) {
  const char* op = "log_softmax_double_backward";
  check_floating(op, "gg", gg);
  check_same_dtype_device(op, "gg", gg, "grad_y", grad_y);
  check_same_dtype_device(op, "gg", gg, "y", y);
  TORCH_CHECK(gg.sizes() == y.sizes() && grad_y.sizes() == y.sizes(), "torchmodules.", op,
              ": gg, grad_y and y must share one shape, got ", gg.sizes(), ", ", grad_y.sizes(), ", ", y.sizes());
  const Rows r = softmax_rows(op, y, dim);
  const at::Tensor ggc = gg.contiguous(), dyc = grad_y.contiguous(), yc = y.contiguous();
  at::Tensor d_dy = new_output(y.sizes(), y.options()), d_y = new_output(y.sizes(), y.options());
  if (y.numel() > 0) TM_LAUNCH(log_softmax_double_backward, y, d_dy, d_y, ggc, dyc, yc, r);
  return {d_dy, d_y};
}

// ---- CPU kernels ---------------------------------------------------------------------------
// A row is `reduce` elements at stride `inner`. Rows along the last dim (inner == 1) are
// contiguous: their loops run along the row. Otherwise each outer index holds `inner`
// rows side by side, and the loops run across them with one accumulator per column.
// The functions marked TM_SIMD are compiled per ISA (simd.h) and use its vectorisable exp.

// y = (x - m) - log sum exp(x - m) on rows [o0, o1) of n contiguous elements. A NaN
// anywhere makes the sum and so the whole row NaN, whatever m it gave.
// Rows go in groups whose elements stay in L1 (up to 16 rows, 4096 elements): m and s of each, then
// the group's log s at once (log_in_place, vectorised), then the outputs. A scalar log per row
// took a quarter of a 40-element row's time.
// (X: T, or float for a half type's row widened first, see log_softmax_forward_kernel.)
template <typename T, typename X = T>
TM_SIMD static void log_softmax_forward_rows(T* __restrict y, const X* __restrict x, int64_t n, int64_t o0,
                                             int64_t o1) {
  using A = acc_t<T>;
  constexpr int64_t kGroup = 16;
  const int64_t group = std::clamp<int64_t>(4096 / std::max<int64_t>(n, 1), 1, kGroup);
  A m[kGroup], ls[kGroup];
  for (int64_t g0 = o0; g0 < o1; g0 += group) {
    const int64_t g1 = std::min(o1, g0 + group);
    for (int64_t o = g0; o < g1; ++o) {
      m[o - g0] = row_max(x + o * n, n);
      ls[o - g0] = row_sum_exp(x + o * n, n, m[o - g0]);
    }
    log_in_place(ls, g1 - g0);
    // y = (x - m) - log s: x - m is exact-ish at |x| ~ 1e4, x - (m + log s) is not.
    for (int64_t o = g0; o < g1; ++o) {
      const X* xo = x + o * n;
      T* yo = y + o * n;
      const A mo = m[o - g0], lo = ls[o - g0];
      for (int64_t r = 0; r < n; ++r) yo[r] = from_acc<T>((to_acc(xo[r]) - mo) - lo);
    }
  }
}

// One outer index's `inner` interleaved rows (row i: elements r * inner + i). The loops run along
// the outer index's data in runs of W elements, W = cols_width(inner): inner, or for inner < 16 a
// multiple of it (k <= reduce rows at once), so that few columns still fill whole vectors. Lane j
// of a run belongs to row j % inner: per-lane accumulators are folded into their row's (cols_fold),
// and a row's values spread back over its lanes (cols_spread). Accumulators: at most cols_width(inner).
// More than B columns are taken a block of B at a time: the block's reduce x B elements stay in
// cache through the passes (segmentation's [8, 21, 128, 128] over dim 1: 21 KB at B = 256 where
// the whole outer index is 1.4 MB), and blocks of one outer index go to different threads.
// B = 256 for the forward's three passes. The backward's two passes read two inputs: with 16 or
// more rows, blocks of 2048 columns took 10-20% less time than 256 at 21 and 32 rows (longer
// strided streams; 1 and 2 threads), the same at 150; with 8 rows 256 stayed ahead by ~10%.
constexpr int64_t kColBlock = 256;
inline int64_t grad_col_block(Rows R) { return R.reduce >= 16 ? 2048 : kColBlock; }
inline int64_t cols_width(int64_t inner) { return inner >= 16 ? inner : inner * ((64 + inner - 1) / inner); }
inline int64_t cols_width(Rows R) {  // (an outer index of few elements: their rows one run, unfolded)
  return R.reduce * R.inner <= 64 ? R.inner : std::min(cols_width(R.inner), R.reduce * R.inner);
}
// The elements one call of the cols kernels covers: `runs` runs of W lanes, run b at b * stride, then
// a tail of `tail` lanes (< W) at runs * stride. Lane j belongs to column j % cols (cols divides W).
struct ColRuns {
  int64_t runs, stride, W, tail, cols;
};
// A whole outer index, in contiguous runs of cols_width(R).
inline ColRuns runs_of(Rows R) {
  const int64_t W = cols_width(R), len = R.reduce * R.inner, full = W == R.inner ? len : len - len % W;
  return {full / W, W, W, len - full, R.inner};
}
// B columns of an outer index (a block): one run per row, at stride inner.
inline ColRuns block_of(Rows R, int64_t B) { return {R.reduce, R.inner, B, 0, B}; }

template <typename A, typename F>
static void cols_fold(A* __restrict v, int64_t inner, int64_t W, const F& op) {
  for (int64_t q = inner; q < W; q += inner)
    for (int64_t i = 0; i < inner; ++i) v[i] = op(v[i], v[q + i]);
}
template <typename A>
static void cols_spread(A* __restrict v, int64_t inner, int64_t W) {
  for (int64_t q = inner; q < W; q += inner)
    for (int64_t i = 0; i < inner; ++i) v[q + i] = v[i];
}

// f(k, j) for the elements k of c, j its lane: the whole runs, then the tail.
template <typename F>
TM_INLINE void cols_each(const ColRuns& c, const F& f) {
  for (int64_t b = 0; b < c.runs; ++b)
    for (int64_t j = 0; j < c.W; ++j) f(b * c.stride + j, j);
  for (int64_t j = 0; j < c.tail; ++j) f(c.runs * c.stride + j, j);
}
// acc[j] = op(acc[j], f(k, j)) over those elements.
template <typename A, typename Op, typename F>
TM_INLINE void cols_accumulate(A* __restrict acc, const ColRuns& c, const Op& op, const F& f) {
  cols_each(c, [&](int64_t k, int64_t j) { acc[j] = op(acc[j], f(k, j)); });
}

// The forward over the interleaved rows of c; m and s: W accumulators each.
template <typename T>
TM_SIMD static void log_softmax_forward_cols(T* __restrict yo, const T* __restrict xo, const ColRuns& c,
                                             acc_t<T>* __restrict m, acc_t<T>* __restrict s) {
  using A = acc_t<T>;
  const auto max_op = [](A a, A b) { return std::max(a, b); };
  const auto add_op = [](A a, A b) { return a + b; };
  for (int64_t j = 0; j < c.W; ++j) { m[j] = -std::numeric_limits<A>::infinity(); s[j] = A(0); }
  cols_accumulate(m, c, max_op, [&](int64_t k, int64_t) { return to_acc(xo[k]); });
  cols_fold(m, c.cols, c.W, max_op);
  cols_spread(m, c.cols, c.W);
  cols_accumulate(s, c, add_op, [&](int64_t k, int64_t j) { return fast_exp(to_acc(xo[k]) - m[j]); });
  cols_fold(s, c.cols, c.W, add_op);
  for (int64_t i = 0; i < c.cols; ++i) s[i] = fast_log(s[i]);
  cols_spread(s, c.cols, c.W);
  cols_each(c, [&](int64_t k, int64_t j) { yo[k] = from_acc<T>((to_acc(xo[k]) - m[j]) - s[j]); });
}

// out[k] = g[k] - exp(y[k]) s, an element of a row of the backward (row_map).
template <typename T, typename X, typename A>
struct GradElem {
  T* __restrict out;
  const X* __restrict g;
  const X* __restrict y;
  A s;
  TM_INLINE void operator()(int64_t k) const { out[k] = from_acc<T>(to_acc(g[k]) - fast_exp(to_acc(y[k])) * s); }
};

// kDouble == false: out0 = dx = dy - exp(y) * sum(dy)                         (g0 = dy)
// kDouble == true:  out0 = d_dy = gg - sum(gg exp(y)), out1 = d_y = -gg exp(y) sum(dy)
//                   (g0 = gg, g1 = dy)
// (X: T, or float for a half type's rows widened first, as the forward's.)
template <typename T, bool kDouble, typename X = T>
TM_SIMD static void log_softmax_grad_rows(T* __restrict out0, T* __restrict out1, const X* __restrict g0,
                                          const X* __restrict g1, const X* __restrict y, int64_t n, int64_t o0,
                                          int64_t o1) {
  using A = acc_t<T>;
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t base = o * n;
    A s = 0, t = 0;
    if (!kDouble) {
      s = row_sum(g0 + base, n);
      const GradElem<T, X, A> f{out0 + base, g0 + base, y + base, s};
      if constexpr (std::is_same_v<T, A>) {
        row_map<64 / sizeof(A)>(n, f);
      } else {  // (bfloat16 out: GCC's own loop, 1.5x faster than row_map's 16 lanes there)
        for (int64_t k = 0; k < n; ++k) f(k);
      }
    } else {
#pragma omp simd reduction(+ : s, t)
      for (int64_t r = 0; r < n; ++r) {
        s += to_acc(g1[base + r]);                                   // sum dy
        t += to_acc(g0[base + r]) * fast_exp(to_acc(y[base + r]));  // sum gg exp(y)
      }
      for (int64_t r = 0; r < n; ++r) {
        const int64_t k = base + r;
        out0[k] = from_acc<T>(to_acc(g0[k]) - t);
        out1[k] = from_acc<T>(-to_acc(g0[k]) * fast_exp(to_acc(y[k])) * s);
      }
    }
  }
}

// The same over the interleaved rows of c at offset base, as the forward's; s, t: W accumulators.
template <typename T, bool kDouble>
TM_SIMD static void log_softmax_grad_cols(T* __restrict out0, T* __restrict out1, const T* __restrict g0,
                                          const T* __restrict g1, const T* __restrict y, const ColRuns& c,
                                          int64_t base, acc_t<T>* __restrict s, acc_t<T>* __restrict t) {
  using A = acc_t<T>;
  const auto add_op = [](A a, A b) { return a + b; };
  out0 += base, g0 += base, y += base;
  if (kDouble) out1 += base, g1 += base;
  for (int64_t j = 0; j < c.W; ++j) { s[j] = A(0); t[j] = A(0); }
  cols_accumulate(s, c, add_op, [&](int64_t k, int64_t) { return to_acc(kDouble ? g1[k] : g0[k]); });
  cols_fold(s, c.cols, c.W, add_op);
  cols_spread(s, c.cols, c.W);
  if (kDouble) {
    cols_accumulate(t, c, add_op, [&](int64_t k, int64_t) { return to_acc(g0[k]) * fast_exp(to_acc(y[k])); });
    cols_fold(t, c.cols, c.W, add_op);
    cols_spread(t, c.cols, c.W);
  }
  const auto out = [&](int64_t k, int64_t j) {
    const A p = fast_exp(to_acc(y[k]));
    if (!kDouble) {
      out0[k] = from_acc<T>(to_acc(g0[k]) - p * s[j]);
    } else {
      out0[k] = from_acc<T>(to_acc(g0[k]) - t[j]);
      out1[k] = from_acc<T>(-to_acc(g0[k]) * p * s[j]);
    }
  };
  cols_each(c, out);
}

// Short rows (n < kShortRow, short_rows.h): m and s of a block of rows at once, then
//   y = (x - m) - log s.
template <typename T>
TM_SIMD static void log_softmax_forward_short_rows(T* __restrict y, const T* __restrict x, int64_t n, int64_t o0,
                                                   int64_t o1) {
  using A = acc_t<T>;
  A t[kShortBlock], m[kShortBlock], s[kShortBlock];
  const int64_t rows = kShortBlock / n;
  for (int64_t b0 = o0; b0 < o1; b0 += rows) {
    const int64_t b1 = std::min(o1, b0 + rows);
    const T* xb = x + b0 * n;
    short_rows_max_sumexp(xb, n, b1 - b0, m, s, t);
    log_in_place(s, b1 - b0);
    for (int64_t b = 0; b < b1 - b0; ++b)
      for (int64_t r = 0; r < n; ++r) y[(b0 + b) * n + r] = from_acc<T>((to_acc(xb[b * n + r]) - m[b]) - s[b]);
  }
}

// dx = dy - exp(y) s over a block of rows shorter than a vector as one flat loop, with s spread per
// element (longer rows: row_map, a vector at a time).
template <typename T>
TM_SIMD static void log_softmax_backward_flat(T* __restrict dx, const T* __restrict dy, const T* __restrict y,
                                              const acc_t<T>* __restrict s, int64_t len) {
  for (int64_t k = 0; k < len; ++k) dx[k] = from_acc<T>(to_acc(dy[k]) - fast_exp(to_acc(y[k])) * s[k]);
}

template <typename T>
static void log_softmax_backward_short_rows(T* dx, const T* dy, const T* y, int64_t n, int64_t o0, int64_t o1) {
  using A = acc_t<T>;
  A s[kShortBlock];  // each row's sum(dy), once per element
  const int64_t rows = kShortBlock / n;
  for (int64_t b0 = o0; b0 < o1; b0 += rows) {
    const int64_t b1 = std::min(o1, b0 + rows), off = b0 * n;
    for (int64_t b = 0; b < b1 - b0; ++b) {
      A sb = 0;
      for (int64_t r = 0; r < n; ++r) sb += to_acc(dy[off + b * n + r]);
      for (int64_t r = 0; r < n; ++r) s[b * n + r] = sb;
    }
    log_softmax_backward_flat(dx + off, dy + off, y + off, s, (b1 - b0) * n);
  }
}

// The forward widens a half type's contiguous rows to float this many elements at a time (at least a row).
constexpr int64_t kHalfRows = 4096;

// Outer indices split over threads, about kGrain elements each.
template <typename F>
static void for_outer(Rows R, const F& f) {
  at::parallel_for(0, R.outer, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, R.reduce * R.inner)), f);
}

// The column work of R (inner > 1): f(base, c, acc0, acc1) for each outer index as runs_of(R), or with
// more than B columns for each block of B (any outer index's blocks on any thread); acc0 and
// acc1: c.W accumulators each. A column sees the same operations in the same order either way.
template <typename A, typename F>
static void for_cols(Rows R, int64_t B, const F& f) {
  const int64_t len = R.reduce * R.inner;
  if (R.inner <= B) {
    return for_outer(R, [&](int64_t o0, int64_t o1) {
      const ColRuns c = runs_of(R);
      std::vector<A> acc(2 * c.W);
      for (int64_t o = o0; o < o1; ++o) f(o * len, c, acc.data(), acc.data() + c.W);
    });
  }
  const int64_t nb = (R.inner + B - 1) / B;
  at::parallel_for(0, R.outer * nb, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, R.reduce * B)), [&](int64_t b0, int64_t b1) {
    std::vector<A> acc(2 * B);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b / nb, c0 = b % nb * B;
      f(o * len + c0, block_of(R, std::min(B, R.inner - c0)), acc.data(), acc.data() + B);
    }
  });
}

template <typename T>
static void log_softmax_forward_kernel(T* y, const T* x, Rows R) {
  using A = acc_t<T>;
  if (R.inner > 1)
    return for_cols<A>(R, kColBlock, [&](int64_t base, const ColRuns& c, A* m, A* s) {
      log_softmax_forward_cols(y + base, x + base, c, m, s);
    });
  for_outer(R, [&](int64_t o0, int64_t o1) {  // rows along the last dim
    if (R.reduce < kShortRow) return log_softmax_forward_short_rows(y, x, R.reduce, o0, o1);
    if constexpr (sizeof(T) == 2) {
      // A half type's row is widened to float first: over 16-bit inputs GCC runs the exp loop on
      // 256-bit vectors, over floats on 512-bit ones (bfloat16 at 1024 columns: 1.4x torch's time,
      // where our float32 took 0.95x). The same float arithmetic: the float32 kernel, rounded once.
      // float16 also writes a float row, rounded on F16C (half_convert.h). Rows go k at a time (k n <= 4096
      // floats: a call per row cost bfloat16's 50-100 columns 1.5-2x torch's time).
      const int64_t n = R.reduce, k = std::max<int64_t>(1, kHalfRows / n);
      std::vector<float> rows(2 * k * n);
      float *row = rows.data(), *out = row + k * n;
      for (int64_t o = o0; o < o1; o += k) {
        const int64_t m = std::min(k, o1 - o);
        widen_run(row, x + o * n, m * n);
        if constexpr (std::is_same_v<T, c10::Half>) {
          log_softmax_forward_rows<float>(out, row, n, 0, m);
          narrow_half(y + o * n, out, m * n);
        } else {
          log_softmax_forward_rows<T, float>(y + o * n, row, n, 0, m);
        }
      }
    } else {
      log_softmax_forward_rows(y, x, R.reduce, o0, o1);
    }
  });
}

template <typename T, bool kDouble>
static void log_softmax_grad_kernel(T* out0, T* out1, const T* g0, const T* g1, const T* y, Rows R) {
  using A = acc_t<T>;
  if (R.inner > 1)
    return for_cols<A>(R, grad_col_block(R), [&](int64_t base, const ColRuns& c, A* s, A* t) {
      log_softmax_grad_cols<T, kDouble>(out0, out1, g0, g1, y, c, base, s, t);
    });
  for_outer(R, [&](int64_t o0, int64_t o1) {  // rows along the last dim
    if (!kDouble && R.reduce < 64 / int64_t(sizeof(A)))
      return log_softmax_backward_short_rows(out0, g0, y, R.reduce, o0, o1);
    if constexpr (sizeof(T) == 2) {  // widened to float first, as the forward's rows (a row at a time: blocks of rows
      // measured no faster here)
      const int64_t n = R.reduce;
      std::vector<float> rows(5 * n);
      float *fg0 = rows.data(), *fg1 = fg0 + n, *fy = fg1 + n, *f0 = fy + n, *f1 = f0 + n;
      for (int64_t o = o0; o < o1; ++o) {
        widen_run(fg0, g0 + o * n, n);
        if (kDouble) widen_run(fg1, g1 + o * n, n);
        widen_run(fy, y + o * n, n);
        if constexpr (std::is_same_v<T, c10::Half>) {
          log_softmax_grad_rows<float, kDouble>(f0, f1, fg0, fg1, fy, n, 0, 1);
          narrow_half(out0 + o * n, f0, n);
          if (kDouble) narrow_half(out1 + o * n, f1, n);
        } else {
          log_softmax_grad_rows<T, kDouble, float>(out0 + o * n, kDouble ? out1 + o * n : nullptr, fg0, fg1, fy, n,
                                                   0, 1);
        }
      }
    } else {
      log_softmax_grad_rows<T, kDouble>(out0, out1, g0, g1, y, R.reduce, o0, o1);
    }
  });
}

void log_softmax_forward_cpu(at::TensorBase& y, const at::TensorBase& x, Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "log_softmax_forward_cpu", [&] {
    log_softmax_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r);
  });
}

void log_softmax_backward_cpu(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& y, Rows r) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "log_softmax_backward_cpu", [&] {
    log_softmax_grad_kernel<scalar_t, false>(dx.data_ptr<scalar_t>(), nullptr, dy.data_ptr<scalar_t>(), nullptr,
                                             y.data_ptr<scalar_t>(), r);
  });
}

void log_softmax_double_backward_cpu(at::TensorBase& d_dy, at::TensorBase& d_y, const at::TensorBase& gg, const at::TensorBase& dy,
                                     const at::TensorBase& y, Rows r) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "log_softmax_double_backward_cpu", [&] {
    log_softmax_grad_kernel<scalar_t, true>(d_dy.data_ptr<scalar_t>(), d_y.data_ptr<scalar_t>(),
                                            gg.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                            r);
  });
}

static void register_glue(torch::Library& m) {
  m.impl("log_softmax_forward", &log_softmax_forward);
  m.impl("log_softmax_backward", &log_softmax_backward);
  m.impl("log_softmax_double_backward", &log_softmax_double_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
