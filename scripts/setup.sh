#!/usr/bin/env bash
# Sets up a checkout: .venv with torch 2.14.1 and the build tools, then builds
# torchmodules._C in place (incremental: a second run rebuilds only what changed).
# The CUDA kernels are compiled too when nvcc is on the PATH (no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q torch==2.14.1 ninja pybind11 pytest hypothesis numpy scikit-learn matplotlib torchvision==0.29.1
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python setup.py -q build_ext --inplace --build-temp build/temp
# Make the in-place package importable from anywhere in the venv (what `pip install -e` does).
echo "$PWD" > "$(.venv/bin/python -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')/torchmodules-dev.pth"
.venv/bin/python -c 'import torchmodules, torch; print("torchmodules built:", torchmodules.__file__, "| torch", torch.__version__)'
