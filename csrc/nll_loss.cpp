// NLLLoss.  x [N, C, d1, ...] ([C] unbatched), class indices t [N, d1, ...] ([] unbatched), int64
// or uint8 as torch; element i = (n, d) with d the flat index over d1, ... (x seen as [N, C, D]).
//   Forward:  l_i = -w[t_i] x[n, t_i, d] (w = 1 without weight); l_i = 0 where t_i == ignore_index.
//             y = l (none), sum_i l_i (sum), sum_i l_i / W (mean), W = sum of w[t_i] over the kept i
//             (returned too; all ignored: 0/0 = NaN, as torch).
//   Backward: dx[n, c, d] = -w[c] g_i [c == t_i] over the kept i, 0 elsewhere,
//             g_i = dy_i (none), dy (sum), dy / W (mean). dx is linear in dy and never reads x.
// A target outside [0, C) that is not ignore_index raises an IndexError naming it.
// Sums are deterministic and blocked (loss_reduce.h); the half types compute in float.
#include "loss_reduce.h"
#include "ops.h"

#include <cstring>

#include <atomic>

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

namespace {
// The checks of both ops; the [N, C, D] view of x and the shape of the unreduced loss.
struct NllShape {
  int64_t N, C, D;
  std::vector<int64_t> loss;
};

NllShape nll_checks(const char* op, at::IntArrayRef in, const at::Tensor& like, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, int64_t reduction) {
  // torch's checks in torch's order where the exception types differ (see common.h)
  check_reduction(op, reduction);
  check_same_device(op, "input", like, "target", target);
  TORCH_CHECK_VALUE(!in.empty(), "torchmodules.", op, ": input must have 1 or more dims ([C], [N, C] or ",
                    "[N, C, d1, ...]), got shape ", in);
  check_class_target_shape(op, in, target);
  // uint8 as torch: its (N, C, d1, ...) kernel takes int64 only (an empty target passes).
  const bool byte_ok = in.size() <= 2 || target.numel() == 0;
  TORCH_CHECK(target.scalar_type() == at::kLong || (target.scalar_type() == at::kByte && byte_ok), "torchmodules.",
              op, ": target must hold int64 ", in.size() <= 2 ? "(or uint8) " : "", "class indices, got ",
              target.scalar_type(), " with shape ", target.sizes(), " for input of shape ", in);
  NllShape s{1, in[0], 1, {}};
  if (in.size() > 1) {
    s = NllShape{in[0], in[1], 1, std::vector<int64_t>(target.sizes().begin(), target.sizes().end())};
    for (size_t k = 2; k < in.size(); ++k) s.D *= in[k];
  }
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == s.C, "torchmodules.", op, ": weight must have shape [", s.C,
                "] (one per class) for input of shape ", in, ", got shape ", weight->sizes());
    check_same_dtype_device(op, "input", like, "weight", *weight);
  }
  return s;
}

at::Tensor weight_or_undefined(const std::optional<at::Tensor>& weight) {
  return weight.has_value() && weight->defined() ? weight->contiguous() : at::Tensor();
}

void raise_bad(const char* op, const NllBad& bad, const at::Tensor& target, const NllArgs& a) {
  TORCH_CHECK_INDEX(bad.index < 0, "torchmodules.", op, ": target ", bad.value, " is out of bounds: class indices ",
                    "must lie in [0, ", a.C, ") or equal ignore_index (", a.ignore_index, "); found at flat index ",
                    bad.index, " of target of shape ", target.sizes());
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> nll_loss_forward(const at::Tensor& x, const at::Tensor& target,
                                                    const std::optional<at::Tensor>& weight, int64_t reduction,
                                                    int64_t ignore_index) {
  const char* op = "nll_loss";
  const NllShape s = nll_checks(op, x.sizes(), x, target, weight, reduction);
  check_floating(op, "input", x);  // after the target's checks, as torch's kernel
  const NllArgs a{s.N, s.C, s.D, reduction, ignore_index};
  const at::Tensor xc = x.contiguous(), tc = target.contiguous(), wc = weight_or_undefined(weight);
  at::Tensor out = new_output(reduction == kNone ? at::IntArrayRef(s.loss) : at::IntArrayRef(), x.options());
  at::Tensor total_weight = new_output({}, x.options().dtype(acc_dtype(x.scalar_type())));
  NllBad bad;
  TM_LAUNCH(nll_loss_forward, x, out, total_weight, bad, xc, tc, wc, a);  // always: writes W (and y for n = 0)
  raise_bad(op, bad, target, a);
  return {out, total_weight};
}

at::Tensor nll_loss_backward(const at::Tensor& grad_y, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             const at::Tensor& total_weight, c10::SymIntArrayRef sym_size, int64_t reduction,
                             int64_t ignore_index) {
  const char* op = "nll_loss_backward";
  const at::IntArrayRef size = C10_AS_INTARRAYREF_SLOW(sym_size);
  check_floating(op, "grad_y", grad_y);
  const NllShape s = nll_checks(op, size, grad_y, target, weight, reduction);
  const bool ok = reduction == kNone ? grad_y.sizes() == at::IntArrayRef(s.loss) : grad_y.dim() == 0;
  TORCH_CHECK(ok, "torchmodules.", op, ": grad_y has shape ", grad_y.sizes(), ", expected ",
              reduction == kNone ? at::IntArrayRef(s.loss) : at::IntArrayRef(), " for reduction ", reduction);
  check_same_device(op, "grad_y", grad_y, "total_weight", total_weight);
  TORCH_CHECK(total_weight.dim() == 0 && total_weight.scalar_type() == acc_dtype(grad_y.scalar_type()),
              "torchmodules.", op, ": total_weight must be a 0-d ", acc_dtype(grad_y.scalar_type()),
              " tensor (the forward's second output), got ", total_weight.scalar_type(), " of shape ",
              total_weight.sizes());
  const NllArgs a{s.N, s.C, s.D, reduction, ignore_index};
  const at::Tensor dyc = grad_y.contiguous(), tc = target.contiguous(), wc = weight_or_undefined(weight);
  at::Tensor dx = new_output(size, grad_y.options());
  NllBad bad;
  if (dx.numel() > 0) TM_LAUNCH(nll_loss_backward, grad_y, dx, bad, dyc, tc, wc, total_weight, a);
  raise_bad(op, bad, target, a);
  return dx;
}

// ---- CPU kernels ---------------------------------------------------------------------------

// The first i with target[i] outside [0, C) and not ignore_index (the smallest such i, so the
// error names the same element whatever the threads), or -1.
template <typename I>
static int64_t first_bad_target(const I* tgt, int64_t n, const NllArgs& a) {
  std::atomic<int64_t> first{n};
  at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e && i < first.load(std::memory_order_relaxed); ++i) {
      const int64_t t = static_cast<int64_t>(tgt[i]);
      if (t != a.ignore_index && (t < 0 || t >= a.C)) {
        int64_t cur = first.load();
        while (i < cur && !first.compare_exchange_weak(cur, i)) {
        }
        break;
      }
    }
  });
  return first.load() < n ? first.load() : -1;
}

// l_i = -w[t_i] x[n, t_i, d] for kept i (none: y_i = l_i, 0 where ignored);
// mean and sum: the blocked sums of l_i and of w[t_i] over the kept i, y = sum l [/ W].
// kD1: D == 1 (x is [N, C]), so i = n. Otherwise a cursor walks (n, d) along i, from one division
// per range of i: a division per element took more time than the rest of the loop.
template <typename T, typename I, bool kD1>
static void nll_forward_kernel(T* y, acc_t<T>* total_weight, const T* x, const I* tgt, const T* w, const NllArgs& a) {
  using A = acc_t<T>;
  const int64_t n = a.N * a.D, slab = a.C * a.D;
  struct Cursor {  // element i = n D + d: x[n, t, d] at row + t D with row = n C D + d
    int64_t row, d;
  };
  auto start = [&](int64_t i) -> Cursor {
    if (kD1) return {i * a.C, 0};
    const int64_t nn = i / a.D, d = i - nn * a.D;
    return {nn * slab + d, d};
  };
  auto at_target = [&](Cursor& c, int64_t t) -> A {  // x[n, t, d] of the cursor's i; then steps to i + 1
    const A v = static_cast<A>(x[c.row + (kD1 ? t : t * a.D)]);
    if (kD1) {
      c.row += a.C;
    } else if (++c.d == a.D) {
      c.d = 0, c.row += slab - a.D + 1;
    } else {
      ++c.row;
    }
    return v;
  };
  if (a.reduction == kNone) {
    at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) {
      Cursor c = start(s);
      for (int64_t i = s; i < e; ++i) {
        const int64_t t = static_cast<int64_t>(tgt[i]);
        if (t == a.ignore_index) {
          y[i] = static_cast<T>(A(0));
          at_target(c, 0);
          continue;
        }
        const A wv = w ? static_cast<A>(w[t]) : A(1);
        y[i] = static_cast<T>(-at_target(c, t) * wv);
      }
    });
    *total_weight = A(0);
    return;
  }
  const auto s = blocked_sum<2, A>(n, [&](int64_t i0, int64_t i1, std::array<A, 2>& acc) {
    Cursor c = start(i0);
    lane_sum<2, A>(i0, i1, acc, [&](int64_t i, std::array<A, 2>& v) {  // (i in order, i0 to i1)
      const int64_t t = static_cast<int64_t>(tgt[i]);
      if (t == a.ignore_index) {
        at_target(c, 0);
        return;
      }
      const A wv = w ? static_cast<A>(w[t]) : A(1);
      v[0] += -at_target(c, t) * wv;
      v[1] += wv;
    });
  });
  *total_weight = s[1];
  y[0] = static_cast<T>(a.reduction == kMean ? s[0] / s[1] : s[0]);
}

// dx[n, c, d] = w[c] * -g_i at c = t_i for the kept i, 0 elsewhere (g_i as in the file comment).
template <typename T, typename I>
static void nll_backward_kernel(T* dx, const T* dy, const I* tgt, const T* w, acc_t<T> total_weight,
                                const NllArgs& a) {
  using A = acc_t<T>;
  const int64_t slab = a.C * a.D;  // dx[n] is C x D
  at::parallel_for(0, a.N, std::max<int64_t>(1, kGrain / std::max<int64_t>(slab, 1)), [&](int64_t n0, int64_t n1) {
    // The range's rows zeroed at once (+0.0 is all zero bits in every floating type), then one write per target.
    std::memset(dx + n0 * slab, 0, (n1 - n0) * slab * sizeof(T));
    // -g for a reduced loss, the same for every i (converted once: a half type's scalar conversion
    // is a dozen instructions)
    const A neg_g = a.reduction == kNone ? A(0)
                    : a.reduction == kMean ? -(static_cast<A>(dy[0]) / total_weight) : -static_cast<A>(dy[0]);
    for (int64_t nn = n0; nn < n1; ++nn) {
      T* row = dx + nn * slab;
      for (int64_t d = 0; d < a.D; ++d) {
        const int64_t i = nn * a.D + d, t = static_cast<int64_t>(tgt[i]);
        if (t == a.ignore_index) continue;
        const A ng = a.reduction == kNone ? -static_cast<A>(dy[i]) : neg_g;
        row[t * a.D + d] = static_cast<T>(w ? static_cast<A>(w[t]) * ng : ng);
      }
    }
  });
}

// Runs f(I{}) with I the target's index type.
template <typename F>
static void dispatch_target(const at::TensorBase& target, const F& f) {
  if (target.scalar_type() == at::kByte) f(uint8_t{});
  else f(int64_t{});
}

void nll_loss_forward_cpu(at::TensorBase& out, at::TensorBase& total_weight, NllBad& bad, const at::TensorBase& x,
                          const at::TensorBase& target, const at::TensorBase& weight, const NllArgs& a) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "nll_loss_forward_cpu", [&] {
    dispatch_target(target, [&](auto tag) {
      using I = decltype(tag);
      const I* tgt = target.data_ptr<I>();
      bad.index = first_bad_target(tgt, a.N * a.D, a);
      if (bad.index >= 0) {
        bad.value = static_cast<int64_t>(tgt[bad.index]);
        return;
      }
      auto* pw = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
      auto* ptw = total_weight.data_ptr<acc_t<scalar_t>>();
      if (a.D == 1) nll_forward_kernel<scalar_t, I, true>(out.data_ptr<scalar_t>(), ptw, x.data_ptr<scalar_t>(), tgt, pw, a);
      else nll_forward_kernel<scalar_t, I, false>(out.data_ptr<scalar_t>(), ptw, x.data_ptr<scalar_t>(), tgt, pw, a);
    });
  });
}

void nll_loss_backward_cpu(at::TensorBase& dx, NllBad& bad, const at::TensorBase& dy, const at::TensorBase& target,
                           const at::TensorBase& weight, const at::TensorBase& total_weight, const NllArgs& a) {
  TM_DISPATCH_FLOATING(dx.scalar_type(), "nll_loss_backward_cpu", [&] {
    dispatch_target(target, [&](auto tag) {
      using I = decltype(tag);
      const I* tgt = target.data_ptr<I>();
      bad.index = first_bad_target(tgt, a.N * a.D, a);
      if (bad.index >= 0) {
        bad.value = static_cast<int64_t>(tgt[bad.index]);
        return;
      }
      nll_backward_kernel<scalar_t, I>(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), tgt,
                                       weight.defined() ? weight.data_ptr<scalar_t>() : nullptr,
                                       *total_weight.data_ptr<acc_t<scalar_t>>(), a);
    });
  });
}

static void register_glue(torch::Library& m) {
  m.impl("nll_loss_forward", &nll_loss_forward);
  m.impl("nll_loss_backward", &nll_loss_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
