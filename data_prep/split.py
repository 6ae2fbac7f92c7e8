"""Carve a validation set out of train, and balance the classes used for training.

The test split is never touched here: it is whatever the dataset calls "test".
Validation is taken from train, stratified by label so both sides keep the
class ratio, and group-aware so the copies the audit found stay together (a
validation image whose flipped twin is in training would flatter the model).
"""

from __future__ import annotations

import random
from collections import Counter

from melanoma_screen.labels import benign_diagnosis_group

from .audit import UnionFind
from .folder import LABELS, ImageRecord


def group_ids(records: list[ImageRecord], audit_report: dict) -> list[int]:
    """A group id per record: records in one exact or near-duplicate group share it, all others get their own."""
    index_of = {record.path: i for i, record in enumerate(records)}
    union = UnionFind(len(records))
    for group in audit_report["exact_duplicate_groups"] + audit_report["near_duplicate_groups"]:
        members = [index_of[path] for path in group["paths"] if path in index_of]
        for member in members[1:]:
            union.union(members[0], member)
    dense: dict[int, int] = {}
    return [dense.setdefault(union.find(i), len(dense)) for i in range(len(records))]


def train_val_split(records: list[ImageRecord], val_fraction: float = 0.1, seed: int = 42,
                    groups: list[int] | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, validation): stratified by source and label, whole groups on one side, the same for the same seed.

    Each class sends round(val_fraction * its size) images to validation, at least one when
    it has two or more, so even a 10-image toy dataset validates on both classes. Groups are
    dealt out whole, so with large groups the fraction is met as closely as they allow.
    """
    if not records:
        raise ValueError("There are no training images to split.")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, not {val_fraction}.")
    if groups is None:
        groups = list(range(len(records)))
    if len(groups) != len(records):
        raise ValueError(f"groups has {len(groups)} entries for {len(records)} records.")

    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)

    # A group belongs to the source and class most of its images have
    # (duplicates with conflicting labels are rare, and the audit reports
    # them). Stratifying by source as well gives every training source its
    # share of validation, so a source with one class cannot hide there.
    by_class: dict[tuple[str, int], list[list[int]]] = {}
    for m in members.values():
        majority = Counter((records[i].source, records[i].label) for i in m).most_common(1)[0][0]
        by_class.setdefault(majority, []).append(m)
    by_class = dict(sorted(by_class.items()))

    rng = random.Random(seed)
    in_validation = [False] * len(records)
    for class_groups in by_class.values():
        # Sorted by first path before shuffling, so the split depends on the seed, not on scan order.
        class_groups.sort(key=lambda m: min(records[i].path for i in m))
        rng.shuffle(class_groups)
        n_class = sum(len(m) for m in class_groups)
        target = round(val_fraction * n_class)
        if n_class >= 2:
            target = min(max(target, 1), n_class - 1)  # one image each side at least
        taken = 0
        for group in class_groups:
            if taken + len(group) <= target:
                taken += len(group)
                for i in group:
                    in_validation[i] = True
        if taken == 0 and target > 0:
            # Every group was too big to fit: take the smallest one that still leaves training some of this class.
            smallest = min(class_groups, key=len)
            if len(smallest) < n_class:
                for i in smallest:
                    in_validation[i] = True

    train = [record for record, is_val in zip(records, in_validation) if not is_val]
    validation = [record for record, is_val in zip(records, in_validation) if is_val]
    return train, validation


def class_counts(records: list[ImageRecord]) -> dict:
    counts = {name: 0 for name in LABELS}
    for record in records:
        counts[LABELS[record.label]] += 1
    return counts


def balance(records: list[ImageRecord], method: str = "none",
            seed: int = 42) -> tuple[list[ImageRecord], list[float] | None, dict]:
    """(records to train on, class weights or None, class counts of those records).

    "undersample" drops random images of the larger class down to the smaller one's size;
    "class_weights" keeps everything and weights each class by inverse frequency, scaled
    so the weights average 1 (the loss keeps its usual magnitude); "none" changes nothing.
    """
    counts = class_counts(records)
    if method in ("none", "source_class"):  # source_class weighs each image instead: sample_weights
        return list(records), None, counts
    if method not in ("undersample", "class_weights"):
        raise ValueError(f"balance method must be none, undersample, class_weights or source_class, not {method!r}.")
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"Cannot balance classes: there are no {' or '.join(missing)} training images.")

    if method == "class_weights":
        inverse = [1.0 / counts[name] for name in LABELS]
        mean = sum(inverse) / len(inverse)
        return list(records), [w / mean for w in inverse], counts

    smallest = min(counts.values())
    rng = random.Random(seed)
    keep = set()
    for label in range(len(LABELS)):
        indices = [i for i, record in enumerate(records) if record.label == label]
        keep.update(rng.sample(indices, smallest))
    kept = [record for i, record in enumerate(records) if i in keep]  # original order, for readability
    return kept, None, class_counts(kept)


DROPPED_TEST_COPY = "copy of a test image"
DROPPED_TRAIN_REPEAT = "repeat of another training image, which is kept"


def duplicates_to_drop(audit_report: dict, drop_duplicates: bool, extra_paths=frozenset()) -> dict[str, str]:
    """Training images to leave out, each with the reason, with images from extra training folders deduplicated always.

    An extra folder (another dataset added to training) may hold copies of the
    main dataset's images: every extra image that copies a test image is
    dropped, and of a group of training copies the main dataset's copy is the
    one kept. With drop_duplicates, the main dataset is deduplicated as
    leaked_paths does: training copies of test images go, and one image of
    each group within train stays.
    """
    dropped = {}
    for group in audit_report["exact_duplicate_groups"] + audit_report["near_duplicate_groups"]:
        train_paths = sorted(path for path, split in zip(group["paths"], group["splits"]) if split == "train")
        if not train_paths:
            continue
        extras = [path for path in train_paths if path in extra_paths]
        if group["cross_split"]:
            dropped.update((path, DROPPED_TEST_COPY) for path in (train_paths if drop_duplicates else extras))
            continue
        kept = next((path for path in train_paths if path not in extra_paths), train_paths[0])
        dropped.update((path, DROPPED_TRAIN_REPEAT) for path in (train_paths if drop_duplicates else extras)
                       if path != kept)
    return dropped


def balance_sources(records: list[ImageRecord]) -> list[str]:
    """Each record's source for balancing: a source with one class only is folded into the largest source with both.

    Balanced on its own, a benign-only source would still teach "this camera, benign".
    """
    labels_of: dict[str, set] = {}
    for record in records:
        labels_of.setdefault(record.source, set()).add(record.label)
    sizes = Counter(record.source for record in records)
    both = [source for source, labels in labels_of.items() if len(labels) > 1]
    if not both:
        return [record.source for record in records]
    host = max(both, key=lambda source: sizes[source])
    return [record.source if record.source in both else host for record in records]


# A benign diagnosis group smaller than this in one source stays in that source's benign group: a
# group DRO weight over a handful of images follows their noise, not the look-alike they stand for.
MIN_DIAGNOSIS_GROUP = 20


def source_class_groups(records: list[ImageRecord], by_diagnosis: bool = False) -> tuple[list[int], list[str]]:
    """(group id per record, group names): the (balancing source, class) groups that --group-dro weighs.

    by_diagnosis: each source's benign images are split further by their diagnosis group where labels.csv
    gives one (keratoses, dermatofibromas and vascular lesions apart from nevi), so that the worst group
    can be a look-alike and not only a source's class as a whole.
    """
    keys = [f"{source}/{LABELS[record.label]}" for source, record in zip(balance_sources(records), records)]
    if by_diagnosis:
        groups = [benign_diagnosis_group(record.dx) if record.label == 0 else None for record in records]
        detailed = [f"{key}/{group}" if group else key for key, group in zip(keys, groups)]
        sizes = Counter(detailed)
        keys = [fine if sizes[fine] >= MIN_DIAGNOSIS_GROUP else coarse for fine, coarse in zip(detailed, keys)]
    names = sorted(set(keys))
    return [names.index(key) for key in keys], names


def sample_weights(records: list[ImageRecord], source_class: bool = False, diagnoses: bool = False,
                   max_weight: float = 10.0) -> list[float] | None:
    """A loss weight per training image (mean 1), or None when neither balance is asked for.

    source_class: inside each source both classes carry the same total weight,
    so P(label | source) is 1/2 everywhere and a source's acquisition cues stop
    predicting the label. A source that brings one class only (isic2017 once
    its melanomas are dropped as copies of the 10k set's) is balanced together
    with the largest source that has both, or it would teach "this camera,
    benign". Where the minority class would weigh more than max_weight per
    image (17 melanomas among 3,157 MoleMax images), it is capped there and the
    majority class shrinks to match: that source then weighs less, but stays
    balanced.

    diagnoses: inside each source's benign images with a known diagnosis, each
    diagnosis is weighted by sqrt(known benign / its count), the square root
    because a 49-image class repeated 100 times is memorised, not learnt; the
    source's benign total is kept, so the class balance holds.
    """
    if not (source_class or diagnoses) or not records:
        return None
    groups = balance_sources(records) if source_class else [record.source for record in records]
    weights = [1.0] * len(records)
    if source_class:
        by_group = Counter(groups)
        by_group_class = Counter(zip(groups, (record.label for record in records)))
        per_image = {}
        for group, n_group in by_group.items():
            counts = [by_group_class[(group, label)] for label in range(len(LABELS)) if by_group_class[(group, label)]]
            share = min(n_group / len(counts), min(counts) * max_weight)  # each class's total weight
            for label in range(len(LABELS)):
                if by_group_class[(group, label)]:
                    per_image[(group, label)] = share / by_group_class[(group, label)]
        weights = [per_image[(group, record.label)] for group, record in zip(groups, records)]
    if diagnoses:
        known: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            if record.label == 0 and record.dx:
                known.setdefault(groups[i], []).append(i)
        for members in known.values():
            by_dx = Counter(records[i].dx for i in members)
            before = sum(weights[i] for i in members)
            for i in members:
                weights[i] *= (len(members) / by_dx[records[i].dx]) ** 0.5
            after = sum(weights[i] for i in members)
            for i in members:
                weights[i] *= before / after
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


def weight_summary(records: list[ImageRecord], weights: list[float] | None) -> dict:
    """{source: {label: {"images", "total_weight"}}} and per diagnosis: what each group weighs in training."""
    weights = weights or [1.0] * len(records)
    by_group: dict = {}
    for record, weight in zip(records, weights):
        for key in (record.source, f"dx={record.dx}" if record.dx else None):
            if key is None:
                continue
            entry = by_group.setdefault(key, {}).setdefault(record.label_name, {"images": 0, "total_weight": 0.0})
            entry["images"] += 1
            entry["total_weight"] = round(entry["total_weight"] + weight, 3)
    return by_group
