"""The CPU GEMM behind Linear (csrc/gemm_cpu.cpp), beyond the op table's cases: its three
products are bitwise the same for any thread count, and the AVX-512, AVX2 and baseline
kernels (what a CPU without AMX, AVX-512 or AVX2 runs; picked here with TORCHMODULES_CPU_ISA)
pass the op table's Linear cases too. bfloat16 on AMX tiles or with VDPBF16PS (csrc/gemm_cpu_amx.cpp,
where the CPU has AMX-BF16 or AVX512-BF16; the latter under TORCHMODULES_CPU_ISA=avx512bf16 on an AMX
CPU): edge shapes against float64, and against the AVX-512 kernels."""
import os
import subprocess
import sys

import pytest
import torch

import torchmodules  # noqa: F401  (registers the ops)
from helpers import pytest_under_isa

ops = torch.ops.torchmodules
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _products(x, w, b, dy):
    """y = x W^T + b, dx = dy W, dW = dy^T x."""
    return ops.linear_forward(x, w, b), ops.linear_backward_input(dy, w), ops.linear_backward_weight(dy, x)


# Big enough for several threads; C split by columns or by rows (M > 2N), several column blocks;
# (for AMX) more than one k block (K > 2048) in each product.
@pytest.mark.parametrize("mkn", [(300, 257, 300), (1000, 100, 40), (40, 600, 1100), (1025, 600, 70),
                                 (40, 2100, 70), (2100, 40, 30)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_bitwise_same_for_any_thread_count(dtype, mkn):
    m, k, n = mkn
    x, w, b, dy = (torch.randn(*s, dtype=torch.float64).to(dtype) for s in ((m, k), (n, k), (n,), (m, n)))
    first = _products(x, w, b, dy)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            again = _products(x, w, b, dy)
            for name, a, f in zip(("forward", "dx", "dW"), again, first):
                assert torch.equal(a, f), f"{name} differs with {t} threads"
    finally:
        torch.set_num_threads(threads)


def _isa(env):
    code = "import torch, torchmodules; print(torch.ops.torchmodules_cpu.gemm_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


_ISAS = ["base", "avx2", "avx512", "avx512bf16", "amx"]


@pytest.mark.parametrize("isa", ["avx512bf16", "avx512", "avx2", "base"])
def test_fallback_kernels_pass_the_linear_cases(isa):
    env = dict(os.environ, TORCHMODULES_CPU_ISA=isa)
    got = _isa(env)
    assert got == isa or _ISAS.index(got) < _ISAS.index(isa), got  # a CPU without it runs a narrower set
    pytest_under_isa(isa, "tests/test_ops.py", "linear and cpu")


# ---- bfloat16 on AMX or with VDPBF16PS -----------------------------------------------------------

_BF16_BLOCK = torch.ops.torchmodules_cpu.gemm_isa() in ("amx", "avx512bf16")
needs_bf16_block = pytest.mark.skipif(not _BF16_BLOCK, reason="no AMX-BF16 or AVX512-BF16 here (CPU, OS or "
                                      "TORCHMODULES_CPU_ISA)")

# M = 1 .. 17 (the forward of M <= 4 runs the vector dot products), tiles cut at 16 / 32 rows and
# columns, K not a multiple of 32 (zero-padded), K < 32, K = 1, column blocks (N > 512), more
# than one k block (K > 2048) in each product.
_AMX_SHAPES = [(m, 70, 33) for m in range(1, 18)] + [
    (127, 64, 48), (1025, 96, 40), (33, 1100, 50), (5, 3, 7), (64, 1, 600), (1025, 33, 517), (300, 257, 300),
    (40, 2100, 70), (2100, 40, 30)]


def _inputs(m, k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g, dtype=torch.float64).to(torch.bfloat16)
                 for s in ((m, k), (n, k), (n,), (m, n)))


def _check_vs_float64(got, x, w, b, dy):
    """Each product against float64 from the same bfloat16 inputs: summed in float (error at most
    2^-12 of sum |terms|, far above float's own), then rounded once to bfloat16 (half an ulp:
    2^-8 relative)."""
    X, W, B, DY = (t.double() for t in (x, w, b, dy))
    refs = ((X @ W.T + B, X.abs() @ W.abs().T + B.abs()), (DY @ W, DY.abs() @ W.abs()),
            (DY.T @ X, DY.abs().T @ X.abs()))
    for name, o, (ref, size) in zip(("forward", "dx", "dW"), got, refs):
        assert o.dtype == torch.bfloat16 and o.shape == ref.shape, name
        err = (o.double() - ref).abs()
        bound = 2.0**-8 * ref.abs() + 2.0**-12 * size
        assert bool((err <= bound).all()), f"{name}: worst error / bound {(err / bound.clamp_min(1e-300)).max()}"


@needs_bf16_block
@pytest.mark.parametrize("mkn", _AMX_SHAPES, ids=str)
def test_bf16_block_products_vs_float64(mkn):
    x, w, b, dy = _inputs(*mkn)
    _check_vs_float64(_products(x, w, b, dy), x, w, b, dy)


@needs_bf16_block
def test_bf16_block_strided_operands():
    """Transposed and sliced inputs (the glue makes them contiguous)."""
    m, k, n = 70, 100, 90
    x, w, b, dy = _inputs(m, k, n, seed=1)
    xs = torch.zeros(m, 2 * k, dtype=torch.bfloat16)[:, ::2].copy_(x)
    ws = w.t().contiguous().t()
    dys = torch.zeros(2 * m, n, dtype=torch.bfloat16)[::2].copy_(dy)
    assert not (xs.is_contiguous() or ws.is_contiguous() or dys.is_contiguous())
    got = _products(xs, ws, b, dys)
    _check_vs_float64(got, x, w, b, dy)
    for a, f in zip(got, _products(x, w, b, dy)):
        assert torch.equal(a, f)


@pytest.mark.parametrize("k", [200, 2100], ids=["one_k_block", "two_k_blocks"])
def test_bf16_subnormals(k):
    """AMX and VDPBF16PS read bfloat16 subnormals as 0; a product with one reruns on the vector kernels, so a
    subnormal times inf is +-inf (not NaN) and times a huge value its finite product, in the
    three products and Linear + ReLU: NaN and infinities where float64 has them, the finite
    values within _check_vs_float64's bound."""
    m, n = 300, 100
    x, w, b, dy = _inputs(m, k, n, seed=2)
    x[5, 7], w[3, 7] = 1e-39, float("inf")  # y[:, 3] inf (y[5, 3] by the subnormal)
    x[:, 8], dy[:, 4] = 0, 0                # (so that w[4, 8] meets no other term)
    x[6, 8], w[4, 8] = -5e-39, 3e38         # y[6, 4]: -1.5 from the subnormal
    dy[9, 2], w[2, 9] = 2e-39, float("inf")  # dx[:, 9] inf (dx[9, 9] by the subnormal)
    dy[10, 3] = float("-inf")               # dx[10] and dW[3] infinite
    X, W, B, DY = (t.double() for t in (x, w, b, dy))
    refs = ((X @ W.T + B, X.abs() @ W.abs().T + B.abs()), (DY @ W, DY.abs() @ W.abs()),
            (DY.T @ X, DY.abs().T @ X.abs()))
    y_relu, _ = ops.linear_relu_forward(x, w, b)
    got = _products(x, w, b, dy) + (y_relu,)
    for name, o, (ref, size) in zip(("forward", "dx", "dW", "linear_relu"), got, refs + ((refs[0][0].relu(),
                                                                                          refs[0][1]),)):
        fin = ref.isfinite()
        assert torch.equal(o.isnan(), ref.isnan()), name
        assert torch.equal(o[ref.isinf()], ref[ref.isinf()].to(o.dtype)), name
        err = (o.double() - ref).abs()[fin]
        # (+ bfloat16's subnormal step: dW[:, 8] = dy[6] x[6, 8] is subnormal)
        assert bool((err <= 2.0**-8 * ref.abs()[fin] + 2.0**-12 * size[fin] + 2.0**-133).all()), name


@needs_bf16_block
def test_bf16_block_empty_inner_dim():
    """K = 0: y = b; M = 0: dW = 0."""
    x, w, b, dy = _inputs(20, 0, 40)
    assert torch.equal(ops.linear_forward(x, w, b), b.expand(20, 40))
    x, w, b, dy = _inputs(0, 30, 40)
    assert torch.equal(ops.linear_backward_weight(dy, x), torch.zeros(40, 30, dtype=torch.bfloat16))


@needs_bf16_block
def test_bf16_block_close_to_avx512_kernels(tmp_path):
    """The AMX / VDPBF16PS results and the AVX-512 kernels' (TORCHMODULES_CPU_ISA=avx512, in a subprocess):
    both within the float64 bound, so within twice it of each other."""
    shapes = [(17, 70, 33), (1025, 33, 517), (40, 2100, 70)]
    out = tmp_path / "avx512.pt"
    code = ("import sys, torch, torchmodules; sys.path.insert(0, 'tests'); import test_linear_cpu as t; "
            "assert torch.ops.torchmodules_cpu.gemm_isa() == 'avx512'; "
            f"torch.save([t._products(*t._inputs(*s)) for s in {shapes!r}], {str(out)!r})")
    env = dict(os.environ, TORCHMODULES_CPU_ISA="avx512")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for s, theirs in zip(shapes, torch.load(out)):
        x, w, b, dy = _inputs(*s)
        ours = _products(x, w, b, dy)
        _check_vs_float64(ours, x, w, b, dy)
        _check_vs_float64(theirs, x, w, b, dy)
        X, W, B, DY = (t.double() for t in (x, w, b, dy))
        sizes = (X.abs() @ W.abs().T + B.abs(), DY.abs() @ W.abs(), DY.abs().T @ X.abs())
        for o, t, size in zip(ours, theirs, sizes):
            assert bool(((o.double() - t.double()).abs() <= 2 * (2.0**-8 * t.double().abs() + 2.0**-11 * size)).all())
