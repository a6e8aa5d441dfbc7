"""torchmodules.optim.SGD against torch.optim.SGD.

Each run feeds the same gradient sequence (fresh random values, independent of the params) to
our SGD in the dtype under test, to torch's SGD in that dtype, and to torch's SGD in float64 on
the CPU (on the same values, rounded to the dtype): ours must be as close to the float64
trajectory as helpers.assert_close allows (twice torch's own error in that dtype, at worst).
Also: param groups, grads that are None, state dicts both ways, lr schedulers, a small model,
strided params, the op's checks, its opcheck, and one kernel call per (device, dtype).
"""
import copy
import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchmodules
from helpers import DEVICES, assert_close
from op_table import BF16, DTYPES, F16, F32, F64
from torchmodules.optim import SGD

sgd_step = torch.ops.torchmodules.sgd_step.default

# Odd sizes, 0-d, empty, and 20000 elements (over one CUDA chunk of 16384).
SHAPES = [(), (1,), (3,), (127,), (33, 31), (1025,), (0,), (4, 3, 5), (20000,)]
STEPS = 20

# momentum, dampening, weight_decay, nesterov, maximize
COMBOS = list(itertools.product([0.0, 0.9], [0.0, 0.5], [0.0, 0.1], [False, True], [False, True]))
VALID = [c for c in COMBOS if not (c[3] and (c[0] <= 0 or c[1] != 0))]
INVALID = [c for c in COMBOS if c not in VALID]


def _combo_id(c):
    m, d, wd, nest, maxi = c
    return f"m{m}-d{d}-wd{wd}" + ("-nesterov" if nest else "") + ("-maximize" if maxi else "")


def _masters(shapes, steps):
    """Float64 initial params and a gradient per param per step."""
    return [torch.randn(s, dtype=F64) for s in shapes], [[torch.randn(s, dtype=F64) for s in shapes]
                                                          for _ in range(steps)]


def _run(cls, masters, grads, dtypes, device, groups=None, ref=False, sched=None, between=None, **defaults):
    """Params from masters (param i in dtypes[i] on device; with ref, float64 on the CPU holding
    the same rounded values), optimised by cls over the gradient sequence grads[step][i] (None: no
    grad that step). groups: param groups as (indices, options). sched(opt) -> an lr scheduler
    stepped after every step; between(step, params, opt) runs before each step."""
    ps = []
    for m, dt in zip(masters, dtypes):
        v = m.to(dt, copy=True)
        ps.append((v.double() if ref else v.to(device)).requires_grad_(True))
    groups = groups or [(range(len(ps)), {})]
    opt = cls([dict(params=[ps[i] for i in idx], **o) for idx, o in groups], **defaults)
    s = sched(opt) if sched else None
    for k, step_grads in enumerate(grads):
        if between:
            between(k, ps, opt)
        for p, g, dt in zip(ps, step_grads, dtypes):
            p.grad = None if g is None else (g.to(dt).double() if ref else g.to(dt).to(device))
        opt.step()
        if s:
            s.step()
    return ps, opt


def _buffers(ps, opt):
    return [opt.state[p].get("momentum_buffer") if p in opt.state else None for p in ps]


def _scale(dtype):
    """atol scale for a trajectory: a half-type buffer or param is rounded at every step, at the
    magnitude it had then (|b| grows to ~4 with momentum 0.9 on N(0, 1) grads: a float16
    half-ulp of 2e-3), and those errors add up as a random walk, ~sqrt(steps) of them, however
    small the final value. float32/float64 keep the plain tolerance."""
    return math.sqrt(STEPS) if dtype in (F16, BF16) else 1.0


def _compare(ours, theirs, ref, dtypes):
    """Params and momentum buffers of three runs (ours, torch in the dtype, torch float64 CPU)."""
    (po, oo), (pt, ot), (pr, orf) = ours, theirs, ref
    for i, dt in enumerate(dtypes):
        assert_close(f"param {i}", po[i].detach(), pr[i].detach(), pt[i].detach(), dt, _scale(dt))
    for i, (bo, bt, br) in enumerate(zip(_buffers(po, oo), _buffers(pt, ot), _buffers(pr, orf))):
        assert (bo is None) == (br is None), f"momentum buffer {i}: ours {bo is not None}, torch {br is not None}"
        if br is not None:
            assert bo.shape == po[i].shape and bo.device == po[i].device
            assert_close(f"momentum buffer {i}", bo, br, bt, dtypes[i], _scale(dtypes[i]))


def _three(masters, grads, dtypes, device, **kw):
    return (_run(SGD, masters, grads, dtypes, device, **kw),
            _run(torch.optim.SGD, masters, grads, dtypes, device, **kw),
            _run(torch.optim.SGD, masters, grads, dtypes, "cpu", ref=True, **kw))


# ---- the update, every valid option combination, every dtype -------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("combo", VALID, ids=_combo_id)
def test_parity(combo, dtype, device):
    m, d, wd, nest, maxi = combo
    masters, grads = _masters(SHAPES, STEPS)
    runs = _three(masters, grads, [dtype] * len(SHAPES), device, lr=0.05, momentum=m, dampening=d,
                  weight_decay=wd, nesterov=nest, maximize=maxi)
    _compare(*runs, [dtype] * len(SHAPES))


# ---- construction: torch's validation, torch's messages ------------------------------------

def _same_error(make_ours, make_torch):
    with pytest.raises(Exception) as theirs:
        make_torch()
    with pytest.raises(type(theirs.value)) as ours:
        make_ours()
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("combo", INVALID, ids=_combo_id)
def test_invalid_combination_raises_as_torch(combo):
    m, d, wd, nest, maxi = combo
    kw = dict(lr=0.1, momentum=m, dampening=d, weight_decay=wd, nesterov=nest, maximize=maxi)
    p = [torch.zeros(3, requires_grad=True)]
    _same_error(lambda: SGD(p, **kw), lambda: torch.optim.SGD(p, **kw))


@pytest.mark.parametrize("kw", [dict(lr=-0.1), dict(lr=0.1, momentum=-0.5), dict(lr=0.1, weight_decay=-1e-3),
                                dict(lr=torch.tensor([0.1, 0.2])), dict(lr=0.1, fused=True, foreach=True),
                                dict(lr=0.1, momentum=0.0, nesterov=True)], ids=str)
def test_invalid_options_raise_as_torch(kw):
    p = [torch.zeros(3, requires_grad=True)]
    _same_error(lambda: SGD(p, **kw), lambda: torch.optim.SGD(p, **kw))


def test_empty_params_raise_as_torch():
    _same_error(lambda: SGD([], lr=0.1), lambda: torch.optim.SGD([], lr=0.1))


def test_differentiable_is_refused():
    with pytest.raises(RuntimeError, match="differentiable"):
        SGD([torch.zeros(3, requires_grad=True)], lr=0.1, differentiable=True)


def test_defaults_as_torch():
    p = [torch.zeros(3, requires_grad=True)]
    assert SGD(p).defaults == torch.optim.SGD(p).defaults


# ---- param groups, grads that are None, tensor lr ------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_param_groups_with_different_options_and_dtypes(device):
    shapes = [(5, 7), (129,), (3,), (40,), (2, 2, 2), (1000,), (17,)]
    dtypes = [F64, F32, F64, F16, F32, F64, BF16]
    groups = [([0, 1], dict(momentum=0.9, nesterov=True)),
              ([2, 3], dict(lr=0.01, weight_decay=0.1, maximize=True)),
              ([4, 5, 6], dict(momentum=0.5, dampening=0.3, weight_decay=0.01))]
    masters, grads = _masters(shapes, STEPS)
    _compare(*_three(masters, grads, dtypes, device, groups=groups, lr=0.1), dtypes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
def test_grads_none(dtype, device):
    """Param 0 never has a grad; 1 from step 5 on (its first momentum step while the others
    continue); 2 none in steps 8..12 (skipped, its buffer kept); 3 always."""
    shapes = [(7,), (30,), (4, 5), (1025,)]
    masters, grads = _masters(shapes, STEPS)
    for k, g in enumerate(grads):
        g[0] = None
        if k < 5:
            g[1] = None
        if 8 <= k <= 12:
            g[2] = None
    dtypes = [dtype] * 4
    runs = _three(masters, grads, dtypes, device, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1)
    _compare(*runs, dtypes)
    assert torch.equal(runs[0][0][0].detach().cpu(), masters[0].to(dtype)), "a param without grad moved"


@pytest.mark.parametrize("device", DEVICES)
def test_add_param_group(device):
    masters, grads = _masters([(9,), (130,), (6, 5)], STEPS)

    def between(k, ps, opt):  # starts with two params, adds the third with its own options
        if k == 7:
            opt.add_param_group(dict(params=[ps[2]], lr=0.02, momentum=0.5, nesterov=True))

    dtypes = [F64] * 3
    kw = dict(groups=[([0, 1], {})], lr=0.1, momentum=0.9, weight_decay=0.01, between=between)
    ours = _run(SGD, masters, grads, dtypes, device, **kw)
    theirs = _run(torch.optim.SGD, masters, grads, dtypes, device, **kw)
    ref = _run(torch.optim.SGD, masters, grads, dtypes, "cpu", ref=True, **kw)
    _compare(ours, theirs, ref, dtypes)
    assert len(ours[1].param_groups) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_lr(device):
    masters, grads = _masters(SHAPES, 8)
    dtypes = [F32] * len(SHAPES)
    _compare(*_three(masters, grads, dtypes, device, lr=torch.tensor(0.05), momentum=0.9), dtypes)


# ---- state dicts both ways -----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("first,second", [(SGD, torch.optim.SGD), (torch.optim.SGD, SGD), (SGD, SGD)],
                         ids=["ours_to_torch", "torch_to_ours", "ours_to_ours"])
def test_state_dict_round_trip(first, second, device):
    """first runs 8 steps, its state dict loads into second on fresh params holding the same
    values, second runs 8 more: as torch's SGD running all 16 (float64)."""
    shapes = [(5, 3), (127,), (1,)]
    masters, grads = _masters(shapes, 16)
    dtypes = [F64] * 3
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    groups = [([0, 1], {}), ([2], dict(lr=0.2))]
    ps1, opt1 = _run(first, masters, grads[:8], dtypes, device, groups=groups, **kw)
    sd = opt1.state_dict()
    ps2, opt2 = _run(second, [p.detach().cpu() for p in ps1], [], dtypes, device, groups=groups, **kw)
    opt2.load_state_dict(copy.deepcopy(sd))
    for step_grads in grads[8:]:
        for p, g in zip(ps2, step_grads):
            p.grad = g.to(device)
        opt2.step()
    full = _run(torch.optim.SGD, masters, grads, dtypes, device, groups=groups, **kw)
    ref = _run(torch.optim.SGD, masters, grads, dtypes, "cpu", groups=groups, ref=True, **kw)
    _compare((ps2, opt2), full, ref, dtypes)

    # Same layout as torch's: keys of the groups and of each param's state.
    t_sd = full[1].state_dict()
    o_sd = opt2.state_dict()
    assert [sorted(g) for g in o_sd["param_groups"]] == [sorted(g) for g in t_sd["param_groups"]]
    assert {k: sorted(v) for k, v in o_sd["state"].items()} == {k: sorted(v) for k, v in t_sd["state"].items()}


# ---- lr schedulers ---------------------------------------------------------------------------

S = torch.optim.lr_scheduler
SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=7),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.3, total_steps=STEPS + 1, cycle_momentum=True,
                                         base_momentum=0.8, max_momentum=0.95),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.2, step_size_up=4, cycle_momentum=True),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_scheduler(name, device):
    masters, grads = _masters([(7, 5), (300,)], STEPS)
    dtypes = [F64, F64]
    seen = {}

    def between(k, ps, opt):  # records the lr and momentum of every step
        seen.setdefault(type(opt), []).append([(g["lr"], g["momentum"]) for g in opt.param_groups])

    groups = [([0], {}), ([1], dict(lr=0.05))]
    kw = dict(groups=groups, sched=SCHEDULERS[name], between=between, lr=0.1, momentum=0.9, weight_decay=1e-3)
    runs = (_run(SGD, masters, grads, dtypes, device, **kw),
            _run(torch.optim.SGD, masters, grads, dtypes, device, **kw),
            _run(torch.optim.SGD, masters, grads, dtypes, "cpu", ref=True, **kw))
    _compare(*runs, dtypes)
    ours, theirs = seen[SGD], seen[torch.optim.SGD]
    assert ours == theirs[:len(ours)] == theirs[len(ours):]  # torch's two runs saw the same schedule
    assert len({tuple(s) for s in ours}) > 1, "the schedule never changed the lr"


def test_reduce_lr_on_plateau():
    masters, grads = _masters([(20,)], STEPS)
    out = []
    for cls in (SGD, torch.optim.SGD):
        ps, opt = _run(cls, masters, [], [F64], "cpu", lr=0.1, momentum=0.9)
        sched = S.ReduceLROnPlateau(opt, patience=1, factor=0.5)
        lrs = []
        for g in grads:
            ps[0].grad = g[0].clone()
            opt.step()
            sched.step(float((ps[0].detach() ** 2).sum()))  # a plateau metric from the params
            lrs.append(opt.param_groups[0]["lr"])
        out.append((ps[0].detach(), lrs))
    assert out[0][1] == out[1][1]
    assert_close("param", out[0][0], out[1][0], out[1][0], F64)


# ---- closure and a small model -------------------------------------------------------------

def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torchmodules.Linear(6, 16), torchmodules.ReLU(), torchmodules.Linear(16, 3)).double()


@pytest.mark.parametrize("device", DEVICES)
def test_small_model_trains_as_with_torch(device):
    """A two-layer net trained 30 steps on one regression batch, by each optimizer (closure
    steps, a param group per layer): same losses and weights as with torch's SGD."""
    seed = int(torch.randint(0, 2**31, ()))
    x, y = torch.randn(32, 6, dtype=F64, device=device), torch.randn(32, 3, dtype=F64, device=device)
    results = []
    for cls in (SGD, torch.optim.SGD):
        net = _model(seed).to(device)
        opt = cls([dict(params=net[0].parameters(), lr=0.05),
                   dict(params=net[2].parameters(), weight_decay=1e-3, nesterov=True)], lr=0.1, momentum=0.9)

        def closure():
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            return loss

        losses = [opt.step(closure).item() for _ in range(30)]
        results.append((losses, [p.detach().cpu() for p in net.parameters()]))
    (lo, po), (lt, pt) = results
    assert lo[-1] < lo[0], "the loss did not go down"
    torch.testing.assert_close(torch.tensor(lo), torch.tensor(lt), rtol=1e-9, atol=1e-12)
    for a, b in zip(po, pt):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_sparse_grad_is_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        SGD(emb.parameters(), lr=0.1).step()


# ---- layouts: params updated in place whatever their strides -------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, F32, F16], ids=str)
def test_strided_params_and_grads(dtype, device):
    """A transposed param, a channels_last one, a strided slice of a bigger tensor (not dense),
    one at an odd address; grads transposed, expanded (stride 0) or contiguous. Starts with
    torch's SGD and loads its state dict (momentum buffers in the grads' layouts) into ours."""
    def make():
        base = torch.randn(6, 10, dtype=F64).to(device=device, dtype=dtype)
        flat = torch.randn(1 + 77, dtype=F64).to(device=device, dtype=dtype)
        ps = [torch.randn(7, 5, dtype=F64).to(device=device, dtype=dtype).t(),
              torch.randn(2, 3, 4, 5, dtype=F64).to(device=device, dtype=dtype).to(
                  memory_format=torch.channels_last),
              base[:, ::2],
              flat[1:],
              torch.randn(4, 6, dtype=F64).to(device=device, dtype=dtype)]
        return base, flat, [p.detach().requires_grad_(True) for p in ps]

    def grad(p, k, i):
        g = torch.randn(p.shape, dtype=F64, generator=torch.Generator().manual_seed(1000 * k + i))
        g = g.to(device=device, dtype=dtype)
        if i == 0:
            return g.contiguous()                                 # param is transposed
        if i == 4:
            return g.t().contiguous().t() if k % 2 else g[:1].expand(p.shape)  # transposed / stride 0
        return g

    base_o, flat_o, ps_o = make()
    base_t, flat_t, ps_t = make()
    for p, q in zip(ps_o + [base_o, flat_o], ps_t + [base_t, flat_t]):
        with torch.no_grad():
            q.copy_(p)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.05)
    opt_t = torch.optim.SGD(ps_t, **kw)
    for k in range(3):
        for i, p in enumerate(ps_t):
            p.grad = grad(p, k, i)
        opt_t.step()
    for p, q in zip(ps_o, ps_t):  # ours continues from torch's params and state
        with torch.no_grad():
            p.copy_(q)
    opt_o = SGD(ps_o, **kw)
    opt_o.load_state_dict(copy.deepcopy(opt_t.state_dict()))  # else both share torch's buffers
    ptrs = [p.data_ptr() for p in ps_o]
    strides = [p.stride() for p in ps_o]
    left = base_o[:, 1::2].clone()
    for k in range(3, 8):
        for ps, opt in ((ps_o, opt_o), (ps_t, opt_t)):
            for i, p in enumerate(ps):
                p.grad = grad(p, k, i)
            opt.step()
    assert [p.data_ptr() for p in ps_o] == ptrs and [p.stride() for p in ps_o] == strides
    assert torch.equal(base_o[:, 1::2], left), "elements between the slice's were written"
    assert torch.equal(base_o[:, ::2], ps_o[2].detach()), "the slice was not updated in place"
    assert flat_o[0] == flat_t[0]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-5) if dtype == F32 else \
        dict(rtol=1e-2, atol=1e-2)
    for i, (p, q) in enumerate(zip(ps_o, ps_t)):
        torch.testing.assert_close(p.detach(), q.detach(), **tol, msg=lambda m: f"param {i}: {m}")
        torch.testing.assert_close(opt_o.state[p]["momentum_buffer"], opt_t.state[q]["momentum_buffer"], **tol,
                                   msg=lambda m: f"buffer {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
def test_many_tensors(dtype, device):
    """150 small tensors (several CUDA launches of 64), some large ones, some at odd addresses."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    shapes = [(int(torch.randint(1, 300, (), generator=g)),) for _ in range(150)] + [(40000,), (3, 16385)]
    masters, grads = _masters(shapes, 5)
    dtypes = [dtype] * len(shapes)
    _compare(*_three(masters, grads, dtypes, device, lr=0.05, momentum=0.9, nesterov=True), dtypes)


# ---- the op itself -------------------------------------------------------------------------

class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
def test_one_kernel_call_per_device_and_dtype(device):
    """A step is one sgd_step call per (device, dtype, first step) of a group, and nothing but
    buffer allocation besides: no per-param arithmetic in Python."""
    dtypes = [F32, F64, F32, F16, F64, F32, F16]
    ps = [torch.randn(5, 3, device=device, dtype=dt, requires_grad=True) for dt in dtypes]
    opt = SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1)
    for step in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        with RecordOps() as rec:
            opt.step()
        names = [str(f) for f in rec.calls]
        assert names.count("torchmodules.sgd_step.default") == 3, names
        others = {n for n in names if n != "torchmodules.sgd_step.default"}
        others = {n for n in others if not n.startswith("profiler.")}  # torch's step hooks
        assert others <= ({"aten.empty_like.default"} if step == 0 else set()), others


def _op_args(device, momentum, first, dtype=F32, nesterov=False, maximize=False, weight_decay=0.0):
    shapes = [(3,), (4, 5), (0,), (129,), ()]
    ps = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    gs = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    bs = [torch.randn(s, device=device, dtype=dtype) for s in shapes] if momentum else []
    return (ps, gs, bs, 0.1, momentum, 0.25 if momentum and not nesterov else 0.0, weight_decay, nesterov, maximize,
            first)


OP_CONFIGS = {
    "plain": dict(momentum=0.0, first=False),
    "plain_maximize_wd": dict(momentum=0.0, first=False, maximize=True, weight_decay=0.1),
    "first_step": dict(momentum=0.9, first=True),
    "momentum": dict(momentum=0.9, first=False, weight_decay=0.1),
    "nesterov": dict(momentum=0.9, first=False, nesterov=True, maximize=True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", list(OP_CONFIGS))
def test_opcheck_sgd_step(config, device):
    torch.library.opcheck(sgd_step, _op_args(device, **OP_CONFIGS[config]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", list(OP_CONFIGS))
def test_sgd_step_op(config, dtype, device):
    """The op on its own against the formula in float64; the first step never reads the
    buffers (NaN there) and grads are left as they were."""
    c = OP_CONFIGS[config]
    ps, gs, bs, lr, m, d, wd, nest, maxi, first = _op_args(device, dtype=dtype, **c)
    if first:
        for b in bs:
            b.fill_(float("nan"))
    p64, g64, b64 = ([t.to('cpu', F64, copy=True) for t in ts] for ts in (ps, gs, bs))
    g_before = [g.clone() for g in gs]
    sgd_step(ps, gs, bs, lr, m, d, wd, nest, maxi, first)
    for i in range(len(ps)):
        g = (-g64[i] if maxi else g64[i]) + wd * p64[i]
        if m:
            b = g if first else m * b64[i] + (1 - d) * g
            g = g + m * b if nest else b
            assert_close(f"buffer {i}", bs[i], b, b.to(dtype), dtype)
        assert_close(f"param {i}", ps[i], p64[i] - lr * g, (p64[i] - lr * g).to(dtype), dtype)
        assert torch.equal(gs[i], g_before[i])


def _err(device="cpu"):
    return [torch.randn(3, device=device)], [torch.randn(3, device=device)], [torch.randn(3, device=device)]


BAD_OP = [
    ("grads_length", lambda: sgd_step([torch.zeros(3)], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False),
     RuntimeError, ["sgd_step", "1 params", "0 grads"]),
    ("buffers_missing", lambda: sgd_step([torch.zeros(3)], [torch.zeros(3)], [], 0.1, 0.9, 0.0, 0.0, False, False,
                                         False), RuntimeError, ["sgd_step", "momentum_buffers", "0.9"]),
    ("buffers_without_momentum", lambda: sgd_step(*_err(), 0.1, 0.0, 0.0, 0.0, False, False, False),
     RuntimeError, ["sgd_step", "momentum_buffers", "needs none"]),
    ("grad_shape", lambda: sgd_step([torch.zeros(3)], [torch.zeros(4)], [], 0.1, 0.0, 0.0, 0.0, False, False, False),
     RuntimeError, ["sgd_step", "grads[0]", "[4]", "[3]"]),
    ("buffer_shape", lambda: sgd_step([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(2, 3)], 0.1, 0.9, 0.0, 0.0,
                                      False, False, False), RuntimeError, ["sgd_step", "momentum_buffers[0]", "[2, 3]"]),
    ("grad_dtype", lambda: sgd_step([torch.zeros(3)], [torch.zeros(3, dtype=F64)], [], 0.1, 0.0, 0.0, 0.0, False,
                                    False, False), RuntimeError, ["sgd_step", "grads[0]", "Float", "Double"]),
    ("mixed_param_dtypes", lambda: sgd_step([torch.zeros(3), torch.zeros(2, dtype=F64)],
                                            [torch.zeros(3), torch.zeros(2, dtype=F64)], [], 0.1, 0.0, 0.0, 0.0,
                                            False, False, False), RuntimeError, ["sgd_step", "params[1]", "Double"]),
    ("int_param", lambda: sgd_step([torch.zeros(3, dtype=torch.int64)], [torch.zeros(3, dtype=torch.int64)], [],
                                   0.1, 0.0, 0.0, 0.0, False, False, False),
     NotImplementedError, ["sgd_step", "params[0]", "Long"]),
    ("overlapping_param", lambda: sgd_step([torch.zeros(1).expand(4)], [torch.zeros(4)], [], 0.1, 0.0, 0.0, 0.0,
                                           False, False, False), RuntimeError, ["sgd_step", "params[0]", "sharing"]),
    ("sparse_grad", lambda: sgd_step([torch.zeros(3)], [torch.zeros(3).to_sparse()], [], 0.1, 0.0, 0.0, 0.0, False,
                                     False, False), RuntimeError, ["sgd_step", "sparse", "grads[0]"]),
]
if torch.cuda.is_available():
    BAD_OP += [
        ("grad_device", lambda: sgd_step([torch.zeros(3, device="cuda")], [torch.zeros(3)], [], 0.1, 0.0, 0.0, 0.0,
                                         False, False, False), RuntimeError, ["sgd_step", "grads[0]", "cuda", "cpu"]),
        ("mixed_param_devices", lambda: sgd_step([torch.zeros(3), torch.zeros(3, device="cuda")],
                                                 [torch.zeros(3), torch.zeros(3, device="cuda")], [], 0.1, 0.0, 0.0,
                                                 0.0, False, False, False), RuntimeError,
         ["sgd_step", "params[1]", "cuda"]),
    ]


@pytest.mark.parametrize("fn,exc,words", [pytest.param(f, e, w, id=i) for i, f, e, w in BAD_OP])
def test_sgd_step_bad_input(fn, exc, words):
    """The type of torch's op checks: a RuntimeError (a NotImplementedError for a dtype we lack)."""
    with pytest.raises(exc) as info:
        fn()
    assert type(info.value) is exc
    for w in words:
        assert w in str(info.value), f"{w!r} not in: {info.value}"


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="no torch.distributed / gloo")
def test_dtensor_params():
    """DTensor params (FSDP2's; a one-process mesh here, test_distributed trains 2 ranks): each
    rank's local shards are stepped as torch.optim.SGD steps the DTensors; a grad laid out
    otherwise (Replicate against Shard) is redistributed; a momentum buffer laid out otherwise
    raises, naming both layouts."""
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        w0, g = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
        trained = []
        for opt_cls in (SGD, torch.optim.SGD):
            p = torch.nn.Parameter(distribute_tensor(w0.clone(), mesh, [Shard(0)]))
            opt = opt_cls([p], lr=0.1, momentum=0.9, weight_decay=0.01)
            for _ in range(3):
                p.grad = distribute_tensor(g, mesh, [Replicate()])
                opt.step()
            trained.append((p.full_tensor(), opt.state[p]["momentum_buffer"]))
        (ours, ours_buf), (ref, ref_buf) = trained
        assert isinstance(ours_buf, type(ref_buf)) and ours_buf.placements == p.placements
        if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 14):  # (2.11's laid it out as the grad)
            assert ref_buf.placements == ours_buf.placements
        torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(ours_buf.full_tensor(), ref_buf.full_tensor(), rtol=1e-14, atol=1e-15)
        p = torch.nn.Parameter(distribute_tensor(w0.clone(), mesh, [Shard(0)]))
        p.grad = distribute_tensor(g, mesh, [Shard(0)])
        opt = SGD([p], lr=0.1, momentum=0.9)
        opt.state[p]["momentum_buffer"] = distribute_tensor(g, mesh, [Replicate()])
        with pytest.raises(RuntimeError, match=r"momentum buffer laid out as \(Replicate\(\),\).*its param as \(Shard"):
            opt.step()
    finally:
        dist.destroy_process_group()
