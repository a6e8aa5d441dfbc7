"""How the Python API enters the ops (torchmodules/_ops.py, _Direct): plain tensors through the
typed C++ entries of csrc/python.cpp, anything a Python layer must see (a __torch_function__
override, a TorchFunctionMode) through torch.ops.torchmodules, with the same results as torch's
modules either way. Which entry ran is read from Python's profiler hook: torch.ops' entry is a
Python call of OpOverloadPacket.__call__, the typed one a call of a builtin."""
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import torchmodules.functional as TF
from torchmodules._ops import ops_direct

from helpers import DEVICES


def _entries(fn):
    """(boxed, typed): how many calls of fn went through torch.ops' Python entry, how many through _C."""
    seen = {"boxed": 0, "typed": 0}

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "__call__" and "torch/_ops.py" in frame.f_code.co_filename:
            seen["boxed"] += 1
        elif event == "c_call" and getattr(arg, "__module__", None) == "torchmodules._C":
            seen["typed"] += 1

    sys.setprofile(hook)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return out, seen["boxed"], seen["typed"]


class Passthrough(torch.Tensor):
    """A subclass whose __torch_function__ records the functions it sees."""
    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


class Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


CALLS = {  # each public function against torch's, on the same inputs
    "relu": (lambda x: TF.relu(x), torch.relu),
    "add": (lambda x: TF.add(x, x.flip(-1)), lambda x: torch.add(x, x.flip(-1))),
    "log_softmax": (lambda x: TF.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1)),
    "linear": (lambda x: TF.linear(x, x[:3], x[0, :3]), lambda x: torch.nn.functional.linear(x, x[:3], x[0, :3])),
    "amax": (lambda x: TF.amax(x, [1]), lambda x: torch.amax(x, [1])),
    # ops whose Python API takes the first output alone (_C.<op>_first)
    "linear_relu": (lambda x: TF.linear_relu(x, x[:3], x[0, :3]),
                    lambda x: torch.relu(torch.nn.functional.linear(x, x[:3], x[0, :3]))),
    "maximum": (lambda x: TF.maximum(x, x.flip(-1)), lambda x: torch.maximum(x, x.flip(-1))),
    "cross_entropy": (lambda x: TF.cross_entropy(x, _targets(x)),
                      lambda x: torch.nn.functional.cross_entropy(x, _targets(x))),
    "nll_loss": (lambda x: TF.nll_loss(x, _targets(x)), lambda x: torch.nn.functional.nll_loss(x, _targets(x))),
}


def _targets(x):
    return torch.arange(x.shape[0], device=x.device) % x.shape[1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CALLS))
def test_plain_tensors_take_the_typed_entry(name, device):
    ours, ref = CALLS[name]
    x = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    y, boxed, typed = _entries(lambda: ours(x))
    assert typed >= 1 and boxed == 0, (boxed, typed)
    torch.testing.assert_close(y, ref(x))
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(ref(x).sum(), x)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CALLS))
def test_torch_function_sees_the_op(name, device):
    """A subclass's __torch_function__ and a TorchFunctionMode each see torch.ops.torchmodules' op."""
    ours, ref = CALLS[name]
    x = torch.randn(4, 5, dtype=torch.float64, device=device)
    Passthrough.seen = []
    y, boxed, typed = _entries(lambda: ours(x.as_subclass(Passthrough)))
    assert boxed >= 1 and typed == 0, (boxed, typed)
    assert any(s.endswith("_forward") for s in Passthrough.seen), Passthrough.seen
    assert type(y) is Passthrough
    torch.testing.assert_close(y.as_subclass(torch.Tensor), ref(x))
    with Recorder() as mode:
        y, boxed, typed = _entries(lambda: ours(x))
    assert boxed >= 1 and typed == 0, (boxed, typed)
    assert any(s.endswith("_forward") for s in mode.seen), mode.seen
    torch.testing.assert_close(y, ref(x))


def test_ops_without_typed_entry_are_torch_ops():
    assert ops_direct.sgd_step is torch.ops.torchmodules.sgd_step
    assert ops_direct.relu_forward.__name__ == "relu_forward"
