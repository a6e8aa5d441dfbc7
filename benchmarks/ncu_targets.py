"""The kernels behind the GPU targets that a check missed or never ran, one call each under
Nsight Compute: per kernel its time, DRAM and SM throughput (% of peak), achieved occupancy,
registers and launch shape, as a markdown table. The benchmark gives the times; this says why
(memory-bound at what fraction, occupancy-limited, compute-bound), so a session without a GPU
can work from it. scripts/gpu_check.sh runs it last (stage ncu).

    python benchmarks/ncu_targets.py [--only NAME,...]    # runs ncu on itself, prints the table
    python benchmarks/ncu_targets.py --child              # the profiled process (ncu starts it)

Each target runs once outside the profiled window (warm-up, allocations), then once between
cudaProfilerStart and cudaProfilerStop (ncu --profile-from-start off), behind a marker kernel
(torch.cuda._sleep's spin_kernel): ncu numbers the profiled kernels in launch order, so the
kernels from one marker to the next are that target's. Clocks are left alone (--clock-control none).
"""
import argparse
import csv
import io
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SECTIONS = ["SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats"]
# Display names (the details page) shown per kernel, with the column header.
COLUMNS = [("Duration", "us"), ("DRAM Throughput", "DRAM %"), ("Compute (SM) Throughput", "SM %"),
           ("Achieved Occupancy", "occ %"), ("Theoretical Occupancy", "theo %"),
           ("Registers Per Thread", "regs"), ("Dynamic Shared Memory Per Block", "dyn smem"),
           ("Warp Cycles Per Issued Instruction", "cyc/issue")]


def targets():
    """(name, setup) pairs; setup() returns the call to profile. Sizes are the issues' targets."""
    import torch
    import torch.nn.functional as F

    import torchmodules.functional as TF

    dev, bf = "cuda", torch.bfloat16

    def ce(n, c, fn, backward, **kw):
        def setup():
            x = torch.randn(n, c, device=dev, dtype=bf, requires_grad=True)
            t = torch.randint(0, c, (n,), device=dev)
            if not backward:
                return lambda: fn(x, t, **kw)
            if kw.get("inplace_backward"):  # the logits must be a non-leaf for the in-place backward
                def call():
                    z = x * 1.0
                    torch.autograd.grad(fn(z, t, **kw), z)
                return call
            loss = fn(x, t, **kw)
            return lambda: torch.autograd.grad(loss, x, retain_graph=True)
        return setup

    def rows(n, c, fn, backward):
        def setup():
            x = torch.randn(n, c, device=dev, dtype=bf, requires_grad=True)
            if not backward:
                return lambda: fn(x, 1)
            y = fn(x, 1)
            g = torch.randn_like(y)
            return lambda: torch.autograd.grad(y, x, g, retain_graph=True)
        return setup

    def nll_bwd(fn):
        def setup():
            x = torch.randn(8192, 32768, device=dev, dtype=bf, requires_grad=True)
            t = torch.randint(0, 32768, (8192,), device=dev)
            loss = fn(x, t)
            return lambda: torch.autograd.grad(loss, x, retain_graph=True)
        return setup

    def elementwise(fn, n, arity, backward, dtype=torch.float32):
        def setup():
            xs = [torch.randn(n, device=dev, dtype=dtype, requires_grad=True) for _ in range(arity)]
            if not backward:
                return lambda: fn(*xs)
            y = fn(*xs)
            g = torch.randn_like(y)
            return lambda: torch.autograd.grad(y, xs, g, retain_graph=True)
        return setup

    def linear(fn, n):
        def setup():
            x = torch.randn(n, n, device=dev, dtype=bf)
            w = torch.randn(n, n, device=dev, dtype=bf)
            return lambda: fn(x, w)
        return setup

    def nearest(n, k, d):
        def setup():
            x = torch.randn(n, d, device=dev)
            w = torch.randn(k, d, device=dev)
            return lambda: TF.nearest_neighbor(x, w)
        return setup

    big = 1 << 26
    return [
        ("ce fwd bf16 8192x32768 ours", ce(8192, 32768, TF.cross_entropy, False)),
        ("ce fwd bf16 8192x32768 torch", ce(8192, 32768, F.cross_entropy, False)),
        ("ce bwd bf16 8192x32768 ours", ce(8192, 32768, TF.cross_entropy, True)),
        ("ce bwd bf16 8192x32768 torch", ce(8192, 32768, F.cross_entropy, True)),
        ("ce fwd+bwd in place bf16 8192x32768 ours",
         ce(8192, 32768, TF.cross_entropy, True, inplace_backward=True)),
        ("ce fwd bf16 4096x128256 ours", ce(4096, 128256, TF.cross_entropy, False)),
        ("ce bwd bf16 4096x128256 ours", ce(4096, 128256, TF.cross_entropy, True)),
        ("log_softmax fwd bf16 2048x32768 ours", rows(2048, 32768, TF.log_softmax, False)),
        ("log_softmax fwd bf16 2048x32768 torch", rows(2048, 32768, torch.log_softmax, False)),
        ("log_softmax bwd bf16 2048x32768 ours", rows(2048, 32768, TF.log_softmax, True)),
        ("log_softmax bwd bf16 2048x32768 torch", rows(2048, 32768, torch.log_softmax, True)),
        ("nll bwd bf16 8192x32768 ours", nll_bwd(TF.nll_loss)),
        ("nll bwd bf16 8192x32768 torch", nll_bwd(F.nll_loss)),
        ("maximum bwd f32 2^26 ours", elementwise(TF.maximum, big, 2, True)),
        ("maximum bwd f32 2^26 torch", elementwise(torch.maximum, big, 2, True)),
        ("relu fwd f32 2^22 ours", elementwise(TF.relu, 1 << 22, 1, False)),
        ("relu fwd f32 2^22 torch", elementwise(torch.relu, 1 << 22, 1, False)),
        ("relu bwd f32 2^22 ours", elementwise(TF.relu, 1 << 22, 1, True)),
        ("relu bwd f32 2^22 torch", elementwise(torch.relu, 1 << 22, 1, True)),
        ("linear fwd bf16 4096^3 ours", linear(TF.linear, 4096)),
        ("linear fwd bf16 4096^3 torch", linear(F.linear, 4096)),
        ("nearest_neighbor f32 N=8192 K=1024 D=256 ours", nearest(8192, 1024, 256)),
    ]


def child(only):
    import torch
    for name, setup in targets():
        if only and not any(o in name for o in only):
            continue
        try:
            call = setup()
            call()  # warm-up, outside the profiled window
            torch.cuda.synchronize()
            print(f"@@target {name}", flush=True)
            torch.cuda.profiler.start()
            torch.cuda._sleep(1000)  # the marker: this target's kernels follow it
            try:
                call()
                torch.cuda.synchronize()
            finally:
                torch.cuda.profiler.stop()
            del call
            torch.cuda.empty_cache()
        except Exception as e:  # one failing target must not hide the others
            print(f"@@failed {name}: {type(e).__name__}: {e}", flush=True)


def parse(csv_text):
    """{kernel id: (kernel name, grid, block, {metric display name: (value, unit)})}, launch order."""
    lines = csv_text.splitlines()
    start = next((i for i, l in enumerate(lines) if '"Kernel Name"' in l and '"Metric Name"' in l), None)
    if start is None:
        return None
    kernels = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        if not (row.get("ID") or "").isdigit():  # ncu's own lines, if any, after the header
            continue
        k = kernels.setdefault(row["ID"], (row.get("Kernel Name", "?"), row.get("Grid Size", ""),
                                           row.get("Block Size", ""), {}))
        k[3][row.get("Metric Name", "")] = (row.get("Metric Value", ""), row.get("Metric Unit", ""))
    return kernels


def short(kernel):
    """A kernel's name without template arguments and parameter lists."""
    out, depth = [], 0
    for ch in kernel:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).replace("void ", "").strip()[:60]


def value(metrics, name):
    v, unit = metrics.get(name, ("", ""))
    if name == "Duration" and v:
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit)
        try:
            return f"{float(v.replace(',', '')) * scale:.1f}" if scale else f"{v} {unit}"
        except ValueError:
            return v
    return v


MARKER = "spin_kernel"


def table(stdout, csv_text):
    """The markdown table: the child's @@target lines name the windows in order; in ncu's
    kernels (launch order) each marker opens the next window."""
    kernels = parse(csv_text)
    if kernels is None:
        return "ncu: no details table in its output (see log.txt)\n"
    names = [line[len("@@target "):] for line in stdout.splitlines() if line.startswith("@@target ")]
    failed = [line for line in stdout.splitlines() if line.startswith("@@failed ")]
    out = ["| target / kernel | grid x block | " + " | ".join(c for _, c in COLUMNS) + " |",
           "|" + "---|" * (len(COLUMNS) + 2)]
    window = -1
    for kname, grid, block, m in kernels.values():
        if MARKER in kname:
            window += 1
            name = names[window] if window < len(names) else f"window {window}"
            out.append(f"| **{name}** |" + " |" * (len(COLUMNS) + 1))
            continue
        out.append(f"| {short(kname)} | {grid} x {block} | " + " | ".join(value(m, n) for n, _ in COLUMNS) + " |")
    out += [f"- {line[2:]}" for line in failed]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help="the profiled process")
    ap.add_argument("--only", default="", help="comma-separated substrings of target names")
    ap.add_argument("--ncu", default="ncu")
    ap.add_argument("--raw", help="also write ncu's whole output (its CSV report at the end) here")
    a = ap.parse_args()
    only = [o for o in a.only.split(",") if o]
    if a.child:
        return child(only)
    cmd = [a.ncu, "--profile-from-start", "off", "--clock-control", "none", "--csv", "--page", "details"]
    for s in SECTIONS:
        cmd += ["--section", s]
    cmd += [sys.executable, os.path.abspath(__file__), "--child"] + (["--only", a.only] if only else [])
    # One stream: the child's @@ lines come before the report, which ncu prints at the end.
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        print(f"ncu: {a.ncu} not found")
        return 1
    if a.raw:
        with open(a.raw, "w") as f:
            f.write(p.stdout)
    if p.returncode:
        print(f"ncu exited {p.returncode}; its last output:\n{p.stdout[-3000:]}")
    print(table(p.stdout, p.stdout))
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
