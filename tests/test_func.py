"""torch.func over every op (torchmodules/_func.py): vjp, grad, jacrev, jvp, jacfwd, dual tensors and
vmap (in_dims, out_dims, batches of 1 and 0, nested) of each case of the op table, against the same
transform over torch's reference op in float64; vmap calls each kernel once per batch, not once per
sample; per-sample gradients of an MLP of our modules equal torch.nn's; the Jacobian of Linear is W
and that of ReLU a diagonal 0/1 mask."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import torchmodules as tm
import torchmodules.functional as TF
from helpers import DEVICES, as_tuple, assert_close, cast_inputs
from op_table import BF16, F16, F32, OPS, OPS_BY_NAME

F64 = torch.float64


_NUMEL = {}


def _numel(case):
    if id(case) not in _NUMEL:
        _NUMEL[id(case)] = sum(v.numel() for v in case.make() if isinstance(v, torch.Tensor))
    return _NUMEL[id(case)]


def _nonempty(case):
    return all(v.numel() > 0 for v in case.make() if isinstance(v, torch.Tensor) and v.is_floating_point())


def _cases(max_numel, smooth=True, ops=None, nonempty=False):
    """The op table's cases (smooth ones: finite, no ties) of at most max_numel input elements."""
    return [pytest.param(op, case, id=f"{op.name}-{case.name}") for op in OPS for case in op.cases
            if (case.smooth or not smooth) and _numel(case) <= max_numel and (ops is None or op.name in ops)
            and (not nonempty or _nonempty(case))]


def _inputs(case, device):
    return cast_inputs(case.make(), F64, device, requires_grad=False)


def _floating(ins):
    return [i for i, v in enumerate(ins) if isinstance(v, torch.Tensor) and v.is_floating_point()]


def _long_targets(fn):
    """fn with uint8 class indices as int64 (the same targets): torch's batching rule of nll_loss
    rejects uint8, ours takes them."""
    return lambda *args: fn(*[a.long() if isinstance(a, torch.Tensor) and a.dtype == torch.uint8 else a
                              for a in args])


def _of_floating(fn, ins, idx):
    """fn as a function of the floating tensor inputs (positions idx), returning its floating outputs."""
    def f(*xs):
        full = list(ins)
        for i, x in zip(idx, xs):
            full[i] = x
        return tuple(o for o in as_tuple(fn(*full)) if o.is_floating_point())
    return f


def _close(ours, ref, scale=1.0):
    """Every leaf of ours equals ref's (float64, NaN where ref has NaN; integer leaves exactly)."""
    o, r = pytree.tree_leaves(ours), pytree.tree_leaves(ref)
    assert len(o) == len(r), f"{len(o)} outputs, torch {len(r)}"
    for a, b in zip(o, r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10 * scale, equal_nan=True)


def _setup(op, case, device, dense=False):
    """ours and torch's op as functions of the floating inputs, and those inputs (with dense, the
    expanded ones copied: forward mode cannot make a dual of a stride-0 tensor, torch's neither)."""
    ins = _inputs(case, device)
    idx = _floating(ins)
    if not idx:
        pytest.skip("no floating input")
    prim = [ins[i].contiguous() if dense and 0 in ins[i].stride() else ins[i] for i in idx]
    return _of_floating(op.ours, ins, idx), _of_floating(_long_targets(op.ref), ins, idx), prim


# ---- reverse mode ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(5000))
def test_vjp_and_grad(op, case, device):
    f, ref, prim = _setup(op, case, device)
    out, pull = vjp(f, *prim)
    out_r, pull_r = vjp(ref, *prim)
    cots = tuple(torch.randn_like(o) for o in out_r)
    _close(out, out_r, case.scale)
    _close(pull(cots), pull_r(cots), case.scale)

    def scalar(fn):
        return lambda *xs: sum((o * c).sum() for o, c in zip(fn(*xs), cots))
    argnums = tuple(range(len(prim)))
    _close(grad(scalar(f), argnums)(*prim), grad(scalar(ref), argnums)(*prim), case.scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(200, nonempty=True))
def test_jacrev_jacfwd(op, case, device):
    f, ref, prim = _setup(op, case, device, dense=True)
    argnums = tuple(range(len(prim)))
    _close(jacrev(f, argnums)(*prim), jacrev(ref, argnums)(*prim), case.scale)
    _close(jacfwd(f, argnums)(*prim), jacfwd(ref, argnums)(*prim), case.scale)


# ---- forward mode ---------------------------------------------------------------------------

def _dual(fn, prim, tans):
    """fn's outputs' tangents by torch.autograd.forward_ad dual tensors (zeros where none)."""
    with fwAD.dual_level():
        outs = fn(*[fwAD.make_dual(p, t) for p, t in zip(prim, tans)])
        ts = [fwAD.unpack_dual(o).tangent for o in outs]
        return tuple(torch.zeros_like(o) if t is None else t.clone() for o, t in zip(outs, ts))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(5000))
def test_jvp_and_dual_tensors(op, case, device):
    f, ref, prim = _setup(op, case, device, dense=True)
    tans = tuple(torch.randn_like(p) for p in prim)
    _close(jvp(f, tuple(prim), tans), jvp(ref, tuple(prim), tans), case.scale)
    _close(_dual(f, prim, tans), _dual(ref, prim, tans), case.scale)


# ---- higher order -----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(60, nonempty=True))
def test_hessian(op, case, device):
    """Second order both ways: reverse over reverse (the backward ops' backward and vmap rules) and
    forward over reverse (their jvp)."""
    f, ref, prim = _setup(op, case, device, dense=True)
    w = [torch.randn_like(o) for o in ref(*prim)]

    def scalar(fn):
        return lambda *xs: sum((o * c).sum() for o, c in zip(fn(*xs), w))
    argnums = tuple(range(len(prim)))
    h_r = jacrev(jacrev(scalar(ref), argnums), argnums)(*prim)
    _close(jacrev(jacrev(scalar(f), argnums), argnums)(*prim), h_r, case.scale)
    _close(jacfwd(jacrev(scalar(f), argnums), argnums)(*prim), h_r, case.scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(24, ops=("log_softmax", "cross_entropy", "mse_loss", "amax",
                                                    "nearest_neighbor", "linear"), nonempty=True))
def test_third_order(op, case, device):
    """The double backward ops differentiated again: reverse (their backward) and forward (their jvp)."""
    f, ref, prim = _setup(op, case, device, dense=True)
    w = [torch.randn_like(o) for o in ref(*prim)]

    def scalar(fn):
        return lambda x: sum((o * c).sum() for o, c in zip(fn(x, *prim[1:]), w))
    t_r = jacrev(jacrev(jacrev(scalar(ref))))(prim[0])
    _close(jacrev(jacrev(jacrev(scalar(f))))(prim[0]), t_r, case.scale)
    _close(jacfwd(jacrev(jacrev(scalar(f))))(prim[0]), t_r, case.scale)


# ---- vmap -------------------------------------------------------------------------------------

def _stack(vals, base, d):
    """The samples vals stacked at dim d (a batch of 0: base's shape with 0 there)."""
    if not vals:
        return base.unsqueeze(0)[:0].movedim(0, d)
    return torch.stack(vals, d)


def _batched(case, device, B, pattern):
    """B draws of the case's inputs stacked, and the in_dims: `dim0` every tensor at dim 0,
    `first` only the first tensor (the others shared), `last` every tensor at its last dim,
    `alt` every second tensor (from the second) at dim 0, `but_last` all but the last tensor,
    `only_last` only the last one."""
    draws = [_inputs(case, device) for _ in range(max(B, 1))]
    base = draws[0]
    tensors = [i for i, v in enumerate(base) if isinstance(v, torch.Tensor)]
    dims = [None] * len(base)
    for j, i in enumerate(tensors):
        last = j == len(tensors) - 1
        dims[i] = {"dim0": 0, "first": 0 if j == 0 else None, "last": -1, "alt": 0 if j % 2 else None,
                   "but_last": None if last else 0, "only_last": 0 if last else None}[pattern]
    if all(d is None for d in dims):
        pytest.skip("a single tensor input")
    args = [_stack([s[i] for s in draws[:B]], base[i], d) if d is not None else base[i]
            for i, d in enumerate(dims)]
    return args, tuple(dims)


def _ref_vmap(fn, dims, out_dims, args):
    """torch's op under vmap; where torch's own vmap fails (per-sample class weights, uint8 targets,
    empty batches of its losses, data-dependent indexing in nested vmap), what vmap means: the op
    sample by sample, stacked."""
    try:
        return vmap(fn, dims, out_dims)(*args)
    except (RuntimeError, IndexError):
        pass
    B = next(a.shape[d] for a, d in zip(args, dims) if d is not None)

    def sample(i):
        if B == 0:  # no sample: zeros of a sample's shape, for the shapes of the outputs
            return [a if d is None else a.new_zeros(a.movedim(d, 0).shape[1:]) for a, d in zip(args, dims)]
        return [a if d is None else a.select(d, i) for a, d in zip(args, dims)]
    outs = [torch.stack(o, out_dims) for o in zip(*[as_tuple(fn(*sample(i))) for i in range(max(B, 1))])]
    return tuple(o.narrow(out_dims, 0, 0) if B == 0 else o for o in outs)


# (pattern, B, the largest cases, smooth cases only): every case batched at dim 0 and on the first
# or all but the last input, the smaller smooth ones in the other layouts and batch sizes
_VMAP = [("dim0", 3, 5000, False), ("first", 3, 1000, False), ("but_last", 3, 1000, False), ("last", 3, 60, True),
         ("alt", 3, 60, True), ("only_last", 3, 60, True), ("dim0", 1, 30, True), ("dim0", 0, 30, True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case,pattern,B", [
    pytest.param(*p.values, pattern, B, id=f"{p.id}-{pattern}-{B}")
    for pattern, B, n, smooth in _VMAP for p in _cases(n, smooth=smooth)])
def test_vmap(op, case, device, pattern, B):
    args, dims = _batched(case, device, B, pattern)
    out_dims = -1 if pattern == "last" else 0
    _close(vmap(op.ours, dims, out_dims)(*args), _ref_vmap(op.ref, dims, out_dims, args), case.scale)


_REDUCED = [("cross_entropy", "mean"), ("cross_entropy", "weight_sum"), ("cross_entropy", "smooth_weight_ignore_mean"),
            ("cross_entropy", "prob_nd_mean"), ("nll_loss", "4d_mean_weight"), ("nll_loss", "weight_mean_ignored"),
            ("mse_loss", "mean"), ("mse_loss", "bcast_input")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("name,case_name", _REDUCED)
def test_vmap_reduced_losses_low_precision(name, case_name, dtype, device):
    """vmap of the mean / sum losses, whose per-sample sums ours takes in float32 (as the kernels),
    in float32 and the half types: torch's float64 result on the same rounded inputs, within twice
    torch's own error in that dtype."""
    op = OPS_BY_NAME[name]
    case = next(c for c in op.cases if c.name == case_name)
    draws = [cast_inputs(case.make(), dtype, device, requires_grad=False) for _ in range(3)]
    dims = tuple(0 if i < 2 else None for i in range(len(draws[0])))  # input and target batched
    args = [torch.stack([d[i] for d in draws]) if dims[i] == 0 else v for i, v in enumerate(draws[0])]
    args64 = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    ours = vmap(op.ours, dims)(*args)
    ref = as_tuple(_ref_vmap(op.ref, dims, 0, args))[0]
    ref64 = as_tuple(_ref_vmap(op.ref, dims, 0, args64))[0]
    assert_close(f"{name}-{case_name}", ours, ref64.cpu(), ref, dtype, case.scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(100))
def test_vmap_nested(op, case, device):
    """vmap of vmap: 2 x 3 samples, the inner level over every tensor, the outer over the first."""
    inner = [_batched(case, device, 3, "dim0") for _ in range(2)]
    dims = inner[0][1]
    outer = tuple(0 if j == dims.index(0) else None for j in range(len(dims)))
    args = [torch.stack([a[j] for a, _ in inner]) if d == 0 else inner[0][0][j] for j, d in enumerate(outer)]
    _close(vmap(vmap(op.ours, dims), outer)(*args),
           _ref_vmap(lambda *a: _ref_vmap(op.ref, dims, 0, a), outer, 0, args), case.scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", _cases(1000))
def test_vmap_of_vjp(op, case, device):
    """Per-sample pullbacks: primals and cotangents batched, the backward ops' vmap rules."""
    ins = _inputs(case, device)
    idx = _floating(ins)
    if not idx:
        pytest.skip("no floating input")
    B = 3
    draws = [_inputs(case, device) for _ in range(B)]
    prim = [torch.stack([d[i] for d in draws]) for i in idx]
    outs = _of_floating(op.ref, ins, idx)(*[ins[i] for i in idx])
    cots = [torch.randn(B, *o.shape, dtype=F64, device=device) for o in outs]

    def pull(fn):
        def per_sample(*pc):  # the primals, then the cotangents
            return vjp(_of_floating(fn, ins, idx), *pc[:len(idx)])[1](pc[len(idx):])
        return per_sample
    args = prim + cots
    dims = (0,) * len(args)
    _close(vmap(pull(op.ours))(*args), _ref_vmap(pull(op.ref), dims, 0, args), case.scale)


class _CountOps(TorchDispatchMode):
    """Counts the calls of every torchmodules kernel (below every transform: the real calls)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "torchmodules":
            self.calls[func._opname] = self.calls.get(func._opname, 0) + 1
        return func(*args, **(kwargs or {}))


def _first_smooth(op):
    return next(c for c in op.cases if c.smooth and _numel(c) > 1)


@pytest.mark.parametrize("op", [pytest.param(op, id=op.name) for op in OPS])
def test_vmap_calls_each_kernel_once(op):
    """vmap over the first tensor calls the op's forward kernel once for the whole batch (not once
    per sample), and vmap of a vjp as many kernels for 7 samples as for 2."""
    case = _first_smooth(op)
    counts = []
    for B in (2, 7):
        args, dims = _batched(case, "cpu", B, "first")
        with _CountOps() as c:
            vmap(op.ours, dims)(*args)
        fwd = [n for n in c.calls if n.endswith("_forward")]
        assert len(fwd) == 1 and c.calls[fwd[0]] == 1, c.calls
        ins = _inputs(case, "cpu")
        idx = _floating(ins)[:1]  # the first floating input batched, the others shared
        f = _of_floating(op.ours, ins, idx)
        x = torch.stack([_inputs(case, "cpu")[idx[0]] for _ in range(B)])
        with _CountOps() as c:
            outs = vmap(f)(x)
            vmap(lambda xi, o: vjp(f, xi)[1](o))(x, tuple(torch.ones_like(o) for o in outs))
        counts.append(c.calls)
    assert counts[0] == counts[1]


# ---- per-sample gradients, Jacobians ----------------------------------------------------------

def _mlp(lib, final):
    return torch.nn.Sequential(lib.Linear(6, 8), lib.ReLU(), lib.Linear(8, 8), lib.ReLU(), lib.Linear(8, 4),
                               *final).double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", ["nll", "cross_entropy"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["rows", "unbatched"])
def test_per_sample_grads_mlp(device, loss, unbatched):
    """vmap(grad(loss)) over functional_call of an MLP of our modules: the per-sample gradients of
    torch.nn's same MLP (and the kernels called as often for 5 samples as for 16)."""
    nll = loss == "nll"
    ours = _mlp(tm, [tm.LogSoftmax(dim=-1)] if nll else []).to(device)
    theirs = _mlp(torch.nn, [torch.nn.LogSoftmax(dim=-1)] if nll else []).to(device)
    theirs.load_state_dict(ours.state_dict())
    crit = (tm.NLLLoss(), torch.nn.NLLLoss()) if nll else (tm.CrossEntropyLoss(), torch.nn.CrossEntropyLoss())
    calls = []
    for B in (5, 16):
        x = torch.randn(B, 6, dtype=F64, device=device)
        t = torch.randint(0, 4, (B,), device=device)
        grads = []
        for model, c in zip((ours, theirs), crit):
            params = {k: v.detach() for k, v in model.named_parameters()}

            def sample_loss(p, xi, ti):
                if unbatched:  # one sample: input (features,), target ()
                    return c(functional_call(model, p, (xi,)), ti)
                return c(functional_call(model, p, (xi[None],)), ti[None])
            with _CountOps() as count:
                grads.append(vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, t))
            calls.append(count.calls)
        _close(grads[0], grads[1])
        # the same from a loop of torch.autograd over torch's MLP, sample by sample
        for i in (0, B - 1):
            theirs.zero_grad()
            out = theirs(x[i] if unbatched else x[i:i + 1])
            crit[1](out, t[i] if unbatched else t[i:i + 1]).backward()
            _close({k: v[i] for k, v in grads[0].items()}, {k: v.grad for k, v in theirs.named_parameters()})
    assert calls[0] == calls[2] and calls[0], calls  # ours: 5 and 16 samples
    assert calls[1] == {} and calls[3] == {}  # torch's MLP calls none of ours


@pytest.mark.parametrize("device", DEVICES)
def test_jacobians_of_linear_and_relu(device):
    """The Jacobian of y = x W^T + b in x is W; that of ReLU, diag(x > 0): by jacrev and jacfwd,
    equal to torch's."""
    x = torch.randn(5, dtype=F64, device=device)
    x[1] = 0.0
    w = torch.randn(3, 5, dtype=F64, device=device)
    b = torch.randn(3, dtype=F64, device=device)
    for jac in (jacrev, jacfwd):
        J = jac(TF.linear)(x, w, b)
        torch.testing.assert_close(J, w, rtol=0, atol=0)
        torch.testing.assert_close(J, jac(torch.nn.functional.linear)(x, w, b), rtol=0, atol=0)
        J = jac(TF.relu)(x)
        torch.testing.assert_close(J, torch.diag((x > 0).to(F64)), rtol=0, atol=0)
        torch.testing.assert_close(J, jac(torch.relu)(x), rtol=0, atol=0)
        # a batch of inputs: one Jacobian per sample, by vmap
        X = torch.randn(4, 5, dtype=F64, device=device)
        torch.testing.assert_close(vmap(jac(TF.relu))(X), vmap(jac(torch.relu))(X), rtol=0, atol=0)


def test_functionalize():
    """torch.func.functionalize (alone, under make_fx, under grad) passes our ops through: they
    mutate nothing."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functionalize
    x = torch.randn(4, 5, dtype=F64)
    w = torch.randn(3, 5, dtype=F64)

    def f(x, w):
        return TF.log_softmax(TF.relu(TF.linear(x, w)), 1)

    def ref(x, w):
        return torch.log_softmax(torch.relu(torch.nn.functional.linear(x, w)), 1)
    _close(functionalize(f)(x, w), ref(x, w))
    graph = make_fx(functionalize(f))(x, w)  # a graph of our ops
    assert [str(n.target) for n in graph.graph.nodes if isinstance(n.target, torch._ops.OpOverload)] == \
        [f"torchmodules.{name}_forward.default" for name in ("linear", "relu", "log_softmax")]
    _close(graph(x, w), ref(x, w))
    _close(grad(lambda w: functionalize(f)(x, w).sum())(w), grad(lambda w: ref(x, w).sum())(w))


def test_eager_path_unchanged():
    """Outside transforms the ops keep their C++ autograd nodes; a dual tensor takes the Python
    Function (the one with a jvp)."""
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    assert "Cpp" in type(TF.relu(x).grad_fn).__name__
    with fwAD.dual_level():
        y = TF.relu(fwAD.make_dual(x, torch.ones_like(x)))
        assert "Cpp" not in type(y.grad_fn).__name__
        torch.testing.assert_close(fwAD.unpack_dual(y).tangent, (x > 0).to(F64))


@pytest.mark.parametrize("name,make", [
    ("relu_backward", lambda x: (x, torch.ops.torchmodules.relu_forward(x)[1])),
    ("maximum_backward", lambda x: (x, torch.ops.torchmodules.maximum_forward(x, -x)[1], 0)),
])
def test_vmap_over_mask_ops_raises(name, make):
    """relu_backward / maximum_backward read a packed bit mask with no batch dim: vmap over them
    raises (the forward ops' backward never passes them a batch)."""
    x = torch.randn(3, 5, dtype=F64)
    args = make(x[0])
    with pytest.raises(NotImplementedError, match="bit mask"):
        vmap(getattr(torch.ops.torchmodules, name), (0,) + (None,) * (len(args) - 1))(x, *args[1:])
