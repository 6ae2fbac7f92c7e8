"""The baseline predict.py is measured against: a plain transformers.pipeline script, as a user would write it.

    python benchmarks/pipeline_script.py --model model --out preds.csv a.jpg more_images/

Scores every image file named (folders recursively) with
pipeline("image-classification"), batch_size images at a time, and writes
file, label, prob_benign, prob_malignant: nothing else, no input check.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--model", default="model", help="model folder (default: model)")
    parser.add_argument("--out", default="pipeline_predictions.csv")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from transformers import pipeline

    files = []
    for name in args.inputs:
        path = Path(name)
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    classifier = pipeline("image-classification", model=args.model, device="cpu")
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "prob_benign", "prob_malignant"])
        for path, result in zip(files, classifier([str(p) for p in files], batch_size=args.batch_size)):
            scores = {row["label"]: row["score"] for row in result}
            writer.writerow([path, max(scores, key=scores.get), scores.get("benign"), scores.get("malignant")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
