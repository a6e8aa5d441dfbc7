// Maximum on CUDA.  Forward: y = max(a, b) (broadcast, NaN propagates) and a 2-bit MaxCode
// per element, 16 to a little-endian uint32 word.  Backward: d = dy * share(code, which).
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
void launch_maximum(const at::Tensor& on, T* y, uint32_t* m, const T* a, const T* b, int64_t n, const Idx& idx) {
  constexpr int kU = V == 1 ? 4 : 2;
  tm_launch(on, dim3(tm_blocks((n + V - 1) / V, kThreads * kU)), dim3(kThreads), 0,
            maximum_forward_kernel<T, V, M, Idx>, y, m, a, b, n, idx);
}

// d_i = dy_i * share(code_i, which): dy where this input won (or at a NaN), dy / 2 at a tie,
// 0 where it lost (a true 0 even for an infinite or NaN dy, as torch's masked_fill).
// One vector of V elements per thread (V | 16: a vector never straddles two words).
template <typename T, int V, bool kAlignedMask>
__global__ void __launch_bounds__(kThreads)
    maximum_backward_kernel(T* __restrict__ d, const T* __restrict__ dy, const uint8_t* __restrict__ m, int64_t n,
                            int which) {
  using A = dacc_t<T>;
  const int64_t nvec = (n + V - 1) / V;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  const T zero = from_acc<T>(A(0));
  for (int64_t v = (int64_t)blockIdx.x * kThreads + threadIdx.x; v < nvec; v += step) {
    const int64_t e0 = v * V;
    const int cnt = (int)imin(V, n - e0);
    const uint32_t word = load_word<kAlignedMask>(m, e0 / 16) >> (2 * (e0 % 16));
    Pack<T, V> p;
    if (cnt == V) {
      p = *reinterpret_cast<const Pack<T, V>*>(dy + e0);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (j < cnt) p.v[j] = dy[e0 + j];
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float share = maximum_share((word >> (2 * j)) & 3u, which);
      if (share == 0.f) p.v[j] = zero;
      else if (share != 1.f) p.v[j] = from_acc<T>(to_float(p.v[j]) * A(share));
    }
    if (cnt == V) {
      *reinterpret_cast<Pack<T, V>*>(d + e0) = p;
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (j < cnt) d[e0 + j] = p.v[j];
    }
  }
}

}  // namespace

void maximum_forward_cuda(at::Tensor& y, at::Tensor& mask, const at::Tensor& a, const at::Tensor& b,
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

void maximum_backward_cuda(at::Tensor& d, const at::Tensor& dy, const at::Tensor& mask, int64_t which) {
  const int64_t n = dy.numel();
  if (n == 0) return;
  TM_DISPATCH_FLOATING(dy.scalar_type(), "maximum_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    T* pd = dptr<scalar_t>(d);
    const T* pdy = dptr<scalar_t>(dy);
    const uint8_t* pm = mask.data_ptr<uint8_t>();
    const bool vec = tm_aligned(16, {pd, pdy});
    const bool am = tm_aligned(4, {pm});
    const int w = (int)which;
    const int64_t blocks = tm_blocks(vec ? (n + V - 1) / V : n, kThreads);
    if (vec && am)
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, maximum_backward_kernel<T, V, true>, pd, pdy, pm, n, w);
    else if (vec)
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, maximum_backward_kernel<T, V, false>, pd, pdy, pm, n, w);
    else if (am)
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, maximum_backward_kernel<T, 1, true>, pd, pdy, pm, n, w);
    else
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, maximum_backward_kernel<T, 1, false>, pd, pdy, pm, n, w);
  });
}

TORCH_LIBRARY_IMPL(torchmodules, CUDA, m) {
  m.impl("maximum_forward", &maximum_forward);
  m.impl("maximum_backward", &maximum_backward);
}

}  // namespace torchmodules
