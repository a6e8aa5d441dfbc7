"""Every op x dtype x case x device: forward and every gradient against torch's own op
computed in float64 on the same inputs; on CUDA, also against our CPU kernels."""
import pytest
import torch

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
