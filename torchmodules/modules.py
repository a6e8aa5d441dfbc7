"""Drop-in modules. Linear, ReLU and LogSoftmax subclass their torch.nn twins, so
parameters, default initialisation, state_dict keys and repr are torch's own; only the
forward (and so the backward) runs our kernels."""
import torch
from torch import nn

from . import functional as F

__all__ = ["Linear", "LinearReLU", "ReLU", "Duplicate", "Add", "Maximum", "LogSoftmax", "NLLLoss", "CrossEntropyLoss", "MSELoss",
           "NearestNeighbor"]


class Linear(nn.Linear):
    """y = x W^T + b, as torch.nn.Linear (same parameters, init and state_dict)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class LinearReLU(nn.Linear):
    """relu(x W^T + b) as one op (Linear then ReLU fused: the ReLU is applied, and its bit mask
    written, by the GEMM's epilogue). Parameters, init and state_dict are nn.Linear's, so
    `LinearReLU(...).load_state_dict(linear.state_dict())` works. The backward keeps x, W and
    1 bit per output, not the output that relu(linear(x)) keeps for ReLU's backward."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear_relu(input, self.weight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "LinearReLU":
        """A LinearReLU on linear's parameters (the same Parameter objects, not copies)."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_features, m.out_features = linear.in_features, linear.out_features
        m.weight = linear.weight
        m.register_parameter("bias", linear.bias)
        m.train(linear.training)
        return m

    def to_linear(self, cls=nn.Linear) -> nn.Linear:
        """The way back: a `cls` (nn.Linear) on this module's parameters; ReLU is then separate."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_features, m.out_features = self.in_features, self.out_features
        m.weight = self.weight
        m.register_parameter("bias", self.bias)
        m.train(self.training)
        return m


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
    torch.nn.CrossEntropyLoss (weight, ignore_index, reduction, label_smoothing), fused.
    inplace_backward=True: the backward writes the gradient into the logits' storage (see
    torchmodules.functional.cross_entropy)."""

    def __init__(self, *args, inplace_backward: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.inplace_backward = inplace_backward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               inplace_backward=getattr(self, "inplace_backward", False))
class NLLLoss(nn.NLLLoss):
    """Negative log likelihood, as torch.nn.NLLLoss (same arguments, weight buffer and state_dict)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(nn.MSELoss):
    """Mean squared error, as torch.nn.MSELoss (same arguments)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class NearestNeighbor(nn.Module):
    """The lecture's nearest-neighbour model: K prototypes w_k (the parameter ``weight``
    [num_prototypes, features]) and, for an input x (*, features), ``(index, sqdist)`` with
    index = argmin_k |x - w_k|^2 (int64, shape (*)) and sqdist that squared distance (see
    torchmodules.functional.nearest_neighbor). Training it minimises the average sqdist
    (online k-means), or its class-restricted variant (a prototype classifier).

    ``weight`` starts as standard normal samples (torch.randn), points of a standardised input
    space: prototypes live among the inputs, not around 0 at nn.Linear's 1/sqrt(features) scale.
    Better still, copy data into it (random samples or class means) before training."""

    def __init__(self, num_prototypes: int, features: int, device=None, dtype=None):
        super().__init__()
        self.num_prototypes, self.features = num_prototypes, features
        self.weight = nn.Parameter(torch.empty((num_prototypes, features), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, input: torch.Tensor):
        return F.nearest_neighbor(input, self.weight)

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, features={self.features}"
