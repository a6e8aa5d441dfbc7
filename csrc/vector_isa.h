// The x86 vector forms written with intrinsics (ReLU's half types in relu_rule.h, Maximum's
// forward in maximum.cpp), where the TM_SIMD loops the compiler vectorises fall short: compare
// results go straight from mask registers into the packed masks of the backward.
#pragma once

#include "gemm_cpu.h"

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#include <immintrin.h>
#define TM_X86 1
#endif

// The target of the AVX-512 forms written with GCC vectors and intrinsics (F16C too: every AVX-512
// CPU has it); call them only where vector_isa() == 2.
#define TM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

namespace torchmodules {

// The widest hand-written form this CPU runs: 2 (AVX-512 F/BW/VL/DQ, and BMI2, which every
// AVX-512 CPU has), 1 (AVX2) or 0 (none: the TM_SIMD loops), by the GEMM's instruction set, so
// that TORCHMODULES_CPU_ISA=avx2 or =base caps these too (tests of the fallbacks).
inline int vector_isa() {
  static const int isa = [] {
    const char* g = gemm_cpu_isa();
    const bool avx512 =
        std::strcmp(g, "amx") == 0 || std::strcmp(g, "avx512bf16") == 0 || std::strcmp(g, "avx512") == 0;
#ifdef TM_X86
    if (avx512 && __builtin_cpu_supports("bmi2")) return 2;
#endif
    return avx512 || std::strcmp(g, "avx2") == 0 ? 1 : 0;
  }();
  return isa;
}

}  // namespace torchmodules
