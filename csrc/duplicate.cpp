// Duplicate.  Forward: y_1 = ... = y_n = x.   Backward: dx = dy_1 + ... + dy_n.
// The lecture's fan-out: gradients of every copy are summed, in one n-way pass.
#include "half_convert.h"
#include "ops.h"
#include "simd.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

std::vector<at::Tensor> duplicate_forward(const at::Tensor& x, int64_t n) {
  check_floating("duplicate", "input", x);
  TORCH_CHECK(n >= 1, "torchmodules.duplicate: n must be at least 1, got ", n);
  const at::Tensor xc = x.contiguous();
  std::vector<at::Tensor> ys;
  for (int64_t k = 0; k < n; ++k) ys.push_back(new_output(x.sizes(), x.options()));
  if (x.numel() > 0) TM_LAUNCH(duplicate_forward, x, std::vector<at::TensorBase>(ys.begin(), ys.end()), xc);
  return ys;
}

at::Tensor duplicate_backward(at::TensorList grads) {
  TORCH_CHECK(!grads.empty(), "torchmodules.duplicate_backward: needs at least one gradient");
  std::vector<at::TensorBase> gs;
  for (size_t k = 0; k < grads.size(); ++k) {
    check_floating("duplicate_backward", "grads", grads[k]);
    check_same_dtype_device("duplicate_backward", "grads[0]", grads[0], "grads[k]", grads[k]);
    TORCH_CHECK(grads[k].sizes() == grads[0].sizes(), "torchmodules.duplicate_backward: gradients must ",
                "share one shape, got ", grads[0].sizes(), " and ", grads[k].sizes());
    gs.push_back(grads[k].contiguous());
  }
  at::Tensor dx = new_output(grads[0].sizes(), grads[0].options());
  if (dx.numel() > 0) TM_LAUNCH(duplicate_backward, dx, dx, gs);
  return dx;
}

// ---- CPU kernels ---------------------------------------------------------------------------

// y_k[i] = x[i] for every k: x read once per chunk, written n times.
template <typename T>
static void duplicate_forward_kernel(const std::vector<T*>& ys, const T* x, int64_t numel) {
  at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    for (T* y : ys) std::copy(x + b, x + e, y + b);
  });
}

// dx[i] = sum_k g_k[i] for b <= i < e, accumulated in acc_t<T>; compiled per ISA (simd.h).
// Two gradients (the usual fan-out) in one pass; more through a stack buffer of partial sums.
template <typename T>
TM_SIMD static void duplicate_backward_range(T* __restrict dx, const T* const* gs, size_t n, int64_t b, int64_t e) {
  using A = acc_t<T>;
  if (n == 2) {
    const T* __restrict g0 = gs[0];
    const T* __restrict g1 = gs[1];
    for (int64_t i = b; i < e; ++i) dx[i] = from_acc<T>(to_acc(g0[i]) + to_acc(g1[i]));
    return;
  }
  constexpr int64_t kChunk = 1024;
  A acc[kChunk];
  for (int64_t c = b; c < e; c += kChunk) {
    const int64_t len = std::min(kChunk, e - c);
    const T* __restrict g0 = gs[0] + c;
    for (int64_t i = 0; i < len; ++i) acc[i] = to_acc(g0[i]);
    for (size_t k = 1; k < n; ++k) {
      const T* __restrict gk = gs[k] + c;
      for (int64_t i = 0; i < len; ++i) acc[i] += to_acc(gk[i]);
    }
    for (int64_t i = 0; i < len; ++i) dx[c + i] = from_acc<T>(acc[i]);
  }
}

// acc[i] += g[i] for i < n.
TM_SIMD static void accumulate(float* __restrict acc, const float* __restrict g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += g[i];
}

template <typename T>
static void duplicate_backward_kernel(T* dx, const std::vector<const T*>& gs, int64_t numel) {
  at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    if constexpr (std::is_same_v<T, c10::Half>) {
      // float16: each gradient's block widened on F16C (half_convert.h), summed in float in the same
      // order, rounded once.
      float acc[kHalfBlock], g[kHalfBlock];
      for (int64_t c = b; c < e; c += kHalfBlock) {
        const int64_t len = std::min(kHalfBlock, e - c);
        widen_half(acc, gs[0] + c, len);
        for (size_t k = 1; k < gs.size(); ++k) {
          widen_half(g, gs[k] + c, len);
          accumulate(acc, g, len);
        }
        narrow_half(dx + c, acc, len);
      }
    } else {
      duplicate_backward_range(dx, gs.data(), gs.size(), b, e);
    }
  });
}

void duplicate_forward_cpu(TensorBaseList ys, const at::TensorBase& x) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "duplicate_forward_cpu", [&] {
    std::vector<scalar_t*> p;
    for (auto& y : ys) p.push_back(y.data_ptr<scalar_t>());
    duplicate_forward_kernel<scalar_t>(p, x.data_ptr<scalar_t>(), x.numel());
  });
}

void duplicate_backward_cpu(at::TensorBase& dx, TensorBaseList grads) {
  TM_DISPATCH_FLOATING(dx.scalar_type(), "duplicate_backward_cpu", [&] {
    std::vector<const scalar_t*> p;
    for (const auto& g : grads) p.push_back(g.data_ptr<scalar_t>());
    duplicate_backward_kernel<scalar_t>(dx.data_ptr<scalar_t>(), p, dx.numel());
  });
}

static void register_glue(torch::Library& m) {
  m.impl("duplicate_forward", &duplicate_forward);
  m.impl("duplicate_backward", &duplicate_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
