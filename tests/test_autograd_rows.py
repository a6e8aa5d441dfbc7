"""The double backward ops of amax and LogSoftmax differentiated once more (third order; the
C++ Autograd kernels of csrc/autograd_rows.cpp): gradcheck and gradgradcheck in float64."""
import pytest
import torch

import torchmodules  # noqa: F401
from helpers import DEVICES

ops = torch.ops.torchmodules
F64 = torch.float64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dim", [((3, 5), 1), ((4, 3, 2), 1), ((2, 3, 4), -1), ((5,), 0), ((), 0)],
                         ids=["rows", "middle", "neg_dim", "1d", "0d"])
def test_log_softmax_third_order(shape, dim, device):
    torch.manual_seed(0)
    y = torch.log_softmax(torch.randn(shape, dtype=F64, device=device), dim)
    gg, dy = (torch.randn(shape, dtype=F64, device=device).requires_grad_() for _ in range(2))
    yy = y.clone().requires_grad_()

    def fn(gg, dy, yy):
        return ops.log_softmax_double_backward(gg, dy, yy, dim)

    assert torch.autograd.gradcheck(fn, (gg, dy, yy))
    assert torch.autograd.gradgradcheck(fn, (gg, dy, yy))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dim,keepdim", [((5, 7), [1], False), ((3, 4, 5), [0, 2], True), ((4, 6), [], False)],
                         ids=["last", "two_apart", "all"])
def test_amax_third_order(shape, dim, keepdim, device):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=F64, device=device)
    y = ops.amax_forward(x, dim, keepdim)
    gg = torch.randn(shape, dtype=F64, device=device, requires_grad=True)

    def fn(gg):
        return ops.amax_double_backward(gg, x, y, dim, keepdim)

    assert torch.autograd.gradcheck(fn, (gg,))
    assert torch.autograd.gradgradcheck(fn, (gg,))
