import os
import random
import zlib

# Outputs are filled with NaN before each kernel runs, so an element a kernel forgot shows.
os.environ.setdefault("TORCHMODULES_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
