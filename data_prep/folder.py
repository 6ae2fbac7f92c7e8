"""Find the labelled images of a dataset and keep only the ones that decode.

A dataset on disk is laid out as {split}/{label}/*, e.g. train/benign/x.jpg.
Every file is decoded with melanoma_screen.images.load_rgb_image, the same
gate the app puts in front of uploads, so a file that the app would refuse
never reaches training either. Files that fail are not fatal: they are listed
in ScanReport.skipped with the reason a person can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from melanoma_screen.images import ImageLoadError, load_rgb_image
from melanoma_screen.labels import CLASS_NAMES

# The position in this tuple is an image's class id, the order a new model's config is given.
LABELS = CLASS_NAMES
# Beside the class folders, a table of each file's diagnosis and acquisition (data_prep.sources.read_labels_csv).
LABELS_CSV = "labels.csv"


@dataclass
class ImageRecord:
    path: str  # absolute file path, or "hub://<dataset>/<split>/<index>" for hub datasets
    label: int  # index into LABELS
    split: str  # the split the image came from ("train" or "test"), not the train/validation split we make
    image: Any = None  # decoded PIL image for hub datasets, which have no file to re-read; None for files
    source: str = ""  # which dataset the image came from, when several are combined for training
    # The diagnosis (HAM10000's dx names: nv, bkl, df, vasc, mel, or derm7pt's own), where a labels.csv
    # gives one; "" where only the folder's benign/malignant is known (the 10k set).
    dx: str = ""

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


@dataclass
class ScanReport:
    records: list[ImageRecord]  # valid images only
    skipped: list[dict]  # {"path", "split", "label", "reason"} for everything that was not used
    counts: dict = field(default_factory=dict)  # {split: {label name: n valid images}}

    def to_dict(self, include_records: bool = False) -> dict:
        result = {
            "n_images": len(self.records),
            "counts": self.counts,
            "n_skipped": len(self.skipped),
            "skipped": self.skipped,
        }
        if include_records:
            result["records"] = [{"path": r.path, "label": r.label, "split": r.split} for r in self.records]
        return result


def count_labels(records: list[ImageRecord], splits) -> dict:
    counts = {split: {name: 0 for name in LABELS} for split in splits}
    for record in records:
        counts.setdefault(record.split, {name: 0 for name in LABELS})[record.label_name] += 1
    return counts


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _find_child(directory: Path, name: str) -> Path | None:
    # Case-insensitive so "Train/Benign" from a Windows zip works like "train/benign".
    for child in sorted(directory.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def _files_under(directory: Path) -> list[Path]:
    # Recursive, so images kept in sub-folders of a class folder still count; hidden
    # files and folders (.DS_Store, .ipynb_checkpoints) are never data.
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        files.extend(Path(root) / name for name in sorted(names) if not _is_hidden(name))
    return files


def _class_folders(split_dir: Path, require_every_class: bool) -> list[Path | None]:
    """The folder of each class in LABELS order (None for a missing one), mapped by name, case-insensitively.

    A ValueError for a folder that is no class, and for a missing class when
    require_every_class: either would train a model on something else than
    asked for, silently. An unknown folder ("nevus", "melanoma") is a class the
    model cannot have; a train split without a class teaches nothing about it.
    A test or external set may hold one class only (a set of melanomas).
    """
    folders = {child.name.lower(): child for child in sorted(split_dir.iterdir())
               if child.is_dir() and not _is_hidden(child.name)}
    unknown = sorted(folders[name].name for name in folders if name not in LABELS)
    missing = [name for name in LABELS if name not in folders] if require_every_class else []
    if unknown or missing:
        problems = ([f"unknown class folder(s) {', '.join(unknown)}"] if unknown else []) + \
                   ([f"no {' or '.join(missing)} folder"] if missing else [])
        raise ValueError(f"{split_dir} has {' and '.join(problems)}: the class folders must be exactly "
                         f"{', '.join(LABELS)} (any case), the model's classes.")
    return [folders.get(name) for name in LABELS]


def scan_image_folder(data_dir, splits=("train", "test"), progress: bool = True) -> ScanReport:
    """Every decodable image under data_dir/{split}/{label}/, with the rest reported as skipped.

    A missing split folder just leaves that split out, except "train": without
    it there is nothing to learn from, so that is a ValueError. So is a folder
    that is not one of LABELS, and a train split without one of them.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise ValueError(f"Data folder {data_dir} does not exist.")

    candidates: list[tuple[Path, str, int]] = []  # (file, split, label id)
    skipped: list[dict] = []
    found_splits = []
    for split in splits:
        split_dir = _find_child(data_dir, split)
        if split_dir is None:
            if split == "train":
                raise ValueError(
                    f"No 'train' folder in {data_dir}; expected {data_dir}/train/benign/*.jpg "
                    f"and {data_dir}/train/malignant/*.jpg."
                )
            continue
        found_splits.append(split)
        for label, class_dir in enumerate(_class_folders(split_dir, require_every_class=split == "train")):
            if class_dir is not None:
                candidates.extend((path, split, label) for path in _files_under(class_dir))
        for child in sorted(split_dir.iterdir()):
            if not child.is_dir() and not _is_hidden(child.name) and child.name != LABELS_CSV:
                # Reported rather than fatal: a stray README or labels.csv beside the class folders is common.
                skipped.append({
                    "path": str(child), "split": split, "label": None,
                    "reason": f"This file is not inside a class folder ({' or '.join(LABELS)}), so it was not used.",
                })

    records = []
    for path, split, label in tqdm(candidates, desc="Checking images", unit="img", disable=not progress):
        try:
            load_rgb_image(path)
        except ImageLoadError as error:
            skipped.append({"path": str(path), "split": split, "label": LABELS[label], "reason": str(error)})
            continue
        except Exception as error:  # one odd file must not end a scan of thousands
            reason = f"This file could not be read as an image ({type(error).__name__}: {error})."
            skipped.append({"path": str(path), "split": split, "label": LABELS[label], "reason": reason})
            continue
        records.append(ImageRecord(path=str(path), label=label, split=split))

    return ScanReport(records=records, skipped=skipped, counts=count_labels(records, found_splits))
