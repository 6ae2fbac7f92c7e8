"""Data preparation for the melanoma screen: find valid images, audit duplicates, split and balance.

    report = scan_image_folder("data/melanoma_cancer_dataset")     # or load_hub_dataset("user/name")
    audit = audit_duplicates(report.records)                       # exact + flipped/rotated copies
    train_pool = [r for r in report.records if r.split == "train" and r.path not in leaked_paths(audit)]
    train, val = train_val_split(train_pool, groups=group_ids(train_pool, audit))
    train, class_weights, counts = balance(train, "class_weights")

On the Kaggle melanoma dataset (9,605 train + 1,000 test images) the audit finds
22 exact-duplicate groups (14 within train, 1 within test, 7 across the split)
and 80 near-duplicate groups (65 within train, 15 across the split): 23 test
images have a copy in train. The command line (`python -m data_prep --help`)
runs the same steps and writes JSON reports.
"""

from .audit import (DEFAULT_HASH_DISTANCE, DEFAULT_MIN_DETAIL_CORRELATION, audit_duplicates,
                    leaked_paths)
from .folder import LABELS, ImageRecord, ScanReport, scan_image_folder
from .hub import DataSourceError, load_hub_dataset
from .settings import SplitSettings, add_split_arguments
from .sources import load_source, scan_label_folder, source_counts, to_dataset, training_data
from .split import (balance, class_counts, duplicates_to_drop, group_ids, sample_weights, source_class_groups, train_val_split,
                    weight_summary)

__all__ = [
    "LABELS", "ImageRecord", "ScanReport", "DataSourceError",
    "scan_image_folder", "load_hub_dataset", "load_source",
    "audit_duplicates", "leaked_paths", "DEFAULT_HASH_DISTANCE", "DEFAULT_MIN_DETAIL_CORRELATION",
    "SplitSettings", "add_split_arguments", "training_data", "scan_label_folder", "source_counts", "to_dataset",
    "group_ids", "train_val_split", "balance", "class_counts", "duplicates_to_drop", "sample_weights", "source_class_groups", "weight_summary",
]
