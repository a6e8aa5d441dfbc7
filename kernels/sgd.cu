// SGD step on CUDA, fused over many tensors.  With b the momentum buffer, m = momentum,
// d = dampening:
//   g = (maximize ? -grad : grad) + weight_decay p
//   if m != 0:  b = first_step ? g : m b + (1 - d) g;   g = nesterov ? g + m b : b
//   p = p - lr g
// One launch updates up to kSgdTensors tensors: each is cut into chunks of kSgdChunk
// elements, one block per chunk, and a table of pointers and sizes travels by value in the
// kernel arguments (about 2.4 KB, under the 4 KB limit). Half types compute in float.
#include <climits>

#include "elementwise.cuh"

namespace torchmodules {
namespace {

constexpr int kSgdTensors = 64;
constexpr int64_t kSgdChunk = 16384;  // elements per block, a multiple of every vector width

template <typename T>
struct SgdTable {
  T* p[kSgdTensors];
  T* b[kSgdTensors];  // null without momentum
  const T* g[kSgdTensors];
  int64_t n[kSgdTensors];
  int first_block[kSgdTensors + 1];  // blocks [first_block[k], first_block[k + 1]) update tensor k
  bool vec[kSgdTensors];             // tensor k's pointers are 16-byte aligned
  int count;
};

// Element i of one tensor: load, update in A, round once on store.
template <typename T, int kMom, bool kWd, bool kNesterov>
__device__ __forceinline__ void sgd_one(T* __restrict__ p, T* __restrict__ b, const T* __restrict__ g, int64_t i,
                                        const SgdCoef<dacc_t<T>>& c) {
  using A = dacc_t<T>;
  A pv = to_float(p[i]), bv = A(0);
  if constexpr (kMom == kSgdMomentum) bv = to_float(b[i]);
  sgd_update<kMom, kWd, kNesterov>(pv, bv, A(to_float(g[i])), c);
  p[i] = to_out<T>(pv);
  if constexpr (kMom != kSgdPlain) b[i] = to_out<T>(bv);
}

template <typename T, int V, int kMom, bool kWd, bool kNesterov>
__global__ void __launch_bounds__(kThreads) sgd_step_kernel(const SgdTable<T> t, const SgdCoef<dacc_t<T>> c) {
  using A = dacc_t<T>;
  // This block's tensor: a scan with constant indices keeps the table in the argument bank.
  const int blk = blockIdx.x;
  T* p = t.p[0];
  T* b = t.b[0];
  const T* g = t.g[0];
  int64_t n = t.n[0];
  int first = 0;
  bool vec = t.vec[0];
#pragma unroll
  for (int k = 1; k < kSgdTensors; ++k) {
    if (k < t.count && blk >= t.first_block[k]) {
      p = t.p[k];
      b = t.b[k];
      g = t.g[k];
      n = t.n[k];
      first = t.first_block[k];
      vec = t.vec[k];
    }
  }
  const int64_t e0 = (int64_t)(blk - first) * kSgdChunk;
  const int64_t e1 = imin(n, e0 + kSgdChunk);
  if (vec) {
    for (int64_t i = e0 + (int64_t)threadIdx.x * V; i < e1; i += (int64_t)kThreads * V) {
      if (i + V <= e1) {
        Pack<T, V> pp = *reinterpret_cast<const Pack<T, V>*>(p + i);
        const Pack<T, V> gp = *reinterpret_cast<const Pack<T, V>*>(g + i);
        Pack<T, V> bp;
        if constexpr (kMom == kSgdMomentum) bp = *reinterpret_cast<const Pack<T, V>*>(b + i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          A pv = to_float(pp.v[j]), bv = A(0);
          if constexpr (kMom == kSgdMomentum) bv = to_float(bp.v[j]);
          sgd_update<kMom, kWd, kNesterov>(pv, bv, A(to_float(gp.v[j])), c);
          pp.v[j] = to_out<T>(pv);
          if constexpr (kMom != kSgdPlain) bp.v[j] = to_out<T>(bv);
        }
        *reinterpret_cast<Pack<T, V>*>(p + i) = pp;
        if constexpr (kMom != kSgdPlain) *reinterpret_cast<Pack<T, V>*>(b + i) = bp;
      } else {
        for (int64_t j = i; j < e1; ++j) sgd_one<T, kMom, kWd, kNesterov>(p, b, g, j, c);
      }
    }
  } else {
    for (int64_t i = e0 + threadIdx.x; i < e1; i += kThreads) sgd_one<T, kMom, kWd, kNesterov>(p, b, g, i, c);
  }
}

}  // namespace

void sgd_step_cuda(TensorBaseList params, TensorBaseList bufs, TensorBaseList grads, const SgdHyper& h) {
  TM_DISPATCH_FLOATING(params[0].scalar_type(), "sgd_step_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    constexpr int V = 16 / sizeof(T);
    const SgdCoef<A> c = sgd_coef<A>(h);
    sgd_dispatch(h, [&](auto mom, auto wd, auto nest) {
      const auto kernel = sgd_step_kernel<T, V, decltype(mom)::value, decltype(wd)::value, decltype(nest)::value>;
      SgdTable<T> t{};
      int64_t blocks = 0;
      const auto launch = [&] {
        t.first_block[t.count] = (int)blocks;
        tm_launch(params[0], dim3((unsigned)blocks), dim3(kThreads), 0, kernel, t, c);
        t = SgdTable<T>{};
        blocks = 0;
      };
      for (size_t k = 0; k < params.size(); ++k) {
        const int64_t n = params[k].numel();
        const int64_t nb = (n + kSgdChunk - 1) / kSgdChunk;
        TORCH_CHECK(nb < INT_MAX, "torchmodules.sgd_step: params[", k, "] has too many elements (", n, ")");
        if (t.count == kSgdTensors || blocks + nb > INT_MAX) launch();
        T* pb = bufs.empty() ? nullptr : dptr<scalar_t>(bufs[k]);
        t.p[t.count] = dptr<scalar_t>(params[k]);
        t.b[t.count] = pb;
        t.g[t.count] = dptr<scalar_t>(grads[k]);
        t.n[t.count] = n;
        t.vec[t.count] = tm_aligned(16, {t.p[t.count], t.g[t.count]}) && (pb == nullptr || tm_aligned(16, {pb}));
        t.first_block[t.count] = (int)blocks;
        blocks += nb;
        ++t.count;
      }
      if (t.count > 0) launch();
    });
  });
}

}  // namespace torchmodules
