// The bfloat16 GEMM on Intel AMX, or with AVX512-BF16 where there is no AMX (gemm_cpu_amx.cpp), a
// back end of gemm_cpu (gemm_cpu.cpp):
// gemm_cpu's thread and cell logic hands it blocks of C as it does the vector kernels.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace torchmodules {
namespace amx {

// Cells of C are cut in whole micro-tiles of kMR x kNR and column blocks of at most kNC; k in
// blocks of kKC.
constexpr int kMR = 32, kNR = 32, kNC = 512;
constexpr int64_t kKC = 2048;

// True when this process may run AMX-BF16: the CPU has AMX-TILE and AMX-BF16 (and the AVX-512
// the packing uses), the OS saves the tile state (XCR0), and Linux granted the tile data
// permission (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once here; it holds for every thread).
bool available();
// True on a CPU with AVX512-BF16 (VDPBF16PS) and the AVX-512 the packing uses: the same blocks run
// on zmm registers where AMX is not available.
bool dp_available();

// gemm_cpu's store step: fn(ctx, src, ld, i0, i1, j, n) stores the finished C[i0:i1, j:j + n)
// (float, C(i, j + q) at src[(i - i0) * ld + q]) as bfloat16 into the output, and applies the
// ReLU epilogue there when Linear + ReLU asks for it.
struct StoreStep {
  void (*fn)(const void* ctx, const float* src, int64_t ld, int64_t i0, int64_t i1, int64_t j, int64_t n);
  const void* ctx;
};

// C[i0:i1, j0:j1] = A B (+ bias) in float, on the calling thread, for
//   A(i, k) = a[i * rs_a + k * cs_a],  B(k, j) = b[k * rs_b + j * cs_b],  C(i, j) = c[i * ldc + j],
// i < M, j < N, k < K (K > 0), bias [N] or nullptr. With store set (only when K <= kKC) C is not
// written: each finished block of C goes to the store step instead. tiles: on AMX (only call
// when available()), else with VDPBF16PS (only when dp_available()).
// Returns true when A or B held a bfloat16 subnormal, which AMX reads as 0: then C may differ
// from the IEEE products (subnormal x inf = NaN) and the caller reruns the product elsewhere.
bool gemm_bf16_block(bool tiles, int64_t K, const c10::BFloat16* a, int64_t rs_a, int64_t cs_a, const c10::BFloat16* b,
                     int64_t rs_b, int64_t cs_b, float* c, int64_t ldc, const float* bias, const StoreStep* store,
                     int64_t i0, int64_t i1, int64_t j0, int64_t j1);

// dst[q] = src[q] rounded to bfloat16, q < n, bitwise as c10::BFloat16(float) (nearest even, NaN
// to 0x7fc0), with AVX-512. Only call on a CPU with AVX-512 F, BW.
void round_bf16(const float* src, c10::BFloat16* dst, int64_t n);

}  // namespace amx
}  // namespace torchmodules
