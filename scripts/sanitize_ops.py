"""Runs every op of the test table forward, backward and double backward on CUDA at the
table's small sizes, for compute-sanitizer (memcheck, racecheck) to watch every kernel.
Usage: compute-sanitizer --tool memcheck python scripts/sanitize_ops.py"""
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the in-place build, and the test table
from helpers import as_tuple, cast_inputs  # noqa: E402
from op_table import OPS  # noqa: E402

# TM_SAN_DTYPES=float32,bfloat16 picks the dtypes (racecheck is slow: one is enough there).
DTYPES = [getattr(torch, d) for d in os.environ.get("TM_SAN_DTYPES", "float32,bfloat16,float64").split(",")]
done = 0
for op in OPS:
    for case in op.cases:
        for dtype in DTYPES:
            ins = cast_inputs(case.make(), dtype, "cuda")
            leaves = [t for t in ins if isinstance(t, torch.Tensor) and t.requires_grad]
            outs = [o for o in as_tuple(op.ours(*ins)) if o.requires_grad]
            if outs and leaves:
                gouts = [torch.randn_like(o).requires_grad_(True) for o in outs]
                grads = torch.autograd.grad(outs, leaves, gouts, create_graph=True, allow_unused=True)
                used = [g for g in grads if g is not None and g.requires_grad]
                if used:
                    torch.autograd.grad(used, leaves + gouts, [torch.randn_like(g) for g in used], allow_unused=True)
            done += 1
# The fused SGD step: many tensors of odd sizes in one launch, every option path.
from torchmodules.optim import SGD  # noqa: E402
for dtype in DTYPES:
    for kw in (dict(), dict(momentum=0.9, nesterov=True, weight_decay=1e-4), dict(momentum=0.5, dampening=0.1, maximize=True)):
        params = [torch.randn(n, device="cuda", dtype=dtype, requires_grad=True) for n in (1, 7, 33, 1000, 4099)]
        opt = SGD(params, lr=0.1, **kw)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        done += 1
# cross_entropy with inplace_backward (dx written into the logits), class indices and probabilities.
import torchmodules.functional as TF  # noqa: E402
for dtype in DTYPES:
    for prob in (False, True):
        x = torch.randn(33, 1001, device="cuda", dtype=dtype, requires_grad=True)
        t = torch.softmax(torch.randn(33, 1001, device="cuda"), 1).to(dtype) if prob else \
            torch.randint(0, 1001, (33,), device="cuda")
        TF.cross_entropy(x * 1, t, label_smoothing=0.1, inplace_backward=True).backward()
        done += 1
torch.cuda.synchronize()
print(f"sanitize_ops: ran {done} op x case x dtype combinations forward, backward and double backward, SGD steps "
      f"and in-place cross-entropy backwards")
