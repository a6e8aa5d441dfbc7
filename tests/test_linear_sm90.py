"""float16 / bfloat16 Linear on the Hopper GEMM (kernels/gemm_sm90.cu: TMA, wgmma), on a
compute capability 9.0 GPU: the forward and both backward products against float64 torch on
the same rounded inputs, with TORCHMODULES_SM90_GEMM=require (the kernel must run each product,
else the call raises) and =0 (the mma.sync kernel, for comparison). Skipped elsewhere; the
addressing is also simulated on the CPU (tests/test_gemm_sm90_sim.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

import torchmodules.functional as TF
from helpers import assert_close

F16, BF16 = torch.float16, torch.bfloat16

needs_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability(0) != (9, 0),
    reason="needs a compute capability 9.0 GPU (H100, H200)")

# (M, K, N): y[M, N] = x[M, K] W[N, K]^T. The products: y is M x N summed over K, dx M x K over
# N, dW N x K over M; each must be at least 128 x 128 and sum over 64 or more for the kernel,
# with K and N multiples of 8 (16-byte rows for the TMA).
SHAPES = [
    (128, 128, 128),    # one tile, two K steps
    (200, 136, 264),    # M, N not tile multiples; K = 2 * 64 + 8: a partial last K step
    (130, 192, 136),    # N < 256: B's box reaches past the tensor (TMA zero fill)
    (256, 256, 512),    # multiples of the tile everywhere
    (333, 1032, 776),   # long sums: 17 K steps through the 4-stage ring; dW sums over 333
    (2200, 136, 4104),  # 18 x 17 tiles > 132 SMs: several tiles per CTA (the persistent loop)
]


def _products(x, w, b, gy):
    """y = linear(x, w, b) and (dx, dw, db) for gy, through TF.linear (ours) on leaves."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = TF.linear(x, w, b)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy)
    return {"y": y.detach(), "dx": grads[0], "dw": grads[1], **({"db": grads[2]} if b is not None else {})}


def _reference(x, w, b, gy):
    """The same in float64 (on the GPU) from the same rounded inputs, and torch in x's dtype."""
    x64, w64, gy64 = x.double(), w.double(), gy.double()
    ref = {"y": x64 @ w64.T + (b.double() if b is not None else 0), "dx": gy64 @ w64, "dw": gy64.T @ x64}
    xt, wt = x.detach().requires_grad_(), w.detach().requires_grad_()
    bt = b.detach().requires_grad_() if b is not None else None
    yt = F.linear(xt, wt, bt)
    gt = torch.autograd.grad(yt, [t for t in (xt, wt, bt) if t is not None], gy)
    twin = {"y": yt.detach(), "dx": gt[0], "dw": gt[1]}
    if b is not None:
        ref["db"], twin["db"] = gy64.sum(0), gt[2]
    return ref, twin


@needs_sm90
@pytest.mark.parametrize("mode", ["require", "0"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("M,K,N", SHAPES, ids=lambda s: str(s))
def test_sm90_products(M, K, N, bias, dtype, mode, monkeypatch):
    monkeypatch.setenv("TORCHMODULES_SM90_GEMM", mode)
    dev = "cuda"
    x = torch.randn(M, K, device=dev).to(dtype)
    w = torch.randn(N, K, device=dev).to(dtype)
    b = torch.randn(N, device=dev).to(dtype) if bias else None
    gy = torch.randn(M, N, device=dev).to(dtype)
    ours = _products(x, w, b, gy)
    ref, twin = _reference(x, w, b, gy)
    sums = {"y": K, "dx": N, "dw": M, "db": M}  # inputs ~ N(0, 1): a sum of k products is ~ sqrt(k)
    for name, r in ref.items():
        assert_close(f"{name} ({mode})", ours[name], r.cpu(), twin[name], dtype, scale=math.sqrt(sums[name]))


@needs_sm90
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_sm90_large(dtype, monkeypatch):
    """4096^3 with a 3-d input, compared on the GPU (the size the benchmark times)."""
    monkeypatch.setenv("TORCHMODULES_SM90_GEMM", "require")
    x = torch.randn(2, 2048, 4096, device="cuda").to(dtype)
    w = torch.randn(4096, 4096, device="cuda").to(dtype)
    b = torch.randn(4096, device="cuda").to(dtype)
    gy = torch.randn(2, 2048, 4096, device="cuda").to(dtype)
    ours = _products(x, w, b, gy)
    x2, gy2 = x.reshape(-1, 4096), gy.reshape(-1, 4096)
    ref, twin = _reference(x2, w, b, gy2)
    atol, rtol = {BF16: (1e-2, 1.6e-2), F16: (1e-3, 2e-3)}[dtype]
    for name, r in ref.items():
        o = ours[name].reshape(r.shape).double()
        t = twin[name].reshape(r.shape).double()
        assert not o.isnan().any(), f"{name}: NaN (an element never written?)"
        err = (o - r).abs()
        bound = atol * 64 + rtol * r.abs() + 2 * (t - r).abs().max()
        bad = err > bound
        assert not bad.any(), f"{name}: {int(bad.sum())} of {bad.numel()} off, worst {err.max().item():.3g}"


@needs_sm90
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_sm90_linear_relu(dtype, monkeypatch):
    """Linear + ReLU with its GEMM on this kernel (require; the ReLU runs after it, in place): y and
    the mask bitwise those of our linear then relu, y within tolerance of relu of the float64
    product, and the gradients of TF.linear_relu those of the float64 products through that mask."""
    monkeypatch.setenv("TORCHMODULES_SM90_GEMM", "require")
    M, K, N = 200, 136, 264
    x, w, b, gy = (torch.randn(*s, device="cuda").to(dtype) for s in ((M, K), (N, K), (N,), (M, N)))
    y, mask = torch.ops.torchmodules.linear_relu_forward(x, w, b)
    y_ref, mask_ref = torch.ops.torchmodules.relu_forward(TF.linear(x, w, b))
    assert torch.equal(y, y_ref) and torch.equal(mask, mask_ref)
    z64 = x.double() @ w.double().T + b.double()
    assert_close("y", y, z64.relu().cpu(), F.relu(F.linear(x, w, b)), dtype, scale=math.sqrt(K))
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    dx, dw, db = torch.autograd.grad(TF.linear_relu(*leaves), leaves, gy)
    twins = [t.detach().requires_grad_() for t in (x, w, b)]
    tdx, tdw, tdb = torch.autograd.grad(F.relu(F.linear(*twins)), twins, gy)
    g64 = gy.double() * (y > 0)  # the gradient passes where our rounded output is positive
    refs = {"dx": (dx, g64 @ w.double(), tdx, N), "dw": (dw, g64.T @ x.double(), tdw, M),
            "db": (db, g64.sum(0), tdb, M)}
    for name, (o, r, t, k) in refs.items():
        assert_close(name, o, r.cpu(), t, dtype, scale=math.sqrt(k))


@needs_sm90
def test_sm90_repeatable(monkeypatch):
    """One sum order per element, no split-K: the same bits on every run."""
    monkeypatch.setenv("TORCHMODULES_SM90_GEMM", "require")
    x, w, b = (torch.randn(*s, device="cuda", dtype=BF16) for s in ((1000, 520), (776, 520), (776,)))
    first = TF.linear(x, w, b)
    for _ in range(3):
        assert torch.equal(TF.linear(x, w, b), first)


@needs_sm90
def test_sm90_falls_back(monkeypatch):
    """Operands the TMA cannot take (a 2-byte-offset pointer, rows not a multiple of 16 bytes)
    and small products go to the mma.sync kernel: right results by default, an error naming
    the reason with require."""
    base = torch.randn(300 * 136 + 1, device="cuda", dtype=BF16)
    x_misaligned = base[1:].view(300, 136)  # contiguous, data pointer 2 bytes past 16-byte alignment
    w = torch.randn(264, 136, device="cuda", dtype=BF16)
    x_k100 = torch.randn(300, 100, device="cuda", dtype=BF16)
    w_k100 = torch.randn(264, 100, device="cuda", dtype=BF16)
    x_small, w_small = torch.randn(64, 136, device="cuda", dtype=BF16), w
    cases = [(x_misaligned, w, "16-byte aligned"), (x_k100, w_k100, "multiple of 16 bytes"),
             (x_small, w_small, "too small")]
    for x, ww, reason in cases:
        monkeypatch.delenv("TORCHMODULES_SM90_GEMM", raising=False)
        y = TF.linear(x, ww)
        ref = x.double() @ ww.double().T
        assert_close(f"fallback ({reason})", y, ref.cpu(), F.linear(x, ww), BF16, scale=math.sqrt(x.shape[1]))
        monkeypatch.setenv("TORCHMODULES_SM90_GEMM", "require")
        with pytest.raises(RuntimeError, match=reason):
            TF.linear(x, ww)
