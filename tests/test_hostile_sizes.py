"""Hostile sizes and placements on the CPU: row lengths and element counts at the kernels' internal
boundaries (16-, 32- and 64-element vectors and words, the 2048-element blocks of the online
log-sum-exp and of the short-row flat path, kGrain = 32768 elements per thread task, rows split
over the threads), with NaN, +-inf, -0.0, huge and denormal values placed at the start, at the
end, exactly on those boundaries, as whole leading blocks, as all -inf rows and as one finite
value among -inf; ties for maximum and amax; broadcasting for maximum and add.

Every op runs in float32, float64, bfloat16 and float16 and is compared, forward and gradients
(torch.autograd.grad), with torch's own op in float64 on the same rounded inputs: NaN at the
same places, infinities equal (or where the float64 reference overflows the dtype), the rest
within the dtype's tolerance (op_table.TOL) plus twice torch's own error in that dtype, that
error taken per row (a huge row's rounding does not loosen the others). Many hostile rows go
through one call (the rows are independent), and a failure names the first bad rows by their
placement ("nan@2048": a NaN at index 2048; "-inf[:2048]": a leading block of -inf).
test_property.py draws small shapes only; this file pins the boundaries, deterministically up to
the random base values (TM_SEED).
"""
import contextlib
import math
import re
import warnings

import pytest
import torch

import torchmodules.functional as TF
from op_table import TOL, _nn_ref
from torchmodules.optim import SGD

F = torch.nn.functional
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DTYPES = [F32, F64, BF16, F16]
DT = pytest.mark.parametrize("dtype", DTYPES, ids=str)

SIZES = [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 2047, 2048, 2049, 4097]
BIG = 2**16 + 3  # over the 2 threads' kGrain (32768) split, and 32 blocks of 2048
BIG_BOUNDS = (2048, 32768, 65536)  # the boundaries placed at in rows of BIG elements (run time)
# Indices where vectors, words, blocks and thread tasks start (and, less one, end).
BOUNDS = (16, 32, 64, 2048, 4096, 32768, 65536)
KINDS = ("nan", "inf", "-inf", "-0", "huge", "-huge", "denormal")


def value(kind, dtype):
    """A hostile value, exactly representable in dtype (huge: near the top of the half types'
    and float32's range; denormal: a quarter of the least normal)."""
    fi = torch.finfo(dtype)
    huge = 6e4 if dtype == F16 else 1e38 if dtype in (F32, BF16) else 1e300
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-0": -0.0, "huge": huge, "-huge": -huge,
            "denormal": fi.smallest_normal / 4}[kind]


def positions(n, bounds=BOUNDS):
    """The start, the end, and each boundary inside [0, n) with the index before it."""
    return sorted({0, n - 1} | {p for b in bounds for p in (b - 1, b) if 0 <= p < n})


def randn(*shape):
    return torch.randn(shape, dtype=F64)


def hostile_rows(n, dtype, kinds=KINDS, bounds=BOUNDS, blocks=True):
    """(labels, [R, n] float64 rows): a clean row; each kind at each position of positions(n);
    with `blocks`, leading blocks of NaN and of -inf (16 elements, the first 2048-block, the whole
    row), NaN after a leading -inf block, and all -inf but one finite element at each position."""
    labels, rows = ["clean"], [randn(n)]

    def add(label, x):
        labels.append(label)
        rows.append(x)
    for kind in kinds:
        for p in positions(n, bounds):
            x = randn(n)
            x[p] = value(kind, dtype)
            add(f"{kind}@{p}", x)
    if blocks:
        for kind in ("nan", "-inf"):
            for L in sorted({min(n, 16), min(n, 2048), n}):
                x = randn(n)
                x[:L] = value(kind, dtype)
                add(f"{kind}[:{L}]", x)
        if n > 1:
            x = randn(n)
            x[: min(n - 1, 2048)] = -math.inf
            x[-1] = math.nan
            add(f"-inf[:{min(n - 1, 2048)}],nan@{n - 1}", x)
        for p in positions(n, bounds):
            x = torch.full((n,), -math.inf, dtype=F64)
            x[p] = randn(1).item()
            add(f"only@{p}finite", x)
    return labels, torch.stack(rows)


def _at(label):
    """The position a hostile_rows label names ("nan@2048", "only@15finite"), or None."""
    m = re.search(r"@(\d+)", label)
    return None if m is None else int(m.group(1))


# ---- the comparison -----------------------------------------------------------------------

def _describe(bad, labels, o, r, t):
    idx = bad.nonzero()[:4].tolist()
    out = []
    for i in idx:
        at = tuple(i)
        name = f"{labels[i[0]]} " if labels is not None and len(i) >= 1 and len(labels) > i[0] else ""
        out.append(f"{name}{at}: ours {o[at].item():.6g}, float64 {r[at].item():.6g}, torch {t[at].item():.6g}")
    return "; ".join(out)


def assert_like_torch(what, ours, ref64, torch_dt, dtype, scale=1.0, labels=None, sign=False):
    """ours (dtype) against torch's float64 result on the same inputs, as helpers.assert_close, but
    torch's own error (the slack) taken per row (dim 0) rather than over the whole tensor."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert ours.dtype == torch_dt.dtype, f"{what}: dtype {ours.dtype} != torch's {torch_dt.dtype}"
    o, r, t = (v.detach().double().cpu() for v in (ours, ref64, torch_dt))
    err = (t - r).abs()
    err = torch.where(err.isfinite(), err, torch.zeros_like(err))
    slack = 2 * (err.flatten(1).amax(1).view(-1, *[1] * (o.dim() - 1)) if o.dim() >= 2 and o.numel() else err)
    atol, rtol = TOL[dtype]
    same = (o == r) | (o.isinf() & (o == r.to(dtype).double()))  # inf where float64 overflows the dtype
    near = (o - r).abs() <= atol * scale + rtol * r.abs().nan_to_num(0.0, 0.0, 0.0) + slack
    bad = (o.isnan() != r.isnan()) | (~o.isnan() & ~r.isnan() & ~same & ~near)
    # where torch's own result in the dtype overflowed (inf or NaN where the float64 reference is
    # finite or another infinity: an intermediate beyond the dtype's range, e.g. a sum of terms of
    # both signs that overflow), ours may be torch's or near the reference
    over = ~t.isfinite() & ~((t == r) | (t.isnan() & r.isnan()))
    bad &= ~(over & ((o == t) | (o.isnan() & t.isnan()) | near))
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements off (NaN placement, infinity or "
                           f"tolerance); first: {_describe(bad, labels, o, r, t)}")
    if sign:  # +-0.0 as torch's
        zero = (o == 0) & (r == 0)
        assert torch.equal(o[zero].signbit(), r[zero].signbit()), f"{what}: sign of 0.0 differs from torch's"


def _leaf(m, dtype, device="cpu"):
    if not isinstance(m, torch.Tensor):
        return m
    if not m.is_floating_point():
        return m.to(device)
    return m.detach().to(device, dtype, copy=True).requires_grad_()


def _outs(fn, ins):
    outs = fn(*ins)
    return tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)


def _grads(outs, ins, gouts):
    """The gradients of the floating inputs (leaves) of `ins` for output gradients gouts."""
    leaves = [v for v in ins if isinstance(v, torch.Tensor) and v.requires_grad]
    pairs = [(o, g) for o, g in zip(outs, gouts) if g is not None and o.requires_grad]
    gs = torch.autograd.grad([o for o, _ in pairs], leaves, [g.to(o) for o, g in pairs], allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, gs)]


def _run(fn, ins, gouts):
    outs = _outs(fn, ins)
    return outs, _grads(outs, ins, gouts)


@contextlib.contextmanager
def one_thread():
    """torch's own ops (the references, the comparisons) on one thread: on a busy 2-core machine
    each of torch's parallel regions waits for a second thread (ms per op); ours keeps both."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def check(what, ours, ref, master, dtype, scale=1.0, gscale=None, labels=None, gouts=None, sign=False,
          device="cpu"):
    """ours(*inputs) on `device` against ref(*inputs) (torch's op, on the CPU) in float64 on the same
    values rounded to dtype: the outputs and the gradients of every floating input, for output
    gradients `gouts` (float64, rounded to dtype; default: randn). Integer outputs (indices) must be
    equal. Tensors the functions capture go to their inputs' device (x.device)."""
    master = [m.to(dtype).double() if isinstance(m, torch.Tensor) and m.is_floating_point() else m for m in master]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o_in = [_leaf(m, dtype, device) for m in master]
        o_out = _outs(ours, o_in)
        if gouts is None:
            gouts = [randn(*o.shape) if o.is_floating_point() else None for o in o_out]
        gouts = [None if g is None else g.to(dtype).double() for g in gouts]
        o_g = _grads(o_out, o_in, gouts)
        with one_thread():
            t_out, t_g = _run(ref, [_leaf(m, dtype) for m in master], gouts)
            r_out, r_g = _run(ref, [_leaf(m, F64) for m in master], gouts)
    with one_thread():
        _compare(what, dtype, scale, gscale, labels, sign, o_out, o_g, t_out, t_g, r_out, r_g)


def _compare(what, dtype, scale, gscale, labels, sign, o_out, o_g, t_out, t_g, r_out, r_g):
    for k, (o, t, r) in enumerate(zip(o_out, t_out, r_out)):
        if not o.is_floating_point():
            o = o.cpu()
            assert torch.equal(o, r), f"{what} output {k}: {_describe(o != r, labels, o, r, t)}"
            continue
        assert_like_torch(f"{what} [{dtype}] output {k}", o, r, t, dtype, scale, labels, sign)
    for k, (o, t, r) in enumerate(zip(o_g, t_g, r_g)):
        assert_like_torch(f"{what} [{dtype}] grad {k}", o, r, t, dtype, gscale or scale, labels)


# ---- log_softmax --------------------------------------------------------------------------

@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
def test_log_softmax_rows(n, dtype):
    """Rows along the last dim: each placement in a row of its own, all rows in one call."""
    kinds, bounds = (KINDS, BOUNDS) if n < BIG else (("nan", "-inf", "huge"), BIG_BOUNDS)
    labels, x = hostile_rows(n, dtype, kinds, bounds)
    # (the backward's row sum of dy: 64 float chains at 2^16 elements, torch's cascade sum closer)
    check(f"log_softmax n={n}", lambda v: TF.log_softmax(v, -1), lambda v: torch.log_softmax(v, -1), [x], dtype,
          scale=4 * max(1.0, math.sqrt(n) / 16), labels=labels)


@DT
@pytest.mark.parametrize("n", [17, 2049])
@pytest.mark.parametrize("dim", [0, 1])
def test_log_softmax_inner_rows(n, dim, dtype):
    """Rows at a stride (the kernels' column loops): the rows of hostile_rows laid along dim."""
    _, x = hostile_rows(n, dtype, ("nan", "inf", "-inf", "huge"))
    x = x[: x.shape[0] // 4 * 4].view(-1, 4, n)
    x = x.permute(0, 2, 1).contiguous() if dim == 1 else x.permute(2, 0, 1).contiguous()
    check(f"log_softmax n={n} dim={dim}", lambda v: TF.log_softmax(v, dim), lambda v: torch.log_softmax(v, dim),
          [x], dtype, scale=4)


@DT
@pytest.mark.parametrize("n", [17, 100])
def test_log_softmax_column_blocks(n, dtype):
    """More than 256 rows at a stride (CPU: blocks of columns; a block's passes stay in cache): the
    hostile rows repeated to 2 x 2100 rows laid along dim 1 (the forward's blocks: 8 of 256 and 52;
    the backward's with 16 rows or more: 2048 and 52)."""
    _, x = hostile_rows(n, dtype, ("nan", "inf", "-inf", "huge"))
    x = x.repeat((4200 + x.shape[0] - 1) // x.shape[0], 1)[:4200].view(2, 2100, n).permute(0, 2, 1).contiguous()
    check(f"log_softmax n={n} blocks", lambda v: TF.log_softmax(v, 1), lambda v: torch.log_softmax(v, 1), [x],
          dtype, scale=4)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_log_softmax_column_blocks_at_any_thread_count(dtype):
    """A segmentation's [N, C, H, W] over dim 1 (4500 columns an image: the forward's blocks 17 x 256
    + 148, the backward's 2 x 2048 + 404; the threads' shares of the blocks split inside an image):
    the output, the gradient and the double backward's gradients are the same bits at 1 and 2 threads."""
    g = torch.Generator().manual_seed(5)
    x0 = (torch.randn(3, 21, 50, 90, generator=g, dtype=F64) * 3).to(dtype)
    gy, gg = (torch.randn(x0.shape, generator=g, dtype=F64).to(dtype) for _ in range(2))

    def run():
        x = x0.clone().requires_grad_()
        y = TF.log_softmax(x, 1)
        (dx,) = torch.autograd.grad(y, x, gy, create_graph=True)
        (ddx,) = torch.autograd.grad(dx, x, gg)  # through log_softmax_double_backward
        return [y.detach(), dx.detach(), ddx]

    n = torch.get_num_threads()
    try:
        outs = []
        for k in (1, 2):
            torch.set_num_threads(k)
            outs.append(run())
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def _short_rows(n, dtype):
    """Rows of n < 32 elements (the flat path: 2048 // n rows a block, kGrain // n a thread task),
    hostile rows on the blocks' and the tasks' first and last rows."""
    per_block, per_task = 2048 // n, 32768 // n
    R = max(3 * per_block, per_task + per_block) + 5
    x = randn(R, n)
    hot = sorted({0, R - 1} | {b + d for b in (per_block, 2 * per_block, per_task) for d in (-1, 0) if b + d < R})
    kinds = ("nan", "-inf", "all-inf", "inf", "huge", "only-finite")
    for k, r in enumerate(hot):
        kind = kinds[k % len(kinds)]
        if kind == "all-inf":
            x[r] = -math.inf
        elif kind == "only-finite":
            x[r] = -math.inf
            x[r, r % n] = 0.5
        else:
            x[r, r % n] = value(kind, dtype)
    return x


@DT
@pytest.mark.parametrize("n", [1, 3, 10, 31])
def test_log_softmax_short_rows(n, dtype):
    x = _short_rows(n, dtype)
    check(f"log_softmax short n={n}", lambda v: TF.log_softmax(v, 1), lambda v: torch.log_softmax(v, 1), [x], dtype,
          scale=4)


# ---- cross_entropy ------------------------------------------------------------------------
# Variants: class indices (none, mean with weight and ignored rows, label smoothing) and
# probabilities. Ignored rows get finite logits: there torch's gradient is NaN for non-finite
# logits, ours exactly 0 (documented in csrc/cross_entropy.cpp and TF.cross_entropy).

CE_VARIANTS = {
    "none": dict(reduction="none"),
    "mean_weight_ignore": dict(reduction="mean", weight=True, ignore=True),
    "smooth_none": dict(reduction="none", label_smoothing=0.1),
    "smooth_weight_sum": dict(reduction="sum", label_smoothing=0.3, weight=True),
    "prob_none": dict(reduction="none", prob=True),
    "prob_smooth_weight_mean": dict(reduction="mean", label_smoothing=0.2, weight=True, prob=True),
}


def _ce_fns(opts, C):
    """ours and torch's cross_entropy for a variant; weight k/8 (exact in every dtype, one class 0)."""
    kw = {k: v for k, v in opts.items() if k in ("reduction", "label_smoothing")}
    w8 = torch.randint(1, 17, (C,)) if opts.get("weight") else None
    if w8 is not None and C > 2:
        w8[1] = 0

    def w(x):
        return None if w8 is None else (w8.to(x.device, x.dtype) / 8)
    return (lambda x, t: TF.cross_entropy(x, t, weight=w(x), **kw),
            lambda x, t: F.cross_entropy(x, t, weight=w(x), **kw))


def _ce_inputs(x, labels, opts, class_dim=1):
    """Targets for rows x (class dim `class_dim`): the hostile position of a row's label for every
    other row (a NaN / -inf / huge target logit), else random; probabilities: a softmax with a 0 at
    that position for every third row (0 * -inf: NaN, as torch). Ignored rows: finite logits."""
    xm = x.movedim(class_dim, -1)
    C = xm.shape[-1]
    lead = xm.shape[:-1]
    t = torch.randint(0, C, lead)
    flat_t = t.view(-1)
    for r, lab in enumerate(labels or []):
        if _at(lab) is not None and r % 2 == 1 and r < flat_t.numel():
            flat_t[r] = _at(lab) % C
    if opts.get("prob"):
        q = torch.softmax(randn(*lead, C), -1)
        qf = q.view(-1, C)
        rows = torch.arange(0, qf.shape[0], 3)
        qf[rows, flat_t[rows]] = 0.0
        return x, q.movedim(-1, class_dim)
    if opts.get("ignore"):
        drop = torch.zeros(lead, dtype=torch.bool)
        drop.view(-1)[2::5] = True
        xm[drop] = randn(int(drop.sum()), C)
        t[drop] = -100
    return x, t


@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
@pytest.mark.parametrize("variant", list(CE_VARIANTS))
def test_cross_entropy_rows(n, variant, dtype):
    """(N, C) logits, C = n: the online log-sum-exp's 2048-blocks (class indices), the two-pass
    probability rows (C >= 32), the short rows (C < 32), the smoothing's online pass."""
    opts = CE_VARIANTS[variant]
    if n == BIG and variant not in ("none", "prob_none"):
        pytest.skip("one class-index and one probability variant at 2^16 + 3 classes (run time)")
    kinds, bounds = (KINDS, BOUNDS) if n < BIG else (("nan", "-inf", "huge"), BIG_BOUNDS)
    labels, x = hostile_rows(n, dtype, kinds, bounds)
    x, t = _ce_inputs(x, labels, opts)
    ours, ref = _ce_fns(opts, n)
    check(f"cross_entropy {variant} C={n}", ours, ref, [x, t], dtype, scale=8, labels=labels)


@DT
@pytest.mark.parametrize("C", [17, 2049])
@pytest.mark.parametrize("variant", ["none", "smooth_weight_sum", "prob_none"])
def test_cross_entropy_spatial(C, variant, dtype):
    """(N, C, d) logits: rows at stride d (the scalar online pass, Online<A>::add)."""
    opts = CE_VARIANTS[variant]
    _, x = hostile_rows(C, dtype, ("nan", "inf", "-inf", "huge"))
    x = x[: x.shape[0] // 4 * 4].view(-1, 4, C).permute(0, 2, 1).contiguous()  # (N, C, 4)
    x, t = _ce_inputs(x, None, opts)
    ours, ref = _ce_fns(opts, C)
    check(f"cross_entropy {variant} (N, {C}, 4)", ours, ref, [x, t], dtype, scale=8)


@DT
@pytest.mark.parametrize("n", [1, 3, 10, 31])
@pytest.mark.parametrize("variant", ["none", "mean_weight_ignore", "prob_none"])
def test_cross_entropy_short_rows(n, variant, dtype):
    opts = CE_VARIANTS[variant]
    x = _short_rows(n, dtype)
    x, t = _ce_inputs(x, None, opts)
    ours, ref = _ce_fns(opts, n)
    check(f"cross_entropy {variant} short C={n}", ours, ref, [x, t], dtype, scale=8)


@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("shape", ["short", "long", "spatial", "smooth", "prob"])
def test_cross_entropy_tied_large_logits(shape, dtype):
    """Tied maxima of large magnitude (float32 already at 1e4): torch's softmax there is exact,
    1/k for k tied classes; its gradient must not depend on the logits' offset. (A backward
    computing p = exp(x - lse) from one saved number lse = m + log s loses log s in m's rounding:
    the forward saves (m, log s), and p = exp((x - m) - log s).)"""
    big = {F32: 1e4, BF16: 1e8, F64: 1e300}[dtype]
    mags = [big] if dtype == F64 else [big, 3e7, 1e8]
    C = {"short": 5, "long": 2049, "spatial": 7, "smooth": 40, "prob": 40}[shape]
    rows = []
    for v in mags:
        for k in (2, 3):
            # the others within a few units of the max (float32 at 1e4: all distinct); bfloat16, whose
            # step at 1e8 is 2^19, far below it (p = 0 there)
            x = v - 1 - 3 * torch.rand(C, dtype=F64) if dtype != BF16 else torch.full((C,), v - 4e6, dtype=F64)
            x[:k] = v
            rows.append(x)
    x = torch.stack(rows)
    opts = {"short": dict(reduction="none"), "long": dict(reduction="none"), "spatial": dict(reduction="none"),
            "smooth": dict(reduction="none", label_smoothing=0.1), "prob": dict(reduction="none", prob=True)}[shape]
    if shape == "spatial":
        x = x.unsqueeze(-1).expand(-1, -1, 3).contiguous()
    x, t = _ce_inputs(x, None, opts)
    ours, ref = _ce_fns(opts, C)
    check(f"cross_entropy tied logits {shape} C={C}", ours, ref, [x, t], dtype, scale=1, gscale=1)


@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("C", [4, 40])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_cross_entropy_smoothing_large_weights(C, reduction, dtype):
    """Label smoothing with class weights whose sum exceeds the dtype's range, each weight finite
    (their sum 1.5 times the max): torch's gradient is finite (each weight is scaled by eps / C before
    the terms are summed). The backward must not form the unscaled sum of the weights first."""
    w = torch.full((C,), torch.finfo(dtype).max / C * 1.5, dtype=F64)  # (1.5 * max first is inf in float64)
    x = randn(5, C)
    t = torch.randint(0, C, (5,))

    def fn(f):
        return lambda v, tt: f(v, tt, weight=w.to(v.device, v.dtype), label_smoothing=0.1, reduction=reduction)
    # output gradients within [-1, 1]: beyond ~2.9, torch's own float64 gradient overflows (g w_t near max)
    g = torch.rand(5 if reduction == "none" else (), dtype=F64) * 2 - 1
    check(f"cross_entropy smoothing, weights near max, C={C} {reduction}", fn(TF.cross_entropy),
          fn(F.cross_entropy), [x, t], dtype, gouts=[g])



@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("C", [4, 40])
@pytest.mark.parametrize("variant", ["smooth_none", "smooth_sum", "prob_none"])
def test_cross_entropy_infinite_weight(variant, C, dtype):
    """An infinite class weight: torch's loss is +inf (the weight times a negative log-probability).
    The one-pass sum a = sum u (m - x) meets inf * 0 at the row's max (NaN): such rows are summed
    again term by term, as torch sums them."""
    w = torch.rand(C, dtype=F64) + 0.5
    w[C // 2] = float("inf")
    x = randn(5, C)
    prob = variant.startswith("prob")
    t = torch.softmax(randn(5, C), 1) if prob else torch.randint(0, C, (5,))
    kw = dict(label_smoothing=0.1, reduction=variant.split("_")[1])

    def fn(f):
        return lambda v, tt: f(v, tt, weight=w.to(v.device, v.dtype), **kw)
    check(f"cross_entropy {variant}, an infinite weight, C={C}", fn(TF.cross_entropy), fn(F.cross_entropy),
          [x, t], dtype)


# ---- nll_loss -----------------------------------------------------------------------------

@DT
@pytest.mark.parametrize("n", [1, 17, 2049])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nll_loss_rows(n, reduction, dtype):
    nll_case(n, reduction, dtype)


def nll_case(n, reduction, dtype, bounds=BOUNDS, device="cpu"):
    labels, x = hostile_rows(n, dtype, ("nan", "inf", "-inf", "huge", "denormal"), bounds, blocks=False)
    t = torch.randint(0, n, (x.shape[0],))
    for r, lab in enumerate(labels):
        if _at(lab) is not None and r % 3:
            t[r] = _at(lab)
    t[3::7] = -100
    w8 = torch.randint(0, 17, (n,))

    def fn(f):
        return lambda v, tt: f(v, tt, w8.to(v.device, v.dtype) / 8, reduction=reduction)
    check(f"nll_loss {reduction} C={n}", fn(TF.nll_loss), fn(F.nll_loss), [x, t], dtype, scale=4, labels=labels,
          device=device)


# ---- amax ---------------------------------------------------------------------------------

def _with_ties(x):
    """Half the rows made of small integers (many tied maxima), hostile values kept."""
    ints = torch.randint(-2, 3, x.shape).double()
    keep = ~x.isfinite() | (x.abs() > 1e3) | (x == 0) | (x.abs() < 1e-3)
    y = torch.where(keep, x, ints)
    return torch.where(torch.arange(x.shape[0]).view(-1, *[1] * (x.dim() - 1)) % 2 == 0, y, x)


@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
def test_amax_rows(n, dtype):
    kinds, bounds = (KINDS, BOUNDS) if n < BIG else (("nan", "-inf", "inf"), BIG_BOUNDS)
    labels, x = hostile_rows(n, dtype, kinds, bounds)
    x = _with_ties(x)
    check(f"amax n={n}", lambda v: TF.amax(v, -1), lambda v: torch.amax(v, -1), [x], dtype, scale=4, labels=labels)


@DT
@pytest.mark.parametrize("n", [17, 2049, BIG])
@pytest.mark.parametrize("dims", [(0,), (), (0, 2)], ids=["dim0", "all", "apart"])
def test_amax_other_dims(n, dims, dtype):
    """Across rows (dim 0: the column loop), over everything, over two dims apart (a permuted copy)."""
    _, x = hostile_rows(n, dtype, ("nan", "-inf", "inf"), blocks=n < BIG)
    x = _with_ties(x)[:4 if n == BIG else None]
    x = x.view(x.shape[0], 1, n).expand(-1, 2, -1).contiguous() if dims == (0, 2) else x
    check(f"amax n={n} dims={dims}", lambda v: TF.amax(v, dims, True), lambda v: torch.amax(v, dims, True), [x],
          dtype, scale=4 * x.shape[0])


# ---- elementwise: relu, maximum, add, mse_loss, duplicate ---------------------------------

def _flat_hostile(n, dtype, kinds=KINDS, shift=0, bounds=BOUNDS):
    """n values, kinds dealt round the positions (shift: start elsewhere in the cycle)."""
    x = randn(n)
    for k, p in enumerate(positions(n, bounds)):
        x[p] = value(kinds[(k + shift) % len(kinds)], dtype)
    return x


def _hostile_grad(shape, dtype, kind, bounds=BOUNDS):
    """An output gradient with `kind` at every other boundary position."""
    g = randn(*shape)
    flat = g.view(-1)
    flat[positions(flat.numel(), bounds)[::2]] = value(kind, dtype)
    return g


@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
def test_relu(n, dtype):
    x = torch.stack([_flat_hostile(n, dtype, shift=s) for s in range(len(KINDS))])
    check(f"relu n={n}", TF.relu, torch.relu, [x.view(-1)], dtype, sign=True)
    # NaN and inf gradients where x <= 0 stay 0, as torch's threshold_backward
    check(f"relu n={n} hostile dy", TF.relu, torch.relu, [x[0]], dtype,
          gouts=[_hostile_grad(x[0].shape, dtype, "nan")])


@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
def test_maximum_same_shape(n, dtype):
    """Hostile values in both operands, many exact ties (half the elements copied across), -0.0
    against +0.0; then infinite output gradients (the loser gets exactly 0, as torch)."""
    a = torch.cat([_flat_hostile(n, dtype, shift=s) for s in range(3)])
    b = torch.cat([_flat_hostile(n, dtype, shift=s + 3) for s in range(3)])
    b[::2] = a[::2]
    z = torch.rand(a.shape) < 0.05
    a[z], b[z] = -0.0, 0.0
    check(f"maximum n={n}", TF.maximum, torch.maximum, [a, b], dtype)
    check(f"maximum n={n} reversed", TF.maximum, torch.maximum, [b, a], dtype)
    check(f"maximum n={n} hostile dy", TF.maximum, torch.maximum, [a, b], dtype,
          gouts=[_hostile_grad(a.shape, dtype, "inf")])


BCAST = {"[R,C]+[R,1]": ((0, 1), (0, None)), "[R,C]+[1,C]": ((0, 1), (None, 1)), "[C]+[R,C]": ((1,), (0, 1)),
         "[R,1]+[1,C]": ((0, None), (None, 1)), "[1,C]+[R,1]": ((None, 1), (0, None)), "[R,C]+[]": ((0, 1), ())}


def _bcast_operands(R, C, dtype, pair, shift):
    """The two operands of a broadcast pair, hostile values at the positions of their own numel,
    and (where the shapes allow) ties with the other operand."""
    def make(dims, s):
        shape = [R if d == 0 else C if d == 1 else 1 for d in dims]
        numel = math.prod(shape)
        return _flat_hostile(numel, dtype, shift=s).view(shape) if numel > 1 else randn(*shape)
    a, b = make(pair[0], shift), make(pair[1], shift + 2)
    if a.shape == (R, C) and b.numel() > 1:
        a[::3] = b.expand(R, C)[::3] if b.shape != (C,) else b
    return a, b


@DT
@pytest.mark.parametrize("op", ["maximum", "add"])
@pytest.mark.parametrize("pair", list(BCAST))
@pytest.mark.parametrize("R,C", [(3, 17), (65, 33), (5, 2049), (17, 4097), (BIG, 1), (1, BIG)])
def test_broadcast(op, pair, R, C, dtype):
    """Broadcast shapes with hostile values; add's gradient with NaN / inf output gradients summed
    down to [R, 1], [1, C], [C] and [] (add_backward)."""
    broadcast_case(op, pair, R, C, dtype)


def broadcast_case(op, pair, R, C, dtype, bounds=BOUNDS, device="cpu"):
    if (R, C) in ((BIG, 1), (1, BIG)) and pair not in ("[R,C]+[R,1]", "[R,C]+[1,C]"):
        pytest.skip("the degenerate shapes once each")
    a, b = _bcast_operands(R, C, dtype, BCAST[pair], 0)
    ours, ref = (TF.maximum, torch.maximum) if op == "maximum" else (TF.add, torch.add)
    fan = max(R, C)
    check(f"{op} {pair} R={R} C={C}", ours, ref, [a, b], dtype, gscale=4 * fan, device=device)
    out = torch.broadcast_shapes(a.shape, b.shape)
    check(f"{op} {pair} R={R} C={C} hostile dy", ours, ref, [a, b], dtype, gscale=4 * fan, device=device,
          gouts=[_hostile_grad(out, dtype, "nan" if op == "maximum" else "inf", bounds)])


@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
def test_add_flat(n, dtype):
    a = torch.cat([_flat_hostile(n, dtype, shift=s) for s in range(2)])
    b = torch.cat([_flat_hostile(n, dtype, shift=s + 4) for s in range(2)])
    check(f"add n={n}", TF.add, torch.add, [a, b], dtype, sign=True)


@DT
@pytest.mark.parametrize("n", SIZES + [BIG])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mse_loss(n, reduction, dtype):
    """Flat and broadcast ([R, C] against [C]) with hostile values in input and target."""
    mse_case(n, reduction, dtype)


def mse_case(n, reduction, dtype, bounds=BOUNDS, device="cpu"):
    x, t = _flat_hostile(n, dtype, bounds=bounds), _flat_hostile(n, dtype, shift=3, bounds=bounds)

    def fn(f):
        return lambda u, v: f(u, v, reduction=reduction)
    check(f"mse_loss {reduction} n={n}", fn(TF.mse_loss), fn(F.mse_loss), [x, t], dtype, scale=4, device=device)
    if n <= 4097:
        X = torch.stack([_flat_hostile(n, dtype, shift=s, bounds=bounds) for s in range(3)])
        check(f"mse_loss {reduction} [3, {n}] vs [{n}]", fn(TF.mse_loss), fn(F.mse_loss), [X, t], dtype, scale=12,
              device=device)


@DT
@pytest.mark.parametrize("n", [1, 17, 2049, BIG])
@pytest.mark.parametrize("copies", [2, 3])
def test_duplicate(n, copies, dtype):
    duplicate_case(n, copies, dtype)


def duplicate_case(n, copies, dtype, bounds=BOUNDS, device="cpu"):
    x = _flat_hostile(n, dtype, bounds=bounds)
    g = [randn(n) for _ in range(copies)]
    g[0] = _hostile_grad((n,), dtype, "inf", bounds)
    g[-1] = _hostile_grad((n,), dtype, "nan", bounds).roll(1)
    check(f"duplicate n={n} x{copies}", lambda v: TF.duplicate(v, copies),
          lambda v: tuple(v.clone() for _ in range(copies)), [x], dtype, gouts=g, sign=True, device=device)


# ---- linear, linear_relu ------------------------------------------------------------------

@DT
@pytest.mark.parametrize("M,K,N", [(1, 17, 33), (4, 2049, 17), (5, 257, 31), (13, 33, 513), (145, 64, 65)])
@pytest.mark.parametrize("kind", ["nan_x", "inf_w", "inf_b", "zero_times_inf"])
@pytest.mark.parametrize("op", ["linear", "linear_relu"])
def test_linear(op, M, K, N, kind, dtype):
    """NaN and infinities in x, W or bias at the GEMM's tile, k-block and panel edges (dot products
    for up to 4 rows, packed panels, the bfloat16 BF16-dot kernels); 0 * inf gives NaN."""
    linear_case(op, M, K, N, kind, dtype)


def linear_case(op, M, K, N, kind, dtype, device="cpu"):
    x, w, b = randn(M, K), randn(N, K) / math.sqrt(K), randn(N)
    if kind == "nan_x":
        x.view(-1)[positions(M * K)[::2]] = math.nan
    elif kind == "inf_w":
        w.view(-1)[positions(N * K)[::2]] = math.inf
        w.view(-1)[positions(N * K)[1::2]] = -math.inf
    elif kind == "inf_b":
        b[positions(N)] = -math.inf
    else:
        x[:, positions(K)] = 0.0
        w[:, positions(K)[::2]] = math.inf
    ours = TF.linear if op == "linear" else TF.linear_relu
    ref = F.linear if op == "linear" else (lambda u, v, c: torch.relu(F.linear(u, v, c)))
    check(f"{op} {M}x{K}x{N} {kind}", ours, ref, [x, w, b], dtype, scale=4 * math.sqrt(max(K, M, N)), device=device)


# ---- nearest_neighbor ---------------------------------------------------------------------

@DT
@pytest.mark.parametrize("N,K,D", [(5, 17, 3), (65, 16, 17), (64, 33, 15), (3, 9, 2049), (1000, 31, 8)])
@pytest.mark.parametrize("kind", ["ties", "nan_x", "inf_x", "nan_w", "inf_both"])
def test_nearest_neighbor(N, K, D, kind, dtype):
    """Small integers (exact distances in every accumulation type: no near ties to round apart),
    duplicate prototypes and rows equal to prototypes; NaN and infinities at the tiles' edges
    (4 rows x 16 or 8 prototypes): the index exactly torch.argmin's (the first NaN, the lowest
    tied index), the distance and both gradients as torch's."""
    nn_case(N, K, D, kind, dtype)


def nn_case(N, K, D, kind, dtype, bounds=BOUNDS, device="cpu"):
    x = torch.randint(-3, 4, (N, D)).double()
    w = torch.randint(-3, 4, (K, D)).double()
    w[K // 2:] = w[: K - K // 2].flip(0)  # duplicates at higher indices
    x[::3] = w[torch.randint(0, K, (len(range(0, N, 3)),))]
    if kind == "nan_x":
        x.view(-1)[positions(N * D, bounds)[::2]] = math.nan
    elif kind == "inf_x":
        x.view(-1)[positions(N * D, bounds)[::2]] = math.inf
    elif kind == "nan_w":
        w.view(-1)[positions(K * D, bounds)[::2]] = math.nan
    elif kind == "inf_both":
        x.view(-1)[positions(N * D, bounds)[::2]] = math.inf
        w.view(-1)[positions(K * D, bounds)[::3]] = math.inf
    check(f"nearest_neighbor {N},{K},{D} {kind}", TF.nearest_neighbor, _nn_ref, [x, w], dtype, scale=4 * D,
          gscale=4 * N * D, device=device)


# ---- SGD ----------------------------------------------------------------------------------

SGD_OPTIONS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "nesterov_wd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "damp_maximize_wd": dict(lr=0.1, momentum=0.5, dampening=0.3, maximize=True, weight_decay=0.1),
}


@DT
@pytest.mark.parametrize("options", list(SGD_OPTIONS))
@pytest.mark.parametrize("kind", ["nan", "inf", "huge", "denormal"])
def test_sgd(options, kind, dtype):
    """Params of the boundary sizes in one group (one fused call spans them, split over the threads
    at kGrain), hostile gradients at the boundaries, three steps: each param as torch.optim.SGD's
    in float64 after each step."""
    sgd_case(options, kind, dtype, [1, 15, 16, 17, 33, 2049, 4097, BIG])


def sgd_case(options, kind, dtype, sizes, device="cpu"):
    opts = SGD_OPTIONS[options]
    start = [randn(n).to(dtype).double() for n in sizes]
    ours = [p.to(device, dtype, copy=True) for p in start]
    ref = [p.clone() for p in start]
    o_opt, r_opt = SGD(ours, **opts), torch.optim.SGD(ref, **opts)
    for step in range(3):
        for o, r in zip(ours, ref):
            g = randn(o.numel())
            g[positions(o.numel())[step::3]] = value(kind, dtype)
            o.grad = g.to(device, dtype)
            r.grad = g.to(dtype).double()
        o_opt.step()
        with one_thread():
            r_opt.step()
            for k, (o, r) in enumerate(zip(ours, ref)):
                assert_like_torch(f"sgd {options} {kind} [{dtype}] step {step} param {k} (numel {o.numel()})", o,
                                  r, r.to(dtype), dtype, scale=4)
