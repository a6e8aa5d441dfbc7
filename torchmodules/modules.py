"""Drop-in modules. Linear, ReLU and LogSoftmax subclass their torch.nn twins, so
parameters, default initialisation, state_dict keys and repr are torch's own; only the
forward (and so the backward) runs our kernels."""
import torch
from torch import nn

from . import functional as F

__all__ = ["Linear", "ReLU", "Duplicate", "Add", "Maximum", "LogSoftmax", "NLLLoss", "CrossEntropyLoss", "MSELoss"]


class Linear(nn.Linear):
    """y = x W^T + b, as torch.nn.Linear (same parameters, init and state_dict)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class ReLU(nn.ReLU):
    """max(x, 0), as torch.nn.ReLU; saves 1 bit per element for the backward."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)


class Duplicate(nn.Module):
    """Fan-out: returns n copies of its input; the backward sums their gradients."""

    def __init__(self, n: int = 2):
        super().__init__()
        self.n = n

    def forward(self, input: torch.Tensor):
        return F.duplicate(input, self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class Add(nn.Module):
    """input + other with broadcasting; each gradient is summed back to its input's shape."""

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return F.add(input, other)


class Maximum(nn.Module):
    """Elementwise max(input, other) with broadcasting, as torch.maximum."""

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return F.maximum(input, other)


class LogSoftmax(nn.LogSoftmax):
    """log_softmax over dim, as torch.nn.LogSoftmax."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(input, self.dim)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Cross entropy of logits against class indices or probabilities, as
    torch.nn.CrossEntropyLoss (weight, ignore_index, reduction, label_smoothing), fused."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)
class NLLLoss(nn.NLLLoss):
    """Negative log likelihood, as torch.nn.NLLLoss (same arguments, weight buffer and state_dict)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(nn.MSELoss):
    """Mean squared error, as torch.nn.MSELoss (same arguments)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)
