// Maximum.  Forward: y = max(a, b), broadcasting as torch.maximum; NaN if either is NaN.
//           Saves a 2-bit code per element: a won, b won, tie, or NaN (unordered); 0 past the
//           last element (CPU and CUDA masks are the same bytes).
//           Backward: da = dy * share(code, 0), db = dy * share(code, 1), where share is
//           1 for the winner, 0 for the loser, 1/2 each at a tie and 1 to both at NaN (as torch);
//           maximum_backward_both writes both in one pass over dy and the codes.
#include "ops.h"
#include "simd.h"
#include "vector_isa.h"

#include <algorithm>
#include <array>

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
  TORCH_CHECK(which == 0 || which == 1, "torchmodules.maximum_backward: which must be 0 or 1, got ", which);
  const at::Tensor dyc = grad_y.contiguous();
  const at::Tensor mc = checked_mask("maximum_backward", mask, maximum_mask_bytes(grad_y.numel()), grad_y);
  at::Tensor d = new_output(grad_y.sizes(), grad_y.options()), none;
  if (d.numel() > 0) TM_LAUNCH(maximum_backward, grad_y, which ? none : d, which ? d : none, dyc, mc);
  return d;
}

std::tuple<at::Tensor, at::Tensor> maximum_backward_both(const at::Tensor& grad_y, const at::Tensor& mask) {
  check_floating("maximum_backward_both", "grad_y", grad_y);
  const at::Tensor dyc = grad_y.contiguous();
  const at::Tensor mc = checked_mask("maximum_backward_both", mask, maximum_mask_bytes(grad_y.numel()), grad_y);
  at::Tensor da = new_output(grad_y.sizes(), grad_y.options());
  at::Tensor db = new_output(grad_y.sizes(), grad_y.options());
  if (da.numel() > 0) TM_LAUNCH(maximum_backward, grad_y, da, db, dyc, mc);
  return {da, db};
}

// ---- CPU kernels ---------------------------------------------------------------------------

// The code of a pair (MaxCode): [a < b or unordered] + 2 [neither a > b nor a < b], so
// 0 a won, 1 b won, 2 tie, 3 NaN. y takes b where b won or b is NaN, else a (NaN if a is).
template <typename A>
static inline uint32_t max_code(A va, A vb) {
  const bool gt = va > vb, lt = va < vb, unordered = !(gt || lt || va == vb);
  return uint32_t(lt || unordered) | uint32_t(!gt && !lt) << 1;
}
template <typename A>
static inline bool max_takes_b(A va, A vb) { return va < vb || vb != vb; }

// Same-shape contiguous inputs, whole words of 16 elements; compiled per ISA (simd.h).
template <typename T>
TM_SIMD static void maximum_forward_words(T* __restrict y, uint32_t* __restrict m, const T* __restrict a,
                                          const T* __restrict b, int64_t w0, int64_t w1) {
  using A = acc_t<T>;
  for (int64_t w = w0; w < w1; ++w) {
    uint32_t codes = 0;
    if constexpr (sizeof(T) == 2) {
      // The half types on their bits (a select of c10 structs became a select of addresses, a
      // scalar loop): NaN is a magnitude above kInfBits; otherwise the magnitude signed by the
      // sign bit orders the values as floats, +0 and -0 tie.
      const uint16_t* ab = reinterpret_cast<const uint16_t*>(a) + w * 16;
      const uint16_t* bb = reinterpret_cast<const uint16_t*>(b) + w * 16;
      uint16_t* yb = reinterpret_cast<uint16_t*>(y) + w * 16;
      for (int k = 0; k < 16; ++k) {
        const int32_t ma = ab[k] & 0x7fff, mb = bb[k] & 0x7fff;
        const int32_t ia = ab[k] >> 15 ? -ma : ma, ib = bb[k] >> 15 ? -mb : mb;
        const bool nan_b = mb > kInfBits<T>, unordered = ma > kInfBits<T> || nan_b;
        const bool gt = !unordered && ia > ib, lt = !unordered && ia < ib;
        yb[k] = lt || nan_b ? bb[k] : ab[k];  // max_takes_b
        codes |= (uint32_t(lt || unordered) | uint32_t(!gt && !lt) << 1) << (2 * k);  // max_code
      }
    } else {
      for (int k = 0; k < 16; ++k) {
        const int64_t i = w * 16 + k;
        const A va = static_cast<A>(a[i]), vb = static_cast<A>(b[i]);
        y[i] = max_takes_b(va, vb) ? b[i] : a[i];
        codes |= max_code(va, vb) << (2 * k);
      }
    }
    m[w] = codes;
  }
}

#ifdef TM_X86
// Bit k of lo to bit 2k and bit k of hi to bit 2k + 1, k < 16: the 2-bit codes of a word from
// the two compare masks (bit 0: a < b or unordered; bit 1: a == b or unordered). BMI2's bit
// deposit: 3 instructions where spreading the bits by shifts and masks took 25, a third of the
// float32 loop's (at 65536 elements, in L2, that loop ran 2x torch's time).
__attribute__((target("bmi2"))) static inline uint32_t interleave16(uint32_t lo, uint32_t hi) {
  return _pdep_u32(lo, 0x55555555u) | _pdep_u32(hi, 0xaaaaaaaau);
}

// The same without BMI2 (AVX2 CPUs: AMD's before Zen 3 run pdep in microcode, ~100x slower), by a
// table of the 256 bytes spread out: kSpread8[x] has bit k of x at bit 2k.
constexpr std::array<uint16_t, 256> kSpread8 = [] {
  std::array<uint16_t, 256> t{};
  for (int x = 0; x < 256; ++x)
    for (int k = 0; k < 8; ++k) t[x] |= uint16_t(((x >> k) & 1) << (2 * k));
  return t;
}();
static inline uint32_t interleave16_table(uint32_t lo, uint32_t hi) {
  const auto spread = [](uint32_t v) { return uint32_t(kSpread8[v & 0xff]) | uint32_t(kSpread8[(v >> 8) & 0xff]) << 16; };
  return spread(lo) | spread(hi) << 1;
}

// maximum_forward_words with AVX-512 (only call where vector_isa() == 2): the same y and codes,
// the codes straight from compare masks. GCC vectorised the loop above, but built each word's
// codes by shifting lanes and OR-ing them across the vector (float32 0.65-0.9x torch's forward,
// which writes no codes; bfloat16 0.4-0.6x). Per word of 16 elements:
//   bit 0:    !(a >= b)  (a < b or unordered),   bit 1:  a == b or unordered,
//   takes b:  a < b (bit 0 and not bit 1), or b is NaN;   y = takes b ? b : a.
// Three compares a vector (they issue on one port, the bound of this loop while the data sit in L2).
// The half types run two words per 512-bit vector: 1M bfloat16 / float16 elements, one thread,
// 0.146-0.152 -> 0.095-0.099 ms (torch 0.157-0.163 / 0.109-0.113; AMD Zen 5).
// The half types compare on their bits, as the loop above: NaN is a magnitude above kInfBits,
// otherwise the magnitude signed by the sign bit orders them (+0 and -0 tie).
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi2"))) static void maximum_forward_words_avx512(
    T* __restrict y, uint32_t* __restrict m, const T* __restrict a, const T* __restrict b, int64_t w0, int64_t w1) {
  if constexpr (sizeof(T) == 2) {  // the half types two words at a time, on 512-bit vectors
    const __m512i mag = _mm512_set1_epi16(0x7fff), inf = _mm512_set1_epi16(int16_t(kInfBits<T>)),
                  zero = _mm512_setzero_si512();
    for (; w0 + 2 <= w1; w0 += 2) {
      const __m512i va = _mm512_loadu_si512(a + w0 * 16), vb = _mm512_loadu_si512(b + w0 * 16);
      const __m512i ma = _mm512_and_si512(va, mag), mb = _mm512_and_si512(vb, mag);
      const __m512i ia = _mm512_mask_sub_epi16(ma, _mm512_movepi16_mask(va), zero, ma);  // signed magnitudes
      const __m512i ib = _mm512_mask_sub_epi16(mb, _mm512_movepi16_mask(vb), zero, mb);
      const __mmask32 nan_b = _mm512_cmpgt_epi16_mask(mb, inf), unordered = _mm512_cmpgt_epi16_mask(ma, inf) | nan_b;
      const __mmask32 lt = _mm512_mask_cmplt_epi16_mask(__mmask32(~unordered), ia, ib);
      _mm512_storeu_si512(y + w0 * 16, _mm512_mask_blend_epi16(lt | nan_b, va, vb));
      const uint32_t lo = lt | unordered, hi = _mm512_cmpeq_epi16_mask(ia, ib) | unordered;
      m[w0] = interleave16(lo & 0xffff, hi & 0xffff);
      m[w0 + 1] = interleave16(lo >> 16, hi >> 16);
    }
  }
  for (int64_t w = w0; w < w1; ++w) {
    uint32_t lo, hi;
    if constexpr (std::is_same_v<T, float>) {
      const __m512 va = _mm512_loadu_ps(a + w * 16), vb = _mm512_loadu_ps(b + w * 16);
      lo = _mm512_cmp_ps_mask(va, vb, _CMP_NGE_UQ);
      hi = _mm512_cmp_ps_mask(va, vb, _CMP_EQ_UQ);
      const __mmask16 takes_b = (lo & ~hi) | _mm512_cmp_ps_mask(vb, vb, _CMP_UNORD_Q);  // lo & ~hi: a < b
      _mm512_storeu_ps(y + w * 16, _mm512_mask_blend_ps(takes_b, va, vb));
    } else if constexpr (std::is_same_v<T, double>) {
      lo = hi = 0;
      for (int h = 0; h < 2; ++h) {
        const int64_t e = w * 16 + h * 8;
        const __m512d va = _mm512_loadu_pd(a + e), vb = _mm512_loadu_pd(b + e);
        const __mmask8 nge = _mm512_cmp_pd_mask(va, vb, _CMP_NGE_UQ), eq = _mm512_cmp_pd_mask(va, vb, _CMP_EQ_UQ);
        const __mmask8 takes_b = (nge & ~eq) | _mm512_cmp_pd_mask(vb, vb, _CMP_UNORD_Q);
        _mm512_storeu_pd(y + e, _mm512_mask_blend_pd(takes_b, va, vb));
        lo |= uint32_t(nge) << (8 * h);
        hi |= uint32_t(eq) << (8 * h);
      }
    } else {
      static_assert(sizeof(T) == 2, "float, double or a half type");
      const __m256i mag = _mm256_set1_epi16(0x7fff), inf = _mm256_set1_epi16(int16_t(kInfBits<T>)),
                    zero = _mm256_setzero_si256();
      const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w * 16));
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + w * 16));
      const __m256i ma = _mm256_and_si256(va, mag), mb = _mm256_and_si256(vb, mag);
      const __m256i ia = _mm256_mask_sub_epi16(ma, _mm256_movepi16_mask(va), zero, ma);  // signed magnitudes
      const __m256i ib = _mm256_mask_sub_epi16(mb, _mm256_movepi16_mask(vb), zero, mb);
      const __mmask16 nan_b = _mm256_cmpgt_epi16_mask(mb, inf), unordered = _mm256_cmpgt_epi16_mask(ma, inf) | nan_b;
      const __mmask16 lt = _mm256_mask_cmplt_epi16_mask(__mmask16(~unordered), ia, ib);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + w * 16), _mm256_mask_blend_epi16(lt | nan_b, va, vb));
      lo = lt | unordered;
      hi = _mm256_cmpeq_epi16_mask(ia, ib) | unordered;
    }
    m[w] = interleave16(lo, hi);
  }
}

// The same with AVX2 (only call where vector_isa() >= 1): the compares give lanes of all ones, whose
// sign bits movemask gathers into the two 16-bit masks; y by a variable blend on the takes-b lanes.
template <typename T>
__attribute__((target("avx2"))) static void maximum_forward_words_avx2(T* __restrict y, uint32_t* __restrict m,
                                                                       const T* __restrict a, const T* __restrict b,
                                                                       int64_t w0, int64_t w1) {
  for (int64_t w = w0; w < w1; ++w) {
    uint32_t lo = 0, hi = 0;
    if constexpr (sizeof(T) == 2) {
      const __m256i mag = _mm256_set1_epi16(0x7fff), inf = _mm256_set1_epi16(int16_t(kInfBits<T>));
      const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w * 16));
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + w * 16));
      const __m256i ma = _mm256_and_si256(va, mag), mb = _mm256_and_si256(vb, mag);
      const __m256i sa = _mm256_srai_epi16(va, 15), sb = _mm256_srai_epi16(vb, 15);  // all ones if negative
      const __m256i ia = _mm256_sub_epi16(_mm256_xor_si256(ma, sa), sa);                // signed magnitudes
      const __m256i ib = _mm256_sub_epi16(_mm256_xor_si256(mb, sb), sb);
      const __m256i nan_b = _mm256_cmpgt_epi16(mb, inf), unordered = _mm256_or_si256(_mm256_cmpgt_epi16(ma, inf), nan_b);
      const __m256i lt = _mm256_andnot_si256(unordered, _mm256_cmpgt_epi16(ib, ia));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + w * 16), _mm256_blendv_epi8(va, vb, _mm256_or_si256(lt, nan_b)));
      // packs interleaves the 128-bit halves: bytes lo[0..7], hi[0..7], lo[8..15], hi[8..15]
      const uint32_t bits = uint32_t(_mm256_movemask_epi8(_mm256_packs_epi16(
          _mm256_or_si256(lt, unordered), _mm256_or_si256(_mm256_cmpeq_epi16(ia, ib), unordered))));
      lo = (bits & 0xff) | ((bits >> 8) & 0xff00);
      hi = ((bits >> 8) & 0xff) | ((bits >> 16) & 0xff00);
    } else if constexpr (std::is_same_v<T, float>) {
      for (int h = 0; h < 2; ++h) {
        const int64_t e = w * 16 + h * 8;
        const __m256 va = _mm256_loadu_ps(a + e), vb = _mm256_loadu_ps(b + e);
        const __m256 nge = _mm256_cmp_ps(va, vb, _CMP_NGE_UQ), eq = _mm256_cmp_ps(va, vb, _CMP_EQ_UQ);
        const __m256 takes_b = _mm256_or_ps(_mm256_andnot_ps(eq, nge), _mm256_cmp_ps(vb, vb, _CMP_UNORD_Q));
        _mm256_storeu_ps(y + e, _mm256_blendv_ps(va, vb, takes_b));
        lo |= uint32_t(_mm256_movemask_ps(nge)) << (8 * h);
        hi |= uint32_t(_mm256_movemask_ps(eq)) << (8 * h);
      }
    } else {
      static_assert(std::is_same_v<T, double>, "float, double or a half type");
      for (int q = 0; q < 4; ++q) {
        const int64_t e = w * 16 + q * 4;
        const __m256d va = _mm256_loadu_pd(a + e), vb = _mm256_loadu_pd(b + e);
        const __m256d nge = _mm256_cmp_pd(va, vb, _CMP_NGE_UQ), eq = _mm256_cmp_pd(va, vb, _CMP_EQ_UQ);
        const __m256d takes_b = _mm256_or_pd(_mm256_andnot_pd(eq, nge), _mm256_cmp_pd(vb, vb, _CMP_UNORD_Q));
        _mm256_storeu_pd(y + e, _mm256_blendv_pd(va, vb, takes_b));
        lo |= uint32_t(_mm256_movemask_pd(nge)) << (4 * q);
        hi |= uint32_t(_mm256_movemask_pd(eq)) << (4 * q);
      }
    }
    m[w] = interleave16_table(lo, hi);
  }
}
#endif

// The widest form of maximum_forward_words this CPU runs (vector_isa()).
template <typename T>
static void maximum_words(T* y, uint32_t* m, const T* a, const T* b, int64_t w0, int64_t w1) {
#ifdef TM_X86
  if (vector_isa() == 2) return maximum_forward_words_avx512(y, m, a, b, w0, w1);
  if (vector_isa() == 1) return maximum_forward_words_avx2(y, m, a, b, w0, w1);
#endif
  maximum_forward_words(y, m, a, b, w0, w1);
}

// dst[k] = src[k s] for 0 <= k < len (s: 1, 0 or any stride), vectorised for s = 1 and 0.
template <typename T>
TM_SIMD static void copy_run(T* __restrict dst, const T* __restrict src, int64_t s, int64_t len) {
  if (s == 1) {
    for (int64_t k = 0; k < len; ++k) dst[k] = src[k];
  } else if (s == 0) {
    for (int64_t k = 0; k < len; ++k) dst[k] = src[0];
  } else {
    for (int64_t k = 0; k < len; ++k) dst[k] = src[k * s];
  }
}

// y = max(a, b) and the 2-bit code of each element, 16 per word, by whole vectorised words.
// Same-shape inputs are read in place, the last partial word from zero-padded copies;
// broadcast inputs are gathered block by block into contiguous copies first (for_each_run).
template <typename T>
static void maximum_forward_kernel(T* y, uint32_t* m, const T* a, const T* b, const Broadcast2& bc, int64_t n) {
  const bool flat = bc.ndim == 1 && bc.stride_a[0] == 1 && bc.stride_b[0] == 1;
  if (flat) {
    const int64_t full = n / 16, rest = n % 16;
    at::parallel_for(0, full, kGrain / 16, [&](int64_t w0, int64_t w1) { maximum_words(y, m, a, b, w0, w1); });
    if (rest) {
      T at[16] = {}, bt[16] = {}, yt[16];
      std::copy(a + full * 16, a + n, at);
      std::copy(b + full * 16, b + n, bt);
      maximum_words(yt, m + full, at, bt, 0, 1);
      m[full] &= (1u << (2 * rest)) - 1;  // 0 past n (the padding's ties cleared), as the CUDA kernel
      std::copy(yt, yt + rest, y + full * 16);
    }
    return;
  }
  // An input laid out as the output (contiguous, of the full shape: the x of x vs a bias) is read
  // in place, and y written in place, in the blocks of whole words.
  bool in_place[2] = {true, true};
  int64_t step = 1;
  for (int d = bc.ndim - 1; d >= 0; step *= bc.size[d--]) {
    in_place[0] = in_place[0] && bc.stride_a[d] == step;
    in_place[1] = in_place[1] && bc.stride_b[d] == step;
  }
  at::parallel_for(0, (n + 15) / 16, kGrain / 16, [&](int64_t w0, int64_t w1) {
    constexpr int64_t kBlock = 1024;  // elements per gathered block, a multiple of 16
    T at[kBlock], bt[kBlock], yt[kBlock];
    for (int64_t s = w0 * 16, end = std::min(n, w1 * 16); s < end; s += kBlock) {
      const int64_t e = std::min(end, s + kBlock), len = e - s, words = (len + 15) / 16;
      const bool whole = len == words * 16;  // else the last, partial word: zero-padded copies
      const bool ia = whole && in_place[0], ib = whole && in_place[1];
      for_each_run(bc, s, e, [&](int64_t i, int64_t run, int64_t oa, int64_t sa, int64_t ob, int64_t sb) {
        if (!ia) copy_run(at + (i - s), a + oa, sa, run);
        if (!ib) copy_run(bt + (i - s), b + ob, sb, run);
      });
      std::fill(at + len, at + words * 16, T(0));
      std::fill(bt + len, bt + words * 16, T(0));
      maximum_words(whole ? y + s : yt, m + s / 16, ia ? a + s : at, ib ? b + s : bt, 0, words);
      if (!whole) {
        m[s / 16 + words - 1] &= (1u << (2 * (len % 16))) - 1;  // 0 past n
        std::copy(yt, yt + len, y + s);
      }
    }
  });
}

// da = dy where a won (or at a NaN), dy * 1/2 at a tie (in the acc type), and an exact 0
// where it lost, even for an infinite or NaN dy (as torch): a mask, not dy * share; db
// likewise. W: 0 writes da only, 1 db only, 2 both (one pass over dy and the codes).
template <typename T, int W>
TM_SIMD static void maximum_backward_words(T* __restrict da, T* __restrict db, const T* __restrict dy,
                                           const uint32_t* __restrict m, int64_t w0, int64_t w1) {
  using A = acc_t<T>;
  for (int64_t w = w0; w < w1; ++w) {
    const uint32_t codes = m[w];
    for (int k = 0; k < 16; ++k) {
      const uint32_t c = (codes >> (2 * k)) & 3u;
      const T g = dy[w * 16 + k];
      // g * 1/2 at a tie, else g (winner or NaN): the factor 1 or 1/2 built in its exponent bits, so
      // the product runs in every case. As `c == kMaxTie ? g * 0.5 : g` GCC leaves a float op under
      // a branch (it may trap), which only the AVX-512 clone vectorises, through masks.
      using U = std::conditional_t<sizeof(A) == 4, uint32_t, uint64_t>;
      const U tie = c == kMaxTie;
      const A factor = bits_as<A>(bits_as<U>(A(1)) - (tie << (sizeof(A) == 4 ? 23 : 52)));
      const T v = from_acc<T>(to_acc(g) * factor);
      // (equality selects only: GCC turns `c == 3 || c == 0` into a bit test that does not vectorise)
      if constexpr (W != 1) da[w * 16 + k] = zero_unless(c != kMaxSecond, v);
      if constexpr (W != 0) db[w * 16 + k] = zero_unless(c != kMaxFirst, v);
    }
  }
}

template <typename T, int W>
static void maximum_backward_kernel(T* da, T* db, const T* dy, const uint32_t* m, int64_t n) {
  const int64_t full = n / 16, rest = n % 16;
  at::parallel_for(0, full, kGrain / 16,
                   [&](int64_t w0, int64_t w1) { maximum_backward_words<T, W>(da, db, dy, m, w0, w1); });
  if (rest) {
    T gt[16] = {}, at[16], bt[16];
    std::copy(dy + full * 16, dy + n, gt);
    maximum_backward_words<T, W>(at, bt, gt, m + full, 0, 1);
    if (W != 1) std::copy(at, at + rest, da + full * 16);
    if (W != 0) std::copy(bt, bt + rest, db + full * 16);
  }
}

void maximum_forward_cpu(at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& a, const at::TensorBase& b,
                         const Broadcast2& bc) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "maximum_forward_cpu", [&] {
    maximum_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>()),
                                     a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), bc, y.numel());
  });
}

void maximum_backward_cpu(at::TensorBase& da, at::TensorBase& db, const at::TensorBase& dy, const at::TensorBase& mask) {
  TM_DISPATCH_FLOATING(dy.scalar_type(), "maximum_backward_cpu", [&] {
    scalar_t* pa = da.defined() ? da.data_ptr<scalar_t>() : nullptr;
    scalar_t* pb = db.defined() ? db.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pdy = dy.data_ptr<scalar_t>();
    const uint32_t* pm = reinterpret_cast<const uint32_t*>(mask.data_ptr<uint8_t>());
    if (pa && pb) maximum_backward_kernel<scalar_t, 2>(pa, pb, pdy, pm, dy.numel());
    else if (pa) maximum_backward_kernel<scalar_t, 0>(pa, pb, pdy, pm, dy.numel());
    else maximum_backward_kernel<scalar_t, 1>(pa, pb, pdy, pm, dy.numel());
  });
}

static void register_glue(torch::Library& m) {
  m.impl("maximum_forward", &maximum_forward);
  m.impl("maximum_backward", &maximum_backward);
  m.impl("maximum_backward_both", &maximum_backward_both);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
