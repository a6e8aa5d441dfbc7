"""Optimizers whose step is one fused kernel call per (device, dtype) of a param group.

SGD is a drop-in for torch.optim.SGD: same constructor, options, validation errors, param
groups, state (``momentum_buffer`` per param, so state dicts load both ways) and lr
schedulers. The update of every param of a group is done by torch.ops.torchmodules.sgd_step
(csrc/sgd.cpp, kernels/sgd.cu); Python only groups the tensors.
"""
import torch
from torch.optim import Optimizer

from ._ops import ops

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()

__all__ = ["SGD"]


def _local(t, param, what):
    """The local shard of t, a DTensor param's grad or momentum buffer (FSDP2 shards params as
    DTensors): the step is elementwise, so on DTensors it is the step on each rank's local shards,
    once they are laid out alike. A grad laid out otherwise is redistributed as the param; a
    buffer, updated in place, must be laid out as the param already."""
    if not isinstance(param, DTensor):
        return t
    if not isinstance(t, DTensor):
        raise RuntimeError(f"torchmodules.optim.SGD: the param is a DTensor but its {what} is not")
    if (t.device_mesh, t.placements) != (param.device_mesh, param.placements):
        if what != "grad":
            raise RuntimeError(f"torchmodules.optim.SGD: {what} laid out as {t.placements} on {t.device_mesh}, "
                               f"its param as {param.placements} on {param.device_mesh}")
        t = t.redistribute(param.device_mesh, param.placements)
    return t.to_local()


def _scalar(v):
    """A hyperparameter as a Python float (a 1-element tensor lr or weight_decay included)."""
    return float(v.item() if isinstance(v, torch.Tensor) else v)


class SGD(Optimizer):
    """torch.optim.SGD with a fused step (see its documentation for the algorithm):

        g = (maximize ? -grad : grad) + weight_decay p
        if momentum != 0:  b = g on the first step, else momentum b + (1 - dampening) g
                           g = g + momentum b if nesterov else b
        p = p - lr g

    ``foreach`` and ``fused`` are accepted for compatibility (the step is always fused);
    ``differentiable=True`` is not supported. Half-precision params are updated in float
    and rounded once. DTensor params (FSDP2) are stepped shard by shard, on each rank.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        # The checks and messages of torch.optim.SGD, in its order.
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if differentiable:
            raise RuntimeError("torchmodules.optim.SGD: differentiable=True is not supported "
                               "(the step is a fused kernel, outside autograd); use torch.optim.SGD")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    @torch.no_grad()
    def step(self, closure=None):
        """One SGD step over every param with a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("differentiable"):
                raise RuntimeError("torchmodules.optim.SGD: differentiable=True is not supported")
            momentum = _scalar(group["momentum"])
            # (device, dtype, first step) -> params, grads, momentum buffers: one kernel call each.
            # A param's first step with momentum (no buffer yet) takes a fresh, unwritten buffer.
            batches = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("torchmodules.optim.SGD does not support sparse gradients; "
                                       "use torch.optim.SGD (or SparseAdam) for them")
                buf = None
                if momentum != 0:
                    buf = self.state[p].get("momentum_buffer")
                first = momentum != 0 and buf is None
                if first:
                    buf = torch.empty_like(p, memory_format=torch.preserve_format)
                ps, gs, bs, fresh = batches.setdefault((p.device, p.dtype, first), ([], [], [], []))
                ps.append(_local(p, p, "param"))
                gs.append(_local(p.grad, p, "grad"))
                if buf is not None:
                    bs.append(_local(buf, p, "momentum buffer"))
                if first:
                    fresh.append((p, buf))
            for (_, _, first), (ps, gs, bs, fresh) in batches.items():
                ops.sgd_step(ps, gs, bs, _scalar(group["lr"]), momentum, _scalar(group["dampening"]),
                             _scalar(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]),
                             first)
                for p, buf in fresh:  # (kept only once the kernel has written them)
                    self.state[p]["momentum_buffer"] = buf
        return loss
