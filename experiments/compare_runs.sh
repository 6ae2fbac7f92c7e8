#!/usr/bin/env bash
# Tabulate finished training runs side by side, ranked by external ROC AUC: the shortcut probes
# (vignette, skin colour) on the 10k test split for each run that has none yet, then
# experiments/compare_runs.py, which reads every run's eval_results.json and robustness.json.
#
#   bash experiments/compare_runs.sh runs/cpu ../shared/data     # writes runs/cpu/summary.{json,txt}
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: compare_runs.sh RUNS_FOLDER DATA_FOLDER}
DATA=${2:?usage: compare_runs.sh RUNS_FOLDER DATA_FOLDER}
for run in "$RUNS"/*/; do
    run=${run%/}
    [[ -f "$run/eval_results.json" && ! -f "$run/robustness.json" ]] || continue
    echo "[$(date +%T)] shortcut probes for $run"
    python evaluate_model.py --model "$run" --data-dir "$DATA/melanoma_cancer_dataset" --split test \
        --robustness --shortcut-probes-only --out "$run/robustness.json" > "$run/probes.log" 2>&1 \
        || echo "probes failed for $run: see $run/probes.log"
done
python experiments/compare_runs.py "$RUNS" --out "$RUNS/summary.json" | tee "$RUNS/summary.txt"
