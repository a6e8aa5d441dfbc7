// Autograd kernels of NearestNeighbor (the pattern: csrc/autograd.h; the math: csrc/ops.cpp).
// With r_n = x_n - w_index_n:  dx = 2 g r = backward_input(g, x, w, index),
// dw_k = -2 sum_{index_n = k} g_n r_n = backward_weight(g, x, w, index). Both ops are linear in g and
// in (x, w), so each one's backward is the two ops again with (x, w) replaced by the upstream
// gradient (and zeros), plus a row-wise dot product for d/dg: every order is differentiable.
#include <ATen/ATen.h>

#include "autograd.h"

namespace torchmodules {
namespace {

using at::Tensor;

TM_OP(nn_forward_op, "nearest_neighbor_forward", std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&))
TM_OP(nn_backward_input_op, "nearest_neighbor_backward_input",
      Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&))
TM_OP(nn_backward_weight_op, "nearest_neighbor_backward_weight",
      Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&))

// v[index_n] for every row n, as a tensor of x's shape (v: [K, D]).
Tensor gather_rows(const Tensor& v, const Tensor& index, const Tensor& x) {
  return v.index_select(0, index.reshape(-1)).reshape_symint(x.sym_sizes());
}

// sum_d a_nd (x_nd - w_index_n,d) per row: x's shape without its last dim.
Tensor row_dot(const Tensor& a, const Tensor& x, const Tensor& w, const Tensor& index) {
  return (a * (x - gather_rows(w, index, x))).sum(-1);
}

struct NearestNeighborForward : Function<NearestNeighborForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w) {
    auto [sqdist, index] = below(nn_forward_op(), x, w);
    ctx->set_materialize_grads(false);  // an unused sqdist's gradient stays undefined (no zeros launched)
    ctx->save_for_backward({x, w, index});
    side_outputs() = {index};
    return sqdist;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& g = grads[0];
    if (!g.defined()) return {Tensor(), Tensor()};
    const auto s = ctx->get_saved_variables();
    return {ctx->needs_input_grad(0) ? nn_backward_input_op().call(g, s[0], s[1], s[2]) : Tensor(),
            ctx->needs_input_grad(1) ? nn_backward_weight_op().call(g, s[0], s[1], s[2]) : Tensor()};
  }
};

// dx = 2 g (x - w[index]). For upstream a (x's shape):
//   d/dg = 2 <a, x - w[index]>,  d/dx = 2 g a = backward_input(g, a, 0, index),
//   d/dw = -2 sum_{index_n = k} g_n a_n = backward_weight(g, a, 0, index).
struct NearestNeighborBackwardInput : Function<NearestNeighborBackwardInput> {
  static Tensor forward(AutogradContext* ctx, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& index) {
    ctx->save_for_backward({g, x, w, index});
    return below(nn_backward_input_op(), g, x, w, index);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &g = s[0], &x = s[1], &w = s[2], &index = s[3], &a = grads[0];
    variable_list out(4);
    if (ctx->needs_input_grad(0)) out[0] = row_dot(a, x, w, index) * 2;
    const bool need_x = ctx->needs_input_grad(1), need_w = ctx->needs_input_grad(2);
    if (need_x || need_w) {
      const Tensor zero = at::zeros_like(w);
      if (need_x) out[1] = nn_backward_input_op().call(g, a, zero, index);
      if (need_w) out[2] = nn_backward_weight_op().call(g, a, zero, index);
    }
    return out;
  }
};

// dw = -2 sum_{index_n = k} g_n (x_n - w_k). For upstream b (w's shape):
//   d/dg = -2 <b[index], x - w[index]>,  d/dx = -2 g b[index] = backward_input(g, 0, b, index),
//   d/dw_k = 2 b_k sum_{index_n = k} g_n = backward_weight(g, 0, b, index).
struct NearestNeighborBackwardWeight : Function<NearestNeighborBackwardWeight> {
  static Tensor forward(AutogradContext* ctx, const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& index) {
    ctx->save_for_backward({g, x, w, index});
    return below(nn_backward_weight_op(), g, x, w, index);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const Tensor &g = s[0], &x = s[1], &w = s[2], &index = s[3], &b = grads[0];
    variable_list out(4);
    if (ctx->needs_input_grad(0)) out[0] = row_dot(gather_rows(b, index, x), x, w, index) * -2;
    const bool need_x = ctx->needs_input_grad(1), need_w = ctx->needs_input_grad(2);
    if (need_x || need_w) {
      const Tensor zero = at::zeros_like(x);
      if (need_x) out[1] = nn_backward_input_op().call(g, zero, b, index);
      if (need_w) out[2] = nn_backward_weight_op().call(g, zero, b, index);
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchmodules, Autograd, m) {
  TM_AUTOGRAD(m, "nearest_neighbor_forward", NearestNeighborForward, nn_forward_op);
  TM_AUTOGRAD(m, "nearest_neighbor_backward_input", NearestNeighborBackwardInput, nn_backward_input_op);
  TM_AUTOGRAD(m, "nearest_neighbor_backward_weight", NearestNeighborBackwardWeight, nn_backward_weight_op);
}

}  // namespace torchmodules
