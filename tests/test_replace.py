"""replace_modules / restore_modules on real architectures from a package (torchvision): the
swapped model gives the original's outputs and gradients, runs our kernels, and swaps back."""
import copy

import pytest
import torch
from torch import nn

import torchmodules as tm
from helpers import DEVICES
from torchmodules.replace import SWAPS
from torchmodules.modules import Linear as TmLinear

torchvision = pytest.importorskip("torchvision")


def _ops_called(model, x):
    """The torchmodules ops a forward + backward of model on x dispatches."""
    from test_autograd import RecordOps
    with RecordOps() as rec:
        model(x).sum().backward()
    return {f._schema.name.split("::")[1] for f, _, _ in rec.calls}


def _compare(theirs, x, dtype, device, atol, rtol):
    theirs = theirs.to(device, dtype)
    ours = tm.replace_modules(copy.deepcopy(theirs))
    xs = [x.to(device, dtype).requires_grad_() for _ in range(2)]
    outs = [m(xi) for m, xi in zip((theirs, ours), xs)]
    g = torch.randn_like(outs[0])
    for o in outs:
        o.backward(g)
    torch.testing.assert_close(outs[1], outs[0], atol=atol, rtol=rtol)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=atol, rtol=rtol)
    for (n, p), q in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=atol, rtol=rtol, msg=lambda m: f"{n}: {m}")
    return ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float64, 1e-10, 1e-9), (torch.float32, 1e-4, 1e-4)],
                         ids=["float64", "float32"])
def test_torchvision_mlp(dtype, atol, rtol, device):
    torch.manual_seed(0)
    theirs = torchvision.ops.MLP(16, [32, 32, 10], activation_layer=nn.ReLU, dropout=0.0)
    ours = _compare(theirs, torch.randn(5, 16), dtype, device, atol, rtol)
    kinds = {type(m) for m in ours.modules()}
    assert nn.Linear not in kinds and nn.ReLU not in kinds and tm.Linear in kinds and tm.ReLU in kinds
    assert {"linear_forward", "relu_forward", "linear_backward_input"} <= _ops_called(ours, torch.randn(
        3, 16, device=device, dtype=dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_torchvision_resnet18(device):
    """Conv and BatchNorm stay torch's; the fc Linear and the in-place ReLUs become ours."""
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    ours = _compare(theirs, torch.randn(2, 3, 32, 32), torch.float64, device, 1e-9, 1e-8)
    assert type(ours.fc) is tm.Linear and type(ours.relu) is tm.ReLU and ours.relu.inplace


def test_swap_keeps_parameters_state_and_swaps_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 3), nn.LogSoftmax(dim=1))
    loss_fn = nn.ModuleList([nn.NLLLoss(), nn.CrossEntropyLoss(label_smoothing=0.1), nn.MSELoss()])
    params = list(model.parameters())
    keys = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = copy.deepcopy(model)
    tm.replace_modules(model)
    tm.replace_modules(loss_fn)
    assert all(p is q for p, q in zip(params, model.parameters()))  # the optimizer still holds them
    assert list(model.state_dict()) == keys
    assert [type(m) for m in model] == [tm.Linear, tm.ReLU, tm.Linear, tm.LogSoftmax]
    assert [type(m) for m in loss_fn] == [tm.NLLLoss, tm.CrossEntropyLoss, tm.MSELoss]
    assert loss_fn[1].label_smoothing == 0.1
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    loss = loss_fn[0](model(x), y)
    loss.backward()
    opt.step()
    ref_loss = nn.NLLLoss()(ref(x), y)
    torch.testing.assert_close(loss, ref_loss)
    tm.restore_modules(model)
    tm.restore_modules(loss_fn)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.LogSoftmax]
    assert [type(m) for m in loss_fn] == [nn.NLLLoss, nn.CrossEntropyLoss, nn.MSELoss]


def test_subclasses_are_left_alone():
    """nn.MultiheadAttention's out_proj is a subclass of nn.Linear that MHA reads directly."""
    mha = nn.MultiheadAttention(8, 2)
    before = type(mha.out_proj)
    tm.replace_modules(mha)
    assert type(mha.out_proj) is before and before is not TmLinear and before not in SWAPS
