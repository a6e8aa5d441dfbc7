"""NLLLoss and MSELoss beyond the op table: the modules are drop-in torch.nn losses (state_dict,
repr, a few training steps like their torch twins), torch's warnings and legacy arguments, the
inputs torch's own backward rejects, float32 sums over 10^7 elements, bitwise determinism
across thread counts, and torch.compile with no graph break."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torchmodules as tm
import torchmodules.functional as TF
from helpers import DEVICES

F = nn.functional


def test_nll_module_is_torch_twin_and_loads_its_state_dict():
    w = torch.rand(5, dtype=torch.float64) + 0.5
    ref = nn.NLLLoss(weight=w, ignore_index=2, reduction="sum")
    ours = tm.NLLLoss(weight=torch.ones(5, dtype=torch.float64), ignore_index=2, reduction="sum")
    assert isinstance(ours, nn.NLLLoss) and repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (7,))
    torch.testing.assert_close(ours(x, t), ref(x, t))
    assert list(tm.NLLLoss().state_dict()) == list(nn.NLLLoss().state_dict()) == []


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mse_module_is_torch_twin(reduction):
    ours, ref = tm.MSELoss(reduction=reduction), nn.MSELoss(reduction=reduction)
    assert isinstance(ours, nn.MSELoss) and repr(ours) == repr(ref) and ours.reduction == reduction
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x, y), ref(x, y))


@pytest.mark.parametrize("device", DEVICES)
def test_classifier_and_regressor_train_like_their_torch_twins(device):
    """Five SGD steps of Linear -> LogSoftmax -> NLLLoss (class weights, ignored targets) plus an
    MSELoss head, ours and torch's from the same weights (float64: rounding differences only)."""
    torch.manual_seed(0)

    def net(lin, lsm):
        return nn.ModuleDict({"body": lin(6, 16), "cls": lin(16, 4), "reg": lin(16, 2), "lsm": lsm(1)})

    ref = net(nn.Linear, nn.LogSoftmax).double().to(device)
    ours = net(tm.Linear, tm.LogSoftmax).double().to(device)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    w = torch.rand(4, dtype=torch.float64, device=device) + 0.5
    losses = {"ref": (nn.NLLLoss(weight=w, ignore_index=-1), nn.MSELoss()),
              "ours": (tm.NLLLoss(weight=w, ignore_index=-1), tm.MSELoss())}
    ours_nll = losses["ours"][0]
    ours_nll.load_state_dict(losses["ref"][0].state_dict())
    x = torch.randn(32, 6, dtype=torch.float64, device=device)
    t = torch.randint(-1, 4, (32,), device=device)   # some targets ignored
    y = torch.randn(32, 2, dtype=torch.float64, device=device)
    opt = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in (("ref", ref), ("ours", ours))}
    for _ in range(5):
        vals = []
        for k, m in (("ref", ref), ("ours", ours)):
            nll, mse = losses[k]
            opt[k].zero_grad()
            h = torch.relu(m["body"](x))
            loss = nll(m["lsm"](m["cls"](h)), t) + mse(m["reg"](h), y)
            loss.backward()
            opt[k].step()
            vals.append(loss.item())
        assert abs(vals[0] - vals[1]) < 1e-10, vals
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)


def test_mse_broadcast_warns_as_torch():
    x, y = torch.randn(3, 4), torch.randn(4)
    with pytest.warns(UserWarning, match="Using a target size") as ours:
        a = TF.mse_loss(x, y)
    with pytest.warns(UserWarning, match="Using a target size") as ref:
        b = F.mse_loss(x, y)
    assert str(ours[0].message) == str(ref[0].message)
    torch.testing.assert_close(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same shapes: no warning
        TF.mse_loss(x, x.clone())


@pytest.mark.parametrize("size_average,reduce", [(False, None), (None, False), (True, True)])
def test_legacy_reduction_arguments(size_average, reduce):
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.randint(0, 3, (5,))
    with pytest.warns(UserWarning):
        ours = (TF.mse_loss(x, y, size_average, reduce), TF.nll_loss(x, t, None, size_average, -100, reduce))
    with pytest.warns(UserWarning):
        ref = (F.mse_loss(x, y, size_average, reduce), F.nll_loss(x, t, None, size_average, -100, reduce))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_nll_unbatched_target_of_shape_1(device):
    """Input [C] with target [1]: torch's forward treats it as unbatched (its backward raises);
    ours gives the 0-d-target result, forward and backward."""
    x = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.tensor([4], device=device)
    for red in ("none", "mean", "sum"):
        y = TF.nll_loss(x, t, reduction=red)
        torch.testing.assert_close(y, F.nll_loss(x.detach(), t, reduction=red))
        (g,) = torch.autograd.grad(y, x)
        (g_ref,) = torch.autograd.grad(F.nll_loss(x, t[0], reduction=red), x)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_nll_channels_last_input(device):
    """A permuted [N, C, H, W] input (torch's backward rejects it: 'grad_input must be contiguous');
    the reference is torch on a contiguous copy."""
    base = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    x = base.to(memory_format=torch.channels_last).requires_grad_(True)
    t = torch.randint(0, 3, (2, 4, 5), device=device)
    for red in ("none", "mean"):
        y = TF.nll_loss(x, t, reduction=red)
        g_out = torch.randn_like(y)
        (g,) = torch.autograd.grad(y, x, g_out)
        xr = base.clone().requires_grad_(True)
        y_ref = F.nll_loss(xr, t, reduction=red)
        (g_ref,) = torch.autograd.grad(y_ref, xr, g_out)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_sums_over_1e7_elements_stay_accurate(device):
    """Blocked sums: a float32 mean over 10^7 elements within 1e-6 (relative) of the float64
    value, as close as torch's own (which sums pairwise too)."""
    n = 10_000_000
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(n, generator=gen) + 3).to(device)     # all terms of one sign: no cancellation to hide behind
    y = torch.randn(n, generator=gen).to(device)
    ref = F.mse_loss(x.double(), y.double())
    err = (TF.mse_loss(x, y).double() - ref).abs().item() / ref.item()
    assert err < 1e-6, err
    logp = -(torch.rand(n // 2, 2, generator=gen) + 0.5).to(device)
    t = torch.randint(0, 2, (n // 2,), generator=gen).to(device)
    ref = F.nll_loss(logp.double(), t)
    err = (TF.nll_loss(logp, t).double() - ref).abs().item() / ref.abs().item()
    assert err < 1e-6, err


def test_cpu_sums_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(1_000_003, generator=gen), torch.randn(1_000_003, generator=gen)
    logp = torch.randn(300_001, 3, generator=gen)
    t = torch.randint(0, 3, (300_001,), generator=gen)
    w = torch.rand(3, generator=gen)
    threads = torch.get_num_threads()
    try:
        outs = []
        for k in (1, max(2, threads)):
            torch.set_num_threads(k)
            outs.append((TF.mse_loss(x, y), TF.mse_loss(x, y, reduction="sum"), TF.nll_loss(logp, t, w)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cpu_nll_of_spatial_targets_matches_torch_at_any_thread_count(reduction):
    """NLLLoss of [N, C, d] log-probabilities with 60000 targets: the threads' ranges (and the sum's
    blocks) start inside a row of d = 20000, where the kernel's (n, d) cursor starts by a division."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 20000, generator=gen).log_softmax(1)
    t = torch.randint(0, 5, (3, 20000), generator=gen)
    t[torch.rand(t.shape, generator=gen) < 0.1] = -100
    w = torch.rand(5, generator=gen)
    threads = torch.get_num_threads()
    try:
        outs = []
        for k in (1, 2):
            torch.set_num_threads(k)
            outs.append(TF.nll_loss(x, t, w, reduction=reduction))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])
    want = F.nll_loss(x.double(), t, w.double(), reduction=reduction)
    torch.testing.assert_close(outs[0].double(), want, atol=1e-5, rtol=1e-5)  # float32 sums of 54000 terms


def test_compiled_losses_have_no_graph_break():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.lsm = tm.Linear(5, 4), tm.LogSoftmax(1)
            self.nll, self.mse = tm.NLLLoss(weight=torch.rand(4) + 0.5), tm.MSELoss(reduction="sum")

        def forward(self, x, t, y):
            h = self.lin(x)
            return self.nll(self.lsm(h), t) + self.mse(h, y)

    model = Net()
    args = (torch.randn(8, 5), torch.randint(0, 4, (8,)), torch.randn(8, 4))
    torch._dynamo.reset()
    explain = torch._dynamo.explain(model)(*args)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), model(*args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_sums_are_deterministic_and_match_cpu():
    """Fixed-order sums: bitwise the same run after run; close to the CPU result."""
    gen = torch.Generator().manual_seed(9)
    x, y = torch.randn(3_000_017, generator=gen), torch.randn(3_000_017, generator=gen)
    logp = torch.randn(1_000_003, 3, generator=gen)
    t = torch.randint(-1, 3, (1_000_003,), generator=gen)
    w = torch.rand(3, generator=gen)

    def run(dev):
        xs, ys = x.to(dev).requires_grad_(True), y.to(dev)
        lp = logp.to(dev).requires_grad_(True)
        outs = [TF.mse_loss(xs, ys), TF.mse_loss(xs, ys, reduction="sum"),
                TF.nll_loss(lp, t.to(dev), w.to(dev), ignore_index=-1)]
        grads = torch.autograd.grad(outs[0] + outs[2], (xs, lp))
        return [o.detach().cpu() for o in outs] + [g.cpu() for g in grads]

    first = run("cuda")
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(run("cuda"), first))
    for a, b in zip(first, run("cpu")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
