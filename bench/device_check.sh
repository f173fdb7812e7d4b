#!/usr/bin/env bash
# The GPU checks of issue 22 in one command, for a lent device machine (one GPU, a few minutes):
#
#   bash bench/device_check.sh                       # in the repo root, with .carry/ carried; results in $OUT
#   DEVICE_CHECK_DRY=1 bash bench/device_check.sh    # the same stages on the CPU with x3d_tiny (CI runs it)
#
# The GPU image has python3, torch (CUDA), numpy and pyarrow, no Ray, decord, pytest or PyAV.
# .carry/ (../shared/device/make-carry.sh) brings a trimmed Ray and a few wheels; it is unpacked
# into /tmp/site. Stage 1 needs torch only, stage 2 the carried Ray:
#   setup      versions, nvidia-smi, the carry unpacked
#   sweep      model-only clips/s: X3D-S/M x fp32/bf16 x 2 batches x NCDHW/channels_last_3d, eager
#   compiled   one torch.compile cell (X3D-S bf16 channels_last_3d)
#   checks     CPU-vs-GPU probabilities (fp32 = TF32 off, tf32, bf16) and the runner's checks
#   job-fp32, job-bf16   `submit.py benchmark --synthetic` (X3D-S, 10 views, 1 actor)
#   share      the job's clips/s over the sweep's for the same model/precision/layout/batch,
#              and where the actor's time goes
# Each stage has its own timeout, all within 540 s; a failed stage is recorded and the next one
# runs; the exit status is 1 when any stage failed. $OUT gets at most 8 files:
#   summary.md (stages, tables, share)  log.txt (everything printed)  sweep.jsonl  checks.jsonl
#   job-fp32.json  job-bf16.json  nvidia-smi.txt
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)  # intermediate files: $OUT holds only the files listed above
DRY=${DEVICE_CHECK_DRY:-}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-540}
LOG="$OUT/log.txt"
: > "$LOG"; : > "$OUT/sweep.jsonl"; : > "$OUT/checks.jsonl"; : > "$WORK/stages"
FAILED=()

if [ -n "$DRY" ]; then  # tiny sizes on the CPU: every command line below runs, so none can rot
  DEVICE=cpu; SWEEP_MODELS=x3d_tiny; SWEEP_BATCHES=4; CELL_S=0.2; REPEATS=2; WARMUP=1
  CHECKS="--device cpu --models x3d_tiny --views 3 --cap-model none --no-compile"
  JOB="--model x3d_tiny --views 3 --num-cpus 2 --duration 1 --repeats 1 --warmup 0.5"
  JOB_LAYOUT=${DEVICE_CHECK_JOB_LAYOUT:-channels_last_3d}; JOB_BATCH=4; SHARE_MODEL=x3d_tiny
  T=(setup=30 sweep=60 compiled=10 checks=90 job-fp32=90 job-bf16=90 share=15)
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  DEVICE=cuda; SWEEP_MODELS=x3d_s,x3d_m; SWEEP_BATCHES=64,256; CELL_S=1.0; REPEATS=6; WARMUP=2
  # no compiled check here: the compiled sweep cell shows whether compile works (a second compile
  # of X3D-S would not fit this stage's time)
  CHECKS="--device cuda --models x3d_s,x3d_m --views 3 --cap-model x3d_m --uncapped --no-compile"
  # X3D-S at 10 views: calls of 26 videos, 260 clips, one forward each (the sweep's batch 256)
  JOB="--model x3d_s --views 10 --duration 8 --repeats 2 --warmup 5"
  JOB_LAYOUT=${DEVICE_CHECK_JOB_LAYOUT:-ncdhw}; JOB_BATCH=256; SHARE_MODEL=x3d_s
  T=(setup=40 sweep=140 compiled=70 checks=90 job-fp32=80 job-bf16=80 share=10)
  export PYTHONPATH=/tmp/site:$PWD  # Ray and the carried wheels, unpacked by the setup stage
fi
# DEVICE_CHECK_ACTORS_PER_GPU=2: the job stages run 2 actors sharing the GPU (the sweep is per model, unchanged)
JOB_ACTORS=${DEVICE_CHECK_ACTORS_PER_GPU:-1}
export PYTHONUNBUFFERED=1 JOB_ACTORS OUT WORK DRY DEVICE SWEEP_MODELS SWEEP_BATCHES CELL_S REPEATS WARMUP CHECKS JOB JOB_LAYOUT
declare -A LIMIT
for kv in "${T[@]}"; do LIMIT[${kv%%=*}]=${kv#*=}; done

write_summary() {  # after every stage, so a run cut short still leaves its summary
  {
    echo "# device check$([ -n "$DRY" ] && echo " (dry run on the CPU)"): $(date -u +%FT%TZ), ${SECONDS}s so far"
    echo
    echo "| stage | result | s |"
    echo "|---|---|---|"
    cat "$WORK/stages"
    for part in sweep checks share; do
      if [ -s "$WORK/$part.md" ]; then echo; cat "$WORK/$part.md"; fi
    done
  } > "$OUT/summary.md"
}

# stage NAME CMD...: runs CMD (a function below, in a child bash with -euo pipefail) under its
# timeout, cut to what is left of the budget; output to the log; records its status and time;
# never stops the script.
stage() {
  local name=$1; shift
  local left=$((BUDGET_S - SECONDS - 5)) limit=${LIMIT[$name]}
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 0 ]; then
    echo "| $name | skipped: budget spent | 0 |" >> "$WORK/stages"; FAILED+=("$name"); write_summary; return 0
  fi
  echo "=== $name (timeout ${limit}s): $*" >> "$LOG"
  local start=$SECONDS rc=0
  timeout -k 5 "$limit" bash -euo pipefail -c '"$@"' _ "$@" >> "$LOG" 2>&1 || rc=$?
  local took=$((SECONDS - start)) result=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then result="TIMED OUT (${limit}s)"; elif [ "$rc" -ne 0 ]; then result="FAILED (exit $rc)"; fi
  [ "$result" = ok ] || FAILED+=("$name")
  echo "| $name | $result | $took |" >> "$WORK/stages"
  echo "=== $name: $result in ${took}s" >> "$LOG"
  if [ "$result" != ok ] && [ -z "$DRY" ] && [[ $name == job-* ]]; then
    # a job cut short may leave its Ray (and its actor's GPU memory) behind; this machine is ours alone
    timeout 15 python3 -m ray.scripts.scripts stop --force >> "$LOG" 2>&1 || true
  fi
  write_summary
}

setup() {
  python3 -c "import sys, torch, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'numpy', numpy.__version__)"
  if [ -z "$DRY" ]; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"; fi
  if [ -d .carry ] && [ -z "$DRY" ]; then
    mkdir -p /tmp/site
    tar -C /tmp/site -xJf .carry/ray-min.tar.xz
    python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site .carry/wheels/*.whl
  fi
  python3 -c "import ray; print('ray', ray.__version__)"
}

sweep() {
  python3 bench/gpu_sweep.py --device "$DEVICE" --models "$SWEEP_MODELS" --precisions fp32,bf16 \
    --layouts ncdhw,channels_last_3d --compile off --batches "$SWEEP_BATCHES" \
    --warmup "$WARMUP" --repeats "$REPEATS" --cell-s "$CELL_S" --json "$OUT/sweep.jsonl" | tee "$WORK/sweep.md"
}

compiled() {
  if [ -n "$DRY" ]; then echo "compiled cell skipped in the dry run (inductor on a CPU takes minutes)"; return 0; fi
  python3 bench/gpu_sweep.py --device cuda --models x3d_s --precisions bf16 --layouts channels_last_3d --compile on \
    --compile-batches 256 --warmup 3 --repeats "$REPEATS" --cell-s "$CELL_S" --json "$OUT/sweep.jsonl" > "$WORK/compiled.md"
  local rc=$?
  cat "$WORK/compiled.md"; tail -1 "$WORK/compiled.md" >> "$WORK/sweep.md"
  return $rc
}

checks() {
  # shellcheck disable=SC2086  # CHECKS is a list of flags
  python3 bench/cuda_checks.py $CHECKS --json "$OUT/checks.jsonl" | tee "$WORK/checks.md"
}

job() {  # job PRECISION: the report is kept even when the command fails after writing it
  local rc=0
  # shellcheck disable=SC2086  # JOB is a list of flags
  python3 submit.py benchmark --synthetic $JOB --num-actors "$JOB_ACTORS" --actors-per-gpu "$JOB_ACTORS" --precision "$1" --memory-format "$JOB_LAYOUT" \
    --output "$WORK/job-$1" || rc=$?
  if [ -f "$WORK/job-$1/benchmark.json" ]; then cp "$WORK/job-$1/benchmark.json" "$OUT/job-$1.json"; fi
  return $rc
}

share() {
  python3 bench/device_share.py --sweep "$OUT/sweep.jsonl" --model "$1" --layout "$JOB_LAYOUT" --batch "$2" \
    --jobs "$OUT/job-fp32.json" "$OUT/job-bf16.json" --out "$WORK/share.md"
}
export -f setup sweep compiled checks job share

stage setup setup
stage sweep sweep
stage compiled compiled
stage checks checks
stage job-fp32 job fp32
stage job-bf16 job bf16
stage share share "$SHARE_MODEL" "$JOB_BATCH"

rm -rf "$WORK"
if [ "$(stat -c %s "$LOG")" -gt 4000000 ]; then  # Ray can be chatty: keep the head and the tail
  { head -c 1500000 "$LOG"; echo; echo "[... cut ...]"; tail -c 2000000 "$LOG"; } > "$LOG.cut" && mv "$LOG.cut" "$LOG"
fi
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "device check: ${#FAILED[@]} stage(s) failed: ${FAILED[*]} (see $OUT/summary.md and $LOG)" | tee -a "$OUT/summary.md" >&2
  exit 1
fi
echo "device check: all stages passed in ${SECONDS}s ($OUT/summary.md)" | tee -a "$OUT/summary.md"
