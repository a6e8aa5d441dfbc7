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

// On an AVX-512 or AVX2 CPU, relu_rule.h's vector forms of the rule (the GEMM's ReLU epilogue runs
// them too); elsewhere the loop above.
template <typename T>
static void relu_forward_chunk(T* y, uint32_t* m, const T* x, int64_t w0, int64_t w1) {
#ifdef TM_X86
  using E = relu_elem_t<T>;
  if (relu_words_x86<T>(reinterpret_cast<const E*>(x) + w0 * 32, reinterpret_cast<E*>(y) + w0 * 32, m + w0, w1 - w0))
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

#ifdef TM_X86
// The backward with AVX-512 (BW for the half types): a vector's bits are its load mask, a zeroing
// masked load of dy (GCC's loop spread the bits to lanes by shifts and compares).
template <typename T>
__attribute__((target("avx512f,avx512bw"))) static void relu_backward_words_avx512(T* dx, const T* dy,
                                                                                  const uint32_t* m, int64_t w0,
                                                                                  int64_t w1) {
  constexpr int L = 64 / sizeof(T);  // lanes a vector
  for (int64_t w = w0; w < w1; ++w) {
    const uint32_t bits = m[w];
    for (int h = 0; h < 32 / L; ++h) {
      const int64_t i = w * 32 + h * L;
      if constexpr (sizeof(T) == 2) _mm512_storeu_si512(dx + i, _mm512_maskz_loadu_epi16(bits, dy + i));
      else if constexpr (sizeof(T) == 4)
        _mm512_storeu_ps(dx + i, _mm512_maskz_loadu_ps(__mmask16(bits >> (h * L)), dy + i));
      else _mm512_storeu_pd(dx + i, _mm512_maskz_loadu_pd(__mmask8(bits >> (h * L)), dy + i));
    }
  }
}

// With AVX2: each lane's bit spread to the whole lane (the word broadcast, AND-ed with the lane's own
// bit, compared equal to it), then AND-ed with dy.
template <typename T>
__attribute__((target("avx2"))) static void relu_backward_words_avx2(T* dx, const T* dy, const uint32_t* m,
                                                                    int64_t w0, int64_t w1) {
  constexpr int L = 32 / sizeof(T);
  const __m256i lane = sizeof(T) == 2   ? _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                                            8192, 16384, int16_t(0x8000))
                       : sizeof(T) == 4 ? _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128)
                                        : _mm256_setr_epi64x(1, 2, 4, 8);
  for (int64_t w = w0; w < w1; ++w) {
    const uint32_t bits = m[w];
    for (int h = 0; h < 32 / L; ++h) {
      const int64_t i = w * 32 + h * L;
      const uint32_t b = bits >> (h * L);
      __m256i sel;
      if constexpr (sizeof(T) == 2) sel = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16(int16_t(b)), lane), lane);
      else if constexpr (sizeof(T) == 4) sel = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(b)), lane), lane);
      else sel = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(b), lane), lane);
      const __m256i g = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dy + i));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dx + i), _mm256_and_si256(sel, g));
    }
  }
}
#endif

template <typename T>
static void relu_backward_chunk(T* dx, const T* dy, const uint32_t* m, int64_t w0, int64_t w1) {
#ifdef TM_X86
  switch (vector_isa()) {
    case 2: return relu_backward_words_avx512(dx, dy, m, w0, w1);
    case 1: return relu_backward_words_avx2(dx, dy, m, w0, w1);
    default: break;
  }
#endif
  relu_backward_words(dx, dy, m, w0, w1);
}

template <typename T>
static void relu_backward_kernel(T* dx, const T* dy, const uint32_t* m, int64_t n) {
  const int64_t full = n / 32, rest = n % 32;
  at::parallel_for(0, full, kGrain / 32, [&](int64_t w0, int64_t w1) { relu_backward_chunk(dx, dy, m, w0, w1); });
  if (rest) {
    T gt[32] = {}, dt[32];
    std::copy(dy + full * 32, dy + n, gt);
    relu_backward_words(dt, gt, m + full, 0, 1);
    std::copy(dt, dt + rest, dx + full * 32);
  }
}

void relu_forward_cpu(at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& x) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "relu_forward_cpu", [&] {
    relu_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>()),
                                  x.data_ptr<scalar_t>(), x.numel());
  });
}

void relu_backward_cpu(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& mask) {
  TM_DISPATCH_FLOATING(dy.scalar_type(), "relu_backward_cpu", [&] {
    relu_backward_kernel<scalar_t>(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                                   reinterpret_cast<const uint32_t*>(mask.data_ptr<uint8_t>()), dy.numel());
  });
}

static void register_glue(torch::Library& m) {
  m.impl("relu_forward", &relu_forward);
  m.impl("relu_backward", &relu_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
