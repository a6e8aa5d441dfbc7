"""torch.export of networks of our modules: the exported graph is made of our ops
(torch.ops.torchmodules.*, no torch op in their place), it gives the eager outputs and
gradients, with a static or a dynamic batch dimension (torch.export.Dim), through
run_decompositions(), a save / load round trip and an AOTInductor package."""
import io
import operator
import shutil
import zipfile

import pytest
import torch
from torch import nn

import torchmodules as tm
from helpers import DEVICES

IN, HIDDEN, CLASSES = 6, 16, 3


class Net(nn.Module):
    """Linear, ReLU, a residual Duplicate + Add, a maxout Maximum, LogSoftmax."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = tm.Linear(IN, HIDDEN), tm.Linear(HIDDEN, HIDDEN), tm.Linear(HIDDEN, CLASSES)
        self.dup, self.relu, self.max, self.add = tm.Duplicate(2), tm.ReLU(), tm.Maximum(), tm.Add()
        self.lsm = tm.LogSoftmax(dim=1)

    def forward(self, x):
        a, b = self.dup(self.relu(self.l1(x)))
        h = self.add(self.max(self.l2(a), b), b)
        return self.lsm(self.l3(h))


NET_OPS = {"linear_forward", "relu_forward", "duplicate_forward", "maximum_forward", "add_forward",
           "log_softmax_forward"}


class WithLoss(nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.net, self.loss = Net(), loss

    def forward(self, x, target):
        return self.loss(self.net(x), target)


def _called_ops(ep):
    """The targets of the graph's call_function nodes: our ops by name; anything else as is."""
    out = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        t = node.target
        out.append(t._schema.name.split("::")[1] if str(t).startswith("torchmodules.") else t)
    return out


def _assert_only_our_ops(ep, expected):
    ops = _called_ops(ep)
    foreign = [t for t in ops if not isinstance(t, str)]
    assert not foreign, f"ops that are not ours in the exported graph: {foreign}\n{ep.graph}"
    assert set(ops) == expected, f"our ops in the graph: {sorted(set(ops))}, expected {sorted(expected)}"


def _outputs_and_grads(module, x):
    """module(x) and the gradients of x and of the parameters for a fixed output weighting."""
    x = x.detach().requires_grad_()
    for p in module.parameters():
        p.grad = None
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum().backward()
    return y.detach(), [x.grad] + [p.grad for p in module.parameters()]


def _assert_same(ours, ref, what):
    # the same kernels on the same inputs: the same bits
    torch.testing.assert_close(ours, ref, rtol=0, atol=0, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strict", [False, True])
def test_export_matches_eager(strict, device):
    model = Net().to(device)
    x = torch.randn(5, IN, device=device)
    ep = torch.export.export(model, (x,), strict=strict)
    _assert_only_our_ops(ep, NET_OPS)
    exported = ep.module()
    assert exported(x).shape == (5, CLASSES)
    y, grads = _outputs_and_grads(model, x)
    y_ep, grads_ep = _outputs_and_grads(exported, x)
    _assert_same(y_ep, y, "output")
    assert len(grads_ep) == len(grads)
    for i, (g_ep, g) in enumerate(zip(grads_ep, grads)):
        _assert_same(g_ep, g, f"gradient {i}")
    # and the eager model is right: the same network in torch ops, on the same weights
    w = dict(model.named_parameters())
    a = torch.relu(nn.functional.linear(x, w["l1.weight"], w["l1.bias"]))
    h = torch.maximum(nn.functional.linear(a, w["l2.weight"], w["l2.bias"]), a) + a
    ref = torch.log_softmax(nn.functional.linear(h, w["l3.weight"], w["l3.bias"]), dim=1)
    torch.testing.assert_close(y, ref.detach())


@pytest.mark.parametrize("strict", [False, True])
def test_export_dynamic_batch(strict):
    model = Net()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (torch.randn(5, IN),), dynamic_shapes={"x": {0: batch}}, strict=strict)
    _assert_only_our_ops(ep, NET_OPS)
    x_meta = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "x").meta["val"]
    assert isinstance(x_meta.shape[0], torch.SymInt) and x_meta.shape[1] == IN, x_meta.shape
    exported = ep.module()
    for n in (1, 2, 7, 33, 257):  # 1 too: nothing in our fakes specializes the batch size
        x = torch.randn(n, IN)
        y, grads = _outputs_and_grads(model, x)
        y_ep, grads_ep = _outputs_and_grads(exported, x)
        assert y_ep.shape == (n, CLASSES)
        _assert_same(y_ep, y, f"batch {n}: output")
        for i, (g_ep, g) in enumerate(zip(grads_ep, grads)):
            _assert_same(g_ep, g, f"batch {n}: gradient {i}")
    with pytest.raises(Exception, match=rf"x\.size\(\)\[1\] == {IN}"):  # the feature dim stays static: a guard
        exported(torch.randn(4, IN + 1))


@pytest.mark.parametrize("loss", [tm.NLLLoss(), tm.NLLLoss(reduction="none"), tm.CrossEntropyLoss(),
                                  tm.CrossEntropyLoss(label_smoothing=0.1, reduction="sum"), tm.MSELoss()],
                         ids=["nll", "nll-none", "ce", "ce-smooth-sum", "mse"])
def test_export_with_loss_dynamic_batch(loss):
    """A model ending in one of our losses, batch dynamic in both input and target."""
    model = WithLoss(loss)
    mse = isinstance(loss, tm.MSELoss)

    def target(n):
        return torch.randn(n, CLASSES) if mse else torch.randint(0, CLASSES, (n,))

    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (torch.randn(5, IN), target(5)),
                             dynamic_shapes={"x": {0: batch}, "target": {0: batch}})
    loss_op = {tm.NLLLoss: "nll_loss_forward", tm.CrossEntropyLoss: "cross_entropy_forward",
               tm.MSELoss: "mse_loss_forward"}[type(loss)]
    _assert_only_our_ops(ep, NET_OPS | {loss_op})
    exported = ep.module()
    for n in (2, 9):
        x, t = torch.randn(n, IN), target(n)
        _assert_same(exported(x, t), model(x, t), f"batch {n}")


def test_export_decompositions_and_save_load():
    """run_decompositions() (to core ATen) keeps our ops as they are; torch.export.save / load
    round-trips the program (our ops are found by name at load)."""
    model = Net()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (torch.randn(5, IN),), dynamic_shapes={"x": {0: batch}})
    decomposed = ep.run_decompositions()
    _assert_only_our_ops(decomposed, NET_OPS)
    buf = io.BytesIO()
    torch.export.save(decomposed, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    _assert_only_our_ops(loaded, NET_OPS)
    for n in (3, 11):
        x = torch.randn(n, IN)
        y = model(x).detach()
        _assert_same(decomposed.module()(x), y, f"decomposed, batch {n}")
        _assert_same(loaded.module()(x), y, f"loaded, batch {n}")


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="needs a C++ compiler")
def test_aoti_package(tmp_path):
    """AOTInductor: the exported program compiled to a shared library and packaged (.pt2),
    loaded back, gives the eager outputs for several batch sizes; its wrapper calls our ops
    (by name, through the dispatcher), so the kernels that run are ours."""
    model = Net().eval()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (torch.randn(5, IN),), dynamic_shapes={"x": {0: batch}})
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "net.pt2"))
    with zipfile.ZipFile(path) as z:
        called = {op for name in z.namelist() if name.endswith(".json")
                  for op in NET_OPS if f"torchmodules::{op}".encode() in z.read(name)}
    assert called == NET_OPS, called
    loaded = torch._inductor.aoti_load_package(path)
    for n in (3, 11):
        x = torch.randn(n, IN)
        with torch.no_grad():
            _assert_same(loaded(x), model(x), f"AOTInductor, batch {n}")
