#!/usr/bin/env bash
# The skin-colour issue's longer run of a recipe from experiments/cpu_recipes.sh: the shipped
# recipe plus LEVER (default: skinref), EPOCHS epochs, stopped after MINUTES of training at the
# next validation. Checkpoints are kept, so a later session continues it with
#   RESUME=1 bash experiments/long_run.sh
#   OUT=runs/long/skinaug LEVER="--augment-skin-recolour 0.5" bash experiments/long_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/long/skinref}
EPOCHS=${EPOCHS:-6}
LEVER=${LEVER:---color-constancy skin_reference}
MINUTES=${MINUTES:-55}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$(dirname "$OUT")"
python train_vit.py --output-dir "$OUT" --data-dir "$DATA/melanoma_cancer_dataset" --external-dir "$DATA/derm7pt" \
    --extra-train-dir "$DATA/isic2017" --audit-file "${AUDIT:-runs/cpu/audit_joint.json}" --drop-duplicates \
    --balance class_weights --scratch-config tiny --image-size 128 --num_train_epochs "$EPOCHS" --per_device_train_batch_size 64 \
    --learning-rate 5e-4 --early-stopping-patience 4 --augment-brightness 0.3 --augment-contrast 0.2 \
    --augment-saturation 0.2 --augment-white-balance 0.12 --augment-vignette 0.5 --crop-scale-min 0.25 \
    $LEVER --dataloader_num_workers 1 --max-train-minutes "$MINUTES" \
    --hub-model-id open-melanoma/vit-melanoma-screening ${RESUME:+--resume_from_checkpoint last}
