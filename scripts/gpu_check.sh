#!/usr/bin/env bash
# All GPU work in one go (GPU time comes in short slots): build for the card; then at once the
# CUDA tests (TM_SHARDS pytest processes) and compute-sanitizer over every kernel; then, alone
# on the GPU so its times mean something, the main job (examples/train.py) and the quick
# benchmark. Usage: scripts/gpu_check.sh OUTDIR   (TM_COMMIT=<sha>; TM_STAGES picks stages,
# default "build tests sanitizer train bench"). OUTDIR gets at most 8 files: summary.md,
# log.txt (build, train, bench output), tests.log, sanitizer.log, bench.{md,json,png},
# digits_loss.png.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUM="$OUT/summary.md"
LOG="$OUT/log.txt"
TMP=$(mktemp -d)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the in-place build (no install there)
step() { echo "== $1 ($(date +%T))" | tee -a "$LOG"; }
{
  echo "# GPU check"
  echo "- commit: ${TM_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  echo "- torch: $($PY -c 'import torch;print(torch.__version__, "cuda", torch.version.cuda)')"
  echo "- date: $(date -u +%F)"
} > "$SUM"

# Does torch's own IndexError survive on this install? (One torch 2.11 install segfaulted on
# IndexErrors raised from C++; exit 139 here says it is torch's, not ours.)
$PY -c 'import torch
try:
    torch.rand(10)[10]
except IndexError:
    print("ok")' > /dev/null 2>&1
echo "- torch's own IndexError (torch.rand(10)[10]): exit $? (0: raised normally, 139: segfault)" >> "$SUM"

STAGES=" ${TM_STAGES:-build tests sanitizer train bench} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
T0=$SECONDS

if want build; then
step "1. build (sm_90)"
if ! TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY setup.py build_ext --inplace --build-temp build/gpu > "$TMP/build.log" 2>&1; then
  echo "- build: FAILED (see log.txt)" >> "$SUM"; cat "$TMP/build.log" >> "$LOG"; tail -30 "$TMP/build.log"; exit 1
fi
echo "- build: ok ($((SECONDS - T0)) s)" >> "$SUM"; tail -5 "$TMP/build.log" >> "$LOG"
fi

# 2 and 3 share the GPU: correctness only, nothing timed.
if want tests; then
  step "2. CUDA tests (${TM_SHARDS:-6} processes)"
  T1=$SECONDS
  N=${TM_SHARDS:-6}
  for ((i = 0; i < N; i++)); do
    TM_SHARD=$i/$N timeout ${TM_TEST_TIMEOUT:-300} $PY -m pytest tests -q -rfE -p no:cacheprovider \
      -k "${TM_K:-cuda or devices or deterministic or 2_31 or tf32}" > "$TMP/tests.$i.log" 2>&1 &
  done
fi
if want sanitizer; then
  step "3. compute-sanitizer"
  for tool in memcheck racecheck initcheck; do
    dts=float32,bfloat16,float64; [ $tool != memcheck ] && dts=float32
    TM_SAN_DTYPES=$dts timeout ${TM_SAN_TIMEOUT:-200} compute-sanitizer --tool $tool --print-limit 20 \
      $PY scripts/sanitize_ops.py > "$TMP/san.$tool" 2>&1
    echo "- sanitizer $tool (exit $?): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_ops:' "$TMP/san.$tool" | tr '\n' ' ')" >> "$SUM"
    { echo "==== $tool"; cat "$TMP/san.$tool"; } >> "$OUT/sanitizer.log"
  done
fi
if want tests; then
  wait
  for ((i = 0; i < N; i++)); do
    { echo "==== shard $i/$N"; cat "$TMP/tests.$i.log"; } >> "$OUT/tests.log"
    echo "- CUDA tests shard $i/$N: $(tail -1 "$TMP/tests.$i.log")" >> "$SUM"
    grep -E "^(FAILED|ERROR)" "$TMP/tests.$i.log" | head -20 | sed 's/^/  - /' >> "$SUM"
  done
  echo "- CUDA tests wall: $((SECONDS - T1)) s" >> "$SUM"
fi

if want train; then
  step "4. main job on cuda (examples/train.py)"
  timeout ${TM_TRAIN_TIMEOUT:-90} $PY examples/train.py --out "$OUT" > "$TMP/train.log" 2>&1
  echo "- train.py (exit $?): $(grep -E '^summary' "$TMP/train.log")" >> "$SUM"
  cat "$TMP/train.log" >> "$LOG"
fi

if want bench && [ -f benchmarks/bench.py ]; then
  step "5. quick benchmark"
  timeout ${TM_BENCH_TIMEOUT:-180} $PY benchmarks/bench.py --quick --out "$OUT" > "$TMP/bench.log" 2>&1
  echo "- benchmark (exit $?): see bench.md" >> "$SUM"
  tr '\r' '\n' < "$TMP/bench.log" | tail -200 >> "$LOG"
fi
step "done"
echo "- script wall: $((SECONDS - T0)) s" >> "$SUM"
cat "$SUM"
