#!/usr/bin/env bash
# All GPU work in one go (GPU time comes in short slots): build for the card; the Hopper
# GEMM's tests alone (a failure shows first; later stages then run with it off); then at once
# the CUDA tests (TM_SHARDS pytest processes) and compute-sanitizer over every kernel; then, alone
# on the GPU so its times mean something, the main job (examples/train.py), the quick
# benchmark, the Linear A/B (sm_90 GEMM, mma.sync, torch) and the host overhead of small ops
# (benchmarks/host_overhead.py) appended to summary.md; last, Nsight Compute's reading of the
# targets' kernels (benchmarks/ncu_targets.py: throughput, occupancy, registers per kernel).
# The build is skipped where a build of this tree made on the development machine is carried
# and loads (scripts/prebuild_gpu.sh: run(carry=["build/gpu-prebuilt"], ...)).
# Usage: scripts/gpu_check.sh OUTDIR   (TM_COMMIT=<sha>; TM_STAGES picks stages,
# default "build sm90 tests sanitizer train bench ncu"). OUTDIR gets at most 8 files: summary.md,
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

STAGES=" ${TM_STAGES:-build sm90 tests sanitizer train bench ncu} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
T0=$SECONDS

# A build made on the development machine (scripts/prebuild_gpu.sh, carried as build/gpu-prebuilt)
# is taken where it was built from this tree and loads here; else the extension is built here.
PRE=build/gpu-prebuilt
prebuilt() {
  [ -f "$PRE/sources.sha" ] && ls "$PRE"/_C.cpython-*.so.gz > /dev/null 2>&1 || { echo "none carried"; return 1; }
  [ "$(cat "$PRE/sources.sha")" = "$(scripts/source_hash.sh)" ] || { echo "built from other sources"; return 1; }
  local gz so
  gz=$(ls "$PRE"/_C.cpython-*.so.gz | head -1)
  so=torchmodules/$(basename "$gz" .gz)
  gunzip -c "$gz" > "$so"
  if ! $PY -c 'import torchmodules' > "$TMP/prebuilt.log" 2>&1; then
    rm -f "$so"; echo "does not load here: $(tail -1 "$TMP/prebuilt.log")"; return 1
  fi
  echo "loaded ($(basename "$so"), commit $(cat "$PRE/commit" 2>/dev/null))"
}
if want build && WHY=$(prebuilt); then
  step "1. build: the prebuilt extension"
  echo "- build: prebuilt on the development machine, $WHY" >> "$SUM"
elif want build; then
step "1. build (sm_90; prebuilt: ${WHY:-not asked})"
if ! TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY setup.py build_ext --inplace --build-temp build/gpu > "$TMP/build.log" 2>&1; then
  echo "- build: FAILED (see log.txt)" >> "$SUM"; cat "$TMP/build.log" >> "$LOG"; tail -30 "$TMP/build.log"; exit 1
fi
echo "- build: ok ($((SECONDS - T0)) s; prebuilt: ${WHY:-}); $(grep -m1 '^torchmodules: TORCH_CUDA_ARCH_LIST' "$TMP/build.log")" >> "$SUM"
tail -5 "$TMP/build.log" >> "$LOG"
fi

# 1b. The Hopper GEMM (kernels/gemm_sm90.cu) first and alone, so that a failure shows at once;
# if it fails, the later stages run with TORCHMODULES_SM90_GEMM=0 (the mma.sync kernel), so a
# wrong or hanging sm_90 path cannot take the rest of the check down with it.
if want sm90; then
  step "1b. sm_90 GEMM tests (tests/test_linear_sm90.py)"
  T1=$SECONDS
  # (a wait of the kernel's that never ends traps after ~9 s, see mbar_wait; faulthandler names a
  # test that still hangs)
  timeout ${TM_SM90_TIMEOUT:-120} $PY -m pytest tests/test_linear_sm90.py -q -rfE -p no:cacheprovider --maxfail=8 \
    -o faulthandler_timeout=60 \
    > "$TMP/sm90.log" 2>&1
  rc=$?
  echo "- sm_90 GEMM tests (exit $rc, $((SECONDS - T1)) s): $(tail -1 "$TMP/sm90.log")" >> "$SUM"
  grep -E "^(FAILED|ERROR)|Error|error:" "$TMP/sm90.log" | head -8 | sed 's/^/  - /' >> "$SUM"
  { echo "==== sm_90 GEMM tests"; cat "$TMP/sm90.log"; } >> "$LOG"
  if [ $rc -ne 0 ]; then
    export TORCHMODULES_SM90_GEMM=0
    echo "- **sm_90 GEMM failed: the later stages run with TORCHMODULES_SM90_GEMM=0**" >> "$SUM"
  fi
fi

# 2 and 3 share the GPU: correctness only, nothing timed.
if want tests; then
  step "2. CUDA tests (${TM_SHARDS:-6} processes)"
  T1=$SECONDS
  N=${TM_SHARDS:-6}
  for ((i = 0; i < N; i++)); do
    TM_SHARD=$i/$N timeout ${TM_TEST_TIMEOUT:-300} $PY -m pytest tests -q -rfE -p no:cacheprovider \
      -k "${TM_K:-cuda or devices or deterministic or 2_31 or tf32 or nccl}" > "$TMP/tests.$i.log" 2>&1 &
  done
fi
if want sanitizer; then
  step "3. compute-sanitizer"
  for tool in memcheck racecheck initcheck; do
    dts=float32,bfloat16,float64; [ $tool != memcheck ] && dts=float32
    # no caching allocator: each tensor its own cudaMalloc, so memcheck sees an access past a tensor's
    # end (inside a cached segment it lands in another tensor's block, unseen)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 TM_SAN_DTYPES=$dts timeout ${TM_SAN_TIMEOUT:-200} \
      compute-sanitizer --tool $tool --print-limit 20 \
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
  step "6. Linear A/B: sm_90 GEMM vs mma.sync vs torch (benchmarks/linear_ab.py --quick)"
  if [ "${TORCHMODULES_SM90_GEMM:-}" = 0 ]; then
    echo "- Linear A/B: skipped (the sm_90 GEMM is off)" >> "$SUM"
  else
    timeout ${TM_AB_TIMEOUT:-150} $PY benchmarks/linear_ab.py --quick --md "$TMP/linear_ab.md" > "$TMP/ab.log" 2>&1
    echo "- Linear A/B (exit $?):" >> "$SUM"
    { echo; cat "$TMP/linear_ab.md" 2>/dev/null; echo; } >> "$SUM"
    cat "$TMP/ab.log" >> "$LOG"
  fi
  step "7. host overhead of small ops (benchmarks/host_overhead.py)"
  timeout ${TM_HOST_TIMEOUT:-60} $PY benchmarks/host_overhead.py --device cuda > "$TMP/host.log" 2>&1
  echo "- host overhead (exit $?):" >> "$SUM"
  grep "per call" "$TMP/host.log" | sed 's/^/  - /' >> "$SUM"
  cat "$TMP/host.log" >> "$LOG"
fi
if want ncu; then
  step "8. Nsight Compute over the targets' kernels (benchmarks/ncu_targets.py)"
  timeout ${TM_NCU_TIMEOUT:-150} $PY benchmarks/ncu_targets.py --raw "$TMP/ncu.csv" > "$TMP/ncu.md" 2>&1
  echo "- ncu (exit $?): per kernel of each target call" >> "$SUM"
  { echo; cat "$TMP/ncu.md"; echo; } >> "$SUM"
  { echo "==== ncu details (csv)"; cat "$TMP/ncu.csv" 2>/dev/null; } >> "$LOG"
fi
step "done"
echo "- script wall: $((SECONDS - T0)) s" >> "$SUM"
cat "$SUM"
