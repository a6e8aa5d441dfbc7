"""Swapping the torch.nn modules of an existing model for ours, and back.

Our Linear, ReLU, LogSoftmax and losses subclass their torch.nn twins and add no state, so a
swap changes only each module's class: parameters (the same Parameter objects), buffers,
hooks, device, dtype and any optimizer already holding the parameters stay as they were.
Only exact types are swapped: a subclass of nn.Linear (e.g. the out-projection of
nn.MultiheadAttention) may use its weights its own way and is left alone.
"""
from torch import nn

from . import modules as M

__all__ = ["replace_modules", "restore_modules", "SWAPS"]

# torch.nn class -> ours
SWAPS = {nn.Linear: M.Linear, nn.ReLU: M.ReLU, nn.LogSoftmax: M.LogSoftmax, nn.NLLLoss: M.NLLLoss,
         nn.CrossEntropyLoss: M.CrossEntropyLoss, nn.MSELoss: M.MSELoss}
_BACK = {ours: theirs for theirs, ours in SWAPS.items()}


def _swap(model: nn.Module, table) -> nn.Module:
    for m in model.modules():
        cls = table.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return model


def replace_modules(model: nn.Module) -> nn.Module:
    """Swaps, in place, every nn.Linear, nn.ReLU, nn.LogSoftmax, nn.NLLLoss,
    nn.CrossEntropyLoss and nn.MSELoss of `model` (itself included) for ours; returns it."""
    return _swap(model, SWAPS)


def restore_modules(model: nn.Module) -> nn.Module:
    """The way back: swaps our modules of `model` for torch's, in place; returns it."""
    return _swap(model, _BACK)
