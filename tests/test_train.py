"""The main job (examples/train.py): ours and the torch.nn twin, trained in lockstep from the
same weights on the same batches, agree; the pictures are written."""
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("tm_train", os.path.join(ROOT, "examples", "train.py"))
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)


def _args(**kw):
    base = dict(data="digits", device="cpu", dtype="float64", epochs=2, batch_size=64, lr=0.05, momentum=0.9,
                weight_decay=1e-4, loss="nll", seed=0, out="runs")
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("loss", ["nll", "ce"])
@pytest.mark.parametrize("batch_size", [64, 0], ids=["sgd", "full_batch"])
def test_digits_twins_agree(loss, batch_size):
    """In float64 our modules, loss and SGD follow torch's step for step."""
    args = _args(loss=loss, batch_size=batch_size)
    data = train.digits(torch.Generator().manual_seed(0))
    hist, runs = train.train(args, data, 64, 32, 10)
    for a, b in zip(hist.step_loss[0], hist.step_loss[1]):
        assert abs(a - b) <= 1e-10 * max(1.0, abs(b))
    assert max(hist.diff) < 1e-10
    assert hist.acc[0] == hist.acc[1]


def test_digits_float32_learns_like_the_twin():
    """float32, the default: the first epoch's losses agree to float32 rounding, and ours learns
    (test accuracy within 2 points of the twin's after 3 epochs)."""
    args = _args(dtype="float32", epochs=3, batch_size=32)
    data = train.digits(torch.Generator().manual_seed(0))
    hist, _ = train.train(args, data, 64, 128, 10)
    assert abs(hist.epoch_loss[0][0] - hist.epoch_loss[1][0]) <= 1e-5 * hist.epoch_loss[1][0]
    assert abs(hist.acc[0][-1] - hist.acc[1][-1]) <= 0.02


def test_spiral_pictures(tmp_path):
    args = _args(data="spiral", epochs=2, lr=0.03, batch_size=128, out=str(tmp_path))
    data = train.spiral(torch.Generator().manual_seed(0), n=200)
    hist, runs = train.train(args, data, 2, 16, 2)
    assert max(hist.diff) < 1e-10
    train.plot_losses(tmp_path / "loss.png", args, hist)
    train.plot_layers(tmp_path / "layers.png", runs[0].model, data, torch.device("cpu"), torch.float64)
    for name in ("loss.png", "layers.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
