"""Command line: python -m data_prep {validate,audit,split} --data-dir DIR ...

validate  scan a dataset and report the images that cannot be used
audit     find exact and near-duplicate images within and across train/test,
          and acquisition shortcuts (vignette, border colour, size, JPEG quality)
split     write a train/validation/test manifest, optionally without leaked duplicates
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import (DEFAULT_HASH_DISTANCE, DEFAULT_MIN_DETAIL_CORRELATION, LABELS, DataSourceError,
               audit_duplicates, balance, class_counts, group_ids, leaked_paths, load_source,
               train_val_split)
from .shortcuts import DEFAULT_WARN_AUC, print_shortcut_audit, shortcut_audit

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


def cmd_split(report, args) -> None:
    train_pool = [record for record in report.records if record.split == "train"]
    test = [record for record in report.records if record.split == "test"]

    audit = None
    if args.audit:
        audit = json.loads(Path(args.audit).read_text())
        known = {path for group in audit["exact_duplicate_groups"] + audit["near_duplicate_groups"]
                 for path in group["paths"]}
        if known and not known & {record.path for record in report.records}:
            raise ValueError(f"{args.audit} was made for other data: none of its paths are in this dataset.")
    elif args.drop_duplicates:
        print("No --audit given: auditing now (save time next run with `python -m data_prep audit`).")
        audit = run_audit(report.records, args)
        print_audit(audit)
    else:
        print("No --audit given: the validation split does not keep duplicates together.")

    dropped = leaked_paths(audit) & {record.path for record in train_pool} if args.drop_duplicates else set()
    train_pool = [record for record in train_pool if record.path not in dropped]
    groups = group_ids(train_pool, audit) if audit else None
    train, validation = train_val_split(train_pool, args.val_fraction, args.seed, groups)
    train, class_weights, counts_used = balance(train, args.balance, args.seed)

    def listing(records):
        return [{"path": record.path, "label": record.label} for record in records]

    if args.drop_duplicates:
        print(f"Dropped {len(dropped)} training image(s) that copy a test image or repeat within train.")
    for name, records in (("train", train), ("validation", validation), ("test", test)):
        print(f"  {name:<10} " + "  ".join(f"{label} {n:>5}" for label, n in class_counts(records).items()))
    if class_weights:
        print("Class weights: " + ", ".join(f"{label} {w:.3f}" for label, w in zip(LABELS, class_weights)))
    write_json({
        "train": listing(train),
        "validation": listing(validation),
        "test": listing(test),
        "class_counts_used": counts_used,
        "class_weights": class_weights,
        "dropped": sorted(dropped),
        "labels": list(LABELS),
        "settings": {"val_fraction": args.val_fraction, "seed": args.seed, "balance": args.balance,
                     "audit": args.audit, "drop_duplicates": args.drop_duplicates, "group_aware": audit is not None},
    }, args.out)


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

    split = commands.add_parser("split", parents=[source, tuning], help="write a train/validation/test manifest",
                                description="Split train into train/validation (stratified, duplicate-aware "
                                            "with --audit) and write the manifest.")
    split.add_argument("--out", required=True, help="JSON manifest to write")
    split.add_argument("--val-fraction", type=float, default=0.1, help="share of train used for validation")
    split.add_argument("--seed", type=int, default=42)
    split.add_argument("--audit", help="audit JSON from `python -m data_prep audit`, to keep duplicates together")
    split.add_argument("--drop-duplicates", action="store_true",
                       help="leave out training images that copy a test image, and repeats within train")
    split.add_argument("--balance", choices=["none", "undersample", "class_weights"], default="none")

    args = parser.parse_args(argv)
    try:
        report = load_source(args.data_dir, args.dataset_name, progress=not args.no_progress)
        print_scan(report)
        {"validate": cmd_validate, "audit": cmd_audit, "split": cmd_split}[args.command](report, args)
    except (ValueError, DataSourceError, OSError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
