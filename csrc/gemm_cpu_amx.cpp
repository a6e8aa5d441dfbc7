// The bfloat16 GEMM on Intel AMX:  C[M,N] (float) = A[M,K] B[K,N] (+ bias[N]),  A and B bfloat16
// with any strides. gemm_cpu (gemm_cpu.cpp) picks it for bfloat16 when this process may use
// AMX (see available()), and hands it blocks of C as it does the vector kernels: C is the float
// copy that gemm_cpu rounds to bfloat16 once at the end.
//
// AMX (Intel SDM vol. 1 ch. 18, "Intel AMX"): eight tile registers of up to 16 rows x 64 bytes,
// configured per thread (LDTILECFG, released with TILERELEASE). TDPBF16PS C, A, B with
//   C: 16 x 16 float,  A: 16 rows x 32 bfloat16 (k),  B: 16 rows (k pairs) x 16 columns of
//   bfloat16 pairs ("VNNI" layout: B row r holds B(2r, j), B(2r + 1, j) at j = 0 .. 15)
// does C[i, j] += sum_{r < 16} A(i, 2r) B(2r, j) + A(i, 2r + 1) B(2r + 1, j) in float: one
// instruction is 16 x 16 x 32 multiply-adds.
//
// Scheme (as the vector kernels, gemm_cpu_kernels.inc): for each KC x NC block of B (packed
// into tiles, in L2), each MC x KC block of A (packed into tiles), each 32-row panel of A (in
// L2) and each 32-column panel of B: a 32 x 32 block of C in four tile registers (2 A tiles x 2
// B tiles per 32 values of k: 4 tile loads per 4 TDPBF16PS), stored to the thread's float row
// panel of C; then the panel is added to C (C = C + panel for the k blocks after the first,
// + bias after the last), or, with one k block (K <= kKC), given bias and handed to gemm_cpu's
// store step (no float copy of C), which rounds it to bfloat16 into the output and, for
// Linear + ReLU, applies the ReLU and writes its mask while the block is in cache. Every
// element of C is summed in the same order (k blocks of KC in order, 32 k at a time within) for
// any cell or thread count, so results are bitwise the same for any number of threads.
// On a CPU with AVX512-BF16 but no AMX (AMD Zen 4 and 5, Intel Cooper Lake) the same blocks and
// packed tiles run through dp_block instead: VDPBF16PS (Intel SDM vol. 2) on zmm registers,
//   acc[j] += A(i, 2r) B(2r, j) + A(i, 2r + 1) B(2r + 1, j),  j = 0 .. 15 (one B tile row r),
// with A's pair (A(i, 2r), A(i, 2r + 1)) broadcast as 32 bits: an A tile row holds it as
// such, and a B tile row r is the 16 columns' pairs. It reads bfloat16 subnormals as 0 as
// TDPBF16PS does (and the same fallback follows).
// Packing (zero-padded to whole tiles in k, rows and columns) absorbs the three layouts of
// Linear's products:
//   A k-contiguous (forward, dX): row copies;  A column-major (dW's dy^T): bfloat16 pairs of
//   two k rows interleaved, then a 16 x 16 transpose of 32-bit pairs;
//   B rows contiguous (dX, dW): two k rows interleaved into pairs;  B k-contiguous (forward's
//   W^T): a 16 x 16 transpose of 32-bit pairs (a pair of k values is already adjacent).
#include "gemm_cpu_amx.h"

#include "gemm_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define TM_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace torchmodules {
namespace amx {

#ifdef TM_AMX

bool available() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    if (!amx_bf16 || !amx_tile) return false;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
      return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE: XGETBV works
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if (((xcr0_lo >> 17) & 3) != 3) return false;  // the OS saves XTILECFG (bit 17) and XTILEDATA (18)
    // Linux (5.16+): ask for the tile data state once per process (threads share the grant).
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;  // ARCH_{GET,REQ}_XCOMP_PERM
    if (syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0) return false;
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &perm) != 0 || !((perm >> kXtileData) & 1)) return false;
    return true;
  }();
  return ok;
}

bool dp_available() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
  }();
  return ok;
}

namespace {

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
// GCC 12's AVX-512 shuffles pass an "undefined" register that -Wall reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

using u16 = uint16_t;  // a bfloat16, as its bits

constexpr int kTile = 512;  // bfloat16 per packed tile: 16 rows x 32
// k blocks of KC: a block of C stays in tile registers for up to KC values of k, so C is
// written once when K <= KC (and read and written once more per further k block). The
// packed blocks of B (kc x nc) and A (mc x kc) are sized to share the 2 MB L2 with room to
// spare: nc and mc shrink as kc grows (whole micro-tiles, at least one).
constexpr int64_t KC = kKC, NC = kNC, kBBytes = 1 << 20, kABytes = 1 << 18;
// Tiles of k (of 32) per pass of the B panels over a 32-row panel of C (kept in float in cp,
// L2): the whole k block. Shorter passes (8 or 16 tiles, so that the A panel's part stays in
// L1) measured no quicker here.
constexpr int64_t KK = KC / 32;
static_assert(KC % 32 == 0 && NC % kNR == 0, "blocks of whole tiles");

inline __mmask32 mask32(int64_t n) { return n >= 32 ? ~__mmask32(0) : n <= 0 ? 0 : (__mmask32(1) << n) - 1; }
inline __mmask16 mask16(int n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// Up to n (<= 32) bfloat16 from p, zeros past n (nothing read there).
inline __m512i load_n(const u16* p, int64_t n) { return n > 0 ? _mm512_maskz_loadu_epi16(mask32(n), p) : _mm512_setzero_si512(); }

// TDPBF16PS reads bfloat16 subnormals as 0 (Intel SDM, "denormal inputs are treated as zero"):
// a subnormal times inf gives NaN, not inf, and times a huge value 0, not its finite product.
// Packing stores every element once, so it notes there whether any was subnormal (exponent 0,
// mantissa not 0), and gemm_cpu reruns such a product on the vector kernels.
inline void store_packed(u16* dst, __m512i v, __mmask32& sub) {
  sub |= _mm512_test_epi16_mask(v, _mm512_set1_epi16(0x007f)) & ~_mm512_test_epi16_mask(v, _mm512_set1_epi16(0x7f80));
  _mm512_store_si512(dst, v);
}
inline u16 packed(u16 v, __mmask32& sub) {
  sub |= (v & 0x7f80) == 0 && (v & 0x007f) != 0;
  return v;
}

// The bfloat16 pairs (x[j], y[j]) of x, y's lanes j = 0 .. 15 (lo) and 16 .. 31 (hi).
inline void interleave(__m512i x, __m512i y, __m512i& lo, __m512i& hi) {
  alignas(64) static constexpr int16_t kLo[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                 8,  40, 9,  41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i ilo = _mm512_load_si512(kLo);
  const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
  lo = _mm512_permutex2var_epi16(x, ilo, y);
  hi = _mm512_permutex2var_epi16(x, ihi, y);
}

// 16 x 16 transpose of 32-bit elements: pairs of rows, pairs of pairs, then 128-bit blocks.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int g = 0; g < 4; ++g) {
    t[4 * g + 0] = _mm512_unpacklo_epi32(r[4 * g + 0], r[4 * g + 1]);
    t[4 * g + 1] = _mm512_unpackhi_epi32(r[4 * g + 0], r[4 * g + 1]);
    t[4 * g + 2] = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
    t[4 * g + 3] = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
    for (int e = 0; e < 2; ++e) {
      u[4 * g + 2 * e] = _mm512_unpacklo_epi64(t[4 * g + e], t[4 * g + 2 + e]);
      u[4 * g + 2 * e + 1] = _mm512_unpackhi_epi64(t[4 * g + e], t[4 * g + 2 + e]);
    }
  }
  // u[4g + e], 128-bit lane l: rows 4g .. 4g+3 at column 4l + e; gather lane l of the four
  // groups into r[4l + e].
  for (int e = 0; e < 4; ++e) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), v1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88),
                  v3 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
    r[e] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + e] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
    r[12 + e] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
  }
}

// ---- packing ----------------------------------------------------------------------------------

// A's block, rows [0, mc) x k [0, kc) of A(i, k) = src[i * rs + k * cs], as A tiles: tile
// (p, kb) (rows 16p .. 16p + 15, k 32kb .. 32kb + 31) at dst + (p * nkb + kb) * kTile, A(i, k)
// at row i % 16, column k % 32 of it; zeros past mc and kc.
void pack_a(u16* __restrict dst, const u16* __restrict src, int64_t rs, int64_t cs, int64_t mc, int64_t kc,
            __mmask32& sub) {
  const int64_t nkb = (kc + 31) / 32, mp = (mc + 15) / 16 * 16;
  auto row = [&](int64_t i, int64_t kb) { return dst + (i / 16 * nkb + kb) * kTile + i % 16 * 32; };
  if (cs == 1) {  // row copies
    for (int64_t i = 0; i < mp; ++i)
      for (int64_t kb = 0; kb < nkb; ++kb)
        store_packed(row(i, kb), i < mc ? load_n(src + i * rs + kb * 32, kc - kb * 32) : _mm512_setzero_si512(), sub);
  } else if (rs == 1) {  // column-major: rows of 32 i at k, k + 1 interleaved into pairs, transposed
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int64_t i0 = 0; i0 < mp; i0 += 32) {
        __m512i x[16], y[16];  // x[r] (y[r]): i = i0 .. i0 + 15 (+ 16), the pair k = 32kb + 2r, +1
        for (int r = 0; r < 16; ++r) {
          const int64_t k = kb * 32 + 2 * r;
          const __m512i e = k < kc ? load_n(src + k * cs + i0, mc - i0) : _mm512_setzero_si512();
          const __m512i o = k + 1 < kc ? load_n(src + (k + 1) * cs + i0, mc - i0) : _mm512_setzero_si512();
          interleave(e, o, x[r], y[r]);
        }
        transpose16(x);
        for (int i = 0; i < 16; ++i) store_packed(row(i0 + i, kb), x[i], sub);
        if (i0 + 16 < mp) {
          transpose16(y);
          for (int i = 0; i < 16; ++i) store_packed(row(i0 + 16 + i, kb), y[i], sub);
        }
      }
  } else {
    for (int64_t i = 0; i < mp; ++i)
      for (int64_t k = 0; k < nkb * 32; ++k)
        row(i, k / 32)[k % 32] = packed(i < mc && k < kc ? src[i * rs + k * cs] : 0, sub);
  }
}

// B's block, k [0, kc) x columns [0, nc) of B(k, j) = src[k * rs + j * cs], as B tiles: tile
// (q, kb) (columns 16q .. 16q + 15, k 32kb .. 32kb + 31) at dst + (q * nkb + kb) * kTile,
// B(k, j) at [(k % 32) / 2 * 32 + (j % 16) * 2 + k % 2] of it; zeros past kc and nc.
void pack_b(u16* __restrict dst, const u16* __restrict src, int64_t rs, int64_t cs, int64_t kc, int64_t nc,
            __mmask32& sub) {
  const int64_t nkb = (kc + 31) / 32, np = (nc + 15) / 16;
  auto tile = [&](int64_t q, int64_t kb) { return dst + (q * nkb + kb) * kTile; };
  if (cs == 1) {  // rows k, k + 1 interleaved: 32 columns at a time, along the rows
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int r = 0; r < 16; ++r) {
        const int64_t k = kb * 32 + 2 * r;
        const u16* e = src + k * rs;
        const u16* o = e + rs;
        for (int64_t j0 = 0; j0 < nc; j0 += 32) {
          __m512i lo, hi;
          interleave(k < kc ? load_n(e + j0, nc - j0) : _mm512_setzero_si512(),
                     k + 1 < kc ? load_n(o + j0, nc - j0) : _mm512_setzero_si512(), lo, hi);
          store_packed(tile(j0 / 16, kb) + r * 32, lo, sub);
          if (j0 + 16 < nc) store_packed(tile(j0 / 16 + 1, kb) + r * 32, hi, sub);
        }
      }
  } else if (rs == 1) {  // k-contiguous: 16 columns x 32 k (16 pairs), transposed as 32-bit pairs
    for (int64_t q = 0; q < np; ++q)
      for (int64_t kb = 0; kb < nkb; ++kb) {
        __m512i x[16];
        for (int j = 0; j < 16; ++j)
          x[j] = q * 16 + j < nc ? load_n(src + (q * 16 + j) * cs + kb * 32, kc - kb * 32) : _mm512_setzero_si512();
        transpose16(x);
        for (int r = 0; r < 16; ++r) store_packed(tile(q, kb) + r * 32, x[r], sub);
      }
  } else {
    for (int64_t q = 0; q < np; ++q)
      for (int64_t k = 0; k < nkb * 32; ++k)
        for (int j = 0; j < 16; ++j) {
          const int64_t jj = q * 16 + j;
          tile(q, k / 32)[k % 32 / 2 * 32 + j * 2 + k % 2] = packed(k < kc && jj < nc ? src[k * rs + jj * cs] : 0, sub);
        }
  }
}

// ---- the tile kernel ------------------------------------------------------------------------

// Tile registers: C 0 .. 3 (C tile (s, t) in 2s + t), A 4, 5, B 6, 7; all 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// A 16 A2 x 16 B2 block of C, in float at c (row stride ldc floats):
//   C[i, j] = (load_c ? C[i, j] : 0) + sum_{k < 32 nkb} A(i, k) B(k, j)
// a: A tile (p, kb) of the packed block (panel p + 1 at a + a_next), b: B tile (q, kb) (q + 1
// at b + b_next); a panel's tiles for successive kb are kTile apart.
template <bool A2, bool B2>
void tile_block(int64_t nkb, const u16* a, int64_t a_next, const u16* b, int64_t b_next, float* c, int64_t ldc,
                bool load_c) {
  const int64_t ld = ldc * sizeof(float);
  if (load_c) {
    _tile_loadd(0, c, ld);
    if (B2) _tile_loadd(1, c + 16, ld);
    if (A2) _tile_loadd(2, c + 16 * ldc, ld);
    if (A2 && B2) _tile_loadd(3, c + 16 * ldc + 16, ld);
  } else {
    _tile_zero(0);
    if (B2) _tile_zero(1);
    if (A2) _tile_zero(2);
    if (A2 && B2) _tile_zero(3);
  }
  for (int64_t kb = 0; kb < nkb; ++kb, a += kTile, b += kTile) {
    _tile_loadd(4, a, 64);
    _tile_loadd(6, b, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (B2) {
      _tile_loadd(7, b + b_next, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (A2) {
      _tile_loadd(5, a + a_next, 64);
      _tile_dpbf16ps(2, 5, 6);
      if (B2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, ld);
  if (B2) _tile_stored(1, c + 16, ld);
  if (A2) _tile_stored(2, c + 16 * ldc, ld);
  if (A2 && B2) _tile_stored(3, c + 16 * ldc + 16, ld);
}

// tile_block's C with VDPBF16PS on zmm registers (no AMX), from the same packed tiles: 8 rows of
// C at a time, 16 or 32 columns (8 x 2 accumulators, two B vectors and a broadcast: 19 of the 32
// registers), over all of k; per pair of k, 2 B loads, 8 broadcasts of A's pair and 16 VDPBF16PS.
template <bool A2, bool B2>
void dp_block(int64_t nkb, const u16* a, int64_t a_next, const u16* b, int64_t b_next, float* c, int64_t ldc,
              bool load_c) {
  constexpr int kRows = 8;
  for (int p = 0; p < (A2 ? 2 : 1); ++p)
    for (int g = 0; g < 16; g += kRows) {
      const u16* ap = a + p * a_next + g * 32;
      float* cg = c + (p * 16 + g) * ldc;
      __m512 acc[kRows][2];
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i)
        for (int t = 0; t < (B2 ? 2 : 1); ++t)
          acc[i][t] = load_c ? _mm512_loadu_ps(cg + i * ldc + 16 * t) : _mm512_setzero_ps();
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const u16* at = ap + kb * kTile;
        const u16* bt = b + kb * kTile;
        for (int r = 0; r < 16; ++r) {
          const __m512bh b0 = (__m512bh)_mm512_load_si512(bt + r * 32);
          const __m512bh b1 = B2 ? (__m512bh)_mm512_load_si512(bt + b_next + r * 32) : b0;
#pragma GCC unroll 8
          for (int i = 0; i < kRows; ++i) {
            int32_t pair;
            std::memcpy(&pair, at + i * 32 + 2 * r, sizeof(pair));
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
            if (B2) acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
          }
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i)
        for (int t = 0; t < (B2 ? 2 : 1); ++t) _mm512_storeu_ps(cg + i * ldc + 16 * t, acc[i][t]);
    }
}

// C[0:mr, 0:n] = (accumulate ? C + blk : blk) + bias  (blk: row stride ld).
void add_block(const float* blk, int64_t ld, float* c, int64_t ldc, int mr, int64_t n, bool accumulate,
               const float* bias) {
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = mask16(int(std::min<int64_t>(16, n - j)));
      __m512 x = _mm512_load_ps(blk + i * ld + j);
      if (accumulate) x = _mm512_add_ps(_mm512_maskz_loadu_ps(m, ci + j), x);
      if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias + j));
      _mm512_mask_storeu_ps(ci + j, m, x);
    }
  }
}

// Per-thread packing space (gemm_cpu.h).
struct AmxScratch;
inline char* scratch(size_t bytes) { return gemm_scratch<AmxScratch>(bytes); }

// kTiles: the tile kernel (AMX), else dp_block (AVX512-BF16).
template <bool kTiles>
bool block(int64_t K, const u16* a, int64_t rs_a, int64_t cs_a, const u16* b, int64_t rs_b, int64_t cs_b, float* c,
           int64_t ldc, const float* bias, const StoreStep* store, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int64_t kp = (std::min(KC, K) + 31) / 32 * 32;  // the longest k block, in whole tiles
  const int64_t nb = std::max<int64_t>(kNR, std::min<int64_t>(NC, kBBytes / (kp * 2) / kNR * kNR));
  const int64_t MC = std::max<int64_t>(kMR, std::min<int64_t>(256, kABytes / (kp * 2) / kMR * kMR));
  const size_t a_bytes = MC * kp * sizeof(u16), b_bytes = nb * kp * sizeof(u16);
  char* ws = scratch(a_bytes + b_bytes + kMR * nb * sizeof(float));
  u16* const ap = reinterpret_cast<u16*>(ws);
  u16* const bp = reinterpret_cast<u16*>(ws + a_bytes);
  float* const cp = reinterpret_cast<float*>(ws + a_bytes + b_bytes);  // 32 rows x nb of C
  static const TileConfig config;
  __mmask32 sub = 0;  // a subnormal packed (see store_packed)
  if (kTiles) _tile_loadconfig(&config);  // per thread: this thread's tiles, released at the end
  for (int64_t jc = j0; jc < j1; jc += nb) {
    const int64_t nc = std::min(nb, j1 - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc), nkb = (kc + 31) / 32, panel = nkb * kTile;
      pack_b(bp, b + pc * rs_b + jc * cs_b, rs_b, cs_b, kc, nc, sub);
      const float* bias_c = pc + kc == K && bias ? bias + jc : nullptr;
      for (int64_t ic = i0; ic < i1; ic += MC) {
        const int64_t mc = std::min(MC, i1 - ic);
        pack_a(ap, a + ic * rs_a + pc * cs_a, rs_a, cs_a, mc, kc, sub);
        for (int64_t ir = 0; ir < mc; ir += kMR) {
          const int mr = int(std::min<int64_t>(kMR, mc - ir));
          // C's 32 x nc rows in cp (L2), KK tiles of k at a time.
          for (int64_t kb0 = 0; kb0 < nkb; kb0 += KK) {
            const int64_t nk = std::min(KK, nkb - kb0);
            const u16* ai = ap + ir / 16 * panel + kb0 * kTile;
            for (int64_t jr = 0; jr < nc; jr += kNR) {
              const int64_t n = std::min<int64_t>(kNR, nc - jr);
              const u16* bj = bp + jr / 16 * panel + kb0 * kTile;
              float* cj = cp + jr;
              const auto run = [&](auto a2, auto b2) {
                constexpr bool kA2 = decltype(a2)::value, kB2 = decltype(b2)::value;
                if constexpr (kTiles) tile_block<kA2, kB2>(nk, ai, panel, bj, panel, cj, nb, kb0 > 0);
                else dp_block<kA2, kB2>(nk, ai, panel, bj, panel, cj, nb, kb0 > 0);
              };
              using Y = std::true_type;
              using N = std::false_type;
              if (mr > 16) n > 16 ? run(Y{}, Y{}) : run(Y{}, N{});
              else n > 16 ? run(N{}, Y{}) : run(N{}, N{});
            }
          }
          if (store) {  // the one k block: C = block + bias, stored by gemm_cpu's store step
            add_block(cp, nb, cp, nb, mr, nc, false, bias_c);
            store->fn(store->ctx, cp, nb, ic + ir, ic + ir + mr, jc, nc);
          } else {
            add_block(cp, nb, c + (ic + ir) * ldc + jc, ldc, mr, nc, pc > 0, bias_c);
          }
        }
      }
    }
  }
  if (kTiles) _tile_release();
  return sub != 0;
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Nearest even: (bits + 0x7fff + bit 16) >> 16, as c10::BFloat16; NaN: 0x7fc0.
void round_bf16(const float* src, c10::BFloat16* dst, int64_t n) {
  for (int64_t q = 0; q < n; q += 16) {
    const __mmask16 m = n - q >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - q)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(m, src + q);
    const __m512i u = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_mask_storeu_epi16(dst + q, m, _mm512_cvtepi32_epi16(r));
  }
}
#pragma GCC diagnostic pop
#pragma GCC pop_options

bool gemm_bf16_block(bool tiles, int64_t K, const c10::BFloat16* a, int64_t rs_a, int64_t cs_a,
                     const c10::BFloat16* b, int64_t rs_b, int64_t cs_b, float* c, int64_t ldc, const float* bias,
                     const StoreStep* store, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  static_assert(sizeof(c10::BFloat16) == sizeof(u16), "bfloat16 is its 16 bits");
  const auto* pa = reinterpret_cast<const u16*>(a);
  const auto* pb = reinterpret_cast<const u16*>(b);
  return tiles ? block<true>(K, pa, rs_a, cs_a, pb, rs_b, cs_b, c, ldc, bias, store, i0, i1, j0, j1)
               : block<false>(K, pa, rs_a, cs_a, pb, rs_b, cs_b, c, ldc, bias, store, i0, i1, j0, j1);
}

#else  // not x86-64 Linux with GCC: no AMX

bool available() { return false; }
bool dp_available() { return false; }

bool gemm_bf16_block(bool, int64_t, const c10::BFloat16*, int64_t, int64_t, const c10::BFloat16*, int64_t, int64_t,
                     float*, int64_t, const float*, const StoreStep*, int64_t, int64_t, int64_t, int64_t) {
  return false;
}

void round_bf16(const float* src, c10::BFloat16* dst, int64_t n) {
  for (int64_t q = 0; q < n; ++q) dst[q] = static_cast<c10::BFloat16>(src[q]);
}

#endif

}  // namespace amx
}  // namespace torchmodules
