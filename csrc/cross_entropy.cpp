// CrossEntropy, fused with its log-softmax (formulas with the schemas in csrc/ops.cpp).
// Per row r of C classes, u the weighted target (u_c = (1-eps) w_t [c == t] + (eps/C) w_c for a
// class index t, w_c ((1-eps) q_c + eps/C) for probabilities q), U = sum_c u_c:
//   Forward:  one online pass over x keeps m = max x_c, s = sum exp(x_c - m) (rescaled by
//             exp(m - m') when m grows to m'), and, where u has more than one nonzero entry,
//             a = sum u_c (m - x_c) (grown by (m' - m) sum u) and up = sum u_c. Then
//             lse = (m, log s) saved,  loss_r = w_t ((m - x_t) + log s)   (class index, eps = 0)
//                                      = (1-eps) w_t ((m - x_t) + log s) + (eps/C) (a + up log s)
//                                      = a + up log s                         (probabilities).
//             Rows are reduced in a fixed order (fixed chunks, then the chunks in order).
//   Backward: dx_c = G (U p_c - u_c), p_c = exp(lp_c), G = g_r / den (mean) or g_r;
//             dq_c = -(1-eps) G w_c lp_c, with the log-probability lp_c = (x_c - m) - log s (CeLse, ops.h).
//   Double backward: see csrc/ops.cpp.
// Edge values follow torch: -inf logits add 0 to s and +inf to a, so 0 * inf gives NaN where
// torch's log_softmax * target does; an all -inf row gives NaN. Ignored rows give exactly 0, loss
// and gradient, without reading their logits: where their logits are not finite (all -inf, NaN) torch's
// gradient is NaN there instead (its log_softmax backward multiplies 0 by exp(NaN)).
// A class index outside [0, C) that is not ignore_index raises an IndexError naming it: the
// forward's kernels count them into `bad` (on CUDA a check kernel queued before the loss, the host
// waiting on its event only: kernels/target_check.cuh; skipped while a CUDA graph is captured,
// where the rows are NaN).
// The backward kernels write NaN rows for such targets rather than reading out of bounds.
#include "half_convert.h"
#include "ops.h"
#include "short_rows.h"
#include "simd.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

namespace torchmodules {

// ---- glue --------------------------------------------------------------------------------

namespace {

constexpr const char* kOp = "cross_entropy";

// The input's shape without its class dim (dim 1; dim 0 of an unbatched (C,) input).
std::vector<int64_t> ce_row_shape(const at::Tensor& input) {
  std::vector<int64_t> s(input.sizes().begin(), input.sizes().end());
  s.erase(s.begin() + (input.dim() == 1 ? 0 : 1));
  return s;
}

// The saved lse's shape: the row shape and the two terms (m, log s) of each row (CeLse, ops.h).
std::vector<int64_t> ce_lse_shape(const at::Tensor& input) {
  std::vector<int64_t> s = ce_row_shape(input);
  s.push_back(2);
  return s;
}

at::ScalarType ce_acc_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

CeParams ce_params(const char* op, const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
                   int64_t reduction, int64_t ignore_index, double smoothing) {
  // torch's checks in torch's order where the exception types differ (see common.h).
  CeParams p;
  p.prob = input.sizes() == target.sizes();  // torch's rule: same shape = probabilities
  if (p.prob) {
    TORCH_CHECK(target.is_floating_point(), "torchmodules.", op, ": a target of the input's shape ", target.sizes(),
                " holds class probabilities and must be floating, got ", target.scalar_type());
    TORCH_CHECK(ignore_index < 0, "torchmodules.", op, ": ignore_index (", ignore_index,
                ") is not supported for class-probability targets");
  }
  TORCH_CHECK(smoothing <= 1.0, "torchmodules.", op, ": label_smoothing must be between 0.0 and 1.0, got ",
              smoothing);
  check_floating(op, "input", input);
  TORCH_CHECK_INDEX(input.dim() >= 1, "torchmodules.", op, ": input of shape ", input.sizes(),
                    " has no class dim (dim 1, or dim 0 of an unbatched input)");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "torchmodules.", op, ": reduction must be 0 (none), 1 (mean) or ",
              "2 (sum), got ", reduction);
  check_same_device(op, "input", input, "target", target);
  const int64_t cdim = input.dim() == 1 ? 0 : 1;
  p.outer = cdim == 0 ? 1 : input.size(0);
  p.classes = input.size(cdim);
  p.inner = 1;
  for (int64_t d = cdim + 1; d < input.dim(); ++d) p.inner *= input.size(d);
  p.reduction = reduction;
  p.ignore_index = ignore_index;
  p.smoothing = smoothing > 0.0 ? smoothing : 0.0;  // torch smooths only for eps > 0
  if (p.prob) {
    check_same_dtype_device(op, "input", input, "target", target);
  } else {
    check_class_target_shape(op, input.sizes(), target);
    TORCH_CHECK(target.scalar_type() == at::kLong, "torchmodules.", op, ": target must be int64 class indices (or ",
                "probabilities of the input's shape ", input.sizes(), "), got ", target.scalar_type(), " with shape ",
                target.sizes(), input.dim() > 2 && target.scalar_type() == at::kByte
                    ? " (uint8 only for inputs (C) and (N, C), as torch)" : "");
  }
  if (weight.defined()) {
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == p.classes, "torchmodules.", op, ": weight of shape ",
                weight.sizes(), " must have one entry per class, [", p.classes, "]");
    check_same_dtype_device(op, "input", input, "weight", weight);
  }
  return p;
}

// The saved lse and total_weight of a backward, and grad_loss, as the forward made them.
void ce_check_saved(const char* op, const at::Tensor& input, const at::Tensor& grad_loss, const at::Tensor& lse,
                    const at::Tensor& total_weight, const CeParams& p) {
  check_same_dtype_device(op, "input", input, "grad_loss", grad_loss);
  const std::vector<int64_t> rows = ce_row_shape(input);
  TORCH_CHECK(p.reduction == 0 ? grad_loss.sizes() == at::IntArrayRef(rows) : grad_loss.dim() == 0,
              "torchmodules.", op, ": grad_loss of shape ", grad_loss.sizes(), " does not match the loss of input ",
              input.sizes(), " with reduction ", p.reduction);
  TORCH_CHECK(lse.scalar_type() == ce_acc_dtype(input) && total_weight.scalar_type() == ce_acc_dtype(input),
              "torchmodules.", op, ": lse and total_weight must be ", ce_acc_dtype(input), ", got ", lse.scalar_type(),
              " and ", total_weight.scalar_type());
  check_same_device(op, "input", input, "lse", lse);
  check_same_device(op, "input", input, "total_weight", total_weight);
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(ce_lse_shape(input)) && total_weight.numel() == 2, "torchmodules.", op,
              ": lse of shape ", lse.sizes(), " and total_weight of shape ", total_weight.sizes(),
              " are not those of input ", input.sizes());
}

// An IndexError naming a target out of range if bad = [count, 1 + row] (on the host) counts one.
void ce_raise_bad_targets(const at::Tensor& bad, const at::Tensor& target, const CeParams& p) {
  const int64_t count = bad.data_ptr<int64_t>()[0];
  if (count == 0) return;
  const int64_t row = bad.data_ptr<int64_t>()[1] - 1;
  const int64_t value = target.reshape({-1})[row].item<int64_t>();
  TORCH_CHECK_INDEX(false, "torchmodules.", kOp, ": target ", value, " is out of bounds for ", p.classes,
                    " classes (at flat index ", row, "; ", count, " target(s) out of range, ignore_index is ",
                    p.ignore_index, ")");
}

// No classes (C = 0), as torch: a class-index target other than ignore_index is out of range; a row's
// loss is 0 (an empty sum; -0.0 for probabilities, torch's -sum), NaN with label smoothing (torch adds
// (eps / C) * 0 = 0 * inf); the mean is NaN (nothing kept; for probabilities torch's NaN of an empty
// input). No kernel runs (they assume C >= 1).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_no_classes(const at::Tensor& input, const at::Tensor& target,
                                                             const CeParams& p) {
  const std::vector<int64_t> rows = ce_row_shape(input);
  if (!p.prob && target.numel() > 0 && !(input.is_cuda() && cuda_stream_capturing(input))) {
    const at::Tensor tc = target.contiguous();
    const at::Tensor out = (tc.reshape({-1}) != p.ignore_index).nonzero().cpu();  // one sync
    if (out.size(0) > 0)
      ce_raise_bad_targets(at::tensor({out.size(0), out[-1][0].item<int64_t>() + 1}, at::kLong), tc, p);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double row = p.prob ? -0.0 : p.smoothing > 0 ? nan : 0.0;
  const auto acc = input.options().dtype(ce_acc_dtype(input));
  at::Tensor loss = p.reduction == 0 ? at::full(rows, row, input.options())
                                     : at::full({}, p.reduction == 1 ? nan : row, input.options());
  // lse: m = -inf, log s = log 0
  return {loss, at::full(ce_lse_shape(input), -std::numeric_limits<double>::infinity(), acc), at::zeros({2}, acc)};
}

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }
at::Tensor contig(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& input, const at::Tensor& target,
                                                                     const std::optional<at::Tensor>& weight,
                                                                     int64_t reduction, int64_t ignore_index,
                                                                     double label_smoothing) {
  const at::Tensor w = opt(weight);
  const CeParams p = ce_params(kOp, input, target, w, reduction, ignore_index, label_smoothing);
  if (p.classes == 0) return ce_no_classes(input, target, p);
  const at::Tensor xc = input.contiguous(), tc = target.contiguous(), wc = contig(w);
  const std::vector<int64_t> rows = ce_row_shape(input);
  const auto acc = input.options().dtype(ce_acc_dtype(input));
  at::Tensor loss = new_output(reduction == 0 ? at::IntArrayRef(rows) : at::IntArrayRef(), input.options());
  at::Tensor lse = new_output(ce_lse_shape(input), acc), total_weight = new_output({2}, acc);
  at::Tensor bad = p.prob ? at::Tensor() : at::zeros({2}, at::kLong);  // on the host, for every device
  TM_LAUNCH(cross_entropy_forward, input, loss, lse, total_weight, bad, xc, tc, wc, p);
  if (bad.defined()) ce_raise_bad_targets(bad, tc, p);
  return {loss, lse, total_weight};
}

// The backward's checks and launch, into dx (x's shape, contiguous: a new tensor, or the input
// itself for cross_entropy_backward_: every kernel reads an element of x before it writes dx
// there). Returns dq, undefined unless target_grad.
static at::Tensor ce_backward_into(const char* op, at::Tensor dx, const at::Tensor& grad_loss,
                                   const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                   const at::Tensor& lse, const at::Tensor& total_weight, int64_t reduction,
                                   int64_t ignore_index, double label_smoothing, bool target_grad) {
  const at::Tensor w = opt(weight);
  const CeParams p = ce_params(op, input, target, w, reduction, ignore_index, label_smoothing);
  ce_check_saved(op, input, grad_loss, lse, total_weight, p);
  TORCH_CHECK(!target_grad || p.prob, "torchmodules.", op, ": class indices have no gradient");
  const at::Tensor gc = grad_loss.contiguous(), xc = input.contiguous(), tc = target.contiguous(), wc = contig(w),
                   lc = lse.contiguous(), twc = total_weight.contiguous();
  at::Tensor dq = target_grad ? new_output(target.sizes(), target.options()) : at::Tensor();
  if (input.numel() > 0) TM_LAUNCH(cross_entropy_backward, input, dx, dq, gc, xc, tc, wc, lc, twc, p);
  return dq;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input,
                                                          const at::Tensor& target,
                                                          const std::optional<at::Tensor>& weight,
                                                          const at::Tensor& lse, const at::Tensor& total_weight,
                                                          int64_t reduction, int64_t ignore_index,
                                                          double label_smoothing, bool target_grad) {
  at::Tensor dx = new_output(input.sizes(), input.options());
  const at::Tensor dq = ce_backward_into("cross_entropy_backward", dx, grad_loss, input, target, weight, lse,
                                         total_weight, reduction, ignore_index, label_smoothing, target_grad);
  return {dx, target_grad ? dq : new_output({0}, input.options())};
}

void cross_entropy_backward_inplace(at::Tensor& input, const at::Tensor& grad_loss, const at::Tensor& target,
                                    const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                    const at::Tensor& total_weight, int64_t reduction, int64_t ignore_index,
                                    double label_smoothing) {
  const char* op = "cross_entropy_backward_";
  TORCH_CHECK(input.is_contiguous(), "torchmodules.", op, ": input of shape ", input.sizes(), " and strides ",
              input.strides(), " is not contiguous (its storage cannot hold the contiguous gradient)");
  ce_backward_into(op, input, grad_loss, input, target, weight, lse, total_weight, reduction, ignore_index,
                   label_smoothing, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_double_backward(
    const std::optional<at::Tensor>& gg_input, const std::optional<at::Tensor>& gg_target, const at::Tensor& grad_loss,
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, const at::Tensor& lse,
    const at::Tensor& total_weight, int64_t reduction, int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy_double_backward";
  const at::Tensor w = opt(weight), gg = opt(gg_input), hh = opt(gg_target);
  const CeParams p = ce_params(op, input, target, w, reduction, ignore_index, label_smoothing);
  ce_check_saved(op, input, grad_loss, lse, total_weight, p);
  if (gg.defined()) {
    check_same_dtype_device(op, "input", input, "gg_input", gg);
    TORCH_CHECK(gg.sizes() == input.sizes(), "torchmodules.", op, ": gg_input of shape ", gg.sizes(),
                " does not match input ", input.sizes());
  }
  if (hh.defined()) {
    TORCH_CHECK(p.prob, "torchmodules.", op, ": gg_target given for class indices");
    check_same_dtype_device(op, "input", input, "gg_target", hh);
    TORCH_CHECK(hh.sizes() == input.sizes(), "torchmodules.", op, ": gg_target of shape ", hh.sizes(),
                " does not match input ", input.sizes());
  }
  const at::Tensor ggc = contig(gg), hhc = contig(hh), gc = grad_loss.contiguous(), xc = input.contiguous(),
                   tc = target.contiguous(), wc = contig(w), lc = lse.contiguous(), twc = total_weight.contiguous();
  at::Tensor d_g = new_output(grad_loss.sizes(), grad_loss.options());
  at::Tensor d_x = new_output(input.sizes(), input.options());
  at::Tensor d_q = p.prob ? new_output(target.sizes(), target.options()) : at::Tensor();
  if (p.classes == 0) d_g.zero_();  // the gradient (empty) does not depend on grad_loss
  else TM_LAUNCH(cross_entropy_double_backward, input, d_g, d_x, d_q, ggc, hhc, gc, xc, tc, wc, lc, twc, p);
  return {d_g, d_x, p.prob ? d_q : new_output({0}, input.options())};
}

// ---- CPU kernels ---------------------------------------------------------------------------
// A row at stride `inner`; rows run in parallel. Sums over rows go in fixed chunks of kChunk
// rows, then the chunks in order, so the result does not depend on the thread count.

namespace {

constexpr int64_t kChunk = 1024;

inline float tm_exp(float v) { return std::exp(v); }
inline double tm_exp(double v) { return std::exp(v); }
inline float tm_log(float v) { return std::log(v); }
inline double tm_log(double v) { return std::log(v); }

template <typename A>
A nan_v() { return std::numeric_limits<A>::quiet_NaN(); }

// Class indices, label smoothing, mean, kept targets of total weight 0: torch divides its nll
// and smoothing parts by that 0 apart, and the nll part is 0 / 0 (each kept w_t is 0 when no
// weight is negative): the loss and the kept rows' gradient are NaN (ours would be +-inf).
inline bool ce_smooth_zero_den(const CeParams& P, double den) {
  return !P.prob && P.smoothing > 0 && P.reduction == 1 && den == 0;
}

// The online pass: m = max x, s = sum exp(x - m), and with kU: up = sum u, a = sum u (m - x).
template <typename A>
struct Online {
  A m = -INFINITY, s = 0, a = 0, up = 0;
  template <bool kU>
  void add(A v, A u) {
    if (v > m) {  // m -> v: s exp(m - v), a + (v - m) up (nothing to rescale while m = -inf)
      if (m != -INFINITY) {
        s *= tm_exp(m - v);
        if (kU) a += (v - m) * up;
      }
      m = v;
    }
    s += v == -INFINITY ? A(0) : tm_exp(v - m);
    if (kU) {
      up += u;
      a += u * (v == -INFINITY ? A(INFINITY) : m - v);
    }
  }
};

// sum exp(x - m) over a block of n elements; with m = -inf (only -inf and NaN in it: the max skips
// NaN) sum exp(x), 0 or NaN (kept).
template <typename T, typename A>
TM_INLINE A block_sum_exp(const T* __restrict x, int64_t n, A m) {
  if (m != -INFINITY) return row_sum_exp(x, n, m);
  A s = 0;
  for (int64_t k = 0; k < n; ++k) s += fast_exp(to_acc(x[k]));
  return s;
}

// The same for a contiguous row, vectorised (simd.h): online a block at a time, with the
// block's max m_b and m' = max(m, m_b):  s = s exp(m - m') + sum_block exp(x - m').
// -inf logits add 0; a NaN makes s NaN (and then the loss, as torch's).
template <typename T>
TM_SIMD void online_lse_contiguous(const T* __restrict x, int64_t n, acc_t<T>* m_out, acc_t<T>* s_out) {
  using A = acc_t<T>;
  constexpr int64_t kBlock = 2048;  // stays in L1 between its two loops
  A m = -INFINITY, s = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    const A m2 = std::max(m, row_max(x + b, e - b));
    const A sb = block_sum_exp(x + b, e - b, m2);
    if (m2 == -INFINITY) {  // only -inf and NaN so far: s is 0 or NaN
      s += sb;
      continue;
    }
    s = b == 0 ? sb : s * fast_exp(m - m2) + sb;  // (the first block: no rescale, s = 0)
    m = m2;
  }
  *m_out = m;
  *s_out = s;
}

// online_lse_contiguous of `rows` contiguous rows of n <= 2048 elements (one block each), m and s to
// m[b], s[b]. A call for a block of rows: a call per row set up fast_exp's constants again for each
// (CrossEntropy's rows of 32-48 classes took 0.75-0.85x torch's time).
template <typename T>
TM_SIMD void rows_lse_contiguous(const T* __restrict x, int64_t n, int64_t rows, acc_t<T>* __restrict m,
                                 acc_t<T>* __restrict s) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict xr = x + b * n;
    m[b] = row_max(xr, n);
    s[b] = block_sum_exp(xr, n, m[b]);
  }
}

// The class-index backward without label smoothing of rows [b0, b1) (at most kPlainRows), contiguous from x
// and dx (row b0's: read in place, or a gathered block): dx_c = G U exp(x_c - m) / s, less G U at the target
// (U = keep w_t); ignored rows 0, out-of-range ones NaN. The rows' two exps (1 / s, and p_t) are taken first,
// vectorised across the rows: per row, scalar, with a call per row, they took more time than the rows of 64
// classes themselves. Each x_t is read before any dx is written (dx may be x: cross_entropy_backward_). A
// half type's row is widened into xw, computed in tmp and rounded into dx (C floats each), as the forward's.
constexpr int64_t kPlainRows = 256;
// A contiguous row of dx whose target is not kept: 0 for ignore_index, NaN for a class out of range
// (filled; true), else false.
template <typename T>
bool ce_fill_unkept(T* dxr, int64_t C, int64_t tr, int64_t ignore) {
  if (tr != ignore && tr >= 0 && tr < C) return false;
  std::fill(dxr, dxr + C, static_cast<T>(tr == ignore ? acc_t<T>(0) : nan_v<acc_t<T>>()));
  return true;
}
template <typename A>
struct ScaledExp {  // dx_c = GUs exp(x_c - m), an element of a row (row_map)
  A* dx;
  const A* x;
  A GUs, m;
  TM_INLINE void operator()(int64_t c) const { dx[c] = GUs * fast_exp(x[c] - m); }
};
template <typename T, typename A = acc_t<T>>
TM_SIMD void ce_plain_backward_rows(T* dx, const T* x, const T* g, const int64_t* t, const T* w, const A* lse,
                                    const CeParams& P, A sc, A keep, int64_t b0, int64_t b1, float* xw,
                                    float* tmp) {
  const int64_t C = P.classes, n = b1 - b0;
  A G[kPlainRows], U[kPlainRows], nls[kPlainRows], lp[kPlainRows];
  for (int64_t b = 0; b < n; ++b) {
    const int64_t r = b0 + b, tr = t[r];
    const bool ok = tr != P.ignore_index && tr >= 0 && tr < C;
    const CeLse<A> l = CeLse<A>::load(lse, r);
    G[b] = to_acc(g[P.reduction == 0 ? r : 0]) * sc;
    U[b] = keep * (ok ? (w ? to_acc(w[tr]) : A(1)) : A(0));
    nls[b] = -l.ls;
    lp[b] = ok ? l.log_p(to_acc(x[b * C + tr])) : A(0);
  }
#pragma omp simd
  for (int64_t b = 0; b < n; ++b) {
    const A GUs = G[b] * U[b] * fast_exp(nls[b]);  // G U / s
    lp[b] = G[b] * (U[b] * fast_exp(lp[b]) - U[b]);  // the target's dx
    nls[b] = GUs;
  }
  for (int64_t b = 0; b < n; ++b) {
    const int64_t r = b0 + b, tr = t[r];
    T* dxr = dx + b * C;
    if (ce_fill_unkept(dxr, C, tr, P.ignore_index)) continue;
    if constexpr (sizeof(T) == 2) {  // (on 16-bit elements GCC's loop took 1.3-2x the time)
      widen_run(xw, x + b * C, C);
      row_map<16>(C, ScaledExp<float>{tmp, xw, nls[b], lse[2 * r]});
      narrow_run(dxr, tmp, C);
    } else {
      const ScaledExp<T> f{dxr, x + b * C, nls[b], lse[2 * r]};
      if (dx != x) {
        row_map<64 / sizeof(T)>(C, f);
      } else {  // (in place: row_map's last vector would read some x_c already overwritten)
        for (int64_t c = 0; c < C; ++c) f(c);
      }
    }
    dxr[tr] = from_acc<T>(lp[b]);
  }
}

// A probability row, contiguous: m = max x, s = sum exp(x - m), up = sum u, a = sum u (m - x),
// u_c = w_c (keep q_c + epsc), in two vectorised passes (the online pass's sums, Online<A>::add<true>;
// an all -inf row keeps s = 0, a non-finite a goes to the caller's exact path as before).
// Without q (kQ false: class indices with label smoothing) u_c = w_c. With or without class weights and q
// as template arguments (kW, kQ): a `w ? w[c] : 1` in the loop became a masked load from the null pointer
// per vector (AMD Zen 5: 25x the time of the loop without it, 6.6 ms for a 1024 x 1024 float32 forward).
template <bool kW, bool kQ, typename T, typename A = acc_t<T>>
TM_SIMD void ce_stats_row(const T* __restrict x, const T* __restrict q, const T* __restrict w, int64_t n, A keep,
                          A epsc, A* out /* m, s, up, a */) {
  const A m = row_max(x, n);
  const A shift = m == -A(INFINITY) ? A(0) : m;
  A s = 0, up = 0, a = 0;
#pragma omp simd reduction(+ : s, up, a)
  for (int64_t c = 0; c < n; ++c) {
    const A xv = to_acc(x[c]), u = (kW ? to_acc(w[c]) : A(1)) * (kQ ? keep * to_acc(q[c]) + epsc : A(1));
    s += fast_exp(xv - shift);
    up += u;
    a += u * (m - xv);
  }
  out[0] = m, out[1] = s, out[2] = up, out[3] = a;
}
template <typename T, typename A>
void ce_prob_stats_contiguous(const T* x, const T* q, const T* w, int64_t n, A keep, A epsc, A* out) {
  if (w) ce_stats_row<true, true>(x, q, w, n, keep, epsc, out);
  else ce_stats_row<false, true>(x, q, w, n, keep, epsc, out);
}
template <typename T, typename A>
void ce_smooth_stats_contiguous(const T* x, const T* w, int64_t n, A* out) {
  if (w) ce_stats_row<true, false>(x, x, w, n, A(1), A(0), out);
  else ce_stats_row<false, false>(x, x, w, n, A(1), A(0), out);
}

// dx_c = G (U p_c - u_c), u_c = epsc w_c, and at the target u_t = keep w_t + epsc w_t (kwt = keep w_t): the
// class-index backward with label smoothing on a contiguous row. x_t is read first and every x_c before dx_c
// is written (dx may be x: cross_entropy_backward_).
template <bool kW, typename T, typename A = acc_t<T>>
TM_SIMD void ce_smooth_backward_row(T* dx, const T* x, const T* __restrict w, int64_t n, A G, A U, CeLse<A> l,
                                    A epsc, int64_t tr, A kwt) {
  const A pt = fast_exp(l.log_p(to_acc(x[tr])));
  for (int64_t c = 0; c < n; ++c)
    dx[c] = from_acc<T>(G * (U * fast_exp(l.log_p(to_acc(x[c]))) - epsc * (kW ? to_acc(w[c]) : A(1))));
  dx[tr] = from_acc<T>(G * (U * pt - (kwt + epsc * (kW ? to_acc(w[tr]) : A(1)))));
}

// dx_c = G (U p_c - u_c) and, when asked (kDq), dq_c = -keep G w_c lp_c, on a contiguous
// probability row (U = sum u). dx may be x itself (cross_entropy_backward_): x_c is read before dx_c is
// written, and nothing reads it after. kW, kDq: as above, no masked access through a null pointer.
template <bool kW, bool kDq, typename T, typename A = acc_t<T>>
TM_SIMD void ce_prob_backward_row(T* dx, T* __restrict dq, const T* x, const T* __restrict q, const T* __restrict w,
                                  int64_t n, A G, CeLse<A> l, A keep, A epsc) {
  A U = 0;
#pragma omp simd reduction(+ : U)
  for (int64_t c = 0; c < n; ++c) U += (kW ? to_acc(w[c]) : A(1)) * (keep * to_acc(q[c]) + epsc);
  for (int64_t c = 0; c < n; ++c) {
    const A wc = kW ? to_acc(w[c]) : A(1), xv = to_acc(x[c]), u = wc * (keep * to_acc(q[c]) + epsc);
    const A lp = l.log_p(xv);
    if constexpr (kDq) dq[c] = from_acc<T>(-keep * G * wc * lp);
    dx[c] = from_acc<T>(G * (U * fast_exp(lp) - u));
  }
}
template <typename T, typename A>
void ce_prob_backward_contiguous(T* dx, T* dq, const T* x, const T* q, const T* w, int64_t n, A G, CeLse<A> l,
                                 A keep, A epsc) {
  const auto run = [&](auto kw, auto kdq) {
    ce_prob_backward_row<decltype(kw)::value, decltype(kdq)::value>(dx, dq, x, q, w, n, G, l, keep, epsc);
  };
  if (w) dq ? run(std::true_type{}, std::true_type{}) : run(std::true_type{}, std::false_type{});
  else dq ? run(std::false_type{}, std::true_type{}) : run(std::false_type{}, std::false_type{});
}

// A half type's contiguous rows in float buffers for the row kernels above (their arithmetic is
// in float already), the results rounded once (half_convert.h): float16's conversions on F16C,
// where the kernels' own cost more than their exps; over bfloat16 GCC ran the exp loops on
// 256-bit vectors, over floats on 512-bit ones. k buffers of C floats, and the class weights
// widened once (w). Empty for float and double.
template <typename T>
struct HalfRows {
  static constexpr bool kOn = sizeof(T) == 2;
  int64_t C;
  std::vector<float> buf;
  const float* w = nullptr;
  HalfRows(int64_t classes, int k, const T* weight) : C(classes), buf(kOn ? (k + 1) * classes : 0) {
    if constexpr (kOn)
      if (weight) widen_run(buf.data() + k * C, weight, C), w = buf.data() + k * C;
  }
  float* row(int i) { return buf.data() + i * C; }
  const float* widen(int i, const T* src) {
    if constexpr (kOn) widen_run(row(i), src, C);
    return row(i);
  }
};

// Rows per block of the flat path for short rows (short_rows.h): rows of fewer than kShortRow
// classes, class indices, no smoothing; 0 for every other problem.
inline int64_t ce_short_block(const CeParams& P) {
  const bool flat = !P.prob && !(P.smoothing > 0) && P.classes > 0 && P.classes < kShortRow;
  return flat ? kShortBlock / P.classes : 0;
}

// The forward and backward run every row as a contiguous row of C classes. Rows at stride inner (an
// input [N, C, d1, ...]: row r = (o, i) at x[(o C + c) inner + i]) are gathered a block at a time,
// a [C, n] -> [n, C] transpose that stays in cache, and the backward's rows are scattered back. A
// block of rows never crosses an outer index; gathered, it holds at least 16 rows (a cache line of
// each class) and at most 64K elements. Contiguous rows (inner == 1) are read in place.
// Class indices without smoothing in float or double at inner >= 16 (a segmentation's logits) take
// neither: their loops run across the rows of a block (ce_cols_*).
constexpr int64_t kColRows = 256;  // rows per block of the cols path
template <typename T>
bool ce_cols(const CeParams& P) {
  return std::is_same_v<T, acc_t<T>> && !P.prob && !(P.smoothing > 0) && P.inner >= 16;
}
template <typename T>
int64_t ce_block_rows(const CeParams& P) {
  const int64_t C = P.classes, short_rows = ce_short_block(P);
  if (P.inner == 1) return short_rows ? short_rows : std::numeric_limits<int64_t>::max();
  if (ce_cols<T>(P)) return kColRows;
  return short_rows ? short_rows : std::max<int64_t>(1, std::min(std::max<int64_t>(16, kShortBlock / C), 65536 / C));
}
inline int64_t ce_block_end(const CeParams& P, int64_t b0, int64_t block, int64_t r1) {
  const int64_t e = b0 + std::min(block, r1 - b0);
  return P.inner == 1 ? e : std::min(e, (b0 / P.inner + 1) * P.inner);
}

// A row's place in x's layout.
struct CeRow {
  int64_t base;  // element 0 of the row
  int64_t D;     // stride between its classes
};
inline CeRow ce_row(const CeParams& p, int64_t r) {
  const int64_t o = r / p.inner, i = r % p.inner;
  return {o * p.classes * p.inner + i, p.inner};
}

// Rows [b0, b1) of src (x's layout) as contiguous rows: in place, or gathered into buf.
template <typename T>
struct CeBlock {
  const CeParams& P;
  std::vector<T> buf;
  CeBlock(const CeParams& p, int64_t block) : P(p), buf(p.inner == 1 ? 0 : block * p.classes) {}
  const T* rows(const T* src, int64_t b0, int64_t b1) {
    if (P.inner == 1) return src + b0 * P.classes;
    const int64_t C = P.classes, n = b1 - b0;
    const T* s = src + ce_row(P, b0).base;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < n; ++j) buf[j * C + c] = s[c * P.inner + j];
    return buf.data();
  }
  // Where the block's output rows go (dst + b0 C, or buf), and after they are written, into dst.
  T* out(T* dst, int64_t b0) { return P.inner == 1 ? dst + b0 * P.classes : buf.data(); }
  void put(T* dst, int64_t b0, int64_t b1) {
    if (P.inner == 1) return;
    const int64_t C = P.classes, n = b1 - b0;
    T* d = dst + ce_row(P, b0).base;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < n; ++j) d[c * P.inner + j] = buf[j * C + c];
  }
};

// The cols path: n <= kColRows rows of one outer index, row j's class c at x[c * inner + j].
// m_j = max_c x_cj and s_j = sum_c exp(x_cj - m_j), in short_rows_max_sumexp's order and shift.
template <typename T>
TM_SIMD void ce_cols_max_sumexp(const T* __restrict x, int64_t C, int64_t inner, int64_t n, T* __restrict m,
                                T* __restrict s) {
  T sh[kColRows];
  for (int64_t j = 0; j < n; ++j) m[j] = -INFINITY, s[j] = 0;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < n; ++j) m[j] = std::max(m[j], x[c * inner + j]);
  for (int64_t j = 0; j < n; ++j) sh[j] = m[j] == -INFINITY ? T(0) : m[j];
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < n; ++j) s[j] += fast_exp(x[c * inner + j] - sh[j]);
}

// dx_cj = GUs_j exp(x_cj - m_j) where keep_j (GUs = G U / s, as ce_plain_backward_rows), else
// fill_j (ignored rows 0, targets out of range NaN); the caller then writes the targets' entries.
// dx may be x (cross_entropy_backward_): each x_cj is read before dx_cj is written.
template <typename T>
TM_SIMD void ce_cols_softmax_scaled(T* dx, const T* x, int64_t C, int64_t inner, int64_t n, const T* __restrict gus,
                                    const T* __restrict m, const T* __restrict keep, const T* __restrict fill) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < n; ++j) {
      const T v = gus[j] * fast_exp(x[c * inner + j] - m[j]);
      dx[c * inner + j] = keep[j] != T(0) ? v : fill[j];
    }
}

// The cols path's backward of rows [b0, b1) (class indices, no smoothing: U = keep w_t): per row
// G, GUs = G U / s, and the target's logit (read before dx is written); the scaled softmax across
// the rows; then each kept row's target entry, dx_t = G (U p_t - keep w_t), as the row path's.
// (In one TM_SIMD function: the per-row steps vectorise too, with gathers of w_t and x_t.)
template <typename A>
TM_SIMD void ce_cols_backward(A* dx, const A* x, const A* g, const int64_t* t, const A* w, const A* lse, A sc,
                              A keep, const CeParams& P, int64_t b0, int64_t b1) {
  A gus[kColRows] = {}, m[kColRows] = {}, ok[kColRows] = {}, fill[kColRows] = {}, xt[kColRows], G[kColRows];
  const int64_t n = b1 - b0, base = ce_row(P, b0).base, C = P.classes, D = P.inner, ignore = P.ignore_index;
  const A* gr = g + (P.reduction == 0 ? b0 : 0);
  const int64_t gs = P.reduction == 0 ? 1 : 0;
  t += b0, lse += 2 * b0, x += base, dx += base;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t tr = t[j];
    const bool kept = tr != ignore && tr >= 0 && tr < C;
    const int64_t tc = kept ? tr : 0;  // (a safe index for the loads)
    ok[j] = kept ? A(1) : A(0);
    fill[j] = tr == ignore ? A(0) : nan_v<A>();
    G[j] = gr[j * gs] * sc;
    gus[j] = kept ? G[j] * (keep * (w ? w[tc] : A(1))) * fast_exp(-lse[2 * j + 1]) : A(0);
    m[j] = kept ? lse[2 * j] : A(0);
    xt[j] = x[tc * D + j];
  }
  ce_cols_softmax_scaled(dx, x, C, D, n, gus, m, ok, fill);
  for (int64_t j = 0; j < n; ++j) {
    if (ok[j] == A(0)) continue;
    const int64_t tr = t[j];
    const A U = keep * (w ? w[tr] : A(1));
    dx[tr * D + j] = G[j] * (U * fast_exp(CeLse<A>::load(lse, j).log_p(xt[j])) - U);
  }
}

// Fixed-order sum of v[0..n) (with f(k) the k-th term): chunks of kChunk in parallel, then in order.
template <typename A, typename F>
A fixed_sum(int64_t n, const F& f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<A> part(chunks, A(0));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      A s = 0;
      for (int64_t k = c * kChunk, e = std::min(n, k + kChunk); k < e; ++k) s += f(k);
      part[c] = s;
    }
  });
  A s = 0;
  for (const A v : part) s += v;
  return s;
}

// A row's loss term by term in torch's order, with nlp_c = (m - x_c) + log s (-log_softmax): probabilities
// qr: sum_c w_c (keep q_c + epsc) nlp_c; class tr with label smoothing (qr null): keep w_t nlp_t + epsc
// sum_c w_c nlp_c. In double, for the rare rows where the one-pass a + up log s is not finite: an infinite
// weight makes inf - inf or 0 * inf there where torch's sum is +-inf (or NaN where torch's is), and a sum
// of weights that overflows is inf in both.
template <typename T>
double ce_row_exact(const T* xr, const T* qr, int64_t tr, int64_t D, int64_t C, const T* w, double keep,
                    double epsc) {
  double m = -INFINITY, s = 0, L = 0, S = 0;
  for (int64_t c = 0; c < C; ++c) m = std::max(m, double(xr[c * D]));  // (NaN reaches s below)
  for (int64_t c = 0; c < C; ++c) s += std::exp(double(xr[c * D]) - m);
  const double ls = std::log(s);
  for (int64_t c = 0; c < C; ++c) {
    const double wc = w ? double(w[c]) : 1.0, nlp = (m - double(xr[c * D])) + ls;
    if (qr) {
      L += wc * (keep * double(qr[c * D]) + epsc) * nlp;
    } else {
      S += wc * nlp;
      if (c == tr) L = keep * (wc * nlp);
    }
  }
  return qr ? L : L + epsc * S;
}

template <typename T>
void ce_forward_kernel(T* loss, acc_t<T>* lse, acc_t<T>* tw, int64_t* bad, const T* x, const void* tgt,
                       const T* w, const CeParams& P) {
  using A = acc_t<T>;
  const int64_t C = P.classes, R = P.rows();
  const A eps = A(P.smoothing), keep = A(1) - eps, epsc = eps / A(C);
  const bool smooth = P.smoothing > 0, rows_out = P.reduction == 0;
  const int64_t* t = P.prob ? nullptr : static_cast<const int64_t*>(tgt);
  const T* q = P.prob ? static_cast<const T*>(tgt) : nullptr;
  std::vector<A> buf(rows_out ? 0 : R);
  std::atomic<int64_t> bad_n{0}, bad_last{0};
  // Short rows of class indices: m and s of a block of rows at once (short_rows.h).
  // The cols path: the same from ce_cols_max_sumexp, and the target's logit read in place.
  // Other rows of class indices without smoothing (lse_rows): m and s of each row of a block of at most
  // kLseRows, then the block's log s at once (log_in_place: a scalar log per row took a fifth of a
  // 40-class row's time).
  const int64_t short_rows = ce_short_block(P);
  const bool cols = ce_cols<T>(P), lse_rows = !P.prob && !smooth && !short_rows && !cols;
  constexpr int64_t kLseRows = 256, kHalfLse = 4096;
  const int64_t block = lse_rows ? std::min(ce_block_rows<T>(P), kLseRows) : ce_block_rows<T>(P);
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
    A sm[kShortBlock], ss[kShortBlock], scratch[kShortBlock];  // m and s of a block's short rows (or cols)
    HalfRows<T> hr(C, 2, w);  // half types: contiguous rows widened (x, q) for the float row kernels
    std::vector<float> fx(HalfRows<T>::kOn && lse_rows ? kHalfLse : 0);  // half types: a block of rows widened
    CeBlock<T> bx(P, cols ? 0 : block), bq(P, P.prob ? block : 0);
    for (int64_t b0 = r0, b1; b0 < r1; b0 = b1) {
      b1 = ce_block_end(P, b0, block, r1);
      const T* xc = cols ? x + ce_row(P, b0).base : nullptr;  // cols: row b0's class 0 (row j's: xc + j)
      if constexpr (std::is_same_v<T, A>)
        if (cols) ce_cols_max_sumexp(xc, C, P.inner, b1 - b0, sm, ss);
      const T* xb = cols ? nullptr : bx.rows(x, b0, b1);
      const T* qb = P.prob ? bq.rows(q, b0, b1) : nullptr;
      if (short_rows && !cols) short_rows_max_sumexp(xb, C, b1 - b0, sm, ss, scratch);
      if (lse_rows) {
        if (!HalfRows<T>::kOn && C <= 2048) {
          rows_lse_contiguous(xb, C, b1 - b0, sm, ss);
        } else if (HalfRows<T>::kOn && C <= 2048) {  // up to kHalfLse elements widened at a time (a row at a
          // time cost bfloat16's 50 classes 1.4x torch's time)
          if constexpr (HalfRows<T>::kOn) {
            const int64_t k = kHalfLse / C;
            for (int64_t r = b0; r < b1; r += k) {
              const int64_t m = std::min(k, b1 - r);
              widen_run(fx.data(), xb + (r - b0) * C, m * C);
              rows_lse_contiguous(fx.data(), C, m, sm + (r - b0), ss + (r - b0));
            }
          }
        } else {
          for (int64_t r = b0; r < b1; ++r) {
            const T* xr = xb + (r - b0) * C;
            if constexpr (HalfRows<T>::kOn)
              online_lse_contiguous(hr.widen(0, xr), C, sm + (r - b0), ss + (r - b0));
            else
              online_lse_contiguous(xr, C, sm + (r - b0), ss + (r - b0));
          }
        }
      }
      if (short_rows || cols || lse_rows) log_in_place(ss, b1 - b0);  // ss: log s from here
      for (int64_t r = b0; r < b1; ++r) {
        const T* xr = cols ? xc + (r - b0) : xb + (r - b0) * C;
        const int64_t D = cols ? P.inner : 1;  // xr's stride between classes
        A L;
        CeLse<A> l;
        if (P.prob) {
          const T* qr = qb + (r - b0) * C;
          Online<A> st;
          if (C >= kShortRow) {  // (a call per short row costs more than the online loop)
            A mspa[4];
            if constexpr (HalfRows<T>::kOn)
              ce_prob_stats_contiguous(hr.widen(0, xr), hr.widen(1, qr), hr.w, C, keep, epsc, mspa);
            else
              ce_prob_stats_contiguous(xr, qr, w, C, keep, epsc, mspa);
            st.m = mspa[0], st.s = mspa[1], st.up = mspa[2], st.a = mspa[3];
          } else {
            for (int64_t c = 0; c < C; ++c)
              st.template add<true>(A(xr[c]), (w ? A(w[c]) : A(1)) * (keep * A(qr[c]) + epsc));
          }
          const A ls = tm_log(st.s);
          L = st.a + st.up * ls;
          l = {st.m, ls};
          if (!std::isfinite(L))
            L = A(ce_row_exact(xr, qr, -1, 1, C, w, 1.0 - P.smoothing, P.smoothing / double(C)));
        } else {
          const int64_t tr = t[r];
          if (tr == P.ignore_index) {
            L = 0, l = {0, 0};
          } else if (tr < 0 || tr >= C) {
            bad_n.fetch_add(1);
            for (int64_t cur = bad_last.load(); cur < r + 1 && !bad_last.compare_exchange_weak(cur, r + 1);) {
            }
            L = nan_v<A>(), l = {nan_v<A>(), nan_v<A>()};
          } else {
            Online<A> st;
            if (smooth && C >= kShortRow) {  // (a call per short row costs more than the online loop)
              A mspa[4];
              if constexpr (HalfRows<T>::kOn)
                ce_smooth_stats_contiguous(hr.widen(0, xr), hr.w, C, mspa);
              else
                ce_smooth_stats_contiguous(xr, w, C, mspa);
              st.m = mspa[0], st.s = mspa[1], st.up = mspa[2], st.a = mspa[3];
            } else if (smooth) {
              for (int64_t c = 0; c < C; ++c) st.template add<true>(A(xr[c]), w ? A(w[c]) : A(1));
            } else {  // short_rows, cols or lse_rows
              st.m = sm[r - b0];
            }
            const A ls = smooth ? tm_log(st.s) : ss[r - b0];
            const A nll = (w ? A(w[tr]) : A(1)) * ((st.m - A(xr[tr * D])) + ls);
            L = smooth ? keep * nll + epsc * (st.a + st.up * ls) : nll;
            if (smooth && !std::isfinite(L))
              L = A(ce_row_exact(xr, static_cast<const T*>(nullptr), tr, 1, C, w, 1.0 - P.smoothing,
                                 P.smoothing / double(C)));
            l = {st.m, ls};
          }
        }
        l.store(lse, r);
        if (rows_out) loss[r] = static_cast<T>(L);
        else buf[r] = L;
      }
    }
  });
  if (bad) bad[0] = bad_n.load(), bad[1] = bad_last.load();
  // den = sum of w_t over kept rows (class indices; out-of-range ones add 0) or the row count.
  const A den = P.prob ? A(R) : fixed_sum<A>(R, [&](int64_t r) {
    const int64_t tr = t[r];
    return tr == P.ignore_index || tr < 0 || tr >= C ? A(0) : w ? A(w[tr]) : A(1);
  });
  tw[0] = den;
  // The mean class weight (each divided first: finite weights whose sum overflows keep a finite U = keep w_t +
  // eps mean w in the backward, as torch's sum of the (eps / C) w_c).
  tw[1] = w ? fixed_sum<A>(C, [&](int64_t c) { return A(w[c]) / A(C); }) : A(1);
  if (!rows_out) {
    const A s = fixed_sum<A>(R, [&](int64_t r) { return buf[r]; });
    loss[0] = static_cast<T>(P.reduction != 1 ? s : ce_smooth_zero_den(P, den) ? nan_v<A>() : s / den);
  }
}

// dx = G (U p - u), dq = -(1-eps) G w lp.
template <typename T>
void ce_backward_kernel(T* dx, T* dq, const T* g, const T* x, const void* tgt, const T* w, const acc_t<T>* lse,
                        const acc_t<T>* tw, const CeParams& P) {
  using A = acc_t<T>;
  const int64_t C = P.classes, R = P.rows();
  const A eps = A(P.smoothing), keep = A(1) - eps, epsc = eps / A(C);
  const bool smooth = P.smoothing > 0;
  const A sc = ce_smooth_zero_den(P, tw[0]) ? nan_v<A>() : P.reduction == 1 ? A(1) / tw[0] : A(1), wmean = tw[1];
  const int64_t* t = P.prob ? nullptr : static_cast<const int64_t*>(tgt);
  const T* q = P.prob ? static_cast<const T*>(tgt) : nullptr;
  // Short rows of class indices: p = exp(lp) of a block of rows at once (short_rows.h). The cols path:
  // ce_cols_backward.
  const int64_t short_rows = ce_short_block(P), block = ce_block_rows<T>(P);
  const bool cols = ce_cols<T>(P);
  const bool plain = !P.prob && !smooth && !short_rows;  // ce_plain_backward_rows (rows in place or gathered)
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
    A p[kShortBlock];  // the block's p, from x before any of its dx is written (dx may be x: cross_entropy_backward_)
    HalfRows<T> hr(C, 4, w);  // half types: x, q, dx, dq of a contiguous row in float
    const int64_t gathered = cols ? 0 : block;
    CeBlock<T> bx(P, gathered), bq(P, P.prob ? block : 0), bdx(P, gathered), bdq(P, dq ? block : 0);
    for (int64_t b0 = r0, b1; b0 < r1; b0 = b1) {
      b1 = ce_block_end(P, b0, block, r1);
      if constexpr (std::is_same_v<T, A>)
        if (cols) {
          ce_cols_backward(dx, x, g, t, w, lse, sc, keep, P, b0, b1);
          continue;
        }
      const T* xb = bx.rows(x, b0, b1);
      const T* qb = P.prob ? bq.rows(q, b0, b1) : nullptr;
      T* dxb = bdx.out(dx, b0);
      if (plain) {
        for (int64_t p0 = b0; p0 < b1; p0 += kPlainRows)
          ce_plain_backward_rows(dxb + (p0 - b0) * C, xb + (p0 - b0) * C, g, t, w, lse, P, sc, keep, p0,
                                 std::min(b1, p0 + kPlainRows), HalfRows<T>::kOn ? hr.row(0) : nullptr,
                                 HalfRows<T>::kOn ? hr.row(2) : nullptr);
        bdx.put(dx, b0, b1);
        continue;
      }
      T* dqb = dq ? bdq.out(dq, b0) : nullptr;
      if (short_rows) short_rows_softmax(xb, lse + 2 * b0, C, b1 - b0, p);
      for (int64_t r = b0; r < b1; ++r) {
        const T* xr = xb + (r - b0) * C;
        T* dxr = dxb + (r - b0) * C;
        const A G = A(g[P.reduction == 0 ? r : 0]) * sc;
        const CeLse<A> l = CeLse<A>::load(lse, r);
        if (P.prob) {
          const T* qr = qb + (r - b0) * C;
          T* dqr = dq ? dqb + (r - b0) * C : nullptr;
          if constexpr (HalfRows<T>::kOn) {
            const float *fx = hr.widen(0, xr), *fq = hr.widen(1, qr);
            ce_prob_backward_contiguous(hr.row(2), dq ? hr.row(3) : nullptr, fx, fq, hr.w, C, G, l, keep, epsc);
            narrow_run(dxr, hr.row(2), C);
            if (dq) narrow_run(dqr, hr.row(3), C);
          } else {
            ce_prob_backward_contiguous(dxr, dqr, xr, qr, w, C, G, l, keep, epsc);
          }
          continue;
        }
        const int64_t tr = t[r];
        if (ce_fill_unkept(dxr, C, tr, P.ignore_index)) continue;
        const A wt = w ? A(w[tr]) : A(1);
        const A U = keep * wt + (smooth ? eps * wmean : A(0));
        if (short_rows) {  // u is keep * wt at the target, 0 elsewhere
          const A* pr = p + (r - b0) * C;
          for (int64_t c = 0; c < C; ++c) dxr[c] = static_cast<T>(G * U * pr[c]);
          dxr[tr] = static_cast<T>(G * (U * pr[tr] - keep * wt));
          continue;
        }
        // label smoothing (the rows without it took ce_plain_backward_rows): u_c = epsc w_c, and keep w_t more
        // at the target
        if constexpr (HalfRows<T>::kOn) {
          const float* fx = hr.widen(0, xr);
          if (hr.w) ce_smooth_backward_row<true>(hr.row(2), fx, hr.w, C, G, U, l, epsc, tr, keep * wt);
          else ce_smooth_backward_row<false>(hr.row(2), fx, hr.w, C, G, U, l, epsc, tr, keep * wt);
          narrow_run(dxr, hr.row(2), C);
        } else {
          if (w) ce_smooth_backward_row<true>(dxr, xr, w, C, G, U, l, epsc, tr, keep * wt);
          else ce_smooth_backward_row<false>(dxr, xr, w, C, G, U, l, epsc, tr, keep * wt);
        }
      }
      bdx.put(dx, b0, b1);
      if (dq) bdq.put(dq, b0, b1);
    }
  });
}

// With S = sum gg p, per row: d_g = sc (U S - sum gg u - (1-eps) sum hh w lp),
// d_x = G U p (gg - S) - (1-eps) G (hh w - p sum hh w),  d_q = (1-eps) G w (S - gg).
template <typename T>
void ce_double_backward_kernel(T* d_g, T* d_x, T* d_q, const T* gg, const T* hh, const T* g, const T* x,
                               const void* tgt, const T* w, const acc_t<T>* lse, const acc_t<T>* tw,
                               const CeParams& P) {
  using A = acc_t<T>;
  const int64_t C = P.classes, R = P.rows();
  const A eps = A(P.smoothing), keep = A(1) - eps, epsc = eps / A(C);
  const bool smooth = P.smoothing > 0, rows_out = P.reduction == 0;
  const A sc = ce_smooth_zero_den(P, tw[0]) ? nan_v<A>() : P.reduction == 1 ? A(1) / tw[0] : A(1), wmean = tw[1];
  const int64_t* t = P.prob ? nullptr : static_cast<const int64_t*>(tgt);
  const T* q = P.prob ? static_cast<const T*>(tgt) : nullptr;
  std::vector<A> buf(rows_out ? 0 : R);
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const CeRow row = ce_row(P, r);
      const T* xr = x + row.base;
      T* dxr = d_x + row.base;
      const A G = A(g[rows_out ? r : 0]) * sc;
      const CeLse<A> l = CeLse<A>::load(lse, r);
      auto ggv = [&](int64_t c) { return gg ? A(gg[row.base + c * row.D]) : A(0); };
      A dg;
      if (P.prob) {
        const T* qr = q + row.base;
        A S = 0, Sgu = 0, U = 0, Hw = 0, Hl = 0;
        for (int64_t c = 0; c < C; ++c) {
          const A wc = w ? A(w[c]) : A(1), lp = l.log_p(A(xr[c * row.D])), u = wc * (keep * A(qr[c * row.D]) + epsc);
          const A h = hh ? A(hh[row.base + c * row.D]) : A(0);
          S += ggv(c) * tm_exp(lp);
          Sgu += ggv(c) * u;
          U += u;
          Hw += h * wc;
          Hl += h * wc * lp;
        }
        dg = sc * (U * S - Sgu - keep * Hl);
        for (int64_t c = 0; c < C; ++c) {
          const A wc = w ? A(w[c]) : A(1), p = tm_exp(l.log_p(A(xr[c * row.D])));
          const A h = hh ? A(hh[row.base + c * row.D]) : A(0);
          dxr[c * row.D] = static_cast<T>(G * U * p * (ggv(c) - S) - keep * G * (h * wc - p * Hw));
          d_q[row.base + c * row.D] = static_cast<T>(keep * G * wc * (S - ggv(c)));
        }
      } else {
        const int64_t tr = t[r];
        if (tr == P.ignore_index || tr < 0 || tr >= C) {
          const A fill = tr == P.ignore_index ? A(0) : nan_v<A>();
          for (int64_t c = 0; c < C; ++c) dxr[c * row.D] = static_cast<T>(fill);
          dg = fill;
        } else {
          const A wt = w ? A(w[tr]) : A(1);
          const A U = keep * wt + (smooth ? eps * wmean : A(0));
          A S = 0, Sgw = 0;
          for (int64_t c = 0; c < C; ++c) {
            S += ggv(c) * tm_exp(l.log_p(A(xr[c * row.D])));
            if (smooth) Sgw += ggv(c) * (w ? A(w[c]) : A(1));
          }
          dg = sc * (U * S - (keep * wt * ggv(tr) + epsc * Sgw));
          for (int64_t c = 0; c < C; ++c)
            dxr[c * row.D] = static_cast<T>(G * U * tm_exp(l.log_p(A(xr[c * row.D]))) * (ggv(c) - S));
        }
      }
      if (rows_out) d_g[r] = static_cast<T>(dg);
      else buf[r] = dg;
    }
  });
  if (!rows_out) d_g[0] = static_cast<T>(fixed_sum<A>(R, [&](int64_t r) { return buf[r]; }));
}

template <typename T>
const T* ptr_or_null(const at::TensorBase& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* mut_ptr_or_null(const at::TensorBase& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void cross_entropy_forward_cpu(at::TensorBase& loss, at::TensorBase& lse, at::TensorBase& total_weight, at::TensorBase& bad,
                               const at::TensorBase& x, const at::TensorBase& target, const at::TensorBase& weight,
                               const CeParams& p) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "cross_entropy_forward_cpu", [&] {
    using A = acc_t<scalar_t>;
    ce_forward_kernel<scalar_t>(loss.data_ptr<scalar_t>(), lse.data_ptr<A>(), total_weight.data_ptr<A>(),
                                mut_ptr_or_null<int64_t>(bad), x.data_ptr<scalar_t>(),
                                target.data_ptr(), ptr_or_null<scalar_t>(weight), p);
  });
}

void cross_entropy_backward_cpu(at::TensorBase& dx, at::TensorBase& dq, const at::TensorBase& g, const at::TensorBase& x,
                                const at::TensorBase& target, const at::TensorBase& weight, const at::TensorBase& lse,
                                const at::TensorBase& total_weight, const CeParams& p) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "cross_entropy_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    ce_backward_kernel<scalar_t>(dx.data_ptr<scalar_t>(), mut_ptr_or_null<scalar_t>(dq), g.data_ptr<scalar_t>(),
                                 x.data_ptr<scalar_t>(), target.data_ptr(),
                                 ptr_or_null<scalar_t>(weight), lse.data_ptr<A>(), total_weight.data_ptr<A>(), p);
  });
}

void cross_entropy_double_backward_cpu(at::TensorBase& d_g, at::TensorBase& d_x, at::TensorBase& d_q, const at::TensorBase& gg,
                                       const at::TensorBase& hh, const at::TensorBase& g, const at::TensorBase& x,
                                       const at::TensorBase& target, const at::TensorBase& weight, const at::TensorBase& lse,
                                       const at::TensorBase& total_weight, const CeParams& p) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "cross_entropy_double_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    ce_double_backward_kernel<scalar_t>(d_g.data_ptr<scalar_t>(), d_x.data_ptr<scalar_t>(),
                                        mut_ptr_or_null<scalar_t>(d_q), ptr_or_null<scalar_t>(gg),
                                        ptr_or_null<scalar_t>(hh), g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        target.data_ptr(), ptr_or_null<scalar_t>(weight),
                                        lse.data_ptr<A>(), total_weight.data_ptr<A>(), p);
  });
}

static void register_glue(torch::Library& m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward);
  m.impl("cross_entropy_backward", &cross_entropy_backward);
  m.impl("cross_entropy_backward_", &cross_entropy_backward_inplace);
  m.impl("cross_entropy_double_backward", &cross_entropy_double_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
