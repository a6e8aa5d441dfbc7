// Duplicate on CUDA.  Forward: y_1 = ... = y_n = x.   Backward: dx = dy_1 + ... + dy_n.
#include <type_traits>

#include "elementwise.cuh"

namespace torchmodules {
namespace {

constexpr int kMaxPtrs = 16;  // tensors per launch, passed by value in the kernel arguments

template <typename T>
struct Ptrs {
  T* p[kMaxPtrs];
};

// ys.p[j][i] = x[i] for j < k: x read once, written k times.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    duplicate_forward_kernel(Ptrs<T> ys, int k, const T* __restrict__ x, int64_t n) {
  const int64_t nfull = n / V;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  const int64_t tid = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  for (int64_t v = tid; v < nfull; v += step) {
    const Pack<T, V> p = reinterpret_cast<const Pack<T, V>*>(x)[v];
#pragma unroll
    for (int j = 0; j < kMaxPtrs; ++j)  // constant indices keep ys in the argument bank
      if (j < k) reinterpret_cast<Pack<T, V>*>(ys.p[j])[v] = p;
  }
  for (int64_t i = nfull * V + tid; i < n; i += step) {  // tail of n % V elements
    const T t = x[i];
#pragma unroll
    for (int j = 0; j < kMaxPtrs; ++j)
      if (j < k) ys.p[j][i] = t;
  }
}

// out[i] = (acc_in ? acc_in[i] : -0.0) + g_0[i] + ... + g_{k-1}[i], summed in A in that order (-0.0: the
// identity of +, so a sum of -0.0 gradients stays -0.0, as the CPU's and torch's). out may be
// acc_in (a running sum over several launches): each element is read, then
// written, by the same thread.
template <typename T, typename OutT, int V>
__global__ void __launch_bounds__(kThreads)
    duplicate_backward_kernel(OutT* out, const dacc_t<T>* acc_in, Ptrs<const T> g, int k, int64_t n) {
  using A = dacc_t<T>;
  const int64_t nfull = n / V;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  const int64_t tid = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  for (int64_t v = tid; v < nfull; v += step) {
    A s[V];
    if (acc_in) {
      const Pack<A, V> a = reinterpret_cast<const Pack<A, V>*>(acc_in)[v];
#pragma unroll
      for (int e = 0; e < V; ++e) s[e] = a.v[e];
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) s[e] = A(-0.0);
    }
#pragma unroll
    for (int j = 0; j < kMaxPtrs; ++j) {  // constant indices keep g in the argument bank
      if (j < k) {
        const Pack<T, V> p = reinterpret_cast<const Pack<T, V>*>(g.p[j])[v];
#pragma unroll
        for (int e = 0; e < V; ++e) s[e] += to_float(p.v[e]);
      }
    }
    Pack<OutT, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.v[e] = to_out<OutT>(s[e]);
    reinterpret_cast<Pack<OutT, V>*>(out)[v] = o;
  }
  for (int64_t i = nfull * V + tid; i < n; i += step) {  // tail of n % V elements
    A s = acc_in ? acc_in[i] : A(-0.0);
#pragma unroll
    for (int j = 0; j < kMaxPtrs; ++j)
      if (j < k) s += to_float(g.p[j][i]);
    out[i] = to_out<OutT>(s);
  }
}

}  // namespace

void duplicate_forward_cuda(TensorBaseList ys, const at::TensorBase& x) {
  const int64_t n = x.numel();
  if (n == 0 || ys.empty()) return;
  TM_DISPATCH_FLOATING(x.scalar_type(), "duplicate_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    const T* px = dptr<scalar_t>(x);
    // More than kMaxPtrs copies: one launch per kMaxPtrs (x read once per launch).
    for (size_t j0 = 0; j0 < ys.size(); j0 += kMaxPtrs) {
      const int k = (int)std::min<size_t>(kMaxPtrs, ys.size() - j0);
      Ptrs<T> p{};
      bool aligned = tm_aligned(16, {px});
      for (int j = 0; j < k; ++j) {
        p.p[j] = dptr<scalar_t>(ys[j0 + j]);
        aligned = aligned && tm_aligned(16, {p.p[j]});
      }
      if (aligned)
        tm_launch(x, dim3(tm_blocks(n / V + 1, kThreads)), dim3(kThreads), 0, duplicate_forward_kernel<T, V>, p, k,
                  px, n);
      else
        tm_launch(x, dim3(tm_blocks(n, kThreads)), dim3(kThreads), 0, duplicate_forward_kernel<T, 1>, p, k, px, n);
    }
  });
}

void duplicate_backward_cuda(at::TensorBase& dx, TensorBaseList grads) {
  const int64_t n = dx.numel();
  if (n == 0) return;
  TORCH_CHECK(!grads.empty(), "torchmodules.duplicate_backward: needs at least one gradient");
  TM_DISPATCH_FLOATING(dx.scalar_type(), "duplicate_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    constexpr int V = 16 / sizeof(T);
    constexpr bool kSame = std::is_same<A, T>::value;
    const size_t G = grads.size();
    T* pdx = dptr<scalar_t>(dx);
    // Over kMaxPtrs gradients: a running sum in A across launches, in dx itself when A is
    // T, else in a float workspace (so half types round once, at the end).
    at::TensorBase ws;
    A* acc = nullptr;
    if (G > (size_t)kMaxPtrs) {
      if constexpr (kSame) {
        acc = reinterpret_cast<A*>(pdx);
      } else {
        ws = new_workspace({n}, dx.options().dtype(at::kFloat));
        acc = reinterpret_cast<A*>(ws.data_ptr<float>());
      }
    }
    bool aligned = tm_aligned(16, {pdx}) && (acc == nullptr || tm_aligned(sizeof(A) * V, {acc}));
    for (const at::TensorBase& g : grads) aligned = aligned && tm_aligned(16, {g.data_ptr()});
    const int64_t blocks = tm_blocks(aligned ? n / V + 1 : n, kThreads);
    for (size_t j0 = 0; j0 < G; j0 += kMaxPtrs) {
      const int k = (int)std::min<size_t>(kMaxPtrs, G - j0);
      Ptrs<const T> p{};
      for (int j = 0; j < k; ++j) p.p[j] = dptr<scalar_t>(grads[j0 + j]);
      const A* in = j0 == 0 ? nullptr : acc;
      if (j0 + k == G) {  // last launch writes dx
        if (aligned)
          tm_launch(dx, dim3(blocks), dim3(kThreads), 0, duplicate_backward_kernel<T, T, V>, pdx, in, p, k, n);
        else
          tm_launch(dx, dim3(blocks), dim3(kThreads), 0, duplicate_backward_kernel<T, T, 1>, pdx, in, p, k, n);
      } else {
        if (aligned)
          tm_launch(dx, dim3(blocks), dim3(kThreads), 0, duplicate_backward_kernel<T, A, V>, acc, in, p, k, n);
        else
          tm_launch(dx, dim3(blocks), dim3(kThreads), 0, duplicate_backward_kernel<T, A, 1>, acc, in, p, k, n);
      }
    }
  });
}


}  // namespace torchmodules
