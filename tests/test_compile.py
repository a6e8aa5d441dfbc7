"""torch.compile(fullgraph=True) compiles a network of our modules, forward and backward,
with no graph break, and gives the eager result."""
import pytest
import torch
from torch import nn

import torchmodules as tm
from helpers import DEVICES


class Net(nn.Module):
    """Every module: Linear, Duplicate, ReLU, Maximum, Add, LogSoftmax (and amax)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = tm.Linear(6, 16), tm.Linear(16, 16), tm.Linear(16, 3)
        self.dup, self.relu, self.max, self.add = tm.Duplicate(2), tm.ReLU(), tm.Maximum(), tm.Add()
        self.lsm = tm.LogSoftmax(dim=1)

    def forward(self, x):
        a, b = self.dup(self.relu(self.l1(x)))
        h = self.add(self.max(self.l2(a), b), tm.functional.amax(b, 1, keepdim=True))
        return self.lsm(self.l3(h))


def _loss_and_grads(model, x):
    model.zero_grad()
    y = model(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), device=x.device, dtype=y.dtype).view_as(y)).sum()
    loss.backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_network_matches_eager(backend, device):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = Net().to(device)
    x = torch.randn(9, 6, device=device)
    y_eager, g_eager = _loss_and_grads(model, x)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y_comp, g_comp = _loss_and_grads(compiled, x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_has_no_graph_break():
    torch._dynamo.reset()
    explain = torch._dynamo.explain(Net())(torch.randn(4, 6))
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_results_are_deterministic():
    """The same inputs give bitwise the same outputs and gradients, run after run."""
    torch.manual_seed(1)
    model = Net().cuda()
    x = torch.randn(257, 6, device="cuda")
    y0, g0 = _loss_and_grads(model, x)
    for _ in range(3):
        y, g = _loss_and_grads(model, x)
        assert torch.equal(y, y0) and all(torch.equal(a, b) for a, b in zip(g, g0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_replay_matches_eager():
    """mode="reduce-overhead" captures forward and backward in CUDA graphs; replays give
    the eager result (the kernels use the current stream and allocate nothing outside it)."""
    torch.manual_seed(2)
    torch._dynamo.reset()
    model = Net().cuda()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for step in range(4):  # warm-up, record, then replays
        x = torch.randn(33, 6, device="cuda")
        y_eager, g_eager = _loss_and_grads(model, x)
        y_graph, g_graph = _loss_and_grads(compiled, x)
        torch.testing.assert_close(y_graph, y_eager, rtol=1e-5, atol=1e-6, msg=f"step {step}")
        for a, b in zip(g_graph, g_eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}")
