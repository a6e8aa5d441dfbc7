// The CPU GEMM behind Linear:  C[M,N] = A[M,K] B[K,N] (+ bias[N]),  A and B with any strides.
//
// Linear's three products are all this one GEMM (see linear.cpp):
//   forward   y  = x W^T + b:  A = x,    B(k, j) = W[j, k]   (B is k-contiguous: transposed)
//   dX        dx = dy W:       A = dy,   B = W               (B rows contiguous)
//   dW        dW = dy^T x:     A(i, k) = dy[k, i],  B = x    (A is column-major)
// The packing routines absorb these layouts, so one micro-kernel serves all three.
//
// Scheme (Goto / BLIS: K. Goto and R. van de Geijn, "Anatomy of high-performance matrix
// multiplication", 2008; F. Van Zee and R. van de Geijn, "BLIS", 2015), with the roles of the
// operands as in gemm_cpu_kernels.inc:
//   - micro-kernel: an MR x NR tile of C in vector registers (NR = NV vectors of L lanes);
//     per k, NV vector loads of B, MR broadcasts of A, MR * NV FMAs.
//     AVX-512 float: 12 x 32 (24 zmm accumulators; 2 loads + 12 broadcasts per 24 FMAs, so
//     the two FMA ports, not the loads, set the pace); double 12 x 16.
//   - cache blocks: A's micro-panel (MR x KC) stays in L1 while it meets every B panel of a
//     KC x NC block of B, which is packed once and stays in the core's L2 (here L1 48 KB,
//     L2 2 MB: AVX-512 float KC = 256, NC = 512: a 12 KB panel, a 512 KB block). A is packed
//     MC = 144 rows at a time, so a column-major A is read in runs of 144 elements. C is read
//     and written once per KC block (prefetched at the start of each micro-kernel).
//   - packing: A's block is copied into micro-panels, row by row when A is k-contiguous
//     (rows KC + one cache line apart, so they fall in different L1 sets), k by k when A is
//     column-major (dW); B's block is copied into zero-padded k-major panels, transposed in
//     registers (L x L blocks) when B is k-contiguous (the forward's W). The half types are
//     converted to float while packing. B with contiguous rows, close together, is read in
//     place (not packed) when a thread's block of C has few rows: packing would cost more
//     than it saves (the skinny products of small batches).
//   - threads: C is cut into cells, column blocks of at most NC (or row blocks when A is the
//     bigger operand to repack), each done start to finish by one thread with its own packing
//     space; the threads take cells from a shared counter. No barrier but the final join, and
//     every element of C is summed in the same order (k blocks in order, k in order within a
//     block) whatever the thread count or the cell, so results are bitwise the same for any
//     number of threads.
//   - instruction sets: the kernels are compiled for AVX-512, AVX2+FMA and the baseline
//     (the build has no -march) and the widest one this CPU has is picked at run time.
//     bfloat16 runs on Intel AMX tiles where the CPU and OS allow, else with VDPBF16PS where the
//     CPU has AVX512-BF16 (AMD Zen 4 and 5; gemm_cpu_amx.cpp), in the
//     same cells of C; when its k blocks cover K in one it hands each finished block of C to
//     the same store step (store_block: rounding, and Linear + ReLU's epilogue) as the final
//     rounding of the float copy, so no float copy of C is made.
#include "gemm_cpu.h"

#include "gemm_cpu_amx.h"

#include "common.h"
#include "gemm_relu_epilogue.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define TM_GEMM_X86 1
#endif

namespace torchmodules {
namespace {

// The problem as the per-ISA code sees it: C and bias in the compute type R (for the half
// types, a float copy of C).
template <typename T>
struct GemmProblem {
  using R = acc_t<T>;
  int64_t M, N, K;
  const T* a;
  int64_t rs_a, cs_a;
  const T* b;
  int64_t rs_b, cs_b;
  R* c;
  int64_t ldc;
  const R* bias;
  T* out = nullptr;  // the half types' output, rounded by the store step (store_block)
  int64_t ldo = 0;
  // Linear + ReLU's mask (see relu_epilogue): float and double, applied to c by the kernels;
  // the half types, by the store step to out (so only set with out).
  uint32_t* relu_mask = nullptr;
  // bfloat16: set when an AMX block packed a subnormal (read as 0 by AMX; gemm_cpu then reruns
  // the product with no_amx, on the vector kernels).
  std::atomic<bool>* amx_subnormal = nullptr;
  bool no_amx = false;
};

// One instruction set's GEMM: its micro-tile and column block, and the loops over one block of C.
template <typename T>
struct IsaGemm {
  int MR, NR, NC;
  void (*block)(const GemmProblem<T>&, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
};

// B is read in place (not packed) when its rows are contiguous, a thread's block of C has at
// most kInPlaceBRows rows (each B element is then read a few times only) and B's rows are
// close (at most kInPlaceBStride bytes apart: a block of B then spans few pages).
constexpr int64_t kInPlaceBRows = 128;
constexpr size_t kInPlaceBStride = 2048;

// At most this many rows of C, with A's rows and B's columns both contiguous in k (the forward
// of a batch of 1 to 4), are done as dot products (gemm_dot): no transpose of B into panels.
constexpr int64_t kDotRows = 4;

// The packing loops that read short runs far apart (a column-major A, B's rows) prefetch the
// run this many rows ahead: those reads are bound by latency, not bandwidth.
constexpr int64_t kPrefetchRows = 8;

// Per-thread packing space (gemm_cpu.h).
struct VecScratch;
inline char* scratch(size_t bytes) { return gemm_scratch<VecScratch>(bytes); }

// ---- the baseline: 16-byte GCC vectors (SSE2 on x86-64, NEON on arm64) ---------------------
namespace isa_base {

template <typename R>
struct Simd {
  typedef R V __attribute__((vector_size(16)));
  static constexpr int L = 16 / sizeof(R), MR = 6, NV = 2;  // 6 x 8 floats: 12 accumulators
  static constexpr int64_t KC = 256, NC = 256, MC = 96;
  static V zero() { return V{}; }
  static V load(const R* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(R* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static V load_n(const R* p, int n) {  // n <= L lanes, the rest 0
    V v{};
    for (int i = 0; i < n; ++i) v[i] = p[i];
    return v;
  }
  static void store_n(R* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v[i];
  }
  static V bcast(const R* p) { return V{} + *p; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static R sum(V v) {  // the lanes, pairwise
    for (int w = L / 2; w > 0; w /= 2)
      for (int i = 0; i < w; ++i) v[i] += v[i + w];
    return v[0];
  }
  static void sum4(const V (&v)[4], R* out) {
    for (int q = 0; q < 4; ++q) out[q] = sum(v[q]);
  }
  template <typename T>
  static V load_cvt(const T* p, int n) {
    V v{};
    for (int i = 0; i < n; ++i) v[i] = static_cast<R>(p[i]);
    return v;
  }
  static void transpose(V (&r)[L]) {
    R t[L][L];
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) t[j][i] = r[i][j];
    for (int i = 0; i < L; ++i) std::memcpy(&r[i], t[i], sizeof(V));
  }
};

#include "gemm_cpu_kernels.inc"

}  // namespace isa_base

#ifdef TM_GEMM_X86

// ---- AVX2 + FMA (+ F16C for float16) ---------------------------------------------------------
namespace isa_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

template <typename R>
struct Simd;

template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int L = 8, MR = 6, NV = 2;  // 6 x 16: 12 ymm accumulators
  static constexpr int64_t KC = 256, NC = 256, MC = 96;
  static __m256i mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V load_n(const float* p, int n) { return n == L ? load(p) : _mm256_maskload_ps(p, mask(n)); }
  static void store_n(float* p, V v, int n) {
    if (n == L) store(p, v);
    else _mm256_maskstore_ps(p, mask(n), v);
  }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float sum(V v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static void sum4(const V (&v)[4], float* out) {
    for (int q = 0; q < 4; ++q) out[q] = sum(v[q]);
  }
  static V load_cvt(const float* p, int n) { return load_n(p, n); }
  static __m128i load16(const void* p, int n) {  // n <= 8 16-bit values, the rest 0
    if (n == L) return _mm_loadu_si128(static_cast<const __m128i*>(p));
    alignas(16) uint16_t t[8] = {};
    std::memcpy(t, p, n * 2);
    return _mm_load_si128(reinterpret_cast<const __m128i*>(t));
  }
  static V load_cvt(const c10::Half* p, int n) { return _mm256_cvtph_ps(load16(p, n)); }
  static V load_cvt(const c10::BFloat16* p, int n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(p, n)), 16));
  }
  static void transpose(V (&r)[8]) {  // 8 x 8: pairs, then pairs of pairs, then 128-bit halves
    V t[8], u[8];
    for (int g = 0; g < 2; ++g) {
      t[4 * g + 0] = _mm256_unpacklo_ps(r[4 * g + 0], r[4 * g + 1]);
      t[4 * g + 1] = _mm256_unpackhi_ps(r[4 * g + 0], r[4 * g + 1]);
      t[4 * g + 2] = _mm256_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
      t[4 * g + 3] = _mm256_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
      for (int e = 0; e < 2; ++e) {
        u[4 * g + 2 * e] = _mm256_castpd_ps(
            _mm256_unpacklo_pd(_mm256_castps_pd(t[4 * g + e]), _mm256_castps_pd(t[4 * g + 2 + e])));
        u[4 * g + 2 * e + 1] = _mm256_castpd_ps(
            _mm256_unpackhi_pd(_mm256_castps_pd(t[4 * g + e]), _mm256_castps_pd(t[4 * g + 2 + e])));
      }
    }
    // u[4g + e], 128-bit lane l: rows 4g .. 4g+3 at column 4l + e
    for (int e = 0; e < 4; ++e) {
      r[e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x20);
      r[4 + e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x31);
    }
  }
};

template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int L = 4, MR = 6, NV = 2;  // 6 x 8
  static constexpr int64_t KC = 256, NC = 256, MC = 96;
  static __m256i mask(int n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V load_n(const double* p, int n) { return n == L ? load(p) : _mm256_maskload_pd(p, mask(n)); }
  static void store_n(double* p, V v, int n) {
    if (n == L) store(p, v);
    else _mm256_maskstore_pd(p, mask(n), v);
  }
  static V bcast(const double* p) { return _mm256_broadcast_sd(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static double sum(V v) {
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
  static void sum4(const V (&v)[4], double* out) {
    for (int q = 0; q < 4; ++q) out[q] = sum(v[q]);
  }
  static V load_cvt(const double* p, int n) { return load_n(p, n); }
  static void transpose(V (&r)[4]) {
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};

#include "gemm_cpu_kernels.inc"

#pragma GCC pop_options
}  // namespace isa_avx2

// ---- AVX-512 (F, BW and VL: masked 16-bit loads for the half types) --------------------------
namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
// GCC 12's AVX-512 shuffles and conversions pass an "undefined" register that -Wall reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

template <typename R>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int L = 16, MR = 12, NV = 2;  // 12 x 32: 24 zmm accumulators
  // A panel 12 KB (L1: 48 KB); B block 512 KB and A block 150 KB (L2: 2 MB).
  static constexpr int64_t KC = 256, NC = 512, MC = 144;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
  static void sum4(const V (&v)[4], float* out) {  // the four sums together: halves, quarters, lanes
    const V u0 = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x44), _mm512_shuffle_f32x4(v[0], v[1], 0xee));
    const V u1 = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0x44), _mm512_shuffle_f32x4(v[2], v[3], 0xee));
    V w = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88), _mm512_shuffle_f32x4(u0, u1, 0xdd));
    w = _mm512_add_ps(w, _mm512_permute_ps(w, 0x4e));  // 128-bit block q: partial sums of v[q]
    w = _mm512_add_ps(w, _mm512_permute_ps(w, 0xb1));
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), w)));
  }
  static V load_cvt(const float* p, int n) { return load_n(p, n); }
  static V load_cvt(const c10::Half* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p)); }
  static V load_cvt(const c10::BFloat16* p, int n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask(n), p)), 16));
  }
  static void transpose(V (&r)[16]) {  // 16 x 16: pairs, pairs of pairs, then 128-bit blocks
    V t[16], u[16];
    for (int g = 0; g < 4; ++g) {
      t[4 * g + 0] = _mm512_unpacklo_ps(r[4 * g + 0], r[4 * g + 1]);
      t[4 * g + 1] = _mm512_unpackhi_ps(r[4 * g + 0], r[4 * g + 1]);
      t[4 * g + 2] = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
      t[4 * g + 3] = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
      for (int e = 0; e < 2; ++e) {
        u[4 * g + 2 * e] = _mm512_castpd_ps(
            _mm512_unpacklo_pd(_mm512_castps_pd(t[4 * g + e]), _mm512_castps_pd(t[4 * g + 2 + e])));
        u[4 * g + 2 * e + 1] = _mm512_castpd_ps(
            _mm512_unpackhi_pd(_mm512_castps_pd(t[4 * g + e]), _mm512_castps_pd(t[4 * g + 2 + e])));
      }
    }
    // u[4g + e], 128-bit lane l: rows 4g .. 4g+3 at column 4l + e; gather lane l of the four
    // groups into r[4l + e].
    for (int e = 0; e < 4; ++e) {
      const V v0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x88), v1 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xdd);
      const V v2 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x88), v3 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xdd);
      r[e] = _mm512_shuffle_f32x4(v0, v2, 0x88);
      r[4 + e] = _mm512_shuffle_f32x4(v1, v3, 0x88);
      r[8 + e] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
      r[12 + e] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
    }
  }
};

template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int L = 8, MR = 12, NV = 2;  // 12 x 16
  static constexpr int64_t KC = 256, NC = 512, MC = 144;  // A panel 24 KB, B block 1 MB, A block 300 KB
  static __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V load_n(const double* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static void store_n(double* p, V v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static V bcast(const double* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static double sum(V v) { return _mm512_reduce_add_pd(v); }
  static void sum4(const V (&v)[4], double* out) {
    for (int q = 0; q < 4; ++q) out[q] = sum(v[q]);
  }
  static V load_cvt(const double* p, int n) { return load_n(p, n); }
  static void transpose(V (&r)[8]) {  // 8 x 8: pairs, then 128-bit blocks
    V t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
    }
    // t[2i + e], 128-bit lane l: rows 2i, 2i+1 at column 2l + e
    for (int e = 0; e < 2; ++e) {
      const V v0 = _mm512_shuffle_f64x2(t[e], t[2 + e], 0x88), v1 = _mm512_shuffle_f64x2(t[e], t[2 + e], 0xdd);
      const V v2 = _mm512_shuffle_f64x2(t[4 + e], t[6 + e], 0x88), v3 = _mm512_shuffle_f64x2(t[4 + e], t[6 + e], 0xdd);
      r[e] = _mm512_shuffle_f64x2(v0, v2, 0x88);
      r[2 + e] = _mm512_shuffle_f64x2(v1, v3, 0x88);
      r[4 + e] = _mm512_shuffle_f64x2(v0, v2, 0xdd);
      r[6 + e] = _mm512_shuffle_f64x2(v1, v3, 0xdd);
    }
  }
};

#include "gemm_cpu_kernels.inc"

#pragma GCC diagnostic pop
#pragma GCC pop_options
}  // namespace isa_avx512

#endif  // TM_GEMM_X86

// ---- run-time choice of the instruction set ---------------------------------------------------

// kAvx512Bf16: AVX-512, and VDPBF16PS for bfloat16; kAmx: AVX-512, and AMX tiles for bfloat16.
enum class Isa { kBase, kAvx2, kAvx512, kAvx512Bf16, kAmx };

Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kBase;
#ifdef TM_GEMM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      best = Isa::kAvx512;
#endif
    const char* env = std::getenv("TORCHMODULES_CPU_ISA");  // a cap, for tests of the fallbacks
    const std::string cap = env ? env : "";
    if (cap == "base") best = Isa::kBase;
    if (cap == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
    if (best == Isa::kAvx512 && cap != "avx512" && cap != "avx2" && amx::dp_available()) best = Isa::kAvx512Bf16;
    if (best >= Isa::kAvx512 && cap != "avx512" && cap != "avx2" && cap != "avx512bf16" && amx::available())
      best = Isa::kAmx;
    return best;
  }();
  return isa;
}

template <typename T>
IsaGemm<T> pick_isa_gemm() {
#ifdef TM_GEMM_X86
  switch (cpu_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return isa_avx512::isa_gemm<T>();
    case Isa::kAvx2:
      return isa_avx2::isa_gemm<T>();
    default:
      break;
  }
#endif
  return isa_base::isa_gemm<T>();
}

// bfloat16 on AMX tiles or with VDPBF16PS (gemm_cpu_amx.cpp): for all but the smallest products, where the
// vector kernels (no tile set-up, dot products for a few rows) are quicker.
template <typename T>
bool use_amx(const GemmProblem<T>& g) {
  if constexpr (std::is_same<T, c10::BFloat16>::value)
    return cpu_isa() >= Isa::kAvx512Bf16 && !g.no_amx && !(g.cs_a == 1 && g.rs_b == 1 && g.M <= kDotRows);
  return false;
}

// The store step of the half types, for a finished block C[i0:i1, j:j + n) (float, C(i, j + q)
// at src[(i - i0) * ld + q]): rounded once to T into g.out (row stride g.ldo), then, for
// Linear + ReLU, the ReLU epilogue on the rounded values while they are in cache. AMX calls it
// on each finished block (one k block), gemm_cpu on the float copy of C (the others).
template <typename T>
void store_block(const GemmProblem<T>& g, const float* src, int64_t ld, int64_t i0, int64_t i1, int64_t j, int64_t n) {
  for (int64_t i = i0; i < i1; ++i) {
    T* o = g.out + i * g.ldo + j;
    const float* s = src + (i - i0) * ld;
    if constexpr (std::is_same<T, c10::BFloat16>::value)
      if (cpu_isa() >= Isa::kAvx512) {
        amx::round_bf16(s, o, n);
        continue;
      }
    for (int64_t q = 0; q < n; ++q) o[q] = static_cast<T>(s[q]);
  }
  if (g.relu_mask) relu_epilogue(g.out, g.ldo, g.N, i0, i1, j, j + n, g.relu_mask);
}

template <typename T>
IsaGemm<T> amx_gemm() {
  if constexpr (std::is_same<T, c10::BFloat16>::value)
    return {amx::kMR, amx::kNR, amx::kNC, [](const GemmProblem<T>& g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
              const amx::StoreStep store{[](const void* ctx, const float* src, int64_t ld, int64_t r0, int64_t r1,
                                            int64_t j, int64_t n) {
                                           store_block(*static_cast<const GemmProblem<T>*>(ctx), src, ld, r0, r1, j, n);
                                         },
                                         &g};
              if (amx::gemm_bf16_block(cpu_isa() == Isa::kAmx, g.K, g.a, g.rs_a, g.cs_a, g.b, g.rs_b, g.cs_b, g.c,
                                       g.ldc, g.bias, g.out ? &store : nullptr, i0, i1, j0, j1) &&
                  g.amx_subnormal)
                g.amx_subnormal->store(true, std::memory_order_relaxed);
            }};
  return {};
}

// Below this many FLOPs per thread a GEMM runs on fewer threads (a fork / join costs a few us).
constexpr int64_t kMinFlopsPerThread = int64_t(1) << 19;

// Start of part i of n items cut into `parts` near-equal parts.
inline int64_t split_at(int64_t n, int64_t parts, int64_t i) { return n * i / parts; }

// C (compute type, row stride ldc) = A B + bias over the threads.
template <typename T>
void gemm_compute(const GemmProblem<T>& g) {
  using R = acc_t<T>;
  if (g.K == 0) {  // no products: C = bias (or 0)
    at::parallel_for(0, g.M, std::max<int64_t>(1, kGrain / g.N), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = 0; n < g.N; ++n) g.c[m * g.ldc + n] = g.bias ? g.bias[n] : R(0);
      if (g.relu_mask) relu_epilogue(g.c, g.ldc, g.N, m0, m1, 0, g.N, g.relu_mask);
    });
    return;
  }
  static const IsaGemm<T> isa_vec = pick_isa_gemm<T>();
  const IsaGemm<T> isa = use_amx(g) ? amx_gemm<T>() : isa_vec;
  const int64_t mp = (g.M + isa.MR - 1) / isa.MR, np = (g.N + isa.NR - 1) / isa.NR;  // micro-panels
  const double flops = 2.0 * g.M * g.N * g.K;
  int64_t nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  nt = std::max<int64_t>(1, std::min<int64_t>(nt, int64_t(flops / kMinFlopsPerThread)));
  // Cells of C, each done start to finish by one thread: column blocks (every cell then packs
  // all of A) of at most NC columns, so a cell packs A no more often than one thread would;
  // or row blocks (every cell packs all of B) when A is the bigger operand, B's packing
  // counting double when it transposes; rows also when there are too few columns to go round.
  // The threads take cells in turn from a counter, so one held up by another process leaves
  // its share to the others.
  const bool b_transposed = g.cs_b != 1;
  const bool cut_rows = g.M > (b_transposed ? 2 : 1) * g.N;
  const int64_t cell_np = cut_rows ? np : std::min<int64_t>((np + nt - 1) / nt, isa.NC / isa.NR);  // panels per cell
  const int64_t gn = (np + cell_np - 1) / cell_np;
  const int64_t gm = std::max<int64_t>(1, std::min(mp, nt / gn));
  auto run = [&](int64_t cell) {
    const int64_t ci = cell / gn, cj = cell % gn;
    const int64_t i0 = split_at(mp, gm, ci) * isa.MR, i1 = std::min(g.M, split_at(mp, gm, ci + 1) * isa.MR);
    const int64_t j0 = cj * cell_np * isa.NR, j1 = std::min(g.N, (cj + 1) * cell_np * isa.NR);
    if (i0 < i1 && j0 < j1) isa.block(g, i0, i1, j0, j1);
  };
  const int64_t cells = gm * gn;
  if (nt == 1 || cells == 1) {
    for (int64_t cell = 0; cell < cells; ++cell) run(cell);
  } else {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min(nt, cells), 1, [&](int64_t, int64_t) {
      for (int64_t cell = next++; cell < cells; cell = next++) run(cell);
    });
  }
}

}  // namespace

template <typename T>
void gemm_cpu(int64_t M, int64_t N, int64_t K, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b,
              int64_t cs_b, T* c, int64_t ldc, const T* bias, uint32_t* relu_mask) {
  if (M <= 0 || N <= 0) return;
  using R = acc_t<T>;
  const size_t mask_bytes = (M * N + 31) / 32 * sizeof(uint32_t);
  if (relu_mask) std::memset(relu_mask, 0, mask_bytes);
  if constexpr (std::is_same<T, R>::value) {
    GemmProblem<T> g{M, N, K, a, rs_a, cs_a, b, rs_b, cs_b, c, ldc, bias};
    g.relu_mask = relu_mask;
    gemm_compute<T>(g);
  } else {  // the half types: sums in a float copy of C, rounded once at the end
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor cbuf, bbuf;
    R* bias_r = nullptr;
    if (bias) {
      bbuf = at::empty({N}, opts);
      bias_r = bbuf.data_ptr<R>();
      for (int64_t j = 0; j < N; ++j) bias_r[j] = static_cast<R>(bias[j]);
    }
    GemmProblem<T> g{M, N, K, a, rs_a, cs_a, b, rs_b, cs_b, nullptr, N, bias_r};
    std::atomic<bool> subnormal{false};  // AMX met a subnormal: rerun on the vector kernels
    g.amx_subnormal = &subnormal;
    // One k block: AMX hands each finished block of C to the store step itself (with the ReLU
    // epilogue, if asked), with no float copy of C.
    if (K > 0 && K <= amx::kKC && use_amx(g)) {
      g.out = c;
      g.ldo = ldc;
      g.relu_mask = relu_mask;
      gemm_compute<T>(g);
      if (!subnormal) return;
      g.out = nullptr, g.ldo = 0, g.relu_mask = nullptr, g.no_amx = true;
      if (relu_mask) std::memset(relu_mask, 0, mask_bytes);  // (the rerun's store step sets it again)
    }
    cbuf = at::empty({M, N}, opts);
    g.c = cbuf.data_ptr<R>();
    gemm_compute<T>(g);  // (relu_mask unset: the ReLU is decided on the rounded values below)
    if (subnormal && !g.no_amx) {
      g.no_amx = true;
      gemm_compute<T>(g);
    }
    GemmProblem<T> s = g;
    s.out = c;
    s.ldo = ldc;
    s.relu_mask = relu_mask;
    // Rows in chunks of about 4K elements (in L1 between rounding and the ReLU).
    const int64_t rows = std::max<int64_t>(1, 4096 / N);
    at::parallel_for(0, M, std::max<int64_t>(1, kGrain / N), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; m += rows) store_block(s, g.c + m * N, N, m, std::min(m1, m + rows), 0, N);
    });
  }
}

template void gemm_cpu<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t,
                              int64_t, float*, int64_t, const float*, uint32_t*);
template void gemm_cpu<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t, const double*, int64_t,
                               int64_t, double*, int64_t, const double*, uint32_t*);
template void gemm_cpu<c10::Half>(int64_t, int64_t, int64_t, const c10::Half*, int64_t, int64_t, const c10::Half*,
                                  int64_t, int64_t, c10::Half*, int64_t, const c10::Half*, uint32_t*);
template void gemm_cpu<c10::BFloat16>(int64_t, int64_t, int64_t, const c10::BFloat16*, int64_t, int64_t,
                                      const c10::BFloat16*, int64_t, int64_t, c10::BFloat16*, int64_t,
                                      const c10::BFloat16*, uint32_t*);

const char* gemm_cpu_isa() {
  switch (cpu_isa()) {
    case Isa::kAmx:
      return "amx";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "base";
  }
}

// torch.ops.torchmodules_cpu.gemm_isa(): which kernels run here, for tests and benchmarks (in
// a namespace of its own: the torchmodules namespace holds the ops of the op table only).
TORCH_LIBRARY(torchmodules_cpu, m) {
  m.def("gemm_isa() -> str", []() { return std::string(gemm_cpu_isa()); });
}

}  // namespace torchmodules
