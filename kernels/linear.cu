// Linear on CUDA: three products, one tiled GEMM kernel instantiated three ways.
//   y[M,N] = x[M,K] w[N,K]^T + bias     dx[M,K] = dy[M,N] w[N,K]     dw[N,K] = dy[M,N]^T x[M,K]
// The kernel computes C[m,n] = sum_k A(m,k) B(k,n) (+ bias[n]); A and B are each a pointer
// and a leading dimension, stored k-contiguous or not (a compile-time flag per operand).
// float, double: shared-memory tiles, FFMA / DFMA register micro-tiles.
// float16, bfloat16: tensor cores (ldmatrix + mma.sync m16n8k16), float accumulators,
// bias added in float, one rounding at the end; on Hopper (compute capability 9.0) large
// enough products with TMA-friendly operands go to gemm_sm90.cu instead (wgmma + TMA).
// float with torch.backends.cuda.matmul.allow_tf32 (sm_80+): the same tensor-core tile in TF32
// (operands rounded by cvt.rna.tf32.f32, mma.sync m16n8k8, float accumulators), as cuBLAS does.
// Tiles pass global -> registers -> shared, double-buffered: the next K tile's loads are in
// flight while the current one is multiplied. Every K step is summed in the same order on
// every run (no split-K, no atomics): deterministic.
// Linear + ReLU (linear_relu_forward): the same kernel, whose epilogue also applies the ReLU to
// each output as it is stored (on the rounded value) and ORs its bit into ReLU's mask (zeroed
// first) with atomicOr: threads share mask words, and OR commutes, so the mask is the same
// whatever the order. On the Hopper path (gemm_sm90.cu, no such epilogue) the GEMM runs, then
// our ReLU kernel in place on y.
#include "gemm_sm90.cuh"
#include "launch.cuh"

#include <ATen/Context.h>

#include <climits>
#include <type_traits>

namespace torchmodules {
namespace {

// ---- the problem ---------------------------------------------------------------------------

// C[m, n] = sum_k A(m, k) B(k, n) (+ bias[n]), m < M, n < N, k < K, C[m, n] at c[m*ldc + n].
// A(m, k) = a[m*lda + k] if A is k-contiguous (AKC), else a[k*lda + m];
// B(k, n) = b[n*ldb + k] if B is k-contiguous (BKC), else b[k*ldb + n].
template <typename T>
struct Gemm {
  const T* a;
  const T* b;
  const T* bias;  // [N] or nullptr
  T* c;
  int64_t lda, ldb, ldc, M, N, K;
  bool cvec;  // c 16-byte aligned and ldc a multiple of 16 bytes: vector stores allowed
  uint32_t* mask = nullptr;  // Linear + ReLU: C = relu(C), bit m*N + n of the (zeroed) mask = !(C[m, n] <= 0)
};

// ---- small device helpers ----------------------------------------------------------------

template <typename T> __device__ __forceinline__ T zero();
template <> __device__ __forceinline__ float zero<float>() { return 0.f; }
template <> __device__ __forceinline__ double zero<double>() { return 0.0; }
template <> __device__ __forceinline__ __half zero<__half>() { return __ushort_as_half(0); }
template <> __device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() { return __ushort_as_bfloat16(0); }
template <> __device__ __forceinline__ uint4 zero<uint4>() { return make_uint4(0, 0, 0, 0); }

// Element e of a 16-byte vector (float or double; e a compile-time constant after unrolling).
template <typename T> __device__ __forceinline__ T vec_elem(const uint4& u, int e);
template <> __device__ __forceinline__ float vec_elem<float>(const uint4& u, int e) {
  return __uint_as_float(e == 0 ? u.x : e == 1 ? u.y : e == 2 ? u.z : u.w);
}
template <> __device__ __forceinline__ double vec_elem<double>(const uint4& u, int e) {
  return e == 0 ? __hiloint2double(int(u.y), int(u.x)) : __hiloint2double(int(u.w), int(u.z));
}

// 16 bytes of T packed into a uint4 (element 0 in the low bits of .x).
__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint4 pack16(const float* v) {
  return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
}
__device__ __forceinline__ uint4 pack16(const double* v) {
  return make_uint4(unsigned(__double2loint(v[0])), unsigned(__double2hiint(v[0])),
                    unsigned(__double2loint(v[1])), unsigned(__double2hiint(v[1])));
}
template <typename H>  // __half, __nv_bfloat16
__device__ __forceinline__ uint4 pack16(const H* v) {
  return make_uint4(bits16(v[0]) | bits16(v[1]) << 16, bits16(v[2]) | bits16(v[3]) << 16,
                    bits16(v[4]) | bits16(v[5]) << 16, bits16(v[6]) | bits16(v[7]) << 16);
}

// 16-byte shared load / global store of 4 floats or 2 doubles.
__device__ __forceinline__ void load16(const float* p, float* o) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void load16(const double* p, double* o) {
  const double2 v = *reinterpret_cast<const double2*>(p);
  o[0] = v.x, o[1] = v.y;
}
__device__ __forceinline__ void store16(float* p, const float* v) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store16(double* p, const double* v) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
}

// Two adjacent outputs p[0], p[1] in one store (p 2-element aligned).
__device__ __forceinline__ void store_pair(float* p, float v0, float v1) {
  *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
template <typename H>  // __half, __nv_bfloat16
__device__ __forceinline__ void store_pair(H* p, H v0, H v1) {
  *reinterpret_cast<uint32_t*>(p) = bits16(v0) | bits16(v1) << 16;
}

// Fused ReLU: v = v < 0 ? 0 : v (-0.0 and NaN kept, as relu.cu), returns the bit !(v <= 0).
template <typename T>
__device__ __forceinline__ uint32_t relu_bit(T& v) {
  const auto f = to_float(v);
  if (f < decltype(f)(0)) v = zero<T>();
  return uint32_t(!(f <= decltype(f)(0)));
}

// ORs bits (bit e: the element at flat index f + e, e < 32) into the mask; they may straddle two words.
__device__ __forceinline__ void or_mask(uint32_t* mask, int64_t f, uint32_t bits) {
  if (bits == 0) return;
  const int s = int(f % 32);
  atomicOr(mask + f / 32, bits << s);
  if (s != 0 && (bits >> (32 - s)) != 0) atomicOr(mask + f / 32 + 1, bits >> (32 - s));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices from shared memory, one row address per lane (lane/8 = matrix);
// TRANS: each matrix transposed on the way (lane gets column elements instead of row ones).
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)) : "memory");
#else
  __trap();  // the host refuses half types below sm_80
#endif
}

// v rounded to TF32 (10 mantissa bits, to nearest, ties away), as a .tf32 mma operand.
__device__ __forceinline__ uint32_t to_tf32(float v) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
#else
  __trap();  // the host uses TF32 only on sm_80+
#endif
  return r;
}

// d[16x8] += a[16xMK] b[MKx8], float accumulators: MK = 16 for half or bfloat16 inputs
// (m16n8k16), MK = 8 for float ones as TF32 (m16n8k8, a and b already rounded by to_tf32).
template <typename T>
__device__ __forceinline__ void mma(float* d, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, float>)
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else if constexpr (std::is_same_v<T, __half>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// ---- operand tiles -------------------------------------------------------------------------

// A BI x BK tile of an operand (BI along m or n) in shared memory: [BI][BK + pad] when
// k-contiguous (SKC), else [BK][BI + pad]. The 16-byte pad keeps rows 16-byte aligned and
// shifts consecutive rows by 4 banks.
template <typename T, int BI, int BK, bool SKC>
struct STile {
  static constexpr int kLd = (SKC ? BK : BI) + 16 / int(sizeof(T));
  static constexpr int kElems = (SKC ? BI : BK) * kLd;
};

// Stages the BI x BK tile at (i0, k0) of an operand: global -> registers (load), registers
// -> shared (store); zeros outside [0, ni) x [0, nk). Global element (i, k) sits at
// p[i*ld + k] when KC, else p[k*ld + i]. Each thread moves runs of 16 bytes (V elements)
// along the contiguous dim, held packed in a uint4. VEC: a run is one 16-byte load; needs p
// 16-byte aligned and ld and the contiguous extent (nk if KC, else ni) multiples of V, so a
// run is wholly in or wholly out (host checks). Else V scalar loads, each bounds-checked.
// The shared copy keeps the global layout when SKC == KC (one 16-byte store per run), else
// is transposed element by element.
template <typename T, int BI, int BK, int NT, bool KC, bool SKC, bool VEC>
struct Loader {
  static constexpr int V = 16 / int(sizeof(T));
  static constexpr int R = KC ? BI : BK;  // rows of the tile in global memory
  static constexpr int C = KC ? BK : BI;  // their contiguous length
  static constexpr int kPerRow = C / V;
  static constexpr int kLoads = R * kPerRow / NT;
  static_assert(C % V == 0 && R * kPerRow % NT == 0, "tile does not split evenly over the threads");
  using S = STile<T, BI, BK, SKC>;

  const T* p;
  int64_t ld, i0, ni, nk;
  uint4 reg[kLoads];

  __device__ __forceinline__ Loader(const T* p_, int64_t ld_, int64_t i0_, int64_t ni_, int64_t nk_)
      : p(p_), ld(ld_), i0(i0_), ni(ni_), nk(nk_) {}

  __device__ __forceinline__ void load(int64_t k0) {
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int v = int(threadIdx.x) + j * NT;
      const int r = v / kPerRow, c = v % kPerRow * V;
      const int64_t row = (KC ? i0 : k0) + r, col = (KC ? k0 : i0) + c;
      const int64_t nrow = KC ? ni : nk, ncol = KC ? nk : ni;
      reg[j] = zero<uint4>();
      if (row < nrow) {
        const T* src = p + row * ld + col;
        if constexpr (VEC) {
          if (col < ncol) reg[j] = *reinterpret_cast<const uint4*>(src);
        } else {
          T e[V];
#pragma unroll
          for (int x = 0; x < V; ++x) e[x] = col + x < ncol ? src[x] : zero<T>();
          reg[j] = pack16(e);
        }
      }
    }
  }

  __device__ __forceinline__ void store(T* s) const {
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int v = int(threadIdx.x) + j * NT;
      const int r = v / kPerRow, c = v % kPerRow * V;
      if constexpr (KC == SKC) {
        *reinterpret_cast<uint4*>(s + r * S::kLd + c) = reg[j];
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) s[(c + e) * S::kLd + r] = vec_elem<T>(reg[j], e);
      }
    }
  }
};

// ---- the two ways to multiply a tile -------------------------------------------------------

// float / double: a BM x BN tile, NT threads, each a TM x TN micro-tile made of G x G
// blocks (G = 16 bytes of T) spread BM*G/TM rows and BN*G/TN columns apart, so the 16-byte
// shared reads of a warp are broadcasts or consecutive. Shared tiles are [BK][BI + pad].
//   acc[i][j] = fma(A(m_i, k), B(k, n_j), acc[i][j]) for k = 0, 1, ... in order.
template <typename T_, int BM_, int BN_, int BK_, int TM, int TN>
struct FmaTile {
  using T = T_;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, NT = (BM / TM) * (BN / TN);
  static constexpr bool kKeepLayout = false;  // shared tiles always i-contiguous
  static constexpr int G = 16 / int(sizeof(T));
  static_assert(TM % G == 0 && TN % G == 0, "micro-tile must be whole vectors");
  using SA = STile<T, BM, BK, false>;
  using SB = STile<T, BN, BK, false>;

  T acc[TM][TN];

  __device__ __forceinline__ FmaTile() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  }
  // Tile row of micro-row i, tile column of micro-column j.
  __device__ __forceinline__ static int row(int i) {
    return i / G * (BM / TM * G) + int(threadIdx.x) / (BN / TN) * G + i % G;
  }
  __device__ __forceinline__ static int col(int j) {
    return j / G * (BN / TN * G) + int(threadIdx.x) % (BN / TN) * G + j % G;
  }

  template <bool SKA, bool SKB>
  __device__ __forceinline__ void compute(const T* sa, const T* sb) {
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; i += G) load16(sa + k * SA::kLd + row(i), a + i);
#pragma unroll
      for (int j = 0; j < TN; j += G) load16(sb + k * SB::kLd + col(j), b + j);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  // C[m, n] = acc + bias[n] (relu'd, bits in g.mask, if g.mask), bounds-checked; 16-byte stores
  // where the row allows.
  __device__ __forceinline__ void epilogue(const Gemm<T>& g, int64_t m0, int64_t n0) const {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t m = m0 + row(i);
      if (m >= g.M) continue;
      T* crow = g.c + m * g.ldc;
#pragma unroll
      for (int j = 0; j < TN; j += G) {
        const int64_t n = n0 + col(j);
        T v[G];
#pragma unroll
        for (int e = 0; e < G; ++e)
          v[e] = acc[i][j + e] + (g.bias != nullptr && n + e < g.N ? g.bias[n + e] : T(0));
        if (g.mask != nullptr) {
          uint32_t bits = 0;
#pragma unroll
          for (int e = 0; e < G; ++e)
            if (n + e < g.N) bits |= relu_bit(v[e]) << e;
          or_mask(g.mask, m * g.N + n, bits);
        }
        if (g.cvec && n + G <= g.N) {
          store16(crow + n, v);
        } else {
#pragma unroll
          for (int e = 0; e < G; ++e)
            if (n + e < g.N) crow[n + e] = v[e];
        }
      }
    }
  }
};

// Tensor cores: a 128 x 128 tile, 8 warps as 2 (m) x 4 (n), each warp 64 x 32 =
// 4 x 4 mma.sync 16 x 8 x MK with float accumulators; K tile = 2 mma k-steps (32 bytes of
// T each: MK = 16 for float16 / bfloat16, 8 for float as TF32).
// Shared tiles keep the global layout. float16 / bfloat16: ldmatrix reads k-contiguous
// tiles as they are and i-contiguous ones with .trans, which gives the same fragments.
// float: each lane reads its fragment elements one by one (either layout) and rounds them
// to TF32 (ldmatrix .trans is for 16-bit elements only).
//   acc(m, n) += sum over each MK step of A(m, k) B(k, n), in k order.
template <typename T_>
struct MmaTile {
  using T = T_;
  static constexpr bool kTf32 = std::is_same_v<T, float>;
  static constexpr int MK = 32 / int(sizeof(T));
  static constexpr int BM = 128, BN = 128, BK = 2 * MK, NT = 256;
  static constexpr int WM = 64, WN = 32, MT = WM / 16, NT8 = WN / 8;
  static constexpr bool kKeepLayout = true;

  float acc[MT][NT8][4];

  __device__ __forceinline__ MmaTile() {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  }

  // Element (i, k) of a shared tile: [BI][..] if k-contiguous (SKC), else [BK][..].
  template <bool SKC, int LD>
  __device__ __forceinline__ static const T* elem(const T* s, int i, int k) {
    return SKC ? s + i * LD + k : s + k * LD + i;
  }
  // Row address, for this lane, of the 8x8 block at (i, k) of a shared tile (ldmatrix):
  // lane row r of that block is tile row i + r ([BI][..], k-contiguous) or k + r ([BK][..]).
  template <bool SKC, int LD>
  __device__ __forceinline__ static const T* block_row(const T* s, int i, int k, int r) {
    return SKC ? elem<SKC, LD>(s, i + r, k) : elem<SKC, LD>(s, i, k + r);
  }

  template <bool SKA, bool SKB>
  __device__ __forceinline__ void compute(const T* sa, const T* sb) {
    constexpr int LDA = STile<T, BM, BK, SKA>::kLd, LDB = STile<T, BN, BK, SKB>::kLd;
    const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
    const int wm = warp / 4 * WM, wn = warp % 4 * WN;
#pragma unroll
    for (int ks = 0; ks < BK; ks += MK) {
      uint32_t af[MT][4], bf[NT8][2];
      if constexpr (kTf32) {
        // m16n8k8 fragments: lane (g, t) = (lane / 4, lane % 4) holds A (g, t), (g + 8, t),
        // (g, t + 4), (g + 8, t + 4) of its 16 x 8 piece and B (k t, n g), (k t + 4, n g).
        const int g = lane / 4, t = lane % 4;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            af[mt][e] = to_tf32(*elem<SKA, LDA>(sa, wm + mt * 16 + g + (e & 1) * 8, ks + t + (e >> 1) * 4));
#pragma unroll
        for (int nt = 0; nt < NT8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) bf[nt][e] = to_tf32(*elem<SKB, LDB>(sb, wn + nt * 8 + g, ks + t + e * 4));
      } else {
        const int q = lane / 8, r = lane % 8;  // this lane addresses row r of matrix q
        // A fragment: matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15).
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          ldmatrix_x4<!SKA>(af[mt], block_row<SKA, LDA>(sa, wm + mt * 16 + (q & 1) * 8, ks + (q >> 1) * 8, r));
        // B fragments of two n8 tiles: matrices (n 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15).
#pragma unroll
        for (int np = 0; np < NT8; np += 2) {
          uint32_t t[4];
          ldmatrix_x4<!SKB>(t, block_row<SKB, LDB>(sb, wn + np * 8 + (q >> 1) * 8, ks + (q & 1) * 8, r));
          bf[np][0] = t[0], bf[np][1] = t[1], bf[np + 1][0] = t[2], bf[np + 1][1] = t[3];
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT8; ++nt) mma<T>(acc[mt][nt], af[mt], bf[nt]);
    }
  }

  // C[m, n] = round(acc + float(bias[n])) (float: no rounding), then relu'd with its bit in g.mask
  // if g.mask (decided on the rounded value); lane holds (g, 2t..2t+1)
  // and (g + 8, 2t..2t+1) of each 16 x 8 piece; the pair is one store where the row allows.
  __device__ __forceinline__ void epilogue(const Gemm<T>& g, int64_t m0, int64_t n0) const {
    const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
    const int64_t mw = m0 + warp / 4 * WM + lane / 4, nw = n0 + warp % 4 * WN + lane % 4 * 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = mw + mt * 16 + h * 8;
        if (m >= g.M) continue;
        T* crow = g.c + m * g.ldc;
#pragma unroll
        for (int nt = 0; nt < NT8; ++nt) {
          const int64_t n = nw + nt * 8;
          float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
          if (g.bias != nullptr) {
            if (n < g.N) v0 += to_float(g.bias[n]);
            if (n + 1 < g.N) v1 += to_float(g.bias[n + 1]);
          }
          T r0 = from_float<T>(v0), r1 = from_float<T>(v1);
          if (g.mask != nullptr)
            or_mask(g.mask, m * g.N + n,
                    (n < g.N ? relu_bit(r0) : 0u) | (n + 1 < g.N ? relu_bit(r1) << 1 : 0u));
          if (g.cvec && n + 1 < g.N) {
            store_pair(crow + n, r0, r1);
          } else {
            if (n < g.N) crow[n] = r0;
            if (n + 1 < g.N) crow[n + 1] = r1;
          }
        }
      }
  }
};

template <typename T> struct TileFor;
template <> struct TileFor<float> { using type = FmaTile<float, 128, 128, 8, 8, 8>; };
template <> struct TileFor<double> { using type = FmaTile<double, 64, 64, 8, 4, 4>; };
template <> struct TileFor<__half> { using type = MmaTile<__half>; };
template <> struct TileFor<__nv_bfloat16> { using type = MmaTile<__nv_bfloat16>; };

// ---- the kernel ----------------------------------------------------------------------------

// C = A B (+ bias), one BM x BN tile of C per block: for each K tile (in order) stage A and
// B in shared memory and accumulate Tile::compute; then Tile::epilogue writes C. Blocks run
// over the tiles in groups of 8 tile-rows so that neighbours share B tiles in L2.
template <class Tile, bool AKC, bool BKC, bool AVEC, bool BVEC>
__global__ void __launch_bounds__(Tile::NT, 2) gemm_kernel(const Gemm<typename Tile::T> g) {
  using T = typename Tile::T;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, NT = Tile::NT;
  constexpr bool SKA = Tile::kKeepLayout && AKC, SKB = Tile::kKeepLayout && BKC;
  using LA = Loader<T, BM, BK, NT, AKC, SKA, AVEC>;
  using LB = Loader<T, BN, BK, NT, BKC, SKB, BVEC>;
  constexpr int EA = LA::S::kElems, EB = LB::S::kElems;  // one buffer of each
  __shared__ __align__(16) unsigned char smem[2 * (EA + EB) * sizeof(T)];
  T* const sa = reinterpret_cast<T*>(smem);  // sa[buf * EA], then sb[buf * EB]
  T* const sb = sa + 2 * EA;

  const int64_t tiles_m = (g.M + BM - 1) / BM, tiles_n = (g.N + BN - 1) / BN;
  constexpr int64_t kGroup = 8;
  const int64_t pid = blockIdx.x, per_group = kGroup * tiles_n;
  const int64_t first = pid / per_group * kGroup, rows = min(tiles_m - first, kGroup);
  const int64_t m0 = (first + pid % per_group % rows) * BM, n0 = (pid % per_group / rows) * BN;

  LA la(g.a, g.lda, m0, g.M, g.K);
  LB lb(g.b, g.ldb, n0, g.N, g.K);
  Tile tile;
  const int64_t ktiles = (g.K + BK - 1) / BK;
  if (ktiles > 0) {
    la.load(0);
    lb.load(0);
    la.store(sa);
    lb.store(sb);
  }
  __syncthreads();
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    const int buf = int(kt & 1);
    const bool next = kt + 1 < ktiles;
    if (next) {  // in flight during the multiply
      la.load((kt + 1) * BK);
      lb.load((kt + 1) * BK);
    }
    tile.template compute<SKA, SKB>(sa + buf * EA, sb + buf * EB);
    if (next) {  // the other buffer: everyone finished reading it before the last barrier
      la.store(sa + (buf ^ 1) * EA);
      lb.store(sb + (buf ^ 1) * EB);
    }
    __syncthreads();
  }
  tile.epilogue(g, m0, n0);
}

// Compute capability (major) of the device holding on.
int cc_major(const at::TensorBase& on) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, on.get_device()));
  return major;
}

// Launches gemm_kernel<Tile> for C = A B (+ bias) with the vector paths the pointers allow.
template <class Tile, bool AKC, bool BKC>
void gemm_with(const at::TensorBase& on, Gemm<typename Tile::T> g) {
  using T = typename Tile::T;
  if (g.M == 0 || g.N == 0) return;
  const int64_t tiles = ((g.M + Tile::BM - 1) / Tile::BM) * ((g.N + Tile::BN - 1) / Tile::BN);
  TORCH_CHECK(tiles <= INT_MAX, "torchmodules.linear: output too large (", g.M, " x ", g.N, ")");
  if constexpr (Tile::kKeepLayout)  // mma.sync / ldmatrix need sm_80
    TORCH_CHECK(cc_major(on) >= 8, "torchmodules.linear: float16 and bfloat16 on CUDA need compute capability 8.0+");
  constexpr int64_t V = 16 / int64_t(sizeof(T));
  const auto vec_ok = [&](const T* p, int64_t ld, int64_t extent) {
    return tm_aligned(16, {p}) && ld % V == 0 && extent % V == 0;
  };
  const bool av = vec_ok(g.a, g.lda, AKC ? g.K : g.M), bv = vec_ok(g.b, g.ldb, BKC ? g.K : g.N);
  g.cvec = tm_aligned(16, {g.c}) && g.ldc % V == 0;
  const dim3 grid(static_cast<unsigned>(tiles)), block(Tile::NT);
  if (av && bv) tm_launch(on, grid, block, 0, gemm_kernel<Tile, AKC, BKC, true, true>, g);
  else if (av) tm_launch(on, grid, block, 0, gemm_kernel<Tile, AKC, BKC, true, false>, g);
  else if (bv) tm_launch(on, grid, block, 0, gemm_kernel<Tile, AKC, BKC, false, true>, g);
  else tm_launch(on, grid, block, 0, gemm_kernel<Tile, AKC, BKC, false, false>, g);
}

// C = A B (+ bias) with T's tile; float honours torch.backends.cuda.matmul.allow_tf32 as
// cuBLAS does: TF32 tensor cores when it is set and the device has them (sm_80+), else
// (the default) full-precision FFMA. float16 / bfloat16 go to the Hopper kernel
// (gemm_sm90.cu: wgmma + TMA) where it can run them, else to MmaTile.
// Returns false when the Hopper kernel ran the product: it has no ReLU epilogue, so g.mask is
// then left to the caller.
template <typename T, bool AKC, bool BKC>
bool gemm(const at::TensorBase& on, const Gemm<T>& g) {
  if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) {
    if (gemm_sm90(on, std::is_same_v<T, __half> ? at::kHalf : at::kBFloat16, g.a, g.b, g.bias, g.c, g.lda, g.ldb,
                  g.ldc, g.M, g.N, g.K, AKC, BKC))
      return g.mask == nullptr;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (at::globalContext().allowTF32CuBLAS() && cc_major(on) >= 8) {
      gemm_with<MmaTile<float>, AKC, BKC>(on, g);
      return true;
    }
  }
  gemm_with<typename TileFor<T>::type, AKC, BKC>(on, g);
  return true;
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------

// y[M,N] = x[M,K] w[N,K]^T + bias: A = x (k-contiguous, lda K), B(k, n) = w[n, k] (k-contiguous, ldb K).
void linear_forward_cuda(at::TensorBase& y, const at::TensorBase& x, const at::TensorBase& w, const at::TensorBase& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TM_DISPATCH_FLOATING(x.scalar_type(), "linear_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const T* b = bias.defined() ? dptr<scalar_t>(bias) : nullptr;
    gemm<T, true, true>(x, {dptr<scalar_t>(x), dptr<scalar_t>(w), b, dptr<scalar_t>(y), K, K, N, M, N, K, false});
  });
}

// y[M,N] = relu(x[M,K] w[N,K]^T + bias) and ReLU's mask of y: the forward's GEMM with the ReLU
// epilogue (the mask zeroed first: the epilogue ORs bits in); on the Hopper path, the GEMM,
// then relu_forward_cuda in place (it reads each element before writing it).
void linear_relu_forward_cuda(at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& x, const at::TensorBase& w,
                              const at::TensorBase& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(tm_aligned(4, {mask.data_ptr()}), "torchmodules.linear_relu: mask must be 4-byte aligned");
  uint32_t* pm = reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>());
  {
    const c10::cuda::CUDAGuard guard(x.device());
    C10_CUDA_CHECK(cudaMemsetAsync(pm, 0, mask.numel(), c10::cuda::getCurrentCUDAStream()));
  }
  bool fused = true;
  TM_DISPATCH_FLOATING(x.scalar_type(), "linear_relu_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    const T* b = bias.defined() ? dptr<scalar_t>(bias) : nullptr;
    fused = gemm<T, true, true>(x, {dptr<scalar_t>(x), dptr<scalar_t>(w), b, dptr<scalar_t>(y), K, K, N, M, N, K, false,
                                    pm});
  });
  if (!fused) relu_forward_cuda(y, mask, y);
}

// dx[M,K] = dy[M,N] w[N,K]: GEMM M x K over N; A = dy (k-contiguous, lda N), B = w (n-contiguous, ldb K).
void linear_backward_input_cuda(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& w) {
  const int64_t M = dy.size(0), N = dy.size(1), K = w.size(1);
  TM_DISPATCH_FLOATING(dy.scalar_type(), "linear_backward_input_cuda", [&] {
    using T = cuda_t<scalar_t>;
    gemm<T, true, false>(dy, {dptr<scalar_t>(dy), dptr<scalar_t>(w), nullptr, dptr<scalar_t>(dx), N, K, K, M, K, N, false});
  });
}

// dw[N,K] = dy[M,N]^T x[M,K]: GEMM N x K over M; A(n, m) = dy[m, n] (lda N) and
// B(m, k) = x[m, k] (ldb K), both contiguous along the output's dims, not along the sum.
void linear_backward_weight_cuda(at::TensorBase& dw, const at::TensorBase& dy, const at::TensorBase& x) {
  const int64_t M = dy.size(0), N = dy.size(1), K = x.size(1);
  TM_DISPATCH_FLOATING(dy.scalar_type(), "linear_backward_weight_cuda", [&] {
    using T = cuda_t<scalar_t>;
    gemm<T, false, false>(dy, {dptr<scalar_t>(dy), dptr<scalar_t>(x), nullptr, dptr<scalar_t>(dw), N, K, K, N, K, M, false});
  });
}


}  // namespace torchmodules
