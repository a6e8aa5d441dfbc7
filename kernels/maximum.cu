// Maximum on CUDA.  Forward: y = max(a, b) (broadcast, NaN propagates) and a 2-bit MaxCode
// per element, 16 to a little-endian uint32 word.  Backward: da, db = dy * share(code, 0 / 1), one or both.
#include <type_traits>

#include "elementwise.cuh"

namespace torchmodules {
namespace {

// y_i = max(a_i, b_i), NaN if either is (b's NaN where both are);
// code_i = a > b: kMaxFirst, a < b: kMaxSecond, a == b: kMaxTie, unordered: kMaxNaN,
// in bits 2(i%16) of m[i/16] (0 past n).  Lane l of a warp owns V adjacent elements (a
// 16-byte vector when V > 1); the 16/V lanes that share a word OR their bits by shuffles.
template <typename T, int V, int M, typename Idx>
__global__ void __launch_bounds__(kThreads)
    maximum_forward_kernel(T* __restrict__ y, uint32_t* __restrict__ m, const T* __restrict__ a,
                           const T* __restrict__ b, int64_t n, Idx idx) {
  using A = dacc_t<T>;
  constexpr int kU = V == 1 ? 4 : 2;
  constexpr int kLanesPerWord = 16 / V;
  const int lane = threadIdx.x & 31;
  const int64_t nvec = (n + V - 1) / V;
  T sa = from_acc<T>(A(0)), sb = sa;  // the single element of a stride-0 operand
  if constexpr (M == kScalarA) sa = a[0];
  if constexpr (M == kScalarB) sb = b[0];
  // base is uniform across the block, so every lane of a warp reaches the shuffles.
  for (int64_t base = (int64_t)blockIdx.x * kThreads * kU; base < nvec; base += (int64_t)gridDim.x * kThreads * kU) {
    Pack<T, V> pa[kU], pb[kU];
    int cnt[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t e0 = (base + u * kThreads + threadIdx.x) * V;
      cnt[u] = (int)imax(0, imin(V, n - e0));
      load_pair<T, V, M>(pa[u], pb[u], a, b, sa, sb, e0, cnt[u], idx);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t e0 = (base + u * kThreads + threadIdx.x) * V;
      Pack<T, V> py;
      uint32_t bits = 0;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A fa = to_float(pa[u].v[j]), fb = to_float(pb[u].v[j]);
        const uint32_t code = fa > fb ? kMaxFirst : fa < fb ? kMaxSecond : fa == fb ? kMaxTie : kMaxNaN;
        const bool take_b = code == kMaxSecond || (code == kMaxNaN && fb != fb);  // b's NaN first, as the CPU
        py.v[j] = take_b ? pb[u].v[j] : pa[u].v[j];
        if (j < cnt[u]) bits |= code << (2 * j);
      }
      if (cnt[u] == V) {
        *reinterpret_cast<Pack<T, V>*>(y + e0) = py;
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j)
          if (j < cnt[u]) y[e0 + j] = py.v[j];
      }
      bits <<= (lane % kLanesPerWord) * 2 * V;
#pragma unroll
      for (int o = 1; o < kLanesPerWord; o <<= 1) bits |= __shfl_xor_sync(0xffffffffu, bits, o);
      if (lane % kLanesPerWord == 0 && cnt[u] > 0) m[e0 / 16] = bits;
    }
  }
}

template <typename T, int V, int M, typename Idx>
void launch_maximum(const at::TensorBase& on, T* y, uint32_t* m, const T* a, const T* b, int64_t n, const Idx& idx) {
  constexpr int kU = V == 1 ? 4 : 2;
  tm_launch(on, dim3(tm_blocks((n + V - 1) / V, kThreads * kU)), dim3(kThreads), 0,
            maximum_forward_kernel<T, V, M, Idx>, y, m, a, b, n, idx);
}

// da_i = dy_i * share(code_i, 0), db_i = dy_i * share(code_i, 1): dy where this input won
// (or at a NaN), dy / 2 at a tie, 0 where it lost (a true 0 even for an infinite or NaN dy,
// as torch's masked_fill). W: 0 writes da only, 1 db only, 2 both from one read of dy.
// One vector of V elements per thread (V | 16: a vector never straddles two words).
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> maximum_select(const Pack<T, V>& g, uint32_t word, int which) {
  using A = dacc_t<T>;
  Pack<T, V> p;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float share = maximum_share((word >> (2 * j)) & 3u, which);
    p.v[j] = share == 0.f ? from_acc<T>(A(0)) : share == 1.f ? g.v[j] : from_acc<T>(to_float(g.v[j]) * A(share));
  }
  return p;
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* d, const Pack<T, V>& p, int64_t e0, int cnt) {
  if (cnt == V) {
    *reinterpret_cast<Pack<T, V>*>(d + e0) = p;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (j < cnt) d[e0 + j] = p.v[j];
  }
}

template <typename T, int V, bool kAlignedMask, int W>
__global__ void __launch_bounds__(kThreads)
    maximum_backward_kernel(T* __restrict__ da, T* __restrict__ db, const T* __restrict__ dy,
                            const uint8_t* __restrict__ m, int64_t n) {
  const int64_t nvec = (n + V - 1) / V;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  for (int64_t v = (int64_t)blockIdx.x * kThreads + threadIdx.x; v < nvec; v += step) {
    const int64_t e0 = v * V;
    const int cnt = (int)imin(V, n - e0);
    const uint32_t word = load_word<kAlignedMask>(m, e0 / 16) >> (2 * (e0 % 16));
    Pack<T, V> g;
    if (cnt == V) {
      g = *reinterpret_cast<const Pack<T, V>*>(dy + e0);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (j < cnt) g.v[j] = dy[e0 + j];
    }
    if constexpr (W != 1) store_pack(da, maximum_select(g, word, 0), e0, cnt);
    if constexpr (W != 0) store_pack(db, maximum_select(g, word, 1), e0, cnt);
  }
}

template <typename T, int V, bool kAlignedMask>
void launch_maximum_backward(const at::TensorBase& on, T* da, T* db, const T* dy, const uint8_t* m, int64_t n) {
  const dim3 blocks(tm_blocks((n + V - 1) / V, kThreads)), threads(kThreads);
  if (da && db) tm_launch(on, blocks, threads, 0, maximum_backward_kernel<T, V, kAlignedMask, 2>, da, db, dy, m, n);
  else if (da) tm_launch(on, blocks, threads, 0, maximum_backward_kernel<T, V, kAlignedMask, 0>, da, db, dy, m, n);
  else tm_launch(on, blocks, threads, 0, maximum_backward_kernel<T, V, kAlignedMask, 1>, da, db, dy, m, n);
}

}  // namespace

void maximum_forward_cuda(at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& a, const at::TensorBase& b,
                          const Broadcast2& bc) {
  const int64_t n = y.numel();
  if (n == 0) return;
  TORCH_CHECK(tm_aligned(4, {mask.data_ptr()}), "torchmodules.maximum: mask must be 4-byte aligned");
  TM_DISPATCH_FLOATING(y.scalar_type(), "maximum_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    T* py = dptr<scalar_t>(y);
    uint32_t* pm = reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>());
    const T* pa = dptr<scalar_t>(a);
    const T* pb = dptr<scalar_t>(b);
    const bool one = bc.ndim == 1;
    const int64_t s_a = one ? bc.stride_a[0] : -1, s_b = one ? bc.stride_b[0] : -1;
    if (one && s_a == 1 && s_b == 1) {
      if (tm_aligned(16, {py, pa, pb})) launch_maximum<T, V, kContig>(y, py, pm, pa, pb, n, NoIndex{});
      else launch_maximum<T, 1, kContig>(y, py, pm, pa, pb, n, NoIndex{});
    } else if (one && s_a == 0 && s_b == 1) {
      if (tm_aligned(16, {py, pb})) launch_maximum<T, V, kScalarA>(y, py, pm, pa, pb, n, NoIndex{});
      else launch_maximum<T, 1, kScalarA>(y, py, pm, pa, pb, n, NoIndex{});
    } else if (one && s_a == 1 && s_b == 0) {
      if (tm_aligned(16, {py, pa})) launch_maximum<T, V, kScalarB>(y, py, pm, pa, pb, n, NoIndex{});
      else launch_maximum<T, 1, kScalarB>(y, py, pm, pa, pb, n, NoIndex{});
    } else if (n <= INT32_MAX) {
      launch_maximum<T, 1, kGeneral>(y, py, pm, pa, pb, n, make_fast(bc));
    } else {
      launch_maximum<T, 1, kGeneral>(y, py, pm, pa, pb, n, bc);
    }
  });
}

void maximum_backward_cuda(at::TensorBase& da, at::TensorBase& db, const at::TensorBase& dy, const at::TensorBase& mask) {
  const int64_t n = dy.numel();
  if (n == 0) return;
  TM_DISPATCH_FLOATING(dy.scalar_type(), "maximum_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    T* pa = da.defined() ? dptr<scalar_t>(da) : nullptr;
    T* pb = db.defined() ? dptr<scalar_t>(db) : nullptr;
    const T* pdy = dptr<scalar_t>(dy);
    const uint8_t* pm = mask.data_ptr<uint8_t>();
    const bool vec = tm_aligned(16, {pa, pb, pdy});
    const bool am = tm_aligned(4, {pm});
    if (vec && am) launch_maximum_backward<T, V, true>(dy, pa, pb, pdy, pm, n);
    else if (vec) launch_maximum_backward<T, V, false>(dy, pa, pb, pdy, pm, n);
    else if (am) launch_maximum_backward<T, 1, true>(dy, pa, pb, pdy, pm, n);
    else launch_maximum_backward<T, 1, false>(dy, pa, pb, pdy, pm, n);
  });
}


}  // namespace torchmodules
