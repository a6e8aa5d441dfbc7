// SGD step (torch.optim.SGD's update), fused over many tensors: one op call, one pass over
// each tensor's elements, in place.  With b the momentum buffer, m = momentum, d = dampening:
//   g = (maximize ? -grad : grad) + weight_decay p
//   if m != 0:  b = first_step ? g : m b + (1 - d) g;   g = nesterov ? g + m b : b
//   p = p - lr g
// Half types compute in float and round once, on the stores of p and b.
#include <ATen/MemoryOverlap.h>

#include <algorithm>

#include "half_convert.h"
#include "ops.h"
#include "simd.h"
#include "vector_isa.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

namespace {

std::string item(const char* list, size_t k) { return std::string(list) + "[" + std::to_string(k) + "]"; }

// t (grads[k] or momentum_buffers[k]) must match params[k] in dtype, device, shape and layout kind.
void check_like_param(const at::Tensor& p, size_t k, const char* list, const at::Tensor& t) {
  const std::string pn = item("params", k), tn = item(list, k);
  TORCH_CHECK(t.layout() == at::kStrided, "torchmodules.sgd_step: sparse ", list,
              " are not supported, got ", tn, " with layout ", t.layout());
  check_same_dtype_device("sgd_step", pn.c_str(), p, tn.c_str(), t);
  TORCH_CHECK(t.sizes() == p.sizes(), "torchmodules.sgd_step: ", tn, " has shape ", t.sizes(), " but ", pn,
              " has shape ", p.sizes());
}

}  // namespace

void sgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step) {
  const size_t n = params.size();
  const bool use_buf = momentum != 0;
  TORCH_CHECK(grads.size() == n, "torchmodules.sgd_step: got ", n, " params but ", grads.size(), " grads");
  TORCH_CHECK(momentum_buffers.size() == (use_buf ? n : 0), "torchmodules.sgd_step: got ", n,
              " params and ", momentum_buffers.size(), " momentum_buffers; momentum ", momentum,
              use_buf ? " needs one buffer per param" : " needs none");
  if (n == 0) return;
  for (size_t k = 0; k < n; ++k) {
    const at::Tensor& p = params[k];
    const std::string pn = item("params", k);
    TORCH_CHECK(p.layout() == at::kStrided, "torchmodules.sgd_step: sparse params are not supported, got ", pn,
                " with layout ", p.layout());
    check_floating("sgd_step", pn.c_str(), p);
    check_same_dtype_device("sgd_step", "params[0]", params[0], pn.c_str(), p);
    TORCH_CHECK(at::has_internal_overlap(p) != at::MemOverlap::Yes, "torchmodules.sgd_step: ", pn,
                " (shape ", p.sizes(), ", strides ", p.strides(),
                ") has elements sharing memory, so it cannot be updated in place");
    check_like_param(p, k, "grads", grads[k]);
    if (use_buf) {
      check_like_param(p, k, "momentum_buffers", momentum_buffers[k]);
      TORCH_CHECK(at::has_internal_overlap(momentum_buffers[k]) != at::MemOverlap::Yes,
                  "torchmodules.sgd_step: ", item("momentum_buffers", k),
                  " has elements sharing memory, so it cannot be updated in place");
    }
  }

  // The kernels see flat arrays: each param as it is when its elements fill a dense block
  // (any strides), else a contiguous copy written back after. Grads and buffers take the
  // param's layout (copies where theirs differs; a buffer copy is written back).
  std::vector<at::TensorBase> ps, bs, gs;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (destination, updated copy)
  for (size_t k = 0; k < n; ++k) {
    const at::Tensor& p = params[k];
    if (p.numel() == 0) continue;
    const at::Tensor pw = p.is_non_overlapping_and_dense() ? p : p.contiguous();
    if (!pw.is_same(p)) write_back.emplace_back(p, pw);
    const auto like_pw = [&](const at::Tensor& t, bool read) {
      if (t.strides() == pw.strides()) return t;
      at::Tensor c = at::empty_like(pw);  // preserves pw's (dense) strides
      if (read) c.copy_(t);
      return c;
    };
    const at::Tensor gw = like_pw(grads[k], true);
    ps.push_back(pw);
    gs.push_back(gw);
    if (use_buf) {
      const at::Tensor& b = momentum_buffers[k];
      const at::Tensor bw = like_pw(b, !first_step);  // the first step only writes it
      if (!bw.is_same(b)) write_back.emplace_back(b, bw);
      bs.push_back(bw);
    }
  }
  if (ps.empty()) return;
  const SgdHyper h{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step};
  TM_LAUNCH(sgd_step, ps[0], ps, bs, gs, h);
  for (auto& [dst, src] : write_back) dst.copy_(src);
}

// ---- CPU kernel ----------------------------------------------------------------------------

namespace {

// The update of elements [0, len) of one tensor. Branch-free (the options are template
// arguments) and on restrict pointers, so the compiler vectorises it for float and double,
// per ISA (simd.h).
template <typename T, int kMom, bool kWd, bool kNesterov>
TM_SIMD void sgd_span(T* __restrict__ p, T* __restrict__ b, const T* __restrict__ g, int64_t len,
              const SgdCoef<acc_t<T>>& c) {
  using A = acc_t<T>;
  for (int64_t i = 0; i < len; ++i) {
    A pv = to_acc(p[i]), bv = A(0);
    if constexpr (kMom == kSgdMomentum) bv = to_acc(b[i]);
    sgd_update<kMom, kWd, kNesterov>(pv, bv, to_acc(g[i]), c);
    p[i] = from_acc<T>(pv);
    if constexpr (kMom != kSgdPlain) b[i] = from_acc<T>(bv);
  }
}

#ifdef TM_X86
// float16 with AVX-512 (only call where vector_isa() == 2): 16 elements a step (a masked tail), widened
// and rounded (to nearest even) in registers, sgd_update on vectors of 16 floats (GCC's vector
// extension: the same float operations in the same order as sgd_span's, so the same bits). The
// float blocks' buffer round trips cost 1.2x torch's time (benchmarks/half_cpu.py).
// (-Wpsabi: the helpers below pass 64-byte vectors by value; they are inlined, no call crosses an ABI.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
using Float16x = float __attribute__((vector_size(64)));
// The lanes of m (the maskz conversions: GCC 12 warns of the unmasked ones' undefined pass-through).
TM_AVX512 inline Float16x load_half16(const c10::Half* h, __mmask16 m) {
  return Float16x(_mm512_maskz_cvtph_ps(m, _mm256_maskz_loadu_epi16(m, h)));
}
TM_AVX512 inline void store_half16(c10::Half* h, __mmask16 m, Float16x v) {
  _mm256_mask_storeu_epi16(h, m, _mm512_maskz_cvtps_ph(m, __m512(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Elements [i, i + 16) of the lanes of m.
template <int kMom, bool kWd, bool kNesterov>
TM_AVX512 inline void sgd_half16(c10::Half* p, c10::Half* b, const c10::Half* g, int64_t i, __mmask16 m,
                                 const SgdCoef<Float16x>& cv) {
  Float16x pv = load_half16(p + i, m), bv{};
  if constexpr (kMom == kSgdMomentum) bv = load_half16(b + i, m);
  sgd_update<kMom, kWd, kNesterov>(pv, bv, load_half16(g + i, m), cv);
  store_half16(p + i, m, pv);
  if constexpr (kMom != kSgdPlain) store_half16(b + i, m, bv);
}
template <int kMom, bool kWd, bool kNesterov>
TM_AVX512 void sgd_half_avx512(c10::Half* p, c10::Half* b, const c10::Half* g, int64_t len, const SgdCoef<float>& c) {
  const Float16x zero{};
  const SgdCoef<Float16x> cv{zero + c.lr, zero + c.momentum, zero + c.damp1, zero + c.weight_decay, zero + c.sign};
  int64_t i = 0;
  for (; i + 16 <= len; i += 16)  // a constant mask: plain loads and stores
    sgd_half16<kMom, kWd, kNesterov>(p, b, g, i, __mmask16(0xffff), cv);
  if (i < len) sgd_half16<kMom, kWd, kNesterov>(p, b, g, i, __mmask16((1u << (len - i)) - 1), cv);
}
#pragma GCC diagnostic pop
#endif

// sgd_span over [0, len); float16 with AVX-512 as above, else in float blocks, its conversions on
// F16C (half_convert.h): the same float arithmetic, p and b rounded once.
template <typename T, int kMom, bool kWd, bool kNesterov>
void sgd_run(T* p, T* b, const T* g, int64_t len, const SgdCoef<acc_t<T>>& c) {
  if constexpr (std::is_same_v<T, c10::Half>) {
#ifdef TM_X86
    if (vector_isa() == 2) return sgd_half_avx512<kMom, kWd, kNesterov>(p, b, g, len, c);
#endif
    float fp[kHalfBlock], fb[kHalfBlock], fg[kHalfBlock];
    for (int64_t o = 0; o < len; o += kHalfBlock) {
      const int64_t n = std::min(kHalfBlock, len - o);
      widen_half(fp, p + o, n);
      if constexpr (kMom == kSgdMomentum) widen_half(fb, b + o, n);
      widen_half(fg, g + o, n);
      sgd_span<float, kMom, kWd, kNesterov>(fp, fb, fg, n, c);
      narrow_half(p + o, fp, n);
      if constexpr (kMom != kSgdPlain) narrow_half(b + o, fb, n);
    }
  } else {
    sgd_span<T, kMom, kWd, kNesterov>(p, b, g, len, c);
  }
}

}  // namespace

// All tensors laid end to end form one index space [0, total); at::parallel_for splits it
// into ranges of about kGrain elements, and each range walks the tensors it overlaps (many
// small tensors share a range, a large tensor spans several).
void sgd_step_cpu(TensorBaseList params, TensorBaseList bufs, TensorBaseList grads, const SgdHyper& h) {
  const size_t n = params.size();
  std::vector<int64_t> start(n + 1, 0);  // start[k]: first index of tensor k
  for (size_t k = 0; k < n; ++k) start[k + 1] = start[k] + params[k].numel();
  TM_DISPATCH_FLOATING(params[0].scalar_type(), "sgd_step_cpu", [&] {
    std::vector<scalar_t*> pp(n), pb(n, nullptr);
    std::vector<const scalar_t*> pg(n);
    for (size_t k = 0; k < n; ++k) {
      pp[k] = params[k].data_ptr<scalar_t>();
      pg[k] = grads[k].data_ptr<scalar_t>();
      if (!bufs.empty()) pb[k] = bufs[k].data_ptr<scalar_t>();
    }
    const auto c = sgd_coef<acc_t<scalar_t>>(h);
    sgd_dispatch(h, [&](auto mom, auto wd, auto nest) {
      at::parallel_for(0, start[n], kGrain, [&](int64_t i0, int64_t i1) {
        // the tensor holding index i0
        size_t k = std::upper_bound(start.begin(), start.end(), i0) - start.begin() - 1;
        for (int64_t i = i0; i < i1; ++k) {
          const int64_t e = std::min(i1, start[k + 1]), off = i - start[k];
          sgd_run<scalar_t, decltype(mom)::value, decltype(wd)::value, decltype(nest)::value>(
              pp[k] + off, pb[k] ? pb[k] + off : nullptr, pg[k] + off, e - i, c);
          i = e;
        }
      });
    });
  });
}

static void register_glue(torch::Library& m) { m.impl("sgd_step", &sgd_step); }
TM_REGISTER_GLUE(register_glue)
// A sparse tensor in the lists dispatches here: the glue rejects it with a clear message.
TORCH_LIBRARY_IMPL(torchmodules, SparseCPU, m) { register_glue(m); }
#ifdef TORCHMODULES_CUDA
TORCH_LIBRARY_IMPL(torchmodules, SparseCUDA, m) { register_glue(m); }
#endif

}  // namespace torchmodules
