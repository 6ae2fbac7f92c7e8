#!/usr/bin/env bash
# The recipe comparison for the vignette-shortcut issue, as run once on a lent
# GPU machine (16 cores, one H100) within a 10-minute command. Every run is a
# plain train_vit.py / pretrain_mae.py command; this script only schedules them
# side by side, time-boxes them, scores a quick vignette probe and packs the
# results. The data are the project's folders shrunk for the upload:
#
#   for d in melanoma_cancer_dataset isic2017 derm7pt; do
#       python -m data_prep.resize ../shared/data/$d gpu_data/$d --size 128 --quality 80 --format webp
#   done
#
# Usage: DATA=gpu_data OUT=/tmp/out bash experiments/gpu_recipes.sh
#
# Its one real run (a lent H100, 16 cores) overran the 590 s command limit before packing, and a
# killed command brings nothing back: keep DEADLINE_S well inside the limit (the summary and the
# packing take a minute after it), and print progress line by line (grep --line-buffered), since
# the command's output tail is all that survives a kill.
# A tiny rehearsal on a CPU: SMOKE=1 DATA=... OUT=... bash experiments/gpu_recipes.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-gpu_data}
OUT=${OUT:-/tmp/gpu_out}
RUNS=${RUNS:-runs/gpu}
EPOCHS=${EPOCHS:-20}
MAE_EPOCHS=${MAE_EPOCHS:-20}
PHASE1_MIN=${PHASE1_MIN:-2.5}
PHASE2_MIN=${PHASE2_MIN:-2.0}
MAE_MIN=${MAE_MIN:-1.75}
DEADLINE_S=${DEADLINE_S:-400}
WORKERS=${WORKERS:-3}
EXTRA=()
if [[ -n "${SMOKE:-}" ]]; then
    EXTRA=(--max_steps 2 --per_device_train_batch_size 8 --per_device_eval_batch_size 8)
    MAE_EXTRA=(--max-steps 2 --batch-size 8)
else
    EXTRA=(--num_train_epochs "$EPOCHS" --per_device_train_batch_size 128 --learning_rate 1e-3 --per_device_eval_batch_size 256)
    MAE_EXTRA=(--epochs "$MAE_EPOCHS" --batch-size 256)
fi
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

# The audits were made where the data were shrunk; only the folder prefix differs here.
for name in main joint; do
    sed "s#\"[^\"]*/$DATA/#\"$PWD/$DATA/#g" "$DATA/audit_$name.json" > "$RUNS/audit_$name.json"
done

COMMON=(--data-dir "$DATA/melanoma_cancer_dataset" --external-dir "$DATA/derm7pt" --drop-duplicates
        --balance class_weights --early-stopping-patience 6
        --augment-brightness 0.3 --augment-contrast 0.2 --augment-saturation 0.2 --augment-white-balance 0.12
        --dataloader_num_workers "$WORKERS" "${EXTRA[@]}")
SCRATCH=(--scratch-config tiny --image-size 128)
JOINT=(--extra-train-dir "$DATA/isic2017" --audit-file "$RUNS/audit_joint.json")
MAIN=(--audit-file "$RUNS/audit_main.json")

train() {  # name, minutes, args...
    local name=$1 minutes=$2; shift 2
    echo "[$(elapsed)s] start $name"
    python train_vit.py --output-dir "$RUNS/$name" --max-train-minutes "$minutes" "$@" > "$RUNS/$name.log" 2>&1
    echo "[$(elapsed)s] end $name (exit $?)"
    # One line of figures per finished run, so the output tail holds them even if the packing never happens.
    python -c "import sys; from melanoma_screen.results import load_eval_results; r=load_eval_results(sys.argv[1]); e=next(iter(r['external'].values()),None); print('RESULT', sys.argv[2], 'epochs', r['epochs_trained'], 'val', round(r['checkpoint_selection']['best_checkpoint']['validation_roc_auc'],3), 'test', round(r['test']['at_0_5']['roc_auc'],3), 'ext', e and round(e['at_0_5']['roc_auc'],3), 'ext spec@scr', e and round(e['at_screening_threshold']['specificity'],3))" "$RUNS/$name/eval_results.json" "$name" 2>/dev/null
}

# A watchdog, so that whatever finished is packed before the command's limit.
( sleep "$DEADLINE_S"; echo "[deadline] stopping what still runs"; pkill -f train_vit.py; pkill -f pretrain_mae.py ) &
WATCHDOG=$!

# Phase 1: MAE pretraining beside three fine-tunes that each add one lever.
( echo "[$(elapsed)s] start mae"
  python pretrain_mae.py --data-dir "$DATA/melanoma_cancer_dataset" "${JOINT[@]}" --image-size 128 --num-workers 5 \
      --max-train-minutes "$MAE_MIN" --save-steps 100000 --output-dir "$RUNS/mae" "${MAE_EXTRA[@]}" > "$RUNS/mae.log" 2>&1
  echo "[$(elapsed)s] end mae (exit $?)"
  train vig-isic-scale-mae "$PHASE2_MIN" "${COMMON[@]}" "${JOINT[@]}" --augment-vignette 0.5 --crop-scale-min 0.25 \
      --init-from "$RUNS/mae/encoder" ) &
PIDS=($!)
( train vig "$PHASE1_MIN" "${COMMON[@]}" "${SCRATCH[@]}" "${MAIN[@]}" --augment-vignette 0.5
  train fov-isic-scale "$PHASE2_MIN" "${COMMON[@]}" "${SCRATCH[@]}" "${JOINT[@]}" --field-of-view-mask 0.5 --crop-scale-min 0.25 ) &
PIDS+=($!)
( train vig-isic "$PHASE1_MIN" "${COMMON[@]}" "${SCRATCH[@]}" "${JOINT[@]}" --augment-vignette 0.5
  train vig-isic-scale-sog "$PHASE2_MIN" "${COMMON[@]}" "${SCRATCH[@]}" "${JOINT[@]}" --augment-vignette 0.5 --crop-scale-min 0.25 \
      --color-constancy shades_of_gray ) &
PIDS+=($!)
# The same recipe with another seed: how far two runs of one recipe differ.
( train vig-isic-scale "$PHASE1_MIN" "${COMMON[@]}" "${SCRATCH[@]}" "${JOINT[@]}" --augment-vignette 0.5 --crop-scale-min 0.25
  train vig-isic-scale-seed7 "$PHASE2_MIN" "${COMMON[@]}" "${SCRATCH[@]}" "${JOINT[@]}" --augment-vignette 0.5 --crop-scale-min 0.25 \
      --seed 7 ) &
PIDS+=($!)
wait "${PIDS[@]}"
kill "$WATCHDOG" 2>/dev/null
echo "[$(elapsed)s] training done"

bash experiments/compare_runs.sh "$RUNS" "$DATA"
tar czf "$OUT/results.tgz" --exclude=checkpoints --exclude=model.safetensors --exclude=encoder "$RUNS"
# The two best by derm7pt ROC AUC come back whole; files over 16 MiB do not come back, so split them.
for rank in 1 2; do
    best=$(python -c "import json,sys; r=json.load(open('$RUNS/summary.json'))['ranking']; print(r[$rank-1] if len(r)>=$rank else '')")
    [[ -z "$best" ]] && continue
    tar cf - --exclude=checkpoints -C "$RUNS" "$best" | split -b 15M -d - "$OUT/best$rank-$best.tar.part"
done
if [[ -d "$RUNS/mae/encoder" ]]; then
    python -c "
import torch; from safetensors.torch import load_file, save_file
w = load_file('$RUNS/mae/encoder/model.safetensors'); save_file({k: v.half() for k, v in w.items()}, '$RUNS/mae/encoder/model_fp16.safetensors')"
    tar czf "$OUT/mae-encoder-fp16.tgz" -C "$RUNS/mae/encoder" config.json preprocessor_config.json model_fp16.safetensors
fi
ls -la "$OUT"
echo "[$(elapsed)s] all done"
