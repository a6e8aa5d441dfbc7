"""Where the time of a small op goes: ReLU, Add, Maximum and Duplicate at 65536 elements, ours
against torch's. The H100 check 3 timed ReLU's backward at 33 us ours against 13 us torch's with
triton's do_bench (L2 flushed before each call), at 65536 and at 4M elements alike, though the
kernel moves under a megabyte at 65536: a cost that is not the kernel's. Per call this prints
  host:   wall time per call in a loop, synchronised once at the end (the host's cost, or the
          GPU's where that is larger);
  gpu:    CUDA events around one call queued behind a 2 ms spin kernel, so the host has enqueued
          it all before the GPU starts: the GPU time of the call alone;
  bench:  triton.testing.do_bench as benchmarks/bench.py takes it (after an L2 flush);
  syncs:  whether the call makes the host wait for the GPU (torch.cuda.set_sync_debug_mode;
          a wait there lets the host's later work into the bench time);
then torch.profiler tables (CPU and CUDA) of ReLU's backward, ours and torch's.
bench well above gpu with no sync means the host could not keep ahead of the GPU.
The same for CrossEntropy's forward, backward and fwd+bwd at --ce (bfloat16, 8192 x 32768 by default):
check 3 timed ours at 0.395 + 0.439 ms for the forward and the backward but 1.071 ms for fwd+bwd (torch:
0.438 + 0.882 = 1.318), when the forward synchronised the stream after its loss to check the targets;
kernels/target_check.cuh since waits for a check kernel queued before the loss (never timed on a GPU
yet): fwd+bwd should now be close to forward + backward, and the profile shows what is left.
Usage: python benchmarks/host_overhead.py [--device cuda] [--n 65536] [--ce 8192x32768]"""
import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import torchmodules.functional as TF


def host_us(fn, device, reps=300):
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


def gpu_us(fn, reps=20):
    """Median GPU time of one call, each queued behind a spin kernel (the host far ahead)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # ~1-2 ms of clock cycles on the GPU
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def bench_us(fn):
    try:
        from triton.testing import do_bench
    except ImportError:
        return float("nan")
    return do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e3


def syncs(fn):
    """'no', or the first line of the error a synchronising call raises in sync debug mode."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "no"
    except RuntimeError as e:
        return "yes: " + str(e).splitlines()[0][:100]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--ce", default="8192x32768", help="CrossEntropy's rows x classes (bfloat16), '' for none")
    a = ap.parse_args()
    cuda = a.device == "cuda"
    x = torch.randn(a.n, device=a.device, requires_grad=True)
    b = torch.randn(a.n, device=a.device, requires_grad=True)
    g = torch.randn(a.n, device=a.device)
    impls = {"ours": (TF.relu, TF.add, TF.maximum, lambda t: TF.duplicate(t, 2)),
             "torch": (torch.relu, torch.add, torch.maximum, lambda t: (t.clone(), t.clone()))}
    cases = {}
    for name, (relu, add, maximum, dup) in impls.items():
        y, m, (d1, d2) = relu(x), maximum(x, b), dup(x)
        cases[f"relu backward, {name}"] = lambda y=y: torch.autograd.grad(y, x, g, retain_graph=True)
        cases[f"relu forward (grad), {name}"] = lambda relu=relu: relu(x)
        cases[f"add fwd+bwd, {name}"] = lambda add=add: torch.autograd.grad(add(x, b), (x, b), g)
        cases[f"maximum backward, {name}"] = lambda m=m: torch.autograd.grad(m, (x, b), g, retain_graph=True)
        cases[f"duplicate backward, {name}"] = lambda d=(d1, d2): torch.autograd.grad(d, x, (g, g), retain_graph=True)
    if a.ce:
        R, C = map(int, a.ce.split("x"))
        dt = torch.bfloat16 if cuda else torch.float32
        logits = torch.randn(R, C, device=a.device, dtype=dt, requires_grad=True)
        t = torch.randint(0, C, (R,), device=a.device)
        for name, ce in (("ours", TF.cross_entropy), ("torch", torch.nn.functional.cross_entropy)):
            loss = ce(logits, t)
            cases[f"ce forward, {name}"] = lambda ce=ce: ce(logits, t)
            cases[f"ce backward, {name}"] = lambda loss=loss: torch.autograd.grad(loss, logits, retain_graph=True)
            cases[f"ce fwd+bwd, {name}"] = lambda ce=ce: torch.autograd.grad(ce(logits, t), logits)
    print(f"n = {a.n}, {a.device}" + (f" ({torch.cuda.get_device_name()})" if cuda else "")
          + (f"; ce {a.ce} {'bfloat16' if cuda else 'float32'}" if a.ce else ""))
    for k, fn in cases.items():
        line = f"{k:32s} host {host_us(fn, a.device):7.1f} us per call"
        if cuda:
            line += f" | gpu {gpu_us(fn):6.1f} us | bench {bench_us(fn):6.1f} us | syncs: {syncs(fn)}"
        print(line, flush=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for k in ("relu backward, ours", "relu backward, torch") + (("ce fwd+bwd, ours",) if a.ce else ()):
        with profile(activities=acts) as prof:
            for _ in range(50):
                cases[k]()
        print(f"\n==== profile: {k} (50 calls; sorted by self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
        if cuda:
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=60))


if __name__ == "__main__":
    main()
