// Linear.  Forward: y = x W^T + b.   Backward: dx = dy W,  dW = dy^T x  (db is add_backward).
// Linear + ReLU (linear_relu_forward): y = relu(x W^T + b) with ReLU's bit mask, the ReLU applied
// by the GEMM's epilogue (gemm_cpu.cpp) while each block of y is in cache; its backward is
// relu_backward, then Linear's.
// On the CPU the three products are one GEMM, C[M,N] = sum_k A(m,k) B(k,n) (+ bias[n]), which
// reads A and B through strides, so a transposed operand costs nothing extra:
//   forward          C = y [M,N],  A = x [M,K],       B(k,n) = w[n,k]
//   backward_input   C = dx [M,K], A = dy [M,N],      B(n,k) = w[n,k]    (inner dim N)
//   backward_weight  C = dW [N,K], A(n,m) = dy[m,n],  B(m,k) = x[m,k]    (inner dim M)
// The GEMM (blocking, packing, micro-kernel, threads, instruction sets) is in gemm_cpu.cpp;
// it is deterministic: the same result for any thread count.
#include "ops.h"

#include "gemm_cpu.h"

#include <vector>

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

// The checks of the forward, shared by linear and linear_relu (op: the name errors give).
// Returns whether there is a bias.
bool check_linear_forward(const char* op, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias) {
  check_floating(op, "input", x);
  check_floating(op, "weight", weight);
  check_same_dtype_device(op, "input", x, "weight", weight);
  TORCH_CHECK(weight.dim() == 2, "torchmodules.", op, ": weight must be 2-D [out_features, in_features], got shape ",
              weight.sizes());
  TORCH_CHECK(x.dim() >= 1, "torchmodules.", op, ": input must have at least 1 dim, got shape ", x.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), "torchmodules.", op, ": input of shape ", x.sizes(),
              " and weight of shape ", weight.sizes(), " do not match: input.size(-1) = ", x.size(-1),
              " but weight.size(1) = ", weight.size(1));
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_floating(op, "bias", *bias);
    check_same_dtype_device(op, "input", x, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "torchmodules.", op, ": bias must have shape [",
                weight.size(0), "] for weight of shape ", weight.sizes(), ", got ", bias->sizes());
  }
  return has_bias;
}

// The forward's operands, checked (op: the name errors give) and as 2-D contiguous tensors:
// x2d [M, K], w [N, K], b [N] (undefined without a bias), and y [*, N] with its view y2d [M, N].
struct LinearForwardArgs {
  int64_t M, K, N;
  at::Tensor x2d, w, b, y, y2d;
};
LinearForwardArgs linear_forward_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias) {
  const bool has_bias = check_linear_forward(op, x, weight, bias);
  LinearForwardArgs a{leading_numel(x), weight.size(1), weight.size(0)};
  a.x2d = x.contiguous().view({a.M, a.K});
  a.w = weight.contiguous();
  if (has_bias) a.b = bias->contiguous();
  a.y = new_output(with_last(x, a.N), x.options());
  a.y2d = a.y.view({a.M, a.N});
  return a;
}

}  // namespace

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  LinearForwardArgs a = linear_forward_args("linear", x, weight, bias);
  if (a.M > 0 && a.N > 0) TM_LAUNCH(linear_forward, x, a.y2d, a.x2d, a.w, a.b);  // K == 0: y = bias (or 0)
  return a.y;
}

// y = relu(x W^T + b) and ReLU's bit mask of y (relu.cpp), in one pass over y.
std::tuple<at::Tensor, at::Tensor> linear_relu_forward(const at::Tensor& x, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias) {
  LinearForwardArgs a = linear_forward_args("linear_relu", x, weight, bias);
  at::Tensor mask = new_output({relu_mask_bytes(a.M * a.N)}, x.options().dtype(at::kByte));
  if (a.M > 0 && a.N > 0) TM_LAUNCH(linear_relu_forward, x, a.y2d, mask, a.x2d, a.w, a.b);  // K == 0: y = relu(bias)
  return {a.y, mask};
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

// ---- CPU: the three products as calls of gemm_cpu (gemm_cpu.cpp) ---------------------------

// y[M,N] = x[M,K] w[N,K]^T + bias:  A = x (row-major), B(k,n) = w[n,k].
void linear_forward_cpu(at::TensorBase& y, const at::TensorBase& x, const at::TensorBase& w, const at::TensorBase& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TM_DISPATCH_FLOATING(x.scalar_type(), "linear_forward_cpu", [&] {
    gemm_cpu<scalar_t>(M, N, K, x.data_ptr<scalar_t>(), K, 1, w.data_ptr<scalar_t>(), 1, K, y.data_ptr<scalar_t>(), N,
                       bias.defined() ? bias.data_ptr<scalar_t>() : nullptr);
  });
}

// y[M,N] = relu(x[M,K] w[N,K]^T + bias) and its mask: the forward's GEMM with the ReLU epilogue.
void linear_relu_forward_cpu(at::TensorBase& y, at::TensorBase& mask, const at::TensorBase& x, const at::TensorBase& w,
                             const at::TensorBase& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TM_DISPATCH_FLOATING(x.scalar_type(), "linear_relu_forward_cpu", [&] {
    gemm_cpu<scalar_t>(M, N, K, x.data_ptr<scalar_t>(), K, 1, w.data_ptr<scalar_t>(), 1, K, y.data_ptr<scalar_t>(), N,
                       bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                       reinterpret_cast<uint32_t*>(mask.data_ptr<uint8_t>()));
  });
}

// dx[M,K] = dy[M,N] w[N,K]:  A = dy (row-major), B = w (row-major), inner dim N.
void linear_backward_input_cpu(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& w) {
  const int64_t M = dy.size(0), N = dy.size(1), K = w.size(1);
  TM_DISPATCH_FLOATING(dy.scalar_type(), "linear_backward_input_cpu", [&] {
    gemm_cpu<scalar_t>(M, K, N, dy.data_ptr<scalar_t>(), N, 1, w.data_ptr<scalar_t>(), K, 1, dx.data_ptr<scalar_t>(), K,
                       nullptr);
  });
}

// dW[N,K] = dy[M,N]^T x[M,K]:  A(n,m) = dy[m,n], B = x (row-major), inner dim M.
void linear_backward_weight_cpu(at::TensorBase& dw, const at::TensorBase& dy, const at::TensorBase& x) {
  const int64_t M = dy.size(0), N = dy.size(1), K = x.size(1);
  TM_DISPATCH_FLOATING(dy.scalar_type(), "linear_backward_weight_cpu", [&] {
    gemm_cpu<scalar_t>(N, K, M, dy.data_ptr<scalar_t>(), 1, N, x.data_ptr<scalar_t>(), K, 1, dw.data_ptr<scalar_t>(), K,
                       nullptr);
  });
}

static void register_glue(torch::Library& m) {
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_relu_forward", &linear_relu_forward);
  m.impl("linear_backward_input", &linear_backward_input);
  m.impl("linear_backward_weight", &linear_backward_weight);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
