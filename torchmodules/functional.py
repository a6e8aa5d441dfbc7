"""Functional API, drop-in for torch.nn.functional / torch: each call is one of our ops
(fakes in torchmodules/_ops.py, autograd in csrc/autograd*.cpp)."""
import functools
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch

from ._ops import ops_direct as ops  # the forward ops by their typed C++ entries (_ops.py)

__all__ = ["linear", "linear_relu", "relu", "duplicate", "add", "maximum", "amax", "log_softmax", "nll_loss", "cross_entropy",
           "mse_loss", "nearest_neighbor"]


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = input weight^T + bias, as torch.nn.functional.linear: weight [out, in] (or [in]: then y
    has no out dim), bias [out] (or any shape that broadcasts to y's: [1], 0-d)."""
    if weight.dim() == 2 and (bias is None or bias.shape == weight.shape[:1]):
        return ops.linear_forward(input, weight, bias)
    return _linear_other(input, weight, bias)


def _linear_other(input, weight, bias):
    """linear's other shapes, around our op: a 1-d weight is one output feature, squeezed away;
    any other bias is added by our add (whose backward sums its gradient back to the bias's
    shape), of y's dtype as torch's addmm requires (under autocast cast first, as torch does)."""
    if input.dim() == 0 or weight.dim() == 0:
        raise RuntimeError(f"torchmodules.linear: input and weight need at least 1 dim, got shapes "
                           f"{list(input.shape)} and {list(weight.shape)}")
    if weight.dim() == 1:
        if input.shape[-1] != weight.shape[0]:
            raise RuntimeError(f"torchmodules.linear: input of shape {list(input.shape)} and weight of shape "
                               f"{list(weight.shape)} do not match: input.size(-1) = {input.shape[-1]} but "
                               f"weight.size(0) = {weight.shape[0]}")
        if bias is not None and input.dim() == 2:  # torch's addmm there takes no 1-d weight
            raise RuntimeError(f"torchmodules.linear: a 1-d weight (shape {list(weight.shape)}) with a bias "
                               f"needs an input other than 2-d (as torch), got {list(input.shape)}")
        y = ops.linear_forward(input, weight.unsqueeze(0), None).squeeze(-1)
    else:
        y = ops.linear_forward(input, weight, None)  # (a weight of 3 or more dims: the op's error)
    if bias is None:
        return y
    dev = y.device.type
    if torch.is_autocast_enabled(dev) and bias.dtype in (torch.float32, torch.float16, torch.bfloat16):
        bias = bias.to(torch.get_autocast_dtype(dev))
    if bias.dtype != y.dtype or bias.device != y.device or len(bias.shape) > len(y.shape) or any(
            b not in (1, n) for b, n in zip(reversed(bias.shape), reversed(y.shape))):
        raise RuntimeError(f"torchmodules.linear: bias of shape {list(bias.shape)} ({bias.dtype}, {bias.device}) "
                           f"does not broadcast to the output of shape {list(y.shape)} ({y.dtype}, {y.device})")
    return ops.add_forward(y, bias)


def linear_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """relu(linear(input, weight, bias)) as one op: the GEMM's epilogue applies the ReLU and writes
    its bit mask, and the backward keeps input, weight and that mask (1 bit per output), not the
    output. Shapes as linear's; a 1-d weight or a broadcast bias takes linear, then relu."""
    if weight.dim() == 2 and (bias is None or bias.shape == weight.shape[:1]):
        return ops.linear_relu_forward_first(input, weight, bias)
    return ops.relu_forward_first(_linear_other(input, weight, bias))


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), as torch.nn.functional.relu (relu(-0.0) is -0.0 and NaN stays NaN, as
    torch's). The backward keeps 1 bit per element.
    inplace=True writes the result back into input (a copy), as torch's in-place variant."""
    y = ops.relu_forward_first(input)
    return input.copy_(y) if inplace else y


def duplicate(input: torch.Tensor, n: int = 2) -> Tuple[torch.Tensor, ...]:
    """n copies of input; their gradients are summed in the backward."""
    return tuple(ops.duplicate_forward(input, n))


def _promoted(input: torch.Tensor, other: torch.Tensor):
    """Both cast to torch's result type, for dtypes that differ (as torch.add / torch.maximum
    promote: a bfloat16 Linear output under autocast plus a float32 residual gives float32)."""
    dt = torch.result_type(input, other)
    return input.to(dt), other.to(dt)


def _not_tensor(op: str, input, other, numbers: bool):
    """The TypeError of torch's for an operand that is neither a tensor nor (with `numbers`) a
    Python number, or None."""
    for k, v in (("input", input), ("other", other)):
        if not isinstance(v, torch.Tensor) and not (numbers and isinstance(v, (bool, int, float, complex))):
            return TypeError(f"torchmodules.{op}: argument '{k}' must be Tensor{' or Number' if numbers else ''}, "
                             f"not {type(v).__name__}")
    return None


def _add_number(input, other) -> torch.Tensor:
    """A Python number on either side (or both) of add, as torch.add: a wrapped number, rounded
    to torch's result type (float16 + 2.5 stays float16; 1e30 is inf there, so -inf + 1e30 is
    NaN, as torch's)."""
    err = _not_tensor("add", input, other, True)
    if err is not None:
        raise err
    if not isinstance(input, torch.Tensor) and not isinstance(other, torch.Tensor):  # two numbers: on the CPU
        input = torch.tensor(input)
    device = (input if isinstance(input, torch.Tensor) else other).device
    dt = torch.result_type(input, other)
    wide = torch.complex128 if dt.is_complex else torch.float64  # then cast: 1e300 is inf in float32, no error
    a, b = (v.to(dt) if isinstance(v, torch.Tensor) else torch.full((), v, dtype=wide, device=device).to(dt)
            for v in (input, other))
    return ops.add_forward(a, b)


def add(input: torch.Tensor, other: Union[torch.Tensor, float]) -> torch.Tensor:
    """input + other with broadcasting and type promotion, as torch.add (either may be a
    Python number)."""
    if isinstance(input, torch.Tensor) and isinstance(other, torch.Tensor):
        if input.dtype != other.dtype:
            input, other = _promoted(input, other)
        return ops.add_forward(input, other)
    return _add_number(input, other)


def maximum(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Elementwise max with broadcasting, as torch.maximum: NaN propagates; at ties the
    gradient is split in half. The backward keeps 2 bits per element. Mixed dtypes are promoted
    as torch.maximum does."""
    if not (isinstance(input, torch.Tensor) and isinstance(other, torch.Tensor)):
        raise _not_tensor("maximum", input, other, False)
    if input.dtype != other.dtype:
        input, other = _promoted(input, other)
    return ops.maximum_forward_first(input, other)


def amax(input: torch.Tensor, dim: Union[int, Sequence[int]] = (), keepdim: bool = False) -> torch.Tensor:
    """Max over dim (all dims if empty), as torch.amax: the gradient is shared evenly
    among tied maxima."""
    dims = [dim] if isinstance(dim, int) else list(dim)
    return ops.amax_forward(input, dims, keepdim)


def _legacy_softmax_dim(ndim: int) -> int:
    # torch.nn.functional._get_softmax_dim, for dim=None
    return 0 if ndim in (0, 1, 3) else 1


def log_softmax(input: torch.Tensor, dim: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """input - log(sum(exp(input), dim)), as torch.log_softmax; with dtype, input is cast
    first (as torch does)."""
    if dim is None:  # torch's legacy choice, with torch's warning
        warnings.warn("Implicit dimension choice for log_softmax has been deprecated. "
                      "Change the call to include dim=X as an argument.", stacklevel=2)
        dim = _legacy_softmax_dim(input.dim())
    if dtype is not None:
        input = input.to(dtype)
        # An explicit dtype wins over CUDA autocast's float32 (as torch's; CPU autocast has no log_softmax policy).
        if input.is_cuda and torch.is_autocast_enabled("cuda"):
            with torch.autocast("cuda", enabled=False):
                return ops.log_softmax_forward(input, dim)
    return ops.log_softmax_forward(input, dim)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  size_average: Optional[bool] = None, ignore_index: int = -100, reduce: Optional[bool] = None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *,
                  inplace_backward: bool = False) -> torch.Tensor:
    """Cross entropy of logits `input` (N, C, d1, ...), (N, C) or (C,) against class indices
    (int64, the input's shape without dim C) or class probabilities (the input's shape), as
    torch.nn.functional.cross_entropy (same signature and semantics). Fused: the forward keeps
    one log-sum-exp per row for the backward, no (N, C) log-probabilities. `weight` is not
    differentiable (as torch's for class indices).

    inplace_backward=True: the backward writes the logits' gradient into the logits' own storage
    and hands that on, so no (N, C) tensor is allocated at all (as apex's xentropy option; for
    large vocabularies the gradient is most of the loss's memory). After the backward `input`
    holds its gradient: use it only where nothing else reads the logits afterwards. Autograd
    nodes that saved the logits raise an error rather than read the gradient, and so does a
    second backward (retain_graph). Eager only: under torch.compile, torch.func transforms or
    autocast, for a non-contiguous input, a leaf input (its .grad would share the leaf's storage)
    or a target that needs a gradient, the usual backward runs."""
    red = _reduction_enum("cross_entropy", size_average, reduce, reduction)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("torchmodules.cross_entropy: weight is not differentiable; pass weight.detach()")
    if target.dtype == torch.uint8 and (input.dim() <= 2 or target.numel() == 0):
        # uint8 class indices where torch takes them (our kernels read int64); for a non-empty
        # (N, d1, ...) target torch raises a RuntimeError, so does the op.
        target = target.long()
    elif target.shape == input.shape and target.is_floating_point():
        # Probabilities: torch's result has the promoted dtype of input, target (and weight).
        dts = {input.dtype, target.dtype, input.dtype if weight is None else weight.dtype}
        if len(dts) > 1:
            dt = functools.reduce(torch.promote_types, dts)
            input, target, weight = input.to(dt), target.to(dt), None if weight is None else weight.to(dt)
    if inplace_backward and _ce_inplace_applies(input, target):
        return _CrossEntropyInplaceBackward.apply(input, target, weight, red, ignore_index, float(label_smoothing))
    return ops.cross_entropy_forward_first(input, target, weight, red, ignore_index, float(label_smoothing))


def _ce_inplace_applies(input, target):
    return (torch.is_grad_enabled() and input.requires_grad and not input.is_leaf and input.is_contiguous()
            and not target.requires_grad
            and not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is None
            and not torch.is_autocast_enabled(input.device.type))


class _CrossEntropyInplaceBackward(torch.autograd.Function):
    """cross_entropy whose backward writes dx into the logits (cross_entropy_backward_)."""

    @staticmethod
    def forward(ctx, input, target, weight, reduction, ignore_index, label_smoothing):
        loss, lse, total_weight = ops.cross_entropy_forward(input, target, weight, reduction, ignore_index,
                                                            label_smoothing)
        ctx.save_for_backward(input, target, weight, lse, total_weight)
        ctx.args = (reduction, ignore_index, label_smoothing)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        input, target, weight, lse, total_weight = ctx.saved_tensors  # (raises on a second backward)
        ops.cross_entropy_backward_(input, grad_loss, target, weight, lse, total_weight, *ctx.args)
        torch.autograd.graph.increment_version(input)  # nodes that saved the logits now raise
        return input.detach(), None, None, None, None, None


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # torch's at::Reduction numbers


def _reduction_enum(op: str, size_average, reduce, reduction: str) -> int:
    """torch's reduction argument (with its legacy size_average / reduce) as the op's int."""
    if size_average is not None or reduce is not None:  # deprecated, with torch's warning
        from torch.nn import _reduction
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"torchmodules.{op}: {reduction} is not a valid value for reduction "
                         f"(one of 'none', 'mean', 'sum')")
    return _REDUCTIONS[reduction]


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
             size_average: Optional[bool] = None, ignore_index: int = -100, reduce: Optional[bool] = None,
             reduction: str = "mean") -> torch.Tensor:
    """Negative log likelihood, as torch.nn.functional.nll_loss (same arguments, same order):
    -weight[t] input[n, t] per element, 0 where t == ignore_index; mean divides by the summed
    weight of the kept targets (NaN when none is kept). input (C), (N, C) or (N, C, d1, ...);
    target (), (N) or (N, d1, ...) of int64 (or uint8) class indices. A class index out of
    range raises an IndexError, on the GPU too (there at the cost of one synchronisation)."""
    red = _reduction_enum("nll_loss", size_average, reduce, reduction)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("torchmodules.nll_loss: not differentiable with respect to argument 'weight' "
                           "(as torch's nll_loss); this input cannot have requires_grad True.")
    return ops.nll_loss_forward_first(input, target, weight, red, ignore_index)


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: Optional[bool] = None,
             reduce: Optional[bool] = None, reduction: str = "mean") -> torch.Tensor:
    """(input - target)^2, as torch.nn.functional.mse_loss: none, mean or sum. Shapes that
    differ are broadcast with torch's warning; each gradient is summed back to its input. Mixed
    dtypes are promoted as torch's."""
    if target.size() != input.size() and not torch.compiler.is_compiling():  # (dynamo cannot trace warn)
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
                      "This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=2)
    red = _reduction_enum("mse_loss", size_average, reduce, reduction)
    if input.dtype != target.dtype:  # torch promotes (after broadcasting: a 0-d operand counts in full)
        dt = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(dt), target.to(dt)
    return ops.mse_loss_forward(input, target, red)


def nearest_neighbor(input: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The nearest of K prototypes (rows of weight [K, D]) to each row of input (*, D):
    returns (index, sqdist) of shape (*), index (int64) = argmin_k |input - weight[k]|^2 and sqdist
    that squared distance, summed directly as sum_d (x_d - w_kd)^2 (exact in float32, no
    |x|^2 - 2 x.w + |w|^2 expansion), the lowest index winning ties and the first NaN distance
    winning over numbers, as torch.argmin. The (N, K) distance matrix is never stored. index
    is not differentiable; the gradient of sqdist is 2 (x - w_index) for input and
    -2 (x - w_k) summed over the rows that chose k for weight (a deterministic sum)."""
    sqdist, index = ops.nearest_neighbor_forward(input, weight)
    return index, sqdist
