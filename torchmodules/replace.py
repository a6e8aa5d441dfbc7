"""Swapping the torch.nn modules of an existing model for ours, and back.

Our Linear, ReLU, LogSoftmax and losses subclass their torch.nn twins and add no state, so a
swap changes only each module's class: parameters (the same Parameter objects), buffers,
hooks, device, dtype and any optimizer already holding the parameters stay as they were.
Only exact types are swapped: a subclass of nn.Linear (e.g. the out-projection of
nn.MultiheadAttention) may use its weights its own way and is left alone.
"""
from torch import nn

from . import modules as M

__all__ = ["replace_modules", "restore_modules", "SWAPS", "FusedAway"]

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


class FusedAway(nn.Identity):
    """The place of a ReLU fused into the LinearReLU before it (replace_modules(fuse=True)); it
    keeps the index, so the Sequential's state_dict keys are unchanged, and the ReLU's inplace
    flag, for restore_modules."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace


_LINEARS = (nn.Linear, M.Linear)
_RELUS = (nn.ReLU, M.ReLU)


def _fuse(model: nn.Module) -> None:
    """In every nn.Sequential: a Linear (torch's or ours, exact type) directly followed by a ReLU
    becomes LinearReLU (on the same parameters) + FusedAway."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if type(seq[i]) in _LINEARS and type(seq[i + 1]) in _RELUS:
                relu = seq[i + 1]
                seq[i] = M.LinearReLU.from_linear(seq[i])
                seq[i + 1] = FusedAway(relu.inplace)


def _unfuse(model: nn.Module) -> None:
    """The way back: LinearReLU + FusedAway -> nn.Linear + nn.ReLU."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if type(seq[i]) is M.LinearReLU and type(seq[i + 1]) is FusedAway:
                seq[i + 1] = nn.ReLU(inplace=seq[i + 1].inplace)
                seq[i] = seq[i].to_linear(nn.Linear)


def replace_modules(model: nn.Module, fuse: bool = False) -> nn.Module:
    """Swaps, in place, every nn.Linear, nn.ReLU, nn.LogSoftmax, nn.NLLLoss,
    nn.CrossEntropyLoss and nn.MSELoss of `model` (itself included) for ours; returns it.
    fuse=True first turns each Linear directly followed by a ReLU inside an nn.Sequential into
    LinearReLU + FusedAway (an nn.Identity), keeping indices so state_dict keys still map; those
    two are new module objects (the Parameters are the same), so hooks on them are not kept."""
    if fuse:
        _fuse(model)
    return _swap(model, SWAPS)


def restore_modules(model: nn.Module) -> nn.Module:
    """The way back: swaps our modules of `model` for torch's, in place (a fused LinearReLU +
    FusedAway becomes nn.Linear + nn.ReLU again); returns it."""
    _unfuse(model)
    return _swap(model, _BACK)
