// SIMD for the CPU kernels, without intrinsics: a function marked TM_SIMD is compiled three
// times (AVX-512, AVX2+FMA, baseline SSE2) and the widest one this CPU runs is picked when
// the library loads (GCC/Clang target_clones). Its loops are written for the vectoriser:
// fixed trip counts, selects instead of branches, `#pragma omp simd` for reductions.
// Such a function cannot be inlined into its caller: mark the loop over a chunk, not the
// body of one element.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(TM_SIMD_ONLY)  // one clone only, to measure what another CPU runs: CFLAGS=-DTM_SIMD_ONLY=v3
#define TM_SIMD_STR(x) #x
#define TM_SIMD_TARGET(isa) __attribute__((target(TM_SIMD_STR(arch=x86-64-isa))))
#define TM_SIMD TM_SIMD_TARGET(TM_SIMD_ONLY)
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define TM_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TM_SIMD
#endif
// For the helpers below, which must be inlined into a TM_SIMD loop to vectorise with it.
#if defined(__GNUC__)
#define TM_INLINE inline __attribute__((always_inline))
#else
#define TM_INLINE inline
#endif

namespace torchmodules {

template <typename To, typename From>
TM_INLINE To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}

// ---- the half types <-> float, on their 16 bits -----------------------------------------
// c10's conversions, as the kernels used them, leave a branch around a float op in the loop,
// which GCC vectorises only with AVX-512 masks (a float op may trap: it runs none where the
// scalar code would not); the AVX2 and SSE2 clones stayed scalar, 5x and 2.3x slower per
// conversion than these. Here the cases meet in integer ops and masks, not selects, and each
// float op's result is used in every case, so nothing is left to move under a branch. Bit
// for bit c10's results.

// float16 bits -> float, exact. With w = h << 16 and o = mag << 13 (mag = h & 0x7fff:
// exponent e, mantissa m; o has e at bit 23 and m at bit 13, a float's places):
//   e >= 1:  v = as_float(o + (224 << 23)) * 2^-112, exact: the exponent rebiased by
//            127 - 15 = 112 in two steps, so e = 31 (inf, NaN) lands on 255 first and stays
//            inf or NaN (a NaN made quiet, its payload kept, as c10's)
//   e = 0 (subnormal, 0):  v = as_float(o + (225 << 23)) * 2^-112 - 2^-14
//            = 2^-14 (1 + m 2^-10) - 2^-14 = m 2^-24, exact
// then the sign of w. One product and one difference for every case (the subnormal's terms
// added in through a mask), both exact. The sign goes on by copysign, in the float registers:
// OR-ed in the integer ones, a scalar loop around std::exp ran 2x slower.
TM_INLINE float half_bits_to_float(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16, o = (w + w) >> 4;
  const uint32_t sub = 0u - uint32_t(o < (1u << 23));  // all ones for a subnormal or 0
  const float v = bits_as<float>(o + (224u << 23) + (sub & (1u << 23))) * bits_as<float>(15u << 23) -  // 2^-112
                  bits_as<float>(sub & (113u << 23));                                                 // 2^-14
  return std::copysign(v, bits_as<float>(w));
}

// float -> float16 bits, round to nearest even. With a = |f|'s bits:
//   normal (|f| >= 2^-14): (a - ((127 - 15) << 23) + 0xfff + lsb) >> 13, lsb = bit 13 of a:
//         the exponent rebiased and the mantissa rounded to 10 bits (a carry moves into the
//         exponent); from 65520 up (inf included) it is >= 0x7c00, taken as inf 0x7c00
//   subnormal, 0 (|f| < 2^-14): round(|f| 2^24) = bits(|f| + 0.5f) - bits(0.5f) (the float
//         add rounds at ulp 2^-24; 2^-14 itself comes out as 0x0400, the least normal)
//   NaN:  0x7c00 | 0x0200 = 0x7e00 (c10's quiet NaN, the payload dropped)
// and the sign from bit 31. The subnormal case is picked by a mask; the result is put
// together in the upper 16 bits and shifted down once (GCC packed each 16-bit part on its
// own otherwise).
TM_INLINE uint16_t float_to_half_bits(float f) {
  const uint32_t x = bits_as<uint32_t>(f), a = x & 0x7fffffffu;
  const uint32_t normal = std::min((a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13, 0x7c00u);
  const uint32_t subnormal = bits_as<uint32_t>(bits_as<float>(a) + 0.5f) - 0x3f000000u;
  const uint32_t sub = 0u - uint32_t(a < (113u << 23));  // all ones below 2^-14
  const uint32_t mag = (subnormal & sub) | (normal & ~sub) | uint32_t(a > 0x7f800000u) << 9;
  return uint16_t(((x & 0x80000000u) | mag << 16) >> 16);
}

// bfloat16 bits -> float: the upper half of the float's bits (exact; NaN kept as it is).
TM_INLINE float bf16_bits_to_float(uint16_t b) { return bits_as<float>(uint32_t(b) << 16); }

// float -> bfloat16 bits, round to nearest even: (x + 0x7fff + lsb) >> 16, lsb = bit 16 of x
// (a carry moves into the exponent, up to inf); NaN: 0x7fc0 (c10's, the sign dropped).
TM_INLINE uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = bits_as<uint32_t>(f);
  return f != f ? uint16_t(0x7fc0) : uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// An element as its accumulation type (float for the half types) and back, rounded: the
// kernels' static_cast<acc_t<T>>(v) and static_cast<T>(a), for TM_SIMD loops. Scalar code
// keeps the static_casts: there c10's conversions are a little faster (these ~15%).
TM_INLINE float to_acc(c10::Half v) { return half_bits_to_float(v.x); }
TM_INLINE float to_acc(c10::BFloat16 v) { return bf16_bits_to_float(v.x); }
TM_INLINE float to_acc(float v) { return v; }
TM_INLINE double to_acc(double v) { return v; }

template <typename T, typename A>
TM_INLINE T from_acc(A v) {
  static_assert(sizeof(T) != 2 || std::is_same_v<A, float>, "from_acc: the half types round from float");
  if constexpr (std::is_same_v<T, c10::Half>) return T(float_to_half_bits(v), T::from_bits());
  else if constexpr (std::is_same_v<T, c10::BFloat16>) return T(float_to_bf16_bits(v), T::from_bits());
  else return static_cast<T>(v);
}

// out[k] = f(a[k sa], b[k sb]) for 0 <= k < len: one run of a broadcast (for_each_run, common.h),
// with loops of their own for the strides that vectorise (1 and 0: a row with a row, or with a
// number). Inlined into a TM_SIMD caller, which gives the ISA.
template <typename O, typename T, typename F>
TM_INLINE void map2_run(O* __restrict out, const T* __restrict a, int64_t sa, const T* __restrict b, int64_t sb,
                        int64_t len, const F& f) {
  if (sa == 1 && sb == 1) {
    for (int64_t k = 0; k < len; ++k) out[k] = f(a[k], b[k]);
  } else if (sa == 1 && sb == 0) {
    for (int64_t k = 0; k < len; ++k) out[k] = f(a[k], b[0]);
  } else if (sa == 0 && sb == 1) {
    for (int64_t k = 0; k < len; ++k) out[k] = f(a[0], b[k]);
  } else {
    for (int64_t k = 0; k < len; ++k) out[k] = f(a[k * sa], b[k * sb]);
  }
}

// max_k to_acc(x[k]) and sum_k to_acc(x[k]) over k < n (max: -inf for n = 0, a NaN dropped as
// std::max drops it), in four chains of one 64-byte vector each (W lanes), over consecutive vectors
// of x: a loop carrying one vector through x waits on each step's latency (4 cycles a vector),
// which bounds a pass this light (log_softmax's max over a 1024-element row in L2: a fifth of the
// row's time). The chains read x in order: over its four quarters instead (four streams, each
// 16 cache lines of a 1024-float row) the hardware prefetch lost track, and log_softmax's backward
// from memory (4096 x 1024 floats, one thread) took 1.5 ms where this takes 0.9 (AMD Zen 5).
// The rest after the blocks of 4 W: whole vectors into c0, c1, c2, and a last part vector as the W
// elements that end the row, those already counted replaced by init, into c3. The chains are then
// combined lane by lane, (c0 + c1) + (c2 + c3), and the lanes in halves (lane k + lane k + h, h = W/2,
// ..., 1). A row of 32-63 floats went through a scalar loop, 4 cycles an element, before: its
// log_softmax took 2.4x torch's time. Rows shorter than W run in order.
// The order of the sum depends on n alone, not on the CPU. Inlined into a TM_SIMD caller.
// f maps each to_acc(x[k]) first (row_sum_exp: exp(x - m)). op and f are structs with TM_INLINE calls:
// a lambda's body is a function of the default ISA, which GCC may leave out of line, unvectorised
// (row_sum_exp's were: 5x the time of a 32-float row's log_softmax).
template <int W, typename T, typename A, typename F, typename M>
TM_INLINE void reduce_step(A* __restrict c, const T* __restrict v, const F& op, const M& f) {
#pragma omp simd
  for (int k = 0; k < W; ++k) c[k] = op(c[k], f(to_acc(v[k])));
}
// c[k] = op(c[k], c[k + H]) for k < H, then for H / 2, ..., 1: c[0] the op of the 2H lanes. A step
// per template instance, so that each loop has a constant count (a loop over H ran from the stack).
template <int H, typename A, typename F>
TM_INLINE void fold_halves(A* __restrict c, const F& op) {
  if constexpr (H >= 1) {
#pragma omp simd
    for (int k = 0; k < H; ++k) c[k] = op(c[k], c[k + H]);
    fold_halves<H / 2>(c, op);
  }
}
template <typename A>
struct MaxOp {
  TM_INLINE A operator()(A m, A v) const { return std::max(m, v); }
};
template <typename A>
struct AddOp {
  TM_INLINE A operator()(A s, A v) const { return s + v; }
};
template <typename A>
struct Same {
  TM_INLINE A operator()(A v) const { return v; }
};
template <typename T, typename A, typename F, typename M>
TM_INLINE A row_reduce4(const T* __restrict x, int64_t n, A init, const F& op, const M& f) {
  constexpr int W = 64 / sizeof(A);
  A r = init;
  if (n < W) {
    for (int64_t i = 0; i < n; ++i) r = op(r, f(to_acc(x[i])));
    return r;
  }
  const int64_t q = n / (4 * W), rest = n - 4 * W * q;
  A c0[W], c1[W], c2[W], c3[W];
  for (int k = 0; k < W; ++k) c0[k] = c1[k] = c2[k] = c3[k] = init;
  for (int64_t b = 0; b < q; ++b) {
    const T* __restrict p = x + b * 4 * W;
#pragma omp simd
    for (int k = 0; k < W; ++k) {
      c0[k] = op(c0[k], f(to_acc(p[k])));
      c1[k] = op(c1[k], f(to_acc(p[W + k])));
      c2[k] = op(c2[k], f(to_acc(p[2 * W + k])));
      c3[k] = op(c3[k], f(to_acc(p[3 * W + k])));
    }
  }
  const T* __restrict p = x + 4 * W * q;
  if (rest >= W) reduce_step<W>(c0, p, op, f);
  if (rest >= 2 * W) reduce_step<W>(c1, p + W, op, f);
  if (rest >= 3 * W) reduce_step<W>(c2, p + 2 * W, op, f);
  if (const int64_t t = rest % W) {  // the last t elements, in lanes W - t .. W - 1
    const T* __restrict v = x + n - W;
#pragma omp simd
    for (int k = 0; k < W; ++k) {
      const A fv = f(to_acc(v[k]));
      c3[k] = op(c3[k], k >= W - t ? fv : init);
    }
  }
#pragma omp simd
  for (int k = 0; k < W; ++k) c0[k] = op(op(c0[k], c1[k]), op(c2[k], c3[k]));
  fold_halves<W / 2>(c0, op);
  return c0[0];
}
template <typename T>
TM_INLINE auto row_max(const T* __restrict x, int64_t n) {
  using A = decltype(to_acc(x[0]));
  return row_reduce4(x, n, -std::numeric_limits<A>::infinity(), MaxOp<A>{}, Same<A>{});
}
template <typename T>
TM_INLINE auto row_sum(const T* __restrict x, int64_t n) {
  using A = decltype(to_acc(x[0]));
  return row_reduce4(x, n, A(0), AddOp<A>{}, Same<A>{});
}

// f(k) for k < n, an elementwise map whose output overlaps none of its inputs: rows of W or more
// as whole vectors of W, the rest as the row's last W elements (some written twice, with the same
// values). GCC's own loop ran that rest through its scalar epilogue (LogSoftmax's backward over rows
// of 28 floats: 0.8x torch's time). Rows shorter than W in order. f: a struct with a TM_INLINE call.
template <int W, typename F>
TM_INLINE void row_map(int64_t n, const F& f) {
  if (n < W) {
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
  for (int64_t j = 0;; j += W) {
    if (j + W > n) j = n - W;  // the last, overlapping vector
#pragma omp simd
    for (int k = 0; k < W; ++k) f(j + k);
    if (j + W == n) break;
  }
}

// lo <= v <= hi by selects (std::fmin/fmax do not vectorise); NaN passes through.
template <typename T>
TM_INLINE T clamp_select(T v, T lo, T hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

// v where keep, else +0.0, by a mask on v's bits. As a select (`keep ? v : 0`) GCC may move
// the float op that made v under a branch (a float op may trap), and only the AVX-512 clone
// vectorises that, through masks.
template <typename T>
TM_INLINE T zero_unless(bool keep, T v) {
  using B = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  return bits_as<T>(B(bits_as<B>(v) & (B(0) - B(keep))));
}

// exp(v) in plain arithmetic the vectoriser can widen (std::exp stays a scalar call).
//   v = n ln2 + r, |r| <= ln2 / 2:  exp(v) = 2^n exp(r),  exp(r) = sum_{k <= K} r^k / k!
// ln2 is split in a high part with few mantissa bits (n * ln2_hi is exact) and the rest.
// Truncation error r^(K+1) / (K+1)! relative: 5e-9 for float (K = 7, < 1/10 ulp),
// 2e-18 for double (K = 13). 2^n is built from exponent bits in two halves, 2^n1 2^n2,
// so results near the overflow and in the denormal range come out right (p 2^n1 is exact,
// the second product rounds once); n is clamped so that both halves stay normal, and past
// the clamp the products overflow to +inf. Below the underflow (v < -104 for float) the
// polynomial of a large negative r is meaningless: the result is zeroed through a mask of
// v's bits (negative, beyond the threshold, not NaN: as unsigned, threshold < bits <= -inf).
// No float select on v: with trapping math GCC if-converts none, and the AVX2 and SSE
// clones stayed scalar (4x slower log_softmax there); the AVX-512 clone masked it.
// (float: the clamp on t = v log2(e) as two integer mins on its bits, 2 instructions where the
// float selects took 7: below bits(-252.f) as unsigned takes every t from -252 down to -inf, and
// then below bits(254.f) as signed every t from 254 up to +inf. A NaN t comes out clamped, which
// changes nothing: r, and so the result, is NaN from v. The exponent halves are n1 = ceil(n / 2),
// an add and a shift (the signed division's rounding fixup took three more): the same n1 as the
// truncating division for n <= 0, and for n > 0 the same product, both halves' scalings exact.)
TM_INLINE float fast_exp(float v) {
  uint32_t tb = bits_as<uint32_t>(v * 1.44269504088896341f);
  tb = tb < 0xc37c0000u ? tb : 0xc37c0000u;                                           // t >= -252
  tb = bits_as<uint32_t>(std::min(int32_t(tb), int32_t(0x437e0000u)));                 // t <= 254
  const float n = std::nearbyint(bits_as<float>(tb));
  const float r = (v - n * 0.693145751953125f) - n * 1.42860682e-6f;
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t n1 = (static_cast<int32_t>(n) + 1) >> 1, n2 = static_cast<int32_t>(n) - n1;  // each in [-126, 127]
  const float e = p * bits_as<float>((static_cast<uint32_t>(n1) + 127u) << 23) *
                  bits_as<float>((static_cast<uint32_t>(n2) + 127u) << 23);
  const uint32_t b = bits_as<uint32_t>(v);
  const uint32_t zero = 0u - uint32_t(b > 0xc2d00000u && b <= 0xff800000u);  // -104 > v >= -inf
  return bits_as<float>(bits_as<uint32_t>(e) & ~zero);
}

TM_INLINE double fast_exp(double v) {
  const double n = std::nearbyint(clamp_select(v * 1.4426950408889634, -2044.0, 2046.0));
  const double r = (v - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int32_t n1 = static_cast<int32_t>(n) / 2, n2 = static_cast<int32_t>(n) - n1;  // each in [-1022, 1023]
  const double e = p * bits_as<double>((static_cast<uint64_t>(n1) + 1023u) << 52) *
                   bits_as<double>((static_cast<uint64_t>(n2) + 1023u) << 52);
  const uint64_t b = bits_as<uint64_t>(v);
  const uint64_t zero = 0u - uint64_t(b > 0xc087500000000000u && b <= 0xfff0000000000000u);  // -746 > v >= -inf
  return bits_as<double>(bits_as<uint64_t>(e) & ~zero);
}

// sum_k exp(to_acc(x[k]) - m) in row_sum's order (row_reduce4): a loop with an `omp simd` reduction
// ran its tail (n mod 16 floats) and its final sum of the 16 lanes one element at a time.
template <typename A>
struct ExpShift {
  A m;
  TM_INLINE A operator()(A v) const { return fast_exp(v - m); }
};
template <typename T, typename A>
TM_INLINE A row_sum_exp(const T* __restrict x, int64_t n, A m) {
  return row_reduce4(x, n, A(0), AddOp<A>{}, ExpShift<A>{m});
}

// log(s) in plain arithmetic the vectoriser can widen, for the column loops' normalisers s >= 1
// (std::log stays a scalar call, a fifth of LogSoftmax's forward over 21 classes). Any positive
// normal s; +inf and NaN come back as they are (bits at or above +inf's); 0, subnormals and
// negatives are outside its domain.
//   s = 2^e m, m in [sqrt(1/2), sqrt(2)):  log s = e ln2 + log m,
//   log m = 2 atanh(z) = 2 (z + z^3/3 + z^5/5 + ...),  z = (m - 1) / (m + 1), |z| <= 0.1716.
// Truncation z^(2K+2) / (2K+3) relative: K = 4 (to z^9 / 9) leaves 2e-9 for float, K = 10 (to
// z^21 / 21) 6e-19 for double; m - 1 is exact, z rounds twice, so about 1 ulp. e ln2 as e ln2_hi (exact:
// ln2_hi has few mantissa bits) + e ln2_lo, the split of fast_exp. m comes from s's bits minus
// sqrt(1/2)'s: the exponent field's borrow gives e, the mantissa plus sqrt(1/2)'s lands in the range.
// (U: the bits, kTop: sqrt(1/2)'s bits, kMant: the mantissa field, kTerms: the series' terms.)
template <typename F, typename U, U kTop, U kMant, int kShift, int kTerms>
TM_INLINE F fast_log_series(F s, F ln2_hi, F ln2_lo) {
  using I = std::make_signed_t<U>;
  const U b = bits_as<U>(s), d = b - kTop;
  const F e = static_cast<F>(static_cast<I>(d) >> kShift);
  const F m = bits_as<F>((d & kMant) + kTop);
  const F z = (m - F(1)) / (m + F(1)), z2 = z * z;
  F p = F(1) / F(2 * kTerms - 1);
#pragma GCC unroll 16
  for (int k = kTerms - 2; k >= 0; --k) p = p * z2 + F(1) / F(2 * k + 1);
  const F r = e * ln2_hi + (F(2) * z * p + e * ln2_lo);
  const U same = U(0) - U(b >= (U(~U(0)) >> 1 & ~kMant));  // +inf, NaN: all exponent bits set
  return bits_as<F>((bits_as<U>(r) & ~same) | (b & same));
}
TM_INLINE float fast_log(float s) {
  return fast_log_series<float, uint32_t, 0x3f3504f3u, 0x007fffffu, 23, 5>(s, 0.693145751953125f, 1.42860682e-6f);
}
TM_INLINE double fast_log(double s) {
  return fast_log_series<double, uint64_t, 0x3fe6a09e667f3bcdu, 0x000fffffffffffffu, 52, 11>(
      s, 6.93147180369123816490e-01, 1.90821492927058770002e-10);
}

}  // namespace torchmodules
