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


def _mse_loss(n, dtype, device):
    """mean (x - t)^2 over n elements, both differentiable: x, t -> y;  (g, x, t) -> dx, dt."""
    e = torch.tensor([], dtype=dtype).element_size()
    return Case(f"{n}", n, [_leaf((n,), dtype, device), _leaf((n,), dtype, device)],
                TF.mse_loss, torch.nn.functional.mse_loss, _passes(2 * n * e, 4 * n * e))


def _nll_loss(n, dtype, device, classes=1024):
    """mean -x[i, t_i] over (n // C, C) log-probabilities: the forward reads one x and one int64
    target per row; the backward writes all of dx (reading the targets)."""
    rows = max(n // classes, 1)
    e = torch.tensor([], dtype=dtype).element_size()
    t = torch.randint(0, classes, (rows,), device=device)
    return Case(f"{rows}x{classes}", rows * classes, [_leaf((rows, classes), dtype, device)],
                lambda a: TF.nll_loss(a, t), lambda a: torch.nn.functional.nll_loss(a, t),
                _passes(rows * (e + 8), rows * classes * e + rows * 8))


# op name -> setup(size, dtype, device) -> Case
SETUPS = {
    "relu": _elementwise(1, 1, 1, TF.relu, torch.relu),
    "add": _elementwise(2, 1, 0, TF.add, torch.add),
    "maximum": _elementwise(2, 1, 2, TF.maximum, torch.maximum),
    "duplicate": _elementwise(1, 2, 0, lambda a: TF.duplicate(a, 2), lambda a: (a.clone(), a.clone())),
    "log_softmax": _rowwise("log_softmax"),
    "amax": _rowwise("amax"),
    "linear": _linear,
    "mse_loss": _mse_loss,
    "nll_loss": _nll_loss,
}


def sizes(op: str, device: str, quick: bool) -> Sequence:
    """Problem sizes per op: element counts, (total, row length) or (M, K, N)."""
    gpu = device != "cpu"
    if op == "linear":
        if gpu:
            return [(2048, 2048, 2048), (4096, 4096, 4096)] if quick else \
                   [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192)]
        return [(256, 256, 256), (512, 512, 512)] if quick else [(256,) * 3, (512,) * 3, (1024,) * 3]
    if op in ("log_softmax", "amax"):
        total = (2 ** 26 if gpu else 2 ** 22) if quick else (2 ** 28 if gpu else 2 ** 24)
        return [(total // L * L, L) for L in (10, 1024, 32768, 131072)]  # fixed total, varied rows
    if gpu:
        return [2 ** 16, 2 ** 22, 2 ** 26] if quick else [2 ** p for p in range(16, 29, 2)]
    return [2 ** 16, 2 ** 20, 2 ** 22] if quick else [2 ** p for p in range(12, 25, 2)]
