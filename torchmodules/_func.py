"""torch.func over our ops: vmap, grad, vjp, jacrev, jvp, jacfwd, hessian; and forward-mode dual tensors.

Our ops' Autograd kernels are C++ torch::autograd::Functions (csrc/autograd*.cpp), which functorch
refuses ("cannot use C++ torch::autograd::Function with functorch transforms"). While a torch.func
transform is active, functorch puts its FuncTorchDynamicLayerFrontMode key among the thread's
dispatch keys, and that key's kernel is the first one every op call meets. Here every op gets a
Python kernel on that key which applies the op's Python torch.autograd.Function below. Its apply
hands the call to functorch (custom_function_call), which peels the transforms level by level: a
grad / vjp level records the Function's backward, a jvp level calls its jvp, a vmap level its vmap
staticmethod -- our batching rule, one call of the op on the whole batch (the batch folded into the
op's rows). With no level left, forward calls the op as in eager (the C++ kernels). backward, jvp
and vmap are written with our ops, which under an outer transform come back here: vmap of grad,
jacrev of jacrev, jacfwd of jacrev compose.

Plain eager never meets this key, so the fast path (C++ autograd) is untouched. The C++ Autograd
kernels send a call carrying a forward-mode tangent (torch.autograd.forward_ad) here too, for the
jvp staticmethods (csrc/autograd.h). Under torch.func.functionalize, which has no rule for
autograd.Functions, the kernel passes the op through one level down (our ops mutate nothing);
functionalize of grad / vjp stays unsupported (torch's NYI for any autograd.Function).

Batches our kernels cannot take in one call: linear with both the input and the weight batched is
torch's batched matmul (torch.einsum); per-sample class weights (cross_entropy, nll_loss) and
per-sample prototypes (nearest_neighbor's forward) loop over the samples. The bit masks of relu and
maximum have no batch dim: vmap over relu_backward / maximum_backward themselves raises (the
backward of relu_forward / maximum_forward recomputes the mask from batched tensors instead).
"""
import math

import torch
from torch._C._functorch import TransformType, peek_interpreter_stack
from torch._functorch.pyfunctorch import coerce_cinterpreter
from torch._subclasses.functional_tensor import FunctorchFunctionalizeAPI
from torch.autograd import Function

from ._ops import ops

_lib = torch.library.Library("torchmodules", "IMPL")
_KEY = "FuncTorchDynamicLayerFrontMode"


def _functionalized(interpreter, op, args):
    """op under torch.func.functionalize, which has no rule for an autograd.Function: our ops mutate
    nothing, so the op itself one level down, on the unwrapped tensors."""
    ctx = FunctorchFunctionalizeAPI(coerce_cinterpreter(interpreter))
    with ctx.redispatch_to_next():
        out = op(*ctx.unwrap_tensors(args))
    return ctx.wrap_tensors(out)


def _register(name, spread=False):
    """Class decorator: the Function becomes op `name`'s kernel under torch.func (and for dual
    tensors); with spread, the op's one list argument is passed as the Function's arguments."""
    op = getattr(ops, name).default

    def deco(fn):
        def kernel(*args):
            top = peek_interpreter_stack()
            if top is not None and top.key() == TransformType.Functionalize:
                return _functionalized(top, op, args)
            return fn.apply(*(args[0] if spread else args))
        _lib.impl(name, kernel, _KEY)
        return fn
    return deco


# ---- helpers ---------------------------------------------------------------------------------

def _save(ctx, *tensors):
    """Saved for both the backward and the jvp."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _front(t, bdim, B=None):
    """t with its vmap dim first; an unbatched t as is, or expanded to B samples when B is given."""
    if t is None:
        return None
    if bdim is not None:
        return t.movedim(bdim, 0)
    return t if B is None else t.expand(B, *t.shape)


def _sample_shape(t, bdim):
    return t.shape if bdim is None else t.shape[:bdim] + t.shape[bdim + 1:]


def _align(ts, bdims):
    """Operands of a broadcasting op, batch first: a batched one as [B, 1.., *shape] at the samples'
    common rank, an unbatched one as is (broadcasting puts it behind B)."""
    rank = max(len(_sample_shape(t, d)) for t, d in zip(ts, bdims))
    out = []
    for t, d in zip(ts, bdims):
        if d is not None:
            t = t.movedim(d, 0)
            t = t[(slice(None),) + (None,) * (rank + 1 - t.dim())]
        out.append(t)
    return out


def _plus(a, b):
    """a + b by our add, None standing for zero."""
    return b if a is None else a if b is None else ops.add_forward(a, b)


def _sum_to(g, shape):
    """g summed down to shape (the gradient of a broadcast), by our add_backward."""
    return g if g.shape == shape else ops.add_backward(g, list(shape))


def _per_sample_sum(v):
    """v [B, ...] summed to [B], by our add_backward."""
    return v if v.dim() == 1 else ops.add_backward(v, [v.shape[0]] + [1] * (v.dim() - 1)).reshape(v.shape[0])


def _wrap_dim(d, n):
    """Dim d of an n-dim sample (a 0-d one takes 0 and -1), range-checked as torch does."""
    m = max(n, 1)
    if not -m <= d < m:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-m}, {m - 1}], but got {d})")
    return d % m


def _acc(dtype):
    """The kernels' accumulation dtype: float32 for the half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _loop(op, B, in_dims, args):
    """op sample by sample, stacked at dim 0: only for the batches our kernels cannot take at once."""
    def sample(i):
        return [a if not isinstance(a, torch.Tensor) or d is None else a.select(d, i) for a, d in zip(args, in_dims)]
    if B == 0:  # no sample to run: the shapes from the fake kernel, on meta tensors
        fake = op(*[a.new_empty(_sample_shape(a, d), device="meta") if isinstance(a, torch.Tensor) and d is not None
                    else a.to("meta") if isinstance(a, torch.Tensor) else a for a, d in zip(args, in_dims)])
        dev = next(a.device for a in args if isinstance(a, torch.Tensor))
        outs = [tuple(o.new_empty(o.shape, device=dev) for o in fake) if isinstance(fake, (tuple, list))
                else fake.new_empty(fake.shape, device=dev)]
    else:
        outs = [op(*sample(i)) for i in range(B)]
    outs = [tuple(o) if isinstance(o, (tuple, list)) else o for o in outs]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o)[:B] for o in zip(*outs)), (0,) * len(outs[0])
    return torch.stack(outs)[:B], 0


_MASK = ("torchmodules.{}: vmap over the op itself is not supported: its bit mask has no batch dim. "
         "Transform the forward op ({}) instead, whose backward recomputes the mask.")


# ---- Linear: y = x W^T + b ---------------------------------------------------------------------

@_register("linear_forward")
class _Linear(Function):
    @staticmethod
    def forward(x, w, b):
        return ops.linear_forward(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs
        ctx.bias = b is not None
        _save(ctx, x, w)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad
        return (ops.linear_backward_input(gy, w) if nx else None, ops.linear_backward_weight(gy, x) if nw else None,
                _sum_to(gy, w.shape[:1]) if ctx.bias and nb else None)

    @staticmethod
    def jvp(ctx, tx, tw, tb):
        # dy = dx W^T + x dW^T + db
        x, w = ctx.saved_tensors
        t = None if tx is None else ops.linear_forward(tx, w, tb)
        if tw is not None:
            t = _plus(t, ops.linear_forward(x, tw, tb if tx is None else None))
        if t is None and tb is not None:  # only the bias moves
            t = tb.expand(*x.shape[:-1], w.shape[0]).clone()
        return t

    @staticmethod
    def vmap(info, in_dims, x, w, b):
        dx, dw, db = in_dims
        B = info.batch_size
        x_, w_, b_ = _front(x, dx), _front(w, dw), _front(b, db)
        rank = len(_sample_shape(x, dx))  # of y too
        if dw is None:  # one weight: the batch is more rows of x
            y = ops.linear_forward(x_, w, None if db is not None else b)
            if db is not None:  # per-sample biases, broadcast over the rows
                y = ops.add_forward(y, b_[(slice(None),) + (None,) * (rank - 1)])
            return y, 0
        n, k = w_.shape[1:]
        if dx is None:  # one x, B weights: all of them at once as a [B*n, k] weight
            bias = None if b is None else (b_ if db is not None else b.expand(B, n)).reshape(B * n)
            y = ops.linear_forward(x, w_.reshape(B * n, k), bias)
            return y.unflatten(-1, (B, n)), y.dim() - 1
        # per-sample inputs and weights: a batched matmul, which our kernels do not have
        y = torch.einsum("b...k,bnk->b...n", x_, w_)
        if b is not None:
            y = ops.add_forward(y, b if db is None else b_[(slice(None),) + (None,) * (rank - 1)])
        return y, 0


@_register("linear_backward_input")
class _LinearBackwardInput(Function):
    """dx = dy W."""
    @staticmethod
    def forward(gy, w):
        return ops.linear_backward_input(gy, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs)

    @staticmethod
    def backward(ctx, gg):
        gy, w = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (ops.linear_forward(gg, w, None) if n[0] else None, ops.linear_backward_weight(gy, gg) if n[1] else None)

    @staticmethod
    def jvp(ctx, tgy, tw):
        gy, w = ctx.saved_tensors
        return _plus(None if tgy is None else ops.linear_backward_input(tgy, w),
                     None if tw is None else ops.linear_backward_input(gy, tw))

    @staticmethod
    def vmap(info, in_dims, gy, w):
        dg, dw = in_dims
        B = info.batch_size
        if dw is None:
            return ops.linear_backward_input(_front(gy, dg), w), 0
        w_ = _front(w, dw)
        n, k = w_.shape[1:]
        if dg is None:  # B weights side by side: [n, B*k]
            y = ops.linear_backward_input(gy, w_.movedim(0, 1).reshape(n, B * k))
            return y.unflatten(-1, (B, k)), y.dim() - 1
        return torch.einsum("b...n,bnk->b...k", _front(gy, dg), w_), 0


@_register("linear_backward_weight")
class _LinearBackwardWeight(Function):
    """dW = dy^T x, summed over the rows."""
    @staticmethod
    def forward(gy, x):
        return ops.linear_backward_weight(gy, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs)

    @staticmethod
    def backward(ctx, gg):
        gy, x = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (ops.linear_forward(x, gg, None) if n[0] else None, ops.linear_backward_input(gy, gg) if n[1] else None)

    @staticmethod
    def jvp(ctx, tgy, tx):
        gy, x = ctx.saved_tensors
        return _plus(None if tgy is None else ops.linear_backward_weight(tgy, x),
                     None if tx is None else ops.linear_backward_weight(gy, tx))

    @staticmethod
    def vmap(info, in_dims, gy, x):
        dg, dx = in_dims
        B = info.batch_size
        gy_, x_ = _front(gy, dg), _front(x, dx)
        if dx is None:  # the samples' dy side by side as columns: [rows, B*n] -> [B*n, k]
            n, k = gy_.shape[-1], x.shape[-1]
            cols = gy_.movedim(0, -2).reshape(*gy_.shape[1:-1], B * n)
            return ops.linear_backward_weight(cols, x).reshape(B, n, k), 0
        if dg is None:  # likewise the samples' x: [n, B*k]
            n, k = gy.shape[-1], x_.shape[-1]
            cols = x_.movedim(0, -2).reshape(*x_.shape[1:-1], B * k)
            return ops.linear_backward_weight(gy, cols).reshape(n, B, k), 1
        # per-sample dy and x (per-sample gradients): a batched matmul, which our kernels do not have
        return torch.einsum("b...n,b...k->bnk", gy_, x_), 0


# ---- Linear + ReLU fused: y = relu(x W^T + b) -------------------------------------------------
# As ReLU's: the mask has no batch dim, so the backward and jvp go through y (_ReluGrad).

@_register("linear_relu_forward")
class _LinearRelu(Function):
    @staticmethod
    def forward(x, w, b):
        return tuple(ops.linear_relu_forward(x, w, b))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs
        ctx.bias = b is not None
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        _save(ctx, x, w, output[0])

    @staticmethod
    def backward(ctx, gy, _):
        if gy is None:
            return None, None, None
        x, w, y = ctx.saved_tensors
        gz = _ReluGrad.apply(gy, y)
        nx, nw, nb = ctx.needs_input_grad
        return (ops.linear_backward_input(gz, w) if nx else None, ops.linear_backward_weight(gz, x) if nw else None,
                _sum_to(gz, w.shape[:1]) if ctx.bias and nb else None)

    @staticmethod
    def jvp(ctx, tx, tw, tb):
        # dy = relu'(z) (dx W^T + x dW^T + db)
        x, w, y = ctx.saved_tensors
        t = None if tx is None else ops.linear_forward(tx, w, tb)
        if tw is not None:
            t = _plus(t, ops.linear_forward(x, tw, tb if tx is None else None))
        if t is None and tb is not None:  # only the bias moves
            t = tb.expand(*x.shape[:-1], w.shape[0]).clone()
        return (None if t is None else _ReluGrad.apply(t, y)), None

    @staticmethod
    def vmap(info, in_dims, x, w, b):
        dx, dw, db = in_dims
        if dw is None and db is None:  # one weight and bias: the batch is more rows of x, one call
            return tuple(ops.linear_relu_forward(_front(x, dx), w, b)), (0, None)
        z, zd = _Linear.vmap(info, in_dims, x, w, b)  # the other layouts: Linear's rule, then ReLU
        return tuple(ops.relu_forward(z.movedim(zd, 0))), (0, None)


# ---- ReLU: y = max(x, 0) -----------------------------------------------------------------------
# The forward's packed bit mask has no batch dim, so the backward recomputes it from y (a NaN or
# positive y passes the gradient: the mask of !(x <= 0), exactly).

@_register("relu_forward")
class _Relu(Function):
    @staticmethod
    def forward(x):
        return tuple(ops.relu_forward(x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, mask = output
        ctx.mark_non_differentiable(mask)
        ctx.set_materialize_grads(False)
        _save(ctx, y)

    @staticmethod
    def backward(ctx, gy, _):
        return None if gy is None else _ReluGrad.apply(gy, ctx.saved_tensors[0])

    @staticmethod
    def jvp(ctx, tx):
        return _ReluGrad.apply(tx, ctx.saved_tensors[0]), None

    @staticmethod
    def vmap(info, in_dims, x):
        return tuple(ops.relu_forward(_front(x, in_dims[0]))), (0, None)


class _ReluGrad(Function):
    """dy where y > 0 or NaN, else 0: relu's backward from its output y (two kernels: the mask, then the backward)."""
    @staticmethod
    def forward(gy, y):
        return ops.relu_backward(gy, ops.relu_forward(y)[1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[1])

    @staticmethod
    def backward(ctx, gg):  # linear in dy; zero in y almost everywhere
        return _ReluGrad.apply(gg, ctx.saved_tensors[0]) if ctx.needs_input_grad[0] else None, None

    @staticmethod
    def jvp(ctx, tgy, ty):
        return None if tgy is None else _ReluGrad.apply(tgy, ctx.saved_tensors[0])

    @staticmethod
    def vmap(info, in_dims, gy, y):
        B = info.batch_size
        return _ReluGrad.apply(_front(gy, in_dims[0], B), _front(y, in_dims[1], B)), 0


@_register("relu_backward")
class _ReluBackward(Function):
    """The op itself, with a mask made by relu_forward: grad and jvp only."""
    @staticmethod
    def forward(gy, mask):
        return ops.relu_backward(gy, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[1])

    @staticmethod
    def backward(ctx, gg):
        return ops.relu_backward(gg, ctx.saved_tensors[0]), None

    @staticmethod
    def jvp(ctx, tgy, _):
        return None if tgy is None else ops.relu_backward(tgy, ctx.saved_tensors[0])

    @staticmethod
    def vmap(info, in_dims, gy, mask):
        raise NotImplementedError(_MASK.format("relu_backward", "relu_forward"))


# ---- Duplicate: y_k = x;  dx = sum_k dy_k ------------------------------------------------------

@_register("duplicate_forward")
class _Duplicate(Function):
    @staticmethod
    def forward(x, n):
        return tuple(ops.duplicate_forward(x, n))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.n = inputs[1]
        ctx.set_materialize_grads(False)  # unused copies add nothing

    @staticmethod
    def backward(ctx, *gys):
        used = [g for g in gys if g is not None]
        return (ops.duplicate_backward(used) if used else None), None

    @staticmethod
    def jvp(ctx, tx, _):
        return tuple(ops.duplicate_forward(tx, ctx.n))

    @staticmethod
    def vmap(info, in_dims, x, n):
        return tuple(ops.duplicate_forward(_front(x, in_dims[0]), n)), (0,) * n


@_register("duplicate_backward", spread=True)  # a list of gradients: one argument each
class _DuplicateBackward(Function):
    @staticmethod
    def forward(*gys):
        return ops.duplicate_backward(list(gys))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.k = len(inputs)

    @staticmethod
    def backward(ctx, gg):
        return (gg,) * ctx.k

    @staticmethod
    def jvp(ctx, *tgys):
        used = [t for t in tgys if t is not None]
        return ops.duplicate_backward(used) if used else None

    @staticmethod
    def vmap(info, in_dims, *gys):
        return ops.duplicate_backward([_front(g, d, info.batch_size) for g, d in zip(gys, in_dims)]), 0



# ---- Add: y = a + b (broadcast) ----------------------------------------------------------------

@_register("add_forward")
class _Add(Function):
    @staticmethod
    def forward(a, b):
        return ops.add_forward(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shapes = (inputs[0].shape, inputs[1].shape)
        ctx.shape = output.shape

    @staticmethod
    def backward(ctx, gy):
        return tuple(_sum_to(gy, s) if need else None for s, need in zip(ctx.shapes, ctx.needs_input_grad))

    @staticmethod
    def jvp(ctx, ta, tb):
        if ta is not None and tb is not None:
            return ops.add_forward(ta, tb)
        return (ta if tb is None else tb).expand(ctx.shape).clone()

    @staticmethod
    def vmap(info, in_dims, a, b):
        return ops.add_forward(*_align([a, b], in_dims)), 0


@_register("add_backward")
class _AddBackward(Function):
    """dy summed down to `size`."""
    @staticmethod
    def forward(gy, size):
        return ops.add_backward(gy, size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape, ctx.size = inputs[0].shape, inputs[1]

    @staticmethod
    def backward(ctx, gg):
        return gg.expand(ctx.shape), None

    @staticmethod
    def jvp(ctx, tgy, _):
        return ops.add_backward(tgy, ctx.size)

    @staticmethod
    def vmap(info, in_dims, gy, size):
        g = _front(gy, in_dims[0])
        B = g.shape[0]
        return ops.add_backward(g, [B] + [1] * (g.dim() - 1 - len(size)) + list(size)).reshape(B, *size), 0


# ---- Maximum: y = max(a, b) (broadcast) --------------------------------------------------------
# As relu: the backward recomputes the 2-bit codes from a and b (maximum_forward), batched.

@_register("maximum_forward")
class _Maximum(Function):
    @staticmethod
    def forward(a, b):
        return tuple(ops.maximum_forward(a, b))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.shape = output[0].shape
        _save(ctx, *inputs)

    @staticmethod
    def backward(ctx, gy, _):
        a, b = ctx.saved_tensors
        if gy is None:
            return None, None
        return tuple(_sum_to(_MaxGrad.apply(gy, a, b, k), t.shape) if ctx.needs_input_grad[k] else None
                     for k, t in enumerate((a, b)))

    @staticmethod
    def jvp(ctx, ta, tb):
        a, b = ctx.saved_tensors
        t = None
        for k, tk in enumerate((ta, tb)):
            if tk is not None:
                t = _plus(t, _MaxGrad.apply(tk.expand(ctx.shape), a, b, k))
        return t, None

    @staticmethod
    def vmap(info, in_dims, a, b):
        return tuple(ops.maximum_forward(*_align([a, b], in_dims))), (0, None)


class _MaxGrad(Function):
    """dy times the share of input `which` (1 to the larger, 1/2 at ties), at the broadcast shape."""
    @staticmethod
    def forward(gy, a, b, which):
        return ops.maximum_backward(gy, ops.maximum_forward(a, b)[1], which)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.which = inputs[3]
        _save(ctx, inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, gg):  # linear in dy; zero in a and b almost everywhere
        a, b = ctx.saved_tensors
        return _MaxGrad.apply(gg, a, b, ctx.which) if ctx.needs_input_grad[0] else None, None, None, None

    @staticmethod
    def jvp(ctx, tgy, ta, tb, _):
        a, b = ctx.saved_tensors
        return None if tgy is None else _MaxGrad.apply(tgy, a, b, ctx.which)

    @staticmethod
    def vmap(info, in_dims, gy, a, b, which):
        B = info.batch_size
        dg, da, db = in_dims[:3]
        if da is None and db is None:  # the codes must cover every sample of dy
            a, da = a.expand(B, *a.shape), 0
        return _MaxGrad.apply(_front(gy, dg, B), *_align([a, b], [da, db]), which), 0


@_register("maximum_backward")
class _MaximumBackward(Function):
    """The op itself, with codes made by maximum_forward: grad and jvp only."""
    @staticmethod
    def forward(gy, mask, which):
        return ops.maximum_backward(gy, mask, which)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.which = inputs[2]
        _save(ctx, inputs[1])

    @staticmethod
    def backward(ctx, gg):
        return ops.maximum_backward(gg, ctx.saved_tensors[0], ctx.which), None, None

    @staticmethod
    def jvp(ctx, tgy, *_):
        return None if tgy is None else ops.maximum_backward(tgy, ctx.saved_tensors[0], ctx.which)

    @staticmethod
    def vmap(info, in_dims, gy, mask, which):
        raise NotImplementedError(_MASK.format("maximum_backward", "maximum_forward"))


@_register("maximum_backward_both")
class _MaximumBackwardBoth(Function):
    """Both shares at once (the op itself, codes from maximum_forward): grad and jvp only."""
    @staticmethod
    def forward(gy, mask):
        return tuple(ops.maximum_backward_both(gy, mask))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        _save(ctx, inputs[1])

    @staticmethod
    def backward(ctx, gga, ggb):
        mask = ctx.saved_tensors[0]
        parts = [ops.maximum_backward(g, mask, k) for k, g in enumerate((gga, ggb)) if g is not None]
        return (parts[0] if len(parts) == 1 else ops.add_forward(*parts)) if parts else None, None

    @staticmethod
    def jvp(ctx, tgy, _):
        return (None, None) if tgy is None else tuple(ops.maximum_backward_both(tgy, ctx.saved_tensors[0]))

    @staticmethod
    def vmap(info, in_dims, gy, mask):
        raise NotImplementedError(_MASK.format("maximum_backward_both", "maximum_forward"))


# ---- amax: y = max over dims; the gradient shared among the tied maxima ------------------------

def _amax_vmap(op, B, in_dims, tensors, n, dim, keepdim):
    """op(*tensors, dim, keepdim) on batch-first tensors, for samples of n dims: dims shifted past
    the batch (a 0-d sample reduces a size-1 dim put behind it)."""
    ts = [_front(t, d, B) for t, d in zip(tensors, in_dims)]
    dims = [_wrap_dim(d, n) + 1 for d in dim] if len(dim) else list(range(1, n + 1))
    if n == 0:
        return op(*[t.unsqueeze(1) for t in ts], [1], True).squeeze(1)
    return op(*ts, dims, keepdim)


@_register("amax_forward")
class _Amax(Function):
    @staticmethod
    def forward(x, dim, keepdim):
        return ops.amax_forward(x, dim, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim, ctx.keepdim = inputs[1], inputs[2]
        _save(ctx, inputs[0], output)

    @staticmethod
    def backward(ctx, gy):
        return ops.amax_backward(gy, *ctx.saved_tensors, ctx.dim, ctx.keepdim), None, None

    @staticmethod
    def jvp(ctx, tx, *_):  # the mean of the tangent over the tied maxima: the double backward op
        return ops.amax_double_backward(tx, *ctx.saved_tensors, ctx.dim, ctx.keepdim)

    @staticmethod
    def vmap(info, in_dims, x, dim, keepdim):
        return _amax_vmap(ops.amax_forward, info.batch_size, in_dims[:1], [x], x.dim() - 1, dim, keepdim), 0


def _amax_grad_setup(ctx, inputs):
    """amax_backward (dx from dy) and amax_double_backward (its transpose): linear in their first
    argument, x and y only select; each one's backward is the other."""
    ctx.dim, ctx.keepdim = inputs[3], inputs[4]
    _save(ctx, inputs[1], inputs[2])


def _amax_grad_vmap(op, info, in_dims, g, x, y, dim, keepdim):
    n = len(_sample_shape(x, in_dims[1]))
    return _amax_vmap(op, info.batch_size, in_dims[:3], [g, x, y], n, dim, keepdim), 0


@_register("amax_backward")
class _AmaxBackward(Function):
    @staticmethod
    def forward(gy, x, y, dim, keepdim):
        return ops.amax_backward(gy, x, y, dim, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _amax_grad_setup(ctx, inputs)

    @staticmethod
    def backward(ctx, gg):
        return (ops.amax_double_backward(gg, *ctx.saved_tensors, ctx.dim, ctx.keepdim),) + (None,) * 4

    @staticmethod
    def jvp(ctx, tgy, *_):
        return None if tgy is None else ops.amax_backward(tgy, *ctx.saved_tensors, ctx.dim, ctx.keepdim)

    @staticmethod
    def vmap(info, in_dims, *args):
        return _amax_grad_vmap(ops.amax_backward, info, in_dims, *args)


@_register("amax_double_backward")
class _AmaxDoubleBackward(Function):
    @staticmethod
    def forward(gg, x, y, dim, keepdim):
        return ops.amax_double_backward(gg, x, y, dim, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _amax_grad_setup(ctx, inputs)

    @staticmethod
    def backward(ctx, ggg):
        return (ops.amax_backward(ggg, *ctx.saved_tensors, ctx.dim, ctx.keepdim),) + (None,) * 4

    @staticmethod
    def jvp(ctx, tgg, *_):
        return None if tgg is None else ops.amax_double_backward(tgg, *ctx.saved_tensors, ctx.dim, ctx.keepdim)

    @staticmethod
    def vmap(info, in_dims, *args):
        return _amax_grad_vmap(ops.amax_double_backward, info, in_dims, *args)


# ---- LogSoftmax: y = x - log sum exp x;  dx = dy - p sum(dy), p = exp(y) ------------------------

def _softmax_vmap(op, B, in_dims, tensors, n, dim):
    """op(*tensors, dim) on batch-first tensors, dim shifted past the batch (a 0-d sample: a size-1 dim)."""
    ts = [_front(t, d, B) for t, d in zip(tensors, in_dims)]
    d = _wrap_dim(dim, n)
    if n == 0:
        out = op(*[t.unsqueeze(1) for t in ts], 1)
        return tuple(o.squeeze(1) for o in out) if isinstance(out, (tuple, list)) else out.squeeze(1)
    out = op(*ts, d + 1)
    return tuple(out) if isinstance(out, (tuple, list)) else out


@_register("log_softmax_forward")
class _LogSoftmax(Function):
    @staticmethod
    def forward(x, dim):
        return ops.log_softmax_forward(x, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        _save(ctx, output)

    @staticmethod
    def backward(ctx, gy):
        return ops.log_softmax_backward(gy, ctx.saved_tensors[0], ctx.dim), None

    @staticmethod
    def jvp(ctx, tx, _):  # tx - <p, tx>: the double backward op's d/d(dy) for gg = tx
        return ops.log_softmax_double_backward(tx, tx, ctx.saved_tensors[0], ctx.dim)[0]

    @staticmethod
    def vmap(info, in_dims, x, dim):
        return _softmax_vmap(ops.log_softmax_forward, info.batch_size, in_dims[:1], [x], x.dim() - 1, dim), 0


@_register("log_softmax_backward")
class _LogSoftmaxBackward(Function):
    @staticmethod
    def forward(gy, y, dim):
        return ops.log_softmax_backward(gy, y, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[2]
        _save(ctx, inputs[0], inputs[1])

    @staticmethod
    def backward(ctx, gg):
        gy, y = ctx.saved_tensors
        d_dy, d_y = ops.log_softmax_double_backward(gg, gy, y, ctx.dim)
        n = ctx.needs_input_grad
        return d_dy if n[0] else None, d_y if n[1] else None, None

    @staticmethod
    def jvp(ctx, tgy, ty, _):
        # d(dx) = (tdy - p sum tdy) + (-ty p sum dy): the double backward op's d/dy for gg = ty
        gy, y = ctx.saved_tensors
        return _plus(None if tgy is None else ops.log_softmax_backward(tgy, y, ctx.dim),
                     None if ty is None else ops.log_softmax_double_backward(ty, gy, y, ctx.dim)[1])

    @staticmethod
    def vmap(info, in_dims, gy, y, dim):
        n = len(_sample_shape(y, in_dims[1]))
        return _softmax_vmap(ops.log_softmax_backward, info.batch_size, in_dims[:2], [gy, y], n, dim), 0


@_register("log_softmax_double_backward")
class _LogSoftmaxDoubleBackward(Function):
    """(d/d(dy), d/dy) = (gg - S(gg p), -gg p S(dy)), S the sum over dim."""
    @staticmethod
    def forward(gg, gy, y, dim):
        return tuple(ops.log_softmax_double_backward(gg, gy, y, dim))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[3]
        _save(ctx, *inputs[:3])

    @staticmethod
    def backward(ctx, a, b):
        # Third order, as csrc/autograd_rows.cpp: d/dgg = a - p S(a) - b p S(dy),
        # d/d(dy) = -S(b gg p), d/dy = -p gg (S(a) + b S(dy)).
        gg, dy, y = ctx.saved_tensors
        d = ctx.dim
        p = y.exp()
        s_dy = dy.sum(d, keepdim=True)
        d_gg = ops.log_softmax_backward(a, y, d) - b * p * s_dy
        d_dy = -(b * gg * p).sum(d, keepdim=True).expand_as(dy)
        d_y = -p * gg * (a.sum(d, keepdim=True) + b * s_dy)
        return d_gg, d_dy, d_y, None

    @staticmethod
    def jvp(ctx, tgg, tdy, ty, _):
        gg, dy, y = ctx.saved_tensors
        tgg, tdy, ty = (torch.zeros_like(v) if t is None else t for t, v in ((tgg, gg), (tdy, dy), (ty, y)))
        d = ctx.dim
        p = y.exp()
        s_dy = dy.sum(d, keepdim=True)
        t_ddy = tgg - (tgg * p).sum(d, keepdim=True) - (gg * p * ty).sum(d, keepdim=True)
        t_dy = -p * (tgg * s_dy + gg * ty * s_dy + gg * tdy.sum(d, keepdim=True))
        return t_ddy, t_dy

    @staticmethod
    def vmap(info, in_dims, gg, gy, y, dim):
        n = len(_sample_shape(y, in_dims[2]))
        return _softmax_vmap(ops.log_softmax_double_backward, info.batch_size, in_dims[:3], [gg, gy, y], n, dim), (0, 0)


# ---- the losses over rows: B samples folded into one call ---------------------------------------
# A sample (N, C, d...) puts its N rows behind the batch: (B*N, C, d...); an unbatched sample (C,)
# is one row of (B, C). The op runs with reduction none, and mean / sum are taken per sample.

def _fold(t, N):
    return t if N is None or t is None else t.flatten(0, 1)


def _unfold(t, B, N):
    return t if N is None else t.unflatten(0, (B, N))


def _rows_of(x_):
    """N of batch-first samples x_ (N, C, d...), None for unbatched (C,) ones."""
    return None if x_.dim() == 2 else x_.shape[1]


def _sum_rest(v):
    return v.sum(tuple(range(1, v.dim()))) if v.dim() > 1 else v


def _target_weight_sum(t_, w, ignore_index, dtype):
    """Per sample: the sum of w[t] over its kept targets (t != ignore_index): den of cross_entropy,
    W of nll_loss (batch-first class indices t_)."""
    t = t_.long()
    kept = t != ignore_index
    wt = kept.to(dtype) if w is None else w.to(dtype)[torch.where(kept, t, 0)] * kept
    return _sum_rest(wt)


def _row_grad(g_, rows, reduction, den):
    """The gradient of each row's loss: g itself (none), or each sample's g (/ den for mean) on its rows."""
    if reduction == 0:
        return g_
    if reduction == 1:
        g_ = (g_ / den).to(g_.dtype)
    return g_.reshape(g_.shape[0], *[1] * (len(rows) - 1)).expand(rows)


def _ce_tw(w, C, dtype, device):
    """total_weight for a reduction-none call: [1, mean_c w_c] (den is not read then)."""
    wmean = torch.tensor(1.0, dtype=dtype, device=device) if w is None else (w.to(dtype) / C).sum()
    return torch.stack([torch.ones_like(wmean), wmean])


def _classes(x_, N):
    """C of batch-first samples x_."""
    return x_.shape[1 if N is None else 2]


@_register("cross_entropy_forward")
class _CrossEntropy(Function):
    @staticmethod
    def forward(x, t, w, reduction, ignore_index, smoothing):
        return tuple(ops.cross_entropy_forward(x, t, w, reduction, ignore_index, smoothing))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, t, w = inputs[:3]
        ctx.args, ctx.prob = inputs[3:], t.is_floating_point()
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.set_materialize_grads(False)
        _save(ctx, x, t, w, output[1], output[2])

    @staticmethod
    def backward(ctx, gl, *_):
        need_x, tgrad = ctx.needs_input_grad[0], ctx.prob and ctx.needs_input_grad[1]
        if gl is None or not (need_x or tgrad):
            return (None,) * 6
        dx, dq = ops.cross_entropy_backward(gl, *ctx.saved_tensors, *ctx.args, tgrad)
        return (dx if need_x else None, dq if tgrad else None) + (None,) * 4

    @staticmethod
    def jvp(ctx, tx, tt, *_):
        # <dloss/dx, tx> + <dloss/dq, tq>: the double backward op's d/d(grad_loss), which is free of grad_loss
        x, t, w, lse, tw = ctx.saved_tensors
        tt = tt if ctx.prob else None
        if tx is None and tt is None:
            return None, None, None
        g = x.new_ones(lse.shape[:-1] if ctx.args[0] == 0 else ())
        return ops.cross_entropy_double_backward(tx, tt, g, x, t, w, lse, tw, *ctx.args)[0], None, None

    @staticmethod
    def vmap(info, in_dims, x, t, w, reduction, ignore_index, smoothing):
        B = info.batch_size
        args = (x, t, w, reduction, ignore_index, smoothing)
        if in_dims[2] is not None:
            return _loop(ops.cross_entropy_forward, B, in_dims, args)
        x_, t_ = _front(x, in_dims[0], B), _front(t, in_dims[1], B)
        N, acc = _rows_of(x_), _acc(x.dtype)
        xf, tf, wf = _fold(x_, N), _fold(t_, N), w
        if reduction != 0 and x.dtype != acc:  # the per-sample sums in float, as the kernels
            xf, wf = xf.to(acc), None if w is None else w.to(acc)
            tf = tf.to(acc) if tf.is_floating_point() else tf
        loss, lse, _ = ops.cross_entropy_forward(xf, tf, wf, 0, ignore_index, smoothing)
        loss, lse = _unfold(loss, B, N), _unfold(lse, B, N)
        if t.is_floating_point():  # den: the rows of a sample
            den = torch.full((B,), float(math.prod(lse.shape[1:-1])), dtype=acc, device=x.device)
        else:  # den: the summed weight of the kept targets
            den = _target_weight_sum(t_, w, ignore_index, acc)
        tw = torch.stack([den, _ce_tw(w, _classes(x_, N), acc, x.device)[1].expand(B)], 1)
        if reduction != 0:
            loss = _per_sample_sum(loss)
            loss = (loss / den if reduction == 1 else loss).to(x.dtype)
        return (loss, lse, tw), (0, 0, 0)


@_register("cross_entropy_backward")
class _CrossEntropyBackward(Function):
    @staticmethod
    def forward(g, x, t, w, lse, tw, reduction, ignore_index, smoothing, target_grad):
        return tuple(ops.cross_entropy_backward(g, x, t, w, lse, tw, reduction, ignore_index, smoothing, target_grad))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.args, ctx.tgrad, ctx.prob = inputs[6:9], inputs[9], inputs[2].is_floating_point()
        if not ctx.tgrad:
            ctx.mark_non_differentiable(output[1])  # an empty placeholder
        ctx.set_materialize_grads(False)
        _save(ctx, *inputs[:6])

    @staticmethod
    def backward(ctx, gg, hh):
        hh = hh if ctx.tgrad else None
        n = ctx.needs_input_grad
        need = (n[0], n[1], ctx.prob and n[2])
        if (gg is None and hh is None) or not any(need):
            return (None,) * 10
        d = ops.cross_entropy_double_backward(gg, hh, *ctx.saved_tensors, *ctx.args)
        return tuple(v if k else None for v, k in zip(d, need)) + (None,) * 7

    @staticmethod
    def jvp(ctx, tg, tx, tt, *_):
        # linear in g; in (x, q) the Jacobian of (dx, dq) is the loss's Hessian, symmetric: the
        # double backward op's (d/dx, d/dq) for (gg, hh) = (tx, tq)
        g, x, t, w, lse, tw = ctx.saved_tensors
        tt = tt if ctx.prob else None
        dx = dq = None
        if tg is not None:
            dx, dq = ops.cross_entropy_backward(tg, x, t, w, lse, tw, *ctx.args, ctx.tgrad)
        if tx is not None or tt is not None:
            _, hx, hq = ops.cross_entropy_double_backward(tx, tt, g, x, t, w, lse, tw, *ctx.args)
            dx, dq = _plus(dx, hx), _plus(dq, hq) if ctx.tgrad else None
        return dx, dq if ctx.tgrad else None

    @staticmethod
    def vmap(info, in_dims, g, x, t, w, lse, tw, reduction, ignore_index, smoothing, target_grad):
        B = info.batch_size
        args = (g, x, t, w, lse, tw, reduction, ignore_index, smoothing, target_grad)
        if in_dims[3] is not None:
            return _loop(ops.cross_entropy_backward, B, in_dims, args)
        g_, x_, t_ = (_front(v, d, B) for v, d in zip((g, x, t), in_dims[:3]))
        lse_, tw_ = _front(lse, in_dims[4], B), _front(tw, in_dims[5], B)
        N = _rows_of(x_)
        G = _row_grad(g_, lse_.shape[:-1], reduction, tw_[:, 0])
        dx, dq = ops.cross_entropy_backward(_fold(G, N), _fold(x_, N), _fold(t_, N), w, _fold(lse_, N),
                                            _ce_tw(w, _classes(x_, N), tw.dtype, tw.device), 0,
                                            ignore_index, smoothing, target_grad)
        return (_unfold(dx, B, N), _unfold(dq, B, N) if target_grad else dq), (0, 0 if target_grad else None)


def _ce_third(gg, hh, g, x, t, w, tw, reduction, ignore_index, smoothing, a, b, e):
    """Third order of cross_entropy, as csrc/autograd_loss.cpp (see the formulas there), in torch
    ops: the gradients of <(a, b, e), (d_g, d_x, d_q)> in (gg, hh, g, x, q), any of a, b, e None."""
    prob = t.is_floating_point()
    unbatched = x.dim() == 1

    def cl(v):  # class dim last
        return v.unsqueeze(0) if unbatched else v.movedim(1, -1)

    def back(v):
        return v.squeeze(0) if unbatched else v.movedim(-1, 1)

    X = cl(x)
    C = X.shape[-1]
    p, logp = X.softmax(-1), X.log_softmax(-1)
    W = w if w is not None else X.new_ones(C)
    k, epsc = 1.0 - smoothing, smoothing / C
    if prob:
        u = W * (k * cl(t) + epsc)
    else:
        T = t.unsqueeze(0) if unbatched else t
        kept = T != ignore_index
        onehot = torch.zeros_like(X).scatter(-1, torch.where(kept, T, 0).unsqueeze(-1), 1)
        u = (k * (onehot * W) + W * epsc) * kept.unsqueeze(-1).to(x.dtype)
    U = u.sum(-1, keepdim=True)
    sc = tw[0].reciprocal() if reduction == 1 else None

    def scaled(v):
        return v if sc is None else v * sc

    def per_row(v):  # a row tensor (or 0-d) as [..., 1]
        if unbatched and reduction == 0:
            v = v.unsqueeze(0)
        return v.expand(X.shape[:-1]).unsqueeze(-1)

    zero = torch.zeros_like(X)
    G = scaled(per_row(g))
    GG, HH = (zero if v is None else cl(v) for v in (gg, hh))
    As = torch.zeros_like(U) if a is None else scaled(per_row(a))
    Bm = zero if b is None else cl(b)
    E = cl(e) if e is not None and prob else zero
    S, Pb = (GG * p).sum(-1, True), (Bm * p).sum(-1, True)
    GS = GG - S
    Bg, Ew, Hw = (Bm * p * GS).sum(-1, True), (E * W).sum(-1, True), (HH * W).sum(-1, True)
    d_gg = back(As * (U * p - u) + G * U * p * (Bm - Pb) + k * G * (Ew * p - E * W))
    d_hh = back(-k * W * (As * logp + G * (Bm - Pb)))
    d_g = scaled(U * Bg - k * ((Bm * HH * W).sum(-1, True) - Pb * Hw)
                 + k * (E * W * (S - GG)).sum(-1, True)).squeeze(-1)
    d_g = d_g.sum() if reduction != 0 else (d_g.squeeze(0) if unbatched else d_g)
    d_x = back(As * (U * p * GS - k * (HH * W - p * Hw)) + G * U * (p * Bm * GS - p * Bg - Pb * p * GS)
               + k * G * Hw * p * (Bm - Pb) + k * G * Ew * p * GS)
    d_q = back(k * W * (As * (S - GG) + G * Bg))
    return d_gg, d_hh, d_g, d_x, d_q


@_register("cross_entropy_double_backward")
class _CrossEntropyDoubleBackward(Function):
    @staticmethod
    def forward(gg, hh, g, x, t, w, lse, tw, reduction, ignore_index, smoothing):
        return tuple(ops.cross_entropy_double_backward(gg, hh, g, x, t, w, lse, tw, reduction, ignore_index, smoothing))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.args, ctx.prob = inputs[8:], inputs[4].is_floating_point()
        if not ctx.prob:
            ctx.mark_non_differentiable(output[2])  # an empty placeholder
        ctx.set_materialize_grads(False)
        _save(ctx, *inputs[:8])

    @staticmethod
    def backward(ctx, a, b, e):
        gg, hh, g, x, t, w, lse, tw = ctx.saved_tensors
        n = ctx.needs_input_grad
        need = (n[0], ctx.prob and n[1], n[2], n[3], ctx.prob and n[4])
        if not any(need):
            return (None,) * 11
        d = _ce_third(gg, hh, g, x, t, w, tw, *ctx.args, a, b, e)
        return tuple(v if k else None for v, k in zip(d, need)) + (None,) * 6

    @staticmethod
    def jvp(ctx, tgg, thh, tg, tx, tt, *_):
        # Linear in (gg, hh); linear in g for (d_x, d_q) (d_g is free of g); in (x, q), by the
        # symmetry of the third derivative, the third order's (d/dg, d/dx, d/dq) for (b, e) = (tx, tq).
        gg, hh, g, x, t, w, lse, tw = ctx.saved_tensors
        thh, tt = (thh, tt) if ctx.prob else (None, None)
        out = [None, None, None]

        def add(i, v):
            out[i] = v if out[i] is None else out[i] + v

        if tgg is not None or thh is not None:
            for i, v in enumerate(ops.cross_entropy_double_backward(tgg, thh, g, x, t, w, lse, tw, *ctx.args)):
                add(i, v)
        if tg is not None:
            _, d_x, d_q = ops.cross_entropy_double_backward(gg, hh, tg, x, t, w, lse, tw, *ctx.args)
            add(1, d_x)
            add(2, d_q)
        if tx is not None or tt is not None:
            for i, v in enumerate(_ce_third(gg, hh, g, x, t, w, tw, *ctx.args, None, tx, tt)[2:]):
                add(i, v)
        return out[0], out[1], out[2] if ctx.prob else None

    @staticmethod
    def vmap(info, in_dims, gg, hh, g, x, t, w, lse, tw, reduction, ignore_index, smoothing):
        B = info.batch_size
        args = (gg, hh, g, x, t, w, lse, tw, reduction, ignore_index, smoothing)
        if in_dims[5] is not None:
            return _loop(ops.cross_entropy_double_backward, B, in_dims, args)
        gg_, hh_, g_, x_, t_ = (_front(v, d, B) for v, d in zip(args[:5], in_dims[:5]))
        lse_, tw_ = _front(lse, in_dims[6], B), _front(tw, in_dims[7], B)
        N, prob, den = _rows_of(x_), t.is_floating_point(), tw_[:, 0]
        G = _row_grad(g_, lse_.shape[:-1], reduction, den)
        d_g, d_x, d_q = ops.cross_entropy_double_backward(
            _fold(gg_, N), _fold(hh_, N), _fold(G, N), _fold(x_, N), _fold(t_, N), w, _fold(lse_, N),
            _ce_tw(w, _classes(x_, N), tw.dtype, tw.device), 0, ignore_index, smoothing)
        d_g = _unfold(d_g, B, N)  # per row, with sc = 1
        if reduction != 0:
            d_g = _per_sample_sum(d_g)
            d_g = (d_g / den if reduction == 1 else d_g).to(g.dtype)
        return (d_g, _unfold(d_x, B, N), _unfold(d_q, B, N) if prob else d_q), (0, 0, 0 if prob else None)


# ---- NLLLoss: y = -w[t] x[.., t, ..] ------------------------------------------------------------

@_register("nll_loss_forward")
class _NllLoss(Function):
    @staticmethod
    def forward(x, t, w, reduction, ignore_index):
        return tuple(ops.nll_loss_forward(x, t, w, reduction, ignore_index))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, t, w, reduction, ignore_index = inputs
        ctx.size, ctx.args = list(x.shape), (reduction, ignore_index)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        _save(ctx, t, w, output[1])

    @staticmethod
    def backward(ctx, gy, _):
        if gy is None or not ctx.needs_input_grad[0]:
            return (None,) * 5
        t, w, W = ctx.saved_tensors
        return (ops.nll_loss_backward(gy, t, w, W, ctx.size, *ctx.args),) + (None,) * 4

    @staticmethod
    def jvp(ctx, tx, *_):  # linear in x
        t, w, _ = ctx.saved_tensors
        return None if tx is None else ops.nll_loss_forward(tx, t, w, *ctx.args)[0], None

    @staticmethod
    def vmap(info, in_dims, x, t, w, reduction, ignore_index):
        B = info.batch_size
        if in_dims[2] is not None:
            return _loop(ops.nll_loss_forward, B, in_dims, (x, t, w, reduction, ignore_index))
        x_, t_ = _front(x, in_dims[0], B), _front(t, in_dims[1], B)
        N, acc = _rows_of(x_), _acc(x.dtype)
        xf, wf = _fold(x_, N), w
        if reduction != 0 and x.dtype != acc:  # the per-sample sums in float, as the kernels
            xf, wf = xf.to(acc), None if w is None else w.to(acc)
        y = _unfold(ops.nll_loss_forward(xf, _fold(t_, N), wf, 0, ignore_index)[0], B, N)
        if reduction == 0:  # the kernel's W is 0 then
            return (y, x_.new_zeros(B, dtype=acc)), (0, 0)
        W = _target_weight_sum(t_, w, ignore_index, acc)
        y = _per_sample_sum(y)
        return ((y / W if reduction == 1 else y).to(x.dtype), W), (0, 0)


@_register("nll_loss_backward")
class _NllLossBackward(Function):
    @staticmethod
    def forward(gy, t, w, W, size, reduction, ignore_index):
        return ops.nll_loss_backward(gy, t, w, W, size, reduction, ignore_index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.size, ctx.args = inputs[4], inputs[5:]
        _save(ctx, *inputs[1:4])

    @staticmethod
    def backward(ctx, gg):  # linear in dy, free of x: the forward applied to gg
        t, w, _ = ctx.saved_tensors
        d_dy = ops.nll_loss_forward(gg, t, w, *ctx.args)[0] if ctx.needs_input_grad[0] else None
        return (d_dy,) + (None,) * 6

    @staticmethod
    def jvp(ctx, tgy, *_):
        return None if tgy is None else ops.nll_loss_backward(tgy, *ctx.saved_tensors, ctx.size, *ctx.args)

    @staticmethod
    def vmap(info, in_dims, gy, t, w, W, size, reduction, ignore_index):
        B = info.batch_size
        if in_dims[2] is not None:
            return _loop(ops.nll_loss_backward, B, in_dims, (gy, t, w, W, size, reduction, ignore_index))
        gy_, t_, W_ = _front(gy, in_dims[0], B), _front(t, in_dims[1], B), _front(W, in_dims[3], B)
        N = None if len(size) == 1 else size[0]
        G = _row_grad(gy_, t_.shape, reduction, W_)
        fsize = [B, *size] if N is None else [B * N, *size[1:]]
        dx = ops.nll_loss_backward(_fold(G, N), _fold(t_, N), w, torch.zeros((), dtype=W.dtype, device=W.device),
                                   fsize, 0, ignore_index)
        return _unfold(dx, B, N), 0


# ---- MSELoss: (x - t)^2, x and t broadcast ------------------------------------------------------

def _mse_shapes(x, t, dx, dt):
    """The samples' broadcast shape and its element count."""
    shape = torch.broadcast_shapes(_sample_shape(x, dx), _sample_shape(t, dt))
    return shape, math.prod(shape)


def _mse_operands(B, x, t, dx, dt):
    """x and t batch first for a reduction-none call; one of them at least carries the batch."""
    if dx is None and dt is None:
        x, dx = x.expand(B, *x.shape), 0
    return _align([x, t], [dx, dt])


def _elem_grad(gy, dg, B, reduction, shape, n):
    """The gradient of each element's loss over the batch: [B, *shape]."""
    g_ = _front(gy, dg, B)
    if reduction == 0:
        return g_
    if reduction == 1:
        g_ = g_ / n
    return g_.reshape(B, *[1] * len(shape)).expand(B, *shape)


def _mse_grad_down(gy, a, b, r):
    """mse_loss_backward(gy, a, b) summed down to a's shape; a broadcast half-type a in float, rounded
    once after the sum (rounding each element first adds half an ulp per element summed)."""
    if torch.broadcast_shapes(a.shape, b.shape) == a.shape:
        return ops.mse_loss_backward(gy, a, b, r)
    acc = _acc(a.dtype)
    return _sum_to(ops.mse_loss_backward(gy.to(acc), a.to(acc), b.to(acc), r), a.shape).to(a.dtype)


@_register("mse_loss_forward")
class _MseLoss(Function):
    @staticmethod
    def forward(x, t, reduction):
        return ops.mse_loss_forward(x, t, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.reduction = inputs[2]
        _save(ctx, *inputs[:2])

    @staticmethod
    def backward(ctx, gy):
        x, t = ctx.saved_tensors
        n, r = ctx.needs_input_grad, ctx.reduction
        return (_mse_grad_down(gy, x, t, r) if n[0] else None, _mse_grad_down(gy, t, x, r) if n[1] else None, None)

    @staticmethod
    def jvp(ctx, tx, tt, _):
        # sum c (x - t) tx (+ the same with x, t swapped for tt): the double backward op's d/d(dy)
        x, t = ctx.saved_tensors
        r = ctx.reduction
        shape = torch.broadcast_shapes(x.shape, t.shape)
        g = x.new_zeros(shape if r == 0 else ())  # the dy slot, which d/d(dy) does not read
        out = None
        for tv, a, b in ((tx, x, t), (tt, t, x)):
            if tv is not None:
                out = _plus(out, ops.mse_loss_double_backward(tv.expand(shape), g, a, b, r)[0])
        return out

    @staticmethod
    def vmap(info, in_dims, x, t, reduction):
        B = info.batch_size
        x_, t_ = _align([x, t], in_dims[:2])
        if reduction != 0 and _acc(x.dtype) != x.dtype:  # the per-sample sums in float, as the kernels
            x_, t_ = x_.to(_acc(x.dtype)), t_.to(_acc(x.dtype))
        e = ops.mse_loss_forward(x_, t_, 0)
        if reduction == 0:
            return e, 0
        s = _per_sample_sum(e)
        return (s / math.prod(e.shape[1:]) if reduction == 1 else s).to(x.dtype), 0


@_register("mse_loss_backward")
class _MseLossBackward(Function):
    """c (x - t) dy at the broadcast shape."""
    @staticmethod
    def forward(gy, x, t, reduction):
        return ops.mse_loss_backward(gy, x, t, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.reduction = inputs[3]
        _save(ctx, *inputs[:3])

    @staticmethod
    def backward(ctx, gg):
        gy, x, t = ctx.saved_tensors
        d_dy, d_x, d_t = ops.mse_loss_double_backward(gg, gy, x, t, ctx.reduction)
        n = ctx.needs_input_grad
        return (d_dy if n[0] else None, _sum_to(d_x, x.shape) if n[1] else None,
                _sum_to(d_t, t.shape) if n[2] else None, None)

    @staticmethod
    def jvp(ctx, tgy, tx, tt, _):
        # c (x - t) tdy + c dy tx - c dy tt: the backward op, and the double backward op's d/dx, d/dt
        gy, x, t = ctx.saved_tensors
        r = ctx.reduction
        shape = torch.broadcast_shapes(x.shape, t.shape)
        out = None if tgy is None else ops.mse_loss_backward(tgy, x, t, r)
        for i, tv in ((1, tx), (2, tt)):
            if tv is not None:
                out = _plus(out, ops.mse_loss_double_backward(tv.expand(shape), gy, x, t, r)[i])
        return out

    @staticmethod
    def vmap(info, in_dims, gy, x, t, reduction):
        B = info.batch_size
        shape, n = _mse_shapes(x, t, in_dims[1], in_dims[2])
        x_, t_ = _mse_operands(B, x, t, in_dims[1], in_dims[2])
        return ops.mse_loss_backward(_elem_grad(gy, in_dims[0], B, reduction, shape, n), x_, t_, 0), 0


@_register("mse_loss_double_backward")
class _MseLossDoubleBackward(Function):
    """(d/d(dy), d/dx, d/dt) = (c R[(x - t) gg], c dy gg, -c dy gg), R the sum for mean and sum."""
    @staticmethod
    def forward(gg, gy, x, t, reduction):
        return tuple(ops.mse_loss_double_backward(gg, gy, x, t, reduction))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.reduction = inputs[4]
        _save(ctx, *inputs[:4])

    @staticmethod
    def backward(ctx, p, q, r):
        # Third order, as csrc/autograd_loss.cpp: d/dgg = bwd(p, x, t) + bwd(dy, q, r),
        # d/d(dy) = D(gg, ., q, r)[0], d/dx = D(gg, p, x, t)[1], d/dt = D(gg, p, x, t)[2].
        u, dy, x, t = ctx.saved_tensors
        red, n = ctx.reduction, ctx.needs_input_grad
        out = [None] * 5
        if n[0]:
            out[0] = ops.add_forward(ops.mse_loss_backward(p, x, t, red), ops.mse_loss_backward(dy, q, r, red))
        if n[1]:
            out[1] = ops.mse_loss_double_backward(u, dy, q, r, red)[0]
        if n[2] or n[3]:
            _, d_x, d_t = ops.mse_loss_double_backward(u, p, x, t, red)
            out[2] = _sum_to(d_x, x.shape) if n[2] else None
            out[3] = _sum_to(d_t, t.shape) if n[3] else None
        return tuple(out)

    @staticmethod
    def jvp(ctx, tgg, tdy, tx, tt, _):
        gg, dy, x, t = ctx.saved_tensors
        tgg, tdy, tx, tt = (torch.zeros_like(v) if tv is None else tv
                            for tv, v in ((tgg, gg), (tdy, dy), (tx, x), (tt, t)))
        red = ctx.reduction
        c = 2.0 / max(1, math.prod(torch.broadcast_shapes(x.shape, t.shape))) if red == 1 else 2.0
        t_ddy = c * ((x - t) * tgg + (tx - tt) * gg)
        t_dx = c * (tdy * gg + dy * tgg)
        return (t_ddy.sum() if red != 0 else t_ddy), t_dx, -t_dx

    @staticmethod
    def vmap(info, in_dims, gg, gy, x, t, reduction):
        B = info.batch_size
        shape, n = _mse_shapes(x, t, in_dims[2], in_dims[3])
        x_, t_ = _mse_operands(B, x, t, in_dims[2], in_dims[3])
        d_dy, d_x, d_t = ops.mse_loss_double_backward(_front(gg, in_dims[0], B),
                                                      _elem_grad(gy, in_dims[1], B, reduction, shape, n), x_, t_, 0)
        if reduction != 0:
            d_dy = _per_sample_sum(d_dy)
            d_dy = d_dy / n if reduction == 1 else d_dy
        return (d_dy, d_x, d_t), (0, 0, 0)


# ---- NearestNeighbor: index = argmin_k |x - w_k|^2 and that distance ----------------------------

def _gather_rows(v, index, like):
    """v[index_n] for every row n, in like's shape."""
    return v.index_select(0, index.reshape(-1)).reshape(like.shape)


def _row_dot(a, x, w, index):
    """sum_d a_nd (x_nd - w_index_n,d) per row."""
    return (a * (x - _gather_rows(w, index, x))).sum(-1)


def _nn_fold(B, in_dims, g, x, w, index):
    """Batch-first g, x, index with the samples' prototypes side by side, [B*K, D], and the
    indices shifted to them (sample b's prototype k is row b*K + k)."""
    dg, dx, dw, di = in_dims[:4]
    g_, x_, i_, w_ = _front(g, dg, B), _front(x, dx, B), _front(index, di, B), _front(w, dw, B)
    K = w_.shape[1]
    offset = (torch.arange(B, device=i_.device, dtype=i_.dtype) * K).reshape(B, *[1] * (i_.dim() - 1))
    return g_, x_, w_.reshape(B * K, w_.shape[2]), i_ + offset


@_register("nearest_neighbor_forward")
class _NearestNeighbor(Function):
    @staticmethod
    def forward(x, w):
        return tuple(ops.nearest_neighbor_forward(x, w))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        _save(ctx, *inputs, output[1])

    @staticmethod
    def backward(ctx, g, _):
        if g is None:
            return None, None
        x, w, index = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (ops.nearest_neighbor_backward_input(g, x, w, index) if n[0] else None,
                ops.nearest_neighbor_backward_weight(g, x, w, index) if n[1] else None)

    @staticmethod
    def jvp(ctx, tx, tw):  # 2 <x - w_index, tx - tw_index> per row
        x, w, index = ctx.saved_tensors
        d = tx if tw is None else (-_gather_rows(tw, index, x) if tx is None else tx - _gather_rows(tw, index, x))
        return 2 * _row_dot(d, x, w, index), None

    @staticmethod
    def vmap(info, in_dims, x, w):
        if in_dims[1] is not None:  # per-sample prototypes: an argmin over each sample's own
            return _loop(ops.nearest_neighbor_forward, info.batch_size, in_dims, (x, w))
        return tuple(ops.nearest_neighbor_forward(_front(x, in_dims[0]), w)), (0, 0)


class _NearestNeighborGradBase(Function):
    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs)


@_register("nearest_neighbor_backward_input")
class _NearestNeighborBackwardInput(_NearestNeighborGradBase):
    """dx = 2 g (x - w[index]): linear in g, and in (x, w)."""
    @staticmethod
    def forward(g, x, w, index):
        return ops.nearest_neighbor_backward_input(g, x, w, index)

    @staticmethod
    def backward(ctx, a):  # as csrc/autograd_nearest_neighbor.cpp
        g, x, w, index = ctx.saved_tensors
        n = ctx.needs_input_grad
        zero = torch.zeros_like(w)
        return (2 * _row_dot(a, x, w, index) if n[0] else None,
                ops.nearest_neighbor_backward_input(g, a, zero, index) if n[1] else None,
                ops.nearest_neighbor_backward_weight(g, a, zero, index) if n[2] else None, None)

    @staticmethod
    def jvp(ctx, tg, tx, tw, _):
        g, x, w, index = ctx.saved_tensors
        out = None if tg is None else ops.nearest_neighbor_backward_input(tg, x, w, index)
        if tx is not None or tw is not None:
            tx, tw = torch.zeros_like(x) if tx is None else tx, torch.zeros_like(w) if tw is None else tw
            out = _plus(out, ops.nearest_neighbor_backward_input(g, tx, tw, index))
        return out

    @staticmethod
    def vmap(info, in_dims, g, x, w, index):
        B = info.batch_size
        if in_dims[2] is None:  # one set of prototypes: the batch is more rows
            return ops.nearest_neighbor_backward_input(_front(g, in_dims[0], B), _front(x, in_dims[1], B), w,
                                                       _front(index, in_dims[3], B)), 0
        if B == 0:  # no prototypes once folded
            return x.new_zeros(B, *_sample_shape(x, in_dims[1])), 0
        return ops.nearest_neighbor_backward_input(*_nn_fold(B, in_dims, g, x, w, index)), 0


@_register("nearest_neighbor_backward_weight")
class _NearestNeighborBackwardWeight(_NearestNeighborGradBase):
    """dw_k = -2 sum_{index_n = k} g_n (x_n - w_k)."""
    @staticmethod
    def forward(g, x, w, index):
        return ops.nearest_neighbor_backward_weight(g, x, w, index)

    @staticmethod
    def backward(ctx, b):  # as csrc/autograd_nearest_neighbor.cpp
        g, x, w, index = ctx.saved_tensors
        n = ctx.needs_input_grad
        zero = torch.zeros_like(x)
        return (-2 * _row_dot(_gather_rows(b, index, x), x, w, index) if n[0] else None,
                ops.nearest_neighbor_backward_input(g, zero, b, index) if n[1] else None,
                ops.nearest_neighbor_backward_weight(g, zero, b, index) if n[2] else None, None)

    @staticmethod
    def jvp(ctx, tg, tx, tw, _):
        g, x, w, index = ctx.saved_tensors
        out = None if tg is None else ops.nearest_neighbor_backward_weight(tg, x, w, index)
        if tx is not None or tw is not None:
            tx, tw = torch.zeros_like(x) if tx is None else tx, torch.zeros_like(w) if tw is None else tw
            out = _plus(out, ops.nearest_neighbor_backward_weight(g, tx, tw, index))
        return out

    @staticmethod
    def vmap(info, in_dims, g, x, w, index):
        B = info.batch_size
        K, D = _sample_shape(w, in_dims[2])
        if B == 0:  # no prototypes once folded
            return w.new_zeros(B, K, D), 0
        return ops.nearest_neighbor_backward_weight(*_nn_fold(B, in_dims, g, x, w, index)).reshape(B, K, D), 0
