"""float32 linear on CUDA honours torch.backends.cuda.matmul.allow_tf32 as torch does: when set,
the forward and both backward GEMMs run on TF32 tensor cores (checked against float64 with
twice torch's own TF32 error); when not set (the default), they stay full-precision float32."""
import math

import pytest
import torch
import torch.nn.functional as F

import torchmodules.functional as TF

needs_tf32_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability(0) < (8, 0),
    reason="needs a CUDA GPU with TF32 tensor cores (compute capability 8.0+)")

# (M, K, N): y[M, N] = x[M, K] w[N, K]^T + b. Odd sizes take the unvectorized loads and the
# tile edges; K, N and M are the sums of the forward, dx and dw products.
SHAPES = [(130, 70, 129), (64, 1025, 10), (256, 256, 256)]


@pytest.fixture
def allow_tf32():
    """Sets torch.backends.cuda.matmul.allow_tf32 (via the returned function), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32

    def set_flag(value):
        torch.backends.cuda.matmul.allow_tf32 = value

    try:
        yield set_flag
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _forward_backward(fn, x, w, b, gy):
    """fn(x, w, b) and the gradients of x, w, b for gy, on fresh leaves of the same values."""
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    y = fn(x, w, b)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), gy)
    return {"y": y.detach(), "dx": dx, "dw": dw, "db": db}


def _sums(M, K, N):
    """Length of the sum behind each result."""
    return {"y": K, "dx": N, "dw": M, "db": M}


@needs_tf32_gpu
@pytest.mark.parametrize("M,K,N", SHAPES, ids=lambda s: str(s))
def test_linear_float32_allow_tf32(M, K, N, allow_tf32):
    x = torch.randn(M, K, device="cuda")
    w = torch.randn(N, K, device="cuda")
    b = torch.randn(N, device="cuda")
    gy = torch.randn(M, N, device="cuda")
    ref = _forward_backward(F.linear, *(t.double().cpu() for t in (x, w, b, gy)))

    allow_tf32(True)
    ours_tf32 = _forward_backward(TF.linear, x, w, b, gy)
    torch_tf32 = _forward_backward(F.linear, x, w, b, gy)
    allow_tf32(False)
    ours_fp32 = _forward_backward(TF.linear, x, w, b, gy)
    torch_fp32 = _forward_backward(F.linear, x, w, b, gy)

    for name, k in _sums(M, K, N).items():
        r = ref[name]
        scale = math.sqrt(k)  # inputs ~ N(0, 1): a sum of k products is ~ sqrt(k)

        # TF32: twice torch's own TF32 error on the same inputs, plus a TF32-sized margin.
        o = ours_tf32[name]
        assert o.dtype == torch.float32 and o.device.type == "cuda" and o.shape == r.shape, name
        err = (o.double().cpu() - r).abs()
        torch_err = (torch_tf32[name].double().cpu() - r).abs().max().item()
        bound = 2 * torch_err + 2e-3 * scale + 2e-3 * r.abs()
        bad = err > bound
        assert not bad.any(), (f"tf32 {name}: {int(bad.sum())} of {bad.numel()} elements off; worst error "
                               f"{err.max().item():.3g} (bound there {bound.flatten()[err.argmax()].item():.3g}, "
                               f"torch's own TF32 error {torch_err:.3g})")

        # allow_tf32=False: our default full-precision path (float32 error only).
        o = ours_fp32[name]
        err = (o.double().cpu() - r).abs()
        bound = 1e-5 * scale + 1e-5 * r.abs()
        bad = err > bound
        assert not bad.any(), (f"fp32 {name}: {int(bad.sum())} of {bad.numel()} elements off; worst error "
                               f"{err.max().item():.3g}, torch's float32 error "
                               f"{(torch_fp32[name].double().cpu() - r).abs().max().item():.3g}")

    # The flag is read on every call: the GEMM results do differ between the two paths
    # (db is a plain reduction either way).
    for name in ("y", "dx", "dw"):
        assert not torch.equal(ours_tf32[name], ours_fp32[name]), f"{name}: allow_tf32 changed nothing"


@needs_tf32_gpu
def test_linear_float32_default_is_full_precision(allow_tf32):
    """With allow_tf32=False the results are the same bits before and after a call with it set:
    the flag selects the path per call, nothing of the TF32 path sticks."""
    M, K, N = SHAPES[0]
    x, w, b, gy = (torch.randn(*s, device="cuda") for s in ((M, K), (N, K), (N,), (M, N)))
    allow_tf32(False)
    first = _forward_backward(TF.linear, x, w, b, gy)
    allow_tf32(True)
    _forward_backward(TF.linear, x, w, b, gy)
    allow_tf32(False)
    again = _forward_backward(TF.linear, x, w, b, gy)
    for name in first:
        assert torch.equal(first[name], again[name]), name
