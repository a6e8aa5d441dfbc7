"""Every op runs on the current stream and on its input's device (issue 7).

Stream: each op table case, in float32, is queued on a side stream behind a GPU sleep, after which
its inputs are written into memory that held NaN; then, behind a second sleep, its output gradients
the same way, and the backward. A kernel queued on any other stream runs during a sleep and reads
NaN. The outputs and gradients must be those of the same case on the default stream, bit for bit
(the kernels are deterministic), and each pass must have been queued before its sleep ended (an
event after each sleep, not yet reached: else a host wait made the check vacuous; the class-index
losses' forward waits for its target check by design, so theirs is checked at the backward only).
The same for an SGD step whose gradients arrive late. Device: with two GPUs, inputs on cuda:1
while cuda:0 is current give the results of the same call with cuda:1 current, on cuda:1."""
import math

import pytest
import torch

from helpers import as_tuple, cast_inputs, grads_of, run
from op_table import OPS
from torchmodules.optim import SGD

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

PARAMS = [pytest.param(op, case, id=f"{op.name}-{case.name}") for op in OPS for case in op.cases]
F32 = torch.float32
SLEEP = 100_000_000  # GPU clock cycles (~50 ms): far longer than the host takes to queue a pass
SYNCING_FORWARD = ("cross_entropy", "nll_loss")  # wait for their target check (kernels/target_check.cuh)


def _same(what, a, b):
    assert a.device == b.device, f"{what}: device {a.device} != {b.device}"
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _fill_nan(tensors):
    """NaN over the whole storage of each float32 tensor."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.untyped_storage().nbytes():
            t.as_strided((t.untyped_storage().nbytes() // 4,), (1,), 0).fill_(math.nan)


def _late_inputs(src, stream, requires_grad=True, sleep=SLEEP):
    """(copies of src's float32 GPU tensors (integer ones as they are), the event after the sleep):
    the copies made on `stream` only after a sleep there, into blocks of the stream's pool that held
    NaN until then (the same allocations made first, their whole storage NaN-filled, and freed). The
    copies are device to device: a copy from pageable host memory would wait for the sleep on the
    host, before the op is queued."""
    stream.wait_stream(torch.cuda.current_stream())  # src is ready on the side stream
    with torch.cuda.stream(stream):
        _fill_nan(cast_inputs(src, F32, "cuda", requires_grad=False))  # (freed on return)
        torch.cuda._sleep(sleep)
        slept = torch.cuda.Event()
        slept.record(stream)
        return cast_inputs(src, F32, "cuda", requires_grad), slept


def _grad_outs(outs):
    return [torch.randn(o.shape, dtype=torch.float64).to(F32).cuda() for o in outs]


@pytest.mark.parametrize("op,case", PARAMS)
def test_cuda_op_runs_on_the_current_stream(op, case):
    master = case.make()
    if op.name == "nll_loss" and isinstance(master[2], tuple):  # its weight: a tensor, copied late too
        master[2] = torch.tensor(master[2], dtype=torch.float64)
    ins = cast_inputs(master, F32, "cuda")
    gouts = _grad_outs(as_tuple(op.ours(*ins)))
    outs, grads = run(op.ours, ins, gouts)
    torch.cuda.synchronize()

    side = torch.cuda.Stream()
    src = cast_inputs(master, F32, "cuda", requires_grad=False)  # (alive until the side stream has read it)

    def on_side(sleep):
        late, slept = _late_inputs(src, side, sleep=sleep)
        with torch.cuda.stream(side):
            outs2 = as_tuple(op.ours(*late))
        forward_queued = not slept.query()
        late_g, slept_g = _late_inputs(gouts, side, requires_grad=False, sleep=sleep)
        with torch.cuda.stream(side):
            grads2 = grads_of(outs2, late, late_g)
        backward_queued = not slept_g.query()
        torch.cuda.synchronize()
        return outs2, grads2, forward_queued, backward_queued

    on_side(1000)  # every kernel of the sequence loaded once (a lazy module load may wait for the GPU)
    outs2, grads2, forward_queued, backward_queued = on_side(SLEEP)
    assert backward_queued, f"{op.name}: the backward was queued only after its sleep ended (a host wait)"
    assert forward_queued or op.name in SYNCING_FORWARD, \
        f"{op.name}: the forward was queued only after its sleep ended (a host wait)"
    for k, (a, b) in enumerate(zip(outs2, outs)):
        _same(f"{op.name} output {k}", a, b)
    for k, (a, b) in enumerate(zip(grads2, grads)):
        _same(f"{op.name} grad {k}", a, b)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_cuda_sgd_step_runs_on_the_current_stream(momentum):
    sizes = [3, 1000, 65539]
    start = [torch.randn(n, dtype=F32, device="cuda") for n in sizes]
    gs = [torch.randn(n, dtype=F32, device="cuda") for n in sizes]

    def steps(stream, sleep=SLEEP):
        ps = [p.clone() for p in start]
        opt = SGD(ps, lr=0.1, momentum=momentum, weight_decay=0.01)
        for step in range(2):
            if stream is None:
                for p, g in zip(ps, gs):
                    p.grad = g * (step + 1)
                opt.step()
            else:
                src = [g * (step + 1) for g in gs]
                late, slept = _late_inputs(src, stream, requires_grad=False, sleep=sleep)
                with torch.cuda.stream(stream):
                    for p, g in zip(ps, late):
                        p.grad = g
                    opt.step()
                assert sleep < SLEEP or not slept.query(), "the SGD step was queued only after its sleep ended"
                torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        return ps

    steps(torch.cuda.Stream(), sleep=1000)  # every kernel loaded once (a lazy module load may wait for the GPU)
    for k, (a, b) in enumerate(zip(steps(torch.cuda.Stream()), steps(None))):
        _same(f"sgd momentum={momentum} param {k}", a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("op,case", PARAMS)
def test_cuda_op_runs_on_its_inputs_device(op, case):
    master = case.make()

    def on_1(current):
        with torch.cuda.device(current):
            ins = [v.to("cuda:1") if isinstance(v, torch.Tensor) else v for v in cast_inputs(master, F32, "cpu")]
            ins = [v.detach().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                   for v in ins]
            gouts = [torch.ones(o.shape, dtype=F32, device="cuda:1") for o in as_tuple(op.ours(*ins))]
            out = run(op.ours, ins, gouts)
        torch.cuda.synchronize(1)
        return out

    (o0, g0), (o1, g1) = on_1(0), on_1(1)
    for k, (a, b) in enumerate(zip(o0, o1)):
        _same(f"{op.name} output {k}", a, b)
        assert a.device == torch.device("cuda:1")
    for k, (a, b) in enumerate(zip(g0, g1)):
        _same(f"{op.name} grad {k}", a, b)
