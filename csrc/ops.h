// The glue of every op (checks, allocation, device switch; csrc/<op>.cpp) and the kernel
// launchers it calls: <op>_cpu in csrc/<op>.cpp, <op>_cuda in kernels/<op>.cu.
// Launchers take outputs first, then inputs; inputs arrive checked and laid out as the
// comment says, outputs allocated (contiguous) and unwritten.
#pragma once

#include "common.h"

namespace torchmodules {

struct SumToPlan;  // below

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
std::tuple<at::Tensor, at::Tensor> relu_forward(const at::Tensor& x);
at::Tensor relu_backward(const at::Tensor& grad_y, const at::Tensor& mask);
std::vector<at::Tensor> duplicate_forward(const at::Tensor& x, int64_t n);
at::Tensor duplicate_backward(at::TensorList grads);
at::Tensor add_forward(const at::Tensor& a, const at::Tensor& b);
at::Tensor add_backward(const at::Tensor& grad_y, c10::SymIntArrayRef size);
std::tuple<at::Tensor, at::Tensor> maximum_forward(const at::Tensor& a, const at::Tensor& b);
at::Tensor maximum_backward(const at::Tensor& grad_y, const at::Tensor& mask, int64_t which);
at::Tensor amax_forward(const at::Tensor& x, at::IntArrayRef dim, bool keepdim);
at::Tensor amax_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y,
                         at::IntArrayRef dim, bool keepdim);
at::Tensor amax_double_backward(const at::Tensor& gg, const at::Tensor& x, const at::Tensor& y,
                                at::IntArrayRef dim, bool keepdim);
at::Tensor log_softmax_forward(const at::Tensor& x, int64_t dim);
at::Tensor log_softmax_backward(const at::Tensor& grad_y, const at::Tensor& y, int64_t dim);
std::tuple<at::Tensor, at::Tensor> log_softmax_double_backward(const at::Tensor& gg, const at::Tensor& grad_y,
                                                               const at::Tensor& y, int64_t dim);
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

// ---- launchers ---------------------------------------------------------------------------
// Linear, all 2-D contiguous, same dtype; bias undefined or [N].
//   y[M,N] = x[M,K] w[N,K]^T + bias     dx[M,K] = dy[M,N] w[N,K]     dw[N,K] = dy[M,N]^T x[M,K]
TM_DECLARE_LAUNCHER(linear_forward, at::Tensor& y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);
TM_DECLARE_LAUNCHER(linear_backward_input, at::Tensor& dx, const at::Tensor& dy, const at::Tensor& w);
TM_DECLARE_LAUNCHER(linear_backward_weight, at::Tensor& dw, const at::Tensor& dy, const at::Tensor& x);

// ReLU: x, dy contiguous; mask uint8 of relu_mask_bytes(numel), bit i%32 of word i/32.
TM_DECLARE_LAUNCHER(relu_forward, at::Tensor& y, at::Tensor& mask, const at::Tensor& x);
TM_DECLARE_LAUNCHER(relu_backward, at::Tensor& dx, const at::Tensor& dy, const at::Tensor& mask);

// Duplicate: x and every grad contiguous, one shape.
TM_DECLARE_LAUNCHER(duplicate_forward, std::vector<at::Tensor>& ys, const at::Tensor& x);
TM_DECLARE_LAUNCHER(duplicate_backward, at::Tensor& dx, at::TensorList grads);

// Add: a, b any strides, read through bc (output index -> offsets); y contiguous.
TM_DECLARE_LAUNCHER(add_forward, at::Tensor& y, const at::Tensor& a, const at::Tensor& b, const Broadcast2& bc);
// out (contiguous, numel plan.kept.numel) = dy summed over the reduced dims, per plan.
TM_DECLARE_LAUNCHER(add_backward, at::Tensor& out, const at::Tensor& dy, const SumToPlan& plan);

// Maximum: as Add; mask uint8 of maximum_mask_bytes(numel), 2-bit MaxCode per element,
// element i in bits 2*(i%16) of word i/16. dy contiguous.
TM_DECLARE_LAUNCHER(maximum_forward, at::Tensor& y, at::Tensor& mask, const at::Tensor& a, const at::Tensor& b,
                    const Broadcast2& bc);
TM_DECLARE_LAUNCHER(maximum_backward, at::Tensor& d, const at::Tensor& dy, const at::Tensor& mask, int64_t which);

// amax and LogSoftmax: x, y, dy, gg contiguous, reduced over the middle of Rows
// [outer, reduce, inner]; amax's y and dy are [outer, inner], reduce >= 1.
TM_DECLARE_LAUNCHER(amax_forward, at::Tensor& y, const at::Tensor& x, Rows r);
TM_DECLARE_LAUNCHER(amax_backward, at::Tensor& dx, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y,
                    Rows r);
// d_dy[o, i] = sum_r gg[o, r, i] [x == y] / #{x == y}, over the row's tied maxima.
TM_DECLARE_LAUNCHER(amax_double_backward, at::Tensor& d_dy, const at::Tensor& gg, const at::Tensor& x,
                    const at::Tensor& y, Rows r);
TM_DECLARE_LAUNCHER(log_softmax_forward, at::Tensor& y, const at::Tensor& x, Rows r);
TM_DECLARE_LAUNCHER(log_softmax_backward, at::Tensor& dx, const at::Tensor& dy, const at::Tensor& y, Rows r);
TM_DECLARE_LAUNCHER(log_softmax_double_backward, at::Tensor& d_dy, at::Tensor& d_y, const at::Tensor& gg,
                    const at::Tensor& dy, const at::Tensor& y, Rows r);

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
TM_DECLARE_LAUNCHER(nll_loss_forward, at::Tensor& out, at::Tensor& total_weight, NllBad& bad, const at::Tensor& x,
                    const at::Tensor& target, const at::Tensor& weight, const NllArgs& a);
// dx [N, C, D]; dy [N, D] (none) or []; total_weight [] as the forward gave it.
TM_DECLARE_LAUNCHER(nll_loss_backward, at::Tensor& dx, NllBad& bad, const at::Tensor& dy, const at::Tensor& target,
                    const at::Tensor& weight, const at::Tensor& total_weight, const NllArgs& a);

// MSELoss: x and t any strides, read through bc (index into the broadcast shape -> offsets);
// n = numel of the broadcast shape; dy and gg contiguous, n elements (none) or one (mean, sum);
// y, dx, d_x, d_t of n elements (y, d_dy: one for mean and sum).
TM_DECLARE_LAUNCHER(mse_loss_forward, at::Tensor& y, const at::Tensor& x, const at::Tensor& t, const Broadcast2& bc,
                    int64_t n, int64_t reduction);
TM_DECLARE_LAUNCHER(mse_loss_backward, at::Tensor& dx, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& t,
                    const Broadcast2& bc, int64_t n, int64_t reduction);
TM_DECLARE_LAUNCHER(mse_loss_double_backward, at::Tensor& d_dy, at::Tensor& d_x, at::Tensor& d_t, const at::Tensor& gg,
                    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& t, const Broadcast2& bc, int64_t n,
                    int64_t reduction);

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

}  // namespace torchmodules
