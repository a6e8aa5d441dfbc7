#!/usr/bin/env bash
# All GPU work in one go (GPU time comes in short slots): build for the card, CUDA tests,
# compute-sanitizer over every kernel, the quick benchmark if there is one; logs and a
# summary go to the output folder.  Usage: scripts/gpu_check.sh OUTDIR   (TM_COMMIT=<sha>)
# TM_STAGES picks stages (default "build tests sanitizer bench"): with ~1100 CUDA tests the
# whole script runs past one 600 s device call, so run "build tests sanitizer" in one call and
# "build bench" in the next (the build is incremental: seconds when nothing changed).
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUM="$OUT/summary.md"
cd "$(dirname "$0")/.."
step() { echo "== $1 ($(date +%T))"; }   # the folder keeps at most 8 files: no step log
{
  echo "# GPU check"
  echo "- commit: ${TM_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  echo "- torch: $($PY -c 'import torch;print(torch.__version__, "cuda", torch.version.cuda)')"
  echo "- date: $(date -u +%F)"
} > "$SUM"

STAGES=" ${TM_STAGES:-build tests sanitizer bench} "
want() { [[ "$STAGES" == *" $1 "* ]]; }

step "1. build (sm_90)"
if ! TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY setup.py build_ext --inplace --build-temp build/gpu > "$OUT/build.log" 2>&1; then
  echo "- build: FAILED (see build.log)" >> "$SUM"; tail -30 "$OUT/build.log"; exit 1
fi
echo "- build: ok" >> "$SUM"

if want tests; then
step "2. CUDA tests"
timeout ${TM_TEST_TIMEOUT:-300} $PY -m pytest tests -q -rfE -p no:cacheprovider \
  -k "cuda or devices or deterministic or 2_31 or tf32" > "$OUT/tests.log" 2>&1
echo "- CUDA tests (exit $?): $(tail -1 "$OUT/tests.log")" >> "$SUM"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40 | sed 's/^/  - /' >> "$SUM"
fi

if want sanitizer; then
step "3. compute-sanitizer"
for tool in memcheck racecheck; do
  dts=float32,bfloat16,float64; [ $tool = racecheck ] && dts=float32
  TM_SAN_DTYPES=$dts timeout ${TM_SAN_TIMEOUT:-150} compute-sanitizer --tool $tool --print-limit 20 \
    $PY scripts/sanitize_ops.py > "$OUT/sanitizer.tmp" 2>&1
  echo "- sanitizer $tool (exit $?): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_ops:' "$OUT/sanitizer.tmp" | tr '\n' ' ')" >> "$SUM"
  { echo "==== $tool"; cat "$OUT/sanitizer.tmp"; } >> "$OUT/sanitizer.log"; rm -f "$OUT/sanitizer.tmp"
done
fi

if want bench && [ -f benchmarks/bench.py ] && [ "${TM_BENCH:-1}" = 1 ]; then
  step "4. quick benchmark"
  timeout ${TM_BENCH_TIMEOUT:-180} $PY benchmarks/bench.py --quick --out "$OUT" > "$OUT/bench.log" 2>&1
  echo "- benchmark (exit $?): see bench.md" >> "$SUM"
fi
step "done"
cat "$SUM"
