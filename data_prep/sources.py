"""One place that turns data folders into train / validation / test / external records.

train_vit.py (fine-tuning) and pretrain_mae.py (self-supervised pretraining)
both call training_data(), so they see the same images: the main dataset's
train split plus any extra training folders, audited together for duplicates,
with copies of test images dropped, and validation carved from every source.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path

from .audit import audit_duplicates
from .folder import LABELS, LABELS_CSV, ScanReport, scan_image_folder
from .hub import load_hub_dataset
from .settings import SplitSettings
from .split import balance, duplicates_to_drop, group_ids, sample_weights, train_val_split, weight_summary

logger = logging.getLogger("data_prep")


def load_source(data_dir=None, dataset_name=None, progress: bool = True) -> ScanReport:
    """Scan a local image folder, or load a Hugging Face dataset when no folder is given."""
    # The one check of the choice every command offers (train_vit.py, pretrain_mae.py, python -m data_prep).
    if bool(data_dir) == bool(dataset_name):
        raise ValueError("Give exactly one of --data-dir or --dataset-name.")
    if data_dir:
        return scan_image_folder(data_dir, progress=progress)
    return load_hub_dataset(dataset_name, progress=progress)


def scan_label_folder(folder, split: str, progress: bool = True) -> ScanReport:
    """A {benign,malignant}/* folder (an extra training set or an external one) read as one split."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{folder} is not a folder with benign/ and malignant/ inside.")
    scan = scan_image_folder(path.parent, splits=(path.name,), progress=progress)
    if not scan.records:
        # A wrong folder (its parent, or one without class folders) would otherwise add nothing to
        # training, or be scored as an empty external set at the very end of a long run.
        raise ValueError(f"{folder} holds no readable images in benign/ or malignant/ folders.")
    described = read_labels_csv(path)
    for record in scan.records:
        record.split, record.source = split, path.name
        row = described.get(Path(record.path).relative_to(path).as_posix())
        if row:
            record.dx = row.get("dx") or row.get("diagnosis") or ""
            # An acquisition inside the folder (HAM10000's vidir_molemax, vidir_modern, vienna_dias)
            # has a class balance of its own, so it is a source of its own for balancing and selection.
            if row.get("source"):
                record.source = f"{path.name}/{row['source']}"
    for item in scan.skipped:
        item["split"] = split
    # Keyed by the split it is read as, like every other ScanReport, not by the folder's name.
    scan.counts = {split: next(iter(scan.counts.values()))}
    return scan


def read_labels_csv(folder: Path) -> dict[str, dict]:
    """{file path relative to folder: its row} from folder/labels.csv (a `file` column), or {} without one.

    isic2017's and ham10000's labels.csv give each file's diagnosis as `dx`, derm7pt's as
    `diagnosis`; ham10000's also its acquisition (`source`), age, sex and body site.
    """
    table = folder / LABELS_CSV
    if not table.is_file():
        return {}
    with table.open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle) if row.get("file")}


def diagnosis_counts(records) -> dict:
    """{source: {label: {dx: n}}}, with "unknown" where no diagnosis is given."""
    counts: dict = {}
    for record in records:
        by_dx = counts.setdefault(record.source, {}).setdefault(record.label_name, {})
        by_dx[record.dx or "unknown"] = by_dx.get(record.dx or "unknown", 0) + 1
    return counts


def source_counts(**splits) -> dict:
    """{source: {split: {label: n}}} for the given named record lists, so a report can list every source."""
    counts: dict = {}
    for split, records in splits.items():
        for record in records:
            by_label = counts.setdefault(record.source, {}).setdefault(split, {name: 0 for name in LABELS})
            by_label[record.label_name] += 1
    return counts


def training_data(settings: SplitSettings, external_dirs=(), progress: bool = True) -> dict:
    """Records for training, validation, test and external evaluation, with what was dropped and why.

    The duplicate audit always runs over the main dataset and the extra folders
    together (or is read from settings.audit_file): even when nothing is dropped,
    it keeps each group of copies on one side of the validation split.
    """
    data_dir, dataset_name, audit_file = settings.data_dir, settings.dataset_name, settings.audit_file
    extra_train_dirs, seed = settings.extra_train_dir or (), settings.seed
    scan = load_source(data_dir, dataset_name, progress=progress)
    main_source = Path(data_dir).name if data_dir else dataset_name
    for record in scan.records:
        record.source = main_source
    extra_scans = [scan_label_folder(folder, "train", progress=progress) for folder in extra_train_dirs or ()]
    extra_paths = {record.path for extra in extra_scans for record in extra.records}
    records = scan.records + [record for extra in extra_scans for record in extra.records]
    skipped = scan.skipped + [item for extra in extra_scans for item in extra.skipped]

    if audit_file and Path(audit_file).exists():
        audit = json.loads(Path(audit_file).read_text())
        audited = {path for group in audit["exact_duplicate_groups"] + audit["near_duplicate_groups"] for path in group["paths"]}
        if audited and not audited & {record.path for record in records}:
            raise ValueError(f"{audit_file} was made for other data: none of its paths are in these folders.")
        if audit.get("n_images", len(records)) != len(records):
            # An audit of the main dataset alone knows nothing of the extra folders' copies of its
            # test images: they would reach training unnoticed.
            raise ValueError(
                f"{audit_file} audited {audit['n_images']} images, but these folders hold {len(records)}: it was made "
                "for other data (an audit of --data-dir alone does not cover --extra-train-dir). "
                "Give a new --audit-file path to audit them together.")
    else:
        audit = audit_duplicates(records, progress=progress)
        if audit_file:
            Path(audit_file).parent.mkdir(parents=True, exist_ok=True)
            Path(audit_file).write_text(json.dumps(audit, indent=1))
    drop_reasons = duplicates_to_drop(audit, settings.drop_duplicates, extra_paths)
    dropped = set(drop_reasons)

    train_pool = [r for r in records if r.split == "train" and r.path not in dropped]
    held_out = [r for r in train_pool if r.source == settings.hold_out_source] if settings.hold_out_source else []
    if settings.hold_out_source and not held_out:
        raise ValueError(f"--hold-out-source {settings.hold_out_source}: no training image comes from it; the sources are "
                         + ", ".join(sorted({r.source for r in train_pool})) + ".")
    train_pool = [r for r in train_pool if r.source != settings.hold_out_source] if held_out else train_pool
    test_records = [r for r in records if r.split == "test"]
    # Duplicates of one image must sit on one side of the validation split,
    # or validation turns into a memory test and thresholds come out too rosy.
    groups = group_ids(train_pool, audit)
    train, validation = train_val_split(train_pool, val_fraction=settings.val_fraction, seed=seed, groups=groups)
    base_split = None
    if settings.keep_split_of:
        train, validation, base_split = keep_base_split(train_pool, groups, validation, settings.keep_split_of, progress)
    if settings.max_train_samples:
        train = random.Random(seed).sample(train, min(settings.max_train_samples, len(train)))
    train, class_weights, class_counts_used = balance(train, method=settings.balance, seed=seed)
    weights = sample_weights(train, source_class=settings.balance == "source_class", diagnoses=settings.balance_diagnoses,
                             max_weight=settings.max_sample_weight)
    external = {Path(folder).name: scan_label_folder(folder, "external", progress=progress).records for folder in external_dirs or ()}
    if held_out:
        external[f"held-out {settings.hold_out_source}"] = held_out
    return dict(
        scan=scan, skipped=skipped, audit=audit, dropped=sorted(dropped), drop_reasons=drop_reasons, extra_dropped=len(dropped & extra_paths),
        extra_counts={Path(folder).name: extra.counts for folder, extra in zip(extra_train_dirs or (), extra_scans)},
        train=train, validation=validation, test=test_records, external=external,
        class_weights=class_weights, class_counts=class_counts_used,
        sample_weights=weights, weight_summary=weight_summary(train, weights) if weights else None,
        diagnoses=diagnosis_counts(train + validation),
        sources=source_counts(train=train, validation=validation, test=test_records), base_split=base_split,
    )


def keep_base_split(pool, groups, validation, base_settings: str, progress: bool = True):
    """(train, validation, summary): the fresh split, with the base model's own split kept where it had one.

    The split deals one seeded stream over the (source, class) strata, so a new source
    redraws every other source's validation images: about nine in ten would be images
    the base model trained on, and a fine-tune would choose its checkpoint and fit its
    thresholds on them. Here a duplicate group with an image in the base's validation
    goes to validation, one with an image the base trained on goes to training, and
    the rest (new sources) keep the fresh draw.
    """
    base = training_data(SplitSettings.from_stored(json.loads(base_settings)), progress=progress)
    base_validation = {record.path for record in base["validation"]}
    base_training = {record.path for record in base["train"]}
    fresh_validation = {record.path for record in validation}
    members: dict[int, list] = {}
    for record, group in zip(pool, groups):
        members.setdefault(group, []).append(record)
    in_validation = {}
    for group in members.values():
        paths = {record.path for record in group}
        if paths & base_validation:
            side = True
        elif paths & base_training:
            side = False
        else:
            side = bool(paths & fresh_validation)
        in_validation.update((path, side) for path in paths)
    kept_train = [record for record in pool if not in_validation[record.path]]
    kept_validation = [record for record in pool if in_validation[record.path]]
    summary = {"base_trained_on_fresh_validation": len(fresh_validation & base_training),
               "fresh_validation": len(fresh_validation),
               "validation_from_base": sum(record.path in base_validation for record in kept_validation),
               "validation_new": sum(record.path not in base_validation for record in kept_validation)}
    return kept_train, kept_validation, summary


def to_dataset(records, **columns):
    """A datasets.Dataset of (image, label, *columns) that decodes each image when read, for Trainer."""
    from datasets import Dataset, Image  # imported here: slow to import, and only training needs it

    images = [r.image if r.image is not None else r.path for r in records]
    dataset = Dataset.from_dict({"image": images, "label": [r.label for r in records], **columns})
    return dataset.cast_column("image", Image())
