"""The modules are drop-in torch.nn modules: same parameters, init, state_dict keys and
outputs as their torch twins, and a small network of them trains like its torch twin."""
import copy

import pytest
import torch
from torch import nn

import torchmodules as tm
from helpers import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_linear_same_seed_same_weights_and_state_dict(device):
    torch.manual_seed(3)
    ref = nn.Linear(7, 5, device=device)
    torch.manual_seed(3)
    ours = tm.Linear(7, 5, device=device)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    for k in ("weight", "bias"):
        assert torch.equal(ours.state_dict()[k], ref.state_dict()[k])
    ours2 = tm.Linear(7, 5, bias=False, device=device, dtype=torch.float64)
    assert ours2.bias is None and ours2.weight.dtype == torch.float64
    ours3 = tm.Linear(7, 5, device=device)
    ours3.load_state_dict(ref.state_dict())
    x = torch.randn(4, 7, device=device)
    torch.testing.assert_close(ours3(x), ref(x))


@pytest.mark.parametrize("cls,ref_cls,args", [
    (tm.ReLU, nn.ReLU, ()), (tm.LogSoftmax, nn.LogSoftmax, (1,)), (tm.LogSoftmax, nn.LogSoftmax, ()),
])
def test_unary_modules_match_torch(cls, ref_cls, args):
    x = torch.randn(6, 9, dtype=torch.float64)
    assert isinstance(cls(*args), ref_cls) and repr(cls(*args)) == repr(ref_cls(*args))
    if cls is tm.LogSoftmax and not args:  # dim=None: torch's legacy choice, with its warning
        with pytest.warns(UserWarning, match="Implicit dimension"):
            ours = cls()(x)
        with pytest.warns(UserWarning, match="Implicit dimension"):
            ref = ref_cls()(x)
    else:
        ours, ref = cls(*args)(x), ref_cls(*args)(x)
    torch.testing.assert_close(ours, ref)


def test_relu_inplace_matches_torch():
    x = torch.randn(5, 8, dtype=torch.float64)
    a, b = x.clone(), x.clone()
    out = tm.ReLU(inplace=True)(a)
    nn.ReLU(inplace=True)(b)
    assert out.data_ptr() == a.data_ptr() and torch.equal(a, b)


def test_binary_and_fanout_modules_match_torch():
    x, y = torch.randn(4, 1, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    torch.testing.assert_close(tm.Add()(x, y), x + y)
    torch.testing.assert_close(tm.Maximum()(x, y), torch.maximum(x, y))
    outs = tm.Duplicate(3)(x)
    assert len(outs) == 3 and all(torch.equal(o, x) for o in outs)


def _mlp(lin, act, lsm):
    return nn.Sequential(lin(10, 32), act(), lin(32, 32), act(), lin(32, 4), lsm(1))


@pytest.mark.parametrize("device", DEVICES)
def test_mlp_trains_like_its_torch_twin(device):
    """Ten SGD steps of an MLP of our modules and of its torch twin from the same weights:
    the losses and weights stay together (float64, so differences are rounding only)."""
    torch.manual_seed(0)
    ref = _mlp(nn.Linear, nn.ReLU, nn.LogSoftmax).double().to(device)
    ours = _mlp(tm.Linear, tm.ReLU, tm.LogSoftmax).double().to(device)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    x = torch.randn(64, 10, dtype=torch.float64, device=device)
    t = torch.randint(0, 4, (64,), device=device)
    opt_r, opt_o = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, ours))
    for _ in range(10):
        losses = []
        for m, opt in ((ref, opt_r), (ours, opt_o)):
            opt.zero_grad()
            loss = nn.functional.nll_loss(m(x), t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-10, losses
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("device", DEVICES)
def test_module_hooks_see_what_torch_modules_see(device):
    """Forward pre-hooks, forward hooks and full backward hooks on our modules get the inputs,
    outputs, grad_input and grad_output that the same hooks get on the torch twins (float64)."""
    torch.manual_seed(8)

    def net(L):
        return nn.Sequential(L.Linear(5, 7), L.ReLU(), L.Linear(7, 4), L.LogSoftmax(dim=1)).to(device).double()

    ours, ref = net(tm), net(nn)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 5, dtype=torch.float64, device=device)
    seen = {}
    for name, model in (("ours", ours), ("torch", ref)):
        log = seen[name] = []
        for layer in model:
            layer.register_forward_pre_hook(lambda m, inp, log=log: log.append(("pre", inp)))
            layer.register_forward_hook(lambda m, inp, out, log=log: log.append(("out", out)))
            layer.register_full_backward_hook(lambda m, gi, go, log=log: log.append(("grad", gi + go)))
        model(x.clone().requires_grad_()).sum().backward()
    assert [k for k, _ in seen["ours"]] == [k for k, _ in seen["torch"]]
    for (kind, a), (_, b) in zip(seen["ours"], seen["torch"]):
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        assert len(a) == len(b), kind
        for u, v in zip(a, b):
            assert (u is None) == (v is None), kind
            if u is not None:
                torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-13, msg=kind)
