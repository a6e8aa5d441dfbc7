"""ReLU's CPU kernels, every form of them (AVX-512 and AVX2 intrinsics, the latter under
TORCHMODULES_CPU_ISA=avx2; the compiler-vectorised loop under =base): y, the saved bit of every
element and the backward's dx, bit for bit against torch's comparisons in float64, on every 16-bit
pattern of the half types and on float32 / float64 values with signed zeros, infinities, NaN of
both signs and denormals; whole words and a partial last word."""

import pytest
import torch

import torchmodules  # noqa: F401  (registers the ops)
from helpers import pytest_under_isa

ops = torch.ops.torchmodules
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _inputs(dtype):
    """Every 16-bit pattern of a half type; hostile float32 / float64 values otherwise."""
    if dtype.itemsize == 2:
        return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(65541, generator=g, dtype=torch.float64).to(dtype) * 10
    tiny = 1e-310 if dtype == torch.float64 else 1e-40
    for k, v in enumerate((float("nan"), float("inf"), -float("inf"), 0.0, -0.0, tiny, -tiny, -float("nan"))):
        x[k::11 + 2 * k] = v
    return x


def _bits(mask, n):
    """Element i's saved bit: bit i % 32 of little-endian 32-bit word i // 32."""
    words = mask.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return ((words.unsqueeze(1) >> torch.arange(32)) & 1).flatten()[:n].bool()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_and_backward_bits(dtype):
    x = _inputs(dtype)
    dy_all = torch.randn(x.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    dy_all[::13] = float("nan")  # a NaN gradient where the bit is 0 must still give 0
    ints = BITS[x.element_size()]
    n = x.numel() // 32 * 32
    for xs, dy in ((x[:n], dy_all[:n]), (x[: n - 5], dy_all[: n - 5]), (x[:45], dy_all[:45])):
        y, mask = ops.relu_forward(xs)
        xd = xs.double()
        want = torch.where(xd < 0, torch.zeros((), dtype=dtype), xs)  # -0.0 and NaN (its bits) kept
        assert torch.equal(y.view(ints), want.view(ints))
        bit = ~(xd <= 0)  # NaN passes
        assert torch.equal(_bits(mask, xs.numel()), bit)
        dx = ops.relu_backward(dy, mask)
        assert torch.equal(dx.view(ints), torch.where(bit, dy, torch.zeros((), dtype=dtype)).view(ints))
        # torch's own relu and its gradient agree (threshold_backward: where y > 0; NaN aside)
        finite = xs.isfinite()
        assert torch.equal(y[finite], torch.relu(xs)[finite])


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_fallback_forms(isa):
    """The AVX2 forms (what a CPU without AVX-512 runs) and the compiler-vectorised loops pass the same test."""
    pytest_under_isa(isa, "tests/test_relu_cpu.py", "forward_and_backward_bits")
