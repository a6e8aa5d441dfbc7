// The Hopper GEMM of linear.cu for float16 / bfloat16 (kernels/gemm_sm90.cu).
#pragma once

#include <ATen/core/TensorBase.h>

namespace torchmodules {

// C[m, n] = sum_k A(m, k) B(k, n) (+ bias[n]), m < M, n < N, k < K, C[m, n] at c[m*ldc + n];
// A(m, k) = a[m*lda + k] if akc (k-contiguous), else a[k*lda + m];
// B(k, n) = b[n*ldb + k] if bkc, else b[k*ldb + n]  (the operands of linear.cu's Gemm).
// dtype: at::kHalf or at::kBFloat16; bias: [N] or nullptr; `on`: a tensor on the device.
// Runs the product on the sm_90a kernel and returns true when the device (compute capability
// 9.0), the build (an sm_90a image of the kernel), the operands (TMA: 16-byte aligned,
// lda and ldb multiples of 8 elements) and the size (M, N >= 128, K >= 64) allow it, and
// TORCHMODULES_SM90_GEMM is not "0"; else launches nothing and returns false (the caller
// runs its own kernel). TORCHMODULES_SM90_GEMM=require raises instead of returning false,
// with the reason (tests use it to prove the path ran).
bool gemm_sm90(const at::TensorBase& on, at::ScalarType dtype, const void* a, const void* b, const void* bias, void* c,
               int64_t lda, int64_t ldb, int64_t ldc, int64_t M, int64_t N, int64_t K, bool akc, bool bkc);

}  // namespace torchmodules
