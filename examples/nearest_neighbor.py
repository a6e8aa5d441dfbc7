"""The lecture's second parameterised model, the nearest neighbour  y = argmin_k |x - w_k|^2,
as a prototype classifier on scikit-learn's digits (the data and split of examples/train.py).

  P prototypes per class (default 10, so K = 10 P), initialised from random training images of
  the class, then trained with our SGD to minimise the average loss: the squared distance of each
  training image to the nearest prototype of its own class (for each class that is online
  k-means). A test image gets the class of its nearest prototype among all K.

Every distance and argmin is our NearestNeighbor kernel (torch.ops.torchmodules.nearest_neighbor_*),
every gradient its backward, every update our fused SGD. Printed beside it, with the same op and no
training: 1-NN over the whole training set (the 1,438 training images as prototypes) and the
nearest class mean (P = 1). The MLP of examples/train.py reaches ~98% on the same split.

Run: .venv/bin/python examples/nearest_neighbor.py [--per-class 10] [--epochs 20] [--device cpu]
"""
import argparse
import os
import sys
import time

import torch

import torchmodules as tm
import torchmodules.functional as TF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import digits  # noqa: E402  (the same data and split as the main job)

CLASSES = 10


def own_class_loss(model, x, y, per_class):
    """The average over the batch of the squared distance to the nearest prototype of the
    image's own class: for each class, its images against its P prototypes (rows c P .. c P + P - 1)."""
    total = x.new_zeros(())
    for c in range(CLASSES):
        xc = x[y == c]
        if len(xc):
            _, sqdist = TF.nearest_neighbor(xc, model.weight[c * per_class:(c + 1) * per_class])
            total = total + sqdist.sum()
    return total / len(y)


@torch.no_grad()
def accuracy(prototypes, labels, x, y):
    """Share of x whose nearest prototype carries its label."""
    index, _ = TF.nearest_neighbor(x, prototypes)
    return (labels[index] == y).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=10, help="prototypes per class (default 10)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    dev = torch.device(args.device)
    xtr, ytr, xte, yte = (t.to(dev) for t in digits(torch.Generator().manual_seed(args.seed)))
    P = args.per_class
    print(f"digits: {len(ytr)} training, {len(yte)} test images of {xtr.shape[1]} pixels; "
          f"{P} prototypes per class, K = {CLASSES * P}, on {dev.type}")

    # the baselines, no training: every training image a prototype; one class mean per class
    acc_1nn = accuracy(xtr, ytr, xte, yte)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(CLASSES)])
    acc_means = accuracy(means, torch.arange(CLASSES, device=dev), xte, yte)

    torch.manual_seed(args.seed)
    model = tm.NearestNeighbor(CLASSES * P, xtr.shape[1], device=dev)
    with torch.no_grad():  # P random training images of each class
        for c in range(CLASSES):
            rows = (ytr == c).nonzero()[:, 0]
            model.weight[c * P:(c + 1) * P] = xtr[rows[torch.randperm(len(rows), device=dev)[:P]]]
    labels = torch.arange(CLASSES, device=dev).repeat_interleave(P)  # prototype k is of class k // P
    acc_init = accuracy(model.weight, labels, xte, yte)
    opt = tm.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    order = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(ytr), generator=order).to(dev)
        total = 0.0
        for b in range(0, len(ytr), args.batch_size):
            idx = perm[b:b + args.batch_size]
            loss = own_class_loss(model, xtr[idx], ytr[idx], P)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}: average squared distance to the own class's nearest prototype "
                  f"{total / len(ytr):.4f}, test accuracy {100 * accuracy(model.weight, labels, xte, yte):.2f}%")
    seconds = time.perf_counter() - start
    acc = accuracy(model.weight, labels, xte, yte)
    print(f"summary: test accuracy {100 * acc:.2f}% with {CLASSES * P} trained prototypes "
          f"({100 * acc_init:.2f}% before training); 1-NN over all {len(ytr)} training images "
          f"{100 * acc_1nn:.2f}%, nearest class mean {100 * acc_means:.2f}%; the MLP of examples/train.py "
          f"~98%; {seconds:.2f} s of training ({1000 * seconds / args.epochs:.1f} ms/epoch) on {dev.type}")


if __name__ == "__main__":
    main()
