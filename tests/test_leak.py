"""No leak: 10,000 forward+backward+SGD steps of the main job's network (examples/train.py's
Net: Linear, ReLU, Duplicate + Add, Maximum, LogSoftmax, NLLLoss) keep the CPU's resident
memory and CUDA's allocated memory flat. A leak of one small tensor per step (a saved mask,
a graph node) would add megabytes over the run."""
import importlib.util
import os

import pytest
import torch

from helpers import DEVICES

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_spec = importlib.util.spec_from_file_location("tm_train_leak", os.path.join(ROOT, "examples", "train.py"))
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

STEPS, WARMUP = 10_000, 500


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("device", DEVICES)
def test_no_leak_over_10k_steps(device):
    torch.manual_seed(0)
    net = train.Net(train.OURS, 64, 32, 10).to(device)
    opt = train.OURS.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = train.OURS.NLLLoss()
    x = torch.randn(32, 64, device=device)
    y = torch.randint(0, 10, (32,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(WARMUP):  # allocator pools and caches reach their steady state
        step()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    rss0, alloc0 = _rss_bytes(), torch.cuda.memory_allocated() if cuda else 0
    for _ in range(STEPS):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    rss1, alloc1 = _rss_bytes(), torch.cuda.memory_allocated() if cuda else 0
    assert torch.isfinite(loss).item()
    # One leaked 32x32 float tensor per step would be 40 MB here; 8 MB allows allocator noise.
    assert rss1 - rss0 < 8 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MB over {STEPS} steps"
    if cuda:
        assert alloc1 == alloc0, f"CUDA allocated memory went from {alloc0} to {alloc1} bytes"
