// Autograd kernels of the row reductions, amax and LogSoftmax (the pattern: csrc/autograd.h).
#include "autograd.h"

#include <ATen/TensorOperators.h>

#include <vector>

namespace torchmodules {
namespace {

using at::IntArrayRef;
using at::Tensor;

// ---- amax: y = max over dims;  dx = (dy / c) [x == y], c = #{x == y} ------------------------

TM_OP(amax_forward_op, "amax_forward", Tensor(const Tensor&, IntArrayRef, bool))
TM_OP(amax_backward_op, "amax_backward", Tensor(const Tensor&, const Tensor&, const Tensor&, IntArrayRef, bool))
TM_OP(amax_double_backward_op, "amax_double_backward",
      Tensor(const Tensor&, const Tensor&, const Tensor&, IntArrayRef, bool))

// x, y and (dim, keepdim) for the backward of an amax op.
void save_amax(AutogradContext* ctx, const Tensor& x, const Tensor& y, IntArrayRef dim, bool keepdim) {
  ctx->save_for_backward({x, y});
  ctx->saved_data["dim"] = dim.vec();
  ctx->saved_data["keepdim"] = keepdim;
}

// op(g, x, y, dim, keepdim) with the saved x, y, dim, keepdim.
template <class Op>
Tensor call_amax(AutogradContext* ctx, const Op& op, const Tensor& g) {
  const auto s = ctx->get_saved_variables();
  return op.call(g, s[0], s[1], ctx->saved_data["dim"].toIntVector(),
                 ctx->saved_data["keepdim"].toBool());
}

struct AmaxForward : Function<AmaxForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, IntArrayRef dim, bool keepdim) {
    Tensor y = below(amax_forward_op(), x, dim, keepdim);
    save_amax(ctx, x, y, dim, keepdim);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    return {call_amax(ctx, amax_backward_op(), dy[0]), Tensor(), Tensor()};
  }
};

// dx is linear in dy; x and y only select (zero gradient almost everywhere):
// d/d(dy) = sum over the row of (gg / c) [x == y], the double backward op.
struct AmaxBackward : Function<AmaxBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& x, const Tensor& y, IntArrayRef dim,
                        bool keepdim) {
    save_amax(ctx, x, y, dim, keepdim);
    return below(amax_backward_op(), dy, x, y, dim, keepdim);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    return {call_amax(ctx, amax_double_backward_op(), gg[0]), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The double backward is linear in gg, the transpose of the backward: its backward is the backward op.
struct AmaxDoubleBackward : Function<AmaxDoubleBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& gg, const Tensor& x, const Tensor& y, IntArrayRef dim,
                        bool keepdim) {
    save_amax(ctx, x, y, dim, keepdim);
    return below(amax_double_backward_op(), gg, x, y, dim, keepdim);
  }
  static variable_list backward(AutogradContext* ctx, variable_list ggg) {
    return {call_amax(ctx, amax_backward_op(), ggg[0]), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ---- LogSoftmax: y = x - log sum exp(x);  dx = dy - exp(y) sum(dy) ---------------------------

TM_OP(log_softmax_forward_op, "log_softmax_forward", Tensor(const Tensor&, int64_t))
TM_OP(log_softmax_backward_op, "log_softmax_backward", Tensor(const Tensor&, const Tensor&, int64_t))
TM_OP(log_softmax_double_backward_op, "log_softmax_double_backward",
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t))

int64_t saved_dim(AutogradContext* ctx) { return ctx->saved_data["dim"].toInt(); }

// Saves y (the output) for dx = dy - exp(y) sum(dy).
struct LogSoftmaxForward : Function<LogSoftmaxForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, int64_t dim) {
    Tensor y = below(log_softmax_forward_op(), x, dim);
    ctx->save_for_backward({y});
    ctx->saved_data["dim"] = dim;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    return {log_softmax_backward_op().call(dy[0], ctx->get_saved_variables()[0], saved_dim(ctx)), Tensor()};
  }
};

// For gg = d/d(dx):  d/d(dy) = gg - sum(gg exp(y)),  d/dy = -gg exp(y) sum(dy): the double backward op.
struct LogSoftmaxBackward : Function<LogSoftmaxBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& y, int64_t dim) {
    ctx->save_for_backward({dy, y});
    ctx->saved_data["dim"] = dim;
    return below(log_softmax_backward_op(), dy, y, dim);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    const auto s = ctx->get_saved_variables();  // dy, y
    auto [d_dy, d_y] = log_softmax_double_backward_op().call(gg[0], s[0], s[1], saved_dim(ctx));
    return {d_dy, d_y, Tensor()};
  }
};

// Third order, for completeness (the kernels stop at the second): with p = exp(y), S = sum
// over dim, a = d/d(d_dy), b = d/d(d_y):
//   d/dgg = a - p S(a) - b p S(dy),   d/ddy = -S(b gg p),   d/dy = -p gg (S(a) + b S(dy)).
// Composed from at:: ops on top of our log_softmax_backward (which gives a - p S(a)).
struct LogSoftmaxDoubleBackward : Function<LogSoftmaxDoubleBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& gg, const Tensor& dy, const Tensor& y,
                               int64_t dim) {
    ctx->save_for_backward({gg, dy, y});
    ctx->saved_data["dim"] = dim;
    auto [d_dy, d_y] = below(log_softmax_double_backward_op(), gg, dy, y, dim);
    return {d_dy, d_y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list ab) {
    const auto s = ctx->get_saved_variables();
    const Tensor &gg = s[0], &dy = s[1], &y = s[2];
    const Tensor &a = ab[0], &b = ab[1];
    const int64_t d = saved_dim(ctx);
    const Tensor p = y.exp();
    const Tensor s_dy = dy.sum(d, /*keepdim=*/true);
    Tensor d_gg = log_softmax_backward_op().call(a, y, d) - b * p * s_dy;
    Tensor d_dy = -(b * gg * p).sum(d, /*keepdim=*/true).expand_as(dy);
    Tensor d_y = -p * gg * (a.sum(d, /*keepdim=*/true) + b * s_dy);
    return {d_gg, d_dy, d_y, Tensor()};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchmodules, Autograd, m) {
  TM_AUTOGRAD(m, "amax_forward", AmaxForward, amax_forward_op);
  TM_AUTOGRAD(m, "amax_backward", AmaxBackward, amax_backward_op);
  TM_AUTOGRAD(m, "amax_double_backward", AmaxDoubleBackward, amax_double_backward_op);
  TM_AUTOGRAD(m, "log_softmax_forward", LogSoftmaxForward, log_softmax_forward_op);
  TM_AUTOGRAD(m, "log_softmax_backward", LogSoftmaxBackward, log_softmax_backward_op);
  TM_AUTOGRAD(m, "log_softmax_double_backward", LogSoftmaxDoubleBackward, log_softmax_double_backward_op);
}

}  // namespace torchmodules
