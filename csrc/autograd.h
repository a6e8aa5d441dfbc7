// Helpers for the Autograd kernels (csrc/autograd*.cpp). Each forward op's Autograd kernel is a
// torch::autograd::Function: its forward calls the op below autograd (the device kernel, or the
// fake / functionalized one under torch.compile), its backward calls the backward ops through
// the dispatcher, so that a backward is itself differentiable (double backward) through the
// backward op's own Autograd kernel.
// Written in C++ rather than with torch.library.register_autograd: the Python layer cost
// ~15 us per op call and more per backward, above the kernel's time up to ~4M elements.
#pragma once

#include <torch/autograd.h>
#include <torch/library.h>

namespace torchmodules {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// TM_OP(relu_backward_op, "relu_backward", Tensor(const Tensor&, const Tensor&)) defines
// relu_backward_op(): the typed handle of torchmodules::relu_backward, looked up once.
#define TM_OP(fn, name, ...)                                                                      \
  inline const c10::TypedOperatorHandle<__VA_ARGS__>& fn() {                                     \
    static const auto h =                                                                         \
        c10::Dispatcher::singleton().findSchemaOrThrow("torchmodules::" name, "").typed<__VA_ARGS__>(); \
    return h;                                                                                     \
  }

// Calls an op below autograd (from a Function's forward, where the result is the Function's).
template <class Sig, class... Args>
auto below(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

TM_OP(add_backward_op, "add_backward", at::Tensor(const at::Tensor&, c10::SymIntArrayRef))

// grad summed down to `shape` (the gradient of a broadcast), by our add_backward kernel.
inline at::Tensor sum_down(const at::Tensor& grad, c10::SymIntArrayRef shape) {
  return grad.sym_sizes().equals(shape) ? grad : add_backward_op().call(grad, shape);
}

// The saved variable i of a Function.
inline at::Tensor saved(AutogradContext* ctx, size_t i) { return ctx->get_saved_variables()[i]; }

}  // namespace torchmodules
