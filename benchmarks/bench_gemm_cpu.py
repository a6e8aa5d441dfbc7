"""Linear's three GEMMs on the CPU, ours against torch, interleaved in one process.

    python benchmarks/bench_gemm_cpu.py [--shapes big|skinny|all] [--dtype float32] [--reps N]

Per shape (M, K, N) of y[M,N] = x[M,K] W[N,K]^T + b and per product:
  forward  y  = x W^T + b     ours: linear_forward          torch: F.linear
  dX       dx = dy W          ours: linear_backward_input   torch: dy @ W   (what autograd runs)
  dW       dW = dy^T x        ours: linear_backward_weight  torch: dy.t() @ x
2MNK FLOPs each (--autograd: the whole backward through autograd, 4MNK). Ours and torch alternate in rounds (>= 0.3 ms of calls each); the median
and the best per-call time of each are kept, ratios are torch_time / ours_time. On a shared
machine the median carries the other processes' load; the best round is the closest to an
idle machine.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--root" in sys.argv:  # another checkout's build, e.g. the one before a change
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--root") + 1])
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torchmodules  # noqa: E402,F401

ops = torch.ops.torchmodules
F = torch.nn.functional

BIG = [(1024, 1024, 1024), (2048, 2048, 2048)]
# examples/train.py's MLP (64 -> 128 -> 128 -> 128 -> 128 -> 10) at batch 1..64: (M, K, N)
SKINNY = [(m, k, n) for m in (1, 8, 32, 64) for (k, n) in ((64, 128), (128, 128), (128, 10))]
MID = [(256, 256, 256), (512, 512, 512)]


def products(m, k, n, dtype, aten=False, autograd=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    dy = torch.randn(m, n, generator=g).to(dtype)
    if autograd:  # the backward as training runs it: dX, dW and db through each one's C++ autograd
        xs, ws, bs = (t.detach().requires_grad_(True) for t in (x, w, b))
        y_ours, y_torch = torchmodules.functional.linear(xs, ws, bs), F.linear(xs, ws, bs)
        return {"backward (dX+dW+db)": (
            lambda: torch.autograd.grad(y_ours, (xs, ws, bs), dy, retain_graph=True),
            lambda: torch.autograd.grad(y_torch, (xs, ws, bs), dy, retain_graph=True))}
    if aten:  # torch through torch.ops.aten: the same Python-to-dispatcher path as ours
        dyt = dy.t()
        return {
            "forward": (lambda: ops.linear_forward(x, w, b), lambda: torch.ops.aten.linear(x, w, b)),
            "dX": (lambda: ops.linear_backward_input(dy, w), lambda: torch.ops.aten.mm(dy, w)),
            "dW": (lambda: ops.linear_backward_weight(dy, x), lambda: torch.ops.aten.mm(dyt, x)),
        }
    return {
        "forward": (lambda: ops.linear_forward(x, w, b), lambda: F.linear(x, w, b)),
        "dX": (lambda: ops.linear_backward_input(dy, w), lambda: torch.mm(dy, w)),
        "dW": (lambda: ops.linear_backward_weight(dy, x), lambda: torch.mm(dy.t(), x)),
    }


def time_pair(fa, fb, budget_s, clock=time.perf_counter):
    """Median and best seconds per call of fa and fb, alternated in rounds of r calls each."""
    for _ in range(2):
        fa(), fb()
    t0 = time.perf_counter()
    fa()
    one = max(time.perf_counter() - t0, 1e-7)
    r = max(1, min(100, int(3e-4 / one)))  # calls per round: rounds of >= 0.3 ms
    ta, tb = [], []
    start = time.perf_counter()
    while len(ta) < 7 or (time.perf_counter() - start < budget_s and len(ta) < 400):
        for f, ts in ((fa, ta), (fb, tb)):
            t0 = clock()
            for _ in range(r):
                f()
            ts.append((clock() - t0) / r)
    return statistics.median(ta), statistics.median(tb), min(ta), min(tb)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="all", choices=["big", "skinny", "mid", "all"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per (shape, product)")
    p.add_argument("--only", default="", help="comma list of products")
    p.add_argument("--mkn", default="", help="explicit M,K,N shape")
    p.add_argument("--root", default=ROOT, help="checkout whose torchmodules to import")
    p.add_argument("--autograd", action="store_true",
                   help="time the backward (dX + dW + db) through autograd, ours (tm.functional.linear) "
                        "against torch's (F.linear): the path training takes, 4MNK FLOPs")
    p.add_argument("--aten", action="store_true",
                   help="call torch as torch.ops.aten.linear / mm (the call path of ours; F.linear and "
                        "torch.mm have lighter Python bindings, ~1-2 us less per call)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time by process CPU time (all threads, spin waits included), not wall clock: "
                        "less sensitive to other processes on a shared machine")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    shapes = {"big": BIG, "skinny": SKINNY, "mid": MID, "all": SKINNY + MID + BIG}[a.shapes]
    if a.mkn:
        shapes = [tuple(int(v) for v in a.mkn.split(","))]
    try:
        isa = torch.ops.torchmodules_cpu.gemm_isa()
    except (AttributeError, RuntimeError):
        isa = "?"
    print(f"torchmodules from {os.path.dirname(torchmodules.__file__)} (GEMM: {isa}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {a.dtype}, {'process CPU time' if a.cpu_time else 'wall clock'}, "
          f"torch called {'as torch.ops.aten' if a.aten else 'through autograd' if a.autograd else 'as F.linear / torch.mm'}")
    print("| M | K | N | product | ours GFLOP/s | torch GFLOP/s | ours/torch | best: ours | best: torch | best: ours/torch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (m, k, n) in shapes:
        for name, (fa, fb) in products(m, k, n, dtype, a.aten, a.autograd).items():
            if a.only and name not in a.only.split(","):
                continue
            ta, tb, ba, bb = time_pair(fa, fb, a.budget, time.process_time if a.cpu_time else time.perf_counter)
            fl = (4 if a.autograd else 2) * m * n * k
            print(f"| {m} | {k} | {n} | {name} | {fl / ta / 1e9:.1f} | {fl / tb / 1e9:.1f} | {tb / ta:.2f} "
                  f"| {fl / ba / 1e9:.1f} | {fl / bb / 1e9:.1f} | {bb / ba:.2f} |", flush=True)


if __name__ == "__main__":
    main()
