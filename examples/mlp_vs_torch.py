"""An MLP of torchmodules next to its torch.nn twin, from the same weights: a few steps of
stochastic gradient descent on both, printing both losses and the largest difference
between their gradients. Our kernels compute every forward and backward of ours.

Run: .venv/bin/python examples/mlp_vs_torch.py [--device cuda] [--dtype float64]
"""
import argparse

import torch
from torch import nn

import torchmodules as tm


def mlp(lib):
    """784 -> 128 -> 64 -> 10 with ReLUs and a LogSoftmax, from `lib` (torch.nn or torchmodules)."""
    return nn.Sequential(lib.Linear(784, 128), lib.ReLU(), lib.Linear(128, 64), lib.ReLU(),
                         lib.Linear(64, 10), lib.LogSoftmax(dim=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float64", "float32", "bfloat16", "float16"])
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    theirs = mlp(nn).to(args.device, dtype)
    ours = mlp(tm).to(args.device, dtype)
    ours.load_state_dict(theirs.state_dict())  # same parameter names: a drop-in

    # A fixed random "dataset": 1024 images of 28x28, 10 classes, minibatches of 64.
    x = torch.randn(1024, 784, device=args.device, dtype=dtype)
    y = torch.randint(0, 10, (1024,), device=args.device)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ours, theirs)]
    print(f"torchmodules MLP vs torch.nn MLP on {args.device}, {args.dtype}")
    print(f"{'step':>4} {'loss (ours)':>12} {'loss (torch)':>12} {'max |grad diff|':>16}")
    for step in range(args.steps):
        idx = torch.randint(0, 1024, (64,), device=args.device)
        losses = []
        for model, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            loss = nn.functional.nll_loss(model(x[idx]), y[idx])  # mean over the minibatch
            loss.backward()
            losses.append(loss.item())
        diff = max((a.grad - b.grad).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters()))
        for opt in opts:
            opt.step()
        print(f"{step:>4} {losses[0]:>12.6f} {losses[1]:>12.6f} {diff:>16.3e}")


if __name__ == "__main__":
    main()
