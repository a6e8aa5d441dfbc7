// LogSoftmax over one dim.
//   Forward:  y_i = x_i - m - log sum_j exp(x_j - m), m = max_j x_j (stable for |x| ~ 1e4;
//             -inf entries give -inf; an all -inf row or a NaN gives NaN, as torch).
//   Backward: dx_i = dy_i - exp(y_i) sum_j dy_j.
//   Double backward, for gg = d/d(dx):
//             d_dy_k = gg_k - sum_i gg_i exp(y_i),   d_y_k = -gg_k exp(y_k) sum_j dy_j.
#include "ops.h"

#include <cmath>

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
  TORCH_CHECK_VALUE(grad_y.sizes() == y.sizes(), "torchmodules.log_softmax_backward: grad_y has shape ",
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
  TORCH_CHECK_VALUE(gg.sizes() == y.sizes() && grad_y.sizes() == y.sizes(), "torchmodules.", op,
                    ": gg, grad_y and y must share one shape, got ", gg.sizes(), ", ", grad_y.sizes(), ", ", y.sizes());
  const Rows r = softmax_rows(op, y, dim);
  const at::Tensor ggc = gg.contiguous(), dyc = grad_y.contiguous(), yc = y.contiguous();
  at::Tensor d_dy = new_output(y.sizes(), y.options()), d_y = new_output(y.sizes(), y.options());
  if (y.numel() > 0) TM_LAUNCH(log_softmax_double_backward, y, d_dy, d_y, ggc, dyc, yc, r);
  return {d_dy, d_y};
}

// ---- CPU kernels ---------------------------------------------------------------------------
// A row is `reduce` elements at stride `inner`. For each outer index the kernels keep one
// accumulator per inner column, so inner loops run over contiguous memory.

static inline float tm_exp(float v) { return std::exp(v); }
static inline double tm_exp(double v) { return std::exp(v); }
static inline float tm_log(float v) { return std::log(v); }
static inline double tm_log(double v) { return std::log(v); }

template <typename T>
static void log_softmax_forward_kernel(T* y, const T* x, Rows R) {
  using A = acc_t<T>;
  at::parallel_for(0, R.outer, std::max<int64_t>(1, kGrain / (R.reduce * R.inner)), [&](int64_t o0, int64_t o1) {
    std::vector<A> m(R.inner), s(R.inner);
    for (int64_t o = o0; o < o1; ++o) {
      const T* xo = x + o * R.reduce * R.inner;
      T* yo = y + o * R.reduce * R.inner;
      for (int64_t i = 0; i < R.inner; ++i) { m[i] = -INFINITY; s[i] = A(0); }
      for (int64_t r = 0; r < R.reduce; ++r)  // row max; NaN wins
        for (int64_t i = 0; i < R.inner; ++i) {
          const A v = static_cast<A>(xo[r * R.inner + i]);
          m[i] = (v > m[i] || v != v) && m[i] == m[i] ? v : m[i];
        }
      for (int64_t r = 0; r < R.reduce; ++r)
        for (int64_t i = 0; i < R.inner; ++i) s[i] += tm_exp(static_cast<A>(xo[r * R.inner + i]) - m[i]);
      for (int64_t i = 0; i < R.inner; ++i) s[i] = tm_log(s[i]);  // log sum_j exp(x_j - m)
      // y = (x - m) - log s: x - m is exact-ish at |x| ~ 1e4, x - (m + log s) is not.
      for (int64_t r = 0; r < R.reduce; ++r)
        for (int64_t i = 0; i < R.inner; ++i)
          yo[r * R.inner + i] = static_cast<T>((static_cast<A>(xo[r * R.inner + i]) - m[i]) - s[i]);
    }
  });
}

// kDouble == false: out0 = dx = dy - exp(y) * sum(dy)                         (g0 = dy)
// kDouble == true:  out0 = d_dy = gg - sum(gg exp(y)), out1 = d_y = -gg exp(y) sum(dy)
//                   (g0 = gg, g1 = dy)
template <typename T, bool kDouble>
static void log_softmax_grad_kernel(T* out0, T* out1, const T* g0, const T* g1, const T* y, Rows R) {
  using A = acc_t<T>;
  at::parallel_for(0, R.outer, std::max<int64_t>(1, kGrain / (R.reduce * R.inner)), [&](int64_t o0, int64_t o1) {
    std::vector<A> s(R.inner), t(R.inner);
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t base = o * R.reduce * R.inner;
      for (int64_t i = 0; i < R.inner; ++i) { s[i] = A(0); t[i] = A(0); }
      for (int64_t r = 0; r < R.reduce; ++r)
        for (int64_t i = 0; i < R.inner; ++i) {
          const int64_t k = base + r * R.inner + i;
          if (!kDouble) {
            s[i] += static_cast<A>(g0[k]);
          } else {
            s[i] += static_cast<A>(g1[k]);                                   // sum dy
            t[i] += static_cast<A>(g0[k]) * tm_exp(static_cast<A>(y[k]));   // sum gg exp(y)
          }
        }
      for (int64_t r = 0; r < R.reduce; ++r)
        for (int64_t i = 0; i < R.inner; ++i) {
          const int64_t k = base + r * R.inner + i;
          const A p = tm_exp(static_cast<A>(y[k]));
          if (!kDouble) {
            out0[k] = static_cast<T>(static_cast<A>(g0[k]) - p * s[i]);
          } else {
            out0[k] = static_cast<T>(static_cast<A>(g0[k]) - t[i]);
            out1[k] = static_cast<T>(-static_cast<A>(g0[k]) * p * s[i]);
          }
        }
    }
  });
}

void log_softmax_forward_cpu(at::Tensor& y, const at::Tensor& x, Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "log_softmax_forward_cpu", [&] {
    log_softmax_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r);
  });
}

void log_softmax_backward_cpu(at::Tensor& dx, const at::Tensor& dy, const at::Tensor& y, Rows r) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "log_softmax_backward_cpu", [&] {
    log_softmax_grad_kernel<scalar_t, false>(dx.data_ptr<scalar_t>(), nullptr, dy.data_ptr<scalar_t>(), nullptr,
                                             y.data_ptr<scalar_t>(), r);
  });
}

void log_softmax_double_backward_cpu(at::Tensor& d_dy, at::Tensor& d_y, const at::Tensor& gg, const at::Tensor& dy,
                                     const at::Tensor& y, Rows r) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "log_softmax_double_backward_cpu", [&] {
    log_softmax_grad_kernel<scalar_t, true>(d_dy.data_ptr<scalar_t>(), d_y.data_ptr<scalar_t>(),
                                            gg.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                            r);
  });
}

TORCH_LIBRARY_IMPL(torchmodules, CPU, m) {
  m.impl("log_softmax_forward", &log_softmax_forward);
  m.impl("log_softmax_backward", &log_softmax_backward);
  m.impl("log_softmax_double_backward", &log_softmax_double_backward);
}

}  // namespace torchmodules
