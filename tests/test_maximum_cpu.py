"""Maximum's CPU forward, every form of it (AVX-512 and AVX2 intrinsics, the latter under
TORCHMODULES_CPU_ISA=avx2; the compiler-vectorised loop under =base): y and the 2-bit code of
every element against torch's comparisons in float64, on every 16-bit pattern of the half types and on float32 / float64
values with ties, signed zeros, infinities, NaN and denormals; same-shape inputs (whole words and a
partial last word) and broadcast ones (gathered, and read in place)."""

import pytest
import torch

import torchmodules  # noqa: F401  (registers the ops)
from helpers import pytest_under_isa

ops = torch.ops.torchmodules
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _inputs(dtype):
    """a, b of one length: every 16-bit pattern of a half type against a shuffle of them; hostile
    float32 / float64 values otherwise. One pair in five ties, one in seven pairs x with -x."""
    g = torch.Generator().manual_seed(0)
    if dtype.itemsize == 2:
        a = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    else:
        a = torch.randn(65541, generator=g, dtype=torch.float64).to(dtype) * 10
        tiny = 1e-310 if dtype == torch.float64 else 1e-40
        for k, v in enumerate((float("nan"), float("inf"), -float("inf"), 0.0, -0.0, tiny, -tiny)):
            a[k::11 + 2 * k] = v
    b = a[torch.randperm(a.numel(), generator=g)]
    b[::5] = a[::5]
    b[1::7] = -a[1::7]
    return a, b


def _codes(mask, n):
    """Element i's 2-bit code from the packed mask: bits 2(i % 16) of little-endian word i // 16."""
    words = mask.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return ((words.unsqueeze(1) >> (2 * torch.arange(16))) & 3).flatten()[:n]


def _check(a, b, y, mask):
    """y = b where a < b or b is NaN, else a (bits); code = [a < b or unordered] + 2 [a == b or
    unordered]; and y is torch.maximum's value (NaN where torch's is)."""
    a, b = torch.broadcast_tensors(a, b)
    ad, bd = a.double().flatten(), b.double().flatten()
    takes_b = (ad < bd) | bd.isnan()
    bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    want = torch.where(takes_b.view(a.shape), b, a)
    assert torch.equal(y.view(bits), want.contiguous().view(bits))
    ref = torch.maximum(a, b)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))
    un = ad.isnan() | bd.isnan()
    want_codes = ((ad < bd) | un).to(torch.int64) + 2 * ((ad == bd) | un).to(torch.int64)
    assert torch.equal(_codes(mask, a.numel()), want_codes)
    assert not _codes(mask, mask.numel() * 4)[a.numel():].any(), "the slots past the last element are not 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_and_codes(dtype):
    a, b = _inputs(dtype)
    n = a.numel() // 16 * 16
    for x, z in ((a[:n], b[:n]), (a[: n - 3], b[: n - 3]), (a[:37], b[:37])):  # whole words, a partial last one
        _check(x, z, *ops.maximum_forward(x, z))
    rows = a[: 64 * 1024].view(64, 1024)
    for x, z in ((rows, b[:1024]), (b[:1024], rows), (rows, b[:64].view(64, 1)), (rows[:, :1000], b[:1000]),
                 (rows[:3, :1001], b[:1001])):
        _check(x, z, *ops.maximum_forward(x, z))  # broadcast: x read in place, z gathered; a strided x


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_fallback_forms(isa):
    """The AVX2 form (what a CPU without AVX-512 runs) and the compiler-vectorised loop pass the same test."""
    pytest_under_isa(isa, "tests/test_maximum_cpu.py", "values_and_codes")
