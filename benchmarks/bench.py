"""Benchmark torchmodules ops against their torch twins: forward, backward and forward+backward,
per op, size and dtype, with achieved bandwidth (or TFLOP/s for linear) against ceilings measured
at the start of the same run.

    python benchmarks/bench.py --quick --out DIR                 # GPU
    python benchmarks/bench.py --device cpu --quick --out DIR    # CPU

Writes DIR/bench.json (metadata + records), DIR/bench.md (tables) and DIR/bench.png (speedups).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the extension is built in place in the repo
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import ops as bench_ops  # noqa: E402

PASSES = ("forward", "backward", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- timing -----------------------------------------------------------------------------------

def time_cpu_pair(fa, fb, warmup=2, min_reps=3, max_reps=50, budget_s=0.2):
    """Median ms of fa and of fb, called in alternation. Alternating matters on the CPU: glibc
    hands big freed blocks back to the OS, and whichever op allocates next page-faults them
    in again (~4 ms per 16 MB here), so timing one op's reps in a row after the other's
    charges the allocator's state to one of them."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    while len(ta) < min_reps or (len(ta) < max_reps and sum(ta) + sum(tb) < budget_s):
        for f, ts in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def make_timer(device):
    """Returns time_ms(fn) -> median milliseconds of one call of fn."""
    if device == "cpu":
        def time_cpu(fn, warmup=2, min_reps=3, max_reps=50, budget_s=0.1):
            for _ in range(warmup):
                fn()
            times = []
            while len(times) < min_reps or (len(times) < max_reps and sum(times) < budget_s):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1e3
        return time_cpu, "time.perf_counter median (ours and torch alternated)"
    try:
        from triton.testing import do_bench  # flushes L2 before each rep
        return (lambda fn: do_bench(fn, warmup=5, rep=20, return_mode="median")), "triton.testing.do_bench"
    except ImportError:
        pass
    flush = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=device)  # bigger than L2

    def time_cuda(fn, warmup=3, reps=20):
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            flush.zero_()  # evict the inputs from L2, as a cold call would see them
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))
    return time_cuda, "CUDA events + 256 MB L2 flush"


def measure_ceilings(device, dtypes, time_ms):
    """Copy bandwidth (read + write bytes) and torch.mm rate per dtype, as 100% marks."""
    nbytes = 2 ** 30 if device != "cpu" else 64 * 2 ** 20
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ceil = {"copy_GBps": 2 * nbytes / time_ms(lambda: dst.copy_(src)) / 1e6, "copy_bytes": nbytes}
    del src, dst
    n = 8192 if device != "cpu" else 1024
    ceil["mm_n"] = n
    for name in dtypes:
        try:
            a = torch.randn(n, n, device=device, dtype=DTYPES[name])
            b = torch.randn(n, n, device=device, dtype=DTYPES[name])
            ceil[f"mm_TFLOPs_{name}"] = 2 * n ** 3 / time_ms(lambda: torch.mm(a, b)) / 1e9
        except Exception as e:  # e.g. a dtype without a CPU GEMM
            print(f"ceiling mm {name}: {type(e).__name__}: {e}", flush=True)
            ceil[f"mm_TFLOPs_{name}"] = None
    return ceil


def peak_mem_mb(fn, device):
    """Extra GPU memory (MB) allocated at peak by one call of fn, over what was live before it
    (the inputs and grad_out are live, so they are not counted)."""
    if device == "cpu":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


# ---- one case: all passes of one op / size / dtype ----------------------------------------------

def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def pass_fns(fn, inputs):
    """Callables for the three passes of fn; backward replays a graph built once."""
    outs = as_tuple(fn(*inputs))
    grads = [torch.randn_like(o) for o in outs]
    return {
        "forward": lambda: fn(*inputs),
        "backward": lambda: torch.autograd.grad(outs, inputs, grads, retain_graph=True),
        "fwd+bwd": lambda: torch.autograd.grad(as_tuple(fn(*inputs)), inputs, grads),
    }


def run_case(op, case, dtype, device, time_ms, ceil):
    """Times ours and torch for each pass of one case; returns one record per pass."""
    fns = {}
    for impl in ("ours", "torch"):
        try:
            fns[impl] = ({p: pair[impl == "torch"] for p, pair in case.passes.items()} if case.passes
                         else pass_fns(getattr(case, impl), case.inputs))
        except Exception as e:
            fns[impl] = e
    records = []
    for p in (case.passes or PASSES):
        paired = None  # CPU: ours and torch timed in alternation
        if device == "cpu" and not any(isinstance(f, Exception) for f in fns.values()):
            try:
                paired = dict(zip(("ours", "torch"), time_cpu_pair(fns["ours"][p], fns["torch"][p])))
            except Exception:
                paired = None  # timed one by one below, which records the error
        r = {"op": op, "pass": p, "dtype": dtype, "shape": case.shape, "size": case.size,
             "device": device, "unit": case.unit, "error": None}
        for impl in ("ours", "torch"):
            ms = rate = pct = mem = None
            try:
                if isinstance(fns[impl], Exception):
                    raise fns[impl]
                ms = paired[impl] if paired else time_ms(fns[impl][p])
                if case.unit == "flop":
                    rate = case.work[p] / ms / 1e9 if p in case.work else None  # TFLOP/s
                    peak = ceil.get(f"mm_TFLOPs_{dtype}")
                else:
                    rate = case.work[p] / ms / 1e6 if p in case.work else None  # GB/s
                    peak = ceil["copy_GBps"]
                pct = 100 * rate / peak if peak and rate else None
                if p in ("fwd+bwd", "step", "train step"):
                    mem = peak_mem_mb(fns[impl][p], device)
            except Exception as e:  # record and go on
                msg = f"{impl}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                r["error"] = msg if r["error"] is None else r["error"] + "; " + msg
            r.update({f"{impl}_ms": ms, f"{impl}_rate": rate, f"{impl}_pct_of_peak": pct,
                      f"{impl}_peak_mem_MB": mem})
        r["speedup"] = r["torch_ms"] / r["ours_ms"] if r["ours_ms"] and r["torch_ms"] else None
        records.append(r)
    return records


# ---- output -----------------------------------------------------------------------------------

def fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


COLS = [("pass", "pass", "s"), ("dtype", "dtype", "s"), ("shape", "shape", "s"),
        ("ours_ms", "ours ms", ".4g"), ("torch_ms", "torch ms", ".4g"), ("speedup", "speedup", ".3f"),
        ("ours_rate", "ours rate", ".4g"), ("torch_rate", "torch rate", ".4g"),
        ("ours_pct_of_peak", "ours %pk", ".1f"), ("torch_pct_of_peak", "torch %pk", ".1f"),
        ("ours_peak_mem_MB", "ours MB", ".1f"), ("torch_peak_mem_MB", "torch MB", ".1f")]


def rows(recs):
    return [[fmt(r[k], f) if f != "s" else str(r[k]) for k, _, f in COLS] for r in recs]


def summary(recs):
    """(geomean, min) of the op's valid speedups."""
    s = [r["speedup"] for r in recs if r["speedup"]]
    return (math.exp(sum(map(math.log, s)) / len(s)), min(s)) if s else (None, None)


def by_op(records):
    out = {}
    for r in records:
        out.setdefault(r["op"], []).append(r)
    return out


def print_table(records):
    head = ["op"] + [h for _, h, _ in COLS]
    body = [[r["op"]] + row for r, row in zip(records, rows(records))]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for line in [head] + body:
        print("  ".join(x.rjust(w) for x, w in zip(line, widths)))
    for op, recs in by_op(records).items():
        g, m = summary(recs)
        print(f"{op}: geomean speedup {fmt(g)}, min {fmt(m)}")
    for r in records:
        if r["error"]:
            print(f"ERROR {r['op']} {r['pass']} {r['dtype']} {r['shape']}: {r['error']}")


def write_md(path, meta, records):
    lines = ["# torchmodules benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "ceilings"]
    lines += ["", "## Ceilings", ""] + [f"- {k}: {fmt(v, '.4g') if isinstance(v, float) else v}"
                                       for k, v in meta["ceilings"].items()]
    lines += ["", "speedup = torch_ms / ours_ms; rate is GB/s (minimal bytes, see benchmarks/ops.py) or "
              "TFLOP/s for linear (and linear_relu); %pk against the ceilings; MB = extra peak memory of fwd+bwd (GPU)."]
    for op, recs in by_op(records).items():
        g, m = summary(recs)
        unit = "TFLOP/s" if recs[0].get("unit") == "flop" else "GB/s"
        lines += ["", f"## {op}", "", f"geomean speedup {fmt(g)}, min {fmt(m)}", "",
                  "| " + " | ".join(h.replace("rate", unit) for _, h, _ in COLS) + " |",
                  "|" + "---|" * len(COLS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows(recs)]
        lines += [f"- error {r['pass']} {r['dtype']} {r['shape']}: {r['error']}" for r in recs if r["error"]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_png(path, records):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no bench.png", flush=True)
        return
    groups = by_op(records)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.6), squeeze=False)
    for ax, (op, recs) in zip(axes[0], groups.items()):
        for key in sorted({(r["pass"], r["dtype"]) for r in recs}):
            pts = sorted((r["size"], r["speedup"]) for r in recs
                         if (r["pass"], r["dtype"]) == key and r["speedup"])
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{key[0]} {key[1]}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(op)
        ax.set_xlabel({"linear": "M*N*K", "linear_relu": "M*N*K", "linear_relu_vs_unfused": "M*N*K", "log_softmax": "row length", "amax": "row length", "nll_loss": "classes",
                       "cross_entropy": "classes", "cross_entropy_inplace": "classes", "cross_entropy_probs": "classes",
                       "mse_loss": "columns",
                       "sgd": "parameters", "train_step": "batch", "nearest_neighbor": "N*K*D"}.get(op, "elements"))
        ax.set_ylabel("speedup (torch / ours)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def git_commit():
    if os.environ.get("TM_COMMIT"):
        return os.environ["TM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return None


# ---- main -------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="few sizes, short reps (< 3 min)")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--dtypes", help="comma list; default float32,bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--ops", default=",".join(bench_ops.SETUPS), help="comma list of ops")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); "
                    "1 avoids thread-wakeup stalls on a busy machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = args.device
    dtypes = (args.dtypes.split(",") if args.dtypes else
              ["float32"] if device == "cpu" else ["float32", "bfloat16"])
    t_start = time.time()
    torch.manual_seed(0)
    time_ms, timer_name = make_timer(device)
    ceil = measure_ceilings(device, dtypes, time_ms)
    print("ceilings:", {k: fmt(v, ".4g") if isinstance(v, float) else v for k, v in ceil.items()}, flush=True)

    records = []
    for op in args.ops.split(","):
        for size in bench_ops.sizes(op, device, args.quick):
            for dtype in dtypes:
                try:
                    case = bench_ops.SETUPS[op](size, DTYPES[dtype], device)
                    recs = run_case(op, case, dtype, device, time_ms, ceil)
                    del case
                except Exception as e:  # the setup itself failed (e.g. out of memory)
                    recs = [{"op": op, "pass": p, "dtype": dtype, "shape": str(size), "size": None,
                             "device": device, "error": f"setup: {type(e).__name__}: {e}",
                             **{k: None for k, _, f in COLS if f != "s"}} for p in PASSES]
                for r in recs:
                    records.append(r)
                    print(f"{op:12s} {r['pass']:8s} {dtype:9s} {r['shape']:>16s}  ours {fmt(r['ours_ms'], '.4g')} ms"
                          f"  torch {fmt(r['torch_ms'], '.4g')} ms  x{fmt(r['speedup'])}"
                          + (f"  ERROR {r['error']}" if r["error"] else ""), flush=True)

    meta = {"device": device,
            "device_name": torch.cuda.get_device_name(device) if device != "cpu" else
            (os.uname().machine + f", {torch.get_num_threads()} threads"),
            "torch": torch.__version__, "commit": git_commit(), "quick": args.quick,
            "timer": timer_name, "dtypes": dtypes, "wall_s": round(time.time() - t_start, 1),
            "ceilings": ceil}
    print_table(records)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
    write_md(os.path.join(args.out, "bench.md"), meta, records)
    write_png(os.path.join(args.out, "bench.png"), records)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png in {meta['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
