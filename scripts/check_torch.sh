#!/usr/bin/env bash
# Builds and tests the working tree against another torch than the .venv's (default 2.11.0, the
# GPU machine's torch: ../shared/GPU.md), so that a GPU check does not find out there. torch 2.11
# builds extensions as C++17 where 2.14 needs C++20: std::atomic_ref, requires-expressions and
# std::remove_cvref_t compiled here and failed there.
# Usage: scripts/check_torch.sh [VERSION] [PYTEST ARGS...]   (default: all tests, -x). Exit 3: that torch
# cannot be installed here.
# The venv is .venv-torch<VERSION>, the copy of the tree and its build build/torch-<VERSION>/ (VENV and
# SRC override them; PYTHON is the interpreter the venv is made from; TM_BUILD_ONLY=1 stops after
# the build: scripts/prebuild_gpu.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-2.11.0}
shift || true
VENV=${VENV:-$PWD/.venv-torch$VERSION}
SRC=${SRC:-$PWD/build/torch-$VERSION}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/pip" install -q "torch==$VERSION" ninja pybind11 pytest hypothesis numpy > "$VENV/pip.log" 2>&1 ||
   ! "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$VERSION'), torch.__version__"; then
  grep -v "is ignored" "$VENV/pip.log" | tail -5 || true
  echo "check_torch: torch $VERSION cannot be installed here"
  exit 3
fi
# The tracked files as they are in the working tree (edits included; mtimes kept, so ninja rebuilds
# only what changed), beside the last build's objects (build/).
mkdir -p "$SRC"
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z | xargs -0 cp -p --parents -t "$SRC"
cd "$SRC"
mkdir -p build
echo "+ build against torch $VERSION in $SRC"
if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$VENV/bin/python" setup.py -q build_ext --inplace --build-temp build/temp > build/log.txt 2>&1; then
  grep -E -A3 "error|Error" build/log.txt | head -60 || true
  echo "check_torch: the build against torch $VERSION failed (log: $SRC/build/log.txt)"
  exit 1
fi
[ "${TM_BUILD_ONLY:-0}" = 1 ] && exit 0
echo "+ tests against torch $VERSION"
PYTHONPATH=$SRC "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider -rfE "${@:--x}"
