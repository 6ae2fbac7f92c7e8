"""Load a labelled image dataset from the Hugging Face Hub into ImageRecords.

Hub datasets have no files to re-read later, so each record carries its
decoded PIL image. Images are decoded here, one by one, with the same
load_rgb_image gate as local folders, so a broken example is skipped and
reported instead of failing the whole load (or, worse, a training epoch).
"""

from __future__ import annotations

from tqdm import tqdm

from melanoma_screen.images import load_rgb_image
from .folder import LABELS, ImageRecord, ScanReport, count_labels


class DataSourceError(RuntimeError):
    """The dataset could not be loaded at all; the message says what to do instead."""


def _looks_offline(error: BaseException) -> bool:
    # datasets wraps hub errors in ConnectionError; huggingface_hub raises its own
    # OfflineModeIsEnabled / LocalEntryNotFoundError. Walk the cause chain for either.
    while error is not None:
        if isinstance(error, ConnectionError) or type(error).__name__ in (
            "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectTimeout", "ConnectError",
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def _open_dataset(dataset_name: str, cache_dir=None):
    try:
        import datasets  # imported here: it is slow to import and only this path needs it
        return datasets.load_dataset(dataset_name, cache_dir=cache_dir)
    except Exception as error:
        if _looks_offline(error):
            message = (
                f"Could not load dataset '{dataset_name}' from the Hugging Face Hub (offline or unreachable); "
                "download it or pass --data-dir with a local image folder."
            )
        elif type(error).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError"):
            message = (
                f"Dataset '{dataset_name}' was not found on the Hugging Face Hub (check the name, or log in "
                "if it is private or gated); or pass --data-dir with a local image folder."
            )
        else:
            message = f"Could not load dataset '{dataset_name}' ({type(error).__name__}: {error})."
        raise DataSourceError(message) from error


def _image_column(features) -> str:
    from datasets import Image

    if "image" in features:
        return "image"
    for name, feature in features.items():
        if isinstance(feature, Image):
            return name
    raise DataSourceError(f"The dataset has no image column (columns: {', '.join(features)}).")


def _label_mapper(feature):
    """A function from the dataset's label value to our class id (or None when it has none)."""
    from datasets import ClassLabel

    def by_name(name):
        name = str(name).strip().lower()
        if name not in LABELS:
            raise DataSourceError(f"The dataset's label '{name}' is not one of {', '.join(LABELS)}.")
        return LABELS.index(name)

    if isinstance(feature, ClassLabel):
        ids = [by_name(name) for name in feature.names]  # checked up front, not per example
        missing = [name for index, name in enumerate(LABELS) if index not in ids]
        if missing:
            raise DataSourceError(f"The dataset's labels ({', '.join(feature.names)}) have no {' or '.join(missing)} class.")
        return lambda value: None if value is None or value < 0 else ids[value]
    if getattr(feature, "dtype", None) == "string":
        return lambda value: None if value is None else by_name(value)
    # Bare integers carry no names; the only sensible reading is our own class ids.
    return lambda value: value if value in range(len(LABELS)) else None


def load_hub_dataset(dataset_name: str, progress: bool = True, splits=("train", "test"),
                     cache_dir=None) -> ScanReport:
    """Every decodable example of the dataset's train/test splits, with the rest reported as skipped.

    Labels are mapped by name (case-insensitive) from the dataset's ClassLabel names to LABELS.
    """
    from datasets import Image

    dataset = _open_dataset(dataset_name, cache_dir)
    if "train" not in dataset:
        raise DataSourceError(f"Dataset '{dataset_name}' has no 'train' split (it has: {', '.join(dataset)}).")

    records, skipped, found_splits = [], [], []
    for split in splits:
        if split not in dataset:
            continue
        found_splits.append(split)
        part = dataset[split]
        image_column = _image_column(part.features)
        if "label" not in part.features:
            raise DataSourceError(f"The dataset has no 'label' column (columns: {', '.join(part.features)}).")
        to_class_id = _label_mapper(part.features["label"])
        # Undecoded, so a broken example raises here in our loop, where it can be skipped.
        part = part.cast_column(image_column, Image(decode=False))
        for index, example in enumerate(tqdm(part, desc=f"Decoding {split}", unit="img", disable=not progress)):
            path = f"hub://{dataset_name}/{split}/{index}"
            label = to_class_id(example["label"])
            stored = example[image_column] or {}
            try:
                if label is None:
                    raise ValueError("This example has no label.")
                image = load_rgb_image(stored.get("bytes") or stored.get("path"))
            except Exception as error:
                label_name = LABELS[label] if label is not None else None
                skipped.append({"path": path, "split": split, "label": label_name, "reason": str(error)})
                continue
            records.append(ImageRecord(path=path, label=label, split=split, image=image))

    return ScanReport(records=records, skipped=skipped, counts=count_labels(records, found_splits))
