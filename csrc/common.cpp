// Input checks and index helpers shared by every op (see common.h).
#include "common.h"

#include <cstdlib>
#include <limits>
#include <sstream>

namespace torchmodules {

namespace {
std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}
}  // namespace

void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  const auto d = t.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(d == at::kDouble || d == at::kFloat || d == at::kHalf || d == at::kBFloat16,
                              "torchmodules.", op, ": ", arg, " must be float64, float32, float16 or bfloat16, got ",
                              d, " with shape ", shape_str(t.sizes()));
}

void check_same_dtype_device(const char* op, const char* a_name, const at::Tensor& a,
                             const char* b_name, const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "torchmodules.", op, ": ", a_name, " and ", b_name,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  check_same_device(op, a_name, a, b_name, b);
}

void check_same_device(const char* op, const char* a_name, const at::Tensor& a,
                       const char* b_name, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), "torchmodules.", op, ": ", a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  static const bool poison = [] {
    const char* v = std::getenv("TORCHMODULES_POISON");
    return v != nullptr && v[0] == '1';
  }();
  at::Tensor t = at::empty(sizes, opts);
  if (poison) {
    if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
    else t.fill_(0xFF);
  }
  return t;
}

at::TensorBase new_workspace(at::IntArrayRef sizes, const at::TensorOptions& opts) { return at::empty(sizes, opts); }

int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  const int64_t n = ndim == 0 ? 1 : ndim;  // a 0-d tensor accepts dim 0 and -1, as torch
  TORCH_CHECK_INDEX(dim >= -n && dim < n, "torchmodules.", op, ": dim ", dim,
                    " is out of range for a tensor of ", ndim, " dims");
  return dim < 0 ? dim + n : dim;
}

std::vector<int64_t> broadcast_shape(const char* op, at::IntArrayRef a, at::IntArrayRef b) {
  const size_t n = std::max(a.size(), b.size());
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t sa = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t sb = i < n - b.size() ? 1 : b[i - (n - b.size())];
    TORCH_CHECK(sa == sb || sa == 1 || sb == 1, "torchmodules.", op, ": shapes ", shape_str(a), " and ",
                shape_str(b), " cannot be broadcast together");
    out[i] = sa == 1 ? sb : sa;
  }
  return out;
}

void check_class_target_shape(const char* op, at::IntArrayRef in, const at::Tensor& target) {
  const at::IntArrayRef ts = target.sizes();
  if (in.size() == 1) {  // torch also takes a target of shape [1] here
    TORCH_CHECK(ts.size() <= 1, "torchmodules.", op, ": input of shape ", shape_str(in),
                " (one sample of C classes) needs a 0-d target, got shape ", shape_str(ts));
    TORCH_CHECK_VALUE(ts.empty() || ts[0] == 1, "torchmodules.", op, ": input of shape ", shape_str(in),
                      " (one sample of C classes) needs a 0-d target, got shape ", shape_str(ts));
    return;
  }
  std::vector<int64_t> want{in[0]};
  for (size_t k = 2; k < in.size(); ++k) want.push_back(in[k]);
  TORCH_CHECK_VALUE(!ts.empty() && ts[0] == in[0], "torchmodules.", op, ": target of shape ", shape_str(ts),
                    " does not match input of shape ", shape_str(in), ": the batch sizes differ (expected target ",
                    "shape ", shape_str(want), ")");
  TORCH_CHECK(ts.equals(want), "torchmodules.", op, ": target of shape ", shape_str(ts), " does not match input of ",
              "shape ", shape_str(in), " (expected target shape ", shape_str(want), ")");
}

Broadcast2 make_broadcast2(const char* op, at::IntArrayRef out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = (int64_t)out.size();
  // Element strides of a and b seen as tensors of shape `out` (0 on broadcast dims).
  std::vector<int64_t> sa(n, 0), sb(n, 0);
  for (int64_t d = 0; d < n; ++d) {
    const int64_t da = d - (n - a.dim()), db = d - (n - b.dim());
    if (da >= 0 && a.size(da) != 1) sa[d] = a.stride(da);
    if (db >= 0 && b.size(db) != 1) sb[d] = b.stride(db);
  }
  // Coalesce: merge dim d into the one inside it when both inputs step evenly across.
  Broadcast2 r{};
  std::vector<int64_t> size, ta, tb;
  for (int64_t d = 0; d < n; ++d) {
    if (out[d] == 1) continue;
    if (!size.empty() && ta.back() == sa[d] * out[d] && tb.back() == sb[d] * out[d]) {
      size.back() *= out[d];
      ta.back() = sa[d];
      tb.back() = sb[d];
    } else {
      size.push_back(out[d]);
      ta.push_back(sa[d]);
      tb.push_back(sb[d]);
    }
  }
  TORCH_CHECK((int)size.size() <= kMaxDims, "torchmodules.", op, ": at most ", kMaxDims,
              " dims after coalescing, got ", size.size());
  r.ndim = (int)size.size();
  for (int d = 0; d < r.ndim; ++d) {
    r.size[d] = size[d];
    r.stride_a[d] = ta[d];
    r.stride_b[d] = tb[d];
  }
  return r;
}

Rows make_rows(at::IntArrayRef shape, int64_t first_dim, int64_t last_dim) {
  Rows r{1, 1, 1};
  for (int64_t d = 0; d < (int64_t)shape.size(); ++d) {
    if (d < first_dim) r.outer *= shape[d];
    else if (d <= last_dim) r.reduce *= shape[d];
    else r.inner *= shape[d];
  }
  return r;
}

at::Tensor checked_mask(const char* op, const at::Tensor& mask, int64_t bytes, const at::Tensor& grad_y) {
  check_same_device(op, "grad_y", grad_y, "mask", mask);
  TORCH_CHECK(mask.scalar_type() == at::kByte && mask.dim() == 1 && mask.numel() == bytes, "torchmodules.", op,
              ": mask must be uint8 of ", bytes, " bytes for grad_y of shape ", grad_y.sizes(), ", got ",
              mask.scalar_type(), " ", mask.sizes());
  const bool aligned = mask.is_contiguous() && reinterpret_cast<uintptr_t>(mask.data_ptr()) % 16 == 0;
  return aligned ? mask : mask.clone(at::MemoryFormat::Contiguous);
}

}  // namespace torchmodules
