// Shared by the elementwise kernels (relu.cu, duplicate.cu, add.cu, maximum.cu): packed
// 16-byte vectors, the compute type, mask words, and the broadcast reads of add and maximum.
#pragma once

#include <type_traits>

#include "launch.cuh"

namespace torchmodules {
namespace {

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T>
using dacc_t = std::conditional_t<std::is_same<T, double>::value, double, float>;

template <typename O, typename A>
__device__ __forceinline__ O to_out(A v) {
  if constexpr (std::is_same<O, A>::value) return v;
  else return from_acc<O>(v);
}

// Word w of a mask that may sit at any byte address (a view with a storage offset).
template <bool kAligned>
__device__ __forceinline__ uint32_t load_word(const uint8_t* m, int64_t w) {
  if (kAligned) return reinterpret_cast<const uint32_t*>(m)[w];
  const uint8_t* p = m + 4 * w;
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// ---- broadcast reads (add, maximum) ------------------------------------------------------

// Unsigned division by a constant through a multiply (n, d < 2^31).
struct FastDiv {
  uint32_t d, m, s;
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};
inline FastDiv make_fastdiv(uint32_t d) {
  uint32_t s = 0;
  while (s < 32 && (uint64_t(1) << s) < d) ++s;
  const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1;
  return {d, (uint32_t)m, s};
}

// Broadcast2 for outputs of under 2^31 elements: 32-bit divisions by multiplication.
// Dims stored innermost first.
struct Broadcast2Fast {
  int ndim;
  FastDiv div[kMaxDims];
  int64_t stride_a[kMaxDims], stride_b[kMaxDims];
  __device__ __forceinline__ void offsets(int64_t i64, int64_t& oa, int64_t& ob) const {
    uint32_t i = (uint32_t)i64;
    oa = 0;
    ob = 0;
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
      if (d == ndim) break;
      const uint32_t q = div[d].div(i);
      const uint32_t idx = i - q * div[d].d;
      oa += (int64_t)idx * stride_a[d];
      ob += (int64_t)idx * stride_b[d];
      i = q;
    }
  }
};
inline Broadcast2Fast make_fast(const Broadcast2& bc) {
  Broadcast2Fast f{};
  f.ndim = bc.ndim;
  for (int d = 0; d < bc.ndim; ++d) {
    const int s = bc.ndim - 1 - d;
    f.div[d] = make_fastdiv((uint32_t)bc.size[s]);
    f.stride_a[d] = bc.stride_a[s];
    f.stride_b[d] = bc.stride_b[s];
  }
  return f;
}

struct NoIndex {};

// How a and b are read: both contiguous, one of them a single element, or through offsets.
enum Mode { kContig, kScalarA, kScalarB, kGeneral };

__device__ __forceinline__ int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }
__device__ __forceinline__ int64_t imax(int64_t x, int64_t y) { return x > y ? x : y; }

// Elements j < cnt of the V-vector of a contiguous x at e0 (all V: `scalar` when kScalar).
template <typename T, int V, bool kScalar>
__device__ __forceinline__ void load_vec(Pack<T, V>& p, const T* __restrict__ x, T scalar, int64_t e0, int cnt) {
  if constexpr (kScalar) {
#pragma unroll
    for (int j = 0; j < V; ++j) p.v[j] = scalar;
  } else if (cnt == V) {
    p = *reinterpret_cast<const Pack<T, V>*>(x + e0);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (j < cnt) p.v[j] = x[e0 + j];
  }
}

// Elements j < cnt of the output vector at e0, read from a and b as mode M says.
template <typename T, int V, int M, typename Idx>
__device__ __forceinline__ void load_pair(Pack<T, V>& pa, Pack<T, V>& pb, const T* __restrict__ a,
                                          const T* __restrict__ b, T sa, T sb, int64_t e0, int cnt, const Idx& idx) {
  if constexpr (M == kGeneral) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (j < cnt) {
        int64_t oa, ob;
        idx.offsets(e0 + j, oa, ob);
        pa.v[j] = a[oa];
        pb.v[j] = b[ob];
      }
    }
  } else {
    load_vec<T, V, M == kScalarA>(pa, a, sa, e0, cnt);
    load_vec<T, V, M == kScalarB>(pb, b, sb, e0, cnt);
  }
}

}  // namespace
}  // namespace torchmodules
