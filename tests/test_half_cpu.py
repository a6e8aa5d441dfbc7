"""The half types on the CPU. Every CPU kernel reads and writes float16 / bfloat16 through the
conversions of csrc/simd.h (bits <-> float, computing in float):
  - the conversions themselves, built for each ISA of TM_SIMD's clones this CPU runs (by
    tests/half_convert.cpp), against torch's .to() and c10's scalar ones (which the kernels
    used before): every float16 / bfloat16 pattern, and float patterns around every rounding
    boundary; and simd.h's fast_exp, float and double, per ISA against torch.exp;
  - the kernels on inputs with NaN, inf and subnormals: add against torch's add, and each
    kernel that uses the conversions against our float32 kernel on the same values, rounded
    once by torch (the half path must be the float path plus the conversions, bit for bit);
    float16's float blocks (csrc/half_convert.h) on each of their forms: AVX-512, AVX2 + F16C
    (TORCHMODULES_CPU_ISA=avx2) and simd.h's integer conversions (=base), in subprocesses.
NaN results are compared as NaN: its sign and payload from arithmetic are unspecified (x86
hands on the first operand's NaN, whichever the compiler put first), and c10's float16
conversion (ours too) drops the payload where torch's keeps it."""
import os
import shutil
import subprocess

import pytest
import torch

import torchmodules  # noqa: F401  (loads the ops)
from helpers import pytest_under_isa

ops = torch.ops.torchmodules
HALF = [torch.float16, torch.bfloat16]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_patterns(dtype):
    """The 65536 values of a 16-bit float type, by bit pattern."""
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def assert_same(ours, ref):
    """Bit for bit, but NaN against NaN whatever its bits; float16 / bfloat16 / float32."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, (ours.dtype, ref.dtype, ours.shape, ref.shape)
    nan_o, nan_r = ours.isnan(), ref.isnan()
    assert torch.equal(nan_o, nan_r), f"NaN at {nan_o.sum()} places, torch's at {nan_r.sum()}"
    ib = {2: torch.int16, 4: torch.int32}[ours.element_size()]
    diff = (ours.contiguous().view(ib) != ref.contiguous().view(ib)) & ~nan_r
    if diff.any():
        i = diff.flatten().nonzero()[:5].flatten()
        raise AssertionError(f"{int(diff.sum())} of {diff.numel()} differ, e.g. at {i.tolist()}: "
                             f"{ours.flatten()[i].tolist()} vs {ref.flatten()[i].tolist()}")


# ---- the conversions ---------------------------------------------------------------------------

def _float_patterns():
    """uint32 float bit patterns: every upper half (sign, exponent, 7 mantissa bits) with lower
    halves around the float16 and bfloat16 rounding points (ties, one below, one above, for
    both parities), random patterns, and the neighbours of the boundaries of float16's range."""
    upper = torch.arange(65536, dtype=torch.int64) << 16
    lows = torch.tensor([0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2001, 0x2fff, 0x3000,
                         0x3001, 0x7fff, 0x8000, 0x8001, 0xefff, 0xf000, 0xf001, 0xffff], dtype=torch.int64)
    grid = (upper[:, None] | lows[None, :]).flatten()
    rand = torch.randint(0, 2**32, (1 << 20,), dtype=torch.int64)
    edges = torch.tensor([65504.0, 65519.0, 65520.0, 65535.0, 65536.0, 2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
                          2.0**-14 - 2.0**-25, 2.0**-126, 2.0**-149, 3.3895313892515355e38, 3.4028234663852886e38],
                         dtype=torch.float32)
    near = torch.cat([edges, torch.nextafter(edges, torch.full_like(edges, 0.0)),
                      torch.nextafter(edges, torch.full_like(edges, float("inf")))])
    near = torch.cat([near, -near]).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.cat([grid, rand, near]).to(torch.uint32)


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    """The conversions' outputs per ISA (and c10's), on all 16-bit patterns (+ 7, so the loops
    run a remainder too) and on _float_patterns()."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        pytest.skip("no C++ compiler to build tests/half_convert.cpp")
    d = tmp_path_factory.mktemp("half_convert")
    exe = str(d / "half_convert")
    include = os.path.join(os.path.dirname(torch.__file__), "include")
    subprocess.run([cxx, "-O3", "-std=c++20", "-I", os.path.join(ROOT, "csrc"), "-I", include,
                    os.path.join(ROOT, "tests", "half_convert.cpp"), "-o", exe], check=True)
    in16 = torch.cat([torch.arange(65536, dtype=torch.int32), torch.arange(7, dtype=torch.int32)]).to(torch.int16)
    in32 = _float_patterns()
    in16.numpy().tofile(d / "in16")
    in32.numpy().tofile(d / "in32")
    isas = subprocess.run([exe, str(d / "in16"), str(d / "in32"), str(d / "out")], check=True,
                          capture_output=True, text=True).stdout.split()

    def load(isa, what, dtype):
        return torch.from_file(str(d / f"out.{isa}.{what}"), size={"h2f": len(in16), "b2f": len(in16)}.get(
            what, len(in32)), dtype=dtype)
    out = {isa: {"h2f": load(isa, "h2f", torch.float32), "b2f": load(isa, "b2f", torch.float32),
                 "f2h": load(isa, "f2h", torch.float16), "f2b": load(isa, "f2b", torch.bfloat16)} for isa in isas}
    for isa in isas:
        if isa != "c10":
            out[isa]["exp"], out[isa]["expd"] = load(isa, "exp", torch.float32), load(isa, "expd", torch.float64)
            out[isa]["log"], out[isa]["logd"] = load(isa, "log", torch.float32), load(isa, "logd", torch.float64)
    return in16, in32, out


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def test_conversions_ran_on_each_isa(conversions):
    _, _, out = conversions
    assert {"c10", "base"} <= set(out)


@pytest.mark.parametrize("isa", ["base", "v3", "v4"])
def test_widen_every_pattern(conversions, isa):
    """float16 and bfloat16 -> float: all 65536 patterns bit for bit as torch's .to(float32)
    and c10's (subnormals exact, inf, NaN made quiet with its payload for float16)."""
    in16, _, out = conversions
    if isa not in out:
        pytest.skip(f"this CPU does not run the {isa} clone")
    for what, dtype in (("h2f", torch.float16), ("b2f", torch.bfloat16)):
        ref = in16.view(dtype).to(torch.float32)
        assert torch.equal(_bits(out[isa][what]), _bits(ref)), what
        assert torch.equal(_bits(out[isa][what]), _bits(out["c10"][what])), what


@pytest.mark.parametrize("isa", ["base", "v3", "v4"])
def test_narrow_rounds_to_nearest_even(conversions, isa):
    """float -> float16 and bfloat16, round to nearest even: bit for bit as torch's .to() on
    every non-NaN pattern (ties both ways, 65504 / 65520 and the overflow to inf, subnormal
    boundaries, float subnormals), and as c10's on all, NaN included (c10's quiet NaN)."""
    _, in32, out = conversions
    if isa not in out:
        pytest.skip(f"this CPU does not run the {isa} clone")
    f = in32.view(torch.float32)
    nan = f.isnan()
    for what, dtype in (("f2h", torch.float16), ("f2b", torch.bfloat16)):
        ours, ref = out[isa][what], f.to(dtype)
        assert torch.equal(_bits(ours)[~nan], _bits(ref)[~nan]), what
        assert bool(ours[nan].isnan().all()), what
        assert torch.equal(_bits(ours), _bits(out["c10"][what])), what


@pytest.mark.parametrize("isa", ["base", "v3", "v4"])
def test_fast_exp(conversions, isa):
    """simd.h's fast_exp (log_softmax's and cross_entropy's exp) in float and double, on every
    float exponent (the float patterns above, and them widened to double) against torch.exp in
    float64: within 2 ulp, subnormal results within one subnormal step, +0.0 (never -0.0) below
    the underflow and for -inf, inf past the overflow and for inf, NaN for NaN."""
    _, in32, out = conversions
    if isa not in out:
        pytest.skip(f"this CPU does not run the {isa} clone")
    x = in32.view(torch.float32).double()
    for what, dt, ulp, tiny, big in (("exp", torch.float32, 2.0**-23, 2.0**-149, 3.4028234663852886e38),
                                     ("expd", torch.float64, 2.0**-52, 2.0**-1074, 1.7976931348623157e308)):
        ours = out[isa][what]
        ref = x.exp()
        nan = x.isnan()
        assert bool(ours[nan].isnan().all()) and not bool(ours[~nan].isnan().any()), what
        assert not bool(ours[~nan].signbit().any()), f"{what}: a negative result (-0.0?)"
        fin = ~nan & (ref <= big)
        torch.testing.assert_close(ours[fin].double(), ref[fin], rtol=2 * ulp, atol=tiny, msg=what)
        over = ~nan & (ref > big * (1 + 4 * ulp))
        assert bool((ours[over] == float("inf")).all()), what
        under = ~nan & (ref < tiny / 2 * (1 - 4 * ulp))
        assert bool((ours[under] == 0).all()), what


@pytest.mark.parametrize("isa", ["base", "v3", "v4"])
def test_fast_log(conversions, isa):
    """simd.h's fast_log (the column loops' log of a softmax's normaliser) in float and double, on
    every positive normal float exponent (the float patterns above, and them widened to double)
    against torch.log in float64: within 2 ulp; +inf and NaN as they are."""
    _, in32, out = conversions
    if isa not in out:
        pytest.skip(f"this CPU does not run the {isa} clone")
    x = in32.view(torch.float32).double()
    normal = (x >= 2.0**-126) & (x < float("inf"))
    assert int(normal.sum()) > 1000
    for what, ulp in (("log", 2.0**-23), ("logd", 2.0**-52)):
        ours = out[isa][what].double()
        ref = x[normal].log()
        # (relative to the result, or to the ulp of 1 where log s is near 0: s = 1 + d gives d - d^2/2)
        torch.testing.assert_close(ours[normal], ref, rtol=2 * ulp, atol=2 * ulp * 2.0**-23, msg=what)
        assert bool((ours[x == float("inf")] == float("inf")).all()), what
        assert bool(ours[x.isnan()].isnan().all()), what
        assert int((x == float("inf")).sum()) > 0 and int(x.isnan().sum()) > 0


# ---- the kernels -------------------------------------------------------------------------------

def _mixed(dtype, *shape):
    """randn over a wide range of magnitudes (float16 subnormals included), with one element in
    eight replaced by a random 16-bit pattern (NaN, inf, subnormals, +-0 among them)."""
    n = 1
    for s in shape:
        n *= s
    v = (torch.randn(n) * torch.exp(torch.randn(n) * 3)).to(dtype)
    idx = torch.randperm(n)[: n // 8]
    v[idx] = all_patterns(dtype)[torch.randint(0, 65536, (len(idx),))]
    return v.view(shape)


@pytest.mark.parametrize("dtype", HALF)
def test_add_every_pattern(dtype):
    """add against torch's add (float sum, one rounding): every pattern plus 0, plus every
    other pattern, and broadcast along rows."""
    x = all_patterns(dtype)
    y = x[torch.randperm(65536)]
    assert_same(ops.add_forward(x, torch.zeros_like(x)), torch.add(x, torch.zeros_like(x)))
    assert_same(ops.add_forward(x, y), torch.add(x, y))
    assert_same(ops.add_forward(x[:-3], y[:-3]), torch.add(x[:-3], y[:-3]))  # a loop remainder
    assert_same(ops.add_forward(x.view(256, 256), y[:256]), torch.add(x.view(256, 256), y[:256]))


@pytest.mark.parametrize("dtype", HALF)
def test_elementwise_against_torch(dtype):
    """Elementwise kernels against the same float arithmetic in torch, rounded once."""
    a, b, c = (_mixed(dtype, 4099) for _ in range(3))
    up = lambda *ts: [t.float() for t in ts]  # noqa: E731
    fa, fb, fc = up(a, b, c)
    assert_same(ops.duplicate_backward([a, b]), (fa + fb).to(dtype))
    assert_same(ops.duplicate_backward([a, b, c]), (fa + fb + fc).to(dtype))
    assert_same(ops.mse_loss_forward(a, b, 0), ((fa - fb) * (fa - fb)).to(dtype))
    assert_same(ops.mse_loss_backward(c, a, b, 0), (2 * (fa - fb) * fc).to(dtype))
    x = _mixed(dtype, 37, 130)
    assert_same(ops.amax_forward(x, [1], False), torch.amax(x, 1))
    assert_same(ops.amax_forward(x, [0], False), torch.amax(x, 0))


def _exact_sum(dtype, *shape):
    """Multiples of 2^-10 in (-64, 64), one in sixteen replaced by NaN or +-inf: their float
    sum is exact in any order (below 2^14 in steps of 2^-10), so a kernel summing them gives
    the same bits whether the compiler vectorises the float16 and float32 loops alike or not
    (the AVX2 clone of log_softmax's backward sums dy in 16 lanes for float16, 8 for float32)."""
    v = (torch.randint(-2**16 + 1, 2**16, shape) * 2.0**-10).to(dtype)
    flat = v.view(-1)
    idx = torch.randperm(flat.numel())[: flat.numel() // 16]
    flat[idx] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)[torch.randint(0, 3, (len(idx),))]
    return v


def _calls(dtype):
    """(name, fn) pairs: fn(cast) runs one of our kernels on inputs passed through cast
    (identity for the half type, .float() for the float32 reference)."""
    x, dy, gg, t = (_mixed(dtype, 48, 130) for _ in range(4))
    xs, gs = _mixed(dtype, 400, 9), _mixed(dtype, 400, 9)  # short rows
    y3, d3 = _mixed(dtype, 5, 33, 20), _mixed(dtype, 5, 33, 20)  # rows across an inner dim
    de, des, de3 = _exact_sum(dtype, 48, 130), _exact_sum(dtype, 400, 9), _exact_sum(dtype, 5, 33, 20)
    p, g, b = (_mixed(dtype, 5000) for _ in range(3))
    cls = torch.randint(0, 130, (48,))
    cls[::7] = -100
    probs = torch.softmax(torch.randn(48, 130) * 3, 1).to(dtype)
    w = _mixed(dtype, 130).abs()
    one = torch.ones((), dtype=dtype)
    calls = [
        ("add_backward [C]", lambda c: ops.add_backward(c(dy), [130])),
        ("add_backward [R, 1]", lambda c: ops.add_backward(c(dy), [48, 1])),
        ("add_backward [5, 1, 20]", lambda c: ops.add_backward(c(d3), [5, 1, 20])),
    ]
    # g1: the dy of log_softmax's backward (summed over rows), g2: the gg of the double backward
    for name, (v, g1, g2) in {"rows": (x, de, gg), "short rows": (xs, des, gs), "inner": (y3, de3, d3)}.items():
        dim = 1
        calls += [
            (f"log_softmax {name}", lambda c, v=v: ops.log_softmax_forward(c(v), dim)),
            (f"log_softmax_backward {name}", lambda c, v=v, g1=g1: ops.log_softmax_backward(c(g1), c(v), dim)),
            (f"log_softmax_double_backward {name}",
             lambda c, v=v, g1=g1, g2=g2: ops.log_softmax_double_backward(c(g2), c(g1), c(v), dim)),
            (f"amax_backward {name}", lambda c, v=v, g2=g2: ops.amax_backward(
                c(g2.select(dim, 0).contiguous()), c(v), c(v.amax(dim)), [dim], False)),
            (f"amax_double_backward {name}", lambda c, v=v, g2=g2: ops.amax_double_backward(
                c(g2), c(v), c(v.amax(dim)), [dim], False)),
        ]
    for red in (0, 1, 2):
        gy = dy if red == 0 else one
        calls += [
            (f"mse_loss reduction {red}", lambda c, red=red: ops.mse_loss_forward(c(x), c(t), red)),
            (f"mse_loss_backward reduction {red}", lambda c, red=red, gy=gy: ops.mse_loss_backward(c(gy), c(x), c(t), red)),
            (f"mse_loss_double_backward reduction {red}",
             lambda c, red=red, gy=gy: ops.mse_loss_double_backward(c(gg), c(gy), c(x), c(t), red)),
            (f"mse_loss broadcast reduction {red}", lambda c, red=red: ops.mse_loss_forward(c(x), c(t[:1]), red)),
        ]
        for tname, tgt in (("class", cls), ("probs", probs)):
            for ls, wt in ((0.0, None), (0.1, w)):
                gl = dy[:, 0].contiguous() if red == 0 else one
                kw = f"cross_entropy {tname} smoothing {ls} reduction {red}"

                def ce(c, tgt=tgt, ls=ls, wt=wt, red=red, gl=gl):
                    tc = c(tgt) if tgt.is_floating_point() else tgt
                    wc = None if wt is None else c(wt)
                    loss, lse, tw = ops.cross_entropy_forward(c(x), tc, wc, red, -100, ls)
                    back = ops.cross_entropy_backward(c(gl), c(x), tc, wc, lse, tw, red, -100, ls, tgt.is_floating_point())
                    hh = c(dy) if tgt.is_floating_point() else None
                    double = ops.cross_entropy_double_backward(c(gg), hh, c(gl), c(x), tc, wc, lse, tw, red, -100, ls)
                    return (loss, lse, tw) + tuple(back) + tuple(double)
                calls.append((kw, ce))

    for mom, damp, wd, nesterov, maximize, first in ((0.0, 0.0, 0.0, False, False, False),
                                                     (0.9, 0.1, 0.01, False, True, False),
                                                     (0.9, 0.0, 0.01, True, False, False),
                                                     (0.9, 0.0, 0.0, False, False, True)):
        def step(c, mom=mom, damp=damp, wd=wd, nesterov=nesterov, maximize=maximize, first=first):
            pc, bc = c(p).clone(), [c(b).clone()] if mom else []
            ops.sgd_step([pc], [c(g)], bc, 0.1, mom, damp, wd, nesterov, maximize, first)
            return [pc] + bc
        calls.append((f"sgd_step momentum {mom} nesterov {nesterov} first {first}", step))
    return calls


@pytest.mark.parametrize("dtype", HALF)
def test_kernels_are_the_float32_kernel_rounded_once(dtype):
    """Each kernel that converts on float16 / bfloat16 inputs with NaN, inf and subnormals
    gives, bit for bit, our float32 kernel's result on the same values rounded once by torch
    (outputs kept in float32 for the half types, the lse and total weight of cross_entropy,
    compared as they are)."""
    for name, fn in _calls(dtype):
        ours = fn(lambda v: v)
        ref = fn(lambda v: v.float())
        ours = ours if isinstance(ours, (tuple, list)) else (ours,)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        for k, (o, r) in enumerate(zip(ours, ref)):
            if o is None or r is None:
                assert o is None and r is None, name
                continue
            try:
                assert_same(o, r.to(o.dtype))
            except AssertionError as e:
                raise AssertionError(f"{name}, output {k}: {e}") from None


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("L", [64, 1000, 4099])
def test_row_sums_are_the_float32_kernel_rounded_once(dtype, L):
    """add_backward to [R, 1] (row sums) of rows whose large terms cancel, so that the result is
    the small terms, kept or lost by the order of the additions: bit for bit our float32 kernel's
    sums of the same values, rounded once (float16 rows are summed as they are converted, on
    AVX-512; in the float32 kernel's order). The random patterns of the test above hide the order:
    a float sum one ulp off rarely changes its float16 rounding."""
    g = torch.Generator().manual_seed(L)
    R = 32
    big = (torch.randn(R, L // 4, generator=g) * 1e4).clamp(-6e4, 6e4)  # (finite in float16)
    small = torch.randn(R, L - 2 * (L // 4), generator=g) * 1e-2
    rows = torch.cat([big, -big, small], 1)
    rows = torch.gather(rows, 1, torch.argsort(torch.rand(R, L, generator=g), 1)).to(dtype)
    assert_same(ops.add_backward(rows, [R, 1]), ops.add_backward(rows.float(), [R, 1]).to(dtype))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_kernels_on_each_conversion_form(isa):
    """The kernel tests above with float16's block conversions on AVX2 + F16C (8 per instruction,
    a scalar tail) and on the TM_SIMD integer conversions (a CPU without AVX2): what a CPU without
    AVX-512 runs (the AVX-512 form runs in this process)."""
    pytest_under_isa(isa, "tests/test_half_cpu.py", "add_every_pattern or elementwise_against_torch or rounded_once")
