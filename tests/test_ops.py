"""Every op x dtype x case x device: forward and every gradient against torch's own op
computed in float64 on the same inputs; on CUDA, also against our CPU kernels."""
import pytest
import torch

import torchmodules.functional as TF
from helpers import DEVICES, as_tuple, assert_close, cast_inputs, run
from op_table import DTYPES, OPS

PARAMS = [pytest.param(op, case, id=f"{op.name}-{case.name}") for op in OPS for case in op.cases]


def _grad_outs(outs, dtype, device):
    return [torch.randn(o.shape, dtype=torch.float64).to(dtype).to(device) for o in outs]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,case", PARAMS)
def test_forward_backward(op, case, dtype, device):
    master = case.make()
    ours_in = cast_inputs(master, dtype, device)
    outs = as_tuple(op.ours(*ours_in))
    gouts = _grad_outs(outs, dtype, device)
    outs, grads = run(op.ours, ours_in, gouts)

    ref_in = cast_inputs(ours_in, torch.float64, "cpu")                 # same rounded values, float64
    ref_outs, ref_grads = run(op.ref, ref_in, [g.double().cpu() for g in gouts])
    tdt_in = cast_inputs(ours_in, dtype, device)                       # torch's own op in dtype
    tdt_outs, tdt_grads = run(op.ref, tdt_in, gouts)

    for k, (o, r, t) in enumerate(zip(outs, ref_outs, tdt_outs)):
        assert o.device.type == device
        assert_close(f"{op.name} output {k}", o, r, t, dtype, case.scale)
    for k, (g, r, t) in enumerate(zip(grads, ref_grads, tdt_grads)):
        assert_close(f"{op.name} grad {k}", g, r, t, dtype, case.scale)

    if device == "cuda":  # the CUDA kernels against our CPU kernels
        cpu_in = cast_inputs(ours_in, dtype, "cpu")
        cpu_outs, cpu_grads = run(op.ours, cpu_in, [g.cpu() for g in gouts])
        for k, (o, c, r) in enumerate(zip(outs, cpu_outs, ref_outs)):
            assert_close(f"{op.name} cuda-vs-cpu output {k}", o, r, c, dtype, case.scale)
        for k, (g, c, r) in enumerate(zip(grads, cpu_grads, ref_grads)):
            assert_close(f"{op.name} cuda-vs-cpu grad {k}", g, r, c, dtype, case.scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_broadcast_patterns(dtype, device):
    """Add's and Maximum's forward over broadcast patterns (each input's dims 1 or full, leading dims dropped,
    a transposed input) and add_backward down to every such shape (the kernel's paths: innermost
    kept dim contiguous, innermost reduced run, everything to one number), against torch in
    float64. Sizes over a 256-column block and odd, so runs and blocks end mid-way."""
    ops = torch.ops.torchmodules
    full = (3, 5, 2, 263)
    for mask in range(16):
        shape = tuple(1 if mask >> d & 1 else s for d, s in enumerate(full))
        for lead in range(3):  # leading dims dropped (a broadcast adds them back)
            small = shape[lead:]
            dy = torch.randn(full, dtype=torch.float64)
            a = torch.randn(small, dtype=torch.float64)
            ours_dy, ours_a = dy.to(dtype).to(device), a.to(dtype).to(device)
            ref_dy, ref_a = ours_dy.double().cpu(), ours_a.double().cpu()
            where = f"{small} in {full}"
            reduce = [d for d in range(len(full)) if d < lead or shape[d] == 1]
            ref_sum = ref_dy.sum(reduce, keepdim=True).reshape(small) if reduce else ref_dy.reshape(small)
            assert_close(f"add_backward to {where}", ops.add_backward(ours_dy, list(small)), ref_sum,
                         ours_dy.sum(reduce, keepdim=True).reshape(small) if reduce else ours_dy, dtype,
                         scale=max(1.0, (dy.numel() / a.numel()) ** 0.5))
            for x, y in ((ours_dy, ours_a), (ours_a, ours_dy), (ours_dy.transpose(1, 3).contiguous().transpose(1, 3), ours_a)):
                x64, y64 = x.double().cpu(), y.double().cpu()
                assert_close(f"add {tuple(x.shape)} + {tuple(y.shape)}", ops.add_forward(x, y), x64 + y64,
                             torch.add(x, y), dtype)
                # Maximum gathers broadcast inputs into blocks for its word kernel: values and gradients
                xs, ys = x.detach().requires_grad_(), y.detach().requires_grad_()
                out = TF.maximum(xs, ys)
                g = torch.randn(out.shape, dtype=torch.float64).to(dtype).to(device)
                ref = torch.maximum(x64.requires_grad_(), y64.requires_grad_())
                what = f"maximum {tuple(x.shape)}, {tuple(y.shape)}"
                assert_close(what, out, ref, torch.maximum(x, y), dtype)
                xt, yt = x.detach().requires_grad_(), y.detach().requires_grad_()
                for k, (d, r, t) in enumerate(zip(torch.autograd.grad(out, (xs, ys), g),
                                                  torch.autograd.grad(ref, (x64, y64), g.double().cpu()),
                                                  torch.autograd.grad(torch.maximum(xt, yt), (xt, yt), g))):
                    assert_close(f"{what}: grad {k}", d, r, t, dtype, scale=max(1.0, (dy.numel() / a.numel()) ** 0.5))
