"""NearestNeighbor beyond the op table: the module, exact float32 distances far from the origin
(where |x|^2 - 2 x.w + |w|^2 cancels), bitwise determinism of the backward (run after run, and
across thread counts on the CPU), the weight gradient summed over many rows per prototype, the
index's lack of gradient, torch.compile with no graph break, and a few SGD steps (k-means)."""
import pytest
import torch
from torch import nn

import torchmodules as tm
import torchmodules.functional as TF
from helpers import DEVICES


def _ref64(x, w):
    """Index and squared distance in float64 (on the same values), from the full matrix."""
    d = ((x.double().cpu().unsqueeze(-2) - w.double().cpu()) ** 2).sum(-1)
    v, i = d.min(-1)
    return i, v, d


def test_module():
    torch.manual_seed(0)
    m = tm.NearestNeighbor(300, 40, dtype=torch.float64)
    assert isinstance(m.weight, nn.Parameter) and m.weight.shape == (300, 40) and m.weight.dtype == torch.float64
    assert list(m.state_dict()) == ["weight"]
    assert repr(m) == "NearestNeighbor(num_prototypes=300, features=40)"
    # standard normal prototypes (torch.randn)
    assert abs(m.weight.mean().item()) < 0.05 and abs(m.weight.std().item() - 1) < 0.05
    x = torch.randn(2, 7, 40, dtype=torch.float64)
    index, sqdist = m(x)
    assert index.dtype == torch.int64 and index.shape == sqdist.shape == (2, 7)
    ri, rv, _ = _ref64(x, m.weight.detach())
    assert torch.equal(index, ri)
    torch.testing.assert_close(sqdist, rv, rtol=1e-12, atol=1e-12)
    m2 = tm.NearestNeighbor(300, 40, dtype=torch.float64)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x)[1], sqdist)


@pytest.mark.parametrize("device", DEVICES)
def test_index_is_not_differentiable(device):
    x = torch.randn(5, 3, device=device, requires_grad=True)
    w = torch.randn(4, 3, device=device, requires_grad=True)
    index, sqdist = TF.nearest_neighbor(x, w)
    assert not index.requires_grad and index.grad_fn is None and sqdist.requires_grad
    gx, gw = torch.autograd.grad(sqdist.sum(), (x, w))
    r = x.detach() - w.detach()[index]
    torch.testing.assert_close(gx, 2 * r)
    torch.testing.assert_close(gw, -2 * torch.zeros_like(w).index_add(0, index, r))
    # unused prototypes get +0 (not -0)
    unused = torch.ones(4, dtype=torch.bool, device=device)
    unused[index] = False
    assert (torch.copysign(torch.ones_like(gw), gw)[unused] > 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_float32_is_exact_far_from_origin(device):
    """Points 1e4 from the origin: the direct sum keeps float32's relative precision; the expansion
    |x|^2 - 2 x.w + |w|^2 (torch.cdist's matmul path) loses it all."""
    gen = torch.Generator().manual_seed(3)
    x = (1e4 + torch.randn(300, 16, generator=gen)).float()
    w = (1e4 + torch.randn(70, 16, generator=gen)).float()
    index, sqdist = TF.nearest_neighbor(x.to(device), w.to(device))
    ri, rv, d = _ref64(x, w)
    rel = ((sqdist.double().cpu() - rv).abs() / rv).max().item()
    assert rel < 2e-6, rel
    # the same index wherever the two nearest are not within float32 rounding of each other
    two = d.topk(2, dim=1, largest=False).values
    clear = (two[:, 1] - two[:, 0]) > 1e-5 * two[:, 1]
    assert torch.equal(index.cpu()[clear], ri[clear]) and clear.float().mean() > 0.95
    expanded = torch.cdist(x, w, compute_mode="use_mm_for_euclid_dist") ** 2
    assert ((expanded.double().gather(1, ri[:, None])[:, 0] - rv).abs() / rv).max() > 1e-3  # why not the expansion


def _grads(x, w, g):
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    _, sqdist = TF.nearest_neighbor(x, w)
    return torch.autograd.grad(sqdist, (x, w), g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_backward_is_bitwise_deterministic_across_threads(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50_003, 33, generator=gen).to(dtype)
    w = torch.randn(7, 33, generator=gen).to(dtype)
    g = torch.randn(50_003, generator=gen).to(dtype)
    first = _grads(x, w, g)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            again = _grads(x, w, g)
            assert all(torch.equal(a, b) for a, b in zip(again, first)), f"{n} threads"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [1, 3, 257])
def test_weight_grad_over_many_rows(device, K):
    """Thousands of rows per prototype (many chunks of the GPU's segmented sum), float32 against
    float64 on the same values and the same index."""
    gen = torch.Generator().manual_seed(K)
    x = torch.randn(40_000, 24, generator=gen)
    w = torch.randn(K, 24, generator=gen)
    g = torch.randn(40_000, generator=gen)
    index, _ = TF.nearest_neighbor(x.to(device), w.to(device))
    gx, gw = _grads(x.to(device), w.to(device), g.to(device))
    i = index.cpu()
    r = x.double() - w.double()[i]
    ref_w = -2 * torch.zeros(K, 24, dtype=torch.float64).index_add(0, i, g.double()[:, None] * r)
    scale = (g.double()[:, None] * r).abs().sum() / K  # the sums' magnitude
    assert (gw.double().cpu() - ref_w).abs().max() < 1e-6 * scale
    torch.testing.assert_close(gx.double().cpu(), 2 * g.double()[:, None] * r, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_cuda_is_bitwise_deterministic_and_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(300_007, 40, generator=gen).to(dtype)
    w = torch.randn(300, 40, generator=gen).to(dtype)
    w[:5] = w[0]  # duplicates: ties, and four prototypes no row chooses
    g = torch.randn(300_007, generator=gen).to(dtype)

    def run():
        xs, ws = x.cuda().requires_grad_(True), w.cuda().requires_grad_(True)
        index, sqdist = TF.nearest_neighbor(xs, ws)
        gx, gw = torch.autograd.grad(sqdist, (xs, ws), g.cuda())
        return [t.cpu() for t in (index, sqdist, gx, gw)]

    first = run()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(run(), first))
    ci, cv = TF.nearest_neighbor(x, w)
    same = first[0] == ci
    assert same.float().mean() > 0.999  # only float rounding near ties may differ
    torch.testing.assert_close(first[1][same], cv[same])
    assert (first[3][1:5] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_matches_eager(backend, device):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.nn = tm.Linear(6, 5), tm.NearestNeighbor(7, 5)

        def forward(self, x):
            index, sqdist = self.nn(tm.functional.relu(self.lin(x)))
            return sqdist.mean() + 0 * index.sum()

    model = Net().to(device)
    x = torch.randn(33, 6, device=device)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons

    def loss_and_grads(m):
        model.zero_grad()
        loss = m(x)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    l_eager, g_eager = loss_and_grads(model)
    torch._dynamo.reset()
    l_comp, g_comp = loss_and_grads(torch.compile(model, backend=backend, fullgraph=True))
    torch.testing.assert_close(l_comp, l_eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def test_sgd_on_average_sqdist_is_kmeans():
    """Minimising the average squared distance with our SGD (lr 1/2 per point's share) moves each
    prototype to the mean of its points: one step of Lloyd's k-means, loss non-increasing."""
    gen = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], dtype=torch.float64)
    x = torch.cat([c + torch.randn(200, 2, generator=gen, dtype=torch.float64) for c in centres])
    m = tm.NearestNeighbor(3, 2, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(x[torch.tensor([0, 200, 400])])
    opt = tm.optim.SGD(m.parameters(), lr=1.0)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        index, sqdist = m(x)
        counts = torch.bincount(index, minlength=3).double()
        # sum of sqdist / (2 n_k) per prototype: the gradient step with lr 1 lands on the mean
        loss = (sqdist / (2 * counts[index])).sum()
        loss.backward()
        opt.step()
        losses.append(sqdist.mean().item())
        means = torch.zeros(3, 2, dtype=torch.float64).index_add(0, index, x) / counts[:, None]
        torch.testing.assert_close(m.weight.detach(), means)
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    # converged on the three clusters (3.5 sigma apart at the least): each prototype at its cluster's mean
    index, _ = m(x)
    assert torch.equal(index, torch.arange(3).repeat_interleave(200))
    torch.testing.assert_close(m.weight.detach(), x.view(3, 200, 2).mean(1))
