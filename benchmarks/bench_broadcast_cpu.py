"""Broadcast Add, Maximum, MSELoss and Add's sum-down backward on the CPU, ours against torch:
the shapes where an input is broadcast (a bias row, a per-channel [C, 1, 1], a column) and the
sums a broadcast's gradient needs. Ours and torch alternate call by call; median ms of each.

    PYTHONPATH=<checkout> python benchmarks/bench_broadcast_cpu.py [--threads 2] [--reps 30]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import torchmodules  # noqa: F401  (registers the ops)

ops = torch.ops.torchmodules


def cases(dt):
    x2, row, col = torch.randn(1024, 1024, dtype=dt), torch.randn(1024, dtype=dt), torch.randn(1024, 1, dtype=dt)
    x4, chan = torch.randn(32, 64, 32, 32, dtype=dt), torch.randn(64, 1, 1, dtype=dt)
    one = torch.ones((), dtype=dt)
    return {
        "add [1024,1024] + [1024]": (lambda: ops.add_forward(x2, row), lambda: torch.add(x2, row)),
        "add [32,64,32,32] + [64,1,1]": (lambda: ops.add_forward(x4, chan), lambda: torch.add(x4, chan)),
        "maximum [1024,1024], [1024]": (lambda: ops.maximum_forward(x2, row), lambda: torch.maximum(x2, row)),
        "maximum [1024,1024], [1024,1]": (lambda: ops.maximum_forward(x2, col), lambda: torch.maximum(x2, col)),
        "sum [1024,1024] to [1024,1]": (lambda: ops.add_backward(x2, [1024, 1]), lambda: x2.sum(1, keepdim=True)),
        "sum [32,64,32,32] to [64,1,1]": (lambda: ops.add_backward(x4, [64, 1, 1]),
                                          lambda: x4.sum((0, 2, 3), keepdim=True)),
        "sum [32,64,32,32] to [32,64,1,32]": (lambda: ops.add_backward(x4, [32, 64, 1, 32]),
                                              lambda: x4.sum(2, keepdim=True)),
        "sum [32,64,32,32] to [1]": (lambda: ops.add_backward(x4, [1]), lambda: x4.sum().reshape(1)),
        "mse mean [32,64,32,32], [64,1,1]": (lambda: ops.mse_loss_forward(x4, chan, 1),
                                             lambda: F.mse_loss(x4, chan.expand_as(x4))),
        "mse backward [32,64,32,32], [64,1,1]": (lambda: ops.mse_loss_backward(one, x4, chan, 1),
                                                 lambda: torch.ops.aten.mse_loss_backward(one, x4, chan.expand_as(x4), 1)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.reps}; ms")
    print("| case | dtype | ours | torch | torch / ours |\n|---|---|---:|---:|---:|")
    for dt in (torch.float32, torch.bfloat16):
        for name, (ours, twin) in cases(dt).items():
            ours(), twin()
            t = {"ours": [], "torch": []}
            for _ in range(a.reps):
                for k, f in (("ours", ours), ("torch", twin)):
                    t0 = time.perf_counter()
                    f()
                    t[k].append(time.perf_counter() - t0)
            mo, mt = (statistics.median(t[k]) * 1e3 for k in ("ours", "torch"))
            print(f"| {name} | {str(dt)[6:]} | {mo:.3f} | {mt:.3f} | {mt / mo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
