#!/usr/bin/env bash
# Every GPU speed and memory check of tools/bench.py in one go, about 18 minutes on one H100 or H200:
#   bash tools/gpu_checks.sh [OUT_DIR]      (default runs/gpu; the report is OUT_DIR/benchmarks-gpu.md)
# Each check has its own time limit, so one that hangs or fails leaves the others' numbers in the report.
set -u
out=${1:-runs/gpu}
mkdir -p "$out"
report="$out/benchmarks-gpu.md"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
check() {
    local limit=$1
    shift
    echo "== tools/bench.py $* (limit ${limit}s)"
    timeout "$limit" "$python" tools/bench.py "$@" --out "$report" || echo "!! exit $?: tools/bench.py $*"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The checks the open targets hang on come first: a device call is cut off at 10 minutes, and these limits sum to
# more (the rest still adds rows to the report when time is left).
check 200 --sweep-projection --device cuda --precision bf16-mixed
check 120 --label-space --device cuda --precision bf16-mixed --classes 1000 5000 21000 --class-chunk 1000
check 240 --sweep-throughput --device cuda --sweep-runs 12 --sweep-epochs 10
check 270 --gpu-speed --device cuda
check 45 --caspl-memory --device cuda --activation-checkpointing
check 45 --caspl-memory --device cuda --precision bf16-mixed --activation-checkpointing
check 60 --promptkd-memory --device cuda --promptkd-batch 8 32
check 60 --promptkd-memory --device cuda --precision bf16-mixed --promptkd-batch 8 32
echo "== pytest tests/test_gpu.py"
# In one process (the GPU tests share one card), and without pytest-xdist, which the device machine may lack.
timeout 100 "$python" -m pytest -q -p no:cacheprovider -o addopts=-ra tests/test_gpu.py 2>&1 | tail -15
check 90 --shared-prefix --device cuda --precision bf16-mixed --classes 16 100 1000 --batch 32
check 45 --caspl-memory --device cuda
check 45 --caspl-memory --device cuda --precision bf16-mixed
check 130 --device cuda --precision bf16-mixed --classes 100 1000
check 100 --data-loading --device cuda
