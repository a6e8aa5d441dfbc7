// Autocast (torch.autocast, AMP) kernels: under autocast our forward ops run in the dtype
// torch's twins run in, with torch's own cast policy per op and device
// (aten/src/ATen/autocast_mode.cpp):
//   linear, linear_relu (torch: linear, then relu in its dtype)
//                                              lower precision (the autocast dtype), CUDA and CPU;
//   nll_loss, mse_loss, cross_entropy_loss     float32, CUDA and CPU (on CUDA torch's
//                                              cross_entropy is log_softmax + nll_loss, both float32);
//   log_softmax                                float32 on CUDA; no policy on CPU (runs in its input dtype).
// relu, add, maximum, amax and duplicate have no policy in torch either: the Autocast key falls
// through to their Autograd kernels. Backward ops need none (the backward runs outside autocast).
// As torch does, only floating tensors on the autocast device are cast (not float64 ones), and
// casts of float32 leaf weights to the lower precision are cached for the autocast region.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "autograd.h"  // TM_OP

namespace torchmodules {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

TM_OP(linear_forward_op, "linear_forward", Tensor(const Tensor&, const Tensor&, const OptTensor&))
TM_OP(linear_relu_forward_op, "linear_relu_forward",
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&))
TM_OP(log_softmax_forward_op, "log_softmax_forward", Tensor(const Tensor&, int64_t))
TM_OP(nll_loss_forward_op, "nll_loss_forward",
      std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t))
TM_OP(cross_entropy_forward_op, "cross_entropy_forward",
      std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t, double))
TM_OP(mse_loss_forward_op, "mse_loss_forward", Tensor(const Tensor&, const Tensor&, int64_t))

enum class Cast { lower_precision, fp32 };

template <c10::DeviceType D, Cast C, class Sig> struct Autocast;
template <c10::DeviceType D, Cast C, class R, class... Args>
struct Autocast<D, C, R(Args...)> {
  // Casts the floating tensor arguments, then calls the op again with this device's Autocast
  // key excluded, so it reaches the Autograd kernel (which records the casts' backward too).
  template <const c10::TypedOperatorHandle<R(Args...)>& (*Op)()>
  static R run(Args... args) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(D));
    const at::ScalarType to =
        C == Cast::fp32 ? at::kFloat : at::autocast::get_lower_precision_fp_from_device_type(D);
    return Op().call(at::autocast::cached_cast(to, args, D)...);
  }
};

// Registers Autocast<D, C> as m's kernel of op `name`.
#define TM_AUTOCAST(m, D, C, name, op) \
  (m).impl(name, &Autocast<D, C, sig_of<std::decay_t<decltype(op())>>::type>::template run<&op>)

}  // namespace

TORCH_LIBRARY_IMPL(torchmodules, AutocastCUDA, m) {
  constexpr auto D = c10::DeviceType::CUDA;
  TM_AUTOCAST(m, D, Cast::lower_precision, "linear_forward", linear_forward_op);
  TM_AUTOCAST(m, D, Cast::lower_precision, "linear_relu_forward", linear_relu_forward_op);
  TM_AUTOCAST(m, D, Cast::fp32, "log_softmax_forward", log_softmax_forward_op);
  TM_AUTOCAST(m, D, Cast::fp32, "nll_loss_forward", nll_loss_forward_op);
  TM_AUTOCAST(m, D, Cast::fp32, "cross_entropy_forward", cross_entropy_forward_op);
  TM_AUTOCAST(m, D, Cast::fp32, "mse_loss_forward", mse_loss_forward_op);
}

TORCH_LIBRARY_IMPL(torchmodules, AutocastCPU, m) {
  constexpr auto D = c10::DeviceType::CPU;
  TM_AUTOCAST(m, D, Cast::lower_precision, "linear_forward", linear_forward_op);
  TM_AUTOCAST(m, D, Cast::lower_precision, "linear_relu_forward", linear_relu_forward_op);
  // log_softmax: none, as torch's CPU autocast (it runs in the input dtype).
  TM_AUTOCAST(m, D, Cast::fp32, "nll_loss_forward", nll_loss_forward_op);
  TM_AUTOCAST(m, D, Cast::fp32, "cross_entropy_forward", cross_entropy_forward_op);
  TM_AUTOCAST(m, D, Cast::fp32, "mse_loss_forward", mse_loss_forward_op);
}

}  // namespace torchmodules
