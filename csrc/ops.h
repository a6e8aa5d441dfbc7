// The glue of every op (checks, allocation, device switch; csrc/<op>.cpp) and the kernel
// launchers it calls: <op>_cpu in csrc/<op>.cpp, <op>_cuda in kernels/<op>.cu.
// Launchers take outputs first, then inputs; inputs arrive checked and laid out as the
// comment says, outputs allocated (contiguous) and unwritten. They take at::TensorBase (data,
// sizes, dtype, device; no operators), which is all a kernel needs and all a .cu file includes.
#pragma once

#include "common.h"

namespace torchmodules {

struct SumToPlan;  // below
struct SgdHyper;   // below

#ifdef TORCHMODULES_CUDA
#define TM_LAUNCH(name, on, ...) ((on).is_cuda() ? name##_cuda(__VA_ARGS__) : name##_cpu(__VA_ARGS__))
#define TM_DECLARE_LAUNCHER(name, ...) void name##_cpu(__VA_ARGS__); void name##_cuda(__VA_ARGS__)
#else
#define TM_LAUNCH(name, on, ...) name##_cpu(__VA_ARGS__)
#define TM_DECLARE_LAUNCHER(name, ...) void name##_cpu(__VA_ARGS__)
#endif

// ---- glue: the op implementations registered for both CPU and CUDA ---------------------
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
at::Tensor linear_backward_input(const at::Tensor& grad_y, const at::Tensor& weight);
at::Tensor linear_backward_weight(const at::Tensor& grad_y, const at::Tensor& x);
std::tuple<at::Tensor, at::Tensor> linear_relu_forward(const at::Tensor& x, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor> relu_forward(const at::Tensor& x);
at::Tensor relu_backward(const at::Tensor& grad_y, const at::Tensor& mask);
std::vector<at::Tensor> duplicate_forward(const at::Tensor& x, int64_t n);
at::Tensor duplicate_backward(at::TensorList grads);
at::Tensor add_forward(const at::Tensor& a, const at::Tensor& b);
at::Tensor add_backward(const at::Tensor& grad_y, c10::SymIntArrayRef size);
std::tuple<at::Tensor, at::Tensor> maximum_forward(const at::Tensor& a, const at::Tensor& b);
at::Tensor maximum_backward(const at::Tensor& grad_y, const at::Tensor& mask, int64_t which);
std::tuple<at::Tensor, at::Tensor> maximum_backward_both(const at::Tensor& grad_y, const at::Tensor& mask);
at::Tensor amax_forward(const at::Tensor& x, at::IntArrayRef dim, bool keepdim);
at::Tensor amax_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y,
                         at::IntArrayRef dim, bool keepdim);
at::Tensor amax_double_backward(const at::Tensor& gg, const at::Tensor& x, const at::Tensor& y,
                                at::IntArrayRef dim, bool keepdim);
at::Tensor log_softmax_forward(const at::Tensor& x, int64_t dim);
at::Tensor log_softmax_backward(const at::Tensor& grad_y, const at::Tensor& y, int64_t dim);
std::tuple<at::Tensor, at::Tensor> log_softmax_double_backward(const at::Tensor& gg, const at::Tensor& grad_y,
                                                               const at::Tensor& y, int64_t dim);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& input, const at::Tensor& target,
                                                                     const std::optional<at::Tensor>& weight,
                                                                     int64_t reduction, int64_t ignore_index,
                                                                     double label_smoothing);
std::tuple<at::Tensor, at::Tensor> cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& input,
                                                          const at::Tensor& target,
                                                          const std::optional<at::Tensor>& weight,
                                                          const at::Tensor& lse, const at::Tensor& total_weight,
                                                          int64_t reduction, int64_t ignore_index,
                                                          double label_smoothing, bool target_grad);
void cross_entropy_backward_inplace(at::Tensor& input, const at::Tensor& grad_loss, const at::Tensor& target,
                                    const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                    const at::Tensor& total_weight, int64_t reduction, int64_t ignore_index,
                                    double label_smoothing);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_double_backward(
    const std::optional<at::Tensor>& gg_input, const std::optional<at::Tensor>& gg_target, const at::Tensor& grad_loss,
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, const at::Tensor& lse,
    const at::Tensor& total_weight, int64_t reduction, int64_t ignore_index, double label_smoothing);
void sgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step);
std::tuple<at::Tensor, at::Tensor> nll_loss_forward(const at::Tensor& input, const at::Tensor& target,
                                                    const std::optional<at::Tensor>& weight, int64_t reduction,
                                                    int64_t ignore_index);
at::Tensor nll_loss_backward(const at::Tensor& grad_y, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             const at::Tensor& total_weight, c10::SymIntArrayRef input_size, int64_t reduction,
                             int64_t ignore_index);
at::Tensor mse_loss_forward(const at::Tensor& input, const at::Tensor& target, int64_t reduction);
at::Tensor mse_loss_backward(const at::Tensor& grad_y, const at::Tensor& input, const at::Tensor& target,
                             int64_t reduction);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mse_loss_double_backward(const at::Tensor& gg, const at::Tensor& grad_y,
                                                                        const at::Tensor& input,
                                                                        const at::Tensor& target, int64_t reduction);
// (sqdist, index)
std::tuple<at::Tensor, at::Tensor> nearest_neighbor_forward(const at::Tensor& x, const at::Tensor& weight);
at::Tensor nearest_neighbor_backward_input(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& index);
at::Tensor nearest_neighbor_backward_weight(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& index);

// ---- launchers ---------------------------------------------------------------------------
// Linear, all 2-D contiguous, same dtype; bias undefined or [N].
//   y[M,N] = x[M,K] w[N,K]^T + bias     dx[M,K] = dy[M,N] w[N,K]     dw[N,K] = dy[M,N]^T x[M,K]
TM_DECLARE_LAUNCHER(linear_forward, at::TensorBase& y, const at::TensorBase& x, const at::TensorBase& w, const at::TensorBase& bias);
TM_DECLARE_LAUNCHER(linear_backward_input, at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& w);
TM_DECLARE_LAUNCHER(linear_backward_weight, at::TensorBase& dw, const at::TensorBase& dy, const at::TensorBase& x);

// Linear + ReLU: y[M,N] = relu(x[M,K] w[N,K]^T + bias), as Linear's forward; mask as ReLU's
// (relu_mask_bytes(M * N)), the bit of y[m, n] at flat index m * N + n.
TM_DECLARE_LAUNCHER(linear_relu_forward, at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& x, const at::TensorBase& w,
                    const at::TensorBase& bias);

// ReLU: x, dy contiguous; mask uint8 of relu_mask_bytes(numel), bit i%32 of word i/32.
TM_DECLARE_LAUNCHER(relu_forward, at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& x);
TM_DECLARE_LAUNCHER(relu_backward, at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& mask);

// Duplicate: x and every grad contiguous, one shape.
TM_DECLARE_LAUNCHER(duplicate_forward, TensorBaseList ys, const at::TensorBase& x);
TM_DECLARE_LAUNCHER(duplicate_backward, at::TensorBase& dx, TensorBaseList grads);

// Add: a, b any strides, read through bc (output index -> offsets); y contiguous.
TM_DECLARE_LAUNCHER(add_forward, at::TensorBase& y, const at::TensorBase& a, const at::TensorBase& b, const Broadcast2& bc);
// out (contiguous, numel plan.kept.numel) = dy summed over the reduced dims, per plan.
TM_DECLARE_LAUNCHER(add_backward, at::TensorBase& out, const at::TensorBase& dy, const SumToPlan& plan);

// Maximum: as Add; mask uint8 of maximum_mask_bytes(numel), 2-bit MaxCode per element,
// element i in bits 2*(i%16) of word i/16. dy contiguous. The backward writes da and db
// (dy's shape, contiguous); an undefined one is skipped.
TM_DECLARE_LAUNCHER(maximum_forward, at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& a, const at::TensorBase& b,
                    const Broadcast2& bc);
TM_DECLARE_LAUNCHER(maximum_backward, at::TensorBase& da, at::TensorBase& db, const at::TensorBase& dy, const at::TensorBase& mask);

// amax and LogSoftmax: x, y, dy, gg contiguous, reduced over the middle of Rows
// [outer, reduce, inner]; amax's y and dy are [outer, inner], reduce >= 1.
TM_DECLARE_LAUNCHER(amax_forward, at::TensorBase& y, const at::TensorBase& x, Rows r);
TM_DECLARE_LAUNCHER(amax_backward, at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& y,
                    Rows r);
// d_dy[o, i] = sum_r gg[o, r, i] [x == y] / #{x == y}, over the row's tied maxima.
TM_DECLARE_LAUNCHER(amax_double_backward, at::TensorBase& d_dy, const at::TensorBase& gg, const at::TensorBase& x,
                    const at::TensorBase& y, Rows r);
TM_DECLARE_LAUNCHER(log_softmax_forward, at::TensorBase& y, const at::TensorBase& x, Rows r);
TM_DECLARE_LAUNCHER(log_softmax_backward, at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& y, Rows r);
TM_DECLARE_LAUNCHER(log_softmax_double_backward, at::TensorBase& d_dy, at::TensorBase& d_y, const at::TensorBase& gg,
                    const at::TensorBase& dy, const at::TensorBase& y, Rows r);

// CrossEntropy over rows [outer, classes, inner] of x (contiguous); r = o * inner + i indexes the
// rows, element c of row r at (o * classes + c) * inner + i. target: int64 [rows] class indices, or
// probabilities laid out as x (prob). weight: [classes] or undefined. lse: acc type [rows, 2] (CeLse);
// total_weight: acc type [2] = [den, mean_c w_c]. Undefined optional tensors: absent (gg, hh: zeros).
struct CeParams {
  int64_t outer, classes, inner;
  int64_t reduction;     // 0 none, 1 mean, 2 sum (torch's at::Reduction)
  int64_t ignore_index;  // class indices only
  double smoothing;      // label smoothing eps in [0, 1]; 0 where torch does not smooth (eps <= 0)
  bool prob;             // class-probability targets
  TM_HD int64_t rows() const { return outer * inner; }
};
// A row's saved log-sum-exp, lse = m + log s, kept as its two terms (m = max_c x_c, s = sum_c exp(x_c - m))
// so that the log-probability x_c - lse is taken as torch takes it, (x_c - m) - log s: the one number
// m + log s loses log s's low bits to m's rounding (float32 logits at 1e4: 3e-4 of p; [1e8, 1e8, 1e8]: all).
template <class A>
struct CeLse {
  A m, ls;
  TM_HD static CeLse load(const A* lse, int64_t r) { return {lse[2 * r], lse[2 * r + 1]}; }
  TM_HD void store(A* lse, int64_t r) const { lse[2 * r] = m, lse[2 * r + 1] = ls; }
  TM_HD A log_p(A x) const { return (x - m) - ls; }
};
// Forward: loss = per-row losses (none, x's dtype [rows]) or the 0-d reduction; lse, total_weight as
// above. bad (int64 [2] on the host, zeros, class indices only) gets [count, 1 + the largest row] of
// targets out of range (the CUDA launcher waits for the check kernel only; none while a graph is captured).
TM_DECLARE_LAUNCHER(cross_entropy_forward, at::TensorBase& loss, at::TensorBase& lse, at::TensorBase& total_weight,
                    at::TensorBase& bad, const at::TensorBase& x, const at::TensorBase& target, const at::TensorBase& weight,
                    const CeParams& p);
// Backward: dx (x's shape), dq (target's shape, or undefined: not wanted); g is [rows] (none) or 0-d.
TM_DECLARE_LAUNCHER(cross_entropy_backward, at::TensorBase& dx, at::TensorBase& dq, const at::TensorBase& g,
                    const at::TensorBase& x, const at::TensorBase& target, const at::TensorBase& weight, const at::TensorBase& lse,
                    const at::TensorBase& total_weight, const CeParams& p);
// Double backward: d_g (g's shape), d_x, d_q (target's shape; undefined for class indices).
TM_DECLARE_LAUNCHER(cross_entropy_double_backward, at::TensorBase& d_g, at::TensorBase& d_x, at::TensorBase& d_q,
                    const at::TensorBase& gg, const at::TensorBase& hh, const at::TensorBase& g, const at::TensorBase& x,
                    const at::TensorBase& target, const at::TensorBase& weight, const at::TensorBase& lse,
                    const at::TensorBase& total_weight, const CeParams& p);
// True while the current CUDA stream of on's device is captured into a CUDA graph: no sync is
// allowed then, so bad targets cannot be read back (their rows are NaN instead).
#ifdef TORCHMODULES_CUDA
bool cuda_stream_capturing(const at::TensorBase& on);
#else
inline bool cuda_stream_capturing(const at::TensorBase&) { return false; }
#endif
// SGD: params[k], bufs[k] (empty list without momentum) and grads[k] share one dtype, device,
// numel >= 1 and a dense layout (same strides), so each is a flat array of numel elements.
TM_DECLARE_LAUNCHER(sgd_step, TensorBaseList params, TensorBaseList bufs, TensorBaseList grads, const SgdHyper& h);
// NLLLoss: x [N, C, D] and target [N, D] (int64 or uint8) contiguous, weight undefined or [C]
// contiguous; out [N, D] (none) or [] and total_weight [] (float for the half types). Targets are
// not checked beforehand: a launcher reports the first one outside [0, C) (and not ignore_index)
// in `bad` (index -1: none) and never reads or writes out of bounds for it.
struct NllArgs {
  int64_t N, C, D, reduction, ignore_index;
};
struct NllBad {
  int64_t index = -1, value = 0;  // flat index into target, and the target there
};
TM_DECLARE_LAUNCHER(nll_loss_forward, at::TensorBase& out, at::TensorBase& total_weight, NllBad& bad, const at::TensorBase& x,
                    const at::TensorBase& target, const at::TensorBase& weight, const NllArgs& a);
// dx [N, C, D]; dy [N, D] (none) or []; total_weight [] as the forward gave it.
TM_DECLARE_LAUNCHER(nll_loss_backward, at::TensorBase& dx, NllBad& bad, const at::TensorBase& dy, const at::TensorBase& target,
                    const at::TensorBase& weight, const at::TensorBase& total_weight, const NllArgs& a);

// MSELoss: x and t any strides, read through bc (index into the broadcast shape -> offsets);
// n = numel of the broadcast shape; dy and gg contiguous, n elements (none) or one (mean, sum);
// y, dx, d_x, d_t of n elements (y, d_dy: one for mean and sum).
TM_DECLARE_LAUNCHER(mse_loss_forward, at::TensorBase& y, const at::TensorBase& x, const at::TensorBase& t, const Broadcast2& bc,
                    int64_t n, int64_t reduction);
TM_DECLARE_LAUNCHER(mse_loss_backward, at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& t,
                    const Broadcast2& bc, int64_t n, int64_t reduction);
TM_DECLARE_LAUNCHER(mse_loss_double_backward, at::TensorBase& d_dy, at::TensorBase& d_x, at::TensorBase& d_t, const at::TensorBase& gg,
                    const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& t, const Broadcast2& bc, int64_t n,
                    int64_t reduction);

// NearestNeighbor: x [N, D], w [K, D] (K >= 1), grad and index [N] (int64), all contiguous; N >= 1
// for the forward. index [N] and sqdist [N] out; dx [N, D]; dw [K, D]. An index outside [0, K) (only a
// hand-made one) raises an IndexError on the CPU; on the GPU (no sync) its dx row is NaN and its row
// is left out of dw.
TM_DECLARE_LAUNCHER(nearest_neighbor_forward, at::TensorBase& index, at::TensorBase& sqdist, const at::TensorBase& x,
                    const at::TensorBase& w);
TM_DECLARE_LAUNCHER(nearest_neighbor_backward_input, at::TensorBase& dx, const at::TensorBase& grad, const at::TensorBase& x,
                    const at::TensorBase& w, const at::TensorBase& index);
TM_DECLARE_LAUNCHER(nearest_neighbor_backward_weight, at::TensorBase& dw, const at::TensorBase& grad, const at::TensorBase& x,
                    const at::TensorBase& w, const at::TensorBase& index);

// ---- the plan of a sum down to a broadcast source's shape (Add's backward) --------------
// An index space split in two: kept dims (one per output element, row-major) and reduced
// dims. Each Indexer maps its linear index to an element offset into dy; dims coalesced.
struct Indexer {
  int ndim;
  int64_t size[kMaxDims];
  int64_t stride[kMaxDims];
  int64_t numel;
  TM_HD int64_t offset(int64_t i) const {
    int64_t o = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      o += (i % size[d]) * stride[d];
      i /= size[d];
    }
    return o;
  }
};
struct SumToPlan {
  Indexer kept, reduced;
};

// ---- SGD: the hyperparameters and the update of one element, shared by CPU and CUDA ---------
struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
};
// Which momentum update a launch does: none, b = g (first step), b = m b + (1 - d) g.
enum SgdMomentum : int { kSgdPlain = 0, kSgdFirst = 1, kSgdMomentum = 2 };
// The hyperparameters in the accumulation type A; sign = -1 to maximize.
template <typename A>
struct SgdCoef {
  A lr, momentum, damp1, weight_decay, sign;
};
template <typename A>
SgdCoef<A> sgd_coef(const SgdHyper& h) {
  return {A(h.lr), A(h.momentum), A(1.0 - h.dampening), A(h.weight_decay), A(h.maximize ? -1 : 1)};
}
// g = sign grad + wd p;  b = g (first) or m b + (1 - d) g;  g = nesterov ? g + m b : b;  p = p - lr g.
// (grad by reference: A may be a 64-byte vector, which GCC warns of passing by value)
template <int kMom, bool kWd, bool kNesterov, typename A>
TM_HD void sgd_update(A& p, A& b, const A& grad, const SgdCoef<A>& c) {
  A g = c.sign * grad;  // exact
  if constexpr (kWd) g = g + c.weight_decay * p;
  if constexpr (kMom == kSgdFirst) b = g;
  if constexpr (kMom == kSgdMomentum) b = c.momentum * b + c.damp1 * g;
  if constexpr (kMom != kSgdPlain) g = kNesterov ? g + c.momentum * b : b;
  p = p - c.lr * g;
}
// Calls f(integral_constant kMom, kWd, kNesterov) for the options of h: each launcher is
// instantiated once per combination, so the element loops carry no branches.
template <typename F>
void sgd_dispatch(const SgdHyper& h, F&& f) {
  using std::integral_constant;
  auto nest = [&](auto mom, auto wd) {
    if (h.nesterov && decltype(mom)::value != kSgdPlain) f(mom, wd, integral_constant<bool, true>{});
    else f(mom, wd, integral_constant<bool, false>{});
  };
  auto decay = [&](auto mom) {
    if (h.weight_decay != 0) nest(mom, integral_constant<bool, true>{});
    else nest(mom, integral_constant<bool, false>{});
  };
  if (h.momentum == 0) decay(integral_constant<int, kSgdPlain>{});
  else if (h.first_step) decay(integral_constant<int, kSgdFirst>{});
  else decay(integral_constant<int, kSgdMomentum>{});
}

}  // namespace torchmodules
