"""Tensors of more than 2^31 elements (int64 indexing in every elementwise kernel): on a
GPU only, float16, checked against torch's op on the same inputs at both ends."""
import pytest
import torch

import torchmodules.functional as TF

N = 2**31 + 77
needs_big_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a GPU with 40 GB")


def _ends(t):
    return torch.cat([t[:4096], t[-4096:]]).float()


@needs_big_gpu
@pytest.mark.parametrize("name", ["relu", "add", "maximum", "duplicate"])
def test_more_than_2_31_elements(name):
    torch.cuda.empty_cache()
    x = torch.randn(N, device="cuda", dtype=torch.float16).requires_grad_(True)
    ours, ref = {
        "relu": (lambda: TF.relu(x), lambda: torch.relu(x)),
        "add": (lambda: TF.add(x, x), lambda: x + x),
        "maximum": (lambda: TF.maximum(x, x.detach().flip(0)), lambda: torch.maximum(x, x.detach().flip(0))),
        "duplicate": (lambda: sum(TF.duplicate(x, 2)), lambda: x + x),
    }[name]
    y = ours()
    g = torch.ones_like(y)  # one gradient per element, so the backward touches every index
    (gx,) = torch.autograd.grad(y, x, g)
    y_ends, gx_ends = _ends(y.detach()), _ends(gx)
    del y, gx
    y_ref = ref()
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(y_ends, _ends(y_ref.detach()), rtol=0, atol=0)
    torch.testing.assert_close(gx_ends, _ends(gx_ref), rtol=0, atol=0)
