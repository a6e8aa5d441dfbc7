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
