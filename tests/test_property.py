"""Property-based tests (issue 7, hostile input): hypothesis draws shapes (0-d, empty dims, 1 to
4 dims), layouts (transposes, slices with steps, expanded stride-0 views, broadcasting),
dtypes and values (ties, +-0.0, +-inf, NaN, huge, near the dtype's max, tiny, denormal) for
every op of torchmodules.functional, and compares ours with torch's twin: outputs always,
gradients where the inputs are finite, the exception type where torch rejects the input.

As tests/test_ops.py: ours in the dtype under test against torch in float64 on the same
rounded inputs, with helpers.assert_close's rule (per-dtype atol * scale + rtol * |ref| plus
twice torch's own error in that dtype). Where torch's own result in the dtype overflowed
(inf or NaN where the float64 reference is finite) ours may be torch's or the reference's;
sums of mixed-sign terms that overflow on the way (order-dependent) are not compared.

Every example is derived from TM_SEED (tests/conftest.py), so `TM_SEED=... pytest` replays a
failure; TM_HYP_EXAMPLES sets the number of examples per test (default 50), TM_HYP_SHRINK=1
shrinks a failing example, TM_HYP_DUMP=FILE saves the inputs of the last example (torch.save).
What the properties found is pinned by the regression tests at the end.
"""
import math
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import torchmodules.functional as TF  # noqa: E402
from conftest import SEED  # noqa: E402
from helpers import DEVICES, as_tuple, assert_close  # noqa: E402
from op_table import TOL  # noqa: E402

F = torch.nn.functional
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
FLOATS = [F64, F32, F16, BF16]

EXAMPLES = int(os.environ.get("TM_HYP_EXAMPLES", 50))


# No shrinking by default (CI time: a failure is reported as drawn); TM_HYP_SHRINK=1 shrinks it.
PHASES = [p for p in hypothesis.Phase if os.environ.get("TM_HYP_SHRINK") or p.name not in ("shrink", "explain")]


def _settings(n):
    return settings(max_examples=n, deadline=None, database=None, derandomize=False, print_blob=False, phases=PHASES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def prop(n=50):
    """Settings and a seed from TM_SEED: each test's examples replay with the same TM_SEED.
    n examples at the default TM_HYP_EXAMPLES (50), in proportion to it else."""
    def deco(fn):
        return hypothesis.seed(SEED)(_settings(max(1, n * EXAMPLES // 50))(fn))
    return deco


# ---- values ------------------------------------------------------------------------------

SPECIALS = ("nan", "inf", "-inf", "huge", "max", "tiny", "denormal", "zero", "-zero")
FINITE_SPECIALS = ("huge", "max", "tiny", "denormal", "zero", "-zero")


@dataclass(frozen=True)
class Values:
    """How a tensor's values are drawn: a base (normal, small-integer ties, wide magnitudes),
    a share `frac` of the elements replaced by specials, all from a generator seeded `seed`."""
    base: str
    specials: Tuple[str, ...]
    frac: float
    seed: int


def values(finite=False):
    kinds = FINITE_SPECIALS if finite else SPECIALS
    return st.builds(Values, st.sampled_from(["normal", "ties", "wide", "normal"]),
                     st.one_of(st.just(()), st.lists(st.sampled_from(kinds), min_size=1, max_size=4, unique=True)
                               .map(tuple)),
                     st.sampled_from([0.05, 0.2, 0.5, 1.0]), st.integers(0, 2**31 - 1))


def _special(kind, n, dtype, g):
    fi = torch.finfo(dtype)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    if kind == "huge":   # +-1e30 where the dtype has it, else half its max
        mag = torch.full((n,), 1e30 if fi.max > 1e30 else fi.max / 2, dtype=F64)
    elif kind == "max":  # within a factor 2 of the dtype's max
        mag = fi.max * (0.5 + 0.5 * torch.rand(n, generator=g, dtype=F64))
    elif kind == "tiny":
        mag = fi.tiny * (1 + 3 * torch.rand(n, generator=g, dtype=F64))
    elif kind == "denormal":
        mag = fi.smallest_normal * torch.rand(n, generator=g, dtype=F64) / 2
        mag = torch.maximum(mag, torch.full_like(mag, fi.tiny * fi.eps))
    elif kind in ("zero", "-zero"):
        return torch.full((n,), -0.0 if kind == "-zero" else 0.0, dtype=F64)
    else:
        return torch.full((n,), {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind], dtype=F64)
    return sign * mag


def make_values(shape, spec: Values, dtype):
    """float64 CPU values of `shape`, each exactly representable in dtype."""
    g = torch.Generator().manual_seed(spec.seed)
    n = math.prod(shape)
    if spec.base == "ties":
        t = torch.randint(-3, 4, (n,), generator=g).double()
    elif spec.base == "wide":
        t = torch.randn(n, generator=g, dtype=F64) * 10 ** (6 * torch.rand(n, generator=g, dtype=F64) - 3)
    else:
        t = torch.randn(n, generator=g, dtype=F64)
    if spec.specials and n:
        pick = torch.rand(n, generator=g) < spec.frac
        which = torch.randint(0, len(spec.specials), (n,), generator=g)
        for k, kind in enumerate(spec.specials):
            m = pick & (which == k)
            t[m] = _special(kind, int(m.sum()), dtype, g)
    return t.to(dtype).double().reshape(shape)


# ---- shapes and layouts -------------------------------------------------------------------

def _fit(shape, max_numel):
    shape = list(shape)
    while math.prod(shape) > max_numel:
        k = max(range(len(shape)), key=lambda i: shape[i])
        shape[k] //= 2
    return tuple(shape)


def shapes(min_dims=0, max_dims=4, max_side=40, max_numel=1200, min_side=0):
    side = st.one_of(st.integers(min_side, 3), st.integers(min_side, max_side))
    return st.lists(side, min_size=min_dims, max_size=max_dims).map(lambda s: _fit(s, max_numel)) \
        .map(lambda s: tuple(max(v, min_side) for v in s))


@dataclass(frozen=True)
class Layout:
    """A view of a leaf: leaf[slices].permute(perm).expand(shape). `base` is the leaf's shape,
    `fan` the most elements of the view that share one element of the leaf (stride 0)."""
    base: Tuple[int, ...]
    slices: Optional[Tuple[Tuple[int, int, int], ...]]
    perm: Optional[Tuple[int, ...]]
    expand: Optional[Tuple[int, ...]]
    fan: int = 1

    def apply(self, t):
        if self.slices:
            t = t[tuple(slice(o, o + n * s, s) for o, n, s in self.slices)]
        if self.perm:
            t = t.permute(self.perm)
        if self.expand is not None:
            t = t.expand(self.expand)
        return t


@st.composite
def layouts(draw, shape, expand=True):
    """A layout giving a tensor of `shape`: contiguous, or any of strided slices, a
    permutation (a transpose), an expansion of size-1 or new leading dims (stride 0)."""
    kinds = draw(st.sets(st.sampled_from(["step", "perm", "expand"] if expand else ["step", "perm"]), max_size=3))
    cur, exp, fan = list(shape), None, 1
    if "expand" in kinds and cur:
        mask = draw(st.lists(st.booleans(), min_size=len(cur), max_size=len(cur)))
        lead = draw(st.integers(0, len(cur)))
        exp = tuple(shape)
        cur = [1 if m else s for m, s in zip(mask, shape)][lead:]
        fan = max(1, math.prod(s for k, (m, s) in enumerate(zip(mask, shape)) if m or k < lead))
    perm = None
    if "perm" in kinds and len(cur) >= 2:
        p = draw(st.permutations(range(len(cur))))
        perm = tuple(sorted(range(len(p)), key=lambda i: p[i]))   # the inverse of p
        cur = [cur[p[i]] for i in range(len(p))]
    slices = None
    if "step" in kinds and cur:
        steps = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=len(cur), max_size=len(cur)))
        slices = tuple((o, n, s) for (o, s), n in zip(steps, cur))
        cur = [o + n * s for o, n, s in slices]
        if math.prod(cur) > 50000:
            slices, cur = None, [n for _, n, _ in slices]
    return Layout(tuple(cur), slices, perm, exp, fan)


# ---- arguments and the comparison ----------------------------------------------------------

@dataclass
class Arg:
    """A tensor argument: values drawn for the leaf (`layout.base`), in `dtype`, then viewed.
    Integer tensors (class indices) keep their dtype and never require grad."""
    values: torch.Tensor        # float64 or integer, CPU, the leaf's values
    dtype: torch.dtype
    layout: Layout
    grad: bool = True
    clone: bool = False         # view a non-leaf copy of the leaf (for in-place ops)

    def __repr__(self):
        return (f"Arg({self.dtype}, base={list(self.layout.base)}, layout={self.layout}, grad={self.grad}, "
                f"values={self.values.flatten()[:12].tolist()}{'...' if self.values.numel() > 12 else ''})")

    def realize(self, dtype, device):
        leaf = self.values.to(device=device, dtype=dtype if self.values.is_floating_point() else None, copy=True)
        if self.grad:
            leaf.requires_grad_()
        return leaf, self.layout.apply(leaf.clone() if self.clone else leaf)


def farg(shape, dtype, spec, layout=None, grad=True):
    layout = layout or Layout(tuple(shape), None, None, None)
    return Arg(make_values(layout.base, spec, dtype), dtype, layout, grad)


def _realize(args, ref, device):
    leaves, ins = [], []
    for a in args:
        if isinstance(a, Arg):
            leaf, v = a.realize(F64 if ref else a.dtype, "cpu" if ref else device)
            ins.append(v)
            if a.grad:
                leaves.append(leaf)
        elif isinstance(a, torch.dtype) and ref:
            ins.append(F64)
        else:
            ins.append(a)
    return leaves, ins


def _grads(outs, leaves, gouts):
    pairs = [(o, g) for o, g in zip(outs, gouts) if g is not None and o.requires_grad]
    if not pairs or not leaves:
        return [torch.zeros_like(leaf) for leaf in leaves]
    gs = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, gs)]


def _coarser(*dtypes):
    """The least precise of the floating dtypes (the tolerance of a result computed through them)."""
    return max((d for d in dtypes if d is not None and d.is_floating_point), key=lambda d: torch.finfo(d).eps)


def assert_like(what, ours, ref64, tdt, scale=1.0, sign=False, free=None, tol=None):
    """helpers.assert_close, with torch's own result as the reference where it overflowed the
    dtype (torch inf or NaN, float64 reference finite); sign: +-0.0 as torch's too; tol: the
    dtype whose tolerance applies (default ours.dtype; coarser where computed in it). Elements of
    `free` are not compared (a sum of mixed-sign terms that overflows the dtype on the way:
    inf, NaN or finite, by the order of the additions)."""
    tol = _coarser(ours.dtype, tol)
    ref = ref64.clone()
    t = tdt.detach().double().cpu()
    o = ours.detach().double().cpu()
    scale = scale if math.isfinite(scale) else 1e300
    over = ref.isfinite() & ~t.isfinite()
    if free is not None:
        over &= ~free.expand(over.shape)
    if over.any():  # ours as torch's there (inf or NaN), or near the float64 reference (inf beyond the max)
        atol, rtol = TOL[tol]
        near = o.isfinite() & ((o - ref).abs() <= atol * scale + rtol * ref.abs())
        near |= o.isinf() & (o == ref.to(ours.dtype).double())
        bad = over & ~(near | (o == t) | (o.isnan() & t.isnan()))
        assert not bad.any(), (f"{what}: {int(bad.sum())} elements where torch overflows {ours.dtype}: ours "
                               f"{o[bad][:4].tolist()}, torch {t[bad][:4].tolist()}, float64 {ref[bad][:4].tolist()}")
        free = over if free is None else free.expand(over.shape) | over
    if free is not None and free.any():
        keep = ~free.expand(ref.shape)
        ours, ref, tdt, t = ours[keep.to(ours.device)], ref[keep], tdt[keep.to(tdt.device)], t[keep]
    assert_close(what, ours, ref, tdt, tol, scale)
    if sign:
        o = ours.detach().double().cpu()
        zero = (t == 0) & (o == 0)
        assert torch.equal(o[zero].signbit(), t[zero].signbit()), f"{what}: sign of 0.0 differs from torch's"


def _raise_type(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e)
    return None


def assert_raises_like(what, torch_exc, ours_call):
    """Ours raises exactly torch's exception type (users catch torch's)."""
    ours = _raise_type(ours_call)
    assert ours is not None, f"{what}: torch raises {torch_exc.__name__}, ours does not raise"
    assert ours is torch_exc, f"{what}: ours raises {ours.__name__}, torch {torch_exc.__name__}"


def check(what, ours_fn, ref_fn, args, device, gseed, scale=1.0, gscale=None, sign=False, used=None,
          grads=True, free=None):
    """ours_fn(*args) against ref_fn(*args): outputs and (inputs finite) the gradients of the
    leaves for random output gradients (only outputs with used[k]). If torch in float64 on the
    CPU raises, ours raises the same exception type."""
    ref_leaves, ref_in = _realize(args, True, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref_outs = as_tuple(ref_fn(*ref_in))
        except Exception as e:  # noqa: BLE001
            assert_raises_like(what, type(e), lambda: ours_fn(*_realize(args, False, device)[1]))
            return
        leaves, ins = _realize(args, False, device)
        outs = as_tuple(ours_fn(*ins))
        t_leaves, t_ins = _realize(args, False, device)
        t_outs = as_tuple(ref_fn(*t_ins))
    if os.environ.get("TM_HYP_DUMP"):
        torch.save(dict(args=args, what=what), os.environ["TM_HYP_DUMP"])
    assert len(outs) == len(ref_outs)
    for k, (o, r, t) in enumerate(zip(outs, ref_outs, t_outs)):
        assert o.device.type == device, f"{what} output {k} on {o.device}"
        assert_like(f"{what} output {k}", o, r, t, scale, sign, None if free is None else free[k])

    finite = all(a.values.isfinite().all() for a in args if isinstance(a, Arg) and a.values.is_floating_point())
    if not (grads and finite and leaves):
        return
    g = torch.Generator().manual_seed(gseed)
    gouts = [torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype) if o.is_floating_point() else None
             for o in outs]
    if used is not None:
        gouts = [gg if u else None for gg, u in zip(gouts, used)]
    gs = _grads(outs, leaves, [None if gg is None else gg.to(device) for gg in gouts])
    t_gs = _torch_grads(ref_fn, args, False, device, t_outs, t_leaves, [None if gg is None else gg.to(device)
                                                                        for gg in gouts])
    r_gs = _torch_grads(ref_fn, args, True, device, ref_outs, ref_leaves, [None if gg is None else gg.double()
                                                                           for gg in gouts])
    for k, (o, r, t) in enumerate(zip(gs, r_gs, t_gs)):
        # (a leaf's gradient is computed in the op's dtype, then cast: the coarser tolerance)
        assert_like(f"{what} grad {k}", o, r, t, scale if gscale is None else gscale,
                    tol=_coarser(*(x.dtype for x in outs if x.is_floating_point())))


def _torch_grads(ref_fn, args, ref, device, outs, leaves, gouts):
    """torch's gradients; where its backward refuses a non-contiguous input (nll_loss2d's
    "grad_input must be contiguous" for a permuted (N, C, H, W) view), those of contiguous copies;
    where torch 2.11 refuses mixed dtypes (mse_loss; fixed by 2.14), those of its op on the floating
    inputs cast to the output's dtype (what 2.14 computes in), each cast back to its leaf's dtype. The
    float64 reference cast does not stand in: it misses the overflows of that dtype (bfloat16 x,
    float32 t: 2 (x - t) g is +-inf in float32 where float64's sum over a broadcast dim is finite)."""
    try:
        return _grads(outs, leaves, gouts)
    except RuntimeError as e:
        if "Found dtype" in str(e) and not ref:
            dt = next(o.dtype for o in outs if o.is_floating_point())
            redo = lambda v: v.to(dt) if v.is_floating_point() else v  # noqa: E731
        elif "contiguous" in str(e):
            redo = lambda v: v.contiguous()  # noqa: E731
        else:
            raise
    leaves, ins = _realize(args, ref, device)
    ins = [redo(v) if isinstance(v, torch.Tensor) else v for v in ins]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _grads(as_tuple(ref_fn(*ins)), leaves, gouts)


def _amax_abs(*ts):
    m = 0.0
    for t in ts:
        if isinstance(t, Arg) and t.values.is_floating_point() and t.values.numel():
            v = t.values[t.values.isfinite()]
            m = max(m, v.abs().max().item() if v.numel() else 0.0)
    return m


DEVICE = pytest.mark.parametrize("device", DEVICES)
GSEED = st.integers(0, 2**31 - 1)


# ---- linear -------------------------------------------------------------------------------

@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), lead=shapes(0, 3, max_side=12, max_numel=60),
       k=st.integers(0, 40), n=st.integers(0, 40), bias=st.sampled_from([None, "n", "n", "1", "0-d"]),
       w1d=st.integers(0, 4), gseed=GSEED)
def test_linear(device, data, dtype, lead, k, n, bias, w1d, gseed):
    """weight [n, k] or (w1d == 0) [k]; bias [n], or [1] or 0-d (broadcast, as torch's). A 1-d
    weight takes a 0-d bias only: with a 1-d bias torch's result depends on the input's layout (it
    raises for a contiguous 3-d input, adds the bias to a permuted one)."""
    w_shape = (k,) if w1d == 0 else (n, k)
    if w1d == 0 and bias in ("n", "1"):
        bias = "0-d"
    b_shape = {None: None, "n": (n,), "1": (1,), "0-d": ()}[bias]
    x = farg((*lead, k), dtype, data.draw(values(), "x values"), data.draw(layouts((*lead, k)), "x layout"))
    w = farg(w_shape, dtype, data.draw(values(), "w values"), data.draw(layouts(w_shape), "w layout"))
    b = None if bias is None else farg(b_shape, dtype, data.draw(values(), "b values"),
                                       data.draw(layouts(b_shape), "b layout"))
    # Rounding error of a dot product: relative to sum |x_k w_k| (+ |b|), the largest such sum.
    xa, wa = x.layout.apply(x.values).nan_to_num(0, 0, 0).abs(), w.layout.apply(w.values).nan_to_num(0, 0, 0).abs()
    abs_sums = xa @ (wa.T if wa.dim() == 2 else wa) + (b.layout.apply(b.values).nan_to_num(0, 0, 0).abs() if bias
                                                      else 0)
    terms = abs_sums.max().item() if abs_sums.numel() else 0.0
    batch = max(1, math.prod(lead))
    # (a broadcast bias's gradient sums all batch * n output gradients)
    scale = max(1.0, terms, 4 * k * wa.max().item() if wa.numel() else 0,
                4 * batch * (xa.max().item() if xa.numel() else 1) * max(x.layout.fan, w.layout.fan),
                4.0 * batch * (max(n, 1) if bias in ("1", "0-d") else 1))
    # A dot product whose terms overflow the dtype on the way: which of inf, NaN or a finite
    # value comes out depends on the order of the additions (BLAS's, ours), not compared.
    free = abs_sums > torch.finfo(dtype).max / 2
    check("linear", TF.linear, F.linear, [x, w, b], device, gseed, scale, free=[free],
          grads=not bool(free.any()) and scale < torch.finfo(dtype).max / 1e3)


# ---- relu ---------------------------------------------------------------------------------

@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=shapes(), inplace=st.booleans(), gseed=GSEED)
def test_relu(device, data, dtype, shape, inplace, gseed):
    x = farg(shape, dtype, data.draw(values(), "values"), data.draw(layouts(shape), "layout"))
    x.clone = inplace

    def ours(v):
        y = TF.relu(v, inplace=inplace)
        assert (y is v) == inplace
        return y

    check("relu", ours, lambda v: F.relu(v, inplace=inplace), [x], device, gseed, scale=x.layout.fan, sign=True)


# ---- duplicate ----------------------------------------------------------------------------

@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=shapes(), n=st.integers(1, 4), gseed=GSEED)
def test_duplicate(device, data, dtype, shape, n, gseed):
    x = farg(shape, dtype, data.draw(values(), "values"), data.draw(layouts(shape), "layout"))
    used = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), "used outputs")

    def ours(v):
        ys = TF.duplicate(v, n)
        assert len(ys) == n and all(y.data_ptr() != v.data_ptr() or y.numel() == 0 for y in ys)
        return ys

    check("duplicate", ours, lambda v: tuple(v.clone() for _ in range(n)), [x], device, gseed,
          scale=n * x.layout.fan, sign=True, used=used)


# ---- add, maximum: broadcasting and type promotion ------------------------------------------

@st.composite
def broadcast_pair(draw, max_numel=1000):
    """Two shapes that broadcast to a drawn shape: each a suffix of it, dims of size 1 here and there."""
    out = draw(shapes(0, 4, max_numel=max_numel))

    def operand():
        nd = draw(st.integers(0, len(out)))
        return tuple(1 if (s != 1 and draw(st.booleans())) else s for s in out[len(out) - nd:])
    return operand(), operand()


@st.composite
def binary_args(draw, mixed_dtypes=True, finite=False):
    sa, sb = draw(broadcast_pair())
    da = draw(st.sampled_from(FLOATS))
    db = draw(st.sampled_from(FLOATS)) if mixed_dtypes and draw(st.booleans()) else da
    vb = draw(values(finite))
    # Often the same values for both (the same draws: many ties between the operands), else their own.
    va = vb if draw(st.booleans()) else draw(values(finite))
    return farg(sa, da, va, draw(layouts(sa))), farg(sb, db, vb, draw(layouts(sb)))


def _bcast_fan(a, b):
    out = torch.broadcast_shapes(a.layout.apply(a.values).shape, b.layout.apply(b.values).shape)
    n = math.prod(out)
    return max(1, n // max(1, a.values.numel()), n // max(1, b.values.numel()))


def _promoted_ref(fn, a, b):
    """fn for check(): where the operands' dtypes differ, its float64 reference first rounds each
    operand to torch's result dtype, as torch casts them before it computes (float16 + a 0-d bfloat16
    1e30: the 1e30 is inf in float16, so -inf + it is NaN in torch, -inf in plain float64)."""
    if a.dtype == b.dtype:
        return fn
    rt = torch.result_type(*(x.layout.apply(torch.empty(x.layout.base, dtype=x.dtype)) for x in (a, b)))

    def ref(x, y):
        if x.dtype == F64 and y.dtype == F64:
            return fn(x.to(rt).double(), y.to(rt).double())
        return fn(x, y)
    return ref


@DEVICE
@prop()
@given(ab=binary_args(), gseed=GSEED)
def test_add(device, ab, gseed):
    a, b = ab
    check("add", TF.add, _promoted_ref(torch.add, a, b), [a, b], device, gseed, scale=1.0,
          gscale=4.0 * _bcast_fan(a, b), sign=True)


@DEVICE
@prop()
@given(ab=binary_args(), gseed=GSEED)
def test_maximum(device, ab, gseed):
    """NaN propagates; at ties (+-0.0 included) each input gets half the gradient, as torch. The
    sign of maximum(-0.0, 0.0) is not compared: torch's own CPU kernel returns the first input at
    a tie in its scalar loop, the second in its vectorised one (it depends on the size)."""
    a, b = ab
    check("maximum", TF.maximum, _promoted_ref(torch.maximum, a, b), [a, b], device, gseed, scale=1.0,
          gscale=4.0 * _bcast_fan(a, b))


@DEVICE
@prop(25)
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=shapes(), gseed=GSEED,
       scalar=st.sampled_from([2.5, -0.0, 1e30, math.inf, -math.inf, math.nan, 3, True]), scalar_first=st.booleans())
def test_add_python_scalar(device, data, dtype, shape, gseed, scalar, scalar_first):
    """A Python number as either operand, as torch.add: promoted as a wrapped number."""
    x = farg(shape, dtype, data.draw(values(), "values"), data.draw(layouts(shape), "layout"))
    # torch rounds the number to the tensor's dtype first (float16: 1e30 is inf, -inf + 1e30 NaN): so
    # does the float64 reference
    rounded = torch.tensor(scalar, dtype=F64).to(dtype).item() if isinstance(scalar, float) else scalar

    def ref(v):
        s = rounded if v.dtype == F64 else scalar
        return torch.add(s, v) if scalar_first else torch.add(v, s)

    check("add", lambda v: TF.add(scalar, v) if scalar_first else TF.add(v, scalar), ref, [x], device, gseed,
          sign=True)


# ---- amax ---------------------------------------------------------------------------------

@st.composite
def amax_dims(draw, ndim):
    n = max(ndim, 1)
    one = st.integers(-n, n - 1)
    return draw(st.one_of(one, st.just(()), st.lists(one, min_size=1, max_size=n, unique_by=lambda d: d % n)
                          .map(tuple)))


@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=shapes(), keepdim=st.booleans(), gseed=GSEED)
def test_amax(device, data, dtype, shape, keepdim, gseed):
    """NaN propagates; the gradient is shared evenly among tied maxima, as torch."""
    x = farg(shape, dtype, data.draw(values(), "values"), data.draw(layouts(shape), "layout"))
    dim = data.draw(amax_dims(len(shape)), "dim")
    check("amax", lambda v: TF.amax(v, dim, keepdim), lambda v: torch.amax(v, dim, keepdim), [x], device, gseed,
          scale=4.0 * x.layout.fan)


# ---- log_softmax --------------------------------------------------------------------------

@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=shapes(), gseed=GSEED,
       cast=st.one_of(st.none(), st.sampled_from(FLOATS)))
def test_log_softmax(device, data, dtype, shape, gseed, cast):
    x = farg(shape, dtype, data.draw(values(), "values"), data.draw(layouts(shape), "layout"))
    n = max(len(shape), 1)
    dim = data.draw(st.one_of(st.none(), st.integers(-n, n - 1)), "dim")
    rows = max(shape[dim] if shape and dim is not None else (shape[0] if shape else 1), 1)
    # Absolute error about eps * the largest |x| (x - max - lse), and for the gradient
    # eps * the row sum of |grad_y|.
    scale = max(1.0, _amax_abs(x), 4 * math.sqrt(rows) * x.layout.fan)

    def ref(v, d):
        if d is F64 and cast is not None:  # the float64 reference of the values cast to `cast` (rounded,
            r = v.detach().to(cast).double()  # overflowing), with an identity gradient
            v = v + torch.where(v.isfinite(), r - v.detach(), 0.0)
        return F.log_softmax(v, dim, dtype=d)

    check("log_softmax", lambda v, d: TF.log_softmax(v, dim, d), ref, [x, cast], device, gseed, scale)


# ---- nll_loss and cross_entropy: class indices ----------------------------------------------

@st.composite
def loss_shape(draw, min_c=1):
    """input (C), (N, C) or (N, C, d1[, d2]) and the target's shape."""
    kind = draw(st.sampled_from(["unbatched", "2d", "nd", "2d"]))
    c = draw(st.integers(min_c, 24))
    if kind == "unbatched":
        return (c,)
    n = draw(st.integers(0, 20))
    d = draw(st.lists(st.integers(0, 5), min_size=1, max_size=2)) if kind == "nd" else []
    if d:  # no C = 0 with d1, ...: torch's (N, 0, d1) reshape raises a RuntimeError there, ours as for other
        c = max(c, 1)  # shapes an IndexError or a loss (see test_nll_loss_no_classes_nd)
    rest = _fit((n, *d), 1200 // max(c, 1))
    return (rest[0], c, *rest[1:])


@st.composite
def class_targets(draw, in_shape, ignore_index, bad=False):
    """int64 (or uint8) class indices for input `in_shape`, a share set to ignore_index; with bad,
    one out of range (and not ignore_index)."""
    c = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    shape = () if len(in_shape) == 1 else (in_shape[0], *in_shape[2:])
    g = torch.Generator().manual_seed(draw(GSEED))
    layout = draw(layouts(shape))
    t = torch.randint(0, max(c, 1), layout.base, generator=g)
    share = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
    t[torch.rand(layout.base, generator=g) < share] = ignore_index
    if bad and t.numel():
        v = draw(st.sampled_from([c, c + 5, -1, -7, 1000]).filter(lambda v: v != ignore_index))
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = v
    return Arg(t, t.dtype, layout, grad=False)


def _maybe_uint8(draw, t, in_shape, ignore_index, torch_takes=True):
    """Now and then the class indices as uint8: torch takes them for (C) and (N, C) inputs; for
    (N, C, d1, ...) it raises a RuntimeError, so does ours (an empty target there: torch's forward
    takes it, its backward raises; ours takes it, not drawn)."""
    c = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    if draw(st.integers(0, 5)) == 0 and 0 <= ignore_index < 256 and c <= 256 and torch_takes \
            and not _out_of_range(t, 256, ignore_index) \
            and (len(in_shape) <= 2 or t.layout.apply(t.values).numel() > 0):
        return Arg(t.values.to(torch.uint8), torch.uint8, t.layout, grad=False)
    return t


def _weight(c, dtype, draw):
    kind = draw(st.sampled_from([None, None, "eighths", "with_zero"]))
    if kind is None:
        return None
    g = torch.Generator().manual_seed(draw(GSEED))
    if c == 0:
        return None
    w = torch.randint(1, 17, (c,), generator=g).double() / 8   # exact in every dtype
    if kind == "with_zero":
        w[torch.randint(0, c, (max(1, c // 3),), generator=g)] = 0
    return Arg(w, dtype, Layout((c,), None, None, None), grad=False)


def _ignore_index(draw, c):
    return draw(st.sampled_from([-100, -100, -1, 0, c - 1, c + 2]))


def _loss_free(x, red, q=None):
    """Losses whose sums of mixed-sign terms can overflow the dtype on the way (inf, NaN or a
    finite value by the order of the additions): per row, and the reduced loss."""
    v = x.layout.apply(x.values).nan_to_num(0, 0, 0).abs()
    cd = 0 if v.dim() == 1 else 1
    row = v.sum(cd) + (v.amax(cd) if v.shape[cd] else 0)
    if q is not None:  # sum_c q_c (log_softmax(x)_c): the sum of q alone too (the gradient's)
        row = (row + 1) * q.layout.apply(q.values).nan_to_num(0, 0, 0).abs().sum(cd).clamp(min=1)
    lim = torch.finfo(x.dtype).max / 4
    free = row > lim if red == "none" else (row.sum() > lim).reshape(())
    return [free], not bool((row > lim).any())


def _loss_scale(x, c, red, t_numel, extra=1.0):
    big = _amax_abs(x) + math.log(max(c, 1)) + 1
    return max(1.0, 4 * big * extra * (max(t_numel, 1) if red == "sum" else 1) * x.layout.fan)


@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=loss_shape(min_c=0), gseed=GSEED,
       red=st.sampled_from(["mean", "sum", "none"]), bad=st.integers(0, 5))
def test_nll_loss(device, data, dtype, shape, gseed, red, bad):
    """Class indices with ignore_index (negative, in range, out of range), weights (with zeros),
    every reduction; one class index out of range (bad == 0) raises an IndexError as torch's."""
    in_shape = shape
    c = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    bad = bad == 0 or c == 0
    ii = _ignore_index(data.draw, c)
    x = farg(in_shape, dtype, data.draw(values(), "values"), data.draw(layouts(in_shape), "layout"))
    t = data.draw(class_targets(in_shape, ii, bad), "target")
    w = _weight(c, dtype, data.draw)
    t = _maybe_uint8(data.draw, t, in_shape, ii)
    ours = lambda x, t, w: TF.nll_loss(x, t, w, ignore_index=ii, reduction=red)  # noqa: E731
    ref = lambda x, t, w: F.nll_loss(x, t, w, ignore_index=ii, reduction=red)  # noqa: E731
    if _out_of_range(t, c, ii):
        return _check_index_error("nll_loss", ours, ref, [x, t, w], device)
    free, grads = _loss_free(x, red)
    check("nll_loss", ours, ref, [x, t, w], device, gseed, _loss_scale(x, c, red, t.layout.apply(t.values).numel()),
          free=free, grads=grads)


def _out_of_range(t, c, ii):
    v = t.layout.apply(t.values).long()
    return bool(((v != ii) & ((v < 0) | (v >= c))).any())


def _check_index_error(what, ours, ref, args, device):
    """An out-of-range class index: ours raises torch's exception type on the CPU (an IndexError,
    or the RuntimeError of a uint8 target it refuses first), on the GPU too: there torch's kernel
    asserts (spoiling the context), so torch runs on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_exc = _raise_type(lambda: ref(*_realize(args, True, "cpu")[1]))
        assert torch_exc is not None, f"{what}: torch takes a class index out of range"
        assert_raises_like(what, torch_exc, lambda: ours(*_realize(args, False, device)[1]))


@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=loss_shape(min_c=0), gseed=GSEED,
       red=st.sampled_from(["mean", "sum", "none"]), bad=st.integers(0, 5),
       smoothing=st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, -0.2, 0.37]))
def test_cross_entropy_class_indices(device, data, dtype, shape, gseed, red, bad, smoothing):
    in_shape = shape
    c = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    ii = _ignore_index(data.draw, c)
    x = farg(in_shape, dtype, data.draw(values(), "values"), data.draw(layouts(in_shape), "layout"))
    t = data.draw(class_targets(in_shape, ii, bad == 0), "target")
    w = _weight(c, dtype, data.draw)
    # torch's label smoothing with a weight and reduction mean gathers with the kept indices: uint8 fails
    # there (ours takes them; see test_cross_entropy_uint8_smoothing_weight_mean)
    t = _maybe_uint8(data.draw, t, in_shape, ii, torch_takes=not (smoothing > 0 and w is not None and red == "mean"))
    kw = dict(ignore_index=ii, reduction=red, label_smoothing=smoothing)
    ours = lambda x, t, w: TF.cross_entropy(x, t, w, **kw)  # noqa: E731
    ref = lambda x, t, w: F.cross_entropy(x, t, w, **kw)  # noqa: E731
    if _out_of_range(t, c, ii):
        return _check_index_error("cross_entropy", ours, ref, [x, t, w], device)
    free, grads = _loss_free(x, red)
    check("cross_entropy", ours, ref, [x, t, w], device, gseed,
          _loss_scale(x, c, red, t.layout.apply(t.values).numel()), free=free, grads=grads)


@DEVICE
@prop()
@given(data=st.data(), dtype=st.sampled_from(FLOATS), shape=loss_shape(min_c=0), gseed=GSEED,
       red=st.sampled_from(["mean", "sum", "none"]), smoothing=st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 0.37]),
       kind=st.sampled_from(["softmax", "softmax", "raw"]), tgrad=st.booleans())
def test_cross_entropy_probabilities(device, data, dtype, shape, gseed, red, smoothing, kind, tgrad):
    """Class-probability targets (distributions, or any values as torch allows), with
    weight and label smoothing; the gradient of the target too."""
    in_shape = shape
    c = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    x = farg(in_shape, dtype, data.draw(values(), "values"), data.draw(layouts(in_shape), "layout"))
    qv = data.draw(values(finite=kind == "softmax"), "target values")
    q_layout = data.draw(layouts(in_shape, expand=kind != "softmax"), "target layout")
    q = make_values(q_layout.base, qv, dtype)
    if kind == "softmax":  # distributions over the class dim of the view, written through it
        p = torch.softmax(make_values(in_shape, qv, F64).clamp(-30, 30), 0 if len(in_shape) == 1 else 1)
        q_layout.apply(q).copy_(p.to(dtype).double())
    q = Arg(q, dtype, q_layout, grad=tgrad)
    w = _weight(c, dtype, data.draw)
    kw = dict(reduction=red, label_smoothing=smoothing)
    free, grads = _loss_free(x, red, q)
    qmax = q.values.nan_to_num(0, 0, 0).abs().max().item() if q.values.numel() else 0
    check("cross_entropy", lambda x, t, w: TF.cross_entropy(x, t, w, **kw),
          lambda x, t, w: F.cross_entropy(x, t, w, **kw), [x, q, w], device, gseed,
          _loss_scale(x, c, red, math.prod(in_shape) // max(c, 1), extra=max(1.0, qmax * c) * q.layout.fan),
          free=free, grads=grads)


# ---- mse_loss -----------------------------------------------------------------------------

@DEVICE
@prop()
@given(ab=binary_args(), red=st.sampled_from(["mean", "sum", "none"]), gseed=GSEED)
def test_mse_loss(device, ab, red, gseed):
    """Shapes broadcast (with torch's warning), mixed dtypes promoted (as torch), every reduction."""
    a, b = ab
    va, vb = a.layout.apply(a.values), b.layout.apply(b.values)
    d = (va - vb).nan_to_num(0, 0, 0).abs()
    n = d.numel()
    dmax = d.max().item() if n else 0.0
    # sum of n squares: error about eps * sqrt(n) * the largest; the gradient 2 (x - t) g (/ n),
    # summed over the broadcast dims.
    out_scale = max(1.0, math.sqrt(n) * dmax * dmax / (n if red == "mean" and n else 1))
    g_scale = max(1.0, 8 * dmax * _bcast_fan(a, b))
    check("mse_loss", lambda x, t: TF.mse_loss(x, t, reduction=red), lambda x, t: F.mse_loss(x, t, reduction=red),
          [a, b], device, gseed, out_scale, g_scale)


# ---- bad shapes: the exception type of torch's ---------------------------------------------

@st.composite
def mismatched_pair(draw):
    """Two shapes that do not broadcast: some dim differs, neither size 1."""
    sa = list(draw(shapes(1, 4, max_numel=300)))
    k = draw(st.integers(0, len(sa) - 1))
    if sa[k] == 1:
        sa[k] = 2
    sb = list(sa)
    sb[k] = draw(st.integers(0, 40).filter(lambda v: v not in (1, sa[k])))
    return tuple(sa), tuple(sb[draw(st.integers(0, k)):])


@DEVICE
@prop(25)
@given(pair=mismatched_pair(), op=st.sampled_from(["add", "maximum", "mse_loss"]), dtype=st.sampled_from(FLOATS))
def test_mismatched_shapes_raise(device, pair, op, dtype):
    a, b = (torch.zeros(s, dtype=dtype, device=device) for s in pair)
    ours, ref = {"add": (TF.add, torch.add), "maximum": (TF.maximum, torch.maximum),
                 "mse_loss": (TF.mse_loss, F.mse_loss)}[op]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_exc = _raise_type(lambda: ref(a, b))
        assert torch_exc is not None
        assert_raises_like(op, torch_exc, lambda: ours(a, b))


@DEVICE
@prop(25)
@given(data=st.data(), shape=loss_shape(), op=st.sampled_from(["nll_loss", "cross_entropy"]))
def test_mismatched_targets_raise(device, data, shape, op):
    """Class-index targets of a wrong shape, a weight of a wrong size, linear's mismatched K."""
    in_shape = shape
    c = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    good = () if len(in_shape) == 1 else (in_shape[0], *in_shape[2:])
    what = data.draw(st.sampled_from(["target", "weight"]))
    x = torch.zeros(in_shape, device=device)
    t, w = torch.zeros(good, dtype=torch.int64, device=device), None
    if what == "target":
        bad = data.draw(shapes(0, 3, max_side=6).filter(lambda s: s != good))
        t = torch.zeros(bad, dtype=torch.int64, device=device)
    else:
        w = torch.ones(data.draw(st.integers(0, 30).filter(lambda v: v != c)), device=device)
    ours, ref = (TF.nll_loss, F.nll_loss) if op == "nll_loss" else (TF.cross_entropy, F.cross_entropy)
    torch_exc = _raise_type(lambda: ref(x, t, w))
    if torch_exc is None:   # torch takes it (e.g. an empty batch with a target of another empty shape)
        return
    if t.dim() == 0 and x.dim() > 1:
        # A 0-d target for a batched input: torch's type depends on memory it reads past the target's
        # sizes; ours is always a ValueError (see test_zero_dim_target_for_batched_input).
        assert _raise_type(lambda: ours(x, t, w)) is ValueError
        return
    assert_raises_like(op, torch_exc, lambda: ours(x, t, w))


@DEVICE
@prop(25)
@given(lead=shapes(0, 2, max_side=6), k=st.integers(0, 10), k2=st.integers(0, 10), n=st.integers(0, 6))
def test_linear_mismatched_k_raises(device, lead, k, k2, n):
    hypothesis.assume(k != k2)
    x, w = torch.zeros((*lead, k), device=device), torch.zeros(n, k2, device=device)
    assert_raises_like("linear", _raise_type(lambda: F.linear(x, w)), lambda: TF.linear(x, w))


# ---- regressions: the exact inputs of what the properties found ---------------------------
# Fixed in torchmodules/functional.py:

def test_add_python_number_regression():
    """torch.add takes a Python number on either side (a wrapped number: float16 stays float16);
    ours raised an AttributeError ('float' object has no attribute 'dtype')."""
    x = torch.tensor([1.5, -2.0, -math.inf], dtype=F16, requires_grad=True)
    for a, b in [(x, 2.5), (2.5, x), (x, 3), (x, True), (x, -0.0), (x, 1e30), (1e30, x)]:
        ours, ref = TF.add(a, b), torch.add(a, b)   # 1e30 is inf in float16: -inf + 1e30 is NaN, as torch's
        assert ours.dtype == ref.dtype and torch.equal(ours.isnan(), ref.isnan())
        assert torch.equal(ours.nan_to_num(), ref.nan_to_num())
        g, = torch.autograd.grad(ours.sum(), x)
        assert torch.equal(g, torch.ones_like(x))
    xi = torch.tensor([1, 2])
    assert torch.equal(TF.add(xi, 0.5), torch.add(xi, 0.5))                  # int64 + 0.5: float32
    assert torch.equal(TF.add(torch.tensor([1.0]), 1e300), torch.add(torch.tensor([1.0]), 1e300))  # inf
    assert torch.equal(TF.add(2.0, 3.0), torch.add(2.0, 3.0))


def test_maximum_python_number_raises_type_error():
    """torch.maximum takes tensors only: a TypeError (ours raised an AttributeError)."""
    x = torch.tensor([1.5, -2.0])
    assert _raise_type(lambda: TF.maximum(x, 2.5)) is _raise_type(lambda: torch.maximum(x, 2.5)) is TypeError
    assert _raise_type(lambda: TF.maximum(2.5, x)) is _raise_type(lambda: torch.maximum(2.5, x)) is TypeError


@pytest.mark.parametrize("shape", [(4,), (5, 4)], ids=str)
def test_cross_entropy_uint8_target_regression(shape):
    """uint8 class indices: torch takes them for (C) and (N, C) inputs; ours raised a TypeError."""
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    t = torch.tensor([3, 0, 1, 3, 2][:shape[0]] if len(shape) > 1 else 2, dtype=torch.uint8)
    for kw in [{}, dict(reduction="none", label_smoothing=0.2), dict(ignore_index=1, reduction="sum")]:
        ours, ref = TF.cross_entropy(x, t, **kw), F.cross_entropy(x, t, **kw)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


# Fixed in C++ (csrc/, kernels/) and torchmodules/functional.py: the regions they were left out of
# are drawn by the properties above again.

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_relu_negative_zero(device, dtype):
    """relu(-0.0) is -0.0 as torch's (ours gave +0.0); the gradient passes where x > 0 only (torch's
    threshold_backward): 0 at +-0.0 and x < 0, the gradient at NaN and at tiny positive values."""
    tiny = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # the least positive (denormal) value
    v = torch.tensor([-0.0, 0.0, -1.0, 2.0, math.nan, tiny, -tiny, -math.inf, math.inf], dtype=dtype)
    x, xt = v.to(device).requires_grad_(), v.clone().requires_grad_()
    ours, ref = TF.relu(x), torch.relu(xt)
    assert torch.equal(ours.cpu().signbit(), ref.signbit()) and torch.equal(ours.cpu().isnan(), ref.isnan())
    assert torch.equal(ours.cpu().nan_to_num(), ref.nan_to_num())
    g = torch.arange(1.0, 1.0 + v.numel(), dtype=dtype)
    assert torch.equal(torch.autograd.grad(ours, x, g.to(device))[0].cpu(), torch.autograd.grad(ref, xt, g)[0])


def _same(ours, ref, ref64=None):
    """As torch's result ref: its dtype and shape, its values (or those of its float64 twin ref64
    within the dtype's tolerance), NaN and infinities (with their sign) included."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    atol, rtol = TOL[ours.dtype] if ours.is_floating_point() else (0, 0)
    ref = ref if ref64 is None else ref64
    torch.testing.assert_close(ours.detach().cpu().to(ref.dtype), ref.detach(), equal_nan=True, atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, F32, F16], ids=str)
@pytest.mark.parametrize("q0", [math.inf, -math.inf])
def test_cross_entropy_infinite_probability_target(device, dtype, q0):
    """A +-inf class probability (finite logits): torch's -sum q log_softmax(x) is +-inf; ours was
    NaN (sum q (m - x) + log s sum q gives inf - inf). Weight and label smoothing too; gradients."""
    x = torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3], [3.0, 3.0, -40.0]], dtype=dtype)
    q = torch.tensor([[q0, 0.2, 0.3], [0.2, 0.3, 0.5], [0.0, q0, 1.0]], dtype=dtype)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=dtype)
    for kw in [dict(), dict(weight=w), dict(label_smoothing=0.3), dict(weight=w, label_smoothing=1.0)]:
        for red in ["none", "mean", "sum"]:
            xo, x64 = x.to(device).requires_grad_(), x.double().requires_grad_()
            wo = {k: v.to(device) for k, v in kw.items() if k == "weight"}
            kw64 = {k: v.double() if k == "weight" else v for k, v in kw.items()}
            eps = kw.get("label_smoothing", 0.0)
            ours = TF.cross_entropy(xo, q.to(device), reduction=red, label_smoothing=eps, **wo)
            ref = F.cross_entropy(x, q, reduction=red, **kw)
            ref64 = F.cross_entropy(x64, q.double(), reduction=red, **kw64)
            _same(ours, ref, ref64)
            g = torch.ones_like(ref64)
            _same(torch.autograd.grad(ours, xo, g.to(device, dtype))[0], x, torch.autograd.grad(ref64, x64, g)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("smoothing", [0.0, 0.37, 1.0])
def test_cross_entropy_smoothing_zero_total_weight(device, smoothing):
    """Label smoothing, reduction mean, kept targets of total weight 0: torch's loss is NaN (0 / 0
    in its nll part) and so is the gradient of the kept rows; ours gave +inf (+-inf gradients)."""
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3], [1.0, 2.0, 3.0, 4.0], [0.0, -2.0, 1.0, 1.0]], dtype=F64)
    w, t = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=F64), torch.tensor([1, -100, 1])
    xo, xt = x.to(device).requires_grad_(), x.clone().requires_grad_()
    ours = TF.cross_entropy(xo, t.to(device), w.to(device), label_smoothing=smoothing)
    ref = F.cross_entropy(xt, t, w, label_smoothing=smoothing)
    _same(ours, ref)
    _same(torch.autograd.grad(ours, xo)[0], torch.autograd.grad(ref, xt)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_no_classes(device):
    """C = 0 (torch takes it where every target is ignored; ours raised a ValueError): the loss of
    torch, NaN with label smoothing (torch's (eps / C) * 0); probabilities too; an unignored
    target is out of range (an IndexError, as torch's)."""
    for shape in [(3, 0), (0, 0), (0,), (2, 0, 0), (2, 0, 3, 1)]:
        x = torch.zeros(shape, dtype=F32)
        t = torch.full(shape[:1] + shape[2:] if len(shape) > 1 else (), -100)
        for kw in [dict(), dict(label_smoothing=0.2), dict(weight=torch.ones(0))]:
            for red in ["none", "mean", "sum"]:
                wo = {k: v.to(device) for k, v in kw.items() if k == "weight"}
                eps = kw.get("label_smoothing", 0.0)
                _same(TF.cross_entropy(x.to(device), t.to(device), reduction=red, label_smoothing=eps, **wo),
                      F.cross_entropy(x, t, reduction=red, **kw))
                _same(TF.cross_entropy(x.to(device), x.to(device), reduction=red, label_smoothing=eps, **wo),
                      F.cross_entropy(x, x, reduction=red, **kw))
    x, t = torch.zeros(3, 0, device=device), torch.tensor([-100, 0, -100], device=device)
    assert _raise_type(lambda: TF.cross_entropy(x, t)) is _raise_type(lambda: F.cross_entropy(x.cpu(), t.cpu())) \
        is IndexError


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("da,db", [(F32, F64), (F16, BF16), (F64, F16), (F32, torch.int64)], ids=str)
def test_mse_loss_mixed_dtypes(device, da, db):
    """Mixed dtypes: torch promotes (ours raised a TypeError); a 0-d operand counts in full (torch
    broadcasts first): float16 and a 0-d float32 give float32. Gradients in each input's dtype."""
    for sa, sb in [((3, 2), (3, 2)), ((3, 2), ()), ((), (2,))]:
        a = torch.randn(sa, dtype=F64).to(da)
        b = (torch.randn(sb, dtype=F64) * 3).to(db)
        for red in ["none", "mean", "sum"]:
            leaves = [v.clone().requires_grad_(v.is_floating_point()) for v in (a, b)]
            t_leaves = [v.clone().requires_grad_(v.is_floating_point()) for v in (a, b)]
            leaves64 = [v.double().requires_grad_(v.is_floating_point()) for v in (a, b)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (torch's warning on broadcast shapes)
                ours = TF.mse_loss(*(v.to(device) for v in leaves), reduction=red)
                ref = F.mse_loss(*t_leaves, reduction=red)
                ref64 = F.mse_loss(*leaves64, reduction=red)
            # torch's dtype and shape; values as float64's: torch's own gradient of a 0-d float16
            # input against a bfloat16 target is off by up to 12 float16 ulp (seen: -0.421875
            # where the exact one is -0.4248046875; bfloat16 precision somewhere on its way)
            _same(ours, ref, ref64.to(ref.dtype))
            grads = [v for v in leaves if v.requires_grad]
            g64s = torch.autograd.grad(ref64.sum(), [v for v in leaves64 if v.requires_grad])
            try:
                t_gs = torch.autograd.grad(ref.sum(), [v for v in t_leaves if v.requires_grad])
            except RuntimeError as e:  # torch 2.11's backward on mixed dtypes raised (fixed by 2.14)
                assert "Found dtype" in str(e), e
                t_gs = [g.to(v.dtype) for g, v in zip(g64s, grads)]
            for go, gr, g64 in zip(torch.autograd.grad(ours.sum(), grads), t_gs, g64s):
                _same(go, gr, g64.to(gr.dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_mse_loss_gradient_overflows_as_in_the_promoted_dtype(device):
    """bfloat16 x [2, 1] against a float32 target [2]: the terms 2 (x - t) g of x's gradient
    overflow float32 with both signs in row 0 (NaN), one sign in row 1 (inf), where float64's sums
    are finite. Ours as torch's on the inputs cast to float32 (torch 2.11 refuses the mixed
    dtypes' backward; 2.14's is this too), its gradients cast back to each input's dtype."""
    x = torch.tensor([[3e38], [1.0]], dtype=BF16)
    t = torch.tensor([-3e38, -3e38], dtype=F32)
    g = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    leaves = [v.to(device).requires_grad_() for v in (x, x.float(), t)]
    ours = TF.mse_loss(leaves[0], leaves[2], reduction="none")
    ref = F.mse_loss(leaves[1], leaves[2], reduction="none")
    go = torch.autograd.grad(ours, [leaves[0], leaves[2]], g.to(device))
    gr = torch.autograd.grad(ref, leaves[1:], g.to(device))
    assert go[0][0].isnan().all() and go[0][1].isinf().all()   # the case is what it says
    _same(ours, ref)
    _same(go[0], gr[0].to(BF16))
    _same(go[1], gr[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_shape,w_shape,b_shape", [
    ((3, 4), (5, 4), (1,)), ((3, 4), (5, 4), ()), ((3, 4), (4,), None), ((2, 3, 4), (5, 4), (1,)),
    ((3, 4), (5, 4), (3, 5)), ((3, 4), (5, 4), (1, 5)), ((4,), (5, 4), ()), ((4,), (4,), None), ((4,), (4,), ()),
    ((2, 3, 4), (4,), ()), ((3, 0), (5, 0), ()), ((3, 0), (0,), None)], ids=str)
def test_linear_broadcast_bias_or_1d_weight(device, x_shape, w_shape, b_shape):
    """A bias that broadcasts to the output ([1], 0-d; for a 2-d input (N, out) too) and a 1-d
    weight (no out dim in the output), as torch's F.linear (ours raised a ValueError); the
    gradients of all three, the bias's summed back to its shape."""
    args = [torch.randn(x_shape, dtype=F64), torch.randn(w_shape, dtype=F64),
            None if b_shape is None else torch.randn(b_shape, dtype=F64)]
    ours_in = [None if v is None else v.to(device).requires_grad_() for v in args]
    ref_in = [None if v is None else v.clone().requires_grad_() for v in args]
    ours, ref = TF.linear(*ours_in), F.linear(*ref_in)
    _same(ours, ref)
    g = torch.randn(ref.shape, dtype=F64)
    leaves = [v for v in ours_in if v is not None]
    for go, gr in zip(torch.autograd.grad(ours, leaves, g.to(device)),
                      torch.autograd.grad(ref, [v for v in ref_in if v is not None], g)):
        _same(go, gr)


@pytest.mark.skipif(not hasattr(torch, "get_autocast_dtype"), reason="torch.get_autocast_dtype")
def test_linear_broadcast_bias_autocast():
    """Under CPU autocast a broadcast bias is cast with the rest, as torch's: a bfloat16 output."""
    x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(1)
    with torch.autocast("cpu"):
        ours, ref = TF.linear(x, w, b), F.linear(x, w, b)
    assert ours.dtype == ref.dtype == torch.bfloat16
    x64, w64, b64 = (v.to(BF16).double() for v in (x, w, b))  # the float64 reference of the cast inputs
    scale = (x64.abs() @ w64.abs().T + b64.abs()).max().item()
    assert_close("linear autocast", ours, x64 @ w64.T + b64, ref, BF16, scale)


@pytest.mark.parametrize("dtypes", [(F32, F64, None), (F32, F64, F16), (F16, F16, F32), (BF16, F16, None),
                                    (F32, F32, torch.int64)], ids=str)
def test_cross_entropy_probabilities_mixed_dtypes(dtypes):
    """Class probabilities of another dtype than the input (or weight): torch promotes (ours raised
    a TypeError); the gradients in each input's dtype."""
    dx, dq, dw = dtypes
    x = torch.randn(3, 4, dtype=F64).to(dx).requires_grad_()
    q = torch.rand(3, 4, dtype=F64).to(dq).requires_grad_()
    w = None if dw is None else torch.tensor([1.0, 2.0, 0.5, 3.0]).to(dw)
    x64, q64 = x.detach().double().requires_grad_(), q.detach().double().requires_grad_()
    w64 = None if w is None else w.double()
    tol = _coarser(dx, dq, dw)  # (torch's log_softmax runs in the input's dtype, ours in the promoted one)
    for red in ["none", "mean"]:
        ours, ref = TF.cross_entropy(x, q, w, reduction=red), F.cross_entropy(x, q, w, reduction=red)
        ref64 = F.cross_entropy(x64, q64, w64, reduction=red)
        assert ours.dtype == ref.dtype
        assert_close("cross_entropy", ours, ref64, ref, tol, scale=16.0)
        grads = zip(torch.autograd.grad(ours.sum(), [x, q]), torch.autograd.grad(ref.sum(), [x, q]),
                    torch.autograd.grad(ref64.sum(), [x64, q64]))
        for go, gr, g64 in grads:
            assert go.dtype == gr.dtype
            assert_close("cross_entropy grad", go, g64, gr, tol, scale=16.0)


# Where ours differs from torch on purpose: torch's behaviour there is an artifact of one of its
# code paths (memory read past a tensor's sizes, a reshape that goes wrong, a dtype refused in one
# branch only), so ours keeps the rule it follows for the neighbouring inputs.

@pytest.mark.parametrize("x_shape", [(0, 1), (3, 4), (0, 4, 2), (3, 4, 2)], ids=str)
def test_zero_dim_target_for_batched_input(x_shape):
    """A 0-d class-index target for a batched input: ours always raises a ValueError (the batch
    sizes differ, as torch's ValueError says for most shapes). torch's batch-size check reads
    target.sizes()[0] past the end of a 0-d target's sizes: whatever lies there decides whether
    it raises that ValueError or, for an empty batch, an IndexError or a RuntimeError later."""
    x, t = torch.zeros(x_shape), torch.zeros((), dtype=torch.int64)
    for fn in ("nll_loss", "cross_entropy"):
        assert _raise_type(lambda: getattr(F, fn)(x, t)) is not None
        with pytest.raises(ValueError, match=f"torchmodules.{fn}.*batch sizes differ"):
            getattr(TF, fn)(x, t)


def test_nll_loss_no_classes_nd():
    """C = 0 with one extra dim (N, 0, d1): torch reshapes the input wrongly and raises a
    RuntimeError (size mismatch), whatever the targets; with two extra dims, and for (N, 0), it
    raises an IndexError for a target in [0, C) = {} and computes the loss where all are ignored.
    Ours does the latter for every shape."""
    x, x4 = torch.zeros(2, 0, 3), torch.zeros(2, 0, 3, 1)
    for fn in ("nll_loss", "cross_entropy"):
        ours_f, torch_f = getattr(TF, fn), getattr(F, fn)
        t = torch.zeros(2, 3, dtype=torch.int64)
        assert _raise_type(lambda: torch_f(x, t)) is RuntimeError
        assert _raise_type(lambda: ours_f(x, t)) is _raise_type(lambda: torch_f(x4, t[..., None])) is IndexError
        for red in ["none", "mean", "sum"]:
            t = torch.full((2, 3), -100)
            assert _raise_type(lambda: torch_f(x, t, reduction=red)) is RuntimeError
            _same(ours_f(x, t, reduction=red), torch_f(x4, t[..., None], reduction=red).reshape(
                (2, 3) if red == "none" else ()))


def test_cross_entropy_uint8_smoothing_weight_mean():
    """uint8 class indices with label smoothing, a weight and reduction mean: torch raises a
    RuntimeError when some target is kept (its gather of the kept targets' weights takes int64
    only), though it takes uint8 with any other options, and these options with no target kept.
    Ours takes them: the loss and gradient of the int64 targets."""
    x, w = torch.randn(3, 4, dtype=F64, requires_grad=True), torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    t = torch.tensor([3, 0, 1], dtype=torch.uint8)
    kw = dict(label_smoothing=0.2)
    assert _raise_type(lambda: F.cross_entropy(x, t, w, **kw)) is RuntimeError
    ours, ref = TF.cross_entropy(x, t, w, **kw), F.cross_entropy(x, t.long(), w, **kw)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


# The exception type torch raises, for exact inputs: ours raises the same (users catch torch's),
# or, like torch, none.
_I64 = dict(dtype=torch.int64)
_U8 = dict(dtype=torch.uint8)


def _f(m):
    return F if m is torch else m


_TYPE_CASES = [
    ("add_mismatched", lambda m: m.add(torch.zeros(3, 4), torch.zeros(5))),
    ("maximum_mismatched", lambda m: m.maximum(torch.zeros(3, 4), torch.zeros(5))),
    ("mse_loss_mismatched", lambda m: _f(m).mse_loss(torch.zeros(3, 4), torch.zeros(5))),
    ("mse_loss_mismatched_int", lambda m: _f(m).mse_loss(torch.zeros(3, 4, **_I64), torch.zeros(5, **_I64))),
    ("mse_loss_int", lambda m: _f(m).mse_loss(torch.zeros(3, **_I64), torch.zeros(3, **_I64))),
    ("linear_k", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(5, 6))),
    ("linear_dtype", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(5, 4, dtype=F64))),
    ("linear_weight_3d", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(2, 5, 4))),
    ("linear_input_0d", lambda m: _f(m).linear(torch.zeros(()), torch.zeros(5, 1))),
    ("linear_1d_weight_k", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(5))),
    ("linear_1d_weight_bias_2d_input", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(4), torch.zeros(()))),
    ("linear_bias_shape", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(4))),
    ("linear_bias_dtype", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(5, dtype=F64))),
    ("linear_bias_1_dtype", lambda m: _f(m).linear(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(1, dtype=F64))),
    ("relu_complex", lambda m: m.relu(torch.zeros(3, dtype=torch.complex64))),
    ("amax_bad_dim", lambda m: m.amax(torch.zeros(3, 4), 2)),
    ("amax_repeated_dim", lambda m: m.amax(torch.zeros(3, 4), (1, -1))),
    ("amax_all_of_empty", lambda m: m.amax(torch.zeros(3, 0))),
    ("amax_empty_dim", lambda m: m.amax(torch.zeros(3, 0), 1)),
    ("amax_empty_dim_repeated", lambda m: m.amax(torch.zeros(3, 0), (1, 1))),
    ("amax_repeated_then_bad", lambda m: m.amax(torch.zeros(3, 4), (0, 0, 5))),
    ("log_softmax_int", lambda m: m.log_softmax(torch.zeros(3, 4, **_I64), 1)),
    ("log_softmax_bad_dim", lambda m: m.log_softmax(torch.zeros(3, 4), 2)),
    ("nll_loss_weight_size", lambda m: _f(m).nll_loss(torch.zeros(3, 4), torch.zeros(3, **_I64), torch.ones(5))),
    ("nll_loss_weight_2d", lambda m: _f(m).nll_loss(torch.zeros(3, 4), torch.zeros(3, **_I64), torch.ones(2, 2))),
    ("nll_loss_weight_dtype", lambda m: _f(m).nll_loss(torch.zeros(3, 4), torch.zeros(3, **_I64),
                                                      torch.ones(4, **_I64))),
    ("nll_loss_int32_target", lambda m: _f(m).nll_loss(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int32))),
    ("nll_loss_int32_target_batch", lambda m: _f(m).nll_loss(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int32))),
    ("nll_loss_int_input_batch", lambda m: _f(m).nll_loss(torch.zeros(3, 4, **_I64), torch.zeros(2, **_I64))),
    ("nll_loss_int_input", lambda m: _f(m).nll_loss(torch.zeros(3, 4, **_I64), torch.zeros(3, **_I64))),
    ("nll_loss_input_0d", lambda m: _f(m).nll_loss(torch.zeros(()), torch.zeros((), **_I64))),
    ("nll_loss_2d_target_2d", lambda m: _f(m).nll_loss(torch.zeros(3, 4), torch.zeros(3, 2, **_I64))),
    ("nll_loss_1d_target_2d", lambda m: _f(m).nll_loss(torch.zeros(4), torch.zeros(1, 1, **_I64))),
    ("nll_loss_1d_target_size", lambda m: _f(m).nll_loss(torch.zeros(4), torch.zeros(2, **_I64))),
    ("nll_loss_1d_target_1", lambda m: _f(m).nll_loss(torch.zeros(4), torch.zeros(1, **_I64))),
    ("nll_loss_spatial", lambda m: _f(m).nll_loss(torch.zeros(2, 4, 3), torch.zeros(2, 4, **_I64))),
    ("nll_loss_spatial_4d", lambda m: _f(m).nll_loss(torch.zeros(2, 4, 3, 5), torch.zeros(2, 3, **_I64))),
    ("nll_loss_no_classes_2d", lambda m: _f(m).nll_loss(torch.zeros(2, 0), torch.zeros(2, **_I64))),
    ("nll_loss_no_classes_2d_all_ignored", lambda m: _f(m).nll_loss(torch.zeros(2, 0), torch.full((2,), -100))),
    ("nll_loss_uint8_target_nd", lambda m: _f(m).nll_loss(torch.zeros(3, 4, 2), torch.zeros(3, 2, **_U8))),
    ("nll_loss_uint8_target_nd_empty", lambda m: _f(m).nll_loss(torch.zeros(0, 4, 2), torch.zeros(0, 2, **_U8))),
    ("cross_entropy_uint8_target_nd", lambda m: _f(m).cross_entropy(torch.zeros(3, 4, 2), torch.zeros(3, 2, **_U8))),
    ("cross_entropy_no_classes", lambda m: _f(m).cross_entropy(torch.zeros(3, 0), torch.zeros(3, **_I64))),
    ("cross_entropy_no_classes_all_ignored", lambda m: _f(m).cross_entropy(
        torch.zeros(3, 0), torch.full((3,), -100), reduction="sum")),
    ("cross_entropy_prob_ignore_index", lambda m: _f(m).cross_entropy(
        torch.zeros(3, 4), torch.zeros(3, 4), ignore_index=1)),
    ("cross_entropy_label_smoothing_1.5", lambda m: _f(m).cross_entropy(
        torch.zeros(3, 4), torch.zeros(3, **_I64), label_smoothing=1.5)),
    ("cross_entropy_target_shape", lambda m: _f(m).cross_entropy(torch.zeros(3, 4), torch.zeros(4, **_I64))),
    ("cross_entropy_1d_target_1", lambda m: _f(m).cross_entropy(torch.zeros(4), torch.zeros(1, **_I64))),
    ("cross_entropy_float_class_target", lambda m: _f(m).cross_entropy(torch.zeros(3, 4), torch.zeros(3))),
    ("cross_entropy_int_prob_target", lambda m: _f(m).cross_entropy(torch.zeros(3, 4), torch.zeros(3, 4, **_I64))),
    ("cross_entropy_int_input", lambda m: _f(m).cross_entropy(torch.zeros(3, 4, **_I64), torch.zeros(3, **_I64))),
    ("cross_entropy_int_input_target_shape", lambda m: _f(m).cross_entropy(
        torch.zeros(3, 4, **_I64), torch.zeros(2, **_I64))),
    ("cross_entropy_input_0d", lambda m: _f(m).cross_entropy(torch.zeros(()), torch.zeros((), **_I64))),
    ("cross_entropy_input_0d_prob", lambda m: _f(m).cross_entropy(torch.zeros(()), torch.zeros(()))),
    ("cross_entropy_input_0d_target_1", lambda m: _f(m).cross_entropy(torch.zeros(()), torch.zeros(1, **_I64))),
    ("cross_entropy_weight_size", lambda m: _f(m).cross_entropy(
        torch.zeros(3, 4), torch.zeros(3, **_I64), torch.ones(5))),
    ("cross_entropy_prob_weight_size", lambda m: _f(m).cross_entropy(torch.zeros(3, 4), torch.zeros(3, 4),
                                                                     torch.ones(1, 4))),
    ("cross_entropy_weight_dtype", lambda m: _f(m).cross_entropy(
        torch.zeros(3, 4), torch.zeros(3, **_I64), torch.ones(4, dtype=F64))),
    ("cross_entropy_prob_dtypes", lambda m: _f(m).cross_entropy(torch.zeros(3, 4), torch.zeros(3, 4, dtype=F64))),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c in _TYPE_CASES])
def test_exception_type_like_torch(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _raise_type(lambda: call(TF)) is _raise_type(lambda: call(torch))
