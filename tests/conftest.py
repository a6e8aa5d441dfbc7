import os
import random
import zlib

# Outputs are filled with NaN before each kernel runs, so an element a kernel forgot shows.
os.environ.setdefault("TORCHMODULES_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def _inductor_cache_dir():
    """torch.compile's on-disk caches keyed on this build of torchmodules: torch keys a compiled graph
    on an op's name, not on its output shapes (pytorch/pytorch#160472), so a graph cached over an
    older build of an op whose outputs changed would be reused (CrossEntropy's saved log-sum-exp
    becoming two numbers a row failed test_compiled_loss_matches_eager that way)."""
    import glob
    import hashlib
    import tempfile
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torchmodules")
    h = hashlib.sha1()
    for f in sorted(glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "_C*.so"))):
        with open(f, "rb") as fh:
            h.update(fh.read())
    return os.path.join(tempfile.gettempdir(), f"torchinductor_torchmodules_{h.hexdigest()[:16]}")


if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _inductor_cache_dir()

# Fresh random inputs every run; the seed is printed so a failure can be replayed.
SEED = int(os.environ.get("TM_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"torchmodules tests: TM_SEED={SEED}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()) % 100003)


def pytest_collection_modifyitems(config, items):
    """TM_SHARD=i/n keeps every n-th test from the i-th, so the GPU script can run n pytest
    processes at once; the >2^31-element tests (GBs each) all stay in shard 0, one at a time."""
    shard = os.environ.get("TM_SHARD")
    if not shard:
        return
    i, n = map(int, shard.split("/"))
    big = [t for t in items if "test_large" in t.nodeid]
    rest = [t for t in items if "test_large" not in t.nodeid]
    keep = rest[i::n] + (big if i == 0 else [])
    kept = set(keep)
    drop = [t for t in items if t not in kept]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
