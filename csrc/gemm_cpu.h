// The CPU GEMM behind Linear's three products (see gemm_cpu.cpp for the design).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace torchmodules {

// C[M,N] = A[M,K] B[K,N] (+ bias[N]), with
//   A(i,k) = a[i * rs_a + k * cs_a],  B(k,j) = b[k * rs_b + j * cs_b],  C(i,j) = c[i * ldc + j].
// Any strides work; a transposed operand is handled by the packing, not by the caller.
// bias is [N] or nullptr. K == 0 gives C = bias (or 0). C must not overlap A, B or bias.
// T is float, double, c10::Half or c10::BFloat16; the half types are summed in float and
// rounded once. Runs on at::get_num_threads() threads when the product is big enough; the
// result does not depend on the thread count (bitwise: every element is summed in the same
// order whatever the split).
// relu_mask (Linear + ReLU): when given, C = relu(C) (C < 0 ? 0 : C) as each block of C is
// final, and bit (i * N + j) % 32 of word (i * N + j) / 32 of relu_mask = !(C(i, j) <= 0), as
// relu_forward's (relu.cpp) mask of the unfused result; decided on C as stored (for the half
// types, the rounded value). relu_mask holds (M * N + 31) / 32 words; gemm_cpu zeroes it first.
template <typename T>
void gemm_cpu(int64_t M, int64_t N, int64_t K, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b,
              int64_t cs_b, T* c, int64_t ldc, const T* bias, uint32_t* relu_mask = nullptr);

// The instruction set the GEMM runs with on this CPU: "amx" (AVX-512, and AMX tiles for
// bfloat16), "avx512bf16" (AVX-512, and VDPBF16PS for bfloat16), "avx512", "avx2" or "base".
// TORCHMODULES_CPU_ISA=avx512bf16, =avx512, =avx2 or =base in the environment caps it (for tests
// of the fallbacks).
const char* gemm_cpu_isa();

// Per-thread packing space of a GEMM back end, kept between calls and grown on demand,
// 64-byte aligned; one buffer per Tag (the vector kernels and AMX each have their own).
template <class Tag>
char* gemm_scratch(size_t bytes) {
  struct Buffer {
    char* p = nullptr;
    size_t n = 0;
    ~Buffer() { std::free(p); }
  };
  static thread_local Buffer buf;
  if (buf.n < bytes) {
    std::free(buf.p);
    buf.n = 0;
    buf.p = static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!buf.p) throw std::bad_alloc();
    buf.n = bytes;
  }
  return buf.p;
}

}  // namespace torchmodules
