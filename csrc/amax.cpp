// Max over dims (the lecture's Max module applied along dims).
//   Forward:  y = max over the reduced dims of x; NaN if any reduced element is NaN.
//   Backward: dx = (dy / c) * [x == y], c = #{x == y}: the gradient shared evenly among
//             tied maxima, and NaN over a row whose max is NaN (c = 0), exactly as torch.
//   Double backward (linear in dy): d_dy = sum over the row of (gg / c) * [x == y].
#include "ops.h"
#include "simd.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace torchmodules {

namespace {
// x laid out for the kernels: contiguous, the reduced dims one run [outer, reduce, inner].
// Adjacent reduced dims need no copy; others are permuted to the end (one copy).
struct AmaxLayout {
  at::Tensor x;                 // contiguous, permuted when `perm` is non-empty
  Rows rows;
  std::vector<int64_t> perm;    // x.permute(perm) gave this layout; empty if none
  std::vector<int64_t> y_shape; // the output's shape (keepdim or not)
};

AmaxLayout amax_layout(const char* op, const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  const int64_t n = x.dim();
  // torch's checks and types in torch's order: all dims (none given) of an empty tensor, then
  // each dim in range and not empty, then no dim twice.
  TORCH_CHECK(!dim.empty() || x.numel() > 0, "torchmodules.", op, ": the max of all elements of an empty tensor ",
              "(shape ", x.sizes(), "); name the dims to reduce");
  for (int64_t d : dim) {
    const int64_t w = wrap_dim(op, d, n);
    TORCH_CHECK_INDEX(n == 0 || x.size(w) > 0, "torchmodules.", op, ": cannot reduce over dim ", w, " of size 0 ",
                      "(shape ", x.sizes(), "): max of an empty set");
  }
  std::vector<bool> red(std::max<int64_t>(n, 1), dim.empty());
  for (int64_t d : dim) {
    const int64_t w = wrap_dim(op, d, n);
    TORCH_CHECK(!red[w], "torchmodules.", op, ": dim ", w, " appears multiple times in ", dim);
    red[w] = true;
  }
  AmaxLayout L;
  int64_t first = -1, last = -1;
  bool run = true;
  for (int64_t d = 0; d < n; ++d) {
    if (red[d]) {
      if (first < 0) first = d;
      else if (last != d - 1) run = false;
      last = d;
    }
    if (!red[d]) L.y_shape.push_back(x.size(d));
    else if (keepdim) L.y_shape.push_back(1);
  }
  if (first < 0) {  // nothing reduced (0-d input): y = x
    L.x = x.contiguous();
    L.rows = Rows{x.numel(), 1, 1};
  } else if (run) {
    L.x = x.contiguous();
    L.rows = make_rows(x.sizes(), first, last);
  } else {
    for (int64_t d = 0; d < n; ++d) if (!red[d]) L.perm.push_back(d);
    for (int64_t d = 0; d < n; ++d) if (red[d]) L.perm.push_back(d);
    L.x = x.permute(L.perm).contiguous();
    const int64_t kept = n - (int64_t)std::count(red.begin(), red.begin() + n, true);
    L.rows = make_rows(L.x.sizes(), kept, n - 1);
  }
  return L;
}

void check_amax_grads(const char* op, const at::Tensor& g, const at::Tensor& x, const at::Tensor& y,
                      const AmaxLayout& L) {
  check_floating(op, "grad", g);
  check_same_dtype_device(op, "x", x, "grad", g);
  check_same_dtype_device(op, "x", x, "y", y);
  TORCH_CHECK(y.sizes() == at::IntArrayRef(L.y_shape), "torchmodules.", op, ": y has shape ", y.sizes(),
              " but the max of x of shape ", x.sizes(), " has shape ", L.y_shape);
}

// Undo the layout's permutation on a tensor laid out like L.x.
at::Tensor unpermute(const at::Tensor& t, const AmaxLayout& L) {
  if (L.perm.empty()) return t;
  std::vector<int64_t> inv(L.perm.size());
  for (size_t i = 0; i < L.perm.size(); ++i) inv[L.perm[i]] = (int64_t)i;
  return t.permute(inv).contiguous();
}
}  // namespace

// ---- glue --------------------------------------------------------------------------------

at::Tensor amax_forward(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  check_floating("amax", "input", x);
  const AmaxLayout L = amax_layout("amax", x, dim, keepdim);
  at::Tensor y = new_output(L.y_shape, x.options());
  if (y.numel() > 0) TM_LAUNCH(amax_forward, x, y, L.x, L.rows);
  return y;
}

at::Tensor amax_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& y, at::IntArrayRef dim,
                         bool keepdim) {
  const AmaxLayout L = amax_layout("amax_backward", x, dim, keepdim);
  check_amax_grads("amax_backward", grad_y, x, y, L);
  TORCH_CHECK(grad_y.sizes() == y.sizes(), "torchmodules.amax_backward: grad_y has shape ", grad_y.sizes(),
              ", y has shape ", y.sizes());
  const at::Tensor dyc = grad_y.contiguous(), yc = y.contiguous();
  at::Tensor dx = new_output(L.x.sizes(), x.options());
  if (dx.numel() > 0) TM_LAUNCH(amax_backward, x, dx, dyc, L.x, yc, L.rows);
  return unpermute(dx, L);
}

at::Tensor amax_double_backward(const at::Tensor& gg, const at::Tensor& x, const at::Tensor& y, at::IntArrayRef dim,
                                bool keepdim) {
  const AmaxLayout L = amax_layout("amax_double_backward", x, dim, keepdim);
  check_amax_grads("amax_double_backward", gg, x, y, L);
  TORCH_CHECK(gg.sizes() == x.sizes(), "torchmodules.amax_double_backward: gg has shape ", gg.sizes(),
              ", x has shape ", x.sizes());
  const at::Tensor ggc = L.perm.empty() ? gg.contiguous() : gg.permute(L.perm).contiguous();
  const at::Tensor yc = y.contiguous();
  at::Tensor d_dy = new_output(L.y_shape, x.options());
  if (d_dy.numel() > 0) TM_LAUNCH(amax_double_backward, x, d_dy, ggc, L.x, yc, L.rows);
  return d_dy;
}

// ---- CPU kernels ---------------------------------------------------------------------------
// Each (o, i) is one row of `reduce` elements at stride `inner`. Along the last dim
// (inner == 1) rows are contiguous and the loops run along them; otherwise the loops run
// across the `inner` rows of an outer index. TM_SIMD functions are compiled per ISA (simd.h).

// y[o] = max_r x[o, r] on rows [o0, o1) of n contiguous elements; NaN if any is NaN.
// Rows shorter than a vector (kShort) take a plain loop: the vector one would only
// run its remainder code.
template <typename T, bool kShort>
TM_SIMD static void amax_forward_rows(T* __restrict y, const T* __restrict x, int64_t n, int64_t o0, int64_t o1) {
  using A = acc_t<T>;
  for (int64_t o = o0; o < o1; ++o) {
    A m = -std::numeric_limits<A>::infinity();
    int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan) if (!kShort)
    for (int64_t r = 0; r < n; ++r) {
      const A v = to_acc(x[o * n + r]);
      m = std::max(m, v);
      nan |= v != v;
    }
    y[o] = from_acc<T>(nan ? std::numeric_limits<A>::quiet_NaN() : m);
  }
}

// The same across the `inner` rows of one outer index: y[i] = max_r x[r, i].
template <typename T>
TM_SIMD static void amax_forward_cols(T* __restrict y, const T* __restrict x, Rows R, acc_t<T>* __restrict m) {
  using A = acc_t<T>;
  for (int64_t i = 0; i < R.inner; ++i) m[i] = to_acc(x[i]);
  for (int64_t r = 1; r < R.reduce; ++r)
    for (int64_t i = 0; i < R.inner; ++i) {
      const A v = to_acc(x[r * R.inner + i]);
      m[i] = (v > m[i] || v != v) && m[i] == m[i] ? v : m[i];  // once NaN, stays NaN
    }
  for (int64_t i = 0; i < R.inner; ++i) y[i] = from_acc<T>(m[i]);
}

template <typename T>
static void amax_forward_kernel(T* y, const T* x, Rows R) {
  at::parallel_for(0, R.outer, std::max<int64_t>(1, kGrain / (R.reduce * R.inner)), [&](int64_t o0, int64_t o1) {
    if (R.inner == 1 && R.reduce < 16) return amax_forward_rows<T, true>(y, x, R.reduce, o0, o1);
    if (R.inner == 1) return amax_forward_rows<T, false>(y, x, R.reduce, o0, o1);
    std::vector<acc_t<T>> m(R.inner);
    for (int64_t o = o0; o < o1; ++o) amax_forward_cols(y + o * R.inner, x + o * R.reduce * R.inner, R, m.data());
  });
}

// For each row: c = #{x == y}; then either dx = (dy / c) * [x == y]   (backward)
//                                  or     d_dy = sum (gg / c) * [x == y] (double backward).
// Products, not selects: a NaN row (c = 0) gets NaN gradients, as torch.
// One row of `n` elements at stride `step`; contiguous (step 1) rows vectorise.
template <typename T, bool kDouble>
TM_SIMD static void amax_grad_row(T* __restrict out, const T* __restrict g, const T* __restrict x, T yt, int64_t n,
                                  int64_t step) {
  using A = acc_t<T>;
  const A yv = to_acc(yt);
  int64_t c = 0;
#pragma omp simd reduction(+ : c)
  for (int64_t r = 0; r < n; ++r) c += to_acc(x[r * step]) == yv;
  if (!kDouble) {
    const A share = to_acc(g[0]) / A(c);
    for (int64_t r = 0; r < n; ++r) out[r * step] = from_acc<T>(share * A(to_acc(x[r * step]) == yv));
  } else {
    A acc = A(0);
#pragma omp simd reduction(+ : acc)
    for (int64_t r = 0; r < n; ++r) acc += to_acc(g[r * step]) / A(c) * A(to_acc(x[r * step]) == yv);
    out[0] = from_acc<T>(acc);
  }
}

// kDouble == false: out = dx (like x), g = dy (like y);  true: out = d_dy (like y), g = gg (like x).
template <typename T, bool kDouble>
static void amax_grad_kernel(T* out, const T* g, const T* x, const T* y, Rows R) {
  at::parallel_for(0, R.outer, std::max<int64_t>(1, kGrain / (R.reduce * R.inner)), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t i = 0; i < R.inner; ++i) {
        const int64_t xrow = o * R.reduce * R.inner + i, yrow = o * R.inner + i;
        amax_grad_row<T, kDouble>(out + (kDouble ? yrow : xrow), g + (kDouble ? xrow : yrow), x + xrow, y[yrow],
                                  R.reduce, R.inner);
      }
  });
}

void amax_forward_cpu(at::TensorBase& y, const at::TensorBase& x, Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "amax_forward_cpu",
                       [&] { amax_forward_kernel<scalar_t>(y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r); });
}

void amax_backward_cpu(at::TensorBase& dx, const at::TensorBase& dy, const at::TensorBase& x, const at::TensorBase& y, Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "amax_backward_cpu", [&] {
    amax_grad_kernel<scalar_t, false>(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                      y.data_ptr<scalar_t>(), r);
  });
}

void amax_double_backward_cpu(at::TensorBase& d_dy, const at::TensorBase& gg, const at::TensorBase& x, const at::TensorBase& y,
                              Rows r) {
  TM_DISPATCH_FLOATING(x.scalar_type(), "amax_double_backward_cpu", [&] {
    amax_grad_kernel<scalar_t, true>(d_dy.data_ptr<scalar_t>(), gg.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                     y.data_ptr<scalar_t>(), r);
  });
}

static void register_glue(torch::Library& m) {
  m.impl("amax_forward", &amax_forward);
  m.impl("amax_backward", &amax_backward);
  m.impl("amax_double_backward", &amax_double_backward);
}
TM_REGISTER_GLUE(register_glue)

}  // namespace torchmodules
