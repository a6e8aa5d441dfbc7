// Add.  Forward: y = a + b, broadcasting as torch.add.
//       Backward: da = dy summed over the dims a was broadcast along (add_backward), db alike.
// add_backward is also Linear's bias gradient and reduces Maximum's broadcast gradients.
#include "half_convert.h"
#include "loss_reduce.h"
#include "ops.h"
#include "simd.h"

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

at::Tensor add_forward(const at::Tensor& a, const at::Tensor& b) {
  check_floating("add", "input", a);
  check_floating("add", "other", b);
  check_same_dtype_device("add", "input", a, "other", b);
  const std::vector<int64_t> shape = broadcast_shape("add", a.sizes(), b.sizes());
  at::Tensor y = new_output(shape, a.options());
  if (y.numel() > 0) {
    const Broadcast2 bc = make_broadcast2("add", shape, a, b);  // reads a and b in place, any strides
    TM_LAUNCH(add_forward, a, y, a, b, bc);
  }
  return y;
}

namespace {
// Indexer over the given dims (sizes and strides), merging a dim into the one inside it
// where the strides allow.
Indexer make_indexer(const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
  Indexer ix{};
  ix.numel = 1;
  std::vector<int64_t> sz, st;
  for (size_t d = 0; d < size.size(); ++d) {
    ix.numel *= size[d];
    if (size[d] == 1) continue;
    if (!sz.empty() && st.back() == stride[d] * size[d]) {
      sz.back() *= size[d];
      st.back() = stride[d];
    } else {
      sz.push_back(size[d]);
      st.push_back(stride[d]);
    }
  }
  TORCH_CHECK((int)sz.size() <= kMaxDims, "torchmodules.add_backward: too many dims");
  ix.ndim = (int)sz.size();
  for (int d = 0; d < ix.ndim; ++d) {
    ix.size[d] = sz[d];
    ix.stride[d] = st[d];
  }
  return ix;
}
}  // namespace

at::Tensor add_backward(const at::Tensor& grad_y, c10::SymIntArrayRef sym_size) {
  const at::IntArrayRef size = C10_AS_INTARRAYREF_SLOW(sym_size);
  check_floating("add_backward", "grad_y", grad_y);
  const int64_t n = grad_y.dim(), lead = n - (int64_t)size.size();
  bool ok = lead >= 0;
  for (int64_t d = 0; ok && d < (int64_t)size.size(); ++d)
    ok = size[d] == grad_y.size(lead + d) || size[d] == 1;
  TORCH_CHECK(ok, "torchmodules.add_backward: cannot sum grad_y of shape ", grad_y.sizes(),
              " down to shape ", size);
  const at::Tensor dyc = grad_y.contiguous();
  // Each dim of dy is kept (the output has it) or reduced (added in, or broadcast over).
  std::vector<int64_t> ks, kt, rs, rt;
  for (int64_t d = 0; d < n; ++d) {
    const bool kept = d >= lead && size[d - lead] == grad_y.size(d);
    (kept ? ks : rs).push_back(grad_y.size(d));
    (kept ? kt : rt).push_back(dyc.stride(d));
  }
  const SumToPlan plan{make_indexer(ks, kt), make_indexer(rs, rt)};
  at::Tensor out = new_output(size, grad_y.options());
  if (out.numel() > 0) TM_LAUNCH(add_backward, grad_y, out, dyc, plan);
  return out;
}

// ---- CPU kernels ---------------------------------------------------------------------------

// y[i] = a[i] + b[i] for s <= i < e, same-shape contiguous inputs; compiled per ISA (simd.h).
template <typename T>
TM_SIMD static void add_flat(T* __restrict y, const T* __restrict a, const T* __restrict b, int64_t s, int64_t e) {
  for (int64_t i = s; i < e; ++i) y[i] = from_acc<T>(to_acc(a[i]) + to_acc(b[i]));
}

// y[i] = a[i sa] + b[i sb] for 0 <= i < len: one run of a broadcast (for_each_run).
template <typename T>
TM_SIMD static void add_run(T* __restrict y, const T* __restrict a, int64_t sa, const T* __restrict b, int64_t sb,
                            int64_t len) {
  map2_run(y, a, sa, b, sb, len, [](T u, T v) { return from_acc<T>(to_acc(u) + to_acc(v)); });
}

// y[i] = a[i] + b[i] (in acc_t for the half types); a, b read through the broadcast offsets.
template <typename T>
static void add_forward_kernel(T* y, const T* a, const T* b, const Broadcast2& bc, int64_t n) {
  const bool flat = bc.ndim == 1 && bc.stride_a[0] == 1 && bc.stride_b[0] == 1;
  at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
    if (flat)  // (float16 in float blocks, its conversions on F16C: half_convert.h)
      return in_float_blocks(
          y, s, e, [](auto* o, const auto* u, const auto* v, int64_t len) { add_flat(o, u, v, 0, len); }, a, b);
    for_each_run(bc, s, e, [&](int64_t i, int64_t len, int64_t oa, int64_t sa, int64_t ob, int64_t sb) {
      if constexpr (std::is_same_v<T, c10::Half>) {  // each run in float blocks, as above
        float fa[kHalfBlock], fb[kHalfBlock], fy[kHalfBlock];
        for (int64_t c = 0; c < len; c += kHalfBlock) {
          const int64_t n = std::min(kHalfBlock, len - c);
          const auto [pa, qa] = widen_strided(fa, a + oa + c * sa, sa, n);
          const auto [pb, qb] = widen_strided(fb, b + ob + c * sb, sb, n);
          add_run(fy, pa, qa, pb, qb, n);
          narrow_half(y + i + c, fy, n);
        }
      } else {
        add_run(y + i, a + oa, sa, b + ob, sb, len);
      }
    });
  });
}

// acc[i] += sum_r x[r s + i] for 0 <= i < len, r in order: R rows, stride s, of a block of columns.
template <typename T>
TM_SIMD static void add_rows_into(acc_t<T>* __restrict acc, const T* __restrict x, int64_t R, int64_t s, int64_t len) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < len; ++i) acc[i] += to_acc(x[r * s + i]);
}

// sum_{0 <= i < len} x[i] in acc_t, vectorised: simd.h's row_sum (four chains of 64-byte vectors),
// whose order depends on len alone, not on the CPU (the half types' runs summed by half_row_sum keep it).
template <typename T>
TM_SIMD static acc_t<T> sum_run(const T* __restrict x, int64_t len) {
  return row_sum(x, len);
}

// Offsets of the elements of an Indexer, in order, walked as an odometer (no division per step).
struct Odometer {
  const Indexer& ix;
  int64_t idx[kMaxDims] = {}, off = 0;
  void next(int ndim) {  // advance over dims [0, ndim)
    for (int d = ndim - 1; d >= 0; --d) {
      off += ix.stride[d];
      if (++idx[d] < ix.size[d]) return;
      off -= ix.stride[d] * ix.size[d];
      idx[d] = 0;
    }
  }
};

// out[o] = sum_r dy[kept(o) + reduced(r)], in acc_t, in a fixed order (deterministic).
template <typename T>
static void add_backward_kernel(T* out, const T* dy, const SumToPlan& p) {
  using A = acc_t<T>;
  const Indexer &kd = p.kept, &rd = p.reduced;
  const int64_t O = kd.numel, R = rd.numel;
  // The innermost reduced dim (its length L, stride sL) is summed as a run, the others walked.
  const int last = rd.ndim - 1;
  const int64_t L = last >= 0 ? rd.size[last] : 1, sL = last >= 0 ? rd.stride[last] : 0, runs = L ? R / L : 0;
  if (kd.ndim >= 1 && kd.stride[kd.ndim - 1] == 1) {
    // The innermost kept dim is contiguous (dy [R, C] to [C], or [A, B, C] to [A, 1, C]): for
    // each index of the outer kept dims, add the reduced rows into a block of columns.
    Indexer outer = kd;  // the kept dims but the innermost
    outer.ndim -= 1;
    const int64_t cols = kd.size[kd.ndim - 1];
    constexpr int64_t kCols = 256;
    const int64_t blocks = (cols + kCols - 1) / kCols;
    at::parallel_for(0, O / cols * blocks, std::max<int64_t>(1, kGrain / std::max<int64_t>(R * kCols, 1)),
                     [&](int64_t j0, int64_t j1) {
      A acc[kCols];
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t ko = j / blocks, c = j % blocks * kCols, len = std::min(kCols, cols - c);
        const T* base = dy + outer.offset(ko) + c;
        for (int64_t i = 0; i < len; ++i) acc[i] = A(0);
        Odometer rows{rd};
        for (int64_t q = 0; q < runs; ++q, rows.next(last)) {
          if constexpr (std::is_same_v<T, c10::Half>)
            if (add_half_rows(acc, base + rows.off, L, sL, len)) continue;  // F16C in the add's loop
          add_rows_into(acc, base + rows.off, L, sL, len);
        }
        for (int64_t i = 0; i < len; ++i) out[ko * cols + c + i] = static_cast<T>(acc[i]);
      }
    });
    return;
  }
  if (O == 1 && rd.ndim == 1 && rd.stride[0] == 1) {  // everything to one number: blocks on all threads
    out[0] = static_cast<T>(blocked_sum<1, A>(R, [&](int64_t i0, int64_t i1, std::array<A, 1>& s) {
      s[0] += sum_run(dy + i0, i1 - i0);
    })[0]);
    return;
  }
  // Otherwise per output: a run vectorised when contiguous (a per-channel bias: [N, C, H, W] to
  // [C, 1, 1]).
  // The half types: a contiguous run summed as it is converted (AVX-512); else float16 widened on
  // F16C first (half_convert.h), then the float sum_run: the same order, the same bits.
  constexpr bool kHalf = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;
  constexpr bool kWiden = std::is_same_v<T, c10::Half>;
  const bool vec = sL == 1 && L >= 16;
  auto run_sum = [&](const T* x, float* fx) -> A {  // one run of the innermost reduced dim
    if (vec) {
      if constexpr (kHalf) {
        float s;
        if (half_row_sum(x, L, &s)) return s;
      }
      if constexpr (kWiden) return widen_half(fx, x, L), sum_run(fx, L);
      else return sum_run(x, L);
    }
    A s = A(0);
    for (int64_t r = 0; r < L; ++r) s += static_cast<A>(x[r * sL]);  // short or strided: inline
    return s;
  };
  at::parallel_for(0, O, std::max<int64_t>(1, kGrain / std::max<int64_t>(R, 1)), [&](int64_t o0, int64_t o1) {
    std::vector<float> fbuf(kWiden && vec ? L : 0);
    float* fx = fbuf.data();
    for (int64_t o = o0; o < o1; ++o) {
      const T* base = dy + (kd.ndim == 1 ? o * kd.stride[0] : kd.offset(o));
      if (rd.ndim <= 1) {  // one run per output (the common [N, C] to [N, 1]): no odometer
        out[o] = static_cast<T>(run_sum(base, fx));
        continue;
      }
      A acc = A(0);
      Odometer run{rd};
      for (int64_t q = 0; q < runs; ++q, run.next(last)) acc += run_sum(base + run.off, fx);
      out[o] = static_cast<T>(acc);
    }
  });
}

void add_forward_cpu(at::TensorBase& y, const at::TensorBase& a, const at::TensorBase& b, const Broadcast2& bc) {
  TM_DISPATCH_FLOATING(y.scalar_type(), "add_forward_cpu", [&] {
    add_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), bc,
                                 y.numel());
  });
}

void add_backward_cpu(at::TensorBase& out, const at::TensorBase& dy, const SumToPlan& plan) {
  TM_DISPATCH_FLOATING(out.scalar_type(), "add_backward_cpu", [&] {
    add_backward_kernel<scalar_t>(out.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), plan);
  });
}

static void register_glue(torch::Library& m) {
  m.impl("add_forward", &add_forward);
  m.impl("add_backward", &add_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
