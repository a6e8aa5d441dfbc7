// ReLU on CUDA.  Forward: y = x < 0 ? 0 : x (NaN and -0.0 kept, as torch), bit m_i = !(x_i <= 0)
// packed 32 to a little-endian uint32 word.  Backward: dx = m ? dy : 0.
#include <type_traits>

#include "elementwise.cuh"

namespace torchmodules {
namespace {

template <typename T>
__device__ __forceinline__ T zero() {
  return from_acc<T>(dacc_t<T>(0));
}

// y_i = x_i < 0 ? 0 : x_i, bit i%32 of m[i/32] = !(x_i <= 0).
// Lane l of a warp owns elements [V(w+l), V(w+l)+V) (one 16-byte vector when V > 1); the
// 32/V lanes that share a mask word OR their bits together by shuffles (a ballot if V == 1).
// y may be x (Linear+ReLU's unfused path runs it in place: each element is read by the thread
// that writes it, before the write), so neither is __restrict__.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    relu_forward_kernel(T* y, uint32_t* __restrict__ m, const T* x, int64_t n) {
  constexpr int kLanesPerWord = 32 / V;
  const int lane = threadIdx.x & 31;
  const int64_t nvec = (n + V - 1) / V;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  // Loop on the warp's first vector: uniform across the warp, as the shuffles need.
  for (int64_t w = ((int64_t)blockIdx.x * kThreads + threadIdx.x) & ~int64_t(31); w < nvec; w += step) {
    const int64_t e0 = (w + lane) * V;
    uint32_t bits = 0;
    if (e0 + V <= n) {
      Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(x + e0);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const dacc_t<T> v = to_float(p.v[k]);
        bits |= uint32_t(!(v <= dacc_t<T>(0))) << k;
        if (v < dacc_t<T>(0)) p.v[k] = zero<T>();
      }
      *reinterpret_cast<Pack<T, V>*>(y + e0) = p;
    } else {
      for (int k = 0; k < V && e0 + k < n; ++k) {
        const T v = x[e0 + k];
        const dacc_t<T> f = to_float(v);
        bits |= uint32_t(!(f <= dacc_t<T>(0))) << k;
        y[e0 + k] = f < dacc_t<T>(0) ? zero<T>() : v;
      }
    }
    if constexpr (V == 1) {
      bits = __ballot_sync(0xffffffffu, bits);
    } else {
      bits <<= (lane % kLanesPerWord) * V;
#pragma unroll
      for (int o = 1; o < kLanesPerWord; o <<= 1) bits |= __shfl_xor_sync(0xffffffffu, bits, o);
    }
    if (lane % kLanesPerWord == 0 && e0 < n) m[e0 / 32] = bits;
  }
}

// dx_i = bit i%32 of m[i/32] ? dy_i : 0.  One vector of V elements per thread (V | 32, so
// a vector never straddles two words).
template <typename T, int V, bool kAlignedMask>
__global__ void __launch_bounds__(kThreads)
    relu_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const uint8_t* __restrict__ m, int64_t n) {
  const int64_t nvec = (n + V - 1) / V;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  for (int64_t v = (int64_t)blockIdx.x * kThreads + threadIdx.x; v < nvec; v += step) {
    const int64_t e0 = v * V;
    const uint32_t bits = load_word<kAlignedMask>(m, e0 / 32) >> (e0 % 32);
    if (e0 + V <= n) {
      Pack<T, V> p = *reinterpret_cast<const Pack<T, V>*>(dy + e0);
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (!((bits >> k) & 1u)) p.v[k] = zero<T>();
      *reinterpret_cast<Pack<T, V>*>(dx + e0) = p;
    } else {
      for (int k = 0; k < V && e0 + k < n; ++k) dx[e0 + k] = (bits >> k) & 1u ? dy[e0 + k] : zero<T>();
    }
  }
}

}  // namespace

void relu_forward_cuda(at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& x) {
  const int64_t n = x.numel();
  if (n == 0) return;
  TORCH_CHECK(tm_aligned(4, {mask.data_ptr()}), "torchmodules.relu: mask must be 4-byte aligned");
  TM_DISPATCH_FLOATING(x.scalar_type(), "relu_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    T* py = dptr<scalar_t>(y);
    const T* px = dptr<scalar_t>(x);
    uint32_t* pm = reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>());
    if (tm_aligned(16, {py, px})) {
      tm_launch(x, dim3(tm_blocks((n + V - 1) / V, kThreads)), dim3(kThreads), 0, relu_forward_kernel<T, V>, py, pm,
                px, n);
    } else {
      tm_launch(x, dim3(tm_blocks(n, kThreads)), dim3(kThreads), 0, relu_forward_kernel<T, 1>, py, pm, px, n);
    }
  });
}

void relu_backward_cuda(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& mask) {
  const int64_t n = dy.numel();
  if (n == 0) return;
  TM_DISPATCH_FLOATING(dy.scalar_type(), "relu_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    T* pdx = dptr<scalar_t>(dx);
    const T* pdy = dptr<scalar_t>(dy);
    const uint8_t* pm = mask.data_ptr<uint8_t>();
    const bool vec = tm_aligned(16, {pdx, pdy});
    const bool am = tm_aligned(4, {pm});
    const int64_t blocks = tm_blocks(vec ? (n + V - 1) / V : n, kThreads);
    if (vec && am)
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, relu_backward_kernel<T, V, true>, pdx, pdy, pm, n);
    else if (vec)
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, relu_backward_kernel<T, V, false>, pdx, pdy, pm, n);
    else if (am)
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, relu_backward_kernel<T, 1, true>, pdx, pdy, pm, n);
    else
      tm_launch(dy, dim3(blocks), dim3(kThreads), 0, relu_backward_kernel<T, 1, false>, pdx, pdy, pm, n);
  });
}


}  // namespace torchmodules
