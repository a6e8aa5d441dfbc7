// Helpers for the Autograd kernels (csrc/autograd*.cpp). Each forward op's Autograd kernel is a
// torch::autograd::Function: its forward calls the op below autograd (the device kernel, or the
// fake / functionalized one under torch.compile), its backward calls the backward ops through
// the dispatcher, so that a backward is itself differentiable (double backward) through the
// backward op's own Autograd kernel.
// A backward unpacks its saved variables once (ctx->get_saved_variables() unpacks them all):
// under saved-tensor hooks, such as torch.utils.checkpoint's, each may be unpacked only once.
// Written in C++ rather than with torch.library.register_autograd: the Python layer cost
// ~15 us per op call and more per backward, above the kernel's time up to ~4M elements.
#pragma once

#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

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

// ---- registration ---------------------------------------------------------------------------
// TM_AUTOGRAD(m, "relu_forward", ReluForward, relu_forward_op) makes Function ReluForward the
// Autograd kernel of relu_forward. When AD sees none of the arguments (grad mode off, as in a
// backward without create_graph, or no tensor requiring grad, and no forward-mode tangent) the
// kernel calls the op below autograd directly, with no graph node, as torch's own kernels do.
// A call with a forward-mode tangent (a dual tensor) goes to the op's Python autograd.Function
// instead (forward_mode below): C++ Functions have no jvp.

// Whether reverse-mode AD sees t: grad mode on and t requires grad.
inline bool ad_sees(const at::Tensor& t) { return t.defined() && at::GradMode::is_enabled() && t.requires_grad(); }
inline bool ad_sees(const std::optional<at::Tensor>& t) { return t.has_value() && ad_sees(*t); }
inline bool ad_sees(at::TensorList ts) {
  return std::any_of(ts.begin(), ts.end(), [](const at::Tensor& t) { return ad_sees(t); });
}
template <class T>
bool ad_sees(const T&) { return false; }  // ints, floats, sizes

// Whether t carries a forward-mode tangent (torch.autograd.forward_ad; undefined while forward
// AD is disabled, as inside a Function's forward).
inline bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
inline bool has_tangent(const std::optional<at::Tensor>& t) { return t.has_value() && has_tangent(*t); }
inline bool has_tangent(at::TensorList ts) {
  return std::any_of(ts.begin(), ts.end(), [](const at::Tensor& t) { return has_tangent(t); });
}
template <class T>
bool has_tangent(const T&) { return false; }

// The op with forward-mode tangents: its Python torch.autograd.Function (with a jvp), which
// torchmodules/_func.py registers on the FuncTorchDynamicLayerFrontMode key (where torch.func
// transforms send every call). Without it (the library loaded without its Python half), the
// clear error of before.
template <class Sig, class... Args>
auto forward_mode(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  constexpr auto key = c10::DispatchKey::FuncTorchDynamicLayerFrontMode;
  TORCH_CHECK(op.hasKernelForDispatchKey(key), op.operator_name(),
              ": forward-mode AD (dual tensors) needs the Python module torchmodules._func; import torchmodules");
  return op.redispatch(c10::DispatchKeySet(key), std::forward<Args>(args)...);
}

// Base of every Autograd kernel's Function. Its backward calls only ops with fake kernels and
// torch ops, so compiled autograd may trace it into its graph (is_traceable) rather than run it
// as an opaque call, which fullgraph refuses.
template <class F>
struct Function : torch::autograd::Function<F> {
  static constexpr bool is_traceable = true;
};

// Outputs that carry no gradient (masks, lse, indices) leave a Function beside it, not through it:
// its forward returns the differentiable outputs and puts these here, and the Autograd kernel
// appends them to the op's result as plain tensors (no grad_fn). That is what
// mark_non_differentiable gives, in the form compiled autograd accepts (torch's CppNode asserts
// under it that no output was marked).
inline variable_list& side_outputs() {
  thread_local variable_list v;
  return v;
}

// A Function's outputs (a Tensor, or a list), then the side outputs, as the op's return type.
template <class R, size_t... I>
R list_as_tuple(const variable_list& v, std::index_sequence<I...>) { return R(v[I]...); }
template <class R>
R as_result(variable_list v) {
  variable_list& side = side_outputs();
  v.insert(v.end(), side.begin(), side.end());
  side.clear();
  if constexpr (std::is_same_v<R, at::Tensor>) return v[0];
  else if constexpr (std::is_same_v<R, std::vector<at::Tensor>>) return v;
  else return list_as_tuple<R>(v, std::make_index_sequence<std::tuple_size_v<R>>{});
}
template <class R>
R as_result(at::Tensor t) {
  if constexpr (std::is_same_v<R, at::Tensor>) return t;
  else return as_result<R>(variable_list{std::move(t)});
}

template <class H> struct sig_of;
template <class S> struct sig_of<c10::TypedOperatorHandle<S>> { using type = S; };

template <class F, class Sig> struct AutogradKernel;
template <class F, class R, class... Args>
struct AutogradKernel<F, R(Args...)> {
  template <const c10::TypedOperatorHandle<R(Args...)>& (*Op)()>
  static R run(Args... args) {
    if ((has_tangent(args) || ...)) return forward_mode(Op(), args...);
    if (!(ad_sees(args) || ...)) return below(Op(), args...);
    side_outputs().clear();  // (left over if a forward threw)
    return as_result<R>(F::apply(args...));
  }
};

#define TM_AUTOGRAD(m, name, F, op) \
  (m).impl(name, &AutogradKernel<F, sig_of<std::decay_t<decltype(op())>>::type>::template run<&op>)

}  // namespace torchmodules
