#!/usr/bin/env bash
# A hash of what the extension is built from (csrc/, kernels/, setup.py) under DIR (default: the
# repository): scripts/prebuild_gpu.sh records it beside its build, scripts/gpu_check.sh takes
# that build only where its own tree hashes the same.
# Usage: scripts/source_hash.sh [DIR]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
find csrc kernels setup.py -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
