"""CrossEntropy beyond the op table: the module is a drop-in torch.nn.CrossEntropyLoss, the
forward keeps no (N, C) tensor for the backward, the third derivative (torch ops over our
kernels) is right, torch's legacy arguments work, torch.compile sees no graph break, and on
CUDA the big-vocabulary shapes match torch and repeat bit for bit."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchmodules as tm
import torchmodules.functional as TF
from helpers import DEVICES

ops = torch.ops.torchmodules
F64 = torch.float64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [{}, dict(reduction="sum", ignore_index=1), dict(reduction="none", label_smoothing=0.2),
                                dict(label_smoothing=0.1, ignore_index=0)], ids=str)
def test_module_is_drop_in(kw, device):
    w = torch.rand(6, dtype=F64, device=device) + 0.5
    ours, ref = tm.CrossEntropyLoss(weight=w, **kw), nn.CrossEntropyLoss(weight=w, **kw)
    assert isinstance(ours, nn.CrossEntropyLoss) and repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
    x = torch.randn(9, 6, 4, dtype=F64, device=device, requires_grad=True)
    t = torch.randint(0, 6, (9, 4), device=device)
    a, b = ours(x, t), ref(x, t)
    torch.testing.assert_close(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb)
    q = torch.softmax(torch.randn(9, 6, 4, dtype=F64, device=device), 1)
    if kw.get("ignore_index", -100) < 0:
        torch.testing.assert_close(ours(x, q), ref(x, q))


@pytest.mark.parametrize("prob", [False, True], ids=["class", "prob"])
def test_forward_saves_no_class_sized_tensor(prob):
    """Saved for the backward: the input itself and per-row values, nothing else of size N * C."""
    n, c = 64, 1000
    x = torch.randn(n, c, requires_grad=True)
    t = torch.softmax(torch.randn(n, c), 1) if prob else torch.randint(0, c, (n,))
    saved = []

    def pack(v):
        saved.append(v)
        return v

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
        TF.cross_entropy(x, t, label_smoothing=0.1)
    big = [v for v in saved if v.numel() >= n * c and v.data_ptr() not in (x.data_ptr(), t.data_ptr())]
    assert not big, f"saved (N, C) tensors: {[tuple(v.shape) for v in big]}"
    # per row (m, log s), and total_weight's 2
    assert sum(v.numel() for v in saved if v.data_ptr() not in (x.data_ptr(), t.data_ptr())) <= 2 * n + 2


@pytest.mark.parametrize("kw", [dict(reduction="mean"), dict(reduction="none", label_smoothing=0.3),
                                dict(reduction="sum", label_smoothing=0.2, weight=True)], ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["class", "prob"])
def test_third_order(prob, kw):
    """gradcheck of the double backward op (lse recomputed from x, so its x-derivative is the
    total one) checks the torch-composed third derivative."""
    kw = dict(kw)
    red = {"none": 0, "mean": 1, "sum": 2}[kw.pop("reduction")]
    eps = kw.pop("label_smoothing", 0.0)
    w = torch.rand(5, dtype=F64) + 0.5 if kw.pop("weight", False) else None
    x = torch.randn(4, 5, 3, dtype=F64, requires_grad=True)
    t = torch.softmax(torch.randn(4, 5, 3, dtype=F64), 1).requires_grad_() if prob else torch.randint(0, 5, (4, 3))
    if not prob:
        t[0, 1] = -100
    g = torch.randn((4, 3) if red == 0 else (), dtype=F64, requires_grad=True)
    gg = torch.randn(4, 5, 3, dtype=F64, requires_grad=True)
    hh = torch.randn(4, 5, 3, dtype=F64, requires_grad=True)

    def f(gg, g, x, *rest):
        _, lse, tw = ops.cross_entropy_forward(x, rest[0] if prob else t, w, red, -100, eps)
        if prob:
            return ops.cross_entropy_double_backward(gg, rest[1], g, x, rest[0], w, lse, tw, red, -100, eps)
        return ops.cross_entropy_double_backward(gg, None, g, x, t, w, lse, tw, red, -100, eps)[:2]

    args = (gg, g, x, t, hh) if prob else (gg, g, x)
    assert torch.autograd.gradcheck(f, args, atol=1e-6, rtol=1e-5)


def test_legacy_reduction_arguments():
    x, t = torch.randn(5, 4, dtype=F64), torch.randint(0, 4, (5,))
    with pytest.warns(UserWarning):
        a = TF.cross_entropy(x, t, size_average=False)
    with pytest.warns(UserWarning):
        b = F.cross_entropy(x, t, size_average=False)
    torch.testing.assert_close(a, b)


def test_weight_under_no_grad_is_fine():
    x, t, w = torch.randn(5, 4), torch.randint(0, 4, (5,)), torch.rand(4, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(TF.cross_entropy(x, t, w), F.cross_entropy(x, t, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_loss_matches_eager(backend, device):
    torch._dynamo.reset()
    lin = tm.Linear(8, 11).to(device)
    loss_fn = tm.CrossEntropyLoss(label_smoothing=0.1, ignore_index=2)

    def step(fn, x, t):
        lin.zero_grad()
        loss = fn(x, t)
        loss.backward()
        return loss.detach(), lin.weight.grad.clone()

    def fwd(x, t):
        return loss_fn(lin(x), t)

    x, t = torch.randn(13, 8, device=device), torch.randint(0, 11, (13,), device=device)
    explain = torch._dynamo.explain(fwd)(x, t)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    eager = step(fwd, x, t)
    compiled = step(torch.compile(fwd, backend=backend, fullgraph=True), x, t)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("shape", [(256, 32768), (32, 128256), (40, 32771)], ids=str)
@pytest.mark.parametrize("kw", [{}, dict(label_smoothing=0.1, weight=True)], ids=str)
def test_cuda_big_vocab_matches_torch(shape, kw):
    """The benchmark's row lengths in bfloat16 (16-byte vectors; one odd length): loss and
    gradient against torch in float32 on the same rounded logits."""
    kw = dict(kw)
    n, c = shape
    w = (torch.randint(1, 17, (c,), device="cuda") / 8) if kw.pop("weight", False) else None
    x = (torch.randn(n, c, device="cuda") * 3).bfloat16().requires_grad_()
    t = torch.randint(0, c, (n,), device="cuda")
    t[::7] = -100
    ours = TF.cross_entropy(x, t, weight=None if w is None else w.bfloat16(), **kw)
    g, = torch.autograd.grad(ours, x)
    x32 = x.detach().float().requires_grad_()
    ref = F.cross_entropy(x32, t, weight=w, **kw)
    g32, = torch.autograd.grad(ref, x32)
    torch.testing.assert_close(ours.float(), ref, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(g.float(), g32, rtol=2e-2, atol=1e-6 + 1e-2 * g32.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_is_deterministic():
    x = torch.randn(300, 5000, device="cuda", requires_grad=True)
    t = torch.randint(0, 5000, (300,), device="cuda")
    runs = []
    for _ in range(3):
        loss = TF.cross_entropy(x, t, label_smoothing=0.1)
        runs.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
    assert all(torch.equal(a, runs[0][0]) and torch.equal(b, runs[0][1]) for a, b in runs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_capture():
    """Inside a CUDA graph the bad-target readback (a sync) is skipped; the loss replays right."""
    x = torch.randn(64, 100, device="cuda")
    t = torch.randint(0, 100, (64,), device="cuda")
    TF.cross_entropy(x, t)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = TF.cross_entropy(x, t)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, F.cross_entropy(x, t))


def _ce_case(kind, device, dtype):
    """(logits leaf source h, weight W, target, kwargs): logits = h @ W, so the loss's input is a
    non-leaf whose gradient flows on, as an LM head's."""
    g = torch.Generator().manual_seed(5)
    n, c, k = (500, 10, 8) if kind == "short" else (12, 37, 8)  # short: several blocks of the CPU's flat path
    d = {"nd": 3, "nd_cols": 20}.get(kind, 1)  # nd_cols: the CPU's loops across rows at stride >= 16
    shape = (n, c, d) if d > 1 else (n, c)
    h = torch.randn(n, k, dtype=F64, generator=g)
    W = torch.randn(k, c * d, dtype=F64, generator=g)
    kw = {"class": {}, "short": dict(reduction="none"), "smooth_none": dict(reduction="none", label_smoothing=0.2),
          "weight_sum": dict(reduction="sum", ignore_index=2, weight=torch.rand(c, dtype=F64, generator=g) + 0.5),
          "nd": dict(label_smoothing=0.1), "prob": dict(label_smoothing=0.05),
          "nd_cols": dict(reduction="none", ignore_index=2, weight=torch.rand(c, dtype=F64, generator=g) + 0.5)}[kind]
    if kind == "prob":
        t = torch.softmax(torch.randn(shape, dtype=F64, generator=g), 1).to(dtype)
    else:
        t = torch.randint(0, c, (n, d) if d > 1 else (n,), generator=g)
        t[1] = kw.get("ignore_index", -100)
    kw = {k_: (v.to(device, dtype) if isinstance(v, torch.Tensor) else v) for k_, v in kw.items()}
    return h.to(device, dtype), W.to(device, dtype), t.to(device), kw, shape


def _ce_run(h, W, t, kw, shape, inplace, f):
    h = h.clone().requires_grad_()
    z = (h @ W).reshape(shape)
    seen = []
    z.register_hook(lambda gz: seen.append(gz))
    loss = f(z, t, **kw, **({"inplace_backward": True} if inplace else {}))
    loss.sum().backward()
    return loss.detach(), h.grad, seen[0], z


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["class", "short", "smooth_none", "weight_sum", "nd", "nd_cols", "prob"])
def test_inplace_backward(kind, dtype, device):
    """inplace_backward=True: the loss and every gradient are those of the usual backward (bit for
    bit: the same kernel), and those of torch (float64); the gradient handed to the logits' node is
    the logits' own storage, which then holds it."""
    h, W, t, kw, shape = _ce_case(kind, device, dtype)
    loss, gh, gz, z = _ce_run(h, W, t, kw, shape, True, TF.cross_entropy)
    loss0, gh0, gz0, z0 = _ce_run(h, W, t, kw, shape, False, TF.cross_entropy)
    assert torch.equal(loss, loss0) and torch.equal(gz, gz0) and torch.equal(gh, gh0)
    assert gz.data_ptr() == z.data_ptr() and torch.equal(z.detach(), gz0), "dz is not in the logits' storage"
    assert z0.data_ptr() != gz0.data_ptr() and not torch.equal(z0.detach(), gz0)  # the usual backward leaves z
    if dtype == F64:
        kw_t = {k_: v for k_, v in kw.items()}
        loss_t, gh_t, gz_t, _ = _ce_run(h, W, t.to(F64) if t.is_floating_point() else t, kw_t, shape, False,
                                        F.cross_entropy)
        torch.testing.assert_close(loss, loss_t)
        torch.testing.assert_close(gz, gz_t)
        torch.testing.assert_close(gh, gh_t)


@pytest.mark.parametrize("C,kw", [(21, dict(ignore_index=255)),                    # CPU: loops across the rows
                                  (21, dict(reduction="none", weight=True)),
                                  (40, dict(ignore_index=255, weight=True)),
                                  (21, dict(label_smoothing=0.1, ignore_index=255)),  # gathered rows
                                  (21, dict(prob=True))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_strided_rows_match_torch_at_any_thread_count(C, kw, dtype):
    """A segmentation's logits [N, C, H, W] (rows at stride H W = 925) over many blocks, the threads'
    shares of the rows split inside an image: the loss and the logits' gradient are torch's (float64)
    and the same bits at 1 and 2 threads."""
    g = torch.Generator().manual_seed(11)
    kw = dict(kw)
    shape = (3, C, 25, 37)
    x = (torch.randn(shape, generator=g, dtype=F64) * 3).to(dtype)
    if kw.pop("prob", False):
        t = torch.softmax(torch.randn(shape, generator=g, dtype=F64), 1).to(dtype)
    else:
        t = torch.randint(0, C, (3, 25, 37), generator=g)
        t[torch.rand(t.shape, generator=g) < 0.1] = kw.get("ignore_index", -100)
    if kw.get("weight"):
        kw["weight"] = (torch.randint(1, 17, (C,), generator=g) / 8).to(dtype)
    gy = torch.rand((3, 25, 37) if kw.get("reduction") == "none" else (), generator=g, dtype=F64)

    def run(f, xv, tv, kv):
        xv = xv.clone().requires_grad_()
        y = f(xv, tv, **kv)
        y.backward(gy.to(y.dtype))
        return y.detach(), xv.grad

    threads = torch.get_num_threads()
    try:
        outs = []
        for k in (1, 2):
            torch.set_num_threads(k)
            outs.append(run(TF.cross_entropy, x, t, kw))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    kw64 = {k: (v.to(F64) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = run(F.cross_entropy, x.to(F64), t.to(F64) if t.is_floating_point() else t, kw64)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for ours, want in zip(outs[0], ref):
        torch.testing.assert_close(ours.to(F64), want, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_backward_guards(device):
    """Never a silently wrong gradient: a node that saved the logits and runs after our backward,
    or a second backward (retain_graph), raises; a non-contiguous input, no grad or a module
    flag all give torch's values."""
    x = torch.randn(6, 5, dtype=F64, device=device)
    t = torch.randint(0, 5, (6,), device=device)
    ref_grad = lambda z: torch.autograd.grad(F.cross_entropy(z, t) + (z * z).sum(), z)[0]  # noqa: E731
    # (z * z) created first: its node runs after ours (autograd runs later nodes first) and finds z changed
    z = (x.clone().requires_grad_() * 1.0)
    other = (z * z).sum()
    loss = TF.cross_entropy(z, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()
    # created after: it runs first, while z still holds the logits, and the sum is right
    leaf = x.clone().requires_grad_()
    z = leaf * 1.0
    (TF.cross_entropy(z, t, inplace_backward=True) + (z * z).sum()).backward()
    torch.testing.assert_close(leaf.grad, ref_grad(x.clone().requires_grad_()))
    # a second backward through the same graph
    z = x.clone().requires_grad_() * 1.0
    loss = TF.cross_entropy(z, t, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # fallbacks and the module
    xt = x.t().contiguous().requires_grad_()
    g_nc, = torch.autograd.grad(TF.cross_entropy(xt.t(), t, inplace_backward=True), xt)
    g_ref, = torch.autograd.grad(F.cross_entropy(xt.t(), t), xt)
    torch.testing.assert_close(g_nc, g_ref)
    assert torch.equal(xt.detach(), x.t()), "a non-contiguous input was changed"
    leaf = x.clone().requires_grad_()  # a leaf keeps its values; its .grad is a tensor of its own
    TF.cross_entropy(leaf, t, inplace_backward=True).backward()
    ref = x.clone().requires_grad_()
    F.cross_entropy(ref, t).backward()
    torch.testing.assert_close(leaf.grad, ref.grad)
    assert torch.equal(leaf.detach(), x) and leaf.grad.data_ptr() != leaf.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(TF.cross_entropy(x, t, inplace_backward=True), F.cross_entropy(x, t))
    m = tm.CrossEntropyLoss(label_smoothing=0.1, inplace_backward=True)
    leaf = x.clone().requires_grad_()
    m(leaf * 1.0, t).backward()
    ref = x.clone().requires_grad_()
    F.cross_entropy(ref, t, label_smoothing=0.1).backward()
    torch.testing.assert_close(leaf.grad, ref.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prob", [False, True], ids=["class", "prob"])
def test_opcheck_inplace_backward_op(prob, device):
    """cross_entropy_backward_ (dx into input) under torch.library.opcheck (schema, fake, mutation
    annotations), and its result is the out-of-place op's dx."""
    x = torch.randn(5, 7, device=device)
    t = torch.softmax(torch.randn(5, 7, device=device), 1) if prob else torch.randint(0, 7, (5,), device=device)
    w = torch.rand(7, device=device) + 0.5
    _, lse, tw = ops.cross_entropy_forward(x, t, w, 1, -100, 0.1)
    g = torch.tensor(1.5, device=device)
    dx, _ = ops.cross_entropy_backward(g, x, t, w, lse, tw, 1, -100, 0.1, False)
    torch.library.opcheck(ops.cross_entropy_backward_, (x.clone(), g, t, w, lse, tw, 1, -100, 0.1))
    y = x.clone()
    ops.cross_entropy_backward_(y, g, t, w, lse, tw, 1, -100, 0.1)
    assert torch.equal(y, dx)
    with pytest.raises(RuntimeError, match="cross_entropy_backward_.*not contiguous"):
        ops.cross_entropy_backward_(x.t().contiguous().t(), g, t, w, lse, tw, 1, -100, 0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("C, nan", [(8, 4), (40, 1), (64, 8), (3000, 2048), (5000, 4096)], ids=str)
@pytest.mark.parametrize("kind", ["class", "smooth", "prob"])
def test_leading_nan_logits_make_the_row_nan(kind, C, nan, dtype, device):
    """Rows whose first logits are NaN, or NaN and -inf (a whole share of a GPU thread, a whole
    2048-element block of the CPU's online pass, where the running max is still -inf), the rest
    finite: their loss and gradient are NaN and the other rows' are torch's (float64)."""
    g = torch.Generator().manual_seed(C + nan)
    x = torch.randn(3, C, dtype=F64, generator=g)
    x[0, :nan] = float("nan")
    x[2, :nan + 1] = float("nan")
    x[2, 0] = -float("inf")
    if kind == "prob":
        t = torch.softmax(torch.randn(3, C, dtype=F64, generator=g), 1)
    else:
        t = torch.tensor([C - 1, C - 2, C // 2])
    kw = dict(reduction="none", label_smoothing=0.1 if kind != "class" else 0.0)
    xq = x.to(dtype)
    ours = xq.to(device).requires_grad_()
    loss = TF.cross_entropy(ours, t.to(device, dtype) if kind == "prob" else t.to(device), **kw)
    (dx,) = torch.autograd.grad(loss.sum(), ours)
    ref = xq.to(F64).requires_grad_()
    loss_t = F.cross_entropy(ref, t.to(dtype).to(F64) if kind == "prob" else t, **kw)
    (dx_t,) = torch.autograd.grad(loss_t.sum(), ref)
    assert loss_t[[0, 2]].isnan().all() and dx_t[[0, 2]].isnan().all()  # (torch's rule, checked)
    tol = {F64: {}, torch.float32: dict(atol=1e-5, rtol=1.3e-6), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}[dtype]
    torch.testing.assert_close(loss.cpu().to(F64), loss_t.detach(), equal_nan=True, **tol)
    torch.testing.assert_close(dx.cpu().to(F64), dx_t, equal_nan=True, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("C", [5, 40, 2049])
@pytest.mark.parametrize("kind", ["class", "smooth", "spatial", "prob"])
def test_large_tied_logits_keep_their_gradient(kind, C, dtype, device):
    """Tied maxima of large magnitude (float32 at 1e4 and 1e8, bfloat16 at 1e8, float64 at 1e300),
    where m + log s rounded to one number loses log s: softmax there is 1/k on the k tied classes
    whatever the offset. The saved (m, log s) keeps it: the gradient, the in-place backward and the
    second derivative against torch's (float64, on the same rounded logits)."""
    g = torch.Generator().manual_seed(C)
    rows = []
    for v in {F64: [1e300], torch.float32: [1e4, 1e8], torch.bfloat16: [1e8]}[dtype]:
        for k in (2, 3):
            x = v - 1 - 3 * torch.rand(C, dtype=F64, generator=g) if dtype != torch.bfloat16 else \
                torch.full((C,), v - 4e6, dtype=F64)
            x[:k] = v
            rows.append(x)
    xq = torch.stack(rows).to(dtype)
    if kind == "spatial":
        xq = xq.unsqueeze(-1).expand(-1, -1, 3).contiguous()
    if kind == "prob":
        t = torch.softmax(torch.randn(xq.shape, dtype=F64, generator=g), 1).to(dtype)
    else:
        t = torch.randint(0, C, xq.shape[:1] + xq.shape[2:], generator=g)
    kw = dict(reduction="sum", label_smoothing=0.1 if kind == "smooth" else 0.0)
    v = torch.randn(xq.shape, dtype=F64, generator=g)

    def grads(fn, x, t, dt):
        x = x.to(device, dt, copy=True).requires_grad_()
        (dx,) = torch.autograd.grad(fn(x, t.to(device, dt) if t.is_floating_point() else t.to(device), **kw), x,
                                    create_graph=True)
        (ddx,) = torch.autograd.grad((dx * v.to(device, dt)).sum(), x)
        return dx.detach().cpu().to(F64), ddx.cpu().to(F64)

    dx, ddx = grads(TF.cross_entropy, xq, t, dtype)
    dx_t, ddx_t = grads(F.cross_entropy, xq, t, F64)
    tol = {F64: {}, torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}[dtype]
    torch.testing.assert_close(dx, dx_t, **tol)
    torch.testing.assert_close(ddx, ddx_t, **tol)
    if kind != "prob":
        h = xq.to(device, copy=True).requires_grad_()
        x = h * 1  # not a leaf: the in-place backward runs, dx in x's storage, then h.grad
        TF.cross_entropy(x, t.to(device), inplace_backward=True, **kw).backward()
        assert torch.equal(x.detach(), h.grad)
        torch.testing.assert_close(h.grad.cpu().to(F64), dx_t, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("kind", ["smooth", "prob"])
@pytest.mark.parametrize("weights", ["inf", "sum_overflows"])
def test_extreme_weights_sum_as_torch(weights, kind, dtype, device):
    """Class weights with an inf, or finite ones whose sum overflows: where the one-pass sums meet
    inf * 0 or overflow, the row is summed again in torch's order (ce_row_exact): the loss is
    torch's (inf, NaN where torch's is), and so is the gradient."""
    g = torch.Generator().manual_seed(7)
    C = 40
    w = torch.rand(C, dtype=F64, generator=g) + 0.5
    if weights == "inf":
        w[C // 2] = float("inf")
    else:
        w = torch.full((C,), torch.finfo(dtype).max / C * 1.5, dtype=F64)
    x = torch.randn(6, C, dtype=F64, generator=g).to(dtype)
    t = torch.softmax(torch.randn(6, C, dtype=F64, generator=g), 1).to(dtype) if kind == "prob" else \
        torch.randint(0, C, (6,), generator=g)
    for red in ("none", "sum"):
        def run(fn, dt):
            xx = x.to(device, dt, copy=True).requires_grad_()
            loss = fn(xx, t.to(device, dt) if kind == "prob" else t.to(device), weight=w.to(device, dt),
                      label_smoothing=0.1, reduction=red)
            (dx,) = torch.autograd.grad(loss.sum(), xx)
            return loss.detach().cpu().to(F64), dx.cpu().to(F64)

        (lo, dx), (lt, dxt) = run(TF.cross_entropy, dtype), run(F.cross_entropy, dtype)
        if dtype == F64:  # float32: torch's float32 sums overflow where ours (in double) may not
            torch.testing.assert_close(lo, lt, equal_nan=True)
            torch.testing.assert_close(dx, dxt, equal_nan=True)
        else:
            torch.testing.assert_close(lo, run(F.cross_entropy, F64)[0].to(dtype).to(F64), equal_nan=True,
                                       rtol=2e-6, atol=0)
