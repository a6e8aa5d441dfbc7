"""One small setup per benchmarked op: its inputs, our call, the torch twin, and the work
each pass must do (bytes, or FLOPs for linear).

Byte counts are the minimal traffic a pass must read + write, the same number for ours and
torch, so GB/s compares like with like (N elements, e bytes each):
  forward   reads the inputs and writes the outputs;
  backward  reads grad_out plus the least state needed to route it (1 bit per element for relu's
            sign, 2 bits for maximum's winner/tie, x and y for amax, y for log_softmax) and writes
            one gradient per input;
  fwd+bwd   forward + backward.
A backward that hands grad_out straight through (add: both ours and torch alias it) needs no
traffic at all, so its GB/s is nominal and may pass the copy ceiling.
Forward is timed with inputs that require grad (a training forward: it saves what backward needs).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import torch

import torchmodules.functional as TF


@dataclass
class Case:
    shape: str                       # label of the problem size
    size: int                        # x-axis for the plot (elements, or M*N*K for linear)
    inputs: List[torch.Tensor]       # leaves that require grad
    ours: Callable                   # inputs -> output or tuple of outputs
    torch: Callable                  # same, with torch ops
    work: Dict[str, float] = field(default_factory=dict)  # pass -> bytes (or FLOPs if unit == "flop")
    unit: str = "byte"
    # Passes other than forward/backward/fwd+bwd: pass -> (ours, torch) callables of no argument.
    passes: Dict[str, tuple] = field(default_factory=dict)


def _leaf(shape, dtype, device, positive=False):
    t = torch.randn(shape, dtype=dtype, device=device)
    return (t.abs() if positive else t).requires_grad_()


def _passes(fwd, bwd):
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}


def _elementwise(n_in, n_out, state_bits, ours, twin):
    """Setup for a same-shape elementwise op with n_in inputs and n_out outputs of n elements."""
    def setup(n, dtype, device):
        e = torch.tensor([], dtype=dtype).element_size()
        fwd = (n_in + n_out) * n * e
        bwd = (n_out + n_in) * n * e + n * state_bits / 8  # read grads out (+state), write grads in
        return Case(f"{n}", n, [_leaf((n,), dtype, device) for _ in range(n_in)],
                    ours, twin, _passes(fwd, bwd))
    return setup


def _broadcast_add(kind):
    """x + b, b broadcast: "bias" adds b [1024] to x [n / 1024, 1024]; "channel" adds b [C, 1, 1]
    to x [N, C, 32, 32] (C = 64). The backward sums dy down to b's shape (dx is dy itself)."""
    def setup(n, dtype, device):
        e = torch.tensor([], dtype=dtype).element_size()
        shape, bshape = ((n // 1024, 1024), (1024,)) if kind == "bias" else ((n // 65536, 64, 32, 32), (64, 1, 1))
        x, b = _leaf(shape, dtype, device), _leaf(bshape, dtype, device)
        nb = b.numel()
        return Case(f"{'x'.join(map(str, shape))} + {'x'.join(map(str, bshape))}", n, [x, b], TF.add, torch.add,
                    _passes((2 * n + nb) * e, (n + nb) * e))
    return setup


def _rowwise(kind):
    """log_softmax / amax over the last dim of a (n // L, L) tensor; size = (n, L)."""
    def setup(size, dtype, device):
        n, L = size
        rows = n // L
        e = torch.tensor([], dtype=dtype).element_size()
        x = _leaf((rows, L), dtype, device)
        if kind == "log_softmax":
            fwd, bwd = 2 * n * e, 3 * n * e          # x -> y;  (g, y) -> gx
            ours, twin = (lambda a: TF.log_softmax(a, -1)), (lambda a: torch.log_softmax(a, -1))
        else:
            fwd = (n + rows) * e                      # x -> y (one per row)
            bwd = (2 * n + 2 * rows) * e              # (g, x, y) -> gx
            ours, twin = (lambda a: TF.amax(a, -1)), (lambda a: torch.amax(a, -1))
        return Case(f"{rows}x{L}", L, [x], ours, twin, _passes(fwd, bwd))
    return setup


def _linear(size, dtype, device):
    """y = x W^T + b with x (M, K), W (N, K); 2MNK FLOPs forward, 4MNK backward (dx and dW)."""
    m, k, n = size
    x, w, b = _leaf((m, k), dtype, device), _leaf((n, k), dtype, device), _leaf((n,), dtype, device)
    return Case(f"{m}x{k}x{n}", m * n * k, [x, w, b],
                TF.linear, torch.nn.functional.linear, _passes(2 * m * n * k, 4 * m * n * k), unit="flop")


def _linear_relu(twin):
    """y = relu(x W^T + b), ours fused (TF.linear_relu) against torch's relu(linear(x)) (twin
    "torch") or against our own unfused TF.relu(TF.linear(x)) (twin "unfused": then the "torch"
    columns are our unfused ops, and the speedup is what fusing gains). FLOPs as linear's."""
    def setup(size, dtype, device):
        m, k, n = size
        x, w, b = _leaf((m, k), dtype, device), _leaf((n, k), dtype, device), _leaf((n,), dtype, device)
        other = ((lambda a, c, d: torch.relu(torch.nn.functional.linear(a, c, d))) if twin == "torch"
                 else (lambda a, c, d: TF.relu(TF.linear(a, c, d))))
        return Case(f"{m}x{k}x{n}", m * n * k, [x, w, b], TF.linear_relu, other,
                    _passes(2 * m * n * k, 4 * m * n * k), unit="flop")
    return setup


def _loss(kind):
    """A loss of (N, C) logits (or predictions) against targets; size = (N, C)."""
    def setup(size, dtype, device):
        n, c = size
        e = torch.tensor([], dtype=dtype).element_size()
        x = _leaf((n, c), dtype, device)
        if kind == "mse_loss":
            t = torch.randn(n, c, dtype=dtype, device=device)
            ours, twin = (lambda a: TF.mse_loss(a, t)), (lambda a: torch.nn.functional.mse_loss(a, t))
            fwd, bwd = 2 * n * c * e, 3 * n * c * e          # (x, t) -> loss;  (x, t) -> dx
        elif kind == "cross_entropy_probs":  # soft targets: a probability row per sample
            t = torch.softmax(torch.randn(n, c, device=device), 1).to(dtype)
            ours, twin = (lambda a: TF.cross_entropy(a, t)), (lambda a: torch.nn.functional.cross_entropy(a, t))
            fwd, bwd = 2 * n * c * e, 3 * n * c * e          # (x, t) -> loss;  (x, t) -> dx
        else:
            t = torch.randint(0, c, (n,), device=device)
            fn = "cross_entropy" if kind == "cross_entropy" else "nll_loss"
            ours = lambda a: getattr(TF, fn)(a, t)  # noqa: E731
            twin = lambda a: getattr(torch.nn.functional, fn)(a, t)  # noqa: E731
            # cross_entropy reads the logits forward and backward and writes dlogits; nll_loss
            # reads one element per row forward and writes the whole (N, C) gradient backward.
            fwd = n * c * e if kind == "cross_entropy" else n * (e + 8)
            bwd = 2 * n * c * e if kind == "cross_entropy" else n * c * e
        return Case(f"{n}x{c}", c, [x], ours, twin, _passes(fwd, bwd))
    return setup


def _cross_entropy_nd(size, dtype, device):
    """cross_entropy of a segmentation's logits (N, C, H, W) against class indices (N, H, W), a row
    per pixel at stride H W. Bytes as cross_entropy's (plus the int64 targets read)."""
    n, c, h, w = size
    e = torch.tensor([], dtype=dtype).element_size()
    x = _leaf((n, c, h, w), dtype, device)
    t = torch.randint(0, c, (n, h, w), device=device)
    rows = n * h * w
    return Case(f"{n}x{c}x{h}x{w}", rows * c, [x], lambda a: TF.cross_entropy(a, t),
                lambda a: torch.nn.functional.cross_entropy(a, t),
                _passes(rows * (c * e + 8), rows * (2 * c * e + 8)))


def _cross_entropy_inplace(size, dtype, device):
    """cross_entropy(..., inplace_backward=True) against torch's F.cross_entropy, fwd+bwd only (a
    replayed backward would find the logits already overwritten); the logits' gradient is their
    own storage, so the extra peak memory is the per-row values alone. Bytes as cross_entropy's."""
    n, c = size
    e = torch.tensor([], dtype=dtype).element_size()
    t = torch.randint(0, c, (n,), device=device)
    xo, xt = _leaf((n, c), dtype, device), _leaf((n, c), dtype, device)
    ours = lambda: torch.autograd.grad(TF.cross_entropy(xo, t, inplace_backward=True), xo)  # noqa: E731
    twin = lambda: torch.autograd.grad(torch.nn.functional.cross_entropy(xt, t), xt)  # noqa: E731
    return Case(f"{n}x{c}", c, [], None, None, {"fwd+bwd": 3 * n * c * e}, passes={"fwd+bwd": (ours, twin)})


def _nearest_neighbor(size, dtype, device):
    """The squared distance to the nearest of K prototypes, x (N, D), w (K, D); ours sums
    (x - w_k)^2 directly in one tiled pass, torch's twin is cdist (its |x|^2 - 2 x.w + |w|^2 GEMM
    for sizes like these) squared, then min. Work counted as the direct sum's 3NKD FLOPs forward
    (subtract, multiply, add), 3ND backward (2 (x - w_k) to x and to the chosen prototype)."""
    n, k, d = size
    x, w = _leaf((n, d), dtype, device), _leaf((k, d), dtype, device)
    return Case(f"{n}x{k}x{d}", n * k * d, [x, w], lambda a, b: TF.nearest_neighbor(a, b)[1],
                lambda a, b: (torch.cdist(a, b) ** 2).min(-1).values, _passes(3 * n * k * d, 3 * n * d),
                unit="flop")


def _sgd(n, dtype, device):
    """One momentum SGD step over n parameters in 16 tensors: reads p, g, buf, writes p, buf."""
    import torchmodules as tm
    e = torch.tensor([], dtype=dtype).element_size()
    sizes = [n // 16] * 16
    steps = {}
    for name, cls in (("ours", tm.optim.SGD), ("torch", torch.optim.SGD)):
        params = [torch.randn(k, dtype=dtype, device=device, requires_grad=True) for k in sizes]
        for q in params:
            q.grad = torch.randn_like(q)
        opt = cls(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
        opt.step()  # creates the momentum buffers
        steps[name] = opt.step
    return Case(f"{n}", n, [], None, None, {"step": 5 * n * e}, passes={"step": (steps["ours"], steps["torch"])})


def _train_step(batch, dtype, device):
    """One SGD step of the main job's digits network (examples/train.py) on a batch."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train.py")
    spec = importlib.util.spec_from_file_location("tm_train", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    x = torch.rand(batch, 64, dtype=dtype, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {}
    torch.manual_seed(0)
    twin = train.Net(train.TORCH, 64, 128, 10).to(device, dtype)
    for name, lib in (("ours", train.OURS), ("torch", train.TORCH)):
        model = train.Net(lib, 64, 128, 10).to(device, dtype)
        model.load_state_dict(twin.state_dict())
        opt, loss_fn = lib.SGD(model.parameters(), lr=0.01, momentum=0.9), lib.NLLLoss()

        def step(model=model, opt=opt, loss_fn=loss_fn):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        steps[name] = step
    return Case(f"batch {batch}", batch, [], None, None, passes={"train step": (steps["ours"], steps["torch"])})


# op name -> setup(size, dtype, device) -> Case
SETUPS = {
    "relu": _elementwise(1, 1, 1, TF.relu, torch.relu),
    "add": _elementwise(2, 1, 0, TF.add, torch.add),
    "add_bias": _broadcast_add("bias"),
    "add_channel": _broadcast_add("channel"),
    "maximum": _elementwise(2, 1, 2, TF.maximum, torch.maximum),
    "duplicate": _elementwise(1, 2, 0, lambda a: TF.duplicate(a, 2), lambda a: (a.clone(), a.clone())),
    "log_softmax": _rowwise("log_softmax"),
    "amax": _rowwise("amax"),
    "linear": _linear,
    "linear_relu": _linear_relu("torch"),
    "linear_relu_vs_unfused": _linear_relu("unfused"),
    "nll_loss": _loss("nll_loss"),
    "cross_entropy": _loss("cross_entropy"),
    "cross_entropy_inplace": _cross_entropy_inplace,
    "cross_entropy_probs": _loss("cross_entropy_probs"),
    "cross_entropy_nd": _cross_entropy_nd,
    "mse_loss": _loss("mse_loss"),
    "nearest_neighbor": _nearest_neighbor,
    "sgd": _sgd,
    "train_step": _train_step,
}


def sizes(op: str, device: str, quick: bool) -> Sequence:
    """Problem sizes per op: element counts, (total, row length) or (M, K, N)."""
    gpu = device != "cpu"
    if op == "linear":
        if gpu:
            return [(2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192)] if quick else \
                   [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192)]
        return [(256, 256, 256), (512, 512, 512)] if quick else [(256,) * 3, (512,) * 3, (1024,) * 3]
    if op.startswith("linear_relu"):  # square, and the MLP's skinny shapes (few K: the ReLU's share is larger)
        if gpu:
            return [(2048, 2048, 2048), (4096, 4096, 4096), (8192, 1024, 4096), (65536, 256, 256)]
        return [(256, 256, 256), (512, 512, 512), (4096, 64, 256), (1024, 784, 512), (64, 784, 512)]
    if op in ("nll_loss", "cross_entropy", "cross_entropy_inplace", "cross_entropy_probs", "mse_loss"):
        if gpu:
            return [(8192, 32768), (4096, 128256)] if op in ("cross_entropy", "cross_entropy_inplace") else \
                   [(8192, 32768)]
        return [(4096, 10), (1024, 1024), (128, 32768)]
    if op == "cross_entropy_nd":  # (N, C, H, W): Pascal VOC's 21 classes, ADE20K's 150
        return [(16, 21, 512, 512), (32, 150, 128, 128)] if gpu else [(8, 21, 128, 128), (16, 150, 64, 64)]
    if op == "nearest_neighbor":  # (N, K, D)
        return [(65536, 1024, 64)] + ([] if quick else [(16384, 4096, 256)]) if gpu else \
               [(1797, 100, 64), (4096, 256, 64)]
    if op == "sgd":
        return [2 ** 20, 2 ** 24] if gpu else [2 ** 16, 2 ** 20]
    if op == "train_step":
        return [32, 1024]
    if op in ("log_softmax", "amax"):
        total = (2 ** 26 if gpu else 2 ** 22) if quick else (2 ** 28 if gpu else 2 ** 24)
        # fixed total, varied rows; 8192: the middle lengths' kernel (CUDA: row kept in shared memory)
        return [(total // L * L, L) for L in (10, 1024, 8192, 32768, 131072)]
    if gpu:
        return [2 ** 16, 2 ** 22, 2 ** 26] if quick else [2 ** p for p in range(16, 29, 2)]
    return [2 ** 16, 2 ** 20, 2 ** 22] if quick else [2 ** p for p in range(12, 25, 2)]
