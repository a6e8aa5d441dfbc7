// Shared glue for every op: dtype dispatch, input checks, the index helpers that both
// the C++ and the CUDA kernels use, and the sizes of the packed masks.
#pragma once

// The CUDA kernels see tensors as at::TensorBase (storage, sizes, dtype, device: no operators), whose
// header nvcc parses in a quarter of the time of ATen.h's; the glue, in C++, gets all of ATen.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/ATen_fwd.h>
#include <ATen/core/TensorBase.h>
#ifndef __CUDACC__
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#endif

#include <cstdint>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define TM_HD __host__ __device__ __forceinline__
#else
#define TM_HD inline
#endif

// float64, float32, float16, bfloat16; the body sees scalar_t.
#define TM_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace torchmodules {

// Accumulation type: float for the half types, the type itself otherwise.
template <typename T>
using acc_t = at::opmath_type<T>;

// ---- input checks: every op calls these, so every error names the op -------------------
// The exception types are torch's for the same fault (users catch torch's): a RuntimeError
// (TORCH_CHECK) for a bad shape, dtype pairing, device or argument, a NotImplementedError (a
// RuntimeError too) for a dtype our kernels lack, an IndexError for a dim or index out of range,
// a ValueError where torch raises one (the batch size of a loss's target).

// t must be a floating tensor of a dtype we have kernels for (else a NotImplementedError, as
// torch's kernels for a dtype they lack).
void check_floating(const char* op, const char* arg, const at::Tensor& t);
// b must have a's dtype and device.
void check_same_dtype_device(const char* op, const char* a_name, const at::Tensor& a,
                             const char* b_name, const at::Tensor& b);
// b must have a's device (dtype free: masks are uint8).
void check_same_device(const char* op, const char* a_name, const at::Tensor& a,
                       const char* b_name, const at::Tensor& b);
// Wraps a negative dim, or raises an IndexError naming the op.
int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim);
// The broadcast shape of a and b, or a RuntimeError naming the op and both shapes.
std::vector<int64_t> broadcast_shape(const char* op, at::IntArrayRef a, at::IntArrayRef b);
// Class-index targets for an input `in` of shape (C), (N, C) or (N, C, d1, ...) (at least 1-d):
// shape (), (N) or (N, d1, ...) ([1] too for (C)), with torch's types: a ValueError where the
// batch sizes differ (a 0-d target for a batched input included) or the 1-d target of a (C)
// input is not [1], a RuntimeError for any other mismatch.
void check_class_target_shape(const char* op, at::IntArrayRef in, const at::Tensor& target);

// ---- output allocation: every glue allocates its outputs here ---------------------------
// Uninitialised, as at::empty; with TORCHMODULES_POISON=1 in the environment (the tests set
// it) filled with NaN (0xFF bytes for masks) first, so an element a kernel forgot shows.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts);
// A launcher's scratch memory: at::empty, callable where only TensorBase is known (the .cu files).
at::TensorBase new_workspace(at::IntArrayRef sizes, const at::TensorOptions& opts);
// Launchers take lists of tensors as TensorBase too (a list of at::Tensor needs its full header).
using TensorBaseList = c10::ArrayRef<at::TensorBase>;

#ifndef __CUDACC__
// Registers an op file's glue, `fn(torch::Library& m)`, for the CPU and (built with CUDA) for CUDA:
// the glue picks the CPU or CUDA launcher itself (TM_LAUNCH), so one list serves both devices.
#ifdef TORCHMODULES_CUDA
#define TM_REGISTER_GLUE(fn)                                 \
  TORCH_LIBRARY_IMPL(torchmodules, CPU, m) { fn(m); }        \
  TORCH_LIBRARY_IMPL(torchmodules, CUDA, m) { fn(m); }
#else
#define TM_REGISTER_GLUE(fn) TORCH_LIBRARY_IMPL(torchmodules, CPU, m) { fn(m); }
#endif
#endif

// ---- packed masks for the backward of ReLU and Maximum ---------------------------------
// Stored as uint8 but written and read as little-endian 32-bit words: element i lives in
// word i / per_word. Sizes round up to whole words so a kernel may write full words.
TM_HD int64_t relu_mask_bytes(int64_t numel) { return (numel + 31) / 32 * 4; }      // 1 bit
TM_HD int64_t maximum_mask_bytes(int64_t numel) { return (numel + 15) / 16 * 4; }   // 2 bits

// The packed mask of a backward, checked (uint8, 1-D, `bytes` long, on grad_y's device) and
// returned word-aligned: the kernels read it as 32-bit words, so a strided view or one at an
// odd address (big_uint8[1:1+n]) is copied into fresh storage first.
at::Tensor checked_mask(const char* op, const at::Tensor& mask, int64_t bytes, const at::Tensor& grad_y);

// The bits of +inf of a 16-bit float (bfloat16 0x7f80, float16 0x7c00): a magnitude (the bits
// without the sign) above it is NaN. CPU kernels test half types on their bits (relu, maximum).
template <typename T>
constexpr uint16_t kInfBits = std::is_same_v<T, c10::BFloat16> ? 0x7f80 : 0x7c00;

// Maximum's 2-bit code per element: which input the gradient goes to.
enum MaxCode : uint32_t { kMaxFirst = 0, kMaxSecond = 1, kMaxTie = 2, kMaxNaN = 3 };
// Share of the gradient input `which` (0: input, 1: other) gets for a code:
// winner 1, loser 0, tie 1/2 (as torch), NaN 1 to both (as torch).
TM_HD float maximum_share(uint32_t code, int64_t which) {
  return code == kMaxTie ? 0.5f : code == kMaxNaN ? 1.f : (code == (uint32_t)which ? 1.f : 0.f);
}

// ---- broadcasting: output linear index -> offsets into two inputs ----------------------
// Dims are coalesced where both inputs allow, so the common cases need one or two dims.
constexpr int kMaxDims = 16;
struct Broadcast2 {
  int ndim;
  int64_t size[kMaxDims];       // output sizes, innermost last
  int64_t stride_a[kMaxDims];   // element strides of input a (0 where broadcast)
  int64_t stride_b[kMaxDims];
  TM_HD void offsets(int64_t i, int64_t& oa, int64_t& ob) const {
    oa = 0;
    ob = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t idx = i % size[d];
      i /= size[d];
      oa += idx * stride_a[d];
      ob += idx * stride_b[d];
    }
  }
};
// a and b are expanded to `out` (any strides, stride 0 included).
Broadcast2 make_broadcast2(const char* op, at::IntArrayRef out, const at::Tensor& a, const at::Tensor& b);

#ifndef __CUDACC__
// Walks output elements [s, e) in runs along the innermost dim: run(i, len, oa, sa, ob, sb) for
// elements i .. i+len-1, which read a at oa, oa+sa, ... and b at ob, ob+sb, ... (sa, sb: the
// innermost strides, 0 where broadcast). One index division per run, not per element, and the
// run's loop can be vectorised for the common strides (1 and 0).
template <class Run>
void for_each_run(const Broadcast2& bc, int64_t s, int64_t e, const Run& run) {
  const int d = bc.ndim - 1;
  const int64_t inner = d >= 0 ? bc.size[d] : 1, sa = d >= 0 ? bc.stride_a[d] : 0, sb = d >= 0 ? bc.stride_b[d] : 0;
  for (int64_t i = s; i < e;) {
    int64_t oa, ob;
    bc.offsets(i, oa, ob);
    const int64_t len = std::min(e - i, inner - i % inner);
    run(i, len, oa, sa, ob, sb);
    i += len;
  }
}
#endif

// ---- reductions over one block of dims: [outer, reduce, inner] --------------------------
// The tensor is contiguous; element (o, r, i) sits at (o * reduce + r) * inner + i.
struct Rows {
  int64_t outer, reduce, inner;
};
// dims must be a run of adjacent dims of a contiguous tensor of shape `shape`.
Rows make_rows(at::IntArrayRef shape, int64_t first_dim, int64_t last_dim);

// Grain for at::parallel_for over elementwise work.
constexpr int64_t kGrain = 32768;

}  // namespace torchmodules
