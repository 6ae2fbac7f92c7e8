"""Do a model's thresholds hold on each source? Sensitivity and specificity per validation source and per external set.

    python experiments/operating_points_by_source.py model --external-dir ../shared/data/derm7pt

The thresholds are fitted on the pooled validation split, which draws on the
10k set and on isic2017's benign images. This rebuilds that split exactly
(data_prep.training_data with the data settings the run stored in
eval_results.json), scores it through ScreeningModel (pipeline's numbers), and
reports, at both stored thresholds, the sensitivity and specificity on each
validation source and on each external set, which is never fitted on. It also
fits the rule that holds sensitivity on every validation source that has
melanomas (the lowest per-source screening threshold) and says what that
costs in specificity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python experiments/x.py` puts experiments/ on the path

from data_prep import SplitSettings, scan_label_folder, training_data
from melanoma_screen import calibration, metrics
from melanoma_screen.inference import ScreeningModel
from melanoma_screen.results import load_eval_results


def scores(model: ScreeningModel, records) -> np.ndarray:
    return np.asarray([p.malignant_probability for p in model.predict_batch([r.path for r in records])])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("model", help="A model folder written by train_vit.py (its eval_results.json holds the data settings).")
    parser.add_argument("--external-dir", action="append", default=[], help="{benign,malignant}/ folder scored, never fitted.")
    parser.add_argument("--audit-file", help="The duplicate audit of the same folders, where the run's own is not on this machine.")
    parser.add_argument("--out", help="Write the report as JSON here.")
    args = parser.parse_args(argv)

    settings = load_eval_results(Path(args.model) / "eval_results.json").get("settings")
    if not settings:
        parser.error(f"{args.model}/eval_results.json stores no data settings: the validation split cannot be rebuilt")
    split = SplitSettings.from_stored(settings)
    data = training_data(dataclasses.replace(split, audit_file=args.audit_file or split.audit_file))
    model = ScreeningModel.load(args.model)
    validation = data["validation"]
    labels = np.asarray([r.label for r in validation])
    sources = [r.source for r in validation]
    probs = scores(model, validation)
    screening, high_risk = model.screening_threshold, model.high_risk_threshold
    report = {"model": args.model, "screening_threshold": screening, "high_risk_threshold": high_risk,
              "validation": metrics.by_source(labels, probs, sources, screening, high_risk), "external": {}}
    for folder in args.external_dir:
        scan = scan_label_folder(Path(folder), split=Path(folder).name)
        external_labels = np.asarray([r.label for r in scan.records])
        report["external"][Path(folder).name] = metrics.by_source(
            external_labels, scores(model, scan.records), [Path(folder).name] * len(scan.records), screening, high_risk)[Path(folder).name]

    # The rule that holds the sensitivity target on every validation source with melanomas.
    # train_vit keeps the targets under "screening" since it took TrainingArguments, under "training" before.
    target = (settings.get("screening") or settings["training"])["min_sensitivity"]
    per_source = {source: calibration.screening_threshold(labels[np.asarray(sources) == source],
                                                          probs[np.asarray(sources) == source], target)
                  for source, row in report["validation"].items() if row["n_malignant"]}
    every_source = min(per_source.values())
    report["every_source_rule"] = {"min_sensitivity": target, "per_source_screening_threshold": per_source,
                                   "screening_threshold": every_source,
                                   "validation": metrics.by_source(labels, probs, sources, every_source, high_risk)}

    print(f"thresholds: screening {screening:.4f}, high risk {high_risk:.4f} (fitted on the pooled validation split)")
    rows = [(f"validation: {name}", row) for name, row in report["validation"].items()] + \
           [(f"external: {name}", row) for name, row in report["external"].items()]
    width = max(len(name) for name, _ in rows)  # whole names: two sources can share their first 28 letters
    print(f"{'set':{width}s} {'malig':>6s} {'benign':>7s} {'sens@scr':>9s} {'spec@scr':>9s} {'sens@high':>10s} {'spec@high':>10s} {'mean P(mal) benign':>19s}")

    def cell(value, width):
        return f"{'–':>{width}s}" if value is None else f"{value:{width}.3f}"

    for name, row in rows:
        print(f"{name:{width}s} {row['n_malignant']:6d} {row['n_benign']:7d} {cell(row['sensitivity_at_screening'], 9)} "
              f"{cell(row['specificity_at_screening'], 9)} {cell(row['sensitivity_at_high_risk'], 10)} "
              f"{cell(row['specificity_at_high_risk'], 10)} {cell(row['mean_p_malignant_benign'], 19)}")
    print(f"every-source rule (sensitivity ≥ {target:g} on each source with melanomas): screening threshold "
          f"{every_source:.4f} " + ", ".join(f"{s}: {t:.4f}" for s, t in per_source.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
