#!/usr/bin/env bash
# Issue 15's GPU checks in one command, for a lent device machine (CUDA torch there, no registry):
#   bash bench/device_check.sh        # results under $OUT (the device tool's folder) or ./device-out
# 1. model-only clips/s (bench/gpu_sweep.py: X3D-S/M, fp32/bf16, 3 batches, both layouts, eager and
#    compiled): needs torch only. 2. if ray/decord/boto3/pyarrow are importable (carry wheels built
#    here with `pip download --python-version 3.12 --only-binary=:all: -d wheels ray decord boto3
#    pyarrow av`; ray's wheel may need a call of its own), the CUDA runner tests and the end-to-end
#    `submit.py benchmark --synthetic` at fp32 and bf16, whose clips/s over the sweep's is the
#    job's share of the GPU's rate. Copy the tables into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
if [ -d wheels ]; then python -m pip install -q --no-index --find-links wheels ray decord boto3 pyarrow av 2>&1 | tail -2; fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 420 python bench/gpu_sweep.py --cell-s 2 --repeats 10 | tee "$OUT/gpu_sweep.md"
if python -c "import ray, decord, boto3, pyarrow" 2>/dev/null; then
  timeout 120 python -m pytest -q -p no:cacheprovider tests/worker/test_model_runner_cuda.py 2>&1 | tail -3 | tee "$OUT/cuda_tests.txt"
  for precision in fp32 bf16; do
    timeout 150 python submit.py benchmark --synthetic --model x3d_s --views 10 --num-actors 1 --precision "$precision" \
      --memory-format channels_last_3d --duration 10 --repeats 3 --warmup 5 --output "$OUT/benchmark-$precision" 2>&1 | tail -25
  done | tee "$OUT/benchmark.txt"
else
  echo "ray/decord/boto3/pyarrow missing: model-only sweep done, end-to-end benchmark skipped" | tee "$OUT/benchmark.txt"
fi
