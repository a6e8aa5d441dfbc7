"""The Python half of the op table: for every op of csrc/ops.cpp, its fake (meta) kernel,
for torch.compile and opcheck. Fakes return contiguous tensors, as the real kernels do.

The autograd formulas are C++ (csrc/autograd*.cpp), each backward built from our ops and
itself differentiable (double backward; third order of log_softmax and cross_entropy through
torch ops): the Python torch.library.register_autograd layer cost 10-40 us per call.
"""
import torch

try:
    from . import _C  # noqa: F401  (loads the kernels and the op schemas)
except ImportError as e:  # missing, or built against another torch
    raise ImportError(
        f"torchmodules: cannot load the compiled kernels (torchmodules._C): {e}. Build them for this torch "
        f"({torch.__version__}) with `pip install --no-build-isolation -e .` in the torchmodules checkout.") from e

ops = torch.ops.torchmodules
_lib = "torchmodules::"


class _Direct:
    """ops.<name> for the Python API (functional.py): _C.<name>, the op's typed C++ entry (csrc/python.cpp:
    the same dispatcher call, ~1 us less than torch.ops' boxed one), except where a Python layer must see
    the call as torch.ops.torchmodules.<name>: while torch.compile traces, and for arguments with a
    __torch_function__ override or under a TorchFunctionMode. ops.<name>_first: the op's first output
    alone (_C.<name>_first, or torch.ops' [0]). Ops without a typed entry are torch.ops'."""

    def __init__(self):
        from . import _C
        is_compiling, has_torch_function = torch.compiler.is_compiling, torch._C._has_torch_function
        for name in ("linear_forward", "duplicate_forward", "add_forward", "amax_forward", "log_softmax_forward",
                     "cross_entropy_forward", "mse_loss_forward", "nearest_neighbor_forward",
                     "linear_relu_forward_first", "relu_forward_first", "maximum_forward_first",
                     "cross_entropy_forward_first", "nll_loss_forward_first"):
            typed = getattr(_C, name)
            if name.endswith("_first"):
                def boxed(*args, op=getattr(ops, name[:-len("_first")])):
                    return op(*args)[0]
            else:
                boxed = getattr(ops, name)

            def call(*args, boxed=boxed, typed=typed):
                return boxed(*args) if is_compiling() or has_torch_function(args) else typed(*args)
            call.__name__ = call.__qualname__ = name
            setattr(self, name, call)

    def __getattr__(self, name):
        return getattr(ops, name)


ops_direct = _Direct()


def _fake(name):
    return torch.library.register_fake(_lib + name)


def relu_mask_bytes(numel):
    return (numel + 31) // 32 * 4


def maximum_mask_bytes(numel):
    return (numel + 15) // 16 * 4


# ---- Linear: y = x W^T + b --------------------------------------------------------------------

@_fake("linear_forward")
def _(x, weight, bias):
    torch._check(x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1],
                 lambda: f"torchmodules.linear: input {list(x.shape)} and weight {list(weight.shape)} do not match")
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_fake("linear_backward_input")
def _(grad_y, weight):
    return grad_y.new_empty((*grad_y.shape[:-1], weight.shape[1]))


@_fake("linear_backward_weight")
def _(grad_y, x):
    return grad_y.new_empty((grad_y.shape[-1], x.shape[-1]))


# linear_forward, linear_backward_input, linear_backward_weight: autograd in csrc/autograd.cpp.


# ---- Linear + ReLU fused: y = relu(x W^T + b), ReLU's bit mask of y -----------------------------

@_fake("linear_relu_forward")
def _(x, weight, bias):
    torch._check(x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1],
                 lambda: f"torchmodules.linear_relu: input {list(x.shape)} and weight {list(weight.shape)} do not match")
    y = x.new_empty((*x.shape[:-1], weight.shape[0]))
    return y, x.new_empty((relu_mask_bytes(y.numel()),), dtype=torch.uint8)


# linear_relu_forward: autograd in csrc/autograd.cpp (its backward: relu_backward, then Linear's).


# ---- ReLU: y = max(x, 0), one saved bit per element ------------------------------------------

@_fake("relu_forward")
def _(x):
    return x.new_empty(x.shape), x.new_empty((relu_mask_bytes(x.numel()),), dtype=torch.uint8)


@_fake("relu_backward")
def _(grad_y, mask):
    return grad_y.new_empty(grad_y.shape)


# relu_forward, relu_backward: autograd in csrc/autograd.cpp.


# ---- Duplicate: y_k = x; dx = sum_k dy_k ------------------------------------------------------

@_fake("duplicate_forward")
def _(x, n):
    return [x.new_empty(x.shape) for _ in range(n)]


@_fake("duplicate_backward")
def _(grads):
    return grads[0].new_empty(grads[0].shape)


# duplicate_forward, duplicate_backward: autograd in csrc/autograd.cpp.


# ---- Add: y = a + b (broadcast) -------------------------------------------------------------

@_fake("add_forward")
def _(a, b):
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape))


@_fake("add_backward")
def _(grad_y, size):
    return grad_y.new_empty(size)


# add_forward, add_backward: autograd in csrc/autograd.cpp.


# ---- Maximum: y = max(a, b) (broadcast), a 2-bit code per element ---------------------------

@_fake("maximum_forward")
def _(a, b):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    y = a.new_empty(shape)
    return y, a.new_empty((maximum_mask_bytes(y.numel()),), dtype=torch.uint8)


@_fake("maximum_backward")
def _(grad_y, mask, which):
    return grad_y.new_empty(grad_y.shape)


@_fake("maximum_backward_both")
def _(grad_y, mask):
    return grad_y.new_empty(grad_y.shape), grad_y.new_empty(grad_y.shape)


# maximum_forward, maximum_backward, maximum_backward_both: autograd in csrc/autograd.cpp.


# ---- amax: y = max over dims ---------------------------------------------------------------

def _amax_shape(x, dim, keepdim):
    n = x.dim()
    red = set(range(n)) if len(dim) == 0 else {d % max(n, 1) for d in dim}
    return [1 if d in red else x.shape[d] for d in range(n) if keepdim or d not in red]


@_fake("amax_forward")
def _(x, dim, keepdim):
    return x.new_empty(_amax_shape(x, dim, keepdim))


@_fake("amax_backward")
def _(grad_y, x, y, dim, keepdim):
    return x.new_empty(x.shape)


@_fake("amax_double_backward")
def _(gg, x, y, dim, keepdim):
    return x.new_empty(_amax_shape(x, dim, keepdim))


# amax_forward, amax_backward, amax_double_backward: autograd in csrc/autograd_rows.cpp.


# ---- LogSoftmax ----------------------------------------------------------------------------

@_fake("log_softmax_forward")
def _(x, dim):
    return x.new_empty(x.shape)


@_fake("log_softmax_backward")
def _(grad_y, y, dim):
    return y.new_empty(y.shape)


@_fake("log_softmax_double_backward")
def _(gg, grad_y, y, dim):
    return y.new_empty(y.shape), y.new_empty(y.shape)


# log_softmax_forward, log_softmax_backward, log_softmax_double_backward: autograd in csrc/autograd_rows.cpp.


# ---- CrossEntropy, fused with its log-softmax ---------------------------------------------------
# The forward saves lse per row as its two terms (m, log s), shape [rows, 2] (x - lse taken as
# (x - m) - log s, as torch), and total_weight = [den, mean_c w_c], marked non-differentiable:
# the backward op reads lse as a cached function of the input, so its derivative in `input`
# (the double backward op) is the total one, through lse too. Weight is not differentiable.

def _ce_rows(x):
    """The input's shape without its class dim (the loss per row)."""
    return [s for d, s in enumerate(x.shape) if d != (0 if x.dim() == 1 else 1)]


def _ce_acc(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@_fake("cross_entropy_forward")
def _(input, target, weight, reduction, ignore_index, label_smoothing):
    rows = _ce_rows(input)
    return (input.new_empty(rows if reduction == 0 else ()), input.new_empty(rows + [2], dtype=_ce_acc(input)),
            input.new_empty((2,), dtype=_ce_acc(input)))


@_fake("cross_entropy_backward")
def _(grad_loss, input, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing, target_grad):
    return input.new_empty(input.shape), target.new_empty(target.shape) if target_grad else input.new_empty((0,))


@_fake("cross_entropy_backward_")
def _(input, grad_loss, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing):
    return None


@_fake("cross_entropy_double_backward")
def _(gg_input, gg_target, grad_loss, input, target, weight, lse, total_weight, reduction, ignore_index,
      label_smoothing):
    d_q = target.new_empty(target.shape) if target.is_floating_point() else input.new_empty((0,))
    return grad_loss.new_empty(grad_loss.shape), input.new_empty(input.shape), d_q


# cross_entropy_forward, cross_entropy_backward, cross_entropy_double_backward: autograd in
# csrc/autograd_loss.cpp.


# ---- SGD step: in place on params (and momentum buffers), not differentiable --------------

@_fake("sgd_step")
def _(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    return None
# ---- NLLLoss: y = -w[t] x[.., t, ..] (none / mean over W / sum); forward also returns W --------

def _nll_loss_shape(input_shape, target, reduction):
    return list(target.shape) if reduction == 0 and len(input_shape) > 1 else []


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@_fake("nll_loss_forward")
def _(input, target, weight, reduction, ignore_index):
    torch._check(input.dim() >= 1, lambda: f"torchmodules.nll_loss: input of shape {list(input.shape)}")
    return (input.new_empty(_nll_loss_shape(input.shape, target, reduction)),
            input.new_empty((), dtype=_acc_dtype(input.dtype)))


@_fake("nll_loss_backward")
def _(grad_y, target, weight, total_weight, input_size, reduction, ignore_index):
    return grad_y.new_empty(input_size)


# nll_loss_forward, nll_loss_backward: autograd in csrc/autograd_loss.cpp.


# ---- MSELoss: y = (x - t)^2 (none / mean / sum), x and t broadcast ---------------------------

def _mse_shape(a, b, reduction):
    return list(torch.broadcast_shapes(a.shape, b.shape)) if reduction == 0 else []


@_fake("mse_loss_forward")
def _(input, target, reduction):
    return input.new_empty(_mse_shape(input, target, reduction))


@_fake("mse_loss_backward")
def _(grad_y, input, target, reduction):
    return input.new_empty(torch.broadcast_shapes(input.shape, target.shape))


@_fake("mse_loss_double_backward")
def _(gg, grad_y, input, target, reduction):
    shape = torch.broadcast_shapes(input.shape, target.shape)
    return grad_y.new_empty(grad_y.shape), input.new_empty(shape), input.new_empty(shape)


# mse_loss_forward, mse_loss_backward, mse_loss_double_backward: autograd in csrc/autograd_loss.cpp.


# ---- NearestNeighbor: index_n = argmin_k |x_n - w_k|^2 and that squared distance ------------

@_fake("nearest_neighbor_forward")
def _(x, weight):
    torch._check(x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1],
                 lambda: f"torchmodules.nearest_neighbor: input {list(x.shape)} and weight {list(weight.shape)} "
                         f"do not match")
    rows = x.shape[:-1]
    return x.new_empty(rows), x.new_empty(rows, dtype=torch.int64)  # (sqdist, index)


@_fake("nearest_neighbor_backward_input")
def _(grad, x, weight, index):
    return x.new_empty(x.shape)


@_fake("nearest_neighbor_backward_weight")
def _(grad, x, weight, index):
    return weight.new_empty(weight.shape)


# nearest_neighbor_forward, nearest_neighbor_backward_input, nearest_neighbor_backward_weight: autograd in
# csrc/autograd_nearest_neighbor.cpp.
