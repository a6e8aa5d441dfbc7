// Add on CUDA.  Forward: y = a + b (broadcast).  Backward: the gradient of a broadcast
// source, dy summed down to its shape (deterministic: fixed-order partial sums, no atomics).
#include <algorithm>
#include <type_traits>

#include "elementwise.cuh"

namespace torchmodules {
namespace {

// ---- forward -------------------------------------------------------------------------------

// y_i = a_i + b_i.  Each thread: kU vectors of V elements per step (V = 16 bytes where the
// pointers allow, else 1), all loads issued before the adds; the last vector may be partial.
template <typename T, int V, int M, typename Idx>
__global__ void __launch_bounds__(kThreads)
    add_forward_kernel(T* __restrict__ y, const T* __restrict__ a, const T* __restrict__ b, int64_t n, Idx idx) {
  constexpr int kU = V == 1 ? 4 : 2;
  const int64_t nvec = (n + V - 1) / V;
  T sa = from_acc<T>(dacc_t<T>(0)), sb = sa;  // the single element of a stride-0 operand
  if constexpr (M == kScalarA) sa = a[0];
  if constexpr (M == kScalarB) sb = b[0];
  for (int64_t base = (int64_t)blockIdx.x * kThreads * kU; base < nvec; base += (int64_t)gridDim.x * kThreads * kU) {
    Pack<T, V> pa[kU], pb[kU];
    int cnt[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t e0 = (base + u * kThreads + threadIdx.x) * V;
      cnt[u] = (int)imax(0, imin(V, n - e0));
      load_pair<T, V, M>(pa[u], pb[u], a, b, sa, sb, e0, cnt[u], idx);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t e0 = (base + u * kThreads + threadIdx.x) * V;
      Pack<T, V> py;
#pragma unroll
      for (int j = 0; j < V; ++j) py.v[j] = from_acc<T>(to_float(pa[u].v[j]) + to_float(pb[u].v[j]));
      if (cnt[u] == V) {
        *reinterpret_cast<Pack<T, V>*>(y + e0) = py;
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j)
          if (j < cnt[u]) y[e0 + j] = py.v[j];
      }
    }
  }
}

template <typename T, int V, int M, typename Idx>
void launch_add(const at::TensorBase& on, T* y, const T* a, const T* b, int64_t n, const Idx& idx) {
  constexpr int kU = V == 1 ? 4 : 2;
  tm_launch(on, dim3(tm_blocks((n + V - 1) / V, kThreads * kU)), dim3(kThreads), 0, add_forward_kernel<T, V, M, Idx>,
            y, a, b, n, idx);
}

// ---- backward: out[o] = sum_r dy[kept.offset(o) + reduced.offset(r)] ----------------------

// Work targets for the split of the reduced range (constants, not device properties, so a
// shape always gets the same split and the same bits on every GPU).
constexpr int64_t kTargetThreads = 1024 * 256;  // about one full H100 (132 SMs x 2048)
constexpr int64_t kMinPerThread = 16;           // least dy elements a thread sums per split
constexpr int64_t kMaxGrid = 65535LL * 16;

// ix.offset(i), without divisions when ix has at most one dim.
__device__ __forceinline__ int64_t offset_of(const Indexer& ix, int64_t i) {
  if (ix.ndim <= 1) return ix.ndim ? i * ix.stride[0] : 0;
  return ix.offset(i);
}

// Row mode: the reduced inner dim is contiguous and long (>= 32). One warp sums one
// (output, split) pair, lanes along the contiguous dim; warp shuffle tree, fixed order.
struct RowPlan {
  Indexer kept;   // o -> offset
  Indexer outer;  // reduced dims but the innermost -> offset
  int64_t rin;    // size of the innermost reduced dim (stride 1), >= 32
  int64_t O, R, chunk, S;
};

template <typename T, typename OutT>
__global__ void __launch_bounds__(kThreads) sum_rows_kernel(OutT* out, const T* __restrict__ dy, RowPlan p) {
  using A = dacc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = (int64_t)gridDim.x * (kThreads / 32);
  for (int64_t u = ((int64_t)blockIdx.x * kThreads + threadIdx.x) / 32; u < p.O * p.S; u += nwarps) {
    const int64_t o = u % p.O, s = u / p.O;
    const T* base = dy + p.kept.offset(o);
    const int64_t r1 = imin(p.R, (s + 1) * p.chunk);
    int64_t r = s * p.chunk + lane;
    int64_t rout = r / p.rin, ri = r - rout * p.rin;
    int64_t roff = offset_of(p.outer, rout);
    // Next element of this lane, 32 further along r (rin >= 32: at most one carry).
    auto advance = [&] {
      ri += 32;
      if (ri >= p.rin) {
        ri -= p.rin;
        roff = offset_of(p.outer, ++rout);
      }
    };
    A acc = 0;
    for (; r + 96 < r1; r += 128) {  // four loads in flight, summed in order
      int64_t off[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        off[k] = roff + ri;
        advance();
      }
      T v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = base[off[k]];
#pragma unroll
      for (int k = 0; k < 4; ++k) acc += to_float(v[k]);
    }
    for (; r < r1; r += 32) {
      acc += to_float(base[roff + ri]);
      advance();
    }
#pragma unroll
    for (int h = 16; h > 0; h >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, h);
    if (lane == 0) out[s * p.O + o] = to_out<OutT>(acc);
  }
}

// Column mode: anything else (bias gradients [R, O] -> [O] above all). A block of bx x by
// threads takes a tile of bx outputs adjacent along the kept inner dim; its by rows of
// threads stride over its split of r; a shared-memory tree over the rows, fixed order.
struct ColPlan {
  Indexer kout;  // kept dims but the innermost -> offset
  int64_t kin, kin_stride;
  Indexer red;  // r -> offset
  int64_t O, R, chunk, tiles_in, tiles;
};

template <typename T, typename OutT>
__global__ void __launch_bounds__(kThreads) sum_cols_kernel(OutT* out, const T* __restrict__ dy, ColPlan p) {
  using A = dacc_t<T>;
  __shared__ A sm[kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int64_t s = blockIdx.y;
  const int64_t r0 = s * p.chunk, r1 = imin(p.R, r0 + p.chunk);
  int top = 1;  // largest power of two < by (0 when by == 1)
  while (top < by) top <<= 1;
  top >>= 1;
  for (int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    const int64_t to = tile / p.tiles_in, inner = (tile % p.tiles_in) * bx + tx;
    const bool valid = inner < p.kin;
    A acc = 0;
    if (valid) {
      const T* base = dy + p.kout.offset(to) + inner * p.kin_stride;
      if (p.red.ndim <= 1) {
        const int64_t st = p.red.ndim ? p.red.stride[0] : 0;
#pragma unroll 4
        for (int64_t r = r0 + ty; r < r1; r += by) acc += to_float(base[r * st]);
      } else {
        for (int64_t r = r0 + ty; r < r1; r += by) acc += to_float(base[p.red.offset(r)]);
      }
    }
    sm[ty * bx + tx] = acc;
    __syncthreads();
    for (int h = top; h > 0; h >>= 1) {
      if (ty < h && ty + h < by) sm[ty * bx + tx] += sm[(ty + h) * bx + tx];
      __syncthreads();
    }
    if (ty == 0 && valid) out[s * p.O + to * p.kin + inner] = to_out<OutT>(sm[tx]);
    __syncthreads();  // sm is reused by the next tile
  }
}

// out[o] = sum_{s < S} ws[s * O + o], in order of s. A thread per output for few splits.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    finalize_thread_kernel(T* __restrict__ out, const A* __restrict__ ws, int64_t O, int64_t S) {
  for (int64_t o = (int64_t)blockIdx.x * kThreads + threadIdx.x; o < O; o += (int64_t)gridDim.x * kThreads) {
    A acc = 0;
    for (int64_t s = 0; s < S; ++s) acc += ws[s * O + o];
    out[o] = to_out<T>(acc);
  }
}

// The same with a block per output (many splits): strided sums, then a shared-memory tree.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    finalize_block_kernel(T* __restrict__ out, const A* __restrict__ ws, int64_t O, int64_t S) {
  __shared__ A sm[kThreads];
  for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
    A acc = 0;
    for (int64_t s = threadIdx.x; s < S; s += kThreads) acc += ws[s * O + o];
    sm[threadIdx.x] = acc;
    __syncthreads();
    for (int h = kThreads / 2; h > 0; h >>= 1) {
      if ((int)threadIdx.x < h) sm[threadIdx.x] += sm[threadIdx.x + h];
      __syncthreads();
    }
    if (threadIdx.x == 0) out[o] = to_out<T>(sm[0]);
    __syncthreads();
  }
}

// The indexer of all dims of ix but the innermost.
Indexer drop_inner(const Indexer& ix) {
  Indexer r{};
  r.ndim = ix.ndim > 0 ? ix.ndim - 1 : 0;
  r.numel = 1;
  for (int d = 0; d < r.ndim; ++d) {
    r.size[d] = ix.size[d];
    r.stride[d] = ix.stride[d];
    r.numel *= ix.size[d];
  }
  return r;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void add_forward_cuda(at::TensorBase& y, const at::TensorBase& a, const at::TensorBase& b, const Broadcast2& bc) {
  const int64_t n = y.numel();
  if (n == 0) return;
  TM_DISPATCH_FLOATING(y.scalar_type(), "add_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    constexpr int V = 16 / sizeof(T);
    T* py = dptr<scalar_t>(y);
    const T* pa = dptr<scalar_t>(a);
    const T* pb = dptr<scalar_t>(b);
    const bool one = bc.ndim == 1;
    const int64_t s_a = one ? bc.stride_a[0] : -1, s_b = one ? bc.stride_b[0] : -1;
    if (one && s_a == 1 && s_b == 1) {
      if (tm_aligned(16, {py, pa, pb})) launch_add<T, V, kContig>(y, py, pa, pb, n, NoIndex{});
      else launch_add<T, 1, kContig>(y, py, pa, pb, n, NoIndex{});
    } else if (one && s_a == 0 && s_b == 1) {
      if (tm_aligned(16, {py, pb})) launch_add<T, V, kScalarA>(y, py, pa, pb, n, NoIndex{});
      else launch_add<T, 1, kScalarA>(y, py, pa, pb, n, NoIndex{});
    } else if (one && s_a == 1 && s_b == 0) {
      if (tm_aligned(16, {py, pa})) launch_add<T, V, kScalarB>(y, py, pa, pb, n, NoIndex{});
      else launch_add<T, 1, kScalarB>(y, py, pa, pb, n, NoIndex{});
    } else if (n <= INT32_MAX) {
      launch_add<T, 1, kGeneral>(y, py, pa, pb, n, make_fast(bc));
    } else {
      launch_add<T, 1, kGeneral>(y, py, pa, pb, n, bc);
    }
  });
}

void add_backward_cuda(at::TensorBase& out, const at::TensorBase& dy, const SumToPlan& plan) {
  const int64_t O = plan.kept.numel, R = plan.reduced.numel;
  if (O == 0) return;
  const Indexer& kp = plan.kept;
  const Indexer& rd = plan.reduced;
  const bool row = R > 0 && rd.ndim > 0 && rd.stride[rd.ndim - 1] == 1 && rd.size[rd.ndim - 1] >= 32;
  TM_DISPATCH_FLOATING(dy.scalar_type(), "add_backward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = dacc_t<T>;
    T* pout = dptr<scalar_t>(out);
    const T* pdy = dptr<scalar_t>(dy);
    // Splits of r: S == 1 writes out directly; else partials ws[s * O + o], then a finalize.
    int64_t S = 1, chunk = R;
    RowPlan rp{};
    ColPlan cp{};
    int bx = 1, by = 1;
    if (row) {
      const int64_t target = kTargetThreads / 32;  // warps
      if (O < target) S = std::max<int64_t>(1, std::min(ceil_div(target, O), ceil_div(R, 32 * kMinPerThread)));
      chunk = ceil_div(ceil_div(R, S), 32) * 32;
      S = ceil_div(R, chunk);
      rp = RowPlan{kp, drop_inner(rd), rd.size[rd.ndim - 1], O, R, chunk, S};
    } else {
      const int64_t kin = kp.ndim ? kp.size[kp.ndim - 1] : 1;
      bx = (int)std::min<int64_t>(kin, 32);
      by = (int)std::min<int64_t>(kThreads / bx, std::max<int64_t>(R, 1));
      bx = (int)std::min<int64_t>(kin, kThreads / by);  // few rows: widen the tile
      const int64_t tiles_in = ceil_div(kin, bx), tiles = O / kin * tiles_in;
      const int64_t target = kTargetThreads / (bx * by);  // blocks
      if (R > 0 && tiles < target)
        S = std::max<int64_t>(1, std::min({ceil_div(target, tiles), ceil_div(R, by * kMinPerThread), int64_t(65535)}));
      chunk = R > 0 ? ceil_div(R, S) : 0;
      S = R > 0 ? ceil_div(R, chunk) : 1;
      cp = ColPlan{drop_inner(kp), kin, kp.ndim ? kp.stride[kp.ndim - 1] : 0, rd, O, R, chunk, tiles_in, tiles};
    }
    auto launch_main = [&](auto* dst) {
      using OutT = std::remove_pointer_t<decltype(dst)>;
      if (row)
        tm_launch(dy, dim3(tm_blocks(O * S, kThreads / 32, kMaxGrid)), dim3(kThreads), 0, sum_rows_kernel<T, OutT>,
                  dst, pdy, rp);
      else
        tm_launch(dy, dim3((unsigned)std::min(cp.tiles, kMaxGrid), (unsigned)S), dim3(bx, by), 0, sum_cols_kernel<T, OutT>, dst, pdy, cp);
    };
    if (S == 1) {
      launch_main(pout);
    } else {
      const at::TensorBase ws = new_workspace({S * O}, dy.options().dtype(std::is_same<A, double>::value ? at::kDouble : at::kFloat));
      A* pws = reinterpret_cast<A*>(ws.data_ptr());
      launch_main(pws);
      if (S <= 32)
        tm_launch(dy, dim3(tm_blocks(O, kThreads, kMaxGrid)), dim3(kThreads), 0, finalize_thread_kernel<T, A>, pout,
                  (const A*)pws, O, S);
      else
        tm_launch(dy, dim3((unsigned)std::min(O, kMaxGrid)), dim3(kThreads), 0, finalize_block_kernel<T, A>, pout, (const A*)pws,
                  O, S);
    }
  });
}


}  // namespace torchmodules
