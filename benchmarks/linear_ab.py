"""Linear on the GPU, A/B: ours with the Hopper GEMM (kernels/gemm_sm90.cu, the default on
compute capability 9.0), ours with TORCHMODULES_SM90_GEMM=0 (the mma.sync kernel) and torch
(cuBLAS), per pass (forward; backward = dx and dW; fwd+bwd), dtype and size: milliseconds,
TFLOP/s and the fraction of torch's rate. The variable is read on every call, so both paths
run in one process on the same inputs; the sm90 column sets it to "require", so a product the
kernel cannot take shows as an error, not as the mma.sync kernel's time. Also the forward's relative difference from torch
(||ours - torch|| / ||torch||), a check that the fast path computes the same function.

    python benchmarks/linear_ab.py [--quick] [--md FILE] [--dtypes bfloat16,float16]
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench  # noqa: E402
import ops as bench_ops  # noqa: E402

VAR = "TORCHMODULES_SM90_GEMM"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4096^3 and 8192^3 only")
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--md", help="also write the table to this markdown file")
    args = ap.parse_args()
    sizes = [(4096,) * 3, (8192,) * 3] if args.quick else [(2048,) * 3, (4096,) * 3, (8192,) * 3, (16384, 4096, 4096)]
    time_ms, timer = bench.make_timer("cuda")
    old = os.environ.get(VAR)
    rows = []
    for m, k, n in sizes:
        for dname in args.dtypes.split(","):
            torch.manual_seed(0)
            case = bench_ops._linear((m, k, n), bench.DTYPES[dname], "cuda")
            fns = {}
            for impl in ("sm90", "mma", "torch"):
                fns[impl] = bench.pass_fns(case.torch if impl == "torch" else case.ours, case.inputs)
            x, w, b = (t.detach() for t in case.inputs)
            for p in bench.PASSES:
                r = {"pass": p, "dtype": dname, "shape": f"{m}x{k}x{n}"}
                for impl in ("sm90", "mma", "torch"):
                    os.environ[VAR] = "0" if impl == "mma" else "require"
                    try:
                        r[impl] = time_ms(fns[impl][p])
                    except Exception as e:  # record and go on
                        r[impl] = None
                        r.setdefault("error", f"{impl}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                if p == "forward":
                    os.environ[VAR] = "1"
                    ref = torch.nn.functional.linear(x, w, b).float()
                    for impl in ("sm90", "mma"):
                        os.environ[VAR] = "0" if impl == "mma" else "require"
                        y = case.ours(x, w, b).float()
                        r[f"{impl}_relerr"] = ((y - ref).norm() / ref.norm()).item()
                rows.append((r, case.work[p]))
                print(r, flush=True)
            del case, fns
    if old is None:
        os.environ.pop(VAR, None)
    else:
        os.environ[VAR] = old

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"Linear A/B on {torch.cuda.get_device_name()} ({timer}): ours with the sm_90 GEMM, ours with "
             f"{VAR}=0 (mma.sync), torch; TFLOP/s; x torch = torch ms / ours ms; rel err = ||y - torch|| / ||torch||.",
             "", "| pass | dtype | shape | sm90 ms | mma ms | torch ms | sm90 TFLOP/s | torch TFLOP/s | sm90 x torch "
             "| mma x torch | sm90 rel err | mma rel err |", "|" + "---|" * 12]
    for r, work in rows:
        rate = {i: (work / r[i] / 1e9 if r[i] else None) for i in ("sm90", "mma", "torch")}
        ratio = {i: (r["torch"] / r[i] if r[i] and r["torch"] else None) for i in ("sm90", "mma")}
        lines.append(f"| {r['pass']} | {r['dtype']} | {r['shape']} | {f(r['sm90'], '.4g')} | {f(r['mma'], '.4g')} | "
                     f"{f(r['torch'], '.4g')} | {f(rate['sm90'], '.4g')} | {f(rate['torch'], '.4g')} | "
                     f"{f(ratio['sm90'], '.3f')} | {f(ratio['mma'], '.3f')} | {f(r.get('sm90_relerr'), '.2g')} | "
                     f"{f(r.get('mma_relerr'), '.2g')} |" + (f" error: {r['error']}" if r.get("error") else ""))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
