"""Does the fast inference path score the test split as well as transformers.pipeline?

    python benchmarks/check_accuracy.py --model model --data-dir ../shared/data/melanoma_cancer_dataset

Scores every image of DATA/test/{benign,malignant} with both, prints the ROC AUC
of each, their difference, how far the probabilities moved and how many risk
levels changed, and exits with status 1 when the AUCs differ by more than
--tolerance (0.002).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO_ROOT, DATASET, write_json  # noqa: F401  (puts the repository on sys.path)

from melanoma_screen.calibration import risk_level  # noqa: E402
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ScreeningModel, default_model_source  # noqa: E402
from melanoma_screen.labels import CLASS_NAMES, MALIGNANT  # noqa: E402
from melanoma_screen.metrics import binary_metrics  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: $MODEL_ID, else ./model)")
    parser.add_argument("--data-dir", default=str(DATASET), help="folder with SPLIT/{benign,malignant}/ images")
    parser.add_argument("--split", default="test")
    parser.add_argument("--engine", choices=ENGINES, default=FAST["engine"], help="our path's engine (default: the app's)")
    parser.add_argument("--precision", choices=PRECISIONS, default=FAST["precision"], help="our path's precision (default: the app's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: PyTorch's)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images per class (quick runs)")
    parser.add_argument("--tolerance", type=float, default=0.002, help="largest AUC difference that passes")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def labelled_images(data_dir, split, limit=None):
    root = Path(data_dir) / split
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        found = sorted((root / name).glob("*.jpg"))[:limit]
        if not found:
            raise SystemExit(f"No images in {root / name}.")
        paths += found
        labels += [label] * len(found)
    return paths, np.array(labels)


def main(argv=None) -> int:
    args = parse_args(argv)
    source = args.model or default_model_source()
    paths, labels = labelled_images(args.data_dir, args.split, args.limit)

    from transformers import pipeline  # after ScreeningModel.load may have set the threads

    model = ScreeningModel.load(source, num_threads=args.threads, engine=args.engine, precision=args.precision)
    classifier = pipeline("image-classification", model=source, device="cpu")

    start = time.perf_counter()
    baseline = np.array([{r["label"]: r["score"] for r in result}[MALIGNANT]
                         for result in classifier([model.pipeline_input(p) for p in paths], batch_size=args.batch_size)])
    baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = np.array([p.malignant_probability for p in model.predict_batch(paths, batch_size=args.batch_size)])
    ours_s = time.perf_counter() - start

    s, h = model.screening_threshold, model.high_risk_threshold
    report = {"model": source, "engine": model.engine, "precision": model.precision, "split": args.split, "n": len(paths),
              "n_malignant": int(labels.sum()), "threshold_screening": s, "threshold_high_risk": h}
    for name, probs in (("pipeline", baseline), ("ours", ours)):
        metrics = binary_metrics(labels, probs, threshold=s)
        report[name] = {"roc_auc": metrics["roc_auc"], "sensitivity_at_screening": metrics["sensitivity"],
                        "specificity_at_screening": metrics["specificity"], "accuracy_at_0_5":
                        binary_metrics(labels, probs, threshold=0.5)["accuracy"]}
    report["auc_difference"] = report["ours"]["roc_auc"] - report["pipeline"]["roc_auc"]
    report["max_abs_probability_difference"] = float(np.abs(ours - baseline).max())
    report["mean_abs_probability_difference"] = float(np.abs(ours - baseline).mean())
    levels = [(risk_level(a, s, h), risk_level(b, s, h)) for a, b in zip(baseline, ours)]
    report["risk_level_changes"] = sum(a != b for a, b in levels)
    report["seconds"] = {"pipeline": baseline_s, "ours": ours_s}
    report["passed"] = abs(report["auc_difference"]) <= args.tolerance

    print(f"{len(paths)} {args.split} images ({report['n_malignant']} malignant), model {source}, ours: {model.engine} {model.precision}")
    print(f"{'':10s} {'ROC AUC':>8s} {'sens@scr':>9s} {'spec@scr':>9s} {'acc@0.5':>8s} {'seconds':>8s}")
    for name in ("pipeline", "ours"):
        r = report[name]
        print(f"{name:10s} {r['roc_auc']:8.4f} {r['sensitivity_at_screening']:9.3f} {r['specificity_at_screening']:9.3f} "
              f"{r['accuracy_at_0_5']:8.3f} {report['seconds'][name]:8.1f}")
    print(f"auc_difference={report['auc_difference']:+.4f} (tolerance {args.tolerance})")
    print(f"probability difference: max {report['max_abs_probability_difference']:.4f}, "
          f"mean {report['mean_abs_probability_difference']:.4f}; risk level changed for "
          f"{report['risk_level_changes']} of {len(paths)} images")
    print("PASS" if report["passed"] else "FAIL: the fast path's ROC AUC is off by more than the tolerance")
    write_json(args.json, report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
