// Autograd kernels of the core ops (the pattern: csrc/autograd.h).
#include "autograd.h"

namespace torchmodules {
namespace {

using at::Tensor;

// ---- Linear: y = x W^T + b;  dx = dy W,  dW = dy^T x,  db = dy summed to [out] ---------------

TM_OP(linear_forward_op, "linear_forward", Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&))
TM_OP(linear_backward_input_op, "linear_backward_input", Tensor(const Tensor&, const Tensor&))
TM_OP(linear_backward_weight_op, "linear_backward_weight", Tensor(const Tensor&, const Tensor&))

struct LinearForward : Function<LinearForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["bias"] = b.has_value() && b->defined();
    return below(linear_forward_op(), x, w, b);
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &w = s[1];
    return {ctx->needs_input_grad(0) ? linear_backward_input_op().call(dy[0], w) : Tensor(),
            ctx->needs_input_grad(1) ? linear_backward_weight_op().call(dy[0], x) : Tensor(),
            // (needs_input_grad counts tensor arguments only: index 2 exists when there is a bias)
            ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2) ? sum_down(dy[0], w.sym_sizes().slice(0, 1))
                                                                         : Tensor()};
  }
};

// dx = dy W:  d/d(dy) = gg W^T,  d/dW = dy^T gg.
struct LinearBackwardInput : Function<LinearBackwardInput> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& w) {
    ctx->save_for_backward({dy, w});
    return below(linear_backward_input_op(), dy, w);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    const auto s = ctx->get_saved_variables();  // dy, w
    return {ctx->needs_input_grad(0) ? linear_forward_op().call(gg[0], s[1], std::nullopt) : Tensor(),
            ctx->needs_input_grad(1) ? linear_backward_weight_op().call(s[0], gg[0]) : Tensor()};
  }
};

// dW = dy^T x:  d/d(dy) = x gg^T,  d/dx = dy gg.
struct LinearBackwardWeight : Function<LinearBackwardWeight> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& x) {
    ctx->save_for_backward({dy, x});
    return below(linear_backward_weight_op(), dy, x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    const auto s = ctx->get_saved_variables();  // dy, x
    return {ctx->needs_input_grad(0) ? linear_forward_op().call(s[1], gg[0], std::nullopt) : Tensor(),
            ctx->needs_input_grad(1) ? linear_backward_input_op().call(s[0], gg[0]) : Tensor()};
  }
};

// ---- ReLU: y = max(x, 0) with a 1-bit mask;  dx = mask ? dy : 0 ----------------------------

TM_OP(relu_forward_op, "relu_forward", std::tuple<Tensor, Tensor>(const Tensor&))
TM_OP(relu_backward_op, "relu_backward", Tensor(const Tensor&, const Tensor&))

struct ReluForward : Function<ReluForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    auto [y, mask] = below(relu_forward_op(), x);
    ctx->save_for_backward({mask});
    ctx->set_materialize_grads(false);  // an undefined dy stays so (no zeros launched)
    side_outputs() = {mask};
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    if (!dy[0].defined()) return {Tensor()};
    return {relu_backward_op().call(dy[0], ctx->get_saved_variables()[0])};
  }
};

// dx = mask * dy is linear in dy: its backward is itself.
struct ReluBackward : Function<ReluBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& mask) {
    ctx->save_for_backward({mask});
    return below(relu_backward_op(), dy, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    return {relu_backward_op().call(gg[0], ctx->get_saved_variables()[0]), Tensor()};
  }
};

// ---- Linear + ReLU: y = relu(x W^T + b), ReLU's mask m;  dz = m ? dy : 0, then Linear's backward ----
// Saves x, W and the mask (1 bit per output), not y: the memory torch's relu(linear(x)) keeps
// for the relu output. The backward is made of the differentiable backward ops (double backward).

TM_OP(linear_relu_forward_op, "linear_relu_forward",
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&))

struct LinearReluForward : Function<LinearReluForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
    auto [y, mask] = below(linear_relu_forward_op(), x, w, b);
    ctx->save_for_backward({x, w, mask});
    ctx->saved_data["bias"] = b.has_value() && b->defined();
    ctx->set_materialize_grads(false);  // an undefined dy stays so (no zeros launched)
    side_outputs() = {mask};
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    if (!dy[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &w = s[1];
    const Tensor dz = relu_backward_op().call(dy[0], s[2]);
    return {ctx->needs_input_grad(0) ? linear_backward_input_op().call(dz, w) : Tensor(),
            ctx->needs_input_grad(1) ? linear_backward_weight_op().call(dz, x) : Tensor(),
            ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2) ? sum_down(dz, w.sym_sizes().slice(0, 1))
                                                                         : Tensor()};
  }
};

// ---- Duplicate: y_k = x;  dx = sum_k dy_k ---------------------------------------------------

TM_OP(duplicate_forward_op, "duplicate_forward", std::vector<Tensor>(const Tensor&, int64_t))
TM_OP(duplicate_backward_op, "duplicate_backward", Tensor(at::TensorList))

struct DuplicateForward : Function<DuplicateForward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, int64_t n) {
    ctx->set_materialize_grads(false);  // copies left unused add nothing (no zeros made for them)
    return below(duplicate_forward_op(), x, n);
  }
  static variable_list backward(AutogradContext*, variable_list dys) {
    variable_list used;
    for (const Tensor& d : dys)
      if (d.defined()) used.push_back(d);
    return {used.empty() ? Tensor() : duplicate_backward_op().call(used), Tensor()};
  }
};

// dx = sum_k dy_k:  d/d(dy_k) = gg for every k.
struct DuplicateBackward : Function<DuplicateBackward> {
  static Tensor forward(AutogradContext* ctx, at::TensorList dys) {
    ctx->saved_data["n"] = static_cast<int64_t>(dys.size());
    return below(duplicate_backward_op(), dys);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    return variable_list(ctx->saved_data["n"].toInt(), gg[0]);
  }
};

// ---- Add: y = a + b (broadcast);  da = dy summed to a's shape, likewise db -----------------

TM_OP(add_forward_op, "add_forward", Tensor(const Tensor&, const Tensor&))

struct AddForward : Function<AddForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& a, const Tensor& b) {
    ctx->saved_data["a"] = a.sym_sizes();
    ctx->saved_data["b"] = b.sym_sizes();
    return below(add_forward_op(), a, b);
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    return {ctx->needs_input_grad(0) ? sum_down(dy[0], ctx->saved_data["a"].toSymIntVector()) : Tensor(),
            ctx->needs_input_grad(1) ? sum_down(dy[0], ctx->saved_data["b"].toSymIntVector()) : Tensor()};
  }
};

// add_backward sums over broadcast dims: its backward broadcasts back (a view).
struct AddBackward : Function<AddBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, c10::SymIntArrayRef size) {
    ctx->saved_data["shape"] = dy.sym_sizes();
    return below(add_backward_op(), dy, size);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    return {gg[0].expand_symint(ctx->saved_data["shape"].toSymIntVector()), Tensor()};
  }
};

// ---- Maximum: y = max(a, b) (broadcast), a 2-bit code per element -------------------------
// da = dy * share(code, 0), db = dy * share(code, 1), each summed to its input's shape.

TM_OP(maximum_forward_op, "maximum_forward", std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&))
TM_OP(maximum_backward_op, "maximum_backward", Tensor(const Tensor&, const Tensor&, int64_t))
TM_OP(maximum_backward_both_op, "maximum_backward_both", std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&))

struct MaximumForward : Function<MaximumForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& a, const Tensor& b) {
    auto [y, mask] = below(maximum_forward_op(), a, b);
    ctx->saved_data["a"] = a.sym_sizes();
    ctx->saved_data["b"] = b.sym_sizes();
    ctx->save_for_backward({mask});
    ctx->set_materialize_grads(false);  // an undefined dy stays so (no zeros launched)
    side_outputs() = {mask};
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    const Tensor mask = ctx->get_saved_variables()[0];
    variable_list out(2);
    if (!dy[0].defined()) return out;
    if (ctx->needs_input_grad(0) && ctx->needs_input_grad(1)) {  // one pass for both
      auto [da, db] = maximum_backward_both_op().call(dy[0], mask);
      out[0] = da;
      out[1] = db;
    } else {
      for (int64_t k = 0; k < 2; ++k)
        if (ctx->needs_input_grad(k)) out[k] = maximum_backward_op().call(dy[0], mask, k);
    }
    for (int64_t k = 0; k < 2; ++k)
      if (out[k].defined()) out[k] = sum_down(out[k], ctx->saved_data[k ? "b" : "a"].toSymIntVector());
    return out;
  }
};

// d = dy * share is linear in dy: its backward is itself.
struct MaximumBackward : Function<MaximumBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& dy, const Tensor& mask, int64_t which) {
    ctx->save_for_backward({mask});
    ctx->saved_data["which"] = which;
    return below(maximum_backward_op(), dy, mask, which);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    return {maximum_backward_op().call(gg[0], ctx->get_saved_variables()[0], ctx->saved_data["which"].toInt()), Tensor(), Tensor()};
  }
};

// (da, db) = dy * (share_0, share_1): d/d(dy) of <gga, da> + <ggb, db> = gga * share_0 + ggb * share_1.
struct MaximumBackwardBoth : Function<MaximumBackwardBoth> {
  static variable_list forward(AutogradContext* ctx, const Tensor& dy, const Tensor& mask) {
    ctx->save_for_backward({mask});
    ctx->set_materialize_grads(false);
    auto [da, db] = below(maximum_backward_both_op(), dy, mask);
    return {da, db};
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    const Tensor mask = ctx->get_saved_variables()[0];
    Tensor d;
    for (int64_t k = 0; k < 2; ++k) {
      if (!gg[k].defined()) continue;
      Tensor dk = maximum_backward_op().call(gg[k], mask, k);
      d = d.defined() ? add_forward_op().call(d, dk) : dk;
    }
    return {d, Tensor()};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchmodules, Autograd, m) {
  TM_AUTOGRAD(m, "linear_forward", LinearForward, linear_forward_op);
  TM_AUTOGRAD(m, "linear_backward_input", LinearBackwardInput, linear_backward_input_op);
  TM_AUTOGRAD(m, "linear_backward_weight", LinearBackwardWeight, linear_backward_weight_op);
  TM_AUTOGRAD(m, "linear_relu_forward", LinearReluForward, linear_relu_forward_op);
  TM_AUTOGRAD(m, "relu_forward", ReluForward, relu_forward_op);
  TM_AUTOGRAD(m, "relu_backward", ReluBackward, relu_backward_op);
  TM_AUTOGRAD(m, "duplicate_forward", DuplicateForward, duplicate_forward_op);
  TM_AUTOGRAD(m, "duplicate_backward", DuplicateBackward, duplicate_backward_op);
  TM_AUTOGRAD(m, "add_forward", AddForward, add_forward_op);
  TM_AUTOGRAD(m, "add_backward", AddBackward, add_backward_op);
  TM_AUTOGRAD(m, "maximum_forward", MaximumForward, maximum_forward_op);
  TM_AUTOGRAD(m, "maximum_backward", MaximumBackward, maximum_backward_op);
  TM_AUTOGRAD(m, "maximum_backward_both", MaximumBackwardBoth, maximum_backward_both_op);
}

}  // namespace torchmodules
