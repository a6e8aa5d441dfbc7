"""The main job: a network made only of torchmodules modules, trained with our SGD, next to
its torch.nn twin with the same initial weights and the same batches.

  --data digits  scikit-learn's handwritten digits (1,797 images of 8x8, shipped inside the
                 package: no download); a 64-128 MLP with a residual block (Duplicate + Add)
                 and a maxout layer (Maximum of two Linear), LogSoftmax + NLLLoss
                 (--loss ce: CrossEntropyLoss on the logits). Prints per epoch both losses,
                 the largest parameter difference and both test accuracies; writes a PNG.
  --data spiral  the lecture's practicum taken further: two interleaved 2-D spirals, a small
                 net, and a picture of how each layer stretches and folds the plane.

Every forward and backward of "ours" runs our kernels (Linear, ReLU, Duplicate, Add,
Maximum, LogSoftmax, the loss) and every update our fused SGD kernel; the twin runs torch's.
--batch-size 0 is full-batch gradient descent. Runs on the GPU when there is one.

Run: .venv/bin/python examples/train.py [--data spiral] [--epochs N] [--device cpu]
"""
import argparse
import math
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

import torchmodules as tm


# ---- the two libraries: ours, and torch.nn with the same module names -------------------------

class _TorchDuplicate(nn.Module):
    def __init__(self, n=2):
        super().__init__()
        self.n = n

    def forward(self, x):
        return (x,) * self.n


class _TorchAdd(nn.Module):
    def forward(self, a, b):
        return a + b


class _TorchMaximum(nn.Module):
    def forward(self, a, b):
        return torch.maximum(a, b)


OURS = SimpleNamespace(name="torchmodules", Linear=tm.Linear, ReLU=tm.ReLU, LogSoftmax=tm.LogSoftmax,
                       Duplicate=tm.Duplicate, Add=tm.Add, Maximum=tm.Maximum, NLLLoss=tm.NLLLoss,
                       CrossEntropyLoss=tm.CrossEntropyLoss, SGD=tm.optim.SGD)
TORCH = SimpleNamespace(name="torch.nn", Linear=nn.Linear, ReLU=nn.ReLU, LogSoftmax=nn.LogSoftmax,
                        Duplicate=_TorchDuplicate, Add=_TorchAdd, Maximum=_TorchMaximum, NLLLoss=nn.NLLLoss,
                        CrossEntropyLoss=nn.CrossEntropyLoss, SGD=torch.optim.SGD)


class Net(nn.Module):
    """in -> Linear -> ReLU -> residual block -> maxout -> Linear -> (LogSoftmax).

    residual block: (a, b) = Duplicate(h); h = Add(ReLU(Linear(a)), b)
    maxout:         h = Maximum(Linear(h), Linear(h))
    """

    def __init__(self, lib, d_in, width, classes, log_softmax=True):
        super().__init__()
        self.inp, self.relu1 = lib.Linear(d_in, width), lib.ReLU()
        self.dup, self.res, self.relu2, self.add = lib.Duplicate(2), lib.Linear(width, width), lib.ReLU(), lib.Add()
        self.max_a, self.max_b, self.max = lib.Linear(width, width), lib.Linear(width, width), lib.Maximum()
        self.out = lib.Linear(width, classes)
        self.lsm = lib.LogSoftmax(dim=1) if log_softmax else nn.Identity()

    def stages(self, x):
        """The activation after each stage (for the pictures), the output last."""
        h1 = self.relu1(self.inp(x))
        a, b = self.dup(h1)
        h2 = self.add(self.relu2(self.res(a)), b)
        h3 = self.max(self.max_a(h2), self.max_b(h2))
        return [h1, h2, h3, self.lsm(self.out(h3))]

    def forward(self, x):
        return self.stages(x)[-1]


# ---- data --------------------------------------------------------------------------------------

def digits(gen):
    """load_digits: 8x8 images scaled to [0, 1], 80/20 split by a seeded permutation."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=gen)
    n_test = len(y) // 5
    return x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]]


def spiral(gen, n=1000, turns=1.5, noise=0.06):
    """Two interleaved spirals in the plane, n points each, classes 0 and 1; 20% held out."""
    t = torch.rand(2 * n, generator=gen) * turns * 2 * math.pi + 0.5
    cls = torch.arange(2 * n) % 2
    r = t / (turns * 2 * math.pi)
    ang = t + math.pi * cls
    x = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1) + noise * torch.randn(2 * n, 2, generator=gen)
    perm = torch.randperm(2 * n, generator=gen)
    n_test = 2 * n // 5
    return x[perm[n_test:]], cls[perm[n_test:]], x[perm[:n_test]], cls[perm[:n_test]]


# ---- training ----------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total, width=30):
        self.total, self.width, self.tty = total, width, sys.stderr.isatty()

    def show(self, done, text=""):
        if self.tty:
            k = self.width * done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * k}{'.' * (self.width - k)}] {done}/{self.total} {text}")
            sys.stderr.flush()

    def clear(self):
        if self.tty:
            sys.stderr.write("\r" + " " * (self.width + 60) + "\r")


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def max_param_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(args, data, d_in, width, classes):
    """Trains ours and the twin in lockstep; returns per-epoch history and both models."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    xtr, ytr, xte, yte = (t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in data)
    use_lsm = args.loss == "nll"
    torch.manual_seed(args.seed)
    twin = Net(TORCH, d_in, width, classes, use_lsm).to(device, dtype)
    ours = Net(OURS, d_in, width, classes, use_lsm).to(device, dtype)
    ours.load_state_dict(twin.state_dict())  # same names and shapes: the same initial weights

    runs = []
    for lib, model in ((OURS, ours), (TORCH, twin)):
        loss_fn = lib.NLLLoss() if use_lsm else lib.CrossEntropyLoss()
        opt = lib.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      nesterov=args.momentum > 0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
        runs.append(SimpleNamespace(name=lib.name, model=model, loss_fn=loss_fn, opt=opt, sched=sched, seconds=0.0))

    n = len(ytr)
    bs = n if args.batch_size <= 0 else args.batch_size
    steps = math.ceil(n / bs)
    order = torch.Generator().manual_seed(args.seed + 1)  # one batch order for both
    hist = SimpleNamespace(step_loss=[[], []], epoch_loss=[[], []], acc=[[], []], diff=[])
    mode = "full-batch" if bs == n else f"minibatches of {bs}"
    print(f"{args.data}: {n} training / {len(yte)} test samples, {classes} classes, {mode}, "
          f"{args.epochs} epochs, SGD lr {args.lr} momentum {args.momentum}, {args.loss} loss, "
          f"{args.dtype} on {device.type}")
    print(f"{'epoch':>5} {'loss ours':>11} {'loss torch':>11} {'max|dparam|':>12} {'acc ours':>9} {'acc torch':>9}")
    bar = Progress(args.epochs * steps)
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=order).to(device)
        sums = [0.0, 0.0]
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            xb, yb = xtr[idx], ytr[idx]
            for k, r in enumerate(runs):
                sync(device)
                t0 = time.perf_counter()
                r.opt.zero_grad()
                loss = r.loss_fn(r.model(xb), yb)
                loss.backward()
                r.opt.step()
                sync(device)
                r.seconds += time.perf_counter() - t0
                hist.step_loss[k].append(loss.item())
                sums[k] += loss.item() * len(idx)
            bar.show(epoch * steps + s + 1, f"loss {hist.step_loss[0][-1]:.4f}")
        for k, r in enumerate(runs):
            r.sched.step()
            hist.epoch_loss[k].append(sums[k] / n)
            hist.acc[k].append(accuracy(r.model, xte, yte))
        hist.diff.append(max_param_diff(ours, twin))
        bar.clear()
        print(f"{epoch + 1:>5} {hist.epoch_loss[0][-1]:>11.6f} {hist.epoch_loss[1][-1]:>11.6f} "
              f"{hist.diff[-1]:>12.3e} {100 * hist.acc[0][-1]:>8.2f}% {100 * hist.acc[1][-1]:>8.2f}%")
    return hist, runs


def summary(args, hist, runs):
    loss_diff = max(abs(a - b) for a, b in zip(hist.step_loss[0], hist.step_loss[1]))
    per_epoch = [r.seconds / args.epochs for r in runs]
    print(f"summary: test accuracy ours {100 * hist.acc[0][-1]:.2f}% / torch {100 * hist.acc[1][-1]:.2f}%; "
          f"largest loss difference {loss_diff:.2e}, largest parameter difference {max(hist.diff):.2e}; "
          f"{1e3 * per_epoch[0]:.1f} ms/epoch ours vs {1e3 * per_epoch[1]:.1f} ms/epoch torch on {args.device}")


# ---- pictures ----------------------------------------------------------------------------------

def plot_losses(path, args, hist):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, style) in enumerate((("torchmodules", "-"), ("torch.nn twin", "--"))):
        a1.plot(hist.step_loss[k], style, lw=1, label=name)
        a2.plot(range(1, args.epochs + 1), [100 * a for a in hist.acc[k]], style, label=name)
    a1.set(xlabel="step", ylabel=f"training loss ({args.loss})", yscale="log", title=f"{args.data}: loss per step")
    a2.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for a in (a1, a2):
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layers(path, model, data, device, dtype):
    """How each stage maps the plane: a grid of lines and the data, pushed through the net
    and projected on the two main directions (PCA) of each stage's activations; the first
    panel colours the input plane by the predicted class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    xtr, ytr = data[0], data[1]
    lim = 1.3
    lines = []
    for v in np.linspace(-lim, lim, 15):
        t = np.linspace(-lim, lim, 200)
        lines += [np.stack([t, np.full_like(t, v)], 1), np.stack([np.full_like(t, v), t], 1)]
    names = ["input plane", "Linear + ReLU", "residual block (Duplicate, Add)", "maxout (Maximum)", "output"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4))
    g = np.linspace(-lim, lim, 300)
    gx, gy = np.meshgrid(g, g)
    with torch.no_grad():
        grid_pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=dtype, device=device)
        pred = model(grid_pts).argmax(1).cpu().numpy().reshape(gx.shape)
        axes[0].contourf(gx, gy, pred, levels=[-0.5, 0.5, 1.5], colors=["#cfe2f3", "#f9d6c8"])
        stage_lines = [[ln] for ln in lines]
        for ln in stage_lines:
            ln += [s.cpu().numpy() for s in model.stages(torch.tensor(ln[0], dtype=dtype, device=device))]
        pts = [xtr.numpy()] + [s.cpu().numpy() for s in model.stages(xtr.to(device, dtype))]
    for k, (ax, name) in enumerate(zip(axes, names)):
        act = pts[k]
        mean = act.mean(0)
        basis = np.linalg.svd(act - mean, full_matrices=False)[2][:2].T if act.shape[1] > 2 else np.eye(2)
        for ln in stage_lines:
            p = (ln[k] - mean) @ basis
            ax.plot(p[:, 0], p[:, 1], color="0.6", lw=0.5)
        p = (act - mean) @ basis
        ax.scatter(p[:, 0], p[:, 1], c=ytr.numpy(), cmap="coolwarm", s=3)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("the plane through each layer (grid lines and training points, 2 main directions)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="digits", choices=["digits", "spiral"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--epochs", type=int, default=None, help="default: 20 (digits), 60 (spiral)")
    p.add_argument("--batch-size", type=int, default=32, help="0: full-batch gradient descent")
    p.add_argument("--lr", type=float, default=None, help="default: 0.05 (digits), 0.03 (spiral)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--loss", default="nll", choices=["nll", "ce"],
                   help="nll: LogSoftmax + NLLLoss; ce: CrossEntropyLoss on the logits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="folder for the PNGs")
    args = p.parse_args()
    spiral_mode = args.data == "spiral"
    args.epochs = args.epochs or (60 if spiral_mode else 20)
    args.lr = args.lr or (0.03 if spiral_mode else 0.05)

    gen = torch.Generator().manual_seed(args.seed)
    data = spiral(gen) if spiral_mode else digits(gen)
    d_in, width, classes = (2, 16, 2) if spiral_mode else (64, 128, 10)
    start = time.perf_counter()
    hist, runs = train(args, data, d_in, width, classes)
    summary(args, hist, runs)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"{args.data}_loss.png")
    plot_losses(png, args, hist)
    print(f"wrote {png}", end="")
    if spiral_mode:
        png2 = os.path.join(args.out, "spiral_layers.png")
        plot_layers(png2, runs[0].model, data, torch.device(args.device), getattr(torch, args.dtype))
        print(f" and {png2}", end="")
    print(f" ({time.perf_counter() - start:.1f} s in all)")


if __name__ == "__main__":
    main()
