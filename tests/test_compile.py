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


# ---- dynamic shapes, and CUDA graphs with a loss at the end --------------------------------------

from functorch.compile import make_boxed_func  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402


class NetWithLoss(nn.Module):
    """Net, then one of our losses of its output and the targets."""

    def __init__(self, loss):
        super().__init__()
        self.net, self.loss = Net(), loss

    def forward(self, x, target):
        return self.loss(self.net(x), target)


def _loss_step(model, x, t):
    """One forward and backward; the loss and the gradients (copies: a CUDA graph replay
    writes its outputs in place)."""
    model.zero_grad()
    loss = model(x, t)
    loss.backward()
    return loss.detach().clone(), [p.grad.clone() for p in model.parameters()]


def _counting_aot_eager(counts):
    """aot_eager that counts how many forward and backward graphs AOTAutograd compiles."""
    def compiler(kind):
        def compile_graph(gm, example_inputs):
            counts[kind] += 1
            return make_boxed_func(gm.forward)
        return compile_graph
    return aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))


def _symbolic_batch(gm):
    """Whether the dynamo graph takes the input x with a symbolic batch size."""
    for node in gm.graph.nodes:
        val = node.meta.get("example_value")
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.dim() == 2:
            if isinstance(val.shape[0], torch.SymInt) and val.shape[1] == 6:
                return True
    return False


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend,loss", [("aot_eager", "nll"), ("aot_eager", "cross_entropy"),
                                          ("inductor", "nll")])
def test_dynamic_shapes_compile_once(backend, loss, device):
    """dynamic=True: batch sizes that change from call to call run one graph (forward and
    backward), compiled once with a symbolic batch size, and give the eager results."""
    torch.manual_seed(3)
    torch._dynamo.reset()
    counters.clear()
    model = NetWithLoss(tm.NLLLoss() if loss == "nll" else tm.CrossEntropyLoss()).to(device)
    aot_counts = {"forward": 0, "backward": 0}
    counter = CompileCounterWithBackend(_counting_aot_eager(aot_counts) if backend == "aot_eager" else backend)
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompilation raises
        for n in (3, 8, 17, 64, 3):
            x = torch.randn(n, 6, device=device)
            t = torch.randint(0, 3, (n,), device=device)
            l_eager, g_eager = _loss_step(model, x, t)
            l_comp, g_comp = _loss_step(compiled, x, t)
            torch.testing.assert_close(l_comp, l_eager, rtol=1e-5, atol=1e-6, msg=f"batch {n}")
            for a, b in zip(g_comp, g_eager):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"batch {n}")
    # One graph. (With a cross entropy, the backend may be called twice for it: under
    # dynamic=True dynamo first traces the float label_smoothing as a symbolic input, then, as
    # it reaches an op's float argument, specializes it and restarts the analysis once, as for
    # torch.nn.CrossEntropyLoss; a restart, not a recompilation.)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert counter.frame_count <= (1 if loss == "nll" else 2), counter.frame_count
    assert _symbolic_batch(counter.graphs[-1]), counter.graphs[-1].graph
    assert counters["aot_autograd"]["ok"] == 1, dict(counters["aot_autograd"])
    if backend == "aot_eager":
        assert aot_counts == {"forward": 1, "backward": 1}, aot_counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("loss", ["nll", "cross_entropy"])
def test_cuda_graph_replay_with_loss_matches_eager(loss):
    """mode="reduce-overhead" on a model ending in our NLLLoss or CrossEntropyLoss: forward
    and backward run as CUDA graphs (none skipped), and the replays give the eager loss and
    gradients. The loss forward's bad-target check (a device->host copy and sync) is skipped
    while the graph is captured; on a replay, an out-of-range target then makes the loss NaN
    (csrc/cross_entropy.cpp, kernels/nll_loss.cu) where eager raises an IndexError."""
    torch.manual_seed(4)
    torch._dynamo.reset()
    counters.clear()
    model = NetWithLoss(tm.NLLLoss() if loss == "nll" else tm.CrossEntropyLoss()).cuda()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for step in range(5):  # warm-up, record, then replays
        x = torch.randn(33, 6, device="cuda")
        t = torch.randint(0, 3, (33,), device="cuda")
        l_eager, g_eager = _loss_step(model, x, t)
        l_graph, g_graph = _loss_step(compiled, x, t)
        torch.testing.assert_close(l_graph, l_eager, rtol=1e-5, atol=1e-6, msg=f"step {step}")
        for a, b in zip(g_graph, g_eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    assert counters["inductor"]["cudagraph_skips"] == 0, "the compiled graphs did not run as CUDA graphs"
    # an out-of-range class index: eager raises; a replay cannot, its loss is NaN
    t[5] = 3
    with pytest.raises(IndexError, match="out of bounds"):
        model(x, t)
    l_graph, _ = _loss_step(compiled, x, t)
    assert l_graph.isnan().item(), l_graph


# ---- compiled autograd: an eager forward, its backward compiled as one graph -----------------------

from torch._dynamo import compiled_autograd  # noqa: E402


def _compiled_autograd_grads(step, params):
    """Runs step() (a forward and loss.backward()) under compiled autograd with fullgraph, so a
    backward node that dynamo cannot trace raises; returns the gradients of params and the names
    of the ops in the compiled backward graph."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    def compiler(gm):
        return torch.compile(gm, backend=aot_autograd(fw_compiler=record), fullgraph=True)

    for p in params:
        p.grad = None
    with compiled_autograd._enable(compiler):
        step()
    ops = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    return [p.grad.clone() for p in params], ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", ["nll", "cross_entropy", "mse"])
def test_compiled_autograd(loss, device):
    """Our Functions' backwards are traced into compiled autograd's graph (is_traceable, and no
    output marked non-differentiable: torch's C++ Function asserts under compiled autograd that
    none is), so the graph calls our backward kernels; the gradients equal eager autograd's."""
    torch.manual_seed(5)
    torch._dynamo.reset()
    crit = {"nll": tm.NLLLoss(), "cross_entropy": tm.CrossEntropyLoss(), "mse": tm.MSELoss()}[loss]
    model = NetWithLoss(crit).to(device)
    x = torch.randn(7, 6, device=device)
    t = torch.randn(7, 3, device=device) if loss == "mse" else torch.randint(0, 3, (7,), device=device)
    _, g_eager = _loss_step(model, x, t)
    g_comp, ops = _compiled_autograd_grads(lambda: model(x, t).backward(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    loss_op = {"nll": "nll_loss_backward", "cross_entropy": "cross_entropy_backward", "mse": "mse_loss_backward"}[loss]
    for op in ("linear_backward_input", "linear_backward_weight", "relu_backward", "duplicate_backward",
               "maximum_backward_both", "add_backward", "amax_backward", "log_softmax_backward", loss_op):
        assert f"torchmodules.{op}.default" in ops, (op, sorted(ops))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_autograd_linear_relu_nearest_neighbor(device):
    """The other ops with outputs that carry no gradient (LinearReLU's mask, NearestNeighbor's
    index) under compiled autograd: their side outputs are plain tensors, the gradients equal eager."""
    torch.manual_seed(6)
    torch._dynamo.reset()
    lr, nn_ = tm.LinearReLU(6, 5).to(device), tm.NearestNeighbor(4, 5).to(device)
    x = torch.randn(9, 6, device=device)
    params = [*lr.parameters(), *nn_.parameters()]

    def step():
        index, sqdist = nn_(lr(x))
        assert not index.requires_grad and index.grad_fn is None
        sqdist.sum().backward()

    g_comp, ops = _compiled_autograd_grads(step, params)
    for p in params:
        p.grad = None
    step()
    for a, p in zip(g_comp, params):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)
    for op in ("nearest_neighbor_backward_input", "nearest_neighbor_backward_weight", "relu_backward"):
        assert f"torchmodules.{op}.default" in ops, (op, sorted(ops))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("loss", ["nll", "cross_entropy"])
def test_cuda_graph_capture_of_a_training_step(loss):
    """A whole training step (forward, our loss, backward, our SGD with momentum) captured by hand
    in a torch.cuda.CUDAGraph, as PyTorch's CUDA graphs notes do it, and replayed on new batches
    copied into its static inputs: the parameters after each replay equal an eager twin's, trained on
    the same batches (our kernels launch on the capturing stream and allocate from its pool; the
    loss skips its bad-target check while captured)."""
    torch.manual_seed(11)
    make_loss = tm.NLLLoss if loss == "nll" else tm.CrossEntropyLoss
    model, twin = NetWithLoss(make_loss()).cuda(), NetWithLoss(make_loss()).cuda()
    twin.load_state_dict(model.state_dict())
    opt = tm.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    twin_opt = tm.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    static_x, static_t = torch.randn(33, 6, device="cuda"), torch.randint(0, 3, (33,), device="cuda")

    def step(m, o, x, t):
        o.zero_grad(set_to_none=True)
        out = m(x, t)
        out.backward()
        o.step()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and the momentum buffers) outside the capture
        for _ in range(3):
            step(model, opt, static_x, static_t)
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(3):
        step(twin, twin_opt, static_x, static_t)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = model(static_x, static_t)
        static_loss.backward()
        opt.step()
    for k in range(4):
        x, t = torch.randn(33, 6, device="cuda"), torch.randint(0, 3, (33,), device="cuda")
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        ref = step(twin, twin_opt, x, t)
        torch.testing.assert_close(static_loss, ref.detach(), rtol=1e-5, atol=1e-6, msg=f"replay {k}")
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"replay {k}")
