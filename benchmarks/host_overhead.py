"""Where the host time of a small op goes: ReLU's backward and Add's forward + backward at 65536
elements (launch-bound on a GPU: the H100 check 3 measured ReLU's backward at 33 us ours against
13 us torch's), ours against torch's, timed per call and profiled (torch.profiler, CPU side).
Usage: python benchmarks/host_overhead.py [--device cuda] [--n 65536]"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import torchmodules.functional as TF


def per_call_us(fn, device, reps=300):
    for _ in range(20):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=65536)
    a = ap.parse_args()
    x = torch.randn(a.n, device=a.device, requires_grad=True)
    b = torch.randn(a.n, device=a.device, requires_grad=True)
    g = torch.randn(a.n, device=a.device)
    cases = {}
    for name, relu, add in (("ours", TF.relu, TF.add), ("torch", torch.relu, torch.add)):
        y = relu(x)
        cases[f"relu backward, {name}"] = lambda y=y: torch.autograd.grad(y, x, g, retain_graph=True)
        cases[f"relu forward (grad), {name}"] = lambda relu=relu: relu(x)
        cases[f"add fwd+bwd, {name}"] = lambda add=add: torch.autograd.grad(add(x, b), (x, b), g)
    for k, fn in cases.items():
        print(f"{k:28s} {per_call_us(fn, a.device):8.1f} us per call (host + sync, {a.device})")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    for k in ("relu backward, ours", "relu backward, torch"):
        with profile(activities=acts) as prof:
            for _ in range(50):
                cases[k]()
        print(f"\n==== profile: {k} (50 calls; self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
