#!/usr/bin/env bash
# The recipe comparison for the vignette-shortcut issue on a 2-core CPU, at one small
# equal budget per recipe (EPOCHS full epochs of a from-scratch ViT-tiny at 128 px),
# on the project's real folders. Each run is a plain train_vit.py command; the runs
# go one after another, and whatever has finished is tabulated by compare_runs.sh (experiments/compare_runs.py).
#
#   bash experiments/cpu_recipes.sh                 # about 25 min per recipe here
#   RECIPES="vig-isic-scale fov-isic-scale" bash experiments/cpu_recipes.sh
#
# Each recipe changes one lever against vig-isic-scale (the shipped model's recipe):
#   fov-isic-scale       one fixed circular field-of-view mask instead of vignette augmentation
#   vig-scale            without the isic2017 benign images
#   vig-isic             without the stronger zoom-in crops (default crop scale 0.5 instead of 0.25)
#   vig-isic-scale-sog   with shades-of-gray colour constancy in training and inference
#   vig-isic-scale-seed7 the same recipe with another seed: how far two runs of one recipe differ
# and, for the skin-colour issue, against the same vig-isic-scale:
#   skinref              skin-referenced colour gain (melanoma_screen.skin) in training and inference
#   skinaug              the skin around the lesion recoloured at random in training (p = 0.5)
#   skinref-skinaug      both
# and the architecture lever, against skinref and vig-isic-scale:
#   skinref-mimetic      skinref with mimetic initialisation of the attention (Trockman & Kolter 2023)
#   mimetic              vig-isic-scale with mimetic initialisation
# and, once skinaug had removed the skin cue and the model leant on the vignette instead:
#   skinaug-vigbal       skinaug with the vignette drawn per class so both classes show one equally often
#   skinaug1-vigbal      skinaug-vigbal with the skin of every image recoloured (p = 1), so no image keeps its own skin
#   skinaug1-vigbal-sizebal  skinaug1-vigbal with benign images zoomed in on the lesion so that its share of the
#                        frame follows the melanomas' (--augment-lesion-size-balanced)
# and, starting from the shipped model's weights (FT_FROM, default model/) instead of random ones, 2 epochs at
# a fifth of the learning rate: does a model that already ranks well unlearn the shortcuts (as last-layer
# retraining on balanced data does, Kirichenko et al. 2023) without losing its ranking?
#   ft-skinaug           skinaug, fine-tuned from FT_FROM
#   ft-skinaug-vigbal    skinaug-vigbal, fine-tuned from FT_FROM
#   ft-skinaug1-vigbal   skinaug1-vigbal (every skin recoloured), fine-tuned from FT_FROM
#   ft-skinaug1-vigbal-sizebal  the same, with lesion sizes balanced between the classes
#   levit, mobilevitv2   vig-isic-scale (the shipped recipe) on those architectures (modeling.OTHER_ARCHITECTURES)
#   levit-seed7          levit with another seed: does LeViT's lead over ViT-tiny outlast the seed?
# and, for the benign-mimics issue, with ham10000 (both classes, diagnoses, three acquisitions) added,
# fine-tuned from FT_FROM (the LeViT shipped until 2026-12-05, 8f561268f2b5: FT_FROM=runs/compare/shipped-8f561268f2b5
# to rerun them now that model/ is the run these recipes chose):
#   ft-ham               ham10000 as one more extra folder, nothing else changed (the control)
#   ft-ham-balance       + every (source, class) group balanced, benign diagnoses balanced,
#                        the checkpoint chosen on the mean per-source validation AUC
#   ft-ham-mimics        ft-ham-balance + the auxiliary diagnosis head + acquisition augmentation
#   levit-ham-mimics     ft-ham-mimics' levers on a LeViT trained from random weights
#   ft-ham-balance       ft-ham-balance alone: source x class and diagnosis balance, per-source selection
#                        (ft-ham-mimics without the diagnosis head and the acquisition augmentation)
#   ft-ham-mimics-skin   ft-ham-mimics + the skin around the lesion recoloured at random (p = 0.5) and the
#                        vignette drawn per class: ham10000 made the skin-colour probe worse
#   ft-ham-dro           ft-ham-balance with group DRO over the (source, class) groups (--group-dro-step 0.01)
#   ft-ham-balance-skin  ft-ham-balance with the skin recoloured at random (p = 0.5) and the vignette drawn per class
#   ft-ham-balance-160   ft-ham-balance at 160 px instead of 128 (the LeViT's attention biases resized)
#   ft-ham-dro-160       ft-ham-dro at 160 px
#   ft-ham-dro-160-seed7 ft-ham-dro-160 with another seed: the spread between seeds, and a second run to average
#   ft-ham-dro-192       ft-ham-dro at 192 px: is more resolution still worth it for keratoses
#   ft-ham-dro-160-lr3e5 ft-ham-dro-160 at a third of the learning rate: the runs peak on per-source
#                        validation after epoch 1 and fall at epoch 2, as if 1e-4 knocked the base model off
#   ft-ham-dro-160-seed11 ft-ham-dro-160 with a third seed, for a three-seed weight average
#   ft-ham-dro-dx-160    ft-ham-dro-160 with the DRO groups split by benign diagnosis (--group-dro-by-diagnosis):
#                        the worst group can be keratoses or dermatofibromas, not only a source's benign class
#   ft-ham-dro-dx-160-seed7, ft-ham-dro-dx-160-seed11 the same with other seeds
#   ft-ham-dro-dx-160-step05-seed7 the shipped recipe with five times the DRO step (0.05): at 0.01 the
#                        keratoses' weight barely moves in four epochs
#   ft-ham-dro-dx-160-acq-seed7 the shipped recipe + acquisition augmentation (random JPEG quality,
#                        rescaling, blur and sharpening, p = 0.5), alone this time, without the diagnosis head
#   ft-ham-dro-dx-160-dxhead-seed7 the shipped recipe + the auxiliary diagnosis head (weight 0.3), alone
#   ft-ham-dro-dx-160-lr5e5-seed7 the shipped recipe at half the learning rate: the 8-epoch run fitted the
#                        training sources better and derm7pt worse, so a gentler move from the base may keep more
#   ft-ham-dro-dx-160-rank-seed7 the shipped recipe + a pairwise ranking loss (weight 0.5) that pushes each
#                        batch's melanomas above its keratoses, lentigines, dermatofibromas and vascular lesions
#                        (--lookalike-ranking-weight): the look-alikes are ~5% of a batch, so cross-entropy hardly
#                        sees their ranking against melanoma
#   ft-ham-dro-dx-224-seed7 the shipped recipe at 224 px instead of 160: the structures that tell a keratosis from a
#                        melanoma (milia-like cysts, comedo-like openings) are a few pixels wide at 160
#   ft-ham-dro-dx-160-last1-seed7 the shipped recipe training only the LeViT's last stage and heads
#                        (--train-last-stages 1): the look-alikes are a change in what the labels mean, which
#                        surgical fine-tuning (Lee et al. 2023) learns late, and the stem keeps what it tells apart
#   ft-ham-dro-dx-160-last2-seed7 the same, the last two stages trained
#   ft-ham-dro-dx-160-early5-seed7 the shipped recipe with the stem and first stage at 5x the learning rate
#                        (--early-learning-rate-scale 5): runs that froze them learnt nothing of the look-alikes
#   levit-ham-dro-dx     the shipped recipe's data levers (source x class and diagnosis balance, DRO over
#                        diagnosis groups, per-source selection) on a LeViT from random weights at 128 px, the full
#                        16 epochs (EPOCHS=16): does a model that never learnt the 10k set's sources alone rank the
#                        look-alikes better than a fine-tune of one that did?
#   levit-ham-dro-dx-full the same without early stopping: from random weights the per-source validation AUC
#                        swings by 0.1 between epochs, and a patience of 4 ended levit-ham-dro-dx after epoch 7
#   ft-ham-mimics-lodo   ft-ham-mimics with ham10000's vienna_dias acquisition left out of training and
#                        validation, scored at the end like an external set (leave one source out)
# derm7pt is scored after training to compare recipes, never to fit anything; choosing a
# recipe on it makes its figures slightly optimistic, and the README says so.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs/cpu}
EPOCHS=${EPOCHS:-2}
MINUTES=${MINUTES:-40}
RECIPES=${RECIPES:-"vig-isic-scale fov-isic-scale vig-scale vig-isic-scale-sog vig-isic vig-isic-scale-seed7"}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$RUNS"

FT_FROM=${FT_FROM:-model}
COMMON=(--data-dir "$DATA/melanoma_cancer_dataset" --external-dir "$DATA/derm7pt" --drop-duplicates
        --balance class_weights
        --num_train_epochs "$EPOCHS" --per_device_train_batch_size 64 --learning-rate 5e-4 --early-stopping-patience 4
        --augment-brightness 0.3 --augment-contrast 0.2 --augment-saturation 0.2 --augment-white-balance 0.12
        --dataloader_num_workers 1 --max-train-minutes "$MINUTES")
SCRATCH="--scratch-config tiny --image-size 128"
FINE_TUNE="--model-name-or-path $FT_FROM --learning-rate 1e-4"
JOINT=(--extra-train-dir "$DATA/isic2017" --audit-file "$RUNS/audit_joint.json")
MAIN=(--audit-file "$RUNS/audit_main.json")
HAM=(--extra-train-dir "$DATA/isic2017" "$DATA/ham10000" --audit-file "$RUNS/audit_ham.json")
MIMICS="--balance source_class --balance-diagnoses --select-on mean_source"

recipe_args() {
    case $1 in
        vig-isic-scale)       echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25" ;;
        fov-isic-scale)       echo "$SCRATCH ${JOINT[*]} --field-of-view-mask 0.5 --crop-scale-min 0.25" ;;
        vig-scale)            echo "$SCRATCH ${MAIN[*]} --augment-vignette 0.5 --crop-scale-min 0.25" ;;
        vig-isic)             echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5" ;;
        vig-isic-scale-sog)   echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --color-constancy shades_of_gray" ;;
        vig-isic-scale-seed7) echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --seed 7" ;;
        skinref)              echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --color-constancy skin_reference" ;;
        skinaug)              echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --augment-skin-recolour 0.5" ;;
        skinref-skinaug)      echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --color-constancy skin_reference --augment-skin-recolour 0.5" ;;
        skinref-mimetic)      echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --color-constancy skin_reference --mimetic_init" ;;
        skinaug-vigbal)       echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --augment-skin-recolour 0.5" ;;
        skinaug1-vigbal)      echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --augment-skin-recolour 1.0" ;;
        skinaug1-vigbal-sizebal) echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --augment-skin-recolour 1.0 --augment-lesion-size-balanced" ;;
        ft-skinaug)           echo "$FINE_TUNE ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --augment-skin-recolour 0.5" ;;
        ft-skinaug-vigbal)    echo "$FINE_TUNE ${JOINT[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --augment-skin-recolour 0.5" ;;
        ft-skinaug1-vigbal)   echo "$FINE_TUNE ${JOINT[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --augment-skin-recolour 1.0" ;;
        ft-skinaug1-vigbal-sizebal) echo "$FINE_TUNE ${JOINT[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --augment-skin-recolour 1.0 --augment-lesion-size-balanced" ;;
        mimetic)              echo "$SCRATCH ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --mimetic_init" ;;
        levit)                echo "--scratch-config levit --image-size 128 ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25" ;;
        levit-seed7)          echo "--scratch-config levit --image-size 128 ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --seed 7" ;;
        ft-ham)               echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3" ;;
        ft-ham-balance)       echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS" ;;
        ft-ham-mimics)        echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --diagnosis-head-weight 0.3 --augment-acquisition 0.5" ;;
        ft-ham-mimics-skin)   echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --average_last 3 $MIMICS --diagnosis-head-weight 0.3 --augment-acquisition 0.5 --augment-skin-recolour 0.5" ;;
        ft-ham-dro)           echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01" ;;
        ft-ham-balance-skin)  echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --augment-vignette-balanced --crop-scale-min 0.25 --average_last 3 $MIMICS --augment-skin-recolour 0.5" ;;
        ft-ham-balance-160)   echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --image-size 160" ;;
        ft-ham-dro-160)       echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --image-size 160" ;;
        ft-ham-dro-160-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --image-size 160 --seed 7" ;;
        ft-ham-dro-160-lr3e5) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --image-size 160 --learning-rate 3e-5" ;;
        ft-ham-dro-160-seed11) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --image-size 160 --seed 11" ;;
        ft-ham-dro-dx-160)    echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160" ;;
        ft-ham-dro-dx-160-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7" ;;
        ft-ham-dro-dx-160-step05-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.05 --group-dro-by-diagnosis --image-size 160 --seed 7" ;;
        ft-ham-dro-dx-160-acq-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --augment-acquisition 0.5" ;;
        ft-ham-dro-dx-160-dxhead-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --diagnosis-head-weight 0.3" ;;
        ft-ham-dro-dx-160-lr5e5-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --learning-rate 5e-5" ;;
        ft-ham-dro-dx-160-rank-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --lookalike-ranking-weight 0.5" ;;
        ft-ham-dro-dx-160-last1-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --train-last-stages 1" ;;
        ft-ham-dro-dx-160-last2-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --train-last-stages 2" ;;
        ft-ham-dro-dx-160-early5-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 7 --early-learning-rate-scale 5" ;;
        ft-ham-dro-dx-224-seed7) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 224 --seed 7" ;;
        ft-ham-dro-dx-160-seed11) echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --image-size 160 --seed 11" ;;
        ft-ham-dro-192)       echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --image-size 192" ;;
        ft-ham-mimics-lodo)   echo "$FINE_TUNE ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --diagnosis-head-weight 0.3 --augment-acquisition 0.5 --hold-out-source ham10000/vienna_dias" ;;
        levit-ham-dro-dx)     echo "--scratch-config levit --image-size 128 ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis" ;;
        levit-ham-dro-dx-full) echo "--scratch-config levit --image-size 128 ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --group-dro-step 0.01 --group-dro-by-diagnosis --early-stopping-patience 16" ;;
        levit-ham-mimics)     echo "--scratch-config levit --image-size 128 ${HAM[*]} --augment-vignette 0.5 --crop-scale-min 0.25 --average_last 3 $MIMICS --diagnosis-head-weight 0.3 --augment-acquisition 0.5" ;;
        mobilevitv2)          echo "--scratch-config mobilevitv2 --image-size 128 ${JOINT[*]} --augment-vignette 0.5 --crop-scale-min 0.25" ;;
        *) echo "unknown recipe $1" >&2; return 1 ;;
    esac
}

for name in $RECIPES; do
    if [[ -f "$RUNS/$name/eval_results.json" ]]; then echo "$name: done before, kept"; continue; fi
    args=$(recipe_args "$name") || exit 2
    echo "[$(date +%T)] start $name"
    # shellcheck disable=SC2086  # the recipe's flags hold no spaces
    python train_vit.py --output-dir "$RUNS/$name" "${COMMON[@]}" $args > "$RUNS/$name.log" 2>&1
    echo "[$(date +%T)] end $name (exit $?)"
    rm -rf "$RUNS/$name/checkpoints"
done
bash experiments/compare_runs.sh "$RUNS" "$DATA"
