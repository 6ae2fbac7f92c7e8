#!/usr/bin/env bash
# Make a training run the app's model: copy it into model/ and redo, on the copy, every
# step that model/ carries beyond what train_vit.py wrote. Each step is the command the
# card quotes, so its figures can be rerun one by one.
#
#   bash experiments/ship_model.sh runs/cpu-arch16/levit
#
# The folder it replaces is kept in runs/compare/shipped-<its version> (the comparison
# table in the new card reads it). Needs the shared data in $DATA (default ../shared/data).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
RUN=${1:?usage: bash experiments/ship_model.sh RUN_FOLDER}
DATA=${DATA:-../shared/data}
NAME=${NAME:-open-melanoma/vit-melanoma-screening}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ ! -f $RUN/model.safetensors || ! -f $RUN/eval_results.json ]]; then
    echo "$RUN is not a finished training run (no model.safetensors or eval_results.json); model/ is unchanged" >&2
    exit 2
fi

old_version=$(python -c "from melanoma_screen.weights import weights_version; from pathlib import Path; print(weights_version(Path('model')))")
previous=runs/compare/shipped-$old_version
if [[ ! -d $previous ]]; then mkdir -p runs/compare && cp -r model "$previous"; fi
echo "[$(date +%T)] model/ ($old_version) kept in $previous; copying $RUN"
rm -rf model
mkdir model
# The run's own files, not its checkpoints, logs or cached graphs (rebuilt below for its weights).
for file in "$RUN"/*; do
    case $(basename "$file") in
        checkpoints|*.log|probes.log|*.onnx|by_source.json) ;;
        *) cp "$file" model/ ;;
    esac
done

# Cards written before the template named the architecture call every model a ViT.
python - <<'PY'
import json
from pathlib import Path
from melanoma_screen.architectures import display_name
card, model_type = Path("model/README.md"), json.loads(Path("model/config.json").read_text())["model_type"]
card.write_text(card.read_text().replace("A Vision Transformer (ViT) image classifier",
                                         f"A {display_name(model_type)} image classifier"))
PY

step() { echo "[$(date +%T)] $*"; "$@"; }
step python -m melanoma_screen.identity --model model --name "$NAME"
step python -m melanoma_screen.onnx_engine --model model --precision int8
step python fit_input_check.py fit --model model --data-dir "$DATA/melanoma_cancer_dataset"
step python benchmarks/input_check.py --model model --card model/README.md --json model/input_check_benchmark.json
step python evaluate_model.py --model model --data-dir "$DATA/melanoma_cancer_dataset" --split test --robustness \
    --out model/robustness.json --card model/README.md
# COMPARE_ALSO: more runs for the card's comparison table (another seed of the same recipe, say).
step python experiments/compare_runs.py "$previous" model ${COMPARE_ALSO:-} --card model/README.md
step python experiments/operating_points_by_source.py model --external-dir "$DATA/derm7pt"
# The thresholds the folders calibrate_site.py --unlabeled-dir adapts from this model get (docs/site_calibration.md).
step python experiments/fit_adapted_thresholds.py model
step python benchmarks/check_accuracy.py
chmod 644 model/*  # Trainer and the input-check fit write some files private; a model folder is for everyone to read
echo "[$(date +%T)] model/ is now $(python -c "from melanoma_screen.weights import weights_version; from pathlib import Path; print(weights_version(Path('model')))")"
