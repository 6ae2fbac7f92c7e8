"""Command line: python -m data_prep {validate,audit,split} --data-dir DIR ...

validate  scan a dataset and report the images that cannot be used
audit     find exact and near-duplicate images within and across train/test,
          and acquisition shortcuts (vignette, border colour, size, JPEG quality)
split     print the train/validation/test split training makes (the same function), with what
          was dropped and why; --out writes that summary as JSON, for inspection only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from . import (DEFAULT_HASH_DISTANCE, DEFAULT_MIN_DETAIL_CORRELATION, LABELS, DataSourceError, audit_duplicates,
               class_counts, load_source, training_data)
from .settings import SplitSettings, add_split_arguments
from .shortcut_audit import DEFAULT_WARN_AUC, print_shortcut_audit, shortcut_audit

MAX_SKIPPED_SHOWN = 20  # the JSON report has them all


def print_scan(report) -> None:
    print("Valid images:")
    for split, counts in report.counts.items():
        print(f"  {split:<6} " + "  ".join(f"{name} {counts[name]:>5}" for name in LABELS))
    print(f"Skipped {len(report.skipped)} file(s).")
    for item in report.skipped[:MAX_SKIPPED_SHOWN]:
        print(f"  {item['path']}: {item['reason']}")
    if len(report.skipped) > MAX_SKIPPED_SHOWN:
        print(f"  ... and {len(report.skipped) - MAX_SKIPPED_SHOWN} more (all are in the JSON report).")


def print_audit(audit: dict) -> None:
    s = audit["summary"]
    print(f"Exact duplicates: {s['exact_groups']} groups ({s['exact_within_train']} within train, "
          f"{s['exact_within_test']} within test, {s['exact_cross_split']} across train/test)")
    print(f"Near duplicates:  {s['near_groups']} groups ({s['near_within_train']} within train, "
          f"{s['near_within_test']} within test, {s['near_cross_split']} across train/test)")
    print(f"Test images with a copy in train: {s['test_images_with_train_copy']}")
    conflicts = s["exact_label_conflicts"] + s["near_label_conflicts"]
    if conflicts:
        print(f"Groups whose copies carry different labels: {conflicts}")


def write_json(data: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    print(f"Wrote {path}")


def run_audit(records, args) -> dict:
    started = time.time()
    audit = audit_duplicates(records, hash_distance=args.hash_distance,
                             min_detail_correlation=args.min_detail_correlation, progress=not args.no_progress)
    audit["seconds"] = round(time.time() - started, 1)
    return audit


def cmd_validate(report, args) -> None:
    if args.out:
        write_json(report.to_dict(), args.out)


def cmd_audit(report, args) -> None:
    audit = run_audit(report.records, args)
    print_audit(audit)
    started = time.time()
    shortcuts = shortcut_audit(report.records, warn_auc=args.warn_auc, progress=not args.no_progress)
    shortcuts["seconds"] = round(time.time() - started, 1)
    print_shortcut_audit(shortcuts)
    write_json({"scan": report.to_dict(), **audit, "shortcuts": shortcuts}, args.out)


def split_summary(data: dict, settings: SplitSettings) -> dict:
    """What training would get: counts per split, source and class, and what was left out and why."""
    return {
        "note": "For inspection only: train_vit.py and pretrain_mae.py do not read this file, they make the same "
                "split themselves with data_prep.training_data from the same folders and settings.",
        "counts": {name: class_counts(data[name]) for name in ("train", "validation", "test")},
        "sources": data["sources"],
        "diagnoses": data["diagnoses"],
        "sample_weights_by_group": data["weight_summary"],
        "class_counts_used": data["class_counts"],
        "class_weights": data["class_weights"],
        "duplicate_audit": data["audit"]["summary"],
        "dropped": [{"path": path, "reason": data["drop_reasons"][path]} for path in data["dropped"]],
        "skipped": data["skipped"],
        "settings": asdict(settings),
    }


def cmd_split(args) -> None:
    settings = SplitSettings.from_namespace(args)
    data = training_data(settings, progress=not args.no_progress)
    print_scan(data["scan"])
    print_audit(data["audit"])
    summary = split_summary(data, settings)
    print("Duplicate groups are kept on one side of the validation split.")
    reasons = Counter(item["reason"] for item in summary["dropped"])
    print(f"Dropped {len(summary['dropped'])} training image(s)"
          + "".join(f"; {n} as {reason}" for reason, n in sorted(reasons.items())) + ".")
    for name, counts in summary["counts"].items():
        print(f"  {name:<10} " + "  ".join(f"{label} {n:>5}" for label, n in counts.items()))
    for source, splits in summary["sources"].items():
        print(f"  from {source}: " + "; ".join(f"{split} " + ", ".join(f"{label} {n}" for label, n in counts.items())
                                              for split, counts in splits.items()))
    for source, by_label in data["diagnoses"].items():
        print(f"  diagnoses in {source} (train + validation): " + "; ".join(
            f"{label} " + ", ".join(f"{dx} {n}" for dx, n in sorted(by_dx.items(), key=lambda item: -item[1]))
            for label, by_dx in by_label.items()))
    if data["weight_summary"]:
        print("Training weight per group (--balance source_class / --balance-diagnoses):")
        for group, by_label in data["weight_summary"].items():
            print(f"  {group:28s} " + "; ".join(f"{label} {row['images']} images weigh {row['total_weight']:.0f}"
                                             for label, row in by_label.items()))
    if summary["class_weights"]:
        print("Class weights: " + ", ".join(f"{label} {w:.3f}" for label, w in zip(LABELS, summary["class_weights"])))
    if args.shortcut_audit:
        # As training runs it: over every image it will see, with each acquisition as its own source.
        summary["shortcut_audit"] = shortcut_audit(data["train"] + data["validation"] + data["test"],
                                                   progress=not args.no_progress)
        print_shortcut_audit(summary["shortcut_audit"])
    if args.out:
        write_json(summary, args.out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    source = argparse.ArgumentParser(add_help=False)
    where = source.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", help="folder laid out as {train,test}/{benign,malignant}/*.jpg")
    where.add_argument("--dataset-name", help="Hugging Face dataset id with 'image' and 'label' columns")
    source.add_argument("--no-progress", action="store_true", help="hide progress bars")

    tuning = argparse.ArgumentParser(add_help=False)
    tuning.add_argument("--hash-distance", type=int, default=DEFAULT_HASH_DISTANCE,
                        help="max pHash bits between near-duplicate candidates (default %(default)s)")
    tuning.add_argument("--min-detail-correlation", type=float, default=DEFAULT_MIN_DETAIL_CORRELATION,
                        help="how alike the fine detail of a candidate pair must be to count as a copy; "
                             "-1 trusts the hash alone (default %(default)s)")

    validate = commands.add_parser("validate", parents=[source], help="scan and report unusable files",
                                   description="Scan a dataset; print counts per split/label and skipped files.")
    validate.add_argument("--out", help="write the scan report to this JSON file")

    audit = commands.add_parser("audit", parents=[source, tuning], help="find duplicate images and acquisition shortcuts",
                                description="Find exact and near-duplicate images within and across train/test, and "
                                            "acquisition features (dark corners, border colour, size, JPEG quality) "
                                            "that predict the label on their own.")
    audit.add_argument("--out", required=True, help="JSON report to write")
    audit.add_argument("--warn-auc", type=float, default=DEFAULT_WARN_AUC,
                       help="warn when one acquisition feature alone predicts the label with at least this "
                            "ROC AUC (default %(default)s)")

    split = commands.add_parser(
        "split", parents=[source], help="show the train/validation/test split training will use",
        description="Print the split train_vit.py and pretrain_mae.py make with the same data and settings "
                    "(data_prep.training_data): images per split, source and class, and the training images "
                    "dropped and why. Duplicate groups always stay on one side of the validation split. "
                    "Nothing reads the --out file: it is for inspection (training splits the folders itself).")
    split.add_argument("--out", help="also write the summary to this JSON file, for inspection only")
    split.add_argument("--shortcut-audit", action="store_true",
                       help="also run the shortcut audit over the split's images, pooled and inside each source, as "
                            "training does")
    add_split_arguments(split, skip=("data_dir", "dataset_name"), aliases={"audit_file": ["--audit"]})

    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            cmd_split(args)  # training_data scans the folders itself
            return
        report = load_source(args.data_dir, args.dataset_name, progress=not args.no_progress)
        print_scan(report)
        {"validate": cmd_validate, "audit": cmd_audit}[args.command](report, args)
    except (ValueError, DataSourceError, OSError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
