// Autograd kernels of the core ops (the pattern: csrc/autograd.h).
#include "autograd.h"

namespace torchmodules {
namespace {

using at::Tensor;

// ---- ReLU: y = max(x, 0) with a 1-bit mask;  dx = mask ? dy : 0 ----------------------------

TM_OP(relu_forward_op, "relu_forward", std::tuple<Tensor, Tensor>(const Tensor&))
TM_OP(relu_backward_op, "relu_backward", Tensor(const Tensor&, const Tensor&))

struct ReluForward : torch::autograd::Function<ReluForward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x) {
    auto [y, mask] = below(relu_forward_op(), x);
    ctx->save_for_backward({mask});
    ctx->mark_non_differentiable({mask});
    return {y, mask};
  }
  static variable_list backward(AutogradContext* ctx, variable_list dy) {
    return {relu_backward_op().call(dy[0], saved(ctx, 0))};
  }
};

// dx = mask * dy is linear in dy: its backward is itself.
struct ReluBackward : torch::autograd::Function<ReluBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& dy, const Tensor& mask) {
    ctx->save_for_backward({mask});
    return {below(relu_backward_op(), dy, mask)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    return {relu_backward_op().call(gg[0], saved(ctx, 0)), Tensor()};
  }
};

std::tuple<Tensor, Tensor> relu_forward_ad(const Tensor& x) {
  auto out = ReluForward::apply(x);
  return {out[0], out[1]};
}
Tensor relu_backward_ad(const Tensor& dy, const Tensor& mask) { return ReluBackward::apply(dy, mask)[0]; }

}  // namespace

TORCH_LIBRARY_IMPL(torchmodules, Autograd, m) {
  m.impl("relu_forward", &relu_forward_ad);
  m.impl("relu_backward", &relu_backward_ad);
}

}  // namespace torchmodules
