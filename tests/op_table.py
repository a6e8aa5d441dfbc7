"""One table of ops, drives every test: for each op, ours, torch's reference, and cases.

A case builds float64 CPU master inputs; the tests cast them to the dtype and device under
test and feed the same rounded values, in float64, to torch's reference.
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, List

import torch

import torchmodules.functional as TF

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DTYPES = [F64, F32, F16, BF16]

# Tolerance: |ours - ref| <= atol * scale + rtol * |ref| + 2 * (torch's own error in that
# dtype against the float64 reference, at worst), per element.
TOL = {F64: (1e-10, 1e-9), F32: (1e-5, 1e-5), F16: (1e-3, 2e-3), BF16: (1e-2, 1.6e-2)}


def randn(*shape):
    return torch.randn(shape, dtype=F64)


def strided(t):
    """A non-contiguous view with t's values: every second element of a wider tensor."""
    if t.dim() == 0:
        return t
    w = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype)
    w[..., ::2] = t
    return w[..., ::2]


def expanded(shape):
    """A stride-0 (expanded) tensor of `shape`: one row repeated."""
    return randn(*shape[-1:]).expand(*shape)


def special(*shape, kinds=("inf", "-inf", "nan", "big")):
    """randn with some entries set to inf, -inf, NaN or +-1e4."""
    t = randn(*shape)
    flat = t.view(-1)
    n = flat.numel()
    for k, kind in enumerate(kinds):
        idx = torch.randperm(n)[: max(1, n // 8)]
        flat[idx] = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(kind, 0.0) if kind != "big" else \
            torch.randn(len(idx), dtype=F64) * 1e4
    return t


def ties(*shape):
    """Small integers, so many elements compare equal."""
    return torch.randint(-3, 4, shape).to(F64)


@dataclass
class Case:
    name: str
    make: Callable[[], list]       # master inputs: float64 CPU tensors and plain values
    scale: float = 1.0             # multiplies atol (e.g. sqrt(K) for a dot product)
    smooth: bool = True            # finite, no ties: usable for gradcheck and opcheck


@dataclass
class OpSpec:
    name: str
    ours: Callable
    ref: Callable
    cases: List[Case] = field(default_factory=list)


def _lin(m, k, n, bias=True, xform=lambda t: t, lead=None):
    def make():
        xs = (*(lead or ()), m, k) if m is not None else (k,)
        return [xform(randn(*xs)), randn(n, k) / math.sqrt(max(k, 1)), randn(n) if bias else None]
    return make


# ---- CrossEntropy cases: [logits, target, weight in eighths (int64) or None, keyword options] ------
# Weights are k/8 (exact in every dtype) so ours and torch see the same weight; they are built
# inside the call (torch's weight is not differentiable for class indices).

def _ce_weight(w8, x):
    return None if w8 is None else w8.to(device=x.device, dtype=x.dtype) / 8


def _ce(n, c, *, d=(), prob=False, weight=False, zero_weight=False, ignore=0.0, xform=lambda t: t, tform=None,
        unbatched=False, scale=1.0, **kw):
    """Logits (n, c, *d) (or (c,) unbatched), class indices (a fraction `ignore` set to the
    ignore_index) or probabilities, optional weight, options kw."""
    def make():
        shape = (c,) if unbatched else (n, c, *d)
        x = randn(*shape) * scale
        if prob:
            t = torch.softmax(randn(*shape), 0 if unbatched else 1)
        else:
            t = torch.randint(0, c, () if unbatched else (n, *d))
            ii = kw.get("ignore_index", -100)
            t = torch.where(torch.rand(t.shape) < ignore, torch.full_like(t, ii), t)
        w8 = torch.randint(1, 17, (c,)) if weight else None
        if zero_weight:
            w8[0] = 0
        return [xform(x), (tform or (lambda v: v))(t), w8, dict(kw)]
    return make


def _ce_neg_inf(*, prob=False, weight=False, n=6, c=9, **kw):
    """-inf logits away from the (class-index) targets: torch's loss is finite without smoothing."""
    def make():
        x = randn(n, c)
        t = torch.randint(0, c, (n,))
        mask = torch.rand(n, c) < 0.3
        mask[torch.arange(n), t] = False
        x[mask] = -math.inf
        w8 = torch.randint(1, 17, (c,)) if weight else None
        if prob:
            t = torch.softmax(randn(n, c), 1)
        return [x, t, w8, dict(kw)]
    return make


def _ce_all_neg_inf_row():
    x = torch.cat([randn(2, 5), torch.full((1, 5), -math.inf, dtype=F64)])
    return [x, torch.tensor([1, 4, 2]), None, {}]


_CE_CASES = [
    Case("mean", _ce(5, 7)),
    Case("sum", _ce(5, 7, reduction="sum")),
    Case("none", _ce(5, 7, reduction="none")),
    Case("weight_mean", _ce(9, 6, weight=True)),
    Case("weight_sum", _ce(9, 6, weight=True, reduction="sum")),
    Case("weight_none", _ce(9, 6, weight=True, reduction="none")),
    Case("zero_weight_class", _ce(9, 4, weight=True, zero_weight=True)),
    Case("ignore_mean", _ce(12, 5, ignore=0.4)),
    Case("ignore_weight_mean", _ce(12, 5, ignore=0.4, weight=True)),
    Case("ignore_index_2_none", _ce(12, 5, ignore=0.3, ignore_index=2, reduction="none")),
    Case("all_ignored_mean", _ce(4, 5, ignore=1.0), smooth=False),  # 0 / 0 = NaN, as torch
    Case("all_ignored_sum", _ce(4, 5, ignore=1.0, reduction="sum")),
    Case("all_ignored_none_smooth", _ce(4, 5, ignore=1.0, reduction="none", label_smoothing=0.2)),
    Case("all_ignored_weight_smooth_mean", _ce(4, 5, ignore=1.0, weight=True, label_smoothing=0.2), smooth=False),
    Case("smooth_mean", _ce(8, 7, label_smoothing=0.1)),
    Case("smooth_sum", _ce(8, 7, label_smoothing=0.3, reduction="sum")),
    Case("smooth_weight_mean", _ce(8, 7, weight=True, label_smoothing=0.2)),
    Case("smooth_weight_ignore_mean", _ce(10, 7, weight=True, ignore=0.3, label_smoothing=0.25)),
    Case("smooth_weight_ignore_none", _ce(10, 7, weight=True, ignore=0.3, label_smoothing=0.25, reduction="none")),
    Case("smooth_one", _ce(5, 6, label_smoothing=1.0)),
    Case("smooth_negative", _ce(5, 6, label_smoothing=-0.2)),  # torch: no smoothing
    Case("nd_mean", _ce(3, 5, d=(4, 2), weight=True, ignore=0.2, label_smoothing=0.1)),
    Case("nd_none", _ce(2, 6, d=(3, 5), ignore=0.2, reduction="none")),
    Case("nd_sum_weight", _ce(2, 4, d=(7,), weight=True, reduction="sum")),
    # CPU: rows at stride inner >= 16 with class indices and no smoothing run across the rows (blocks of 256
    # rows, here 256 + 44); the other strided rows are gathered into contiguous ones (short and long rows)
    Case("nd_cols_none", _ce(2, 5, d=(300,), weight=True, ignore=0.2, reduction="none"), smooth=False),
    Case("nd_cols_mean", _ce(3, 6, d=(17, 3), ignore=0.3)),
    Case("nd_cols_smooth_gathered", _ce(2, 6, d=(20,), weight=True, ignore=0.2, label_smoothing=0.2)),
    Case("nd_gathered_long", _ce(3, 40, d=(5,), weight=True, ignore=0.2)),
    Case("nd_gathered_short", _ce(40, 6, d=(3,), reduction="none")),
    Case("prob_nd_gathered", _ce(2, 5, d=(20,), prob=True, weight=True, label_smoothing=0.1)),
    Case("unbatched_mean", _ce(None, 7, unbatched=True)),
    Case("unbatched_none_smooth_weight", _ce(None, 7, unbatched=True, weight=True, label_smoothing=0.1,
                                             reduction="none")),
    Case("one_class", _ce(4, 1, label_smoothing=0.1)),
    Case("empty_batch_mean", _ce(0, 5), smooth=False),  # NaN (0 / 0), as torch; opcheck has no equal_nan
    Case("empty_batch_sum", _ce(0, 5, reduction="sum")),
    Case("empty_batch_none", _ce(0, 5, weight=True, reduction="none")),
    Case("empty_d_mean", _ce(3, 5, d=(0,), label_smoothing=0.1), smooth=False),
    Case("noncontig", _ce(6, 10, xform=strided, tform=lambda t: torch.stack([t, t], 1)[:, 0], ignore=0.2)),
    Case("noncontig_nd_transposed", _ce(3, 4, d=(5,), xform=lambda t: t.transpose(0, 2).contiguous().transpose(0, 2),
                                        label_smoothing=0.1, weight=True)),
    # short rows over several blocks of the CPU's flat path (short_rows.h: 2048 / C rows a block)
    Case("short_rows_blocks", _ce(700, 10, weight=True, ignore=0.2, reduction="none"), smooth=False),
    Case("short_rows_mean", _ce(1500, 3, ignore=0.1), smooth=False),
    Case("long_row", _ce(3, 5000, label_smoothing=0.1), scale=4),
    Case("row_33k_weight", _ce(2, 32771, weight=True, ignore=0.3, label_smoothing=0.1), smooth=False, scale=8),
    Case("big", _ce(6, 40, scale=1e4), smooth=False, scale=1e4),
    Case("big_smooth_weight", _ce(6, 40, scale=1e4, weight=True, label_smoothing=0.1), smooth=False, scale=1e4),
    Case("neg_inf", _ce_neg_inf(), smooth=False),
    Case("neg_inf_weight_none", _ce_neg_inf(weight=True, reduction="none"), smooth=False),
    Case("neg_inf_smooth", _ce_neg_inf(label_smoothing=0.1, reduction="none"), smooth=False),  # inf, as torch
    Case("all_neg_inf_row", _ce_all_neg_inf_row, smooth=False),
    Case("prob_mean", _ce(5, 7, prob=True)),
    Case("prob_sum", _ce(5, 7, prob=True, reduction="sum")),
    Case("prob_none", _ce(5, 7, prob=True, reduction="none")),
    Case("prob_weight_mean", _ce(6, 8, prob=True, weight=True)),
    Case("prob_smooth_weight_none", _ce(6, 8, prob=True, weight=True, label_smoothing=0.2, reduction="none")),
    Case("prob_smooth_sum", _ce(6, 8, prob=True, label_smoothing=0.3, reduction="sum")),
    Case("prob_raw_targets", lambda: [randn(4, 6), randn(4, 6), None, {}]),  # not distributions: torch allows it
    Case("prob_nd_mean", _ce(2, 5, d=(3, 4), prob=True, weight=True, label_smoothing=0.1)),
    Case("prob_unbatched", _ce(None, 9, prob=True, unbatched=True)),
    Case("prob_unbatched_none", _ce(None, 9, prob=True, unbatched=True, reduction="none")),
    Case("prob_empty_mean", _ce(0, 5, prob=True), smooth=False),
    Case("prob_empty_sum", _ce(0, 5, prob=True, reduction="sum")),
    Case("prob_noncontig", _ce(6, 10, prob=True, xform=strided, tform=strided, weight=True)),
    Case("prob_long_row", _ce(2, 3000, prob=True, label_smoothing=0.1), scale=4),
    Case("prob_big", _ce(5, 30, prob=True, scale=1e4), smooth=False, scale=1e4),
    Case("prob_neg_inf", _ce_neg_inf(prob=True, reduction="none"), smooth=False),  # inf, as torch
    # CPU: rows of >= 32 classes take the vectorised two-pass sums
    Case("prob_neg_inf_40", _ce_neg_inf(prob=True, weight=True, n=5, c=40, reduction="none"), smooth=False),
    Case("prob_smooth_weight_40", _ce(6, 40, prob=True, weight=True, label_smoothing=0.2)),
]

# ---- losses ------------------------------------------------------------------------------

F = torch.nn.functional


def classes(*shape, C, ignored=0.0, ignore_index=-100):
    """Random class indices in [0, C), a share `ignored` of them set to ignore_index, never the first
    (all ignored makes a mean 0/0, NaN: the all_ignored cases test that on purpose; by chance,
    7 targets at 0.4 ignored, it made gradcheck compare NaN with NaN one draw in 600)."""
    t = torch.randint(0, max(C, 1), shape)
    if ignored:
        drop = torch.rand(shape) < ignored
        drop.view(-1)[:1] = False
        t[drop] = ignore_index
    return t


def class_weights(C, zero=False):
    """Class weights as plain floats (multiples of 1/8 in (0, 2]: exact in every dtype). Not a
    tensor, so the tests do not make it a leaf requiring grad (torch's nll_loss refuses one)."""
    return tuple(0.0 for _ in range(C)) if zero else tuple((torch.randint(1, 17, (C,)) / 8).tolist())


def _weight(w, like):
    """The class weights (floats, or a tensor: test_cuda_streams.py's, whose copy must not sync) as like's."""
    if isinstance(w, torch.Tensor):
        return w.detach().to(device=like.device, dtype=like.dtype)
    return None if w is None else torch.tensor(w, dtype=like.dtype, device=like.device)


def _nll(fn):
    return lambda x, t, w, red, ig: fn(x, t, _weight(w, x), ignore_index=ig, reduction=red)


def _quiet(fn):
    """fn with the broadcast warning of mse_loss silenced (test_nll_mse_loss checks it)."""
    def run(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*args)
    return run


def _mse(fn):
    return _quiet(lambda x, t, red: fn(x, t, reduction=red))


# ---- NearestNeighbor: [x (*, D), prototypes w (K, D)] -> (index, sqdist) -----------------------

def _nn_ref(x, w):
    """torch's argmin over the full distance matrix; the distance then recomputed from the chosen
    prototype, so the gradient flows through it alone (through the matrix, a NaN input would give
    0 * NaN = NaN to every prototype)."""
    index = ((x.unsqueeze(-2) - w) ** 2).sum(-1).argmin(-1)
    return index, ((x - w[index]) ** 2).sum(-1)


def _nn(n, k, d, lead=(), xform=lambda t: t, wform=lambda t: t, offset=0.0):
    def make():
        xs = (*lead, n, d) if n is not None else (d,)
        return [xform(randn(*xs) + offset), wform(randn(k, d) + offset)]
    return make


def _nn_ties():
    """Small integers (exact distances in every dtype), duplicate prototypes at higher indices and rows
    equal to prototypes: many exact ties, the lowest index must win."""
    w = ties(7, 5)
    w = torch.cat([w, w[[3, 0, 3]]])  # 7, 8, 9 repeat 3, 0, 3
    x = torch.cat([ties(20, 5), w[[9, 8, 2]]])
    return [x, w]


def _nn_equidistant():
    """Every row halfway between prototypes 1 and 2 (and 4, a copy of 1): index 1 (small integers:
    the midpoint and the distances are exact in every dtype)."""
    w = ties(5, 6)
    w[2] = w[1] + 2  # every coordinate 2 apart: the midpoint is w[1] + 1, at distance 6 from both
    w[4] = w[1]
    w[0], w[3] = w[1] + 5, w[1] - 4  # farther
    return [(w[1] + 1).expand(9, 6).contiguous(), w]


def _nn_nan_prototype():
    """A NaN in prototype 3: every distance to it is NaN, and torch.argmin picks the first NaN."""
    w = randn(6, 5)
    w[3, 2] = math.nan
    w[5, 0] = math.nan
    return [randn(7, 5), w]


def _nn_nan_inf_rows():
    """NaN in some rows (all their distances NaN: index 0), +-inf in others (every distance inf:
    index 0 too; NaN where a prototype has the same infinity)."""
    x = randn(8, 5)
    x[1, 0] = math.nan
    x[4, 3] = math.inf
    x[6, 1] = -math.inf
    x[7, 2] = math.inf
    w = randn(6, 5)
    w[4, 2] = math.inf  # row 7: (inf - inf)^2 = NaN for prototype 4, inf for the others
    return [x, w]


OPS = [
    OpSpec("linear", TF.linear, torch.nn.functional.linear, [
        Case("1x1x1", _lin(1, 1, 1)),
        Case("3x5x7", _lin(3, 5, 7)),
        Case("17x127x33_nobias", _lin(17, 127, 33, bias=False), scale=4),
        Case("64x1025x10", _lin(64, 1025, 10), scale=8),
        Case("130x70x129", _lin(130, 70, 129), scale=4),
        Case("input_1d", _lin(None, 7, 5)),
        Case("input_3d", _lin(4, 6, 3, lead=(2,))),
        Case("noncontig", _lin(9, 12, 5, xform=strided)),
        Case("empty_batch", _lin(0, 4, 3)),
        Case("k0", _lin(3, 0, 2)),
        Case("big", lambda: [randn(5, 8) * 1e3, randn(4, 8), randn(4)], scale=1e3),
        # The CPU GEMM's edges (gemm_cpu.cpp; AVX-512: 12 x 32 float tiles of 16-lane vectors,
        # k blocks of 256, 144-row A blocks, 512-column B blocks, B read in place up to 128
        # rows): 1, 15, 16, 17, 127, 1025 in M, K and N (each is the inner dim of one of the
        # three products), K over several k blocks, and both operands transposed. The big ones
        # are left out of gradcheck and opcheck (smooth=False): the small ones cover those.
        Case("2x17x5", _lin(2, 17, 5)),                                  # 1-4 rows: dot products
        Case("4x1025x9", _lin(4, 1025, 9), scale=8, smooth=False),
        Case("15x16x17", _lin(15, 16, 17)),
        Case("16x17x15", _lin(16, 17, 15)),
        Case("17x15x16_nobias", _lin(17, 15, 16, bias=False)),
        Case("127x1025x16", _lin(127, 1025, 16), scale=8, smooth=False),
        Case("1025x17x127", _lin(1025, 17, 127), scale=8, smooth=False),
        Case("16x127x1025", _lin(16, 127, 1025), scale=4, smooth=False),
        Case("1x4097x15", _lin(1, 4097, 15), scale=16, smooth=False),
        Case("33x4097x65", _lin(33, 4097, 65), scale=16, smooth=False),
        Case("1025x127x1025", _lin(1025, 127, 1025), scale=8, smooth=False),
        Case("x_and_w_transposed", lambda: [randn(33, 50).t(), (randn(33, 129) / math.sqrt(33)).t(), randn(129)],
             scale=2),
    ]),
    # Linear + ReLU fused (the ReLU in the GEMM's epilogue): the mask's 32-bit words straddle rows
    # (N % 32 != 0) and the threads' blocks of C (N = 1025, 127: several column panels; M = 1025:
    # row blocks); every path of the CPU GEMM (dot products for 1-4 rows, B read in place, packed).
    OpSpec("linear_relu", TF.linear_relu, lambda x, w, b=None: torch.relu(torch.nn.functional.linear(x, w, b)), [
        Case("1x1x1", _lin(1, 1, 1)),
        Case("3x5x7", _lin(3, 5, 7)),
        Case("2x17x5", _lin(2, 17, 5)),
        Case("5x16x33_nobias", _lin(5, 16, 33, bias=False)),
        Case("15x16x17", _lin(15, 16, 17)),
        Case("17x15x16_nobias", _lin(17, 15, 16, bias=False)),
        Case("17x127x33", _lin(17, 127, 33), scale=4),
        Case("input_1d", _lin(None, 7, 5)),
        Case("input_3d", _lin(4, 6, 3, lead=(2,))),
        Case("noncontig", _lin(9, 12, 5, xform=strided)),
        Case("empty_batch", _lin(0, 4, 3)),
        Case("k0", _lin(3, 0, 35)),  # y = relu(bias)
        Case("k0_nobias", _lin(3, 0, 2, bias=False)),
        Case("k0_special_bias", lambda: [randn(5, 0), randn(37, 0),
                                         torch.where(torch.rand(37) < 0.3, 0.0, special(37)) * torch.tensor(
                                             [1.0, -1.0]).repeat(19)[:37]], smooth=False),  # +-0.0, NaN, inf
        Case("127x1025x16", _lin(127, 1025, 16), scale=8, smooth=False),
        Case("1025x17x127", _lin(1025, 17, 127), scale=8, smooth=False),
        Case("16x127x1025", _lin(16, 127, 1025), scale=4, smooth=False),
        Case("130x70x129", _lin(130, 70, 129), scale=4, smooth=False),
        Case("4x1025x9", _lin(4, 1025, 9), scale=8, smooth=False),
        Case("x_and_w_transposed", lambda: [randn(33, 50).t(), (randn(33, 129) / math.sqrt(33)).t(), randn(129)],
             scale=2, smooth=False),
    ]),
    OpSpec("relu", TF.relu, torch.relu, [
        Case("0d", lambda: [randn()]),
        Case("1", lambda: [randn(1)]),
        Case("1025", lambda: [randn(1025)]),
        Case("3x127", lambda: [randn(3, 127)]),
        Case("empty", lambda: [randn(0, 3)]),
        Case("noncontig", lambda: [strided(randn(7, 33))]),
        Case("expanded", lambda: [expanded((5, 37))]),
        Case("zeros_and_special", lambda: [torch.where(torch.rand(9, 31) < 0.2, 0.0, special(9, 31))], smooth=False),
        Case("tiny", lambda: [randn(64) * 1e-40], smooth=False),       # > 0 in float64, 0 / denormal below
        Case("denormal", lambda: [randn(64) * 1e-310], smooth=False),  # float64 denormals
        Case("tiny_1e-50", lambda: [randn(64) * 1e-50], smooth=False),  # 0 in float32, > 0 in float64
    ]),
    OpSpec("duplicate", lambda x: TF.duplicate(x, 3), lambda x: (x.clone(), x.clone(), x.clone()), [
        Case("0d", lambda: [randn()]),
        Case("1025", lambda: [randn(1025)]),
        Case("3x127", lambda: [randn(3, 127)]),
        Case("empty", lambda: [randn(2, 0)]),
        Case("noncontig", lambda: [strided(randn(7, 33))]),
        Case("special", lambda: [special(5, 17)], smooth=False),
    ]),
    OpSpec("duplicate_one_used", lambda x: TF.duplicate(x, 2)[1], lambda x: x.clone(), [
        Case("3x5", lambda: [randn(3, 5)]),
    ]),
    OpSpec("add", TF.add, torch.add, [
        Case("same", lambda: [randn(1025), randn(1025)]),
        Case("0d", lambda: [randn(), randn()]),
        Case("scalar_other", lambda: [randn(3, 5), randn()]),
        Case("bcast_row", lambda: [randn(37, 129), randn(129)]),
        Case("bcast_col", lambda: [randn(37, 1), randn(37, 129)]),
        Case("bcast_both", lambda: [randn(4, 1, 3), randn(5, 1)]),
        Case("empty", lambda: [randn(0, 3), randn(3)]),
        Case("noncontig", lambda: [strided(randn(6, 10)), randn(6, 10).t().contiguous().t()]),
        Case("expanded", lambda: [expanded((4, 9)), randn(4, 9)]),
        Case("special", lambda: [special(7, 9), special(7, 9)], smooth=False),
    ]),
    OpSpec("maximum", TF.maximum, torch.maximum, [
        Case("same", lambda: [randn(1025), randn(1025)]),
        Case("0d", lambda: [randn(), randn()]),
        Case("bcast_row", lambda: [randn(37, 129), randn(129)]),
        Case("bcast_both", lambda: [randn(4, 1, 3), randn(5, 1)]),
        Case("empty", lambda: [randn(0, 3), randn(3)]),
        Case("noncontig", lambda: [strided(randn(6, 10)), randn(6, 10)]),
        Case("ties", lambda: [ties(8, 33), ties(8, 33)], smooth=False),
        Case("special", lambda: [special(7, 9), special(7, 9)], smooth=False),
    ]),
    OpSpec("amax", lambda x, d, k: TF.amax(x, d, k), lambda x, d, k: torch.amax(x, d, k), [
        Case("last", lambda: [randn(5, 33), -1, False]),
        Case("first_keepdim", lambda: [randn(6, 7), 0, True]),
        Case("middle", lambda: [randn(3, 9, 4), 1, False]),
        Case("two_adjacent", lambda: [randn(3, 4, 5), (1, 2), False]),
        Case("two_apart", lambda: [randn(3, 4, 5), (0, 2), True]),
        Case("all", lambda: [randn(4, 6), (), False]),
        Case("0d", lambda: [randn(), 0, False]),
        Case("long_row", lambda: [randn(2, 3000), 1, False]),
        Case("row_256k", lambda: [randn(2, 262147), 1, False], smooth=False),  # too big for gradcheck
        Case("noncontig", lambda: [strided(randn(5, 8)), 1, False]),
        Case("ties", lambda: [ties(6, 17), 1, False], smooth=False),
        Case("special", lambda: [special(6, 17, kinds=("-inf", "big")), 1, False], smooth=False),
        Case("nan", lambda: [special(6, 17, kinds=("nan",)), 1, False], smooth=False),
    ]),
    OpSpec("log_softmax", lambda x, d: TF.log_softmax(x, d), lambda x, d: torch.log_softmax(x, d), [
        Case("3", lambda: [randn(3), 0]),
        Case("rows", lambda: [randn(4, 1025), 1]),
        Case("dim0", lambda: [randn(33, 5), 0]),
        Case("middle", lambda: [randn(3, 7, 4), 1]),
        # CPU: fewer than 16 columns run k rows at once (runs of 66 here: 4 whole + a tail of 36; dim 0:
        # 1 + 45), their lanes folded per column; 16 and more one row at a time
        Case("cols_runs", lambda: [randn(3, 50, 6), 1]),
        Case("cols_dim0_tail", lambda: [randn(37, 3), 0]),
        Case("cols_wide", lambda: [randn(2, 9, 20), 1]),
        Case("cols_blocks", lambda: [randn(2, 3, 300), 1]),  # CPU: over 256 columns in blocks (256 + 44)
        # CPU: the backward's blocks with 16 rows or more (2048 + 52 columns); too big for gradcheck
        Case("cols_blocks_wide", lambda: [randn(1, 16, 2100), 1], smooth=False),
        Case("neg_dim", lambda: [randn(2, 3, 130), -1]),
        Case("0d", lambda: [randn(), 0]),
        Case("empty", lambda: [randn(0, 5), 1]),
        Case("long_row", lambda: [randn(2, 5000), 1]),
        # CUDA: rows kept in shared memory past 48 KB in float64 (rows_smem); too big for gradcheck
        Case("row_8k", lambda: [randn(3, 8192), 1], smooth=False),
        # CUDA: rows of exactly 48 KB in shared memory (float32 12288, float64 6144; the half types
        # 24 KB), at the default limit, which the kernel's static shared memory already uses part of
        Case("row_48kb_f32", lambda: [randn(2, 12288), 1], smooth=False),
        Case("row_48kb_f64", lambda: [randn(2, 6144), 1], smooth=False),
        Case("row_256k", lambda: [randn(2, 262147), 1], smooth=False),  # the streaming path; too big for gradcheck
        Case("noncontig", lambda: [strided(randn(6, 10)), 1]),
        Case("short_rows_blocks", lambda: [randn(700, 10), 1], smooth=False),  # CPU: several flat blocks
        Case("big", lambda: [randn(5, 40) * 1e4, 1], smooth=False),
        Case("neg_inf", lambda: [special(6, 20, kinds=("-inf",)), 1], smooth=False),
        Case("all_neg_inf_row", lambda: [torch.cat([randn(2, 8), torch.full((1, 8), -math.inf, dtype=F64)]), 1],
             smooth=False),
        Case("nan", lambda: [special(6, 20, kinds=("nan",)), 1], smooth=False),
    ]),
    OpSpec("cross_entropy", lambda x, t, w8, kw: TF.cross_entropy(x, t, weight=_ce_weight(w8, x), **kw),
           lambda x, t, w8, kw: torch.nn.functional.cross_entropy(x, t, weight=_ce_weight(w8, x), **kw),
           _CE_CASES),
    OpSpec("nll_loss", _nll(TF.nll_loss), _nll(F.nll_loss), [
        Case("2d_mean", lambda: [randn(5, 7), classes(5, C=7), None, "mean", -100]),
        Case("2d_sum", lambda: [randn(6, 3), classes(6, C=3), None, "sum", -100]),
        Case("2d_none", lambda: [randn(6, 5), classes(6, C=5), None, "none", -100]),
        Case("1x1", lambda: [randn(1, 1), classes(1, C=1), None, "mean", -100]),
        Case("weight_mean_ignored", lambda: [randn(9, 6), classes(9, C=6, ignored=0.3), class_weights(6), "mean",
                                             -100]),
        Case("weight_sum", lambda: [randn(8, 4), classes(8, C=4), class_weights(4), "sum", -100]),
        Case("weight_none_ignored", lambda: [randn(8, 4), classes(8, C=4, ignored=0.3), class_weights(4), "none",
                                             -100]),
        Case("ignore_index_in_range", lambda: [randn(12, 3), classes(12, C=3), class_weights(3), "mean", 1]),
        Case("ignore_index_neg1", lambda: [randn(7, 5), classes(7, C=5, ignored=0.4, ignore_index=-1), None, "mean",
                                           -1]),
        Case("all_ignored_mean", lambda: [randn(4, 3), torch.full((4,), -100), None, "mean", -100], smooth=False),
        Case("all_ignored_sum", lambda: [randn(4, 3), torch.full((4,), -100), class_weights(3), "sum", -100]),
        Case("all_ignored_none", lambda: [randn(4, 3), torch.full((4,), -100), None, "none", -100]),
        Case("zero_weights_mean", lambda: [randn(5, 3), classes(5, C=3), class_weights(3, zero=True), "mean", -100],
             smooth=False),  # W = 0: NaN loss and NaN gradients, as torch
        Case("unbatched_mean", lambda: [randn(7), classes(C=7), class_weights(7), "mean", -100]),
        Case("unbatched_none", lambda: [randn(7), classes(C=7), None, "none", -100]),
        Case("unbatched_ignored_mean", lambda: [randn(5), torch.tensor(-100), None, "mean", -100], smooth=False),
        Case("3d_none", lambda: [randn(3, 4, 6), classes(3, 6, C=4, ignored=0.2), None, "none", -100]),
        Case("4d_mean_weight", lambda: [randn(2, 5, 3, 4), classes(2, 3, 4, C=5, ignored=0.2), class_weights(5),
                                        "mean", -100]),
        Case("4d_sum", lambda: [randn(2, 3, 4, 5), classes(2, 4, 5, C=3), None, "sum", -100]),
        Case("5d_mean", lambda: [randn(2, 3, 2, 3, 2), classes(2, 2, 3, 2, C=3), None, "mean", -100]),
        # CPU: the sum's second block of 4096 targets starts inside a row of 1500 (the cursor's start)
        Case("3d_blocks_mean", lambda: [randn(3, 4, 1500), classes(3, 1500, C=4, ignored=0.2), class_weights(4), "mean",
                                        -100], smooth=False),
        Case("empty_batch_mean", lambda: [randn(0, 4), classes(0, C=4), None, "mean", -100], smooth=False),  # NaN
        Case("empty_batch_sum", lambda: [randn(0, 4), classes(0, C=4), class_weights(4), "sum", -100]),
        Case("empty_batch_none", lambda: [randn(0, 4), classes(0, C=4), None, "none", -100]),
        Case("empty_spatial_mean", lambda: [randn(2, 3, 0), classes(2, 0, C=3), None, "mean", -100], smooth=False),
        Case("noncontig", lambda: [strided(randn(6, 9)), classes(12, C=9)[::2], class_weights(9), "mean", -100]),
        Case("noncontig_3d", lambda: [randn(2, 6, 4).transpose(1, 2), classes(2, 6, C=4), None, "none", -100]),
        Case("noncontig_4d", lambda: [strided(randn(2, 4, 5, 3)), classes(2, 5, 3, C=4), None, "mean", -100]),
        Case("uint8_target", lambda: [randn(6, 5), classes(6, C=5).to(torch.uint8), class_weights(5), "sum", -100]),
        Case("many_classes", lambda: [randn(3, 1025), classes(3, C=1025), None, "mean", -100]),
        Case("long_batch", lambda: [randn(5000, 3), classes(5000, C=3, ignored=0.1), class_weights(3), "mean",
                                    -100]),  # more than one block of the sums
        Case("big", lambda: [randn(6, 5) * 1e4, classes(6, C=5), None, "mean", -100], scale=1e4,
             smooth=False),  # too big for gradcheck's finite differences
        Case("special", lambda: [special(6, 5), classes(6, C=5, ignored=0.3), None, "none", -100], smooth=False),
    ]),
    OpSpec("mse_loss", _mse(TF.mse_loss), _mse(F.mse_loss), [
        Case("mean", lambda: [randn(5, 7), randn(5, 7), "mean"]),
        Case("sum", lambda: [randn(3, 129), randn(3, 129), "sum"], scale=4),
        Case("none", lambda: [randn(4, 33), randn(4, 33), "none"]),
        Case("1", lambda: [randn(1), randn(1), "mean"]),
        Case("0d", lambda: [randn(), randn(), "sum"]),
        Case("bcast_target_row", lambda: [randn(37, 129), randn(129), "mean"]),
        Case("bcast_input", lambda: [randn(5, 1), randn(5, 6), "sum"]),
        Case("bcast_both_none", lambda: [randn(4, 1, 3), randn(5, 1), "none"]),
        Case("empty_mean", lambda: [randn(0, 3), randn(0, 3), "mean"], smooth=False),  # 0/0: NaN, as torch
        Case("empty_sum", lambda: [randn(0, 3), randn(0, 3), "sum"]),
        Case("empty_none", lambda: [randn(2, 0), randn(2, 0), "none"]),
        Case("noncontig", lambda: [strided(randn(6, 10)), randn(6, 10).t().contiguous().t(), "mean"]),
        Case("expanded", lambda: [expanded((4, 9)), randn(4, 9), "sum"]),
        Case("long", lambda: [randn(5000), randn(5000), "mean"]),  # more than one block of the sums
        Case("long_sum", lambda: [randn(3, 3001), randn(3, 3001), "sum"], scale=32),
        Case("big_offset", lambda: [randn(64) + 1e4, randn(64) + 1e4, "mean"], scale=10),
        Case("big", lambda: [randn(50) * 1e2, randn(50) * 1e2, "mean"], scale=1e4,
             smooth=False),  # too big for gradcheck's finite differences
        # inf, -inf, NaN (not +-1e4: its square overflows float16, for torch too)
        Case("special", lambda: [special(7, 9, kinds=("inf", "-inf", "nan")), special(7, 9, kinds=("inf", "nan")),
                                 "none"], smooth=False),
        Case("special_sum", lambda: [special(7, 9, kinds=("inf",)), randn(7, 9), "sum"], smooth=False),
    ]),
    OpSpec("nearest_neighbor", TF.nearest_neighbor, _nn_ref, [
        Case("1x1_K1", _nn(1, 1, 1)),
        Case("5x3_K3", _nn(5, 3, 3)),
        Case("9x127_K127", _nn(9, 127, 127), scale=4),
        Case("33x3_K1025", _nn(33, 1025, 3)),
        Case("4x1025_K5", _nn(4, 5, 1025), scale=8),
        Case("70x17_K130", _nn(70, 130, 17), scale=2),  # more than one tile of rows and prototypes
        Case("1d_input", _nn(None, 5, 7)),
        Case("batched", _nn(3, 4, 6, lead=(2,))),
        Case("empty", _nn(0, 3, 5)),
        Case("d0", _nn(3, 2, 0)),
        Case("noncontig", _nn(6, 5, 10, xform=strided, wform=lambda t: t.t().contiguous().t())),
        Case("expanded", lambda: [expanded((4, 9)), randn(3, 9)]),
        Case("offset_1e3", _nn(12, 9, 33, offset=1e3), scale=4),  # the expansion |x|^2 - 2x.w + |w|^2 cancels
        Case("ties_duplicates", _nn_ties, smooth=False),
        Case("equidistant", _nn_equidistant, smooth=False),
        Case("nan_prototype", _nn_nan_prototype, smooth=False),
        Case("nan_inf_rows", _nn_nan_inf_rows, smooth=False),
    ]),
]

OPS_BY_NAME = {op.name: op for op in OPS}
