"""DistributedDataParallel, and FSDP2 (fully_shard: parameters sharded as DTensors, gathered
for each forward and backward, gradients reduce-scattered): a network of our modules trained
with torchmodules.optim.SGD by 2 processes (gloo on the CPU; gloo with both ranks on one GPU, so
our CUDA kernels train under DDP on a one-GPU machine; NCCL with 2 GPUs, and with one rank where
there is one GPU: NCCL allows no two ranks on one device) takes, step by step, the same gradients
and parameters as one process on the whole (global) batch, in float64.

Each rank gets half of every global batch; the loss is a mean, so the average of the ranks'
gradients (what DDP's all-reduce and FSDP's reduce-scatter compute) is the gradient of the
global batch."""
import datetime
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from multiprocessing.connection import wait
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

try:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch without FSDP2
    fully_shard, DTensor = None, ()

import torchmodules as tm

WORLD = 2  # ranks, but for "nccl_1": NCCL takes one GPU per rank, so a one-GPU machine runs it with one rank
STEPS = 3
GLOBAL_BATCH = 12
IN, HIDDEN, CLASSES = 5, 8, 4
JOIN_TIMEOUT_S = 90  # for all ranks together; they need ~5 s (the forkserver's imports), more on a busy machine
# DDP configurations tried in the same worker processes (one spawn for all of them)
BUCKET_VIEWS = (False, True)
# FSDP2 on the CPU (gloo) and with one GPU per rank (NCCL); not with both ranks on one GPU
FSDP_CONFIGS = ("gloo", "nccl", "nccl_1")


class Net(nn.Module):
    """Linear, ReLU, a residual Duplicate + Add, a maxout Maximum, LogSoftmax."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = (tm.Linear(IN, HIDDEN), tm.Linear(HIDDEN, HIDDEN),
                                              tm.Linear(HIDDEN, HIDDEN), tm.Linear(HIDDEN, CLASSES))
        self.relu, self.dup, self.add, self.max = tm.ReLU(), tm.Duplicate(2), tm.Add(), tm.Maximum()
        self.lsm = tm.LogSoftmax(dim=1)

    def forward(self, x):
        a, b = self.dup(self.relu(self.l1(x)))
        h = self.add(self.relu(self.l2(a)), b)
        h = self.max(self.l3(h), h)
        return self.lsm(self.l4(h))


def _data(device):
    g = torch.Generator().manual_seed(1234)
    xs = torch.randn(STEPS, GLOBAL_BATCH, IN, generator=g, dtype=torch.float64)
    ts = torch.randint(0, CLASSES, (STEPS, GLOBAL_BATCH), generator=g)
    return xs.to(device), ts.to(device)


def _new_model(device):
    torch.manual_seed(7)  # the same initial weights in every process
    return Net().to(device=device, dtype=torch.float64)


def _full(t):
    """A tensor, or the whole of a sharded DTensor (an all-gather: every rank calls it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _train(model, params, xs, ts):
    """STEPS steps of SGD (with momentum) with NLLLoss; the gradients and parameters after
    each step, whole, on the CPU."""
    opt = tm.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=0.01)
    loss_fn = tm.NLLLoss()
    grads, weights = [], []
    for x, t in zip(xs, ts):
        opt.zero_grad()
        loss_fn(model(x), t).backward()
        grads.append([_full(p.grad.detach()).cpu().clone() for p in params])
        opt.step()
        weights.append([_full(p.detach()).cpu().clone() for p in params])
    return grads, weights


def _world(config):
    """The number of ranks of a test configuration."""
    return 1 if config == "nccl_1" else WORLD


def _backend_device(config, rank):
    """(process-group backend, this rank's device) of a test configuration."""
    if config in ("nccl", "nccl_1"):
        return "nccl", torch.device(f"cuda:{rank}")
    if config == "gloo_cuda":  # both ranks on GPU 0: gloo stages the all-reduce through the host
        return "gloo", torch.device("cuda:0")
    return config, torch.device("cpu")


def _worker(rank, config, port, out_dir):
    try:
        # (gloo needs the loopback interface named on this machine; MASTER_* for anything that reads them)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        torch.set_num_threads(1)
        backend, device = _backend_device(config, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=60)
        world = _world(config)
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        xs, ts = _data(device)
        local = GLOBAL_BATCH // world
        xs, ts = xs[:, rank * local:(rank + 1) * local], ts[:, rank * local:(rank + 1) * local]
        results = {}
        for bucket_view in BUCKET_VIEWS:
            model = _new_model(device)
            ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                      gradient_as_bucket_view=bucket_view)
            results[f"DDP, gradient_as_bucket_view={bucket_view}"] = _train(ddp, list(ddp.parameters()), xs, ts)
        if config in FSDP_CONFIGS and fully_shard is not None:
            model = _new_model(device)
            for layer in (model.l1, model.l2, model.l3, model.l4):
                fully_shard(layer)
            fully_shard(model)
            assert isinstance(model.l1.weight, DTensor)
            results["FSDP2"] = _train(model, list(model.parameters()), xs, ts)
        dist.destroy_process_group()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _run_ranks(config, out_dir):
    """Runs _worker on _world(config) fresh processes; fails (never hangs) if one dies or stalls.

    The processes come from a forkserver that has imported torch, torch._dynamo (which DDP's
    constructor imports, 3-5 s) and this module once, before any op ran: forked from it, the
    ranks start in ~0.1 s instead of importing everything each (~10 s on 2 cores), and, unlike
    a fork of the pytest process, they inherit no thread pool and no CUDA context."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.nn.parallel", "torchmodules", __name__])
    # The rendezvous store is served from here, on a port the system picks (no race for a free
    # port); the ranks connect to it as clients.
    world = _world(config)
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
    procs = [ctx.Process(target=_worker, args=(r, config, store.port, str(out_dir)), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        # until all have exited, one has failed (the others would wait for it in a collective
        # until gloo's timeout) or the deadline
        while time.monotonic() < deadline:
            running = [p.sentinel for p in procs if p.exitcode is None]
            if not running or any(p.exitcode not in (None, 0) for p in procs):
                break
            wait(running, timeout=deadline - time.monotonic())
    finally:
        stalled = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    errors = ""
    for r in range(world):
        err = out_dir / f"rank{r}.err"
        if err.exists():
            errors += f"\n--- rank {r} ---\n{err.read_text()}"
    codes = [p.exitcode for p in procs]
    if stalled:
        why = "past the deadline" if time.monotonic() >= deadline else "after another rank failed"
        errors = f"\nrank(s) {stalled} killed, still running {why} ({JOIN_TIMEOUT_S} s deadline){errors}"
    assert codes == [0] * world, f"{config}: exit codes {codes}{errors}"
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


BACKENDS = [
    pytest.param("gloo", marks=pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                                  reason="no gloo")),
    pytest.param("gloo_cuda", marks=pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available()
                                                       or not torch.cuda.is_available(), reason="needs gloo and a GPU")),
    pytest.param("nccl", marks=pytest.mark.skipif(not dist.is_available() or not dist.is_nccl_available()
                                                  or torch.cuda.device_count() < WORLD,
                                                  reason=f"needs NCCL and {WORLD} GPUs")),
    pytest.param("nccl_1", marks=pytest.mark.skipif(not dist.is_available() or not dist.is_nccl_available()
                                                    or not torch.cuda.is_available(), reason="needs NCCL and a GPU")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_matches_single_process(backend, tmp_path):
    ranks = _run_ranks(backend, tmp_path)
    device = _backend_device(backend, 0)[1]
    model = _new_model(device)
    ref_grads, ref_weights = _train(model, list(model.parameters()), *_data(device))
    names = [n for n, _ in model.named_parameters()]
    configs = list(ranks[0])
    assert len(configs) == len(BUCKET_VIEWS) + (backend in FSDP_CONFIGS and fully_shard is not None), configs
    for config in configs:
        for r, res in enumerate(ranks):
            grads, weights = res[config]
            for step in range(STEPS):
                for name, g, g_ref, w, w_ref in zip(names, grads[step], ref_grads[step], weights[step],
                                                    ref_weights[step]):
                    where = f"{backend}, {config}, rank {r}, step {step}, {name}"
                    assert g.dtype == torch.float64
                    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14, msg=f"grad: {where}")
                    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-14, msg=f"param: {where}")
    # the ranks' parameters must also agree with each other, bitwise (DDP all-reduces the same
    # buckets; FSDP2's ranks gather the same shards)
    for config in configs:
        for other in ranks[1:]:
            for w0, w1 in zip(ranks[0][config][1][-1], other[config][1][-1]):
                assert torch.equal(w0, w1), config
    # and the training moved the parameters (the test would be vacuous otherwise)
    assert any(not torch.equal(a, b) for a, b in zip(ref_weights[0], ref_weights[-1]))
