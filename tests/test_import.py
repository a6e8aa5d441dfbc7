"""Importing torchmodules without its compiled kernels (not built, or built for another torch)
fails with a message that says what to do, not with a bare 'No module named'."""
import os
import subprocess
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# A finder that makes `torchmodules._C` unloadable, as a missing or mismatched build would.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torchmodules._C":
            raise ImportError("undefined symbol: _ZN3c104impl3cow11cow_deleterEPv (built for another torch)")
sys.meta_path.insert(0, Block())
import torchmodules
"""


def test_import_without_kernels_says_what_to_do():
    r = subprocess.run([sys.executable, "-c", BLOCK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("ImportError: torchmodules: cannot load the compiled kernels"), err
    for words in ("built for another torch", "pip install --no-build-isolation -e .", torch.__version__):
        assert words in err, err


def test_every_op_has_a_kernel_for_each_built_device():
    """Each op file registers its glue once for the CPU and, in a build with CUDA, for CUDA
    (TM_REGISTER_GLUE): an op left out of either would fail only on that device."""
    import torchmodules._C as C
    names = sorted({s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("torchmodules::")})
    assert len(names) >= 30, names
    for key, want in (("CPU", True), ("CUDA", C.built_with_cuda)):
        missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, key)]
        assert missing == ([] if want else names), (key, missing)
