#!/usr/bin/env bash
# Reproduce the paper's Table 1: the six models at the authors' schedules (20,000 iterations
# each) on one GPU, one after the other, then the report (docs/RESULTS.md with its figures).
#   scripts/reproduce.sh
#   scripts/reproduce.sh data.num_workers=8          # Hydra overrides for every run
#   EXPERIMENTS="stereo stereo_baseline" scripts/reproduce.sh
# Settings (environment): EXPERIMENTS, TRAINER (gpu; cpu to try it without one), OUT (the run
# folders), REPORT (the Markdown report), PYTHON. A failed run is reported and the others go on.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
EXPERIMENTS=${EXPERIMENTS:-moving_mnist moving_mnist_baseline highway highway_baseline stereo stereo_baseline}
TRAINER=${TRAINER:-gpu}
OUT=${OUT:-outputs/reproduce/$(date +%Y-%m-%d_%H-%M-%S)}
REPORT=${REPORT:-docs/RESULTS.md}

mkdir -p "$OUT"
timings="$OUT/timings.txt"
runs=()
failed=0
for experiment in $EXPERIMENTS; do
    echo "=== $experiment ($(date '+%F %T'))"
    start=$SECONDS
    if "$PYTHON" train.py "experiment=$experiment" "trainer=$TRAINER" \
        "hydra.run.dir=$OUT/$experiment" "$@"; then
        status=done
        runs+=("$OUT/$experiment")
    else
        status=FAILED
        failed=1
    fi
    elapsed=$((SECONDS - start))
    printf '%-24s %-6s %dh %02dm %02ds\n' "$experiment" "$status" $((elapsed / 3600)) \
        $((elapsed % 3600 / 60)) $((elapsed % 60)) | tee -a "$timings"
done

if [ ${#runs[@]} -gt 0 ]; then
    "$PYTHON" scripts/report.py "${runs[@]}" --out "$REPORT"
fi
echo "=== wall time per run (data preparation, training and test), also in $timings"
cat "$timings"
exit $failed
