// Linear.  Forward: y = x W^T + b.   Backward: dx = dy W,  dW = dy^T x  (db is add_backward).
// The three products are one hand-written GEMM, C[M,N] = sum_k A(m,k) B(k,n) (+ bias[n]),
// which reads A and B through strides, so a transposed operand costs nothing extra:
//   forward          C = y [M,N],  A = x [M,K],       B(k,n) = w[n,k]
//   backward_input   C = dx [M,K], A = dy [M,N],      B(n,k) = w[n,k]    (inner dim N)
//   backward_weight  C = dW [N,K], A(n,m) = dy[m,n],  B(m,k) = x[m,k]    (inner dim M)
// The GEMM (Goto / BLIS scheme): the inner dim is cut in blocks of KC; per block, A and B
// are packed into zero-padded panels of MR rows and NR columns, and every MR x NR tile of C
// is one register-blocked micro-kernel call. Threads own tiles of C, so each element of C
// is summed in the same order whatever the thread count (deterministic). The kernels are
// compiled for AVX-512, AVX2+FMA and the baseline, picked at run time (the build has no
// -march). float16 / bfloat16 are packed as float, summed in a float copy of C, rounded once.
#include "ops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

namespace {

// Product of all sizes but the last (the rows of the 2-D view).
int64_t leading_numel(const at::Tensor& t) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) m *= t.size(d);
  return m;
}

// t's sizes with the last one replaced by n.
std::vector<int64_t> with_last(const at::Tensor& t, int64_t n) {
  std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
  s.back() = n;
  return s;
}

}  // namespace

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_floating("linear", "input", x);
  check_floating("linear", "weight", weight);
  check_same_dtype_device("linear", "input", x, "weight", weight);
  TORCH_CHECK(weight.dim() == 2,
              "torchmodules.linear: weight must be 2-D [out_features, in_features], got shape ", weight.sizes());
  TORCH_CHECK(x.dim() >= 1, "torchmodules.linear: input must have at least 1 dim, got shape ", x.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), "torchmodules.linear: input of shape ", x.sizes(),
              " and weight of shape ", weight.sizes(), " do not match: input.size(-1) = ", x.size(-1),
              " but weight.size(1) = ", weight.size(1));
  const int64_t M = leading_numel(x), K = weight.size(1), N = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_floating("linear", "bias", *bias);
    check_same_dtype_device("linear", "input", x, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "torchmodules.linear: bias must have shape [", N,
                "] for weight of shape ", weight.sizes(), ", got ", bias->sizes());
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor x2d = xc.view({M, K});
  const at::Tensor wc = weight.contiguous();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = new_output(with_last(x, N), x.options());
  at::Tensor y2d = y.view({M, N});
  if (M > 0 && N > 0) TM_LAUNCH(linear_forward, x, y2d, x2d, wc, bc);  // K == 0: y = bias (or 0)
  return y;
}

at::Tensor linear_backward_input(const at::Tensor& grad_y, const at::Tensor& weight) {
  check_floating("linear_backward_input", "grad_y", grad_y);
  check_floating("linear_backward_input", "weight", weight);
  check_same_dtype_device("linear_backward_input", "grad_y", grad_y, "weight", weight);
  TORCH_CHECK(weight.dim() == 2, "torchmodules.linear_backward_input: weight must be 2-D, got shape ",
              weight.sizes());
  TORCH_CHECK(grad_y.dim() >= 1,
              "torchmodules.linear_backward_input: grad_y must have at least 1 dim, got shape ", grad_y.sizes());
  TORCH_CHECK(grad_y.size(-1) == weight.size(0), "torchmodules.linear_backward_input: grad_y of shape ",
              grad_y.sizes(), " and weight of shape ", weight.sizes(), " do not match: grad_y.size(-1) = ",
              grad_y.size(-1), " but weight.size(0) = ", weight.size(0));
  const int64_t M = leading_numel(grad_y), N = weight.size(0), K = weight.size(1);
  const at::Tensor dyc = grad_y.contiguous();
  const at::Tensor dy2d = dyc.view({M, N});
  const at::Tensor wc = weight.contiguous();
  at::Tensor dx = new_output(with_last(grad_y, K), grad_y.options());
  at::Tensor dx2d = dx.view({M, K});
  if (M > 0 && K > 0) TM_LAUNCH(linear_backward_input, grad_y, dx2d, dy2d, wc);  // N == 0: dx = 0
  return dx;
}

at::Tensor linear_backward_weight(const at::Tensor& grad_y, const at::Tensor& x) {
  check_floating("linear_backward_weight", "grad_y", grad_y);
  check_floating("linear_backward_weight", "input", x);
  check_same_dtype_device("linear_backward_weight", "grad_y", grad_y, "input", x);
  TORCH_CHECK(grad_y.dim() >= 1 && grad_y.dim() == x.dim() &&
                  grad_y.sizes().slice(0, grad_y.dim() - 1).equals(x.sizes().slice(0, x.dim() - 1)),
              "torchmodules.linear_backward_weight: grad_y of shape ", grad_y.sizes(), " and input of shape ",
              x.sizes(), " must have at least 1 dim and the same sizes but the last");
  const int64_t M = leading_numel(x), N = grad_y.size(-1), K = x.size(-1);
  const at::Tensor dyc = grad_y.contiguous();
  const at::Tensor dy2d = dyc.view({M, N});
  const at::Tensor xc = x.contiguous();
  const at::Tensor x2d = xc.view({M, K});
  at::Tensor dw = new_output({N, K}, x.options());
  if (N > 0 && K > 0) TM_LAUNCH(linear_backward_weight, grad_y, dw, dy2d, x2d);  // M == 0: dW = 0
  return dw;
}

// ---- CPU kernels ---------------------------------------------------------------------------

namespace {

#if defined(__GNUC__)
#define TM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TM_ALWAYS_INLINE inline
#endif

// Micro-kernel shape: MR rows of C (broadcast from packed A) by NV vectors of VB bytes
// (NR = NV * VB / sizeof(R) columns, loaded from packed B); R is the compute type.
// KC: the inner-dim block (A's micro-panel, MR x KC, stays in L1); NC: the most columns of
// a tile (its part of B, KC x NC, stays in L2); MC: the most rows of a tile; MB: the rows
// of A packed at once (MB x KC, in L3).
template <typename R, int VB_, int MR_, int NV_, int KC_, int MC_, int NC_, int MB_>
struct Cfg {
  using type = R;
  static constexpr int VB = VB_, MR = MR_, NV = NV_, L = VB_ / (int)sizeof(R), NR = NV_ * L;
  static constexpr int KC = KC_, MC = MC_, NC = NC_, MB = MB_ / MR_ * MR_;
};

// One tile of C, rows [pi0, pi1) x cols [pj0, pj1) in panels, for one block of the inner dim.
template <typename R>
struct TileJob {
  int64_t kc;                  // inner-dim length of this block
  const R* a;                  // packed A: panel pi at a + (pi - a0) * kc * MR
  const R* b;                  // packed B: panel pj at b + (pj - b0) * kc * NR
  R* c;                        // C (compute type) at the row block, row-major
  int64_t ldc, M, N;           // C's row stride and the block's valid sizes
  int64_t pi0, pi1, a0;        // the tile's A panels, and the first one packed in a
  int64_t pj0, pj1, b0;        // the tile's B panels, and the first one packed in b
  bool a_kmajor;               // A panels k-major (a[k*MR + i]) or row-major (a[i*kc + k])
  bool accumulate;             // C += (later blocks) or C = (first block)
  const R* bias;               // added on the last block, or nullptr
};

// C[MR x NR] (=|+=) A_panel[MR x kc] B_panel[kc x NR] (+ bias); B packed k-major, A k-major
// (AK) or row-major. Only mr x nr of the tile are valid (edges): the rest, computed on zero
// padding, is dropped. Per element: c = (accumulate ? c : 0) + sum_k a[i][k] b[k][j], then + bias[j].
template <class C, bool AK>
TM_ALWAYS_INLINE void micro_kernel(int64_t kc, const typename C::type* __restrict a,
                                   const typename C::type* __restrict b, typename C::type* c, int64_t ldc,
                                   int64_t mr, int64_t nr, bool accumulate, const typename C::type* bias) {
  using R = typename C::type;
  typedef R V __attribute__((vector_size(C::VB)));
  constexpr int MR = C::MR, NV = C::NV, L = C::L, NR = C::NR;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[i][j] = V{};
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], b + j * L, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const R ai = AK ? a[i] : a[i * kc];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];  // contracted to FMA where the ISA has it
    }
    a += AK ? MR : 1;
    b += NR;
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        V v = acc[i][j];
        R* cp = c + i * ldc + j * L;
        if (accumulate) {
          V old;
          std::memcpy(&old, cp, sizeof(V));
          v = old + v;
        }
        if (bias) {
          V bb;
          std::memcpy(&bb, bias + j * L, sizeof(V));
          v = v + bb;
        }
        std::memcpy(cp, &v, sizeof(V));
      }
  } else {
    alignas(64) R tmp[MR][NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) std::memcpy(&tmp[i][j * L], &acc[i][j], sizeof(V));
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < nr; ++j) {
        R v = tmp[i][j];
        if (accumulate) v = c[i * ldc + j] + v;
        if (bias) v = v + bias[j];
        c[i * ldc + j] = v;
      }
  }
}

// Every MR x NR tile of one TileJob; A's micro-panel (in L1) meets each B panel of the tile.
template <class C, bool AK>
TM_ALWAYS_INLINE void run_tile_as(const TileJob<typename C::type>& t) {
  for (int64_t pi = t.pi0; pi < t.pi1; ++pi) {
    const int64_t i0 = pi * C::MR, mr = std::min<int64_t>(C::MR, t.M - i0);
    for (int64_t pj = t.pj0; pj < t.pj1; ++pj) {
      const int64_t j0 = pj * C::NR, nr = std::min<int64_t>(C::NR, t.N - j0);
      micro_kernel<C, AK>(t.kc, t.a + (pi - t.a0) * t.kc * C::MR, t.b + (pj - t.b0) * t.kc * C::NR,
                          t.c + i0 * t.ldc + j0, t.ldc, mr, nr, t.accumulate, t.bias ? t.bias + j0 : nullptr);
    }
  }
}
template <class C>
TM_ALWAYS_INLINE void run_tile(const TileJob<typename C::type>& t) {
  if (t.a_kmajor) run_tile_as<C, true>(t);
  else run_tile_as<C, false>(t);
}

// n (<= P) source rows of kc elements, row p at src + p * s_row: one row-major panel,
// dst[p * kc + k], zero rows past n.
template <int P, typename T, typename R>
TM_ALWAYS_INLINE void pack_rows(R* __restrict dst, const T* __restrict src, int64_t s_row, int64_t n, int64_t kc) {
  for (int64_t p = 0; p < n; ++p)
    for (int64_t k = 0; k < kc; ++k) dst[p * kc + k] = static_cast<R>(src[p * s_row + k]);
  for (int64_t k = 0; k < (P - n) * kc; ++k) dst[n * kc + k] = R(0);
}

// A k-major panel, dst[k * P + p] = src[p * s_p + k * s_k], zero columns past n (any strides).
template <int P, typename T, typename R>
TM_ALWAYS_INLINE void pack_kmajor(R* __restrict dst, const T* __restrict src, int64_t s_p, int64_t s_k, int64_t n,
                                  int64_t kc) {
  for (int64_t k = 0; k < kc; ++k) {
    R* d = dst + k * P;
    for (int64_t p = 0; p < n; ++p) d[p] = static_cast<R>(src[p * s_p + k * s_k]);
    for (int64_t p = n; p < P; ++p) d[p] = R(0);
  }
}

// Zip of a and b's low (H = 0) or high (H = 1) halves: a0 b0 a1 b1 ...
template <typename V, typename Mask, int L, int H, size_t... I>
TM_ALWAYS_INLINE void zip(V& out, const V& a, const V& b, std::index_sequence<I...>) {
#if defined(__clang__)
  out = __builtin_shufflevector(a, b, ((I % 2 ? L : 0) + H * L / 2 + I / 2)...);
#else
  const Mask m = {static_cast<typename std::remove_reference<decltype(std::declval<Mask>()[0])>::type>(
      (I % 2 ? L : 0) + H * L / 2 + I / 2)...};
  out = __builtin_shuffle(a, b, m);
#endif
}

// The same k-major panel from a source whose k is contiguous (s_k == 1): L x L blocks
// transposed in registers (log2 L rounds of zips), then stored as rows of dst.
template <class C, int P, typename T>
TM_ALWAYS_INLINE void pack_kmajor_transposed(typename C::type* __restrict dst, const T* __restrict src, int64_t s_p,
                                             int64_t n, int64_t kc) {
  using R = typename C::type;
  constexpr int L = C::L;
  typedef R V __attribute__((vector_size(C::VB)));
  using MI = typename std::conditional<sizeof(R) == 4, int32_t, int64_t>::type;
  typedef MI Mask __attribute__((vector_size(C::VB)));
  static_assert(P % L == 0, "panel width must be whole vectors");
  const int64_t kfull = kc / L * L;
  for (int64_t k0 = 0; k0 < kfull; k0 += L) {
    for (int v = 0; v < P / L; ++v) {
      V r[L];
#pragma GCC unroll 16
      for (int q = 0; q < L; ++q) {
        const int64_t p = v * L + q;
        if (p < n) {
          R row[L];
          const T* s = src + p * s_p + k0;
#pragma GCC unroll 16
          for (int e = 0; e < L; ++e) row[e] = static_cast<R>(s[e]);
          std::memcpy(&r[q], row, sizeof(V));
        } else {
          r[q] = V{};
        }
      }
#pragma GCC unroll 4
      for (int round = 1; round < L; round *= 2) {
        V t[L];
#pragma GCC unroll 16
        for (int q = 0; q < L / 2; ++q) {
          zip<V, Mask, L, 0>(t[2 * q], r[q], r[q + L / 2], std::make_index_sequence<L>());
          zip<V, Mask, L, 1>(t[2 * q + 1], r[q], r[q + L / 2], std::make_index_sequence<L>());
        }
#pragma GCC unroll 16
        for (int q = 0; q < L; ++q) r[q] = t[q];
      }
#pragma GCC unroll 16
      for (int e = 0; e < L; ++e) std::memcpy(dst + (k0 + e) * P + v * L, &r[e], sizeof(V));
    }
  }
  if (kfull < kc) pack_kmajor<P>(dst + kfull * P, src + kfull, s_p, int64_t(1), n, kc - kfull);
}

// A's panel of MR rows: row-major when A's k is contiguous (a plain copy), else k-major.
template <class C, typename T>
TM_ALWAYS_INLINE void pack_a(typename C::type* dst, const T* src, int64_t s_i, int64_t s_k, int64_t n, int64_t kc) {
  if (s_k == 1) pack_rows<C::MR>(dst, src, s_i, n, kc);
  else pack_kmajor<C::MR>(dst, src, s_i, s_k, n, kc);
}
// B's columns [0, n) as panels of NR, always k-major: panel q at dst + q * kc * NR,
// B(k, j) = src[j * s_j + k * s_k]. A contiguous row of B is read across all the panels.
template <class C, typename T>
TM_ALWAYS_INLINE void pack_b(typename C::type* dst, const T* src, int64_t s_j, int64_t s_k, int64_t n, int64_t kc) {
  using R = typename C::type;
  constexpr int NR = C::NR;
  const int64_t full = n / NR, rest = n - full * NR;
  if (s_j == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = src + k * s_k;
      for (int64_t q = 0; q < full; ++q) {
        R* d = dst + q * kc * NR + k * NR;
#pragma GCC unroll 4
        for (int p = 0; p < NR; ++p) d[p] = static_cast<R>(s[q * NR + p]);
      }
    }
    if (rest) pack_kmajor<NR>(dst + full * kc * NR, src + full * NR, s_j, s_k, rest, kc);
  } else {
    for (int64_t q = 0; q * NR < n; ++q) {
      const int64_t nq = std::min<int64_t>(NR, n - q * NR);
      if (s_k == 1) pack_kmajor_transposed<C, NR>(dst + q * kc * NR, src + q * NR * s_j, s_j, nq, kc);
      else pack_kmajor<NR>(dst + q * kc * NR, src + q * NR * s_j, s_j, s_k, nq, kc);
    }
  }
}

// The kernels of one ISA for storage type T.
template <typename T>
struct Kernels {
  using R = acc_t<T>;
  void (*tile)(const TileJob<R>&);
  void (*pack_a)(R*, const T*, int64_t, int64_t, int64_t, int64_t);
  void (*pack_b)(R*, const T*, int64_t, int64_t, int64_t, int64_t);
};

// Configurations per ISA, and the ISA's kernels compiled for it (the build has no -march).
template <typename R, class F, class D>
using PickCfg = typename std::conditional<std::is_same<R, double>::value, D, F>::type;
#define TM_ISA_KERNELS(NAME, ATTR, CF, CD)                                                                        \
  template <typename R>                                                                                           \
  ATTR void NAME##_tile(const TileJob<R>& t) { run_tile<PickCfg<R, CF, CD>>(t); }                                 \
  template <typename T>                                                                                           \
  ATTR void NAME##_pack_a(acc_t<T>* d, const T* s, int64_t si, int64_t sk, int64_t n, int64_t kc) {               \
    pack_a<PickCfg<acc_t<T>, CF, CD>>(d, s, si, sk, n, kc);                                                       \
  }                                                                                                               \
  template <typename T>                                                                                           \
  ATTR void NAME##_pack_b(acc_t<T>* d, const T* s, int64_t sj, int64_t sk, int64_t n, int64_t kc) {               \
    pack_b<PickCfg<acc_t<T>, CF, CD>>(d, s, sj, sk, n, kc);                                                       \
  }                                                                                                               \
  template <typename T>                                                                                           \
  Kernels<T> NAME##_kernels() {                                                                                   \
    return {&NAME##_tile<acc_t<T>>, &NAME##_pack_a<T>, &NAME##_pack_b<T>};                                        \
  }

//                 R      VB  MR NV  KC   MC   NC   MB      micro-tile MR x NR
using CfgBaseF = Cfg<float, 16, 6, 2, 256, 96, 256, 1536>;  // 6 x 8     SSE2 / NEON
using CfgBaseD = Cfg<double, 16, 6, 2, 256, 96, 128, 768>;  // 6 x 4
TM_ISA_KERNELS(base, , CfgBaseF, CfgBaseD)

#if defined(__x86_64__) && defined(__GNUC__)
#define TM_HAVE_X86_ISAS 1
using CfgAvx2F = Cfg<float, 32, 6, 2, 256, 96, 512, 1536>;     // 6 x 16    12 ymm accumulators
using CfgAvx2D = Cfg<double, 32, 6, 2, 256, 96, 256, 768>;     // 6 x 8
using CfgAvx512F = Cfg<float, 64, 12, 2, 256, 96, 512, 1536>;  // 12 x 32   24 zmm accumulators
using CfgAvx512D = Cfg<double, 64, 12, 2, 256, 96, 256, 768>;  // 12 x 16
TM_ISA_KERNELS(avx2, __attribute__((target("avx2,fma"))), CfgAvx2F, CfgAvx2D)
TM_ISA_KERNELS(avx512, __attribute__((target("avx512f,fma"))), CfgAvx512F, CfgAvx512D)

// The widest ISA of this CPU, or the one TORCHMODULES_CPU_ISA (base, avx2, avx512) caps it to.
enum class Isa { kBase, kAvx2, kAvx512 };
Isa cpu_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") ? Isa::kAvx512
               : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::kAvx2
                                                                                  : Isa::kBase;
    const char* env = std::getenv("TORCHMODULES_CPU_ISA");
    const std::string cap = env ? env : "";
    if (cap == "base") best = Isa::kBase;
    if (cap == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
    return best;
  }();
  return isa;
}
#endif

// Splits n items into `parts` near-equal ranges; the start of range i.
inline int64_t split_at(int64_t n, int64_t parts, int64_t i) { return n * i / parts; }

// C[M,N] = sum_k A(m,k) B(k,n) + bias[n], with A(m,k) = a[m*rs_a + k*cs_a],
// B(k,n) = b[k*rs_b + n*cs_b], C row-major (ldc = N), bias [N] or nullptr.
// K == 0 gives C = bias (or 0).
// Loops: row blocks of MB, inner-dim blocks of KC (A's block, MB x KC, packed and shared by
// the threads), then tiles of C (at most MC x NC) over the threads: each thread packs the
// B columns of its tile itself (KC x NC, kept in its L2) and reuses them while the next
// tiles are below in the same columns.
template <class C, typename T>
void gemm_driver(int64_t M, int64_t N, int64_t K, const T* a, int64_t rs_a, int64_t cs_a, const T* b,
                 int64_t rs_b, int64_t cs_b, T* c, const T* bias, const Kernels<T>& kern) {
  using R = typename C::type;
  constexpr int MR = C::MR, NR = C::NR;
  constexpr bool same = std::is_same<T, R>::value;
  const auto r_opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<R>::value);
  // The sums go to C itself for float and double, else to a float copy rounded at the end.
  at::Tensor cacc_buf, bias_buf;
  R* cacc;
  const R* bias_r = nullptr;
  if constexpr (same) {
    cacc = c;
    bias_r = bias;
  } else {
    cacc_buf = at::empty({M * N}, r_opts);
    cacc = cacc_buf.data_ptr<R>();
    if (bias) {
      bias_buf = at::empty({N}, r_opts);
      R* br = bias_buf.data_ptr<R>();
      for (int64_t j = 0; j < N; ++j) br[j] = static_cast<R>(bias[j]);
      bias_r = br;
    }
  }

  if (K == 0) {  // no products: C = bias (or 0)
    at::parallel_for(0, M, std::max<int64_t>(1, kGrain / N), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = 0; n < N; ++n) cacc[m * N + n] = bias_r ? bias_r[n] : R(0);
    });
  } else {
    constexpr int64_t KC = C::KC, MC = C::MC, NC = C::NC, MB = C::MB;
    const int64_t np = (N + NR - 1) / NR;                            // B's panels
    const int64_t mpb = std::min<int64_t>(MB / MR, (M + MR - 1) / MR);  // A's panels per row block
    const int64_t kcmax = std::min<int64_t>(KC, K);

    // Tiles of a row block of mp panels: at most MC x NC, and enough of them to keep every
    // thread busy. Each has at most NC / NR panels of B.
    const int64_t nt = std::max<int>(1, at::get_num_threads());
    auto tiling = [&](int64_t mp, int64_t& n_i, int64_t& n_j) {
      n_i = (mp + MC / MR - 1) / (MC / MR);
      n_j = (np + NC / NR - 1) / (NC / NR);
      while ((n_i * n_j < 4 * nt || (n_i * n_j % nt != 0 && n_i * n_j < 16 * nt)) && (n_i < mp || n_j < np)) {
        const bool split_cols = n_j < np && (n_i >= mp || (np * NR) / n_j > (mp * MR) / n_i);
        if (split_cols) ++n_j;
        else ++n_i;
      }
    };
    const bool serial = M * N * kcmax < (int64_t)1 << 20;  // small problems: one thread

    // Workspace: A's block, then one B block per thread; 64-byte aligned.
    const int64_t a_elems = mpb * MR * kcmax, b_elems = std::min<int64_t>(np, NC / NR) * NR * kcmax;
    at::Tensor ws = at::empty({(a_elems + nt * b_elems) * (int64_t)sizeof(R) + 64},
                              at::TensorOptions().dtype(at::kByte));
    R* ap = reinterpret_cast<R*>((reinterpret_cast<uintptr_t>(ws.data_ptr()) + 63) & ~uintptr_t(63));
    R* bp_all = ap + a_elems;

    for (int64_t ic = 0; ic < M; ic += MB) {
      const int64_t mb = std::min<int64_t>(MB, M - ic), mp = (mb + MR - 1) / MR;
      int64_t n_i, n_j;
      tiling(mp, n_i, n_j);
      const int64_t n_tiles = n_i * n_j;
      for (int64_t p0 = 0; p0 < K; p0 += KC) {
        const int64_t kc = std::min<int64_t>(KC, K - p0);
        const bool last = p0 + kc == K;
        at::parallel_for(0, mp, serial ? mp : 1, [&](int64_t q0, int64_t q1) {
          for (int64_t q = q0; q < q1; ++q)
            kern.pack_a(ap + q * kc * MR, a + (ic + q * MR) * rs_a + p0 * cs_a, rs_a, cs_a,
                        std::min<int64_t>(MR, mb - q * MR), kc);
        });
        at::parallel_for(0, n_tiles, serial ? n_tiles : 1, [&](int64_t t0, int64_t t1) {
          R* bp = bp_all + std::min<int64_t>(at::get_thread_num(), nt - 1) * b_elems;
          int64_t packed = -1;  // the tile column whose B block is in bp
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t tj = t / n_i, ti = t % n_i;  // consecutive tiles share B's block
            const int64_t pj0 = split_at(np, n_j, tj), pj1 = split_at(np, n_j, tj + 1);
            if (packed != tj) {
              const int64_t j0 = pj0 * NR;
              kern.pack_b(bp, b + p0 * rs_b + j0 * cs_b, cs_b, rs_b, std::min<int64_t>(pj1 * NR, N) - j0, kc);
              packed = tj;
            }
            const TileJob<R> job{kc, ap, bp, cacc + ic * N, N, mb, N,
                                 split_at(mp, n_i, ti), split_at(mp, n_i, ti + 1), 0, pj0, pj1, pj0,
                                 cs_a != 1, p0 > 0, last ? bias_r : nullptr};
            kern.tile(job);
          }
        });
      }
    }
  }

  if constexpr (!same) {  // round once
    at::parallel_for(0, M * N, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) c[i] = static_cast<T>(cacc[i]);
    });
  }
}

// Picks this CPU's kernels and runs the GEMM (see gemm_driver).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b,
          int64_t cs_b, T* c, const T* bias) {
  if (M == 0 || N == 0) return;
  using R = acc_t<T>;
#ifdef TM_HAVE_X86_ISAS
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return gemm_driver<PickCfg<R, CfgAvx512F, CfgAvx512D>>(M, N, K, a, rs_a, cs_a, b, rs_b, cs_b, c, bias,
                                                             avx512_kernels<T>());
    case Isa::kAvx2:
      return gemm_driver<PickCfg<R, CfgAvx2F, CfgAvx2D>>(M, N, K, a, rs_a, cs_a, b, rs_b, cs_b, c, bias,
                                                         avx2_kernels<T>());
    default:
      break;
  }
#endif
  gemm_driver<PickCfg<R, CfgBaseF, CfgBaseD>>(M, N, K, a, rs_a, cs_a, b, rs_b, cs_b, c, bias, base_kernels<T>());
}

}  // namespace

// y[M,N] = x[M,K] w[N,K]^T + bias:  A = x (row-major), B(k,n) = w[n,k].
void linear_forward_cpu(at::Tensor& y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TM_DISPATCH_FLOATING(x.scalar_type(), "linear_forward_cpu", [&] {
    gemm<scalar_t>(M, N, K, x.data_ptr<scalar_t>(), K, 1, w.data_ptr<scalar_t>(), 1, K, y.data_ptr<scalar_t>(),
                   bias.defined() ? bias.data_ptr<scalar_t>() : nullptr);
  });
}

// dx[M,K] = dy[M,N] w[N,K]:  A = dy (row-major), B = w (row-major), inner dim N.
void linear_backward_input_cpu(at::Tensor& dx, const at::Tensor& dy, const at::Tensor& w) {
  const int64_t M = dy.size(0), N = dy.size(1), K = w.size(1);
  TM_DISPATCH_FLOATING(dy.scalar_type(), "linear_backward_input_cpu", [&] {
    gemm<scalar_t>(M, K, N, dy.data_ptr<scalar_t>(), N, 1, w.data_ptr<scalar_t>(), K, 1, dx.data_ptr<scalar_t>(),
                   nullptr);
  });
}

// dW[N,K] = dy[M,N]^T x[M,K]:  A(n,m) = dy[m,n], B = x (row-major), inner dim M.
void linear_backward_weight_cpu(at::Tensor& dw, const at::Tensor& dy, const at::Tensor& x) {
  const int64_t M = dy.size(0), N = dy.size(1), K = x.size(1);
  TM_DISPATCH_FLOATING(dy.scalar_type(), "linear_backward_weight_cpu", [&] {
    gemm<scalar_t>(N, K, M, dy.data_ptr<scalar_t>(), 1, N, x.data_ptr<scalar_t>(), K, 1, dw.data_ptr<scalar_t>(),
                   nullptr);
  });
}

TORCH_LIBRARY_IMPL(torchmodules, CPU, m) {
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_backward_input", &linear_backward_input);
  m.impl("linear_backward_weight", &linear_backward_weight);
}

}  // namespace torchmodules
