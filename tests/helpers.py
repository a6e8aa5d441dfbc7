"""Running an op of the table on a dtype and device, and comparing with torch's reference."""
import os
import subprocess
import sys

import torch

from op_table import TOL

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_under_isa(isa, path, k):
    """The tests of path matching -k, run in a subprocess under TORCHMODULES_CPU_ISA=isa (the
    narrower vector forms, what a CPU without the wider ones runs): they ran, and passed."""
    env = dict(os.environ, TORCHMODULES_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-m", "pytest", os.path.join(ROOT, path), "-q", "-p", "no:cacheprovider", "-x",
                        "-k", k], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def cast_inputs(master, dtype, device, requires_grad=True):
    """Master float64 inputs -> the dtype and device under test (leaves requiring grad).
    Integer tensors (class indices of a loss) only move to the device."""
    out = []
    for v in master:
        if isinstance(v, torch.Tensor) and not v.is_floating_point():
            out.append(v.to(device))
        elif isinstance(v, torch.Tensor):
            out.append(_cast(v.detach(), dtype, device, requires_grad))
        else:
            out.append(v)
    return out


def _cast(v, dtype, device, requires_grad):
    """v in dtype on device with the same strides (stride-0 dims stay expanded views of a leaf)."""
    if any(s == 0 and n > 1 for s, n in zip(v.stride(), v.shape)):
        base = v[tuple(slice(0, 1) if s == 0 else slice(None) for s in v.stride())]
        return _cast(base, dtype, device, requires_grad).expand(v.shape)
    if v.is_contiguous():
        t = v.to(dtype=dtype, device=device, copy=True)
    else:
        t = torch.empty_strided(v.shape, v.stride(), dtype=dtype, device=device).copy_(v)
    return t.requires_grad_(requires_grad)


def run(fn, inputs, grad_outs=None):
    """Outputs of fn(*inputs), and the gradients of its floating tensor inputs for grad_outs."""
    outs = as_tuple(fn(*inputs))
    if grad_outs is None:
        return outs, None
    return outs, grads_of(outs, inputs, grad_outs)


def grads_of(outs, inputs, grad_outs):
    """The gradients of inputs' floating leaves for output gradients grad_outs (zeros where unused)."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    pairs = [(o, g) for o, g in zip(outs, grad_outs) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    return [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, grads)]


def assert_close(what, ours, ref64, torch_dt, dtype, scale=1.0):
    """ours (dtype) against ref64 (float64 CPU), allowing twice torch's own error in dtype."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert ours.dtype == torch_dt.dtype, f"{what}: dtype {ours.dtype} != torch's {torch_dt.dtype}"
    o = ours.detach().double().cpu()
    t = torch_dt.detach().double().cpu()
    nan_ref = ref64.isnan()
    assert torch.equal(o.isnan(), nan_ref), f"{what}: NaN at other places than the reference"
    fin = ~nan_ref
    o, r, t = o[fin], ref64[fin], t[fin]
    # exact matches, infinities included; an infinity is also right where the reference rounded
    # to dtype overflows to it (float16 log_softmax of +-3e4 inputs: -6e4 - lse is below -65504)
    same_inf = (o == r) | (o.isinf() & (o == r.to(dtype).double()))
    assert torch.equal(o.isinf() & ~same_inf, torch.zeros_like(same_inf)), f"{what}: infinity where ref has none"
    atol, rtol = TOL[dtype]
    torch_err = (t - r).abs()
    torch_err = torch_err[torch_err.isfinite()]
    slack = 2 * torch_err.max().item() if torch_err.numel() else 0.0
    err = torch.where(same_inf, torch.zeros_like(o), (o - r).abs())
    bound = atol * scale + rtol * r.abs().nan_to_num(posinf=0.0, neginf=0.0) + slack
    bad = err > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst error "
                           f"{err.max().item():.3g} (bound there {bound[err.argmax()].item():.3g}, "
                           f"torch's own error {slack / 2:.3g})")
