"""AMP: under torch.autocast our modules and functionals run in the dtype their torch twins run
in (torch's cast policy per op and device, csrc/autocast.cpp), with torch's values and gradients
(within the autocast dtype's rounding); float32 parameters get float32 gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchmodules as tm
import torchmodules.functional as TF

_no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
# (device, autocast dtype): CPU autocast's default is bfloat16 (float16 allowed); CUDA's float16.
AMP = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
       pytest.param("cpu", torch.float16, id="cpu-fp16"),
       pytest.param("cuda", torch.float16, id="cuda-fp16", marks=_no_gpu),
       pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=_no_gpu)]
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative to the largest |value| compared


def assert_like(what, ours, ref, amp_dtype):
    """Same dtype as torch's result, values within the autocast dtype's rounding."""
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != torch's {ref.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    tol = TOL[amp_dtype]
    scale = max(ref.detach().abs().max().item(), 1.0) if ref.numel() else 1.0
    torch.testing.assert_close(ours.detach().double(), ref.detach().double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what}: {m}")


# ---- a model of our modules vs its torch.nn twin, step by step --------------------------------

def _twins(device, head):
    """Linear -> ReLU -> Linear (+ LogSoftmax for NLLLoss), ours and torch's, same weights."""
    ref = [nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 7)] + ([nn.LogSoftmax(dim=1)] if head == "nll" else [])
    ours = [tm.Linear(12, 32), tm.ReLU(), tm.Linear(32, 7)] + ([tm.LogSoftmax(dim=1)] if head == "nll" else [])
    for r, o in zip(ref, ours):
        o.load_state_dict(r.state_dict())
    return nn.Sequential(*ref).to(device), nn.Sequential(*ours).to(device)


def _loss_and_target(head, device, ours):
    n, c = 9, 7
    w = torch.rand(c, device=device) + 0.5
    if head == "nll":
        lib = tm if ours else nn
        return lib.NLLLoss(weight=w), torch.randint(0, c, (n,), device=device)
    if head == "mse":  # a float32 target against the autocast-dtype output: mixed dtypes, as in real use
        return (tm.MSELoss() if ours else nn.MSELoss()), torch.randn(n, c, device=device)
    lib = tm if ours else nn
    loss = lib.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    if head == "ce_probs":  # float32 probabilities
        return loss, torch.rand(n, c, device=device).softmax(1)
    return loss, torch.randint(0, c, (n,), device=device)


@pytest.mark.parametrize("head", ["nll", "ce", "ce_probs", "mse"])
@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_model_matches_torch_under_autocast(device, amp_dtype, head):
    ref, ours = _twins(device, head)
    ref_loss, target = _loss_and_target(head, device, ours=False)
    our_loss, _ = _loss_and_target(head, device, ours=True)
    our_loss.load_state_dict(ref_loss.state_dict())
    x = torch.randn(9, 12, device=device)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device, dtype=amp_dtype):
        hr, ho = xr, xo
        for i, (r, o) in enumerate(zip(ref, ours)):
            hr, ho = r(hr), o(ho)
            assert_like(f"step {i} ({type(o).__name__})", ho, hr, amp_dtype)
        lr, lo = ref_loss(hr, target), our_loss(ho, target)
        assert_like(type(our_loss).__name__, lo, lr, amp_dtype)
        assert lo.dtype == torch.float32
    lr.backward()
    lo.backward()
    assert_like("input grad", xo.grad, xr.grad, amp_dtype)
    for (name, pr), po in zip(ref.named_parameters(), ours.parameters()):
        assert po.grad.dtype == pr.grad.dtype == torch.float32, name
        assert_like(f"{name} grad", po.grad, pr.grad, amp_dtype)


@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_training_steps_under_autocast(device, amp_dtype):
    """A few SGD steps under autocast (GradScaler on CUDA float16) track torch's twin."""
    ref, ours = _twins(device, "ce")
    x, t = torch.randn(32, 12, device=device), torch.randint(0, 7, (32,), device=device)
    scale = device == "cuda" and amp_dtype == torch.float16
    for model, loss_fn in ((ref, nn.CrossEntropyLoss()), (ours, tm.CrossEntropyLoss())):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler(device, enabled=scale)
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast(device, dtype=amp_dtype):
                loss = loss_fn(model(x), t)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        assert all(p.dtype == torch.float32 for p in model.parameters())
    for (name, pr), po in zip(ref.named_parameters(), ours.parameters()):
        assert_like(name, po, pr, amp_dtype)


# ---- each functional under autocast vs torch's --------------------------------------------------

def _cases(dev, lp):
    """(name, ours, torch's, inputs): inputs are float32 unless named; lp is the autocast dtype."""
    def r(*s, dtype=torch.float32):
        return torch.randn(*s, device=dev, dtype=dtype)
    idx = torch.randint(0, 5, (6,), device=dev)
    w = torch.rand(5, device=dev) + 0.5
    probs = torch.rand(6, 5, device=dev).softmax(1)
    return [
        ("linear", TF.linear, F.linear, (r(6, 4), r(5, 4), r(5))),
        ("linear_3d_no_bias", TF.linear, F.linear, (r(2, 3, 4), r(5, 4))),
        ("linear_lp_input", TF.linear, F.linear, (r(6, 4, dtype=lp), r(5, 4), r(5))),
        ("linear_float64", TF.linear, F.linear, (r(6, 4, dtype=torch.float64), r(5, 4, dtype=torch.float64))),
        ("relu_fp32", TF.relu, F.relu, (r(6, 5),)),
        ("relu_lp", TF.relu, F.relu, (r(6, 5, dtype=lp),)),
        ("log_softmax_fp32", lambda x: TF.log_softmax(x, 1), lambda x: F.log_softmax(x, 1), (r(6, 5),)),
        ("log_softmax_lp", lambda x: TF.log_softmax(x, 1), lambda x: F.log_softmax(x, 1), (r(6, 5, dtype=lp),)),
        ("log_softmax_dtype_fp16", lambda x: TF.log_softmax(x, 1, dtype=torch.float16),
         lambda x: F.log_softmax(x, 1, dtype=torch.float16), (r(6, 5),)),
        ("log_softmax_dtype_fp64", lambda x: TF.log_softmax(x, 1, dtype=torch.float64),
         lambda x: F.log_softmax(x, 1, dtype=torch.float64), (r(6, 5, dtype=lp),)),
        ("nll_loss_lp", lambda x: TF.nll_loss(x, idx, w), lambda x: F.nll_loss(x, idx, w), (r(6, 5, dtype=lp),)),
        ("nll_loss_none", lambda x: TF.nll_loss(x, idx, reduction="none"),
         lambda x: F.nll_loss(x, idx, reduction="none"), (r(6, 5, dtype=lp),)),
        ("cross_entropy_lp", lambda x: TF.cross_entropy(x, idx, w, label_smoothing=0.2),
         lambda x: F.cross_entropy(x, idx, w, label_smoothing=0.2), (r(6, 5, dtype=lp),)),
        ("cross_entropy_probs_fp32", lambda x: TF.cross_entropy(x, probs, reduction="sum"),
         lambda x: F.cross_entropy(x, probs, reduction="sum"), (r(6, 5, dtype=lp),)),
        ("mse_loss_lp_vs_fp32", TF.mse_loss, F.mse_loss, (r(6, 5, dtype=lp), r(6, 5))),
        ("mse_loss_lp", lambda a, b: TF.mse_loss(a, b, reduction="none"),
         lambda a, b: F.mse_loss(a, b, reduction="none"), (r(6, 5, dtype=lp), r(6, 5, dtype=lp))),
        ("amax_lp", lambda x: TF.amax(x, 1), lambda x: torch.amax(x, 1), (r(6, 5, dtype=lp),)),
        ("duplicate_lp", lambda x: TF.duplicate(x, 2), lambda x: (x.clone(), x.clone()), (r(6, 5, dtype=lp),)),
        ("add_lp", TF.add, torch.add, (r(6, 5, dtype=lp), r(5, dtype=lp))),
        ("maximum_lp", TF.maximum, torch.maximum, (r(6, 5, dtype=lp), r(6, 5, dtype=lp))),
    ]


def _names():
    return [c[0] for c in _cases("cpu", torch.bfloat16)]


def _run(fn, inputs, device, amp_dtype):
    """Outputs of fn under autocast, and the gradients of its inputs (backward outside autocast)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.autocast(device, dtype=amp_dtype):
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=device).view_as(o)).sum() for o in outs)
    loss.backward()
    return outs, [t.grad for t in leaves]


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_functional_matches_torch_under_autocast(device, amp_dtype, name):
    _, ours, ref, inputs = next(c for c in _cases(device, amp_dtype) if c[0] == name)
    outs_o, grads_o = _run(ours, inputs, device, amp_dtype)
    outs_r, grads_r = _run(ref, inputs, device, amp_dtype)
    for i, (o, r) in enumerate(zip(outs_o, outs_r)):
        assert_like(f"{name} output {i}", o, r, amp_dtype)
    for i, (o, r) in enumerate(zip(grads_o, grads_r)):
        assert o.dtype == inputs[i].dtype  # a gradient comes back in its input's dtype
        assert_like(f"{name} grad {i}", o, r, amp_dtype)


@pytest.mark.parametrize("op", ["add", "maximum"])
@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_add_maximum_promote_mixed_dtypes_under_autocast_too(device, amp_dtype, op):
    """torch.add / torch.maximum promote an autocast-dtype tensor and a float32 one to float32
    (neither is an autocast op); ours too, with equal values and gradients in each input's dtype."""
    a = torch.randn(4, 3, device=device, dtype=amp_dtype).requires_grad_(True)
    b = torch.randn(4, 3, device=device).requires_grad_(True)
    for ctx in (torch.autocast(device, dtype=amp_dtype), torch.autocast(device, enabled=False)):
        with ctx:
            y, y_ref = getattr(TF, op)(a, b), getattr(torch, op)(a, b)
        assert y.dtype == y_ref.dtype == torch.float32
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        g = torch.randn_like(y)
        for o, r, x in zip(torch.autograd.grad(y, (a, b), g), torch.autograd.grad(y_ref, (a, b), g), (a, b)):
            assert o.dtype == r.dtype == x.dtype
            torch.testing.assert_close(o, r, rtol=0, atol=0)


@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_autocast_disabled_inside_runs_in_input_dtype(device, amp_dtype):
    """autocast(enabled=False) inside an autocast region turns our casts off, as torch's."""
    x, w = torch.randn(3, 4, device=device), torch.randn(5, 4, device=device)
    with torch.autocast(device, dtype=amp_dtype):
        assert TF.linear(x, w).dtype == amp_dtype
        with torch.autocast(device, enabled=False):
            assert TF.linear(x, w).dtype == torch.float32
            lp = x.to(amp_dtype)
            assert TF.mse_loss(lp, lp).dtype == F.mse_loss(lp, lp).dtype == amp_dtype


# ---- torch.compile of the model under autocast ------------------------------------------------

@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_compiled_model_under_autocast(device, amp_dtype, backend):
    torch._dynamo.reset()
    # Without inductor's graph caches: torch 2.11's key them without the autocast dtype (float16 after
    # bfloat16 in one process gave bfloat16 outputs, torch.nn's own modules too; fixed by 2.14).
    with torch._inductor.config.patch(fx_graph_cache=False):
        _compiled_model_under_autocast(device, amp_dtype, backend)


def _compiled_model_under_autocast(device, amp_dtype, backend):
    _, ours = _twins(device, "nll")
    loss_fn = tm.NLLLoss()
    x, t = torch.randn(9, 12, device=device), torch.randint(0, 7, (9,), device=device)

    def step(model):
        ours.zero_grad()
        with torch.autocast(device, dtype=amp_dtype):
            y = model(x)
            loss = loss_fn(y, t)
        loss.backward()
        return y, loss, [p.grad.clone() for p in ours.parameters()]

    y_e, l_e, g_e = step(ours)
    y_c, l_c, g_c = step(torch.compile(ours, backend=backend, fullgraph=True))
    assert y_c.dtype == y_e.dtype and l_c.dtype == l_e.dtype == torch.float32
    assert_like("output", y_c, y_e, amp_dtype)
    assert_like("loss", l_c, l_e, amp_dtype)
    for a, b in zip(g_c, g_e):
        assert a.dtype == torch.float32
        assert_like("grad", a, b, amp_dtype)


@pytest.mark.parametrize("device,amp_dtype", AMP)
def test_compiled_log_softmax_with_dtype_under_autocast(device, amp_dtype):
    """An explicit dtype wins over autocast (as torch's), compiled too (fullgraph)."""
    torch._dynamo.reset()
    x = torch.randn(4, 5, device=device)
    fn = torch.compile(lambda x: TF.log_softmax(x, 1, dtype=torch.float16), backend="aot_eager", fullgraph=True)
    with torch.autocast(device, dtype=amp_dtype):
        ours, ref = fn(x), F.log_softmax(x, 1, dtype=torch.float16)
    assert_like("log_softmax", ours, ref, amp_dtype)
