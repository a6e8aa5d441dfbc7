"""gradcheck and gradgradcheck in float64 for every op, and torch.library.opcheck for every
forward and backward op, on the calls that a forward, backward and double backward of
each case make."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import DEVICES, as_tuple, cast_inputs
from op_table import OPS

SMOOTH = [pytest.param(op, case, id=f"{op.name}-{case.name}")
          for op in OPS for case in op.cases if case.smooth]


def _floating_inputs(case, device):
    ins = cast_inputs(case.make(), torch.float64, device)
    return ins, [i for i, v in enumerate(ins) if isinstance(v, torch.Tensor) and v.requires_grad]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", SMOOTH)
def test_gradcheck_gradgradcheck(op, case, device):
    ins, idx = _floating_inputs(case, device)
    if not idx or all(ins[i].numel() == 0 for i in idx):
        pytest.skip("no differentiable input")
    # gradcheck perturbs elements one by one, so overlapping (stride-0) inputs are made dense.
    ins = [(t.detach().contiguous() if 0 in t.stride() else t.detach()).requires_grad_(True) if i in idx else t
           for i, t in enumerate(ins)]
    leaves = [ins[i] for i in idx]

    def fn(*xs):
        full = list(ins)
        for i, x in zip(idx, xs):
            full[i] = x
        # integer outputs (an argmin's index) carry no gradient: gradcheck sees the floating ones
        return tuple(o for o in as_tuple(op.ours(*full)) if o.is_floating_point())

    # Element by element on small inputs; on big ones, fast mode (random directions: the
    # same check of the Jacobian in a few products, without a column per element).
    fast = sum(t.numel() for t in leaves) > 300
    assert torch.autograd.gradcheck(fn, leaves, atol=1e-6, rtol=1e-5, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, leaves, atol=1e-6, rtol=1e-5, fast_mode=fast)


class RecordOps(TorchDispatchMode):
    """Records every torchmodules op called, with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "torchmodules":
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def _recorded_calls(op, case, dtype, device):
    ins = cast_inputs(case.make(), dtype, device)
    leaves = [t for t in ins if isinstance(t, torch.Tensor) and t.requires_grad]
    with RecordOps() as rec:
        outs = [o for o in as_tuple(op.ours(*ins)) if o.requires_grad]
        if outs and leaves:
            gouts = [torch.randn_like(o).requires_grad_(True) for o in outs]
            grads = torch.autograd.grad(outs, leaves, gouts, create_graph=True, allow_unused=True)
            used = [(g, l) for g, l in zip(grads, leaves) if g is not None and g.requires_grad]
            if used:
                torch.autograd.grad([g for g, _ in used], [l for _, l in used] + gouts,
                                    [torch.randn_like(g) for g, _ in used], allow_unused=True)
    return rec.calls


def _fresh(v):
    """A copy of a recorded argument, floating tensors requiring grad (to test autograd)."""
    if isinstance(v, torch.Tensor):
        t = v.detach().clone()
        return t.requires_grad_(t.dtype.is_floating_point)
    if isinstance(v, (list, tuple)):
        return type(v)(_fresh(u) for u in v)
    return v


OPCHECK_CASES = [pytest.param(op, case, id=f"{op.name}-{case.name}")
                 for op in OPS for case in op.cases if case.smooth]


def _signature(func, args):
    return (func, tuple((tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else repr(a) for a in args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", OPCHECK_CASES)
def test_opcheck(op, case, device):
    calls = _recorded_calls(op, case, torch.float32, device)
    assert calls, "no torchmodules op was called"
    done = set()
    for func, args, kwargs in calls:
        if _signature(func, args) not in done:  # the same op on the same shapes once per case
            done.add(_signature(func, args))
            torch.library.opcheck(func, _fresh(args), _fresh(kwargs))


# Non-differentiable ops that no case of the table calls, each opchecked in its own tests.
OPCHECKED_ELSEWHERE = {
    "sgd_step",  # tests/test_optim.py::test_opcheck_sgd_step
    "cross_entropy_backward_",  # tests/test_cross_entropy.py::test_opcheck_inplace_backward_op
}


def test_every_op_is_opchecked():
    """The forward, backward and double-backward calls of the cases (and OPCHECKED_ELSEWHERE)
    cover the whole op table."""
    seen = set()
    for op in OPS:
        for case in op.cases:
            if case.smooth:
                seen |= {f._schema.name.split("::")[1] for f, _, _ in _recorded_calls(op, case, torch.float64, "cpu")}
    table = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("torchmodules::")}
    assert table <= seen | OPCHECKED_ELSEWHERE, f"never opchecked: {table - seen - OPCHECKED_ELSEWHERE}"


@pytest.mark.parametrize("device", DEVICES)
def test_unused_outputs(device):
    """Outputs that take no part in the loss get no zero gradients made (materialize_grads off):
    the gradients still equal torch's. Duplicate with one copy unused, three of five unused."""
    import torchmodules.functional as TF
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    a, _ = TF.duplicate(x, 2)
    (g,) = torch.autograd.grad((a * a).sum(), x)
    torch.testing.assert_close(g, 2 * x.detach(), rtol=0, atol=0)
    ys = TF.duplicate(x, 5)
    (g,) = torch.autograd.grad(ys[1].sum() + (3 * ys[4]).sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 4.0), rtol=0, atol=0)
    # a later op's output unused: only the used branch flows back
    y = TF.maximum(x, -x)
    z = TF.relu(x)
    (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    torch.testing.assert_close(g, torch.autograd.grad(torch.maximum(x, -x).sum(), x)[0], rtol=0, atol=0)
    (g,) = torch.autograd.grad(z.sum(), x)
    torch.testing.assert_close(g, (x > 0).double(), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("needs", ["both", "a", "b"])
def test_maximum_backward_one_or_both(device, dtype, needs):
    """Maximum's backward: one pass writing both gradients (maximum_backward_both) when both
    inputs need one, maximum_backward for a single one; each equal to torch's, ties and NaN
    included, broadcasting summed down."""
    import torchmodules.functional as TF

    g = torch.Generator().manual_seed(0)
    a0 = torch.randint(-3, 4, (37, 129), generator=g).to(dtype)  # small integers: many ties
    b0 = torch.randint(-3, 4, (129,), generator=g).to(dtype)
    a0[3, 5], b0[7] = float("nan"), float("nan")
    dy = torch.randn(37, 129, generator=g).to(dtype).to(device)
    grads = []
    for fn in (TF.maximum, torch.maximum):
        a = a0.to(device).requires_grad_(needs in ("both", "a"))
        b = b0.to(device).requires_grad_(needs in ("both", "b"))
        with RecordOps() as rec:
            y = fn(a, b)
            inputs = [t for t in (a, b) if t.requires_grad]
            grads.append(torch.autograd.grad(y, inputs, dy))
        if fn is TF.maximum:
            names = [f._schema.name.split("::")[1] for f, _, _ in rec.calls]
            want = "maximum_backward_both" if needs == "both" else "maximum_backward"
            assert names.count(want) == 1 and names.count("maximum_backward_both") == (needs == "both"), names
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_mode_matches_torch(device):
    """Forward mode works (each op's Python autograd.Function and its jvp, torchmodules/_func.py):
    dual tensors, torch.func.jvp and jacfwd give torch's tangents, not zeros. Reverse-mode
    Jacobians (torch.autograd.functional.jacobian) equal torch's too."""
    import torch.autograd.forward_ad as fwAD
    import torchmodules.functional as TF
    x = torch.randn(5, dtype=torch.float64, device=device)
    w = torch.randn(3, 5, dtype=torch.float64, device=device)
    # two units active and one not at x, whatever the seed (with all inactive the tangent is 0)
    w = w * ((w @ x).sign() * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64, device=device))[:, None]
    t = torch.randn(5, dtype=torch.float64, device=device)

    def ours(v):
        return TF.log_softmax(TF.relu(TF.linear(v, w)), 0)

    def ref(v):
        return torch.log_softmax(torch.relu(v @ w.T), 0)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ours(fwAD.make_dual(x, t))).tangent
        ref_tangent = fwAD.unpack_dual(ref(fwAD.make_dual(x, t))).tangent
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-12, atol=1e-12)
    assert tangent.abs().sum() > 0
    torch.testing.assert_close(torch.func.jvp(ours, (x,), (t,)), torch.func.jvp(ref, (x,), (t,)), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(torch.func.jacfwd(ours)(x), torch.func.jacfwd(ref)(x), rtol=1e-12, atol=1e-12)
    for vec in (False, True):
        j = torch.autograd.functional.jacobian(lambda v: TF.relu(TF.linear(v, w)), x, vectorize=vec)
        ref_j = torch.autograd.functional.jacobian(lambda v: torch.relu(v @ w.T), x, vectorize=vec)
        torch.testing.assert_close(j, ref_j, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_side_outputs_carry_no_gradient(device):
    """The outputs that carry no gradient (masks, CrossEntropy's lse and total weight, NLL's
    total weight, NearestNeighbor's index) come out as plain tensors, like the total_weight of
    torch's aten.nll_loss_forward: no grad_fn, requires_grad False; the first output has our node."""
    x = torch.randn(5, 4, device=device, requires_grad=True)
    t = torch.randint(0, 4, (5,), device=device)
    ops = torch.ops.torchmodules
    _, torch_tw = torch.ops.aten.nll_loss_forward(x, t, None, 1, -100)
    calls = {"relu": lambda: ops.relu_forward(x), "maximum": lambda: ops.maximum_forward(x, x.flip(0)),
             "linear_relu": lambda: ops.linear_relu_forward(x, x, None),
             "cross_entropy": lambda: ops.cross_entropy_forward(x, t, None, 1, -100, 0.0),
             "nll_loss": lambda: ops.nll_loss_forward(x, t, None, 1, -100),
             "nearest_neighbor": lambda: ops.nearest_neighbor_forward(x, x[:3])}
    for name, call in calls.items():
        first, *side = call()
        assert first.grad_fn is not None, name
        for s in side:
            assert (s.grad_fn, s.requires_grad) == (torch_tw.grad_fn, torch_tw.requires_grad) == (None, False), name


def _hooked_grads(op, ins, idx, wrap):
    """Gradients of <w, outputs> with respect to the differentiable inputs (fresh leaves of the
    same values), and their own gradient (second order), with the forward run through wrap."""
    ins = [t.detach().requires_grad_(True) if i in idx else t for i, t in enumerate(ins)]
    leaves = [ins[i] for i in idx]
    outs = [o for o in as_tuple(wrap(op.ours, *ins)) if o.is_floating_point()]
    torch.manual_seed(0)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    used = [g for g in grads if g is not None and g.requires_grad]
    second = torch.autograd.grad(sum((g * g).sum() for g in used), leaves, allow_unused=True) if used else ()
    return [g for g in (*grads, *second) if g is not None]


def _checkpointed(fn, *ins):
    return torch.utils.checkpoint.checkpoint(fn, *ins, use_reentrant=False)


def _saved_on_cpu(fn, *ins):
    with torch.autograd.graph.save_on_cpu():
        return fn(*ins)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,case", SMOOTH)
@pytest.mark.parametrize("wrap", [_checkpointed, _saved_on_cpu], ids=["checkpoint", "save_on_cpu"])
def test_saved_tensor_hooks(op, case, device, wrap):
    """Under saved-tensor hooks (torch.utils.checkpoint without reentrancy recomputes the forward
    when the backward unpacks; save_on_cpu moves what is saved): each backward unpacks its saved
    tensors once, as the hooks require, and the first and second order gradients equal plain
    autograd's, bit for bit (the same kernels on the same values)."""
    ins, idx = _floating_inputs(case, device)
    if not idx or all(ins[i].numel() == 0 for i in idx):
        pytest.skip("no differentiable input")
    plain = _hooked_grads(op, ins, idx, lambda fn, *xs: fn(*xs))
    hooked = _hooked_grads(op, ins, idx, wrap)
    assert len(plain) == len(hooked)
    for a, b in zip(plain, hooked):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_threads_match_serial(device):
    """Forward and backward from several Python threads at once (each op's side outputs pass
    through thread-local storage) give, bit for bit, what the same calls give one by one."""
    import threading
    import torchmodules.functional as TF
    torch.manual_seed(9)
    w1, w2 = torch.randn(7, 5, device=device), torch.randn(4, 7, device=device)
    protos = torch.randn(3, 4, device=device)

    def work(x, t):
        x = x.clone().requires_grad_()
        h = TF.maximum(TF.linear_relu(x, w1), TF.relu(x @ w1.t() - 0.1))
        z = TF.linear(h, w2)
        _, sqdist = TF.nearest_neighbor(z, protos)
        loss = TF.cross_entropy(z, t) + TF.nll_loss(TF.log_softmax(z, 1), t) + sqdist.mean()
        (g,) = torch.autograd.grad(loss, x)
        return loss.detach(), g

    inputs = [(torch.randn(33, 5, device=device), torch.randint(0, 4, (33,), device=device)) for _ in range(4)]
    serial = [[work(*inp) for _ in range(20)] for inp in inputs]
    threaded = [None] * len(inputs)

    def run(i):
        threaded[i] = [work(*inputs[i]) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for s, t in zip(serial, threaded):
        for (l0, g0), (l1, g1) in zip(s, t):
            assert torch.equal(l0, l1) and torch.equal(g0, g1)
