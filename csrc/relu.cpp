// ReLU.  Forward: y = max(x, 0), and one saved bit per element, m = !(x <= 0).
//        Backward: dx = m ? dy : 0.
// The bit is all the backward needs: 1/32 of the memory of saving x in float32.
// NaN: y = NaN and m = 1 (the gradient passes), as torch's threshold_backward.
#include "ops.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> relu_forward(const at::Tensor& x) {
  check_floating("relu", "input", x);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = new_output(x.sizes(), x.options());
  at::Tensor mask = new_output({relu_mask_bytes(x.numel())}, x.options().dtype(at::kByte));
  if (x.numel() > 0) TM_LAUNCH(relu_forward, x, y, mask, xc);
  return {y, mask};
}

at::Tensor relu_backward(const at::Tensor& grad_y, const at::Tensor& mask) {
  check_floating("relu_backward", "grad_y", grad_y);
  const at::Tensor dyc = grad_y.contiguous();
  const at::Tensor mc = checked_mask("relu_backward", mask, relu_mask_bytes(grad_y.numel()), grad_y);
  at::Tensor dx = new_output(grad_y.sizes(), grad_y.options());
  if (grad_y.numel() > 0) TM_LAUNCH(relu_backward, grad_y, dx, dyc, mc);
  return dx;
}

// ---- CPU kernels ---------------------------------------------------------------------------

// y = max(x, 0) (NaN kept); bit i of word w = !(x[32w+i] <= 0).
template <typename T>
static void relu_forward_kernel(T* y, uint32_t* m, const T* x, int64_t n) {
  const int64_t words = (n + 31) / 32;
  at::parallel_for(0, words, kGrain / 32, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i0 = w * 32, len = std::min<int64_t>(32, n - i0);
      uint32_t bits = 0;
      for (int64_t i = 0; i < len; ++i) {
        // Compare in the element's own accumulation type (double stays double), as torch:
        // a float64 1e-310 is > 0 though it would round to 0 as a float.
        const acc_t<T> v = static_cast<acc_t<T>>(x[i0 + i]);
        const bool pass = !(v <= acc_t<T>(0));
        y[i0 + i] = pass ? x[i0 + i] : T(0);
        bits |= uint32_t(pass) << i;
      }
      m[w] = bits;
    }
  });
}

// dx = bit ? dy : 0
template <typename T>
static void relu_backward_kernel(T* dx, const T* dy, const uint32_t* m, int64_t n) {
  const int64_t words = (n + 31) / 32;
  at::parallel_for(0, words, kGrain / 32, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i0 = w * 32, len = std::min<int64_t>(32, n - i0);
      const uint32_t bits = m[w];
      for (int64_t i = 0; i < len; ++i) dx[i0 + i] = (bits >> i) & 1u ? dy[i0 + i] : T(0);
    }
  });
}

void relu_forward_cpu(at::Tensor& y, at::Tensor& mask, const at::Tensor& x) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "relu_forward_cpu", [&] {
    relu_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>()),
                                  x.data_ptr<scalar_t>(), x.numel());
  });
}

void relu_backward_cpu(at::Tensor& dx, const at::Tensor& dy, const at::Tensor& mask) {
  TM_DISPATCH_FLOATING(dy.scalar_type(), "relu_backward_cpu", [&] {
    relu_backward_kernel<scalar_t>(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                                   reinterpret_cast<const uint32_t*>(mask.data_ptr<uint8_t>()), dy.numel());
  });
}

TORCH_LIBRARY_IMPL(torchmodules, CPU, m) {
  m.impl("relu_forward", &relu_forward);
  m.impl("relu_backward", &relu_backward);
}

}  // namespace torchmodules
