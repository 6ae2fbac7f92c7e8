"""Tabulate finished training runs side by side, with a quick vignette probe, and rank them by external ROC AUC.

    python experiments/summarize_runs.py runs/gpu --data-dir gpu_data --out runs/gpu/summary.json

Reads each RUN/eval_results.json (validation, test and external figures that
train_vit.py wrote) and scores one probe per run: evaluate_model.py's vignette probe
on the benign test images. The
ranking by external ROC AUC is for choosing which runs to look at closely; the
external set is then no longer untouched, and reports say so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from evaluate_model import score, shortcut_probes
from melanoma_screen.inference import ScreeningModel
from melanoma_screen.results import load_eval_results


def vignette_probe(run: Path, benign_paths: list[str]) -> dict:
    model = ScreeningModel.load(str(run))
    probe = shortcut_probes(model, benign_paths, np.zeros(len(benign_paths), dtype=int), score(model, benign_paths),
                            batch_size=64)["vignette"]
    return {"mean_p_clean": probe["mean_p_malignant_before"], "mean_p_vignette": probe["mean_p_malignant_after"],
            "flagged_clean": probe["flagged_before"], "flagged_vignette": probe["flagged_after"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="folder whose sub-folders are train_vit.py output folders")
    parser.add_argument("--data-dir", required=True, help="folder holding melanoma_cancer_dataset/test/benign")
    parser.add_argument("--probe-images", type=int, default=300, help="benign test images for the vignette probe")
    parser.add_argument("--out", help="write the table and ranking as JSON here")
    args = parser.parse_args(argv)
    benign = [str(path) for path in sorted((Path(args.data_dir) / "melanoma_cancer_dataset" / "test" / "benign").iterdir())[: args.probe_images]]
    rows = []
    for run in sorted(path for path in Path(args.runs).iterdir() if (path / "eval_results.json").is_file()):
        # Runs still training write the old layout; the reader upgrades it.
        report = load_eval_results(run / "eval_results.json")
        test, external = report["test"], next(iter(report["external"].values()), None)
        row = {
            "run": run.name,
            "epochs": report.get("epochs_trained"),
            "val_auc": report["checkpoint_selection"]["best_checkpoint"]["validation_roc_auc"],
            "test_auc": test["at_0_5"]["roc_auc"] if test else None,
            "test_ece": test["at_0_5"]["ece"] if test else None,
            "test_sens_scr": test["at_screening_threshold"]["sensitivity"] if test else None,
            "test_spec_scr": test["at_screening_threshold"]["specificity"] if test else None,
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
