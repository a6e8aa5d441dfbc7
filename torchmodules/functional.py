"""Functional API, drop-in for torch.nn.functional / torch: each call is one of our ops
(autograd, fakes and backward kernels in torchmodules/_ops.py)."""
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch

from ._ops import ops

__all__ = ["linear", "relu", "duplicate", "add", "maximum", "amax", "log_softmax", "cross_entropy"]


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = input weight^T + bias, as torch.nn.functional.linear."""
    return ops.linear_forward(input, weight, bias)


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), as torch.nn.functional.relu. The backward keeps 1 bit per element.
    inplace=True writes the result back into input (a copy), as torch's in-place variant."""
    y = ops.relu_forward(input)[0]
    return input.copy_(y) if inplace else y


def duplicate(input: torch.Tensor, n: int = 2) -> Tuple[torch.Tensor, ...]:
    """n copies of input; their gradients are summed in the backward."""
    return tuple(ops.duplicate_forward(input, n))


def add(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """input + other with broadcasting, as torch.add (both must share one dtype)."""
    return ops.add_forward(input, other)


def maximum(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Elementwise max with broadcasting, as torch.maximum: NaN propagates; at ties the
    gradient is split in half. The backward keeps 2 bits per element."""
    return ops.maximum_forward(input, other)[0]


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
    return ops.log_softmax_forward(input, dim)


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  size_average: Optional[bool] = None, ignore_index: int = -100, reduce: Optional[bool] = None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross entropy of logits `input` (N, C, d1, ...), (N, C) or (C,) against class indices
    (int64, the input's shape without dim C) or class probabilities (the input's shape), as
    torch.nn.functional.cross_entropy (same signature and semantics). Fused: the forward keeps
    one log-sum-exp per row for the backward, no (N, C) log-probabilities. `weight` is not
    differentiable (as torch's for class indices)."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"torchmodules.cross_entropy: {reduction} is not a valid value for reduction")
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("torchmodules.cross_entropy: weight is not differentiable; pass weight.detach()")
    return ops.cross_entropy_forward(input, target, weight, _REDUCTIONS[reduction], ignore_index,
                                     float(label_smoothing))[0]
