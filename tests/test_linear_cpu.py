"""The CPU GEMM behind Linear (csrc/gemm_cpu.cpp), beyond the op table's cases: its three
products are bitwise the same for any thread count, and the AVX2 and baseline kernels (what
a CPU without AVX-512, or without AVX2, runs; picked here with TORCHMODULES_CPU_ISA) pass
the op table's Linear cases too."""
import os
import subprocess
import sys

import pytest
import torch

import torchmodules  # noqa: F401  (registers the ops)

ops = torch.ops.torchmodules
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _products(x, w, b, dy):
    """y = x W^T + b, dx = dy W, dW = dy^T x."""
    return ops.linear_forward(x, w, b), ops.linear_backward_input(dy, w), ops.linear_backward_weight(dy, x)


# Big enough for several threads; C split by columns or by rows (M > 2N), several column blocks.
@pytest.mark.parametrize("mkn", [(300, 257, 300), (1000, 100, 40), (40, 600, 1100)], ids=str)
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


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_fallback_kernels_pass_the_linear_cases(isa):
    env = dict(os.environ, TORCHMODULES_CPU_ISA=isa)
    got = _isa(env)
    assert got == isa or (isa == "avx2" and got == "base"), got  # a CPU without AVX2 runs the baseline
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/test_ops.py", "-q", "-p", "no:cacheprovider", "-x",
                        "-k", "linear and cpu"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
