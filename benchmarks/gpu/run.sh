#!/usr/bin/env bash
# The GPU run: environment, bf16 checks, retrieval time, throughput per method (seed-style path
# against vsbench's) and a reduced MotionShapes suite, in one command that keeps to a time budget
# (BUDGET_S seconds, default 450) and writes every figure under OUT (default results/gpu; with
# --tiny runs/gpu-tiny, so a CPU dry run never lands among the published results).
#
#   bash benchmarks/gpu/run.sh                 # on a machine with one GPU (H100/H200)
#   bash benchmarks/gpu/run.sh --tiny          # the same stages on the CPU at tiny sizes
#
# Packages the machine lacks can travel as wheels in .whl/ (benchmarks/gpu/wheels.sh makes them);
# they are installed into /tmp/site, ahead of the machine's own. VSBENCH_GIT_COMMIT names the
# commit when the checkout has no .git. See benchmarks/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
default_out=results/gpu
for arg in "$@"; do [ "$arg" = --tiny ] && default_out=runs/gpu-tiny; done
out="${OUT:-$default_out}"
budget="${BUDGET_S:-450}"
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export VSBENCH_GIT_COMMIT="${VSBENCH_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
df -h /dev/shm /tmp 2>/dev/null || true  # the loader workers hand batches over in /dev/shm
timeout $((budget + 60)) python3 -m benchmarks.gpu --out "$out" --budget-s "$budget" "$@" 2>&1 | tee "$out/run.log"
