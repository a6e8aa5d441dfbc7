// Hopper GEMM for float16 / bfloat16 (sm_90a: wgmma, TMA, setmaxnreg), called by linear.cu:
//   C[m, n] = sum_k A(m, k) B(k, n) (+ bias[n]),  float accumulators, bias added in float,
//   one rounding at the end (as linear.cu's mma.sync path).
// A and B are k-contiguous ("K-major") or not ("MN-major"); wgmma reads both layouts of 16-bit
// operands from shared memory, so the three products of Linear (y = x W^T: both K-major;
// dx = dy W: B MN-major; dW = dy^T x: both MN-major) need no transposition.
//
// One CTA per SM (persistent), 3 warpgroups; each CTA walks the 128 x 256 tiles of C
// t = blockIdx.x, + gridDim.x, ... (grouped by 16 tile-rows, so that concurrent tiles share
// operand panels in L2), K in steps of 64:
//   warpgroup 0, producer: one thread loads the A (128 x 64) and B (256 x 64) tiles of each K
//     step with the tensor memory accelerator (cp.async.bulk.tensor) into a ring of 4
//     shared-memory stages, 128-byte swizzled; a stage's "full" mbarrier completes when its
//     bytes have landed (out-of-range rows and k are filled with zeros by the TMA);
//   warpgroups 1 and 2, consumers: rows [0, 64) and [64, 128) of the tile. Per K step, four
//     wgmma.m64n256k16 read A and B through shared-memory descriptors into 128 float
//     accumulators per thread; one wgmma group stays in flight, and a stage is handed back
//     ("empty" mbarrier, one arrival per consumer warp, each after its own wait for the
//     wgmmas that read it: no reliance on one warp's wait covering its warpgroup).
//     Then the epilogue adds the bias and writes C from registers, while the producer is
//     already loading the next tile's stages.
// setmaxnreg moves registers from the producer (40 per thread) to the consumers (232).
// Each C element is one sum in a fixed k order: deterministic, no split-K.
//
// The sm_90a code is compiled only where __CUDA_ARCH_FEAT_SM90_ALL is defined (the
// compute_90a target); for other targets the kernel is an empty stub, which the host detects
// (a few registers, no static shared memory in its attributes) and then leaves the product to
// linear.cu's mma.sync kernel.
#include "gemm_sm90.cuh"
#include "launch.cuh"

#include <cuda.h>  // CUtensorMap and its enums; the driver function comes via cudaGetDriverEntryPoint*

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TM_SM90A 1
#else
#define TM_SM90A 0
#endif

namespace torchmodules {
namespace {

// ---- the tiling -----------------------------------------------------------------------------

[[maybe_unused]] constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kGroup = 16;
constexpr int kThreads = 384;                              // producer + 2 consumer warpgroups
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;  // 16 KB, 32 KB per stage
constexpr int kStageBytes = kABytes + kBBytes;
constexpr int kBox = 64;                                   // 64 elements = one 128-byte swizzled row
constexpr int kBoxBytes = kBox * kBox * 2;                 // an MN-major box: 64 (mn) x 64 (k)
[[maybe_unused]] constexpr int kKRows = 128, kKBoxBytes = kKRows * kBK * 2; // a K-major box: 128 rows x 64 (k)
constexpr int kSmemBytes = kStages * kStageBytes + 1024;   // + slack to align the ring to 1024 B
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
// The CTA starts with 65536 / 384 -> 168 registers per thread (launch bounds); setmaxnreg
// only moves them between warpgroups.
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kThreads * 168, "register budget");
static_assert(kSmemBytes <= 227 * 1024, "shared memory");
static_assert(kBoxBytes == 8192 && kBM % kBox == 0 && kBN % kBox == 0, "MN-major tiles are whole boxes");
static_assert(kBM == kKRows && kBN % kKRows == 0 && kBK == kBox, "K-major tiles are whole boxes");

struct Args {
  void* c;            // T*, C[m, n] at c[m*ldc + n]
  const void* bias;   // T*, [N] or nullptr
  int64_t ldc;
  int M, N, K;
  bool cpair;         // c 4-byte aligned and ldc even: two adjacent outputs in one store
};

// ---- sm_90a device helpers ------------------------------------------------------------------

#if TM_SM90A

// Tile t's first row and column: tiles run down groups of kGroup tile-rows, column by column.
__device__ __forceinline__ void tile_origin(int t, int tiles_m, int tiles_n, int& m0, int& n0) {
  const int per_group = kGroup * tiles_n;
  const int first = t / per_group * kGroup;
  const int rows = tiles_m - first < kGroup ? tiles_m - first : kGroup;
  const int r = t % per_group;
  m0 = (first + r % rows) * kBM;
  n0 = r / rows * kBN;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// One arrival that also expects `bytes` more transaction bytes (the TMA copies) this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One test of whether the phase of parity `parity` has completed (a fresh barrier counts the
// phase before its first, parity 1, as completed); the hardware may suspend the thread a while first.
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// A wait of more than 2^34 cycles (about 9 s; a stage normally turns over in microseconds) is a
// broken protocol, not a slow one: the kernel traps, so the launch fails with an error within
// seconds instead of hanging the process until an outside timeout.
constexpr long long kHangCycles = 1ll << 34;
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const long long t0 = clock64();
  while (!mbar_try_wait(bar, parity))
    if (clock64() - t0 > kHangCycles) __trap();
}

// The box at coordinates (c0 innermost, c1) of a 2-D tensor map -> shared memory at dst,
// completing `bar`'s transaction bytes.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}

// wgmma shared-memory descriptor, 128-byte swizzle: start address, leading-dimension byte
// offset (MN-major: between 64-element column blocks; unused by K-major), stride byte offset
// (between 8-row groups: 1024 B), each >> 4; swizzle mode 1 (128 B) in bits 62-63.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t((lbo & 0x3FFFF) >> 4) << 16 | uint64_t((sbo & 0x3FFFF) >> 4) << 32 |
         uint64_t(1) << 62;
}

__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// Keeps the compiler from moving accesses of the accumulators across the asynchronous wgmmas.
__device__ __forceinline__ void fence_acc(float* d) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define TM_ACC4(i) "+f"(d[i]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3])
#define TM_ACC16(i) TM_ACC4(i), TM_ACC4((i) + 4), TM_ACC4((i) + 8), TM_ACC4((i) + 12)
#define TM_ACC128                                                                                         \
  TM_ACC16(0), TM_ACC16(16), TM_ACC16(32), TM_ACC16(48), TM_ACC16(64), TM_ACC16(80), TM_ACC16(96), \
      TM_ACC16(112)
#define TM_WGMMA_REGS                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                            \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                   \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                    \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                    \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                    \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                    \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "        \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define TM_WGMMA(TY)                                                                                     \
  asm volatile("{\n"                                                                                     \
               ".reg .pred p;\n"                                                                         \
               "setp.ne.b32 p, %130, 0;\n"                                                               \
               "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " " TM_WGMMA_REGS                \
               ", %128, %129, p, 1, 1, %131, %132;\n"                                                    \
               "}\n"                                                                                     \
               : TM_ACC128                                                                               \
               : "l"(da), "l"(db), "r"(accumulate), "n"(int(!AKC)), "n"(int(!BKC)))

// d[64 x 256] (+)= A[64 x 16] B[16 x 256] for this warpgroup, asynchronously; accumulate = 0
// overwrites d. Transpose flags: 1 = MN-major operand. Accumulator register i of thread
// (warp w, lane l) of the warpgroup is D[16 w + l / 4 + 8 ((i / 2) % 2)][8 (i / 4) + 2 (l % 4) + i % 2].
template <typename T, bool AKC, bool BKC>
__device__ __forceinline__ void wgmma_64x256x16(float* d, uint64_t da, uint64_t db, uint32_t accumulate) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    TM_WGMMA("bf16");
  else
    TM_WGMMA("f16");
}

#undef TM_WGMMA
#undef TM_WGMMA_REGS
#undef TM_ACC128
#undef TM_ACC16
#undef TM_ACC4

#endif  // TM_SM90A

// ---- the kernel -----------------------------------------------------------------------------

// ta, tb: 2-D tensor maps of A and B, boxes of 64 contiguous elements (128 B, swizzled) by
// 128 (K-major) or 64 (MN-major) rows; their dim 0 is the contiguous one:
//   A K-major: (k, m), A MN-major: (m, k); B K-major: (k, n), B MN-major: (n, k).
// Shared memory per stage s: A at ring + s * 16 KB, B at ring + 4 * 16 KB + s * 32 KB, each
// made of TMA boxes whose rows are 128 B: K-major tiles are [row][64 k] (box j = rows
// 128 j.., at j * 16 KB); MN-major ones [column block j of 64][64 k][64 mn] (box j at j * 8 KB).
template <typename T, bool AKC, bool BKC>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb, const Args g) {
#if TM_SM90A
  __shared__ __align__(8) uint64_t bars[2 * kStages];  // full[s], then empty[s]
  extern __shared__ __align__(1024) unsigned char dyn_smem[];
  const uint32_t ring = (smem_u32(dyn_smem) + 1023) & ~1023u;  // 128-byte swizzle repeats every 1024 B
  const uint32_t full0 = smem_u32(bars), empty0 = full0 + 8 * kStages;
  const int wg = int(threadIdx.x) / 128, tid = int(threadIdx.x) % 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, 1);   // the producer's arrive.expect_tx (+ the TMA bytes)
      mbar_init(empty0 + 8 * s, 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // visible to the TMA unit
  }
  __syncthreads();

  const int tiles_m = (g.M + kBM - 1) / kBM, tiles_n = (g.N + kBN - 1) / kBN;
  const int tiles = tiles_m * tiles_n, ktiles = (g.K + kBK - 1) / kBK;

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    if (tid == 0) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(&ta) : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(&tb) : "memory");
      int s = 0;
      uint32_t phase = 0;
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int m0, n0;
        tile_origin(t, tiles_m, tiles_n, m0, n0);
        // Boxes that start past the last row or column are not loaded: they would only feed
        // outputs the epilogue drops. Boxes that reach past it are zero-filled by the TMA,
        // which still delivers (and counts) all their bytes.
        const int na = AKC ? 1 : min(kBM / kBox, (g.M - m0 + kBox - 1) / kBox);
        const int nb = BKC ? min(kBN / kKRows, (g.N - n0 + kKRows - 1) / kKRows) : min(kBN / kBox, (g.N - n0 + kBox - 1) / kBox);
        const uint32_t bytes = na * (AKC ? kKBoxBytes : kBoxBytes) + nb * (BKC ? kKBoxBytes : kBoxBytes);
        for (int kt = 0; kt < ktiles; ++kt) {
          const uint32_t full = full0 + 8 * s;
          mbar_wait(empty0 + 8 * s, phase ^ 1);  // the consumers are done with this stage
          mbar_arrive_expect_tx(full, bytes);
          const uint32_t sa = ring + s * kABytes, sb = ring + kStages * kABytes + s * kBBytes;
          const int k0 = kt * kBK;
          if constexpr (AKC) {
            tma_load(sa, &ta, full, k0, m0);
          } else {
            for (int j = 0; j < na; ++j) tma_load(sa + j * kBoxBytes, &ta, full, m0 + j * kBox, k0);
          }
          if constexpr (BKC) {
            for (int j = 0; j < nb; ++j) tma_load(sb + j * kKBoxBytes, &tb, full, k0, n0 + j * kKRows);
          } else {
            for (int j = 0; j < nb; ++j) tma_load(sb + j * kBoxBytes, &tb, full, n0 + j * kBox, k0);
          }
          if (++s == kStages) s = 0, phase ^= 1;
        }
      }
    }
  } else {  // consumers
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
    const int cw = wg - 1;  // rows [64 cw, 64 cw + 64) of each tile
    // Per k16 step kk of a stage: K-major operands move 32 B along their 128-byte rows (the
    // hardware applies the swizzle to the address); MN-major ones move 16 rows of 128 B.
    constexpr uint32_t kStepA = AKC ? 32 : 16 * 128, kStepB = BKC ? 32 : 16 * 128;
    constexpr uint32_t kLboA = AKC ? 16 : kBoxBytes, kLboB = BKC ? 16 : kBoxBytes;
    // The consumer's 64 rows of A: 64 rows of 128 B (K-major) or box cw (MN-major), 8 KB in.
    const uint64_t desc_a0 = smem_desc(ring + cw * 64 * 128, kLboA, 1024);
    const uint64_t desc_b0 = smem_desc(ring + kStages * kABytes, kLboB, 1024);
    const int w = tid / 32, l = tid % 32;
    const T* bias = static_cast<const T*>(g.bias);
    T* c = static_cast<T*>(g.c);
    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    int s = 0;
    uint32_t phase = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int m0, n0;
      tile_origin(t, tiles_m, tiles_n, m0, n0);
      int prev = -1;  // the stage whose wgmmas may still be in flight
      for (int kt = 0; kt < ktiles; ++kt) {
        mbar_wait(full0 + 8 * s, phase);
        fence_acc(d);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
          // descriptor address fields count 16-byte units
          const uint64_t da = desc_a0 + ((s * kABytes + kk * kStepA) >> 4);
          const uint64_t db = desc_b0 + ((s * kBBytes + kk * kStepB) >> 4);
          wgmma_64x256x16<T, AKC, BKC>(d, da, db, (kt > 0 || kk > 0) ? 1u : 0u);
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        fence_acc(d);
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // the previous step's group is done
        if (prev >= 0 && l == 0) mbar_arrive(empty0 + 8 * prev);
        prev = s;
        if (++s == kStages) s = 0, phase ^= 1;
      }
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      fence_acc(d);
      if (prev >= 0 && l == 0) mbar_arrive(empty0 + 8 * prev);

      // Epilogue: register 4 j + 2 h + e holds row 16 w + l / 4 + 8 h, column 8 j + 2 (l % 4) + e
      // of the consumer's 64 x 256 block; C = round(acc + float(bias)). Blocks wholly inside C
      // (all but the last row and column of tiles) store pairs without bounds checks.
      const int64_t row0 = int64_t(m0) + cw * 64 + w * 16 + l / 4;
      const int col0 = n0 + 2 * (l % 4);
      if (g.cpair && int64_t(m0) + cw * 64 + 64 <= g.M && n0 + kBN <= g.N) {
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j) {
          const int col = col0 + 8 * j;
          const float b0 = bias != nullptr ? to_float(bias[col]) : 0.f;
          const float b1 = bias != nullptr ? to_float(bias[col + 1]) : 0.f;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            T* p = c + (row0 + 8 * h) * g.ldc + col;
            *reinterpret_cast<uint32_t*>(p) =
                bits16(from_float<T>(d[4 * j + 2 * h] + b0)) | bits16(from_float<T>(d[4 * j + 2 * h + 1] + b1)) << 16;
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j) {
          const int col = col0 + 8 * j;
          float b0 = 0.f, b1 = 0.f;
          if (bias != nullptr) {
            if (col < g.N) b0 = to_float(bias[col]);
            if (col + 1 < g.N) b1 = to_float(bias[col + 1]);
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t row = row0 + 8 * h;
            if (row >= g.M) continue;
            const T r0 = from_float<T>(d[4 * j + 2 * h] + b0), r1 = from_float<T>(d[4 * j + 2 * h + 1] + b1);
            T* p = c + row * g.ldc + col;
            if (g.cpair && col + 1 < g.N) {
              *reinterpret_cast<uint32_t*>(p) = bits16(r0) | bits16(r1) << 16;
            } else {
              if (col < g.N) p[0] = r0;
              if (col + 1 < g.N) p[1] = r1;
            }
          }
        }
      }
    }
  }
#endif  // TM_SM90A
}

// ---- host side ------------------------------------------------------------------------------

enum class Mode { kOff, kAuto, kRequire };

// TORCHMODULES_SM90_GEMM: "0" off, "require" on or raise, else (unset too) on where possible.
// Read on every call, so a test or benchmark can switch it at run time.
Mode sm90_mode() {
  const char* v = std::getenv("TORCHMODULES_SM90_GEMM");
  if (v == nullptr) return Mode::kAuto;
  if (std::strcmp(v, "0") == 0) return Mode::kOff;
  if (std::strcmp(v, "require") == 0) return Mode::kRequire;
  return Mode::kAuto;
}

using EncodeTiled = decltype(&cuTensorMapEncodeTiled);

// cuTensorMapEncodeTiled through the runtime (no link against libcuda), or nullptr.
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
#else
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q);
#endif
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return EncodeTiled(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A 2-D tensor map over rows of `inner` contiguous elements, `ld` elements apart, `outer` rows;
// boxes of 64 x box_rows (no larger than the tensor: the dispatch asks M, N >= 128, K >= 64),
// 128-byte swizzle, zeros outside. False if the driver refuses.
bool make_map(CUtensorMap* map, at::ScalarType dtype, const void* p, int64_t inner, int64_t outer, int64_t ld,
              int box_rows) {
  const EncodeTiled fn = encode_tiled();
  if (fn == nullptr) return false;
  const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(outer)};
  const cuuint64_t strides[1] = {cuuint64_t(ld) * 2};  // bytes, of dim 1
  const cuuint32_t box[2] = {cuuint32_t(kBox), cuuint32_t(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  std::memset(map, 0, sizeof(*map));
  const CUresult r =
      fn(map, dtype == at::kHalf ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
         const_cast<void*>(p), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// Per device and kernel: the SM count if the kernel's sm_90a image is what this device runs
// and it got its shared memory, else 0 (with the reason in *why). The stub compiled for other
// targets (sm_90 without the "a", or PTX compiled by the driver) is an empty body: a few
// registers, no shared memory; the real kernel has 168 registers (its launch bounds, which
// setmaxnreg needs) and its mbarriers in static shared memory.
int kernel_ready(int device, const void* kernel, const char** why) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, std::pair<int, const char*>> cache;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(device, kernel);
  auto it = cache.find(key);
  if (it == cache.end()) {
    int sms = 0;
    const char* reason = nullptr;
    cudaFuncAttributes attr;
    int optin = 0;
    if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
      reason = "no image of the kernel for this device";
    } else if (attr.numRegs < 128 || attr.sharedSizeBytes < sizeof(uint64_t) * 2 * kStages) {
      reason = "the kernel this device loads was not compiled for sm_90a (build with TORCH_CUDA_ARCH_LIST=9.0)";
    } else if (attr.numRegs * kThreads < 128 * kProducerRegs + 256 * kConsumerRegs) {
      // setmaxnreg.inc would wait forever for registers the CTA was never given
      reason = "the kernel was compiled with too few registers a thread for its setmaxnreg split";
    } else if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
               size_t(optin) < attr.sharedSizeBytes + kSmemBytes) {
      reason = "not enough shared memory per block";
    } else if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes) != cudaSuccess) {
      reason = "cudaFuncSetAttribute refused the shared memory size";
    } else if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
      reason = "no multiprocessor count";
      sms = 0;
    }
    (void)cudaGetLastError();  // a refusal above is an answer, not an error for the next launch check
    it = cache.emplace(key, std::make_pair(sms, reason)).first;
  }
  *why = it->second.second;
  return it->second.first;
}

template <typename T, bool AKC, bool BKC>
const char* launch(const at::TensorBase& on, at::ScalarType dtype, const void* a, const void* b, const Args& g,
                   int64_t lda, int64_t ldb) {
  const void* kernel = reinterpret_cast<const void*>(&gemm_sm90_kernel<T, AKC, BKC>);
  const char* why = nullptr;
  const c10::cuda::CUDAGuard guard(on.device());
  const int sms = kernel_ready(on.get_device(), kernel, &why);
  if (sms == 0) return why;
  CUtensorMap ta, tb;
  const bool ok_a = AKC ? make_map(&ta, dtype, a, g.K, g.M, lda, kKRows) : make_map(&ta, dtype, a, g.M, g.K, lda, kBox);
  const bool ok_b = BKC ? make_map(&tb, dtype, b, g.K, g.N, ldb, kKRows) : make_map(&tb, dtype, b, g.N, g.K, ldb, kBox);
  if (!ok_a || !ok_b) return "cuTensorMapEncodeTiled is not available or refused the operands";
  const int64_t tiles = int64_t((g.M + kBM - 1) / kBM) * ((g.N + kBN - 1) / kBN);
  const dim3 grid(static_cast<unsigned>(tiles < sms ? tiles : sms)), block(kThreads);
  tm_launch(on, grid, block, kSmemBytes, gemm_sm90_kernel<T, AKC, BKC>, ta, tb, g);
  return nullptr;
}

// Why the sm_90a kernel cannot run this product, or nullptr.
const char* unsupported(const at::TensorBase& on, const void* a, const void* b, int64_t lda, int64_t ldb, int64_t M,
                        int64_t N, int64_t K) {
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, on.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, on.get_device()));
  if (major != 9 || minor != 0) return "the device is not compute capability 9.0";
  // Smaller products leave most of a 128 x 256 tile (or the one 64-deep K step) as padding
  // and take a few microseconds either way; the mma.sync kernel needs no tensor maps.
  if (M < kBM || N < kBM || K < kBK) return "too small (needs M, N >= 128 and K >= 64)";
  constexpr int64_t kMax = INT32_MAX - 1024;  // TMA coordinates and the kernel's tile indices are 32-bit
  if (M > kMax || N > kMax || K > kMax || ((M + kBM - 1) / kBM) * ((N + kBN - 1) / kBN) > kMax)
    return "a dimension exceeds the kernel's 32-bit coordinates";
  if (!tm_aligned(16, {a, b})) return "an operand is not 16-byte aligned";
  if (lda % 8 != 0 || ldb % 8 != 0) return "an operand's row stride is not a multiple of 16 bytes";
  return nullptr;
}

}  // namespace

bool gemm_sm90(const at::TensorBase& on, at::ScalarType dtype, const void* a, const void* b, const void* bias, void* c,
               int64_t lda, int64_t ldb, int64_t ldc, int64_t M, int64_t N, int64_t K, bool akc, bool bkc) {
  const Mode mode = sm90_mode();
  if (mode == Mode::kOff) return false;
  const char* why = unsupported(on, a, b, lda, ldb, M, N, K);
  if (why == nullptr) {
    const Args g{c, bias, ldc, int(M), int(N), int(K), tm_aligned(4, {c}) && ldc % 2 == 0};
    const bool half = dtype == at::kHalf;
    if (akc && bkc) why = half ? launch<__half, true, true>(on, dtype, a, b, g, lda, ldb)
                               : launch<__nv_bfloat16, true, true>(on, dtype, a, b, g, lda, ldb);
    else if (akc) why = half ? launch<__half, true, false>(on, dtype, a, b, g, lda, ldb)
                             : launch<__nv_bfloat16, true, false>(on, dtype, a, b, g, lda, ldb);
    else if (!bkc) why = half ? launch<__half, false, false>(on, dtype, a, b, g, lda, ldb)
                              : launch<__nv_bfloat16, false, false>(on, dtype, a, b, g, lda, ldb);
    else why = "A MN-major with B K-major is not a product of Linear";
  }
  TORCH_CHECK(why == nullptr || mode != Mode::kRequire,
              "torchmodules.linear: TORCHMODULES_SM90_GEMM=require, but the sm_90 GEMM cannot run this product (",
              M, " x ", N, " x ", K, "): ", why);
  return why == nullptr;
}

}  // namespace torchmodules
