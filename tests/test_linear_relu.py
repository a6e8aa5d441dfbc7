"""Linear + ReLU fused (linear_relu_forward, the ReLU in the GEMM's epilogue), beyond the op
table's cases: its output and bit mask are bitwise those of our unfused Linear then ReLU (the
same GEMM, the same mask layout), for any thread count and on the fallback kernels; -0.0 and
NaN as torch's relu; the backward keeps x, W and the mask, not y; LinearReLU's state_dict is
nn.Linear's; replace_modules(fuse=True) and back."""
import copy

import pytest
import torch
from torch import nn

import torchmodules as tm
import torchmodules.functional as TF
from helpers import DEVICES, pytest_under_isa

ops = torch.ops.torchmodules
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# (M, K, N): 1..17 and 127, 1025 rows (the dot-product path, B read in place, packed blocks, row
# blocks), N not a multiple of 32 (mask words straddle rows and the threads' column blocks), K = 0,
# M = 0, and sizes that split over threads by columns and by rows. bfloat16 on AMX (M > 4): M and
# N not multiples of the 16 x 16 tiles or the 32 x 32 blocks, K odd, several column blocks
# (70x65x530), and K > 2048 (several k blocks: the float copy of C, rounded at the end).
SHAPES = [(m, 9, n) for m in (1, 2, 3, 4, 5, 12, 13, 16, 17) for n in (1, 7, 31, 33)] + [
    (127, 40, 45), (1025, 17, 127), (16, 127, 1025), (1025, 30, 33), (300, 257, 300), (1000, 100, 40),
    (40, 600, 1100), (5, 0, 37), (0, 8, 5), (3, 4097, 15), (33, 31, 47), (70, 65, 530), (37, 2049, 45)]


def _inputs(m, k, n, dtype, device, bias=True):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) / max(k, 1) ** 0.5
    b = torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    return [None if t is None else t.to(dtype=dtype, device=device) for t in (x, w, b)]


def _bits(t):
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def _unfused(x, w, b):
    return ops.relu_forward(ops.linear_forward(x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mkn", SHAPES, ids=str)
def test_same_bits_as_linear_then_relu(mkn, dtype, device):
    """y and the mask bitwise equal to our linear_forward then relu_forward (on CUDA float, and the
    half types on Hopper, the GEMMs may differ from the CPU's but not between fused and unfused)."""
    for bias in (True, False):
        x, w, b = _inputs(*mkn, dtype, device, bias)
        y, mask = ops.linear_relu_forward(x, w, b)
        y_ref, mask_ref = _unfused(x, w, b)
        assert torch.equal(_bits(y), _bits(y_ref)), "y differs"
        assert torch.equal(mask, mask_ref), "mask differs"


@pytest.mark.parametrize("mkn", [(300, 257, 300), (1000, 100, 40), (40, 600, 1100), (1025, 30, 33), (13, 50, 1025),
                                 (70, 65, 530), (517, 2049, 45)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bitwise_same_for_any_thread_count(mkn, dtype):
    x, w, b = _inputs(*mkn, dtype, "cpu")
    first = ops.linear_relu_forward(x, w, b)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            y, mask = ops.linear_relu_forward(x, w, b)
            assert torch.equal(y, first[0]), f"y differs with {t} threads"
            assert torch.equal(mask, first[1]), f"mask differs with {t} threads"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "base"])
def test_fallback_kernels(isa):
    """The AVX-512 (bfloat16 without AMX), AVX2 and baseline GEMMs (TORCHMODULES_CPU_ISA) give the
    same bits as their unfused ops; ReLU's half-type rule in its AVX2 and scalar forms (relu_rule.h,
    under the same cap) on every 16-bit pattern."""
    pytest_under_isa(isa, "tests/test_linear_relu.py",
                     "(same_bits and cpu and (float32 or bfloat16)) or every_half_pattern")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_negative_zero_nan_inf(dtype, device):
    """K = 0: y = relu(bias) exactly as torch's relu: -0.0 stays -0.0 (bit 0), NaN stays NaN (bit 1),
    -inf becomes 0; the gradient passes where y > 0 or NaN, as torch's."""
    vals = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1.5, -2.0, 1e-30, -1e-30] * 5
    b = torch.tensor(vals, dtype=dtype, device=device, requires_grad=True)
    x = torch.zeros(3, 0, dtype=dtype, device=device)
    w = torch.zeros(len(vals), 0, dtype=dtype, device=device)
    y = TF.linear_relu(x, w, b)
    bt = b.detach().clone().requires_grad_(True)
    yt = torch.relu(torch.nn.functional.linear(x, w, bt))
    assert torch.equal(y.isnan(), yt.isnan())
    assert torch.equal(torch.nan_to_num(y.detach()), torch.nan_to_num(yt.detach()))
    num = ~y.isnan()  # (a NaN's sign is not specified)
    assert torch.equal(torch.signbit(y.detach()[num]), torch.signbit(yt.detach()[num]))
    g = torch.randn(y.shape, dtype=torch.float64).to(dtype=dtype, device=device)
    (gb,) = torch.autograd.grad(y, b, g)
    (gbt,) = torch.autograd.grad(yt, bt, g)
    torch.testing.assert_close(gb, gbt)


def _all_patterns(dtype):
    """Every 16-bit pattern as dtype: ±0, denormals, ±inf, NaNs of both signs."""
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def _packed_bits(b):
    """A bool vector packed as the ReLU mask: bit i % 32 of little-endian word i // 32."""
    b = torch.cat([b, b.new_zeros(-b.numel() % 32)]).view(-1, 8).to(torch.int32)
    return (b << torch.arange(8, dtype=torch.int32)).sum(1).to(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_every_half_pattern(dtype):
    """relu_forward and the GEMM's epilogue share one rule (relu_rule.h): on every 16-bit pattern,
    relu_forward gives y = x < 0 ? +0.0 : x (bits, NaN payloads kept) and bit !(x <= 0) (reference
    in float64); through linear_relu (K = 0: y = relu(bias); K = 1: y = relu(1 * w), on AMX for
    bfloat16) the bits of linear then relu_forward, the mask !(y <= 0) of its own y."""
    x = _all_patterns(dtype)
    y, mask = ops.relu_forward(x)
    xd = x.double()
    assert torch.equal(_bits(y), _bits(torch.where(xd < 0, torch.zeros_like(x), x)))
    assert torch.equal(mask, _packed_bits(~(xd <= 0)))
    # M rows of 65541 columns: mask words straddle rows and the column blocks of the threads
    v = torch.cat([x, x[:5]])
    for m, k in ((3, 0), (7, 1), (45, 1)):
        xs = torch.ones(m, k, dtype=dtype)
        w = v.view(-1, 1)[:, :k].contiguous()
        b = v if k == 0 else None
        y, mask = ops.linear_relu_forward(xs, w, b)
        y_ref, mask_ref = _unfused(xs, w, b)
        assert torch.equal(_bits(y), _bits(y_ref)), (m, k)
        assert torch.equal(mask, mask_ref), (m, k)
        assert torch.equal(mask, _packed_bits(~(y.double() <= 0).flatten())), (m, k)
        assert not (y.double() < 0).any()


def test_bfloat16_inf_nan_on_amx():
    """inf and NaN inputs through the AMX path (bfloat16, M > 4): ±inf and NaN outputs, bits as
    linear then relu_forward, and y as torch's relu(linear) (NaN where torch's is NaN)."""
    x, w, b = _inputs(37, 33, 45, torch.bfloat16, "cpu")
    x[3, 5], x[10, 0], x[20, 7], w[4, 2] = float("inf"), -float("inf"), float("nan"), float("inf")
    y, mask = ops.linear_relu_forward(x, w, b)
    y_ref, mask_ref = _unfused(x, w, b)
    assert torch.equal(_bits(y), _bits(y_ref)) and torch.equal(mask, mask_ref)
    yt = torch.relu(torch.nn.functional.linear(x.double(), w.double(), b.double()))
    assert torch.equal(y.isnan(), yt.isnan()) and torch.equal(y.isinf(), yt.isinf())
    assert y.isinf().any() and y.isnan().any()
    assert torch.equal(mask, _packed_bits(~(y.double() <= 0).flatten()))


def _saved_bytes(fn):
    """The tensors autograd saves while fn runs: their shapes."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_saves_mask_not_output():
    """The backward keeps x, W and the 1-bit mask: no tensor of y's shape (torch's relu(linear(x))
    keeps y for relu's backward)."""
    x = torch.randn(64, 32, requires_grad=True)
    lin = tm.LinearReLU(32, 48)
    shapes = _saved_bytes(lambda: lin(x))
    assert (64, 48) not in shapes, shapes
    assert sorted(shapes) == sorted([(64, 32), (48, 32), ((64 * 48 + 31) // 32 * 4,)]), shapes
    theirs = nn.Linear(32, 48)
    assert (64, 48) in _saved_bytes(lambda: torch.relu(theirs(x)))


@pytest.mark.parametrize("device", DEVICES)
def test_module_state_dict_and_from_linear(device):
    torch.manual_seed(0)
    ref = nn.Linear(20, 33, device=device, dtype=torch.float64)
    ours = tm.LinearReLU(20, 33, device=device, dtype=torch.float64)
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # and back
    x = torch.randn(7, 20, dtype=torch.float64, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, yt = ours(x), torch.relu(ref(x2))
    torch.testing.assert_close(y, yt)
    g = torch.randn_like(y)
    y.backward(g)
    yt.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    # from_linear shares the Parameters; no bias too
    for bias in (True, False):
        lin = nn.Linear(5, 4, bias=bias, device=device)
        f = tm.LinearReLU.from_linear(lin)
        assert f.weight is lin.weight and f.bias is lin.bias
        assert set(f.state_dict()) == set(lin.state_dict())
        back = f.to_linear()
        assert type(back) is nn.Linear and back.weight is lin.weight and back.bias is lin.bias
        xi = torch.randn(3, 5, device=device)
        torch.testing.assert_close(f(xi), torch.relu(lin(xi)))
    # same default init as nn.Linear (same draws)
    torch.manual_seed(1)
    a = tm.LinearReLU(9, 6)
    torch.manual_seed(1)
    bl = nn.Linear(9, 6)
    assert torch.equal(a.weight, bl.weight) and torch.equal(a.bias, bl.bias)


def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 3),
                         nn.Sequential(nn.Linear(3, 5), nn.ReLU()), nn.ReLU())


@pytest.mark.parametrize("device", DEVICES)
def test_replace_modules_fuse_and_back(device):
    torch.manual_seed(0)
    theirs = _mlp().double().to(device)
    keys = list(theirs.state_dict())
    ours = tm.replace_modules(copy.deepcopy(theirs), fuse=True)
    kinds = [type(m) for m in ours]
    assert kinds[:5] == [tm.LinearReLU, tm.replace.FusedAway, tm.LinearReLU, tm.replace.FusedAway, tm.Linear]
    assert type(ours[5][0]) is tm.LinearReLU and type(ours[6]) is tm.ReLU  # Linear 4 is not directly before a ReLU
    assert list(ours.state_dict()) == keys
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(9, 6, dtype=torch.float64, device=device)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((theirs, ours), xs)]
    g = torch.randn_like(outs[0])
    for o in outs:
        o.backward(g)
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(xs[1].grad, xs[0].grad)
    for (n, p), q in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m: f"{n}: {m}")
    # ... and back: torch's classes, the same parameters, the ReLU's inplace flag kept
    params = list(ours.parameters())
    back = tm.restore_modules(ours)
    assert [type(m) for m in back][:5] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert back[3].inplace and not back[1].inplace
    assert all(p is q for p, q in zip(back.parameters(), params))
    assert list(back.state_dict()) == keys
    torch.testing.assert_close(back(x), theirs(x))
    # without fuse: no LinearReLU
    plain = tm.replace_modules(copy.deepcopy(theirs))
    assert tm.LinearReLU not in {type(m) for m in plain.modules()}


@pytest.mark.parametrize("device", DEVICES)
def test_autocast(device):
    """Under autocast linear_relu runs in the autocast dtype, as torch's linear then relu."""
    amp = torch.bfloat16
    x, w, b = (torch.randn(*s, device=device) for s in ((6, 10), (7, 10), (7,)))
    with torch.autocast(device, dtype=amp):
        y, yt = TF.linear_relu(x, w, b), torch.relu(torch.nn.functional.linear(x, w, b))
    assert y.dtype == yt.dtype == amp
    torch.testing.assert_close(y, yt)
