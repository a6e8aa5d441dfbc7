// The generic row kernels under LogSoftmax (log_softmax.cu) and amax (amax.cu), over the
// middle axis of Rows [outer, reduce, inner]. An op is a policy (what a row reduces to,
// what it writes) run by four generic kernels:
//   inner == 1, short rows:  rows_warp   W lanes (1..32) per row, row held in registers;
//   inner == 1, mid rows:    rows_block  a block per row, row held in registers;
//   inner == 1, long rows:   rows_stream a block per row, pass 1 reduces, pass 2 re-reads (or,
//                            rows of up to kSmemRowBytes in 16-byte vectors for policies that
//                            opt in with kSmemRow, takes the row from shared memory);
//   inner > 1:               cols        (bx x by) blocks, bx columns across inner, by
//                                        threads splitting the reduce axis of each column.
// Rows are read in 16-byte vectors when the row length and every pointer allow.
// Reductions run in a fixed order (no atomics): the same inputs give the same bits.
#pragma once

#include "launch.cuh"

#include <ATen/cuda/CUDAContextLight.h>

#include <atomic>
#include <cstring>
#include <type_traits>

namespace torchmodules {
namespace {

// exp and log in the accumulation type (float for the half types, double for double).
__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
__device__ __forceinline__ float dlog(float v) { return logf(v); }
__device__ __forceinline__ double dlog(double v) { return log(v); }

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarpBlock = 128;   // threads per block of rows_warp
constexpr int kMaxBlock = 1024;   // threads per block of rows_block / rows_stream, at most
constexpr int kColThreads = 256;  // threads per block of cols
constexpr int kRowOutBlock = 256; // threads per block of rows_stream for one-output-per-row policies
constexpr int kSmemBlock = 256;   // threads per block of rows_stream keeping the row in shared memory
constexpr int64_t kSmemRowBytes = 72 * 1024;  // such a row, at most: three blocks per SM (228 KB)

// Accumulation type of a device type: float for float/__half/__nv_bfloat16, double for double.
template <class T> using dacc = decltype(to_float(T()));

template <class A> __device__ __forceinline__ A ninf() { return A(-INFINITY); }

// One row (stride 1) or column (stride inner): element e at base + e * stride, e < n.
// VEC (rows only): n a multiple of the vector width and the pointers 16-byte aligned, so
// every full chunk of the row is an aligned 16-byte vector.
template <bool VEC>
struct Seg {
  static constexpr bool kVec = VEC;
  int64_t base, n, stride;
};

// 16 bytes <-> W elements (element 0 in the low bits of .x).
__device__ __forceinline__ void unpack16(const uint4& u, float (&o)[4]) {
  o[0] = __uint_as_float(u.x), o[1] = __uint_as_float(u.y), o[2] = __uint_as_float(u.z), o[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void unpack16(const uint4& u, double (&o)[2]) {
  o[0] = __hiloint2double(int(u.y), int(u.x)), o[1] = __hiloint2double(int(u.w), int(u.z));
}
__device__ __forceinline__ __half half_bits(unsigned short b, __half*) { return __ushort_as_half(b); }
__device__ __forceinline__ __nv_bfloat16 half_bits(unsigned short b, __nv_bfloat16*) { return __ushort_as_bfloat16(b); }
template <class H>  // __half, __nv_bfloat16
__device__ __forceinline__ void unpack16(const uint4& u, H (&o)[8]) {
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = half_bits((unsigned short)(w[j >> 1] >> (16 * (j & 1))), (H*)nullptr);
}
__device__ __forceinline__ uint4 pack16(const float (&v)[4]) {
  return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
}
__device__ __forceinline__ uint4 pack16(const double (&v)[2]) {
  return make_uint4(unsigned(__double2loint(v[0])), unsigned(__double2hiint(v[0])), unsigned(__double2loint(v[1])),
                    unsigned(__double2hiint(v[1])));
}
__device__ __forceinline__ unsigned bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <class H>
__device__ __forceinline__ uint4 pack16(const H (&v)[8]) {
  return make_uint4(bits_of(v[0]) | bits_of(v[1]) << 16, bits_of(v[2]) | bits_of(v[3]) << 16,
                    bits_of(v[4]) | bits_of(v[5]) << 16, bits_of(v[6]) | bits_of(v[7]) << 16);
}

// A plain 16-byte global store, kept whole (the compiler may split a uint4 assignment).
__device__ __forceinline__ void store16(void* q, const uint4& u) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
               :: "l"(__cvta_generic_to_global(q)), "r"(u.x), "r"(u.y), "r"(u.z), "r"(u.w)
               : "memory");
}

// Loads elements c*W .. c*W+W-1 of s as acc values, `pad` past the end; returns how many
// are real. W > 1: a row chunk (stride 1), one 16-byte vector when kVec (then a chunk is
// all in or all out); W == 1: one element at stride s.stride.
template <int W, class T, class A, class Sg>
__device__ __forceinline__ int load_chunk(A (&out)[W], const T* __restrict__ p, const Sg& s, int64_t c, A pad) {
  const int64_t e = c * W, left = s.n - e;
  if constexpr (W == 1) {
    out[0] = left > 0 ? to_float(p[s.base + e * s.stride]) : pad;
    return left > 0;
  } else if constexpr (Sg::kVec) {
    static_assert(W * sizeof(T) == 16, "row chunks are 16 bytes");
    if (left <= 0) {
#pragma unroll
      for (int j = 0; j < W; ++j) out[j] = pad;
      return 0;
    }
    T t[W];
    unpack16(__ldg(reinterpret_cast<const uint4*>(p + s.base + e)), t);  // (__ldg keeps it whole)
#pragma unroll
    for (int j = 0; j < W; ++j) out[j] = to_float(t[j]);
    return W;
  } else {
    const int nv = left <= 0 ? 0 : left >= W ? W : int(left);
    const T* q = p + s.base + e;
#pragma unroll
    for (int j = 0; j < W; ++j) out[j] = j < nv ? to_float(q[j]) : pad;
    return nv;
  }
}

// Stores the real elements of chunk c of s (layout as load_chunk).
template <int W, class T, class A, class Sg>
__device__ __forceinline__ void store_chunk(T* __restrict__ p, const Sg& s, int64_t c, const A (&v)[W]) {
  const int64_t e = c * W, left = s.n - e;
  if constexpr (W == 1) {
    if (left > 0) p[s.base + e * s.stride] = from_acc<T>(v[0]);
  } else {
    if (left <= 0) return;
    T t[W];
#pragma unroll
    for (int j = 0; j < W; ++j) t[j] = from_acc<T>(v[j]);
    T* q = p + s.base + e;
    if constexpr (Sg::kVec) {
      store16(q, pack16(t));
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j)
        if (j < left) q[j] = t[j];
    }
  }
}

// ---- reductions of a policy's State (P::combine is symmetric, so all lanes agree) ---------

template <class S>
__device__ __forceinline__ S shfl_xor(const S& v, int lane_mask) {
  static_assert(sizeof(S) % 4 == 0, "state is whole 32-bit words");
  unsigned w[sizeof(S) / 4];
  memcpy(w, &v, sizeof(S));
#pragma unroll
  for (unsigned i = 0; i < sizeof(S) / 4; ++i) w[i] = __shfl_xor_sync(kFull, w[i], lane_mask);
  S r;
  memcpy(&r, w, sizeof(S));
  return r;
}

// Over aligned groups of W lanes (W a power of two <= 32); every lane of the warp must call.
template <class P, class S>
__device__ __forceinline__ S warp_allreduce(S v, int W) {
  for (int off = W >> 1; off > 0; off >>= 1) v = P::combine(v, shfl_xor(v, off));
  return v;
}

// Over the block (blockDim.x a multiple of 32, blockDim.y == 1); every thread must call.
template <class P, class S>
__device__ __forceinline__ S block_allreduce(S v, S* red) {
  v = warp_allreduce<P>(v, 32);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  S r = red[0];
  for (int w = 1; w < int(blockDim.x >> 5); ++w) r = P::combine(r, red[w]);
  __syncthreads();  // red is reused by the next call
  return r;
}

// Over threadIdx.y for each threadIdx.x (blockDim.y a power of two); every thread must call.
template <class P, class S>
__device__ __forceinline__ S col_allreduce(S v, S* red) {
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x;
  red[ty * bx + tx] = v;
  __syncthreads();
  for (int h = blockDim.y >> 1; h > 0; h >>= 1) {
    if (ty < h) red[ty * bx + tx] = P::combine(red[ty * bx + tx], red[(ty + h) * bx + tx]);
    __syncthreads();
  }
  const S r = red[tx];
  __syncthreads();
  return r;
}

// ---- the generic kernels -------------------------------------------------------------------
// A policy P has: V (chunk width), State, Cache<W> (what pass 1 read of a chunk of W),
// kWarpK / kBlockK (chunks per thread the register paths may hold; kBlockK 0: none),
// kU (chunks per thread in flight in the re-reading paths), and
//   init(ridx) -> State; load(Cache&, State, Seg, chunk); accumulate(State&, Cache);
//   combine(State, State); finish(State&, ridx); then either (kRowOut) store_row(State, ridx),
//   one output per row, or store(State, Cache, Seg, chunk), one per element.
// ridx is the row's index into [outer, inner].

// inner == 1, reduce <= 32 * K * V: W lanes per row, K chunks of V per lane, one read.
template <class P, int K, bool VEC>
__global__ void __launch_bounds__(kWarpBlock, 4) rows_warp(const P p, int64_t rows, int64_t n, int W) {
  using S = typename P::State;
  using C = typename P::template Cache<P::V>;
  const int lane = threadIdx.x & 31, lw = lane & (W - 1), rpw = 32 / W;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t step = ((int64_t(gridDim.x) * blockDim.x) >> 5) * rpw;
  for (int64_t base = warp * rpw; base < rows; base += step) {  // uniform across the warp
    const int64_t row = base + lane / W;
    const bool ok = row < rows;
    const int64_t ridx = ok ? row : 0;
    const Seg<VEC> seg{ridx * n, ok ? n : 0, 1};
    S st = p.init(ridx);
    C c[K];
#pragma unroll
    for (int k = 0; k < K; ++k) p.load(c[k], st, seg, int64_t(k) * W + lw);
#pragma unroll
    for (int k = 0; k < K; ++k) p.accumulate(st, c[k]);
    st = warp_allreduce<P>(st, W);
    p.finish(st, ridx);
    if (!ok) continue;
    if constexpr (P::kRowOut) {
      if (lw == 0) p.store_row(st, ridx);
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) p.store(st, c[k], seg, int64_t(k) * W + lw);
    }
  }
}

// inner == 1, reduce <= blockDim.x * K * V: a block per row, K chunks per thread, one read.
template <class P, int K, bool VEC>
__global__ void __launch_bounds__(kMaxBlock, 1) rows_block(const P p, int64_t rows, int64_t n) {
  using S = typename P::State;
  using C = typename P::template Cache<P::V>;
  __shared__ S red[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Seg<VEC> seg{row * n, n, 1};
    S st = p.init(row);
    C c[K];
#pragma unroll
    for (int k = 0; k < K; ++k) p.load(c[k], st, seg, int64_t(k) * blockDim.x + threadIdx.x);
#pragma unroll
    for (int k = 0; k < K; ++k) p.accumulate(st, c[k]);
    st = block_allreduce<P>(st, red);
    p.finish(st, row);
    if constexpr (P::kRowOut) {
      if (threadIdx.x == 0) p.store_row(st, row);
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) p.store(st, c[k], seg, int64_t(k) * blockDim.x + threadIdx.x);
    }
  }
}

// A policy's Cache<V> that is one array of V accumulators <-> its V values as T in 16 bytes.
template <class T, class C>
__device__ __forceinline__ uint4 cache_to16(const C& c) {
  constexpr int V = 16 / sizeof(T);
  static_assert(sizeof(C) == V * sizeof(dacc<T>), "kSmemRow: Cache<V> must be one array of V values");
  dacc<T> a[V];
  memcpy(a, &c, sizeof(a));
  T t[V];
#pragma unroll
  for (int j = 0; j < V; ++j) t[j] = from_acc<T>(a[j]);
  return pack16(t);
}
template <class T, class C>
__device__ __forceinline__ void cache_from16(C& c, const uint4& u) {
  constexpr int V = 16 / sizeof(T);
  T t[V];
  unpack16(u, t);
  dacc<T> a[V];
#pragma unroll
  for (int j = 0; j < V; ++j) a[j] = to_float(t[j]);
  memcpy(&c, a, sizeof(a));
}

// inner == 1, any reduce: a block per row; pass 1 reduces, pass 2 re-reads and writes.
// kSmem (16-byte vectors, a row of at most kSmemRowBytes, policies whose Cache<V> is one array):
// pass 1 also keeps each chunk in shared memory (as T: exact, the values came from T) and pass 2
// takes it from there, so each element is read from memory once; a thread reads back only the
// chunks it wrote (no barrier between the passes).
template <class P, bool VEC, int kBlock = kMaxBlock, int kMinBlocks = 1, bool kSmem = false>
__global__ void __launch_bounds__(kBlock, kMinBlocks) rows_stream(const P p, int64_t rows, int64_t n) {
  using S = typename P::State;
  using C = typename P::template Cache<P::V>;
  extern __shared__ uint4 row16[];  // kSmem: the row's n / V chunks
  __shared__ S red[32];
  const int64_t chunks = (n + P::V - 1) / P::V, nt = blockDim.x;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Seg<VEC> seg{row * n, n, 1};
    S st = p.init(row);
    for (int64_t c0 = threadIdx.x; c0 < chunks; c0 += P::kU * nt) {
      C c[P::kU];
#pragma unroll
      for (int u = 0; u < P::kU; ++u) p.load(c[u], st, seg, c0 + u * nt);
      if constexpr (kSmem) {
#pragma unroll
        for (int u = 0; u < P::kU; ++u)
          if (c0 + u * nt < chunks) row16[c0 + u * nt] = cache_to16<typename P::Elem>(c[u]);
      }
#pragma unroll
      for (int u = 0; u < P::kU; ++u) p.accumulate(st, c[u]);
    }
    st = block_allreduce<P>(st, red);
    p.finish(st, row);
    if constexpr (P::kRowOut) {
      if (threadIdx.x == 0) p.store_row(st, row);
    } else if constexpr (kSmem) {
      for (int64_t k = threadIdx.x; k < chunks; k += nt) {
        C c;
        cache_from16<typename P::Elem>(c, row16[k]);
        p.store(st, c, seg, k);
      }
    } else {
      for (int64_t c0 = threadIdx.x; c0 < chunks; c0 += P::kU * nt) {
        C c[P::kU];
#pragma unroll
        for (int u = 0; u < P::kU; ++u) p.load(c[u], st, seg, c0 + u * nt);
#pragma unroll
        for (int u = 0; u < P::kU; ++u) p.store(st, c[u], seg, c0 + u * nt);
      }
    }
  }
}

// P::kSmemRow where P declares it, else false (C++17 detection: torch 2.11 builds as C++17).
template <class P, class = void> struct SmemRow : std::false_type {};
template <class P> struct SmemRow<P, std::void_t<decltype(P::kSmemRow)>> : std::bool_constant<P::kSmemRow> {};
template <class P> constexpr bool smem_row() { return SmemRow<P>::value; }
// Does rows_stream<..., kSmem> take rows of n elements (16-byte vectors: VEC) on on's device? The
// device must give a block kSmemRowBytes of dynamic shared memory beside the static `red` (Ampere
// and Hopper: 99-227 KB; Turing's 64 KB do not, and its rows take the paths below).
template <class P, bool VEC> bool smem_fits(int64_t n, const at::TensorBase& on) {
  if constexpr (smem_row<P>() && VEC)
    return n * int64_t(sizeof(typename P::Elem)) <= kSmemRowBytes &&
           at::cuda::getDeviceProperties(on.get_device())->sharedMemPerBlockOptin >= size_t(kSmemRowBytes) + 4096;
  else return false;
}

// inner > 1: a block per (o, tile of blockDim.x columns i); threadIdx.y splits the reduce
// axis (element r of column (o, i) at (o * n + r) * inner + i); pass 2 re-reads.
template <class P>
__global__ void __launch_bounds__(kColThreads) cols(const P p, int64_t outer, int64_t n, int64_t inner) {
  using S = typename P::State;
  using C = typename P::template Cache<1>;
  __shared__ S red[kColThreads];
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int64_t tiles_i = (inner + bx - 1) / bx, tiles = outer * tiles_i;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
    const int64_t o = t / tiles_i, i = (t % tiles_i) * bx + tx;
    const bool ok = i < inner;
    const int64_t ridx = o * inner + (ok ? i : 0);
    const Seg<false> seg{o * n * inner + (ok ? i : 0), ok ? n : 0, inner};
    S st = p.init(ridx);
    for (int64_t r0 = ty; r0 < seg.n; r0 += P::kU * by) {
      C c[P::kU];
#pragma unroll
      for (int u = 0; u < P::kU; ++u) p.load(c[u], st, seg, r0 + u * by);
#pragma unroll
      for (int u = 0; u < P::kU; ++u) p.accumulate(st, c[u]);
    }
    st = col_allreduce<P>(st, red);
    p.finish(st, ridx);
    if constexpr (P::kRowOut) {
      if (ok && ty == 0) p.store_row(st, ridx);
    } else {
      for (int64_t r0 = ty; r0 < seg.n; r0 += P::kU * by) {
        C c[P::kU];
#pragma unroll
        for (int u = 0; u < P::kU; ++u) p.load(c[u], st, seg, r0 + u * by);
#pragma unroll
        for (int u = 0; u < P::kU; ++u) p.store(st, c[u], seg, r0 + u * by);
      }
    }
  }
}

// ---- host dispatch -------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

template <class P, int K, bool VEC>
void launch_warp(const at::TensorBase& on, const P& p, int64_t rows, int64_t n, int64_t k, int W) {
  if constexpr (K > P::kWarpK) {
    TORCH_INTERNAL_ASSERT(false, "torchmodules: no warp kernel for ", k, " chunks per lane");
  } else if (k == K) {
    const int64_t rows_per_block = kWarpBlock / 32 * (32 / W);
    tm_launch(on, dim3(unsigned(tm_blocks(rows, rows_per_block))), dim3(kWarpBlock), 0, rows_warp<P, K, VEC>, p,
              rows, n, W);
  } else {
    launch_warp<P, K * 2, VEC>(on, p, rows, n, k, W);
  }
}

// inner == 1: the warp, block or stream kernel by row length.
template <class P, bool VEC>
void launch_rows(const at::TensorBase& on, const P& p, int64_t rows, int64_t n) {
  const int64_t chunks = ceil_div(n, P::V);
  const unsigned grid = unsigned(tm_blocks(rows, 1));
  if (chunks <= 32 * P::kWarpK) {
    const int W = int(chunks <= 32 ? next_pow2(chunks) : 32);
    const int64_t k = chunks <= 32 ? 1 : next_pow2(ceil_div(chunks, 32));
    launch_warp<P, 1, VEC>(on, p, rows, n, k, W);
  } else if (smem_fits<P, VEC>(n, on)) {
    if constexpr (smem_row<P>()) {
      const int bytes = int(n * int64_t(sizeof(typename P::Elem)));
      // The limit of dynamic shared memory is the current device's, 48 KB less the static `red` by
      // default: raised once per device to the largest row (a limit set per launch to `bytes`
      // could be lowered by another thread between its set and this launch).
      static std::atomic<uint64_t> raised{0};  // bit d: device d (per kernel instance)
      const c10::cuda::CUDAGuard guard(on.device());
      const uint64_t bit = uint64_t(1) << (on.get_device() & 63);
      if (!(raised.load(std::memory_order_acquire) & bit)) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(rows_stream<P, true, kSmemBlock, 3, true>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemRowBytes)));
        raised.fetch_or(bit, std::memory_order_release);
      }
      tm_launch(on, dim3(grid), dim3(kSmemBlock), size_t(bytes), rows_stream<P, true, kSmemBlock, 3, true>, p, rows,
                n);
    }
  } else if (P::kBlockK > 0 && chunks <= kMaxBlock * P::kBlockK) {
    if constexpr (P::kBlockK > 0) {
      const int threads = int(ceil_div(ceil_div(chunks, P::kBlockK), 32) * 32);
      tm_launch(on, dim3(grid), dim3(threads), 0, rows_block<P, P::kBlockK, VEC>, p, rows, n);
    }
  } else if constexpr (P::kRowOut) {
    // One pass over the row: 256-thread blocks, four resident per SM (same 64 registers a thread),
    // so one block's loads overlap another's reduction. One 1024-thread block per SM left the
    // memory idle during each row's reduction (H100: 22-47% of copy bandwidth at 32768 columns).
    const int threads = int(std::min<int64_t>(kRowOutBlock, ceil_div(ceil_div(chunks, P::kU), 32) * 32));
    tm_launch(on, dim3(grid), dim3(threads), 0, rows_stream<P, VEC, kRowOutBlock, 4>, p, rows, n);
  } else {
    const int threads = int(std::min<int64_t>(kMaxBlock, ceil_div(ceil_div(chunks, P::kU), 32) * 32));
    tm_launch(on, dim3(grid), dim3(threads), 0, rows_stream<P, VEC>, p, rows, n);
  }
}

// Runs policy p over the rows of r; ptrs: every tensor the kernels read or write.
template <class P>
void run_rows(const at::TensorBase& on, const P& p, Rows r, std::initializer_list<const void*> ptrs) {
  if (r.outer == 0 || r.reduce == 0 || r.inner == 0) return;
  const int64_t n = r.reduce;
  if (r.inner > 1) {
    const int bx = int(std::min<int64_t>(32, next_pow2(r.inner)));
    const int by = int(std::min<int64_t>(kColThreads / bx, next_pow2(n)));
    const int64_t tiles = r.outer * ceil_div(r.inner, bx);
    tm_launch(on, dim3(unsigned(tm_blocks(tiles, 1))), dim3(bx, by), 0, cols<P>, p, r.outer, n, r.inner);
    return;
  }
  if (n % P::V == 0 && tm_aligned(16, ptrs)) launch_rows<P, true>(on, p, r.outer, n);
  else launch_rows<P, false>(on, p, r.outer, n);
}

}  // namespace
}  // namespace torchmodules
