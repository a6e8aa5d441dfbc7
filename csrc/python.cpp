// The Python module torchmodules._C: importing it loads the ops (TORCH_LIBRARY in ops.cpp and the
// kernels' registrations), and it binds the forward ops as typed C++ calls into the dispatcher.
//
// _C.relu_forward(x) makes the same dispatcher call as torch.ops.torchmodules.relu_forward(x)
// (autograd, autocast, torch.func and dispatch modes all see it), without torch.ops' boxed Python
// entry, which parses each argument against the schema onto a stack: ~1 us less a call (ReLU of 16
// elements: 0.9 us against 1.8 us; torch.relu 0.8 us). torchmodules/_ops.py calls these only where no
// Python layer must see the call (not while torch.compile traces, no __torch_function__).
#include <torch/extension.h>

#include <string>

#include "ops.h"

namespace {

// The typed handle of torchmodules::<name>, typed as `kernel` (the glue function registered for it,
// ops.h, whose signature is the schema's).
template <class R, class... A>
c10::TypedOperatorHandle<R(A...)> typed_op(const char* name, R (*kernel)(A...)) {
  (void)kernel;  // its type only
  return c10::Dispatcher::singleton().findSchemaOrThrow((std::string("torchmodules::") + name).c_str(), "").typed<R(A...)>();
}

// Binds torchmodules::<name> as _C.<name>.
template <class R, class... A>
void bind(pybind11::module_& m, const char* name, R (*kernel)(A...)) {
  m.def(name, [op = typed_op(name, kernel)](A... args) { return op.call(args...); });
}

// Binds the first output of a tuple-returning op as _C.<name>_first: the Python API drops the side
// outputs (ReLU's mask, the loss's lse), and not wrapping them as Python objects (nor the tuple)
// saves ~0.1 us a call.
template <class R, class... A>
void bind_first(pybind11::module_& m, const char* name, R (*kernel)(A...)) {
  m.def((std::string(name) + "_first").c_str(),
        [op = typed_op(name, kernel)](A... args) { return std::get<0>(op.call(args...)); });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace tm = torchmodules;
  m.doc() = "torchmodules kernels, and typed entries of the forward ops (csrc/python.cpp)";
#ifdef TORCHMODULES_CUDA
  m.attr("built_with_cuda") = true;  // kernels/*.cu compiled in, whether or not a GPU is there
#else
  m.attr("built_with_cuda") = false;
#endif
  bind(m, "linear_forward", &tm::linear_forward);
  bind(m, "duplicate_forward", &tm::duplicate_forward);
  bind(m, "add_forward", &tm::add_forward);
  bind(m, "amax_forward", &tm::amax_forward);
  bind(m, "log_softmax_forward", &tm::log_softmax_forward);
  bind(m, "cross_entropy_forward", &tm::cross_entropy_forward);
  bind(m, "mse_loss_forward", &tm::mse_loss_forward);
  bind(m, "nearest_neighbor_forward", &tm::nearest_neighbor_forward);
  bind_first(m, "linear_relu_forward", &tm::linear_relu_forward);
  bind_first(m, "relu_forward", &tm::relu_forward);
  bind_first(m, "maximum_forward", &tm::maximum_forward);
  bind_first(m, "cross_entropy_forward", &tm::cross_entropy_forward);
  bind_first(m, "nll_loss_forward", &tm::nll_loss_forward);
}
