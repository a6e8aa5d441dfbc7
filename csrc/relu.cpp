// ReLU.  Forward: y = x < 0 ? 0 : x, and one saved bit per element, m = !(x <= 0).
//        Backward: dx = m ? dy : 0.
// The bit is all the backward needs: 1/32 of the memory of saving x in float32.
// As torch: relu(-0.0) = -0.0 (only x < 0 becomes 0) and its gradient 0 (threshold_backward
// passes the gradient where y > 0 only); NaN: y = NaN and m = 1 (the gradient passes).
#include "ops.h"
#include "relu_rule.h"
#include "simd.h"

#include <algorithm>
#include <type_traits>

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

// One call per chunk of whole 32-element words, compiled per ISA (simd.h); the last,
// partial word runs through the same code on a zero-padded copy.

// The element's rule, relu_elem (relu_rule.h), is the GEMM's ReLU epilogue's too.

// y = x < 0 ? 0 : x (NaN and -0.0 kept); bit i of word w = !(x[32w+i] <= 0).
template <typename T>
TM_SIMD static void relu_forward_words(T* __restrict y, uint32_t* __restrict m, const T* __restrict x, int64_t w0,
                                       int64_t w1) {
  using E = relu_elem_t<T>;
  const E* xe = reinterpret_cast<const E*>(x);
  E* ye = reinterpret_cast<E*>(y);
  for (int64_t w = w0; w < w1; ++w) {
    const E* xw = xe + w * 32;
    E* yw = ye + w * 32;
    uint32_t bits = 0;
    for (int i = 0; i < 32; ++i) bits |= uint32_t(relu_elem<T>(xw[i], yw[i])) << i;
    m[w] = bits;
  }
}

// dx = bit ? dy : 0 (the half types as bits: +0.0 is 0x0000)
template <typename T>
TM_SIMD static void relu_backward_words(T* __restrict dx, const T* __restrict dy, const uint32_t* __restrict m,
                                        int64_t w0, int64_t w1) {
  using E = std::conditional_t<sizeof(T) == 2, uint16_t, T>;
  E* d = reinterpret_cast<E*>(dx);
  const E* g = reinterpret_cast<const E*>(dy);
  for (int64_t w = w0; w < w1; ++w) {
    const uint32_t bits = m[w];
    for (int i = 0; i < 32; ++i) d[w * 32 + i] = (bits >> i) & 1u ? g[w * 32 + i] : E(0);
  }
}

// The half types on an AVX-512 BW or AVX2 CPU: relu_rule.h's vector forms of the rule (the GEMM's
// ReLU epilogue runs them too).
template <typename T>
static void relu_forward_chunk(T* y, uint32_t* m, const T* x, int64_t w0, int64_t w1) {
#ifdef TM_X86
  if constexpr (sizeof(T) == 2)
    if (relu_words16<T>(reinterpret_cast<const uint16_t*>(x) + w0 * 32, reinterpret_cast<uint16_t*>(y) + w0 * 32,
                        m + w0, w1 - w0))
      return;
#endif
  relu_forward_words(y, m, x, w0, w1);
}

template <typename T>
static void relu_forward_kernel(T* y, uint32_t* m, const T* x, int64_t n) {
  const int64_t full = n / 32, rest = n % 32;
  at::parallel_for(0, full, kGrain / 32, [&](int64_t w0, int64_t w1) { relu_forward_chunk(y, m, x, w0, w1); });
  if (rest) {
    T xt[32] = {}, yt[32];
    std::copy(x + full * 32, x + n, xt);
    relu_forward_chunk(yt, m + full, xt, 0, 1);  // the zero padding gets 0 bits
    std::copy(yt, yt + rest, y + full * 32);
  }
}

template <typename T>
static void relu_backward_kernel(T* dx, const T* dy, const uint32_t* m, int64_t n) {
  const int64_t full = n / 32, rest = n % 32;
  at::parallel_for(0, full, kGrain / 32, [&](int64_t w0, int64_t w1) { relu_backward_words(dx, dy, m, w0, w1); });
  if (rest) {
    T gt[32] = {}, dt[32];
    std::copy(dy + full * 32, dy + n, gt);
    relu_backward_words(dt, gt, m + full, 0, 1);
    std::copy(dt, dt + rest, dx + full * 32);
  }
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
