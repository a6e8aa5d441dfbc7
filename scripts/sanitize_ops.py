"""Runs every op of the test table forward, backward and double backward on CUDA at the
table's small sizes, then each kernel path the sizes select (row kernels per warp, block, shared
memory and stream; columns; scalar loads off 16-byte alignment; GEMM tiles and the Hopper GEMM;
NearestNeighbor's tiles and gradient chunks), for compute-sanitizer (memcheck, racecheck,
initcheck) to watch every kernel.
Usage: compute-sanitizer --tool memcheck python scripts/sanitize_ops.py
(TM_SAN_DEVICE=cpu runs the same calls on the CPU: a dry run of the script where there is no GPU.)"""
import math
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the in-place build, and the test table
from helpers import as_tuple, cast_inputs  # noqa: E402
from op_table import OPS  # noqa: E402

# TM_SAN_DTYPES=float32,bfloat16 picks the dtypes (racecheck is slow: one is enough there).
DTYPES = [getattr(torch, d) for d in os.environ.get("TM_SAN_DTYPES", "float32,bfloat16,float64").split(",")]
DEV = os.environ.get("TM_SAN_DEVICE", "cuda")
done = 0


def fwd_bwd_bwd(outs, leaves):
    """The backward of outs (random output gradients) with create_graph, then the backward of that."""
    outs = [o for o in as_tuple(outs) if o.requires_grad]
    if outs and leaves:
        gouts = [torch.randn_like(o).requires_grad_(True) for o in outs]
        grads = torch.autograd.grad(outs, leaves, gouts, create_graph=True, allow_unused=True)
        used = [g for g in grads if g is not None and g.requires_grad]
        if used:
            torch.autograd.grad(used, leaves + gouts, [torch.randn_like(g) for g in used], allow_unused=True)


for op in OPS:
    for case in op.cases:
        for dtype in DTYPES:
            ins = cast_inputs(case.make(), dtype, DEV)
            fwd_bwd_bwd(op.ours(*ins), [t for t in ins if isinstance(t, torch.Tensor) and t.requires_grad])
            done += 1

print(f"sanitize_ops: op table done ({done})", flush=True)  # (how far a run cut by its timeout got)

# ---- each kernel path, chosen by size, stride and alignment -----------------------------------
import torchmodules.functional as TF  # noqa: E402


def leaf(*shape, dtype, misaligned=False):
    """randn of shape; misaligned: a view 1 element into its storage (off 16 bytes: the scalar loads)."""
    t = torch.randn(math.prod(shape) + misaligned, device=DEV, dtype=dtype)
    return t[int(misaligned):].view(shape).requires_grad_(True)


def targets(x, C):
    return torch.randint(0, C, x.shape[:1] + x.shape[2:], device=DEV)


def probs(x):
    return torch.softmax(torch.randn(x.shape, device=DEV), 1).to(x.dtype)


def row_ops(x, C):
    """The row ops over dim 1 of x (C classes): log_softmax, amax, the cross-entropy variants, nll."""
    w = torch.rand(C, device=DEV, dtype=x.dtype) + 0.5
    t = targets(x, C)
    return [lambda: TF.log_softmax(x, 1),
            lambda: TF.amax(x, 1),
            lambda: TF.cross_entropy(x, t, reduction="none"),
            lambda: TF.cross_entropy(x, t, weight=w, label_smoothing=0.1, reduction="sum"),
            lambda: TF.cross_entropy(x, probs(x), label_smoothing=0.05),
            lambda: TF.nll_loss(x, t, weight=w)]


# Row lengths of rows.cuh's paths (for float32 / bfloat16): a warp (9: scalar, 512), a block (1025,
# 8193), the row in shared memory (16384: float32; 16385 and 32771 take the scalar loads), streaming
# blocks (65536).
for dtype in DTYPES:
    for n in (9, 512, 1025, 8193, 16384, 16385, 32771, 65536):
        for misaligned in (False, True) if n in (512, 8193, 16384) else (False,):
            x = leaf(2 if n > 8193 else 5, n, dtype=dtype, misaligned=misaligned)
            for f in row_ops(x, n):
                fwd_bwd_bwd(f(), [x])
                done += 1
    for n in (17, 1025):  # inner > 1: the column kernel
        x = leaf(3, n, 33, dtype=dtype)
        for f in row_ops(x, n):
            fwd_bwd_bwd(f(), [x])
            done += 1
    # elementwise kernels: 16-byte vectors and mask words, with tails; scalar loads off alignment
    for n, misaligned in ((33, False), (2**20 + 7, False), (4097, True)):
        a, b = leaf(n, dtype=dtype, misaligned=misaligned), leaf(n, dtype=dtype)
        for f in (lambda: TF.relu(a), lambda: TF.maximum(a, b), lambda: TF.add(a, b), lambda: TF.mse_loss(a, b),
                  lambda: TF.mse_loss(a, b, reduction="none"), lambda: TF.duplicate(a, 3)):
            fwd_bwd_bwd(f(), [a, b])
            done += 1
    r, c = leaf(65, 1031, dtype=dtype), leaf(1031, dtype=dtype)  # a bias row, a broadcast Add and Maximum
    fwd_bwd_bwd(TF.add(r, c), [r, c])
    fwd_bwd_bwd(TF.maximum(r, c.view(1, -1)), [r, c])
    done += 2
    # Linear (and Linear + ReLU): skinny, odd and tile-edge shapes; M, N >= 128 and K >= 64 take the
    # Hopper GEMM in float16 / bfloat16 (with 16-byte aligned rows: K a multiple of 8)
    for m, k, n in ((1, 7, 5), (16, 33, 40), (130, 72, 136), (127, 1025, 65), (257, 64, 129)):
        x, wt, bias = leaf(m, k, dtype=dtype), leaf(n, k, dtype=dtype), leaf(n, dtype=dtype)
        fwd_bwd_bwd(TF.linear(x, wt, bias), [x, wt, bias])
        fwd_bwd_bwd(TF.linear_relu(x, wt, bias), [x, wt, bias])
        done += 2
    # NearestNeighbor: 64 rows x 64 prototypes x 16 features a tile; weight gradient in chunks of 256 rows
    x, w = leaf(300, 20, dtype=dtype), leaf(70, 20, dtype=dtype)
    fwd_bwd_bwd(TF.nearest_neighbor(x, w)[1], [x, w])
    done += 1
    print(f"sanitize_ops: kernel paths in {dtype} done ({done})", flush=True)
# The fused SGD step: many tensors of odd sizes in one launch, every option path.
from torchmodules.optim import SGD  # noqa: E402
for dtype in DTYPES:
    for kw in (dict(), dict(momentum=0.9, nesterov=True, weight_decay=1e-4), dict(momentum=0.5, dampening=0.1, maximize=True)):
        params = [torch.randn(n, device=DEV, dtype=dtype, requires_grad=True) for n in (1, 7, 33, 1000, 4099)]
        opt = SGD(params, lr=0.1, **kw)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        done += 1
# cross_entropy with inplace_backward (dx written into the logits), class indices and probabilities.
for dtype in DTYPES:
    for prob in (False, True):
        x = torch.randn(33, 1001, device=DEV, dtype=dtype, requires_grad=True)
        t = torch.softmax(torch.randn(33, 1001, device=DEV), 1).to(dtype) if prob else \
            torch.randint(0, 1001, (33,), device=DEV)
        TF.cross_entropy(x * 1, t, label_smoothing=0.1, inplace_backward=True).backward()
        done += 1
if DEV == "cuda":
    torch.cuda.synchronize()
print(f"sanitize_ops: ran {done} op x case (or kernel path) x dtype combinations forward, backward and double "
      f"backward, SGD steps and in-place cross-entropy backwards")
