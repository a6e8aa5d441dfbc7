// MSELoss.  x and t broadcast together (as torch) to n elements, e_i = (x_i - t_i)^2.
//   Forward:  y = e (none), sum_i e_i (sum), sum_i e_i / n (mean; n = 0 gives 0/0 = NaN, as torch).
//   Backward: dx_i = c (x_i - t_i) dy_i, c = 2 (none, sum) or 2 / n (mean), one dy for mean and
//             sum; dt = -dx is the same op with x and t swapped. Both have the broadcast shape
//             and are summed down to their input's shape by add_backward.
//   Double backward, for gg = d/d(dx):
//             d_dy = c (x - t) gg (summed for mean and sum),  d_x = c dy gg,  d_t = -c dy gg.
// Sums are deterministic and blocked (loss_reduce.h); the half types compute in float.
#include "half_convert.h"
#include "loss_reduce.h"
#include "ops.h"
#include "simd.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

namespace {
std::vector<int64_t> mse_shape(const char* op, const at::Tensor& x, const at::Tensor& t, int64_t reduction) {
  check_reduction(op, reduction);
  std::vector<int64_t> shape = broadcast_shape(op, x.sizes(), t.sizes());  // first, as torch
  check_floating(op, "input", x);
  check_floating(op, "target", t);
  check_same_dtype_device(op, "input", x, "target", t);
  return shape;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// dy (or gg) must be one value for mean and sum, the broadcast shape for none.
void check_grad(const char* op, const char* name, const at::Tensor& g, const at::Tensor& x,
                const std::vector<int64_t>& shape, int64_t reduction) {
  check_floating(op, name, g);
  check_same_dtype_device(op, "input", x, name, g);
  const bool ok = reduction == kNone ? g.sizes() == at::IntArrayRef(shape) : g.dim() == 0;
  TORCH_CHECK(ok, "torchmodules.", op, ": ", name, " has shape ", g.sizes(), ", expected ",
              reduction == kNone ? at::IntArrayRef(shape) : at::IntArrayRef(), " for reduction ", reduction);
}
}  // namespace

at::Tensor mse_loss_forward(const at::Tensor& x, const at::Tensor& t, int64_t reduction) {
  const std::vector<int64_t> shape = mse_shape("mse_loss", x, t, reduction);
  const int64_t n = numel_of(shape);
  at::Tensor y = new_output(reduction == kNone ? at::IntArrayRef(shape) : at::IntArrayRef(), x.options());
  if (y.numel() > 0) {  // mean and sum write their one value even for n = 0
    const Broadcast2 bc = make_broadcast2("mse_loss", shape, x, t);  // reads x and t in place, any strides
    TM_LAUNCH(mse_loss_forward, x, y, x, t, bc, n, reduction);
  }
  return y;
}

at::Tensor mse_loss_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& t, int64_t reduction) {
  const char* op = "mse_loss_backward";
  const std::vector<int64_t> shape = mse_shape(op, x, t, reduction);
  check_grad(op, "grad_y", grad_y, x, shape, reduction);
  const at::Tensor dyc = grad_y.contiguous();
  at::Tensor dx = new_output(shape, x.options());
  if (dx.numel() > 0) {
    const Broadcast2 bc = make_broadcast2(op, shape, x, t);
    TM_LAUNCH(mse_loss_backward, x, dx, dyc, x, t, bc, dx.numel(), reduction);
  }
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mse_loss_double_backward(const at::Tensor& gg, const at::Tensor& grad_y,
                                                                        const at::Tensor& x, const at::Tensor& t,
                                                                        int64_t reduction) {
  const char* op = "mse_loss_double_backward";
  const std::vector<int64_t> shape = mse_shape(op, x, t, reduction);
  check_grad(op, "grad_y", grad_y, x, shape, reduction);
  check_grad(op, "gg", gg, x, shape, kNone);  // gg = d/d(dx) has dx's (the broadcast) shape
  const at::Tensor ggc = gg.contiguous(), dyc = grad_y.contiguous();
  at::Tensor d_dy = new_output(grad_y.sizes(), x.options());
  at::Tensor d_x = new_output(shape, x.options()), d_t = new_output(shape, x.options());
  if (d_dy.numel() > 0) {  // mean and sum write d_dy even for n = 0
    const Broadcast2 bc = make_broadcast2(op, shape, x, t);
    TM_LAUNCH(mse_loss_double_backward, x, d_dy, d_x, d_t, ggc, dyc, x, t, bc, d_x.numel(), reduction);
  }
  return {d_dy, d_x, d_t};
}

// ---- CPU kernels ---------------------------------------------------------------------------

namespace {
// d[k] = x[k sx] - t[k st] in acc_t for 0 <= k < len: one run of the broadcast.
template <typename T>
TM_SIMD void diff_run(acc_t<T>* __restrict d, const T* __restrict x, int64_t sx, const T* __restrict t, int64_t st,
                      int64_t len) {
  map2_run(d, x, sx, t, st, len, [](T u, T v) { return to_acc(u) - to_acc(v); });
}

// x_i - t_i in acc_t: x and t read in place when both are flat (same shape, contiguous), else
// gathered block by block along the broadcast's runs (for_each_run).
template <typename T>
struct Diff {
  const T* x;
  const T* t;
  const Broadcast2& bc;
  bool flat;
  static constexpr int64_t kBlock = 1024;
  // f(b0, b1, d) for the blocks [b0, b1) of [s, e), d[k] = x_{b0+k} - t_{b0+k}.
  template <class F>
  void blocks(int64_t s, int64_t e, const F& f) const {
    acc_t<T> d[kBlock];
    for (int64_t b0 = s; b0 < e; b0 += kBlock) {
      const int64_t b1 = std::min(e, b0 + kBlock);
      for_each_run(bc, b0, b1, [&](int64_t i, int64_t len, int64_t ox, int64_t sx, int64_t ot, int64_t st) {
        diff_run(d + (i - b0), x + ox, sx, t + ot, st, len);
      });
      f(b0, b1, d);
    }
  }
};

template <typename T>
Diff<T> make_diff(const at::TensorBase& x, const at::TensorBase& t, const Broadcast2& bc) {
  const bool flat = bc.ndim == 1 && bc.stride_a[0] == 1 && bc.stride_b[0] == 1;
  return Diff<T>{x.data_ptr<T>(), t.data_ptr<T>(), bc, flat};
}

// Same-shape contiguous x and t: loops without the broadcast offsets, vectorised (simd.h).
// sum_{i0 <= i < i1} (x_i - t_i)^2
template <typename T>
TM_SIMD acc_t<T> sq_diff_sum_flat(const T* __restrict x, const T* __restrict t, int64_t i0, int64_t i1) {
  using A = acc_t<T>;
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = i0; i < i1; ++i) {
    const A d = to_acc(x[i]) - to_acc(t[i]);
    s += d * d;
  }
  return s;
}

// y_i = (x_i - t_i)^2 (kSquare) or c (x_i - t_i) dy_i (dy_i = dy[0] unless kPer), for i0 <= i < i1.
template <typename T, bool kSquare, bool kPer>
TM_SIMD void diff_map_flat(T* __restrict y, const T* __restrict x, const T* __restrict t, const T* __restrict dy,
                           acc_t<T> c, int64_t i0, int64_t i1) {
  using A = acc_t<T>;
  for (int64_t i = i0; i < i1; ++i) {
    const A d = to_acc(x[i]) - to_acc(t[i]);
    y[i] = from_acc<T>(kSquare ? d * d : c * d * to_acc(dy[kPer ? i : 0]));
  }
}

// The same on a gathered block d of differences: y[k] = d[k]^2 or c d[k] dy[k] (dy[0] unless kPer).
template <typename T, bool kSquare, bool kPer>
TM_SIMD void diff_map_block(T* __restrict y, const acc_t<T>* __restrict d, const T* __restrict dy, acc_t<T> c,
                            int64_t len) {
  for (int64_t k = 0; k < len; ++k) y[k] = from_acc<T>(kSquare ? d[k] * d[k] : c * d[k] * to_acc(dy[kPer ? k : 0]));
}

template <typename A>
A mse_scale(int64_t reduction, int64_t n) {  // c = 2 / n (mean) or 2
  return reduction == kMean ? A(2) / A(n) : A(2);
}
}  // namespace

// y_i = (x_i - t_i)^2 (none), or y = sum_i (x_i - t_i)^2 [/ n].
template <typename T>
static void mse_forward_kernel(T* y, const Diff<T>& diff, int64_t n, int64_t reduction) {
  using A = acc_t<T>;
  if (reduction == kNone) {
    at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
      if (diff.flat)  // (float16 in float blocks, its conversions on F16C: half_convert.h)
        return in_float_blocks(y, s, e, [](auto* o, const auto* x, const auto* t, int64_t len) {
          diff_map_flat<std::decay_t<decltype(*x)>, true, false>(o, x, t, nullptr, A(0), 0, len);
        }, diff.x, diff.t);
      diff.blocks(s, e, [&](int64_t b0, int64_t b1, const A* d) {
        diff_map_block<T, true, false>(y + b0, d, nullptr, A(0), b1 - b0);
      });
    });
    return;
  }
  const auto s = blocked_sum<1, A>(n, [&](int64_t i0, int64_t i1, std::array<A, 1>& acc) {
    if (diff.flat) {
      acc[0] += sq_diff_sum_flat(diff.x, diff.t, i0, i1);
      return;
    }
    diff.blocks(i0, i1, [&](int64_t b0, int64_t b1, const A* d) {
      lane_sum<1, A>(0, b1 - b0, acc, [&](int64_t k, std::array<A, 1>& a) { a[0] += d[k] * d[k]; });
    });
  });
  y[0] = static_cast<T>(reduction == kMean ? s[0] / A(n) : s[0]);
}

// dx_i = c (x_i - t_i) dy_i (dy_i = dy for mean and sum).
template <typename T>
static void mse_backward_kernel(T* dx, const T* dy, const Diff<T>& diff, int64_t n, int64_t reduction) {
  using A = acc_t<T>;
  const A c = mse_scale<A>(reduction, n);
  const bool per = reduction == kNone;
  at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
    if (diff.flat && per)
      return in_float_blocks(dx, s, e, [&](auto* o, const auto* x, const auto* t, const auto* g, int64_t len) {
        diff_map_flat<std::decay_t<decltype(*x)>, false, true>(o, x, t, g, c, 0, len);
      }, diff.x, diff.t, dy);
    if (diff.flat) return diff_map_flat<T, false, false>(dx, diff.x, diff.t, dy, c, s, e);
    diff.blocks(s, e, [&](int64_t b0, int64_t b1, const A* d) {
      if (per) diff_map_block<T, false, true>(dx + b0, d, dy + b0, c, b1 - b0);
      else diff_map_block<T, false, false>(dx + b0, d, dy, c, b1 - b0);
    });
  });
}

// d_dy = c (x - t) gg (none: per element; mean, sum: summed), d_x = c dy gg, d_t = -d_x.
template <typename T>
static void mse_double_backward_kernel(T* d_dy, T* d_x, T* d_t, const T* gg, const T* dy, const Diff<T>& diff,
                                       int64_t n, int64_t reduction) {
  using A = acc_t<T>;
  const A c = mse_scale<A>(reduction, n);
  const bool per = reduction == kNone;
  at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) {
      const A v = c * static_cast<A>(dy[per ? i : 0]) * static_cast<A>(gg[i]);
      d_x[i] = static_cast<T>(v);
      d_t[i] = static_cast<T>(-v);
    }
    if (per)
      diff.blocks(s, e, [&](int64_t b0, int64_t b1, const A* d) {
        for (int64_t i = b0; i < b1; ++i) d_dy[i] = static_cast<T>(c * d[i - b0] * static_cast<A>(gg[i]));
      });
  });
  if (per) return;
  // Each term scaled before the sum, so n = 0 gives 0 (not inf * 0).
  const auto s = blocked_sum<1, A>(n, [&](int64_t i0, int64_t i1, std::array<A, 1>& acc) {
    diff.blocks(i0, i1, [&](int64_t b0, int64_t b1, const A* d) {
      lane_sum<1, A>(0, b1 - b0, acc, [&](int64_t k, std::array<A, 1>& a) { a[0] += c * d[k] * static_cast<A>(gg[b0 + k]); });
    });
  });
  d_dy[0] = static_cast<T>(s[0]);
}

void mse_loss_forward_cpu(at::TensorBase& y, const at::TensorBase& x, const at::TensorBase& t, const Broadcast2& bc, int64_t n,
                          int64_t reduction) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "mse_loss_forward_cpu", [&] {
    mse_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), make_diff<scalar_t>(x, t, bc), n, reduction);
  });
}

void mse_loss_backward_cpu(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& t,
                           const Broadcast2& bc, int64_t n, int64_t reduction) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "mse_loss_backward_cpu", [&] {
    mse_backward_kernel<scalar_t>(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), make_diff<scalar_t>(x, t, bc), n,
                                  reduction);
  });
}

void mse_loss_double_backward_cpu(at::TensorBase& d_dy, at::TensorBase& d_x, at::TensorBase& d_t, const at::TensorBase& gg,
                                  const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& t, const Broadcast2& bc,
                                  int64_t n, int64_t reduction) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "mse_loss_double_backward_cpu", [&] {
    mse_double_backward_kernel<scalar_t>(d_dy.data_ptr<scalar_t>(), d_x.data_ptr<scalar_t>(),
                                         d_t.data_ptr<scalar_t>(), gg.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                                         make_diff<scalar_t>(x, t, bc), n, reduction);
  });
}

static void register_glue(torch::Library& m) {
  m.impl("mse_loss_forward", &mse_loss_forward);
  m.impl("mse_loss_backward", &mse_loss_backward);
  m.impl("mse_loss_double_backward", &mse_loss_double_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
