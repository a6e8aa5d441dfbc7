"""torchmodules: the basic modules of a neural network with hand-written forward and
backward kernels (C++ for the CPU, CUDA for the GPU), as drop-in torch.nn modules."""
from . import functional
from ._ops import ops
from . import _func  # noqa: F401  (torch.func transforms over the ops, forward-mode AD)
from .modules import Add, Duplicate, Linear, LinearReLU, LogSoftmax, Maximum, ReLU
from . import optim
from .replace import replace_modules, restore_modules
from .modules import CrossEntropyLoss, MSELoss, NLLLoss
from .modules import NearestNeighbor

__all__ = ["functional", "ops", "optim", "Linear", "LinearReLU", "ReLU", "Duplicate", "Add", "Maximum", "LogSoftmax",
           "NLLLoss", "CrossEntropyLoss", "MSELoss", "NearestNeighbor", "replace_modules", "restore_modules"]
__version__ = "0.1.0"
