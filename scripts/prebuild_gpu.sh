#!/usr/bin/env bash
# Builds the extension here for the GPU machine (../shared/GPU.md: Python 3.12, torch 2.11.0+cu130,
# sm_90a), so that scripts/gpu_check.sh can load it there instead of building (1.5-2 minutes of the
# session's 15 of device time). Writes build/gpu-prebuilt/: the .so without debug info, gzipped,
# and the source hash it was built from (scripts/source_hash.sh). gpu_check.sh takes it only
# where its tree hashes the same and `import torchmodules` loads it (the same torch, a glibc new
# enough); else it builds as before. Carry it: run(carry=["build/gpu-prebuilt"], ...).
# Usage: scripts/prebuild_gpu.sh   (PY312=<a python3.12>; ~10 minutes on 2 cores, incremental after)
set -euo pipefail
cd "$(dirname "$0")/.."
# (a python3.12 on the PATH may be a pyenv shim that refuses to run: the first candidate that runs)
if [ -z "${PY312:-}" ]; then
  for c in $(command -v python3.12 2>/dev/null) $(ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null); do
    if "$c" -c 1 > /dev/null 2>&1; then PY312=$c; break; fi
  done
fi
[ -x "${PY312:-}" ] || { echo "prebuild_gpu: no python3.12 here (PY312=...)"; exit 3; }
SRC=$PWD/build/torch-2.11.0-py312
VENV=$PWD/.venv-torch2.11.0-py312 SRC=$SRC PYTHON=$PY312 TM_BUILD_ONLY=1 TORCH_CUDA_ARCH_LIST=9.0 \
  scripts/check_torch.sh 2.11.0
OUT=build/gpu-prebuilt
rm -rf "$OUT" && mkdir -p "$OUT"
so=$(ls "$SRC"/torchmodules/_C.cpython-312-*.so)
strip --strip-debug -o "$OUT/$(basename "$so")" "$so"
gzip -9 "$OUT/$(basename "$so")"
scripts/source_hash.sh "$SRC" > "$OUT/sources.sha"
git rev-parse --short HEAD > "$OUT/commit" 2>/dev/null || true
ls -la "$OUT"
