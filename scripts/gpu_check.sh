#!/usr/bin/env bash
# The checks only a CUDA GPU can do, in one go; docs/PERFORMANCE.md records their output.
#
#   scripts/gpu_check.sh [LOG_DIR]        (default outputs/gpu_check; PYTHON=python3 to choose)
#
# 1. tests/test_cuda.py: Triton and shift kernels against the unfold reference, the model's
#    training step, smoke runs of every experiment on the GPU;
# 2. the filtering benchmark on CUDA (reference, shift, Triton);
# 3. full Moving MNIST training steps at the paper's batch size, several settings, and the step
#    captured in a CUDA graph (its own step, so that a failed capture loses no other row);
# 4. a short real Moving MNIST run through train.py (2,000 steps), for end-to-end iterations per
#    second with the data module and logging.
# Each step's output goes to LOG_DIR; a failing step is reported and the others still run.
set -uo pipefail
log=${1:-outputs/gpu_check}
mkdir -p "$log"
failed=()
step() {  # step NAME COMMAND...: run it, tee its output to LOG_DIR/NAME, note a failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$log/$name" || failed+=("$name")
}

export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python}
step gpu.txt nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step pytest.txt "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step filtering.md "$PYTHON" scripts/benchmark_filtering.py --device cuda --min-time 1
step training.md "$PYTHON" scripts/benchmark_training.py experiment=moving_mnist --device cuda \
    --steps 20 --variants="-channels_last,precision=bf16-mixed,precision=bf16-mixed -channels_last,impl=reference,+compile"
step training_graph.md "$PYTHON" scripts/benchmark_training.py experiment=moving_mnist \
    --device cuda --steps 20 --variants=+cuda_graph
step train_run.txt "$PYTHON" train.py experiment=moving_mnist trainer=gpu trainer.max_steps=2000 \
    data.test_size=1000 trainer.max_time=00:00:04:00
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed; logs in $log"
