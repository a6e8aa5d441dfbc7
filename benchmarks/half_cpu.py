"""CPU kernels on the half types against torch, one thread, ~1M elements: for each op and pass,
ours on float16 / bfloat16, torch's twin on the same dtype, and ours on float32.

    PYTHONPATH=$PWD python benchmarks/half_cpu.py [--only NAME ...] [--reps R]

Each row times the op calls themselves (ours: torch.ops.torchmodules.*, torch: the aten ops its
autograd runs), alternating ours, torch and ours-float32 call by call (the allocator's state is
shared, see bench.py), and reports the median ms. "ratio" is ours / torch; rows above 1.5x are
marked *.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import torchmodules  # noqa: F401  (registers the ops)

ops = torch.ops.torchmodules
aten = torch.ops.aten
N = 1 << 20
R, C = 1024, 1024  # row-wise ops: R x C = N


def cases(dt):
    """name -> (ours, torch) callables of no argument, inputs of dtype dt."""
    g = torch.Generator().manual_seed(0)

    def rn(*shape):
        return torch.randn(*shape, generator=g).to(dt)

    out = {}
    x, b, dy = rn(N), rn(N), rn(N)
    y, mask = ops.relu_forward(x)
    out["relu fwd"] = (lambda: ops.relu_forward(x), lambda: torch.relu(x))
    out["relu bwd"] = (lambda: ops.relu_backward(dy, mask), lambda: aten.threshold_backward(dy, y, 0))
    out["add fwd"] = (lambda: ops.add_forward(x, b), lambda: torch.add(x, b))
    x2, bias, dy2 = rn(R, C), rn(C), rn(R, C)
    out["add fwd bias"] = (lambda: ops.add_forward(x2, bias), lambda: torch.add(x2, bias))
    out["add bwd to [C]"] = (lambda: ops.add_backward(dy2, [C]), lambda: dy2.sum(0))
    out["add bwd to [R,1]"] = (lambda: ops.add_backward(dy2, [R, 1]), lambda: dy2.sum(1, keepdim=True))
    _, mmask = ops.maximum_forward(x, b)

    def max_bwd_torch():  # torch's derivative formula for maximum
        half = torch.where(x == b, dy / 2, dy)
        return half.masked_fill(x < b, 0), half.masked_fill(x > b, 0)
    out["maximum fwd"] = (lambda: ops.maximum_forward(x, b), lambda: torch.maximum(x, b))
    out["maximum bwd"] = (lambda: ops.maximum_backward_both(dy, mmask), max_bwd_torch)
    out["maximum fwd bias"] = (lambda: ops.maximum_forward(x2, bias), lambda: torch.maximum(x2, bias))
    out["duplicate fwd"] = (lambda: ops.duplicate_forward(x, 2), lambda: (x.clone(), x.clone()))
    out["duplicate bwd"] = (lambda: ops.duplicate_backward([dy, b]), lambda: dy + b)
    ls = ops.log_softmax_forward(x2, 1)
    out["log_softmax fwd"] = (lambda: ops.log_softmax_forward(x2, 1), lambda: torch.log_softmax(x2, 1))
    out["log_softmax bwd"] = (lambda: ops.log_softmax_backward(dy2, ls, 1),
                              lambda: aten._log_softmax_backward_data(dy2, ls, 1, dt))
    am = ops.amax_forward(x2, [1], False)
    dam = rn(R)

    def amax_bwd_torch():  # torch's: (dy / count) * [x == y]
        m = x2 == am.unsqueeze(1)
        return (dam.unsqueeze(1) / m.sum(1, keepdim=True)) * m
    out["amax fwd dim1"] = (lambda: ops.amax_forward(x2, [1], False), lambda: torch.amax(x2, 1))
    out["amax fwd dim0"] = (lambda: ops.amax_forward(x2, [0], False), lambda: torch.amax(x2, 0))
    out["amax bwd dim1"] = (lambda: ops.amax_backward(dam, x2, am, [1], False), amax_bwd_torch)
    one = torch.ones((), dtype=dt)
    out["mse fwd mean"] = (lambda: ops.mse_loss_forward(x, b, 1), lambda: F.mse_loss(x, b))
    out["mse fwd none"] = (lambda: ops.mse_loss_forward(x, b, 0), lambda: F.mse_loss(x, b, reduction="none"))
    out["mse bwd mean"] = (lambda: ops.mse_loss_backward(one, x, b, 1), lambda: aten.mse_loss_backward(one, x, b, 1))
    out["mse bwd none"] = (lambda: ops.mse_loss_backward(dy, x, b, 0), lambda: aten.mse_loss_backward(dy, x, b, 0))
    xn, tn = rn(8192, 128), torch.randint(0, 128, (8192,), generator=g)
    _, tw = ops.nll_loss_forward(xn, tn, None, 1, -100)
    _, ttw = aten.nll_loss_forward(xn, tn, None, 1, -100)
    out["nll fwd [8192,128]"] = (lambda: ops.nll_loss_forward(xn, tn, None, 1, -100),
                                 lambda: aten.nll_loss_forward(xn, tn, None, 1, -100))
    out["nll bwd [8192,128]"] = (lambda: ops.nll_loss_backward(one, tn, None, tw, [8192, 128], 1, -100),
                                 lambda: aten.nll_loss_backward(one, xn, tn, None, 1, -100, ttw))
    tc = torch.randint(0, C, (R,), generator=g)
    tp = torch.softmax(torch.randn(R, C, generator=g), 1).to(dt)
    for name, t in (("ce fwd", tc), ("ce fwd probs", tp)):
        out[name] = (lambda t=t: ops.cross_entropy_forward(x2, t, None, 1, -100, 0.0),
                     lambda t=t: F.cross_entropy(x2, t))
    _, lse, cw = ops.cross_entropy_forward(x2, tc, None, 1, -100, 0.0)
    lsm = torch.log_softmax(x2, 1)
    _, ctw = aten.nll_loss_forward(lsm, tc, None, 1, -100)

    def ce_bwd_torch():  # torch's autograd: nll_loss_backward, then log_softmax's backward
        d = aten.nll_loss_backward(one, lsm, tc, None, 1, -100, ctw)
        return aten._log_softmax_backward_data(d, lsm, 1, dt)
    out["ce bwd"] = (lambda: ops.cross_entropy_backward(one, x2, tc, None, lse, cw, 1, -100, 0.0, False),
                     ce_bwd_torch)
    _, lsep, cwp = ops.cross_entropy_forward(x2, tp, None, 1, -100, 0.0)

    def ce_bwd_probs_torch():  # -(t / N) * grad of log_softmax
        return aten._log_softmax_backward_data(-tp / R, lsm, 1, dt)
    out["ce bwd probs"] = (lambda: ops.cross_entropy_backward(one, x2, tp, None, lsep, cwp, 1, -100, 0.0, False),
                           ce_bwd_probs_torch)
    p, gr, buf = rn(N), rn(N) * 1e-2, rn(N) * 1e-2
    pt, bt = p.clone(), buf.clone()
    out["sgd step mom"] = (lambda: ops.sgd_step([p], [gr], [buf], 1e-3, 0.9, 0.0, 0.0, False, False, False),
                           lambda: torch._fused_sgd_([pt], [gr], [bt], weight_decay=0.0, momentum=0.9, lr=1e-3,
                                                     dampening=0.0, nesterov=False, maximize=False,
                                                     is_first_step=False))
    p2, pt2 = p.clone(), p.clone()
    out["sgd step plain"] = (lambda: ops.sgd_step([p2], [gr], [], 1e-3, 0.0, 0.0, 0.0, False, False, False),
                             lambda: torch._fused_sgd_([pt2], [gr], [], weight_decay=0.0, momentum=0.0, lr=1e-3,
                                                       dampening=0.0, nesterov=False, maximize=False,
                                                       is_first_step=False))
    return out


def median_ms(fns, reps):
    """Median ms of each fn, called in alternation."""
    for f in fns:
        f(), f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for f, t in zip(fns, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in ts]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="substrings of the row names to run")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtypes", nargs="*", default=["float16", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    f32 = cases(torch.float32)
    print(f"torch {torch.__version__}, 1 thread, median of {args.reps}; ms")
    print(f"| op | dtype | ours | torch | ratio | ours f32 |")
    print(f"|---|---|---:|---:|---:|---:|")
    for dname in args.dtypes:
        for name, (ours, twin) in cases(getattr(torch, dname)).items():
            if args.only and not any(s in name for s in args.only):
                continue
            o, t, o32 = median_ms([ours, twin, f32[name][0]], args.reps)
            mark = " *" if o > 1.5 * t else ""
            print(f"| {name} | {dname} | {o:.3f} | {t:.3f} | {o / t:.2f}{mark} | {o32:.3f} |", flush=True)


if __name__ == "__main__":
    main()
