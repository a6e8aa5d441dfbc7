// Maximum.  Forward: y = max(a, b), broadcasting as torch.maximum; NaN if either is NaN.
//           Saves a 2-bit code per element: a won, b won, tie, or NaN (unordered).
//           Backward: da = dy * share(code, 0), db = dy * share(code, 1), where share is
//           1 for the winner, 0 for the loser, 1/2 each at a tie and 1 to both at NaN (as torch).
#include "ops.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> maximum_forward(const at::Tensor& a, const at::Tensor& b) {
  check_floating("maximum", "input", a);
  check_floating("maximum", "other", b);
  check_same_dtype_device("maximum", "input", a, "other", b);
  const std::vector<int64_t> shape = broadcast_shape("maximum", a.sizes(), b.sizes());
  at::Tensor y = new_output(shape, a.options());
  at::Tensor mask = new_output({maximum_mask_bytes(y.numel())}, a.options().dtype(at::kByte));
  if (y.numel() > 0) {
    const Broadcast2 bc = make_broadcast2("maximum", shape, a, b);
    TM_LAUNCH(maximum_forward, a, y, mask, a, b, bc);
  }
  return {y, mask};
}

at::Tensor maximum_backward(const at::Tensor& grad_y, const at::Tensor& mask, int64_t which) {
  check_floating("maximum_backward", "grad_y", grad_y);
  TORCH_CHECK_VALUE(which == 0 || which == 1, "torchmodules.maximum_backward: which must be 0 or 1, got ", which);
  const at::Tensor dyc = grad_y.contiguous();
  const at::Tensor mc = checked_mask("maximum_backward", mask, maximum_mask_bytes(grad_y.numel()), grad_y);
  at::Tensor d = new_output(grad_y.sizes(), grad_y.options());
  if (d.numel() > 0) TM_LAUNCH(maximum_backward, grad_y, d, dyc, mc, which);
  return d;
}

// ---- CPU kernels ---------------------------------------------------------------------------

// y = max(a, b) (NaN if unordered) and the 2-bit code of each element, 16 per word.
template <typename T>
static void maximum_forward_kernel(T* y, uint32_t* m, const T* a, const T* b, const Broadcast2& bc, int64_t n) {
  using A = acc_t<T>;
  const bool flat = bc.ndim == 1 && bc.stride_a[0] == 1 && bc.stride_b[0] == 1;
  const int64_t words = (n + 15) / 16;
  at::parallel_for(0, words, kGrain / 16, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i0 = w * 16, len = std::min<int64_t>(16, n - i0);
      uint32_t codes = 0;
      for (int64_t k = 0; k < len; ++k) {
        const int64_t i = i0 + k;
        int64_t oa = i, ob = i;
        if (!flat) bc.offsets(i, oa, ob);
        const A va = static_cast<A>(a[oa]), vb = static_cast<A>(b[ob]);
        const uint32_t c = va > vb ? kMaxFirst : va < vb ? kMaxSecond : va == vb ? kMaxTie : kMaxNaN;
        y[i] = c == kMaxSecond ? b[ob] : c == kMaxNaN && vb != vb ? b[ob] : a[oa];
        codes |= c << (2 * k);
      }
      m[w] = codes;
    }
  });
}

// d = dy where this input won (or at a NaN), dy * 1/2 at a tie (in the acc type), and an
// exact 0 where it lost, even for an infinite or NaN dy (as torch): a select, not dy * share.
template <typename T>
static void maximum_backward_kernel(T* d, const T* dy, const uint32_t* m, int64_t which, int64_t n) {
  using A = acc_t<T>;
  const int64_t words = (n + 15) / 16;
  at::parallel_for(0, words, kGrain / 16, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i0 = w * 16, len = std::min<int64_t>(16, n - i0);
      const uint32_t codes = m[w];
      for (int64_t k = 0; k < len; ++k) {
        const uint32_t c = (codes >> (2 * k)) & 3u;
        const T g = dy[i0 + k];
        d[i0 + k] = c == kMaxTie                            ? static_cast<T>(static_cast<A>(g) * A(0.5))
                    : c == kMaxNaN || c == uint32_t(which) ? g
                                                           : T(0);
      }
    }
  });
}

void maximum_forward_cpu(at::Tensor& y, at::Tensor& mask, const at::Tensor& a, const at::Tensor& b,
                         const Broadcast2& bc) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "maximum_forward_cpu", [&] {
    maximum_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>()),
                                     a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), bc, y.numel());
  });
}

void maximum_backward_cpu(at::Tensor& d, const at::Tensor& dy, const at::Tensor& mask, int64_t which) {
  TM_DISPATCH_FLOATING(d.scalar_type(), "maximum_backward_cpu", [&] {
    maximum_backward_kernel<scalar_t>(d.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                                      reinterpret_cast<const uint32_t*>(mask.data_ptr<uint8_t>()), which, d.numel());
  });
}

TORCH_LIBRARY_IMPL(torchmodules, CPU, m) {
  m.impl("maximum_forward", &maximum_forward);
  m.impl("maximum_backward", &maximum_backward);
}

}  // namespace torchmodules
