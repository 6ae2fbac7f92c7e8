"""Tabulate finished training runs side by side, with a quick vignette probe, and rank them by external ROC AUC.

    python experiments/summarize_runs.py runs/gpu --data-dir gpu_data --out runs/gpu/summary.json

Reads each RUN/eval_results.json (validation, test and external figures that
train_vit.py wrote) and scores one probe per run: the benign test images with
and without a drawn dermatoscope vignette (melanoma_screen.shortcuts). The
ranking by external ROC AUC is for choosing which runs to look at closely; the
external set is then no longer untouched, and reports say so.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from melanoma_screen.images import load_rgb_image
from melanoma_screen.inference import ScreeningModel
from melanoma_screen.shortcuts import add_circular_vignette


def vignette_probe(run: Path, benign_paths: list[Path]) -> dict:
    model = ScreeningModel.load(str(run))
    clean = [load_rgb_image(path) for path in benign_paths]
    vignetted = [add_circular_vignette(image, random.Random(i)) for i, image in enumerate(clean)]
    p_clean = np.array([p.malignant_probability for p in model.predict_batch(clean, batch_size=64)])
    p_vignette = np.array([p.malignant_probability for p in model.predict_batch(vignetted, batch_size=64)])
    threshold = model.screening_threshold
    return {"mean_p_clean": float(p_clean.mean()), "mean_p_vignette": float(p_vignette.mean()),
            "flagged_clean": float((p_clean >= threshold).mean()), "flagged_vignette": float((p_vignette >= threshold).mean())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="folder whose sub-folders are train_vit.py output folders")
    parser.add_argument("--data-dir", required=True, help="folder holding melanoma_cancer_dataset/test/benign")
    parser.add_argument("--probe-images", type=int, default=300, help="benign test images for the vignette probe")
    parser.add_argument("--out", help="write the table and ranking as JSON here")
    args = parser.parse_args(argv)
    benign = sorted((Path(args.data_dir) / "melanoma_cancer_dataset" / "test" / "benign").iterdir())[: args.probe_images]
    rows = []
    for run in sorted(path for path in Path(args.runs).iterdir() if (path / "eval_results.json").is_file()):
        report = json.loads((run / "eval_results.json").read_text())
        external = next(iter(report.get("external", {}).values()), None)
        row = {
            "run": run.name,
            "epochs": report.get("epochs_trained"),
            "val_auc": report["checkpoint_selection"]["best_checkpoint"]["validation_roc_auc"],
            "test_auc": report["test_at_0_5"]["roc_auc"],
            "test_ece": report["test_at_0_5"]["ece"],
            "test_sens_scr": report["test_at_screening_threshold"]["sensitivity"],
            "test_spec_scr": report["test_at_screening_threshold"]["specificity"],
            "ext_auc": external["at_0_5"]["roc_auc"] if external else None,
            "ext_ece": external["at_0_5"]["ece"] if external else None,
            "ext_sens_scr": external["at_screening_threshold"]["sensitivity"] if external else None,
            "ext_spec_scr": external["at_screening_threshold"]["specificity"] if external else None,
        }
        row.update(vignette_probe(run, benign))
        rows.append(row)
    header = ("run", "epochs", "val_auc", "test_auc", "test_ece", "test_sens_scr", "test_spec_scr", "ext_auc", "ext_ece",
              "ext_sens_scr", "ext_spec_scr", "mean_p_clean", "mean_p_vignette", "flagged_clean", "flagged_vignette")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[key]:.3f}" if isinstance(row[key], float) else str(row[key]) for key in header))
    ranking = [row["run"] for row in sorted(rows, key=lambda row: -(row["ext_auc"] or 0))]
    print("ranking by external ROC AUC:", ", ".join(ranking))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "ranking": ranking}, indent=2))


if __name__ == "__main__":
    main()
