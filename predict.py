"""Score many lesion images with the app's model and inference code, into a CSV file.

    python predict.py ../shared/data/melanoma_cancer_dataset/test --out preds.csv
    python predict.py a.jpg b.png more_images/ --model runs/vit --batch-size 64 --out preds.csv

Folders are searched recursively; every file in them is scored (hidden files are
skipped). One row per file: file, label, prob_benign, prob_malignant, risk_level,
error, reason. A file that is not a usable image, or a picture the input check
refuses (too dark, blurred, no lesion, not skin, unlike the training images),
gets a row with only its error message (the same sentence the app shows) and a
reason code, and the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from tqdm import tqdm

from melanoma_screen.images import ImageLoadError, decode_batches
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ModelLoadError, ScreeningModel, default_model_source

COLUMNS = ["file", "label", "prob_benign", "prob_malignant", "risk_level", "error", "reason"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 when the CSV was written (even with error rows), 2 otherwise.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--model", default=None, help="local model folder or Hub id (default: $MODEL_ID, else ./model)")
    parser.add_argument("--out", default="predictions.csv", help="CSV file to write (default: predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--engine", choices=ENGINES, default=FAST["engine"],
                        help=f"what runs the model (default: {FAST['engine']}, as in the app)")
    parser.add_argument("--precision", choices=PRECISIONS, default=FAST["precision"],
                        help="int8 weights (default, as in the app) or fp32; --engine torch --precision fp32 "
                             "gives exactly transformers.pipeline's scores")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: PyTorch's, one per core)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def list_files(inputs: list[str]) -> list[Path]:
    """The files named, and every non-hidden file under the folders named, in a stable order."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            files.append(path)  # a missing file gets an error row, like any other bad input
    return files


def error_row(path: Path, message: str, reason: str = "unreadable") -> dict:
    return {"file": str(path), "label": "", "prob_benign": "", "prob_malignant": "", "risk_level": "", "error": message,
            "reason": reason}


def prediction_row(path: Path, prediction) -> dict:
    if prediction.refused:
        return error_row(path, prediction.input_check.message("en"), prediction.input_check.reason)
    return {
        "file": str(path),
        "label": prediction.label,
        "prob_benign": f"{prediction.probabilities['benign']:.6f}",
        "prob_malignant": f"{prediction.probabilities['malignant']:.6f}",
        "risk_level": prediction.risk_level,
        "error": "",
        "reason": "",
    }


def predict_files(model: ScreeningModel, files: list[Path], batch_size: int = 32, progress: bool = True):
    """Yields one CSV row per file, in order; bad files become error rows."""
    with tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr) as bar:
        # Decoded over the model's batch threads, one file per core; a file we may not
        # read at all is reported like a bad image, and the run goes on.
        for batch in decode_batches(files, batch_size, model.decode_each, skip=Exception):
            rows = {}
            for i, error in batch.failures:
                rows[i] = (error_row(files[i], str(error), error.reason) if isinstance(error, ImageLoadError)
                           else error_row(files[i], f"{type(error).__name__}: {error}"))
            # The good images of the batch go through the model together.
            for i, prediction in zip(batch.positions, model.predict_decoded(batch.images)):
                rows[i] = prediction_row(files[i], prediction)
            yield from (rows[i] for i in sorted(rows))
            bar.update(len(batch.sources))


def main(argv=None) -> int:
    args = parse_args(argv)
    files = list_files(args.inputs)
    if not files:
        print("No files found in " + ", ".join(args.inputs) + ".", file=sys.stderr)
        return 2
    source = args.model or default_model_source()
    # One progress bar on screen, ours: also when transformers is loaded (not on the fast path with a stored graph).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        model = ScreeningModel.load(source, num_threads=args.threads, engine=args.engine, precision=args.precision)
    except ModelLoadError as error:
        print(error, file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    errors = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in predict_files(model, files, args.batch_size):
            writer.writerow(row)
            errors += bool(row["error"])
    print(f"{len(files) - errors} images scored, {errors} could not be read or were refused; wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
