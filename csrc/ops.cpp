// The op table: every schema of torchmodules, each forward next to its backward.
// Kernels register per device (csrc/<op>.cpp for CPU, kernels/<op>.cu for CUDA), the
// autograd formulas in C++ (csrc/autograd*.cpp), the fake (meta) kernels in torchmodules/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(torchmodules, m) {
  // Linear: y = x W^T + b.   dx = dy W,  dW = dy^T x,  db = add_backward(dy, [out]).
  m.def("linear_forward(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_backward_input(Tensor grad_y, Tensor weight) -> Tensor");
  m.def("linear_backward_weight(Tensor grad_y, Tensor x) -> Tensor");

  // Linear + ReLU fused: y = relu(x W^T + b) with ReLU's mask m of y (below), the ReLU done in the
  // GEMM's epilogue.   With dz = relu_backward(dy, m):  dx = dz W,  dW = dz^T x,  db = dz summed to [out].
  // Saves x, W and the bit mask (not y).
  m.def("linear_relu_forward(Tensor x, Tensor weight, Tensor? bias) -> (Tensor, Tensor)");

  // ReLU: y = max(x, 0), saving one bit per element m = !(x <= 0).   dx = m ? dy : 0.
  m.def("relu_forward(Tensor x) -> (Tensor, Tensor)");
  m.def("relu_backward(Tensor grad_y, Tensor mask) -> Tensor");

  // Duplicate: y_1 = ... = y_n = x.   dx = dy_1 + ... + dy_n.
  m.def("duplicate_forward(Tensor x, int n) -> Tensor[]");
  m.def("duplicate_backward(Tensor[] grads) -> Tensor");

  // Add: y = a + b (broadcast).   da = dy summed down to a's shape, likewise db.
  m.def("add_forward(Tensor a, Tensor b) -> Tensor");
  m.def("add_backward(Tensor grad_y, SymInt[] size) -> Tensor");

  // Maximum: y = max(a, b) (broadcast), saving a 2-bit code per element.
  // da = dy * share(code, 0), db = dy * share(code, 1): 1 to the larger, 1/2 each at ties.
  m.def("maximum_forward(Tensor a, Tensor b) -> (Tensor, Tensor)");
  m.def("maximum_backward(Tensor grad_y, Tensor mask, int which) -> Tensor");
  // Both gradients in one pass over dy and the codes (the backward when a and b both need one).
  m.def("maximum_backward_both(Tensor grad_y, Tensor mask) -> (Tensor, Tensor)");

  // Max over dims: y = max_dims x.   dx = dy * [x == y] / #{x == y}.
  m.def("amax_forward(Tensor x, int[] dim, bool keepdim) -> Tensor");
  m.def("amax_backward(Tensor grad_y, Tensor x, Tensor y, int[] dim, bool keepdim) -> Tensor");
  // Its double backward (linear in grad_y): d/d(dy) = mean of gg over the tied maxima.
  m.def("amax_double_backward(Tensor gg, Tensor x, Tensor y, int[] dim, bool keepdim) -> Tensor");

  // LogSoftmax: y_i = x_i - log sum_j exp(x_j).   dx_i = dy_i - exp(y_i) sum_j dy_j.
  // Its double backward, for gg = d/d(dx):
  //   d/d(dy)_k = gg_k - sum_i gg_i exp(y_i),   d/dy_k = -gg_k exp(y_k) sum_j dy_j.
  m.def("log_softmax_forward(Tensor x, int dim) -> Tensor");
  m.def("log_softmax_backward(Tensor grad_y, Tensor y, int dim) -> Tensor");
  m.def("log_softmax_double_backward(Tensor gg, Tensor grad_y, Tensor y, int dim) -> (Tensor, Tensor)");

  // CrossEntropy, fused with its log-softmax. Rows [outer, C, inner] of the input x; per row r,
  //   lse = log sum_c exp(x_c), one online pass (running max m and sum s, s rescaled when m grows);
  //   u_c, the weighted target: class index t: (1-eps) w_t [c == t] + (eps/C) w_c, all 0 when
  //        t == ignore_index; probabilities q: w_c ((1-eps) q_c + eps/C);   U = sum_c u_c;
  //   loss_r = sum_c u_c (lse - x_c);  reduction none: loss_r;  sum: sum_r loss_r;  mean: that sum
  //   / den, den = sum of w_t over the rows kept (class indices) or the number of rows (probabilities).
  // Saves lse per row as its two terms (m, log s) (shape [rows, 2], float32 for the half types: x - lse is
  // taken as (x - m) - log s, CeLse in ops.h) and total_weight = [den, mean_c w_c]; no (N, C) tensor.
  //   Backward, with p = exp(x - lse), sc = 1/den for mean (else 1), G = sc g_r:
  //     dx_c = G (U p_c - u_c),     dq_c = -(1-eps) G w_c (x_c - lse)   (probabilities, target_grad).
  //   Double backward, for gg = d/d(dx), hh = d/d(dq), S = sum_c gg_c p_c, lse taken as a function of x:
  //     d/dg_r = sc (U S - sum_c gg_c u_c - (1-eps) sum_c hh_c w_c (x_c - lse))   (summed over r for 0-d g),
  //     d/dx_k = G U p_k (gg_k - S) - (1-eps) G (hh_k w_k - p_k sum_c hh_c w_c)  [Jacobian diag(p) - p p^T],
  //     d/dq_k = (1-eps) G w_k (S - gg_k).
  m.def("cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
        "float label_smoothing) -> (Tensor, Tensor, Tensor)");
  m.def("cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, Tensor lse, "
        "Tensor total_weight, int reduction, int ignore_index, float label_smoothing, bool target_grad) "
        "-> (Tensor, Tensor)");
  // The backward's dx written into the input's own storage (contiguous input), for
  // cross_entropy(..., inplace_backward=True): no (N, C) tensor allocated by the backward either.
  m.def("cross_entropy_backward_(Tensor(a!) input, Tensor grad_loss, Tensor target, Tensor? weight, Tensor lse, "
        "Tensor total_weight, int reduction, int ignore_index, float label_smoothing) -> ()");
  m.def("cross_entropy_double_backward(Tensor? gg_input, Tensor? gg_target, Tensor grad_loss, Tensor input, "
        "Tensor target, Tensor? weight, Tensor lse, Tensor total_weight, int reduction, int ignore_index, "
        "float label_smoothing) -> (Tensor, Tensor, Tensor)");

  // SGD step (torch.optim.SGD), in place on every tensor of the lists, one kernel launch for
  // many tensors. Not differentiable. With b the momentum buffer (m = momentum, d = dampening):
  //   g = (maximize ? -grad : grad) + weight_decay p
  //   if m != 0:  b = first_step ? g : m b + (1 - d) g;   g = nesterov ? g + m b : b
  //   p = p - lr g
  // momentum_buffers: one per param when m != 0 (only written on the first step), else empty.
  m.def("sgd_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, float momentum, "
        "float dampening, float weight_decay, bool nesterov, bool maximize, bool first_step) -> ()");
  // NLLLoss over x [N, C, d1, ...] (or [C]) and class indices t [N, d1, ...] (or []), i = (n, d):
  //   l_i = -w[t_i] x[n, t_i, d] (w = 1 without weight), l_i = 0 where t_i == ignore_index.
  //   y = l (none), sum_i l_i (sum), sum_i l_i / W (mean), W = sum of w[t_i] over the kept i
  //   (all ignored: 0/0 = NaN, as torch). The forward returns W too (float for the half types).
  //   dx[n, c, d] = -w[c] g_i [c == t_i] over the kept i, g_i = dy_i (none), dy (sum), dy / W (mean).
  //   dx is linear in dy and free of x: d/d(dy) of <gg, dx> = nll_loss_forward(gg)[0] (same W).
  //   reduction: 0 none, 1 mean, 2 sum (as torch's at::Reduction).
  m.def("nll_loss_forward(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index) "
        "-> (Tensor, Tensor)");
  m.def("nll_loss_backward(Tensor grad_y, Tensor target, Tensor? weight, Tensor total_weight, SymInt[] input_size, "
        "int reduction, int ignore_index) -> Tensor");

  // MSELoss over x and t broadcast to n elements: e = (x - t)^2,  y = e (none), sum e (sum), sum e / n (mean).
  //   dx = c (x - t) dy, c = 2 (none, sum) or 2 / n (mean), dy one value for mean and sum;
  //   dt = -dx = mse_loss_backward(dy, t, x). Each is summed down to its input's shape (add_backward).
  // Its double backward, for gg = d/d(dx):
  //   d/d(dy) = c (x - t) gg (summed for mean and sum),  d/dx = c dy gg,  d/dt = -c dy gg.
  m.def("mse_loss_forward(Tensor input, Tensor target, int reduction) -> Tensor");
  m.def("mse_loss_backward(Tensor grad_y, Tensor input, Tensor target, int reduction) -> Tensor");
  m.def("mse_loss_double_backward(Tensor gg, Tensor grad_y, Tensor input, Tensor target, int reduction) "
        "-> (Tensor, Tensor, Tensor)");

  // NearestNeighbor: for x of shape (*, D) and K prototypes w [K, D], per row n
  //   e_nk = sum_d (x_nd - w_kd)^2 (summed directly, never as |x|^2 - 2 x.w + |w|^2),
  //   index_n = argmin_k e_nk (lowest k at ties, the first NaN if any, as torch.argmin),
  //   sqdist_n = e_n,index_n;  index is int64 and not differentiable. The (N, K) matrix e is never stored.
  //   With g = d/d(sqdist) and r_n = x_n - w_index_n:
  //     dx_n = 2 g_n r_n,   dw_k = -2 sum_{n: index_n = k} g_n r_n   (a deterministic, fixed-order sum).
  //   Both are linear in g and in (x, w). For upstream a = d/d(dx), b = d/d(dw) and h_n = a_n - b_index_n:
  //     d/dg_n = 2 <h_n, r_n>,   d/dx = 2 g h = backward_input(g, a, b, index),
  //     d/dw_k = -2 sum_{n: index_n = k} g_n h_n = backward_weight(g, a, b, index),
  //   the backward ops themselves with x := a, w := b (an absent a or b as zeros): every order is made of
  //   these two ops, and for d/dg a row-wise dot product of torch ops.
  // The forward returns (sqdist, index): the floating output first (tools that sum every output, as
  // opcheck's, start from it); torchmodules.functional.nearest_neighbor returns (index, sqdist).
  m.def("nearest_neighbor_forward(Tensor x, Tensor weight) -> (Tensor, Tensor)");
  m.def("nearest_neighbor_backward_input(Tensor grad, Tensor x, Tensor weight, Tensor index) -> Tensor");
  m.def("nearest_neighbor_backward_weight(Tensor grad, Tensor x, Tensor weight, Tensor index) -> Tensor");
}

