// NLLLoss on CUDA (csrc/nll_loss.cpp has the glue and the CPU twin). x [N, C, D], target
// [N, D], i = n * D + d:
//   Forward:  l_i = -w[t_i] x[n, t_i, d] (0 where t_i == ignore_index); y = l (none), or the
//             fixed-order sums of l_i and of W = sum w[t_i] (loss_reduce.cuh), y = sum l [/ W].
//   Backward: dx[n, c, d] = w[c] * -g_i at c = t_i, 0 elsewhere; g_i = dy_i, dy or dy / W
//             (a memset of dx, then one write per target).
// Bad targets (outside [0, C), not ignore_index): target_check.cuh's kernel, queued before the
// loss kernels, finds the smallest such i; the host waits for it alone (the loss runs meanwhile)
// and the glue raises an IndexError naming the target. The loss kernels put NaN in its place, and
// the backward never reads or writes out of bounds for a bad target either (it writes NaN).
// Half types compute in float, float64 in double.
#include "elementwise.cuh"
#include "loss_reduce.cuh"
#include "loss_reduce.h"
#include "target_check.cuh"

namespace torchmodules {
namespace {

// i / d by a 64-bit division, or by multiplication when every index is below 2^31.
struct Div64 {
  int64_t d;
  __device__ __forceinline__ int64_t div(int64_t i) const { return i / d; }
};
struct Div32 {
  FastDiv f;
  __device__ __forceinline__ int64_t div(int64_t i) const { return (int64_t)f.div((uint32_t)i); }
};

template <class F>
void with_div(int64_t d, int64_t n, const F& f) {  // indices below n
  if (d <= 0) f(Div64{1});  // then n = 0: nothing is divided (and make_fastdiv(0) would divide by 0)
  else if (n <= INT32_MAX && d <= INT32_MAX) f(Div32{make_fastdiv((uint32_t)d)});
  else f(Div64{d});
}

template <class A>
__device__ __forceinline__ A quiet_nan() {
  return A(NAN);
}

__device__ __forceinline__ bool is_bad(int64_t t, const NllArgs& a) {
  return t != a.ignore_index && (t < 0 || t >= a.C);
}

// ---- forward ---------------------------------------------------------------------------------

// none: y_i = -w[t_i] x[n, t_i, d], 0 where ignored, NaN where bad.
template <class T, class I, class Div>
__global__ void __launch_bounds__(kThreads)
    nll_forward_none(T* __restrict__ y, const T* __restrict__ x, const I* __restrict__ tgt, const T* __restrict__ w,
                     NllArgs a, Div dd) {
  using A = dacc_t<T>;
  const int64_t n = a.N * a.D;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (int64_t)gridDim.x * kThreads) {
    const int64_t t = (int64_t)tgt[i];
    A v = A(0);
    if (is_bad(t, a)) {
      v = quiet_nan<A>();
    } else if (t != a.ignore_index) {
      const int64_t nn = dd.div(i), d = i - nn * a.D;
      v = -to_float(x[(nn * a.C + t) * a.D + d]) * (w ? to_float(w[t]) : A(1));
    }
    y[i] = from_acc<T>(v);
  }
}

// mean, sum: acc[0] += l_i, acc[1] += w[t_i] over the kept i; y = acc[0] [/ acc[1]], W = acc[1].
template <class T, class I, class Div>
struct NllSum {
  using A = dacc_t<T>;
  static constexpr int K = 2;
  T* y;
  A* total_weight;
  const T* x;
  const I* tgt;
  const T* w;
  NllArgs a;
  Div dd;

  __device__ void add(A (&acc)[2], int64_t i) const {
    const int64_t t = (int64_t)tgt[i];
    if (t == a.ignore_index) return;
    if (t < 0 || t >= a.C) {
      acc[0] += quiet_nan<A>();
      return;
    }
    const int64_t nn = dd.div(i), d = i - nn * a.D;
    const A wv = w ? to_float(w[t]) : A(1);
    acc[0] += -to_float(x[(nn * a.C + t) * a.D + d]) * wv;
    acc[1] += wv;
  }
  __device__ void finish(const A (&s)[2]) const {
    *total_weight = s[1];
    y[0] = from_acc<T>(a.reduction == kMean ? s[0] / s[1] : s[0]);
  }
};

// ---- backward --------------------------------------------------------------------------------

// The backward writes dx in two steps, as torch does: a memset makes all of it 0 (zero bits
// are 0.0 in every float type) at the full write bandwidth, then one thread per target
// i = n * D + d writes dx[n, t_i, d] = w[t_i] * -g_i; NaN over the column of a bad target (the
// forward raised for it), nothing for ignore_index. (A fused kernel that chose per element or per
// 16-byte vector between 0 and the target's value ran at half of copy bandwidth on an H100.)
template <class T, class I, class DivD>
__global__ void __launch_bounds__(kThreads)
    nll_backward_scatter(T* __restrict__ dx, const T* __restrict__ dy, const I* __restrict__ tgt,
                         const T* __restrict__ w, const dacc_t<T>* __restrict__ total_weight, NllArgs a, DivD dd) {
  using A = dacc_t<T>;
  const int64_t n_targets = a.N * a.D;
  A g1 = A(0);  // the one g of mean and sum
  if (a.reduction != kNone) g1 = a.reduction == kMean ? to_float(dy[0]) / *total_weight : to_float(dy[0]);
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < n_targets; i += (int64_t)gridDim.x * kThreads) {
    const int64_t n = dd.div(i), d = i - n * a.D;
    const int64_t t = (int64_t)tgt[i];
    T* col = dx + n * a.C * a.D + d;  // dx[n, c, d] = col[c * D]
    if (t == a.ignore_index) continue;
    if (t < 0 || t >= a.C) {
      for (int64_t c = 0; c < a.C; ++c) col[c * a.D] = from_acc<T>(quiet_nan<A>());
      continue;
    }
    const A g = a.reduction == kNone ? to_float(dy[i]) : g1;
    col[t * a.D] = from_acc<T>((w ? to_float(w[t]) : A(1)) * -g);
  }
}

template <class F>
void dispatch_target(const at::TensorBase& target, const F& f) {  // f(I{}), I the index type
  if (target.scalar_type() == at::kByte) f(uint8_t{});
  else f(int64_t{});
}

}  // namespace

// ---- launchers -------------------------------------------------------------------------------

void nll_loss_forward_cuda(at::TensorBase& out, at::TensorBase& total_weight, NllBad& bad, const at::TensorBase& x,
                           const at::TensorBase& target, const at::TensorBase& weight, const NllArgs& a) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = a.N * a.D;
  TM_DISPATCH_FLOATING(x.scalar_type(), "nll_loss_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    dispatch_target(target, [&](auto tag) {
      using I = decltype(tag);
      const I* tgt = target.data_ptr<I>();
      TargetCheck check(x, tgt, n, a.C, a.ignore_index);  // first, then the loss
      const T* pw = weight.defined() ? dptr<scalar_t>(weight) : nullptr;
      A* ptw = total_weight.data_ptr<A>();
      with_div(a.D, n, [&](const auto& dd) {
        using Div = std::decay_t<decltype(dd)>;
        if (a.reduction == kNone) {
          C10_CUDA_CHECK(cudaMemsetAsync(ptw, 0, sizeof(A), stream));  // W = 0 (zero bits: 0.0)
          if (n > 0)
            tm_launch(x, dim3(unsigned(tm_blocks(n, kThreads))), dim3(kThreads), 0, nll_forward_none<T, I, Div>,
                      dptr<scalar_t>(out), dptr<scalar_t>(x), tgt, pw, a, dd);
        } else {
          const NllSum<T, I, Div> p{dptr<scalar_t>(out), ptw, dptr<scalar_t>(x), tgt, pw, a, dd};
          run_loss_sum(x, p, n);
        }
      });
      const TargetStatus st = check.wait();  // the loss runs meanwhile
      if (st.count > 0) {  // the bad target's value, for the message (target is contiguous)
        I v;
        C10_CUDA_CHECK(cudaMemcpyAsync(&v, tgt + st.first, sizeof(I), cudaMemcpyDeviceToHost, stream));
        C10_CUDA_CHECK(cudaStreamSynchronize(stream));
        bad.index = st.first, bad.value = static_cast<int64_t>(v);
      }
    });
  });
}

void nll_loss_backward_cuda(at::TensorBase& dx, NllBad&, const at::TensorBase& dy, const at::TensorBase& target,
                            const at::TensorBase& weight, const at::TensorBase& total_weight, const NllArgs& a) {
  const int64_t total = a.N * a.C * a.D, n_targets = a.N * a.D;
  if (total == 0) return;
  const c10::cuda::CUDAGuard guard(dx.device());
  C10_CUDA_CHECK(cudaMemsetAsync(dx.data_ptr(), 0, total * dx.element_size(), c10::cuda::getCurrentCUDAStream()));
  TM_DISPATCH_FLOATING(dx.scalar_type(), "nll_loss_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    dispatch_target(target, [&](auto tag) {
      using I = decltype(tag);
      const I* tgt = target.data_ptr<I>();
      const T* pw = weight.defined() ? dptr<scalar_t>(weight) : nullptr;
      const A* ptw = total_weight.data_ptr<A>();
      with_div(a.D, n_targets, [&](const auto& dd) {
        tm_launch(dy, dim3(unsigned(tm_blocks(n_targets, kThreads))), dim3(kThreads), 0,
                  nll_backward_scatter<T, I, std::decay_t<decltype(dd)>>, dptr<scalar_t>(dx), dptr<scalar_t>(dy), tgt,
                  pw, ptw, a, dd);
      });
    });
  });
}


}  // namespace torchmodules
