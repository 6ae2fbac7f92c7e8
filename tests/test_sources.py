"""Training data from several sources: joint duplicate audit, what is dropped, the source-stratified split, resizing.

Real dermoscopy images from the shared 10k set, an extra training folder from
isic2017 and an external one from derm7pt, with copies planted on purpose.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATA
from data_prep import (ImageRecord, duplicates_to_drop, leaked_paths, scan_image_folder, scan_label_folder, source_counts,
                       train_val_split, training_data)
from data_prep.settings import SplitSettings
from data_prep.split import DROPPED_TRAIN_REPEAT


def shared_images(dataset: str, label: str, count: int, split: str | None = None) -> list[Path]:
    folder = SHARED_DATA / dataset / (split or "") / label
    if not folder.is_dir():
        pytest.skip(f"{folder} is not there")
    return sorted(folder.glob("*.jpg"))[:count]


def copy_into(paths, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(path, folder / path.name)) for path in paths]


def flipped_copy(source: Path, target: Path) -> Path:
    # Lossless, so the copy is the same picture mirrored: a near duplicate for the audit.
    Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    return target


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """A main dataset with copies inside it, an extra training folder with copies of main images, an external folder."""
    root = tmp_path_factory.mktemp("sources").resolve()
    main, extra, external = root / "tenk", root / "isic2017", root / "derm7pt"
    images = {(split, label): copy_into(shared_images("melanoma_cancer_dataset", label, 4, split), main / split / label)
              for split in ("train", "test") for label in ("benign", "malignant")}
    # Within the main dataset: a train copy of a test image, and a flipped repeat within train.
    main_test_copy = Path(shutil.copy(images["test", "malignant"][1], main / "train" / "malignant" / "zz_copy_of_test.jpg"))
    main_repeat = flipped_copy(images["train", "benign"][1], main / "train" / "benign" / "zz_repeat.png")

    isic = {label: copy_into(shared_images("isic2017", label, count), extra / label)
            for label, count in (("benign", 3), ("malignant", 2))}
    extra_copies = {
        "of_test": Path(shutil.copy(images["test", "benign"][0], extra / "benign" / "copy_of_test.jpg")),
        "of_train": flipped_copy(images["train", "malignant"][0], extra / "malignant" / "flipped_train.png"),
        # Two copies of one picture inside the extra folder: one of them stays.
        "within": Path(shutil.copy(isic["benign"][0], extra / "benign" / "zz_again.jpg")),
    }
    for label in ("benign", "malignant"):
        copy_into(shared_images("derm7pt", label, 2), external / label)
    return dict(root=root, main=main, extra=extra, external=external, images=images, isic=isic,
                extra_copies=extra_copies, main_test_copy=main_test_copy, main_repeat=main_repeat)


@pytest.fixture(scope="module")
def kept_duplicates(folders) -> dict:
    return training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]]),
                         external_dirs=[folders["external"]], progress=False)


@pytest.fixture(scope="module")
def dropped_duplicates(folders, kept_duplicates, tmp_path_factory) -> dict:
    audit_file = tmp_path_factory.mktemp("audit") / "joint.json"
    audit_file.write_text(json.dumps(kept_duplicates["audit"]))  # the same audit, read back from a file
    return training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]], audit_file=audit_file,
                         drop_duplicates=True), progress=False)


def paths(records) -> set[str]:
    return {record.path for record in records}


def test_the_joint_audit_finds_the_planted_copies(folders, kept_duplicates):
    groups = kept_duplicates["audit"]["exact_duplicate_groups"] + kept_duplicates["audit"]["near_duplicate_groups"]
    as_sets = [set(group["paths"]) for group in groups]
    images, copies = folders["images"], folders["extra_copies"]
    for pair in ({copies["of_test"], images["test", "benign"][0]}, {copies["of_train"], images["train", "malignant"][0]},
                 {copies["within"], folders["isic"]["benign"][0]}, {folders["main_test_copy"], images["test", "malignant"][1]},
                 {folders["main_repeat"], images["train", "benign"][1]}):
        assert {str(path) for path in pair} in as_sets, pair
    assert len(groups) == 5


def test_extra_copies_are_dropped_and_the_main_dataset_keeps_its_own(folders, kept_duplicates):
    copies = folders["extra_copies"]
    # Without --drop-duplicates the main dataset is left as it is; only the extra folder's copies go,
    # and of the two copies inside the extra folder the first (sorted) stays.
    assert set(kept_duplicates["dropped"]) == {str(copies["of_test"]), str(copies["of_train"]), str(copies["within"])}
    assert kept_duplicates["extra_dropped"] == 3
    used = paths(kept_duplicates["train"]) | paths(kept_duplicates["validation"])
    assert str(folders["isic"]["benign"][0]) in used
    assert {str(folders["main_test_copy"]), str(folders["main_repeat"]), str(folders["images"]["train", "malignant"][0])} <= used
    assert len(used) == 8 + 2 + 5  # main train, its two planted copies, the extra folder's own images
    assert paths(kept_duplicates["test"]) == {str(p) for key, ps in folders["images"].items() if key[0] == "test" for p in ps}


def test_drop_duplicates_also_dedups_the_main_dataset_as_leaked_paths_does(folders, kept_duplicates, dropped_duplicates):
    copies = folders["extra_copies"]
    assert set(dropped_duplicates["dropped"]) == set(kept_duplicates["dropped"]) | {
        str(folders["main_test_copy"]), str(folders["main_repeat"])}
    assert dropped_duplicates["extra_dropped"] == 3
    # The main dataset's copy of the picture the extra folder repeats is the one kept.
    used = paths(dropped_duplicates["train"]) | paths(dropped_duplicates["validation"])
    assert str(folders["images"]["train", "malignant"][0]) in used and str(copies["of_train"]) not in used
    # With no extra folder, the rule is exactly leaked_paths.
    audit = kept_duplicates["audit"]
    assert set(duplicates_to_drop(audit, True)) == leaked_paths(audit)
    assert duplicates_to_drop(audit, False) == {}
    reasons = dropped_duplicates["drop_reasons"]
    assert set(reasons) == set(dropped_duplicates["dropped"])
    assert reasons[str(folders["main_test_copy"])] == reasons[str(copies["of_test"])] == "copy of a test image"
    assert reasons[str(folders["main_repeat"])].startswith("repeat of another training image")


def test_a_duplicate_group_stays_on_one_side_of_the_validation_split(folders, kept_duplicates):
    side = {record.path: "train" for record in kept_duplicates["train"]} | \
        {record.path: "validation" for record in kept_duplicates["validation"]}
    pair = {str(folders["main_repeat"]), str(folders["images"]["train", "benign"][1])}
    assert len({side[path] for path in pair}) == 1


def test_records_carry_their_source_and_every_source_is_counted(folders, kept_duplicates):
    main, extra = folders["main"].name, folders["extra"].name
    for record in kept_duplicates["train"] + kept_duplicates["validation"]:
        assert record.source == (extra if record.path.startswith(f"{folders['extra']}/") else main)
        assert record.split == "train"
    assert {record.source for record in kept_duplicates["test"]} == {main}
    # 4 + 1 benign and 4 + 1 malignant in main train; 3 benign and 2 malignant left in the extra folder.
    assert kept_duplicates["sources"] == {
        main: {"train": {"benign": 4, "malignant": 4}, "validation": {"benign": 1, "malignant": 1},
               "test": {"benign": 4, "malignant": 4}},
        extra: {"train": {"benign": 2, "malignant": 1}, "validation": {"benign": 1, "malignant": 1}},
    }
    assert kept_duplicates["extra_counts"] == {extra: {"train": {"benign": 5, "malignant": 3}}}
    external = kept_duplicates["external"]
    assert list(external) == ["derm7pt"] and len(external["derm7pt"]) == 4
    assert {(r.split, r.source) for r in external["derm7pt"]} == {("external", "derm7pt")}
    assert Counter(r.label for r in external["derm7pt"]) == {0: 2, 1: 2}


def test_the_same_call_gives_the_same_split(folders, kept_duplicates):
    again = training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]]), progress=False)
    assert paths(again["validation"]) == paths(kept_duplicates["validation"])
    assert paths(again["train"]) == paths(kept_duplicates["train"])


def test_audit_file_is_written_then_reused_and_refused_for_other_data(folders, kept_duplicates, tmp_path):
    audit_file = tmp_path / "audit.json"
    first = training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]], audit_file=audit_file), progress=False)
    assert json.loads(audit_file.read_text())["summary"] == first["audit"]["summary"] == kept_duplicates["audit"]["summary"]
    reused = training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]], audit_file=audit_file), progress=False)
    assert reused["dropped"] == first["dropped"] and paths(reused["validation"]) == paths(first["validation"])

    # An audit of the main dataset alone does not know the extra folder's copies of test images.
    main_only = tmp_path / "main_only.json"
    training_data(SplitSettings(data_dir=folders["main"], audit_file=main_only), progress=False)
    with pytest.raises(ValueError, match="audited 18 images, but these folders hold 26"):
        training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]], audit_file=main_only), progress=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**kept_duplicates["audit"], "exact_duplicate_groups": [
        {"paths": ["/elsewhere/a.jpg", "/elsewhere/b.jpg"], "splits": ["train", "train"], "cross_split": False}],
        "near_duplicate_groups": []}))
    with pytest.raises(ValueError, match="made for other data"):
        training_data(SplitSettings(data_dir=folders["main"], extra_train_dir=[folders["extra"]], audit_file=other), progress=False)


def test_scan_label_folder_reads_one_folder_as_one_split(folders, tmp_path):
    scan = scan_label_folder(folders["external"], "external", progress=False)
    assert scan.counts == {"external": {"benign": 2, "malignant": 2}}
    assert {(r.split, r.source) for r in scan.records} == {("external", "derm7pt")}
    assert {Path(r.path).parent.name for r in scan.records if r.label == 1} == {"malignant"}
    with pytest.raises(ValueError, match="not a folder"):
        scan_label_folder(tmp_path / "missing", "train", progress=False)
    # A folder without class folders, or its parent, is refused instead of adding nothing.
    (tmp_path / "flat").mkdir()
    shutil.copy(folders["isic"]["benign"][0], tmp_path / "flat" / "a.jpg")
    for label in ("benign", "malignant"):
        (tmp_path / "empty" / label).mkdir(parents=True)
    for wrong in (tmp_path / "flat", tmp_path / "empty"):
        with pytest.raises(ValueError, match="no readable images"):
            scan_label_folder(wrong, "train", progress=False)
    # The parent's folders are datasets, not classes: named in the error.
    with pytest.raises(ValueError, match="unknown class folder.*derm7pt, isic2017, tenk"):
        scan_label_folder(folders["root"], "train", progress=False)


def test_source_counts_counts_every_source_and_split():
    def record(source, label, split="train"):
        return ImageRecord(path=f"/{source}/{label}.jpg", label=label, split=split, source=source)

    counts = source_counts(train=[record("a", 0), record("a", 0), record("b", 1)], validation=[record("a", 1)],
                           test=[record("a", 0, "test")])
    assert counts == {"a": {"train": {"benign": 2, "malignant": 0}, "validation": {"benign": 0, "malignant": 1},
                            "test": {"benign": 1, "malignant": 0}},
                      "b": {"train": {"benign": 0, "malignant": 1}}}
    assert source_counts(train=[]) == {}


# ------------------------------------------------------------------ duplicates_to_drop on hand-made groups


def group(*members) -> dict:
    """members: (path, split) pairs, as the audit writes a group."""
    splits = [split for _, split in members]
    return {"paths": [path for path, _ in members], "splits": splits, "cross_split": len(set(splits)) > 1}


def test_duplicates_to_drop_rules():
    # The extra folder's paths sort before the main dataset's, so "keep the first" alone would keep extras.
    extra = {f"/extra/e{i}.jpg" for i in range(1, 6)}
    audit = {"exact_duplicate_groups": [group(("/extra/e1.jpg", "train"), ("/main/test/t1.jpg", "test"))],
             "near_duplicate_groups": [
                 group(("/extra/e2.jpg", "train"), ("/main/test/t2.jpg", "test"), ("/main/train/a.jpg", "train")),
                 group(("/extra/e3.jpg", "train"), ("/main/train/z.jpg", "train")),  # the main copy stays
                 group(("/extra/e4.jpg", "train"), ("/extra/e5.jpg", "train")),  # extras only: the first stays
                 group(("/main/train/b.jpg", "train"), ("/main/train/c.jpg", "train")),
                 group(("/main/test/t3.jpg", "test"), ("/main/test/t4.jpg", "test")),  # test images are never dropped
             ]}
    assert duplicates_to_drop(audit, False, extra) == {
        "/extra/e1.jpg": "copy of a test image", "/extra/e2.jpg": "copy of a test image",
        "/extra/e3.jpg": DROPPED_TRAIN_REPEAT, "/extra/e5.jpg": DROPPED_TRAIN_REPEAT}
    assert set(duplicates_to_drop(audit, True, extra)) == {"/extra/e1.jpg", "/extra/e2.jpg", "/extra/e3.jpg",
                                                           "/extra/e5.jpg", "/main/train/a.jpg", "/main/train/c.jpg"}
    assert set(duplicates_to_drop(audit, True)) == leaked_paths(audit)


# ------------------------------------------------------------------ train_val_split by source and label


def label_only_split(records, val_fraction=0.1, seed=42, groups=None):
    """The split as it was before sources existed: stratified by label alone (a plain re-implementation)."""
    groups = list(range(len(records))) if groups is None else groups
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_label: dict[int, list[list[int]]] = {0: [], 1: []}
    for m in members.values():
        by_label[Counter(records[i].label for i in m).most_common(1)[0][0]].append(m)
    rng = random.Random(seed)
    in_validation = set()
    for label_groups in by_label.values():
        label_groups.sort(key=lambda m: min(records[i].path for i in m))
        rng.shuffle(label_groups)
        n = sum(map(len, label_groups))
        target = min(max(round(val_fraction * n), 1), n - 1) if n >= 2 else round(val_fraction * n)
        taken = 0
        for m in label_groups:
            if taken + len(m) <= target:
                taken += len(m)
                in_validation.update(m)
        if taken == 0 and target > 0:
            smallest = min(label_groups, key=len)
            if len(smallest) < n:
                in_validation.update(smallest)
    return ([r for i, r in enumerate(records) if i not in in_validation],
            [r for i, r in enumerate(records) if i in in_validation])


def synthetic(n_benign: int, n_malignant: int, source: str = "", prefix: str = "/d") -> list[ImageRecord]:
    labels = [0] * n_benign + [1] * n_malignant
    return [ImageRecord(path=f"{prefix}/train/{label}/{i:04d}.jpg", label=label, split="train", source=source)
            for i, label in enumerate(labels)]


def test_a_single_source_splits_exactly_as_before():
    # Fixed expectation, from the label-only split before sources existed.
    records = synthetic(12, 8)
    _, validation = train_val_split(records, val_fraction=0.2, seed=42)
    assert [Path(r.path).name for r in validation] == ["0005.jpg", "0007.jpg", "0015.jpg", "0017.jpg"]
    _, validation = train_val_split(records, val_fraction=0.2, seed=7)
    assert [Path(r.path).name for r in validation] == ["0007.jpg", "0011.jpg", "0013.jpg", "0014.jpg"]

    rng = random.Random(0)
    for trial in range(30):
        records = synthetic(rng.randint(1, 80), rng.randint(0, 60), source=rng.choice(["", "tenk"]))
        rng.shuffle(records)
        # Random duplicate groups, some of them with mixed labels.
        groups = [rng.randrange(max(1, len(records) * 3 // 4)) for _ in records]
        fraction, seed = rng.choice([0.1, 0.2, 0.35]), rng.randrange(1000)
        ours = train_val_split(records, val_fraction=fraction, seed=seed, groups=groups)
        reference = label_only_split(records, val_fraction=fraction, seed=seed, groups=groups)
        assert [r.path for r in ours[1]] == [r.path for r in reference[1]], trial
        assert [r.path for r in ours[0]] == [r.path for r in reference[0]], trial


def test_two_sources_each_get_their_share_of_validation():
    tenk = synthetic(200, 100, source="tenk", prefix="/tenk")
    isic = synthetic(50, 10, source="isic2017", prefix="/isic")
    records = tenk + isic
    random.Random(3).shuffle(records)
    for seed in range(5):
        train, validation = train_val_split(records, val_fraction=0.1, seed=seed)
        assert Counter((r.source, r.label) for r in validation) == {
            ("tenk", 0): 20, ("tenk", 1): 10, ("isic2017", 0): 5, ("isic2017", 1): 1}
        assert len(train) + len(validation) == 360 and not paths(train) & paths(validation)

    # A source with one class still sends images to validation, at least one.
    lone = synthetic(100, 100, source="tenk", prefix="/tenk") + synthetic(3, 0, source="isic2017", prefix="/isic")
    _, validation = train_val_split(lone, val_fraction=0.1, seed=1)
    assert Counter((r.source, r.label) for r in validation) == {("tenk", 0): 10, ("tenk", 1): 10, ("isic2017", 0): 1}


def test_a_group_across_sources_goes_whole_with_its_majority():
    tenk = synthetic(20, 20, source="tenk", prefix="/tenk")
    isic = synthetic(15, 0, source="isic2017", prefix="/isic")
    records = tenk + isic
    # Each of the first 5 isic images copies two tenk benign images: those triples count as tenk benign.
    groups = list(range(len(records)))
    triples = [(2 * k, 2 * k + 1, 40 + k) for k in range(5)]
    for triple in triples:
        for i in triple:
            groups[i] = triple[0]
    tenk_benign_class = set(range(20)) | {40 + k for k in range(5)}
    for seed in range(10):
        train, validation = train_val_split(records, val_fraction=0.25, seed=seed, groups=groups)
        chosen = {records.index(r) for r in validation}
        for triple in triples:
            assert len(chosen & set(triple)) in (0, 3)
        # tenk benign: 25 images with the triples' isic members -> 6; isic alone: 10 singles -> round(2.5) = 2.
        assert len(chosen & tenk_benign_class) == 6
        assert len(chosen & set(range(45, 55))) == 2
        assert len(chosen & set(range(20, 40))) == 5


# ------------------------------------------------------------------ python -m data_prep.resize


@pytest.mark.parametrize("image_format,suffix,pil_format", [("webp", ".webp", "WEBP"), ("jpeg", ".jpg", "JPEG")])
def test_resize_writes_the_same_layout_with_the_shorter_side_given(tmp_path, image_format, suffix, pil_format):
    source = tmp_path / "source"
    for split in ("train", "test"):
        for label in ("benign", "malignant"):
            copy_into(shared_images("melanoma_cancer_dataset", label, 2, split), source / split / label)
    # A wide image, one already smaller than the target, a broken file, and notes that are not images.
    wide = Image.open(shared_images("melanoma_cancer_dataset", "benign", 3, "train")[2]).crop((0, 50, 300, 250))
    wide.save(source / "train" / "benign" / "wide.png")
    Image.open(shared_images("derm7pt", "malignant", 1)[0]).resize((40, 50)).save(source / "train" / "malignant" / "small.jpg")
    (source / "test" / "benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (source / "labels.csv").write_text("file,label\n")

    target = tmp_path / "small"
    result = subprocess.run([sys.executable, "-m", "data_prep.resize", str(source), str(target), "--size", "64",
                             "--format", image_format, "--workers", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stdout and "broken.jpg" in result.stdout and "wrote 10 images" in result.stdout

    written = sorted(path.relative_to(target) for path in target.rglob("*") if path.is_file())
    expected = sorted(path.relative_to(source).with_suffix(suffix) for path in source.rglob("*")
                      if path.is_file() and path.name not in ("broken.jpg", "labels.csv"))
    assert written == expected
    for path in target.rglob(f"*{suffix}"):
        with Image.open(path) as image:
            assert image.format == pil_format
            if path.stem == "wide":
                assert image.size == (96, 64)
            elif path.stem == "small":
                assert image.size == (40, 50)  # never enlarged
            else:
                assert image.size == (64, 64)

    before, after = scan_image_folder(source, progress=False), scan_image_folder(target, progress=False)
    assert after.counts == before.counts == {"train": {"benign": 3, "malignant": 3}, "test": {"benign": 2, "malignant": 2}}
    assert after.skipped == []


def test_a_fine_tune_keeps_its_base_models_split(tmp_path):
    """A new source must not redraw the validation split of the sources the base model saw."""
    main, new = tmp_path / "tenk", tmp_path / "aaa_new"  # the new source's name sorts first, as ham10000's does
    for label in ("benign", "malignant"):
        copy_into(shared_images("melanoma_cancer_dataset", label, 30, "train"), main / "train" / label)
        copy_into(shared_images("melanoma_cancer_dataset", label, 2, "test"), main / "test" / label)
    copy_into(shared_images("isic2017", "benign", 10), new / "benign")
    copy_into(shared_images("isic2017", "malignant", 4), new / "malignant")
    base_settings = SplitSettings(data_dir=str(main), val_fraction=0.2)
    base = training_data(base_settings, progress=False)
    stored = json.dumps({"data": base_settings.stored(), "training": {"seed": base_settings.seed}})

    def main_validation(data):
        return {record.path for record in data["validation"] if record.source == "tenk"}

    fresh = training_data(SplitSettings(data_dir=str(main), extra_train_dir=[str(new)], val_fraction=0.2), progress=False)
    # Without it: the main source's validation is redrawn, onto images the base model trained on.
    assert main_validation(fresh) & paths(base["train"])

    settings = SplitSettings(data_dir=str(main), extra_train_dir=[str(new)], val_fraction=0.2, keep_split_of=stored)
    kept = training_data(settings, progress=False)
    assert main_validation(kept) == paths(base["validation"])
    assert not paths(kept["validation"]) & paths(base["train"])
    assert {record.source for record in kept["validation"]} == {"tenk", "aaa_new"}  # the new source still validates
    assert paths(kept["train"]) | paths(kept["validation"]) == paths(fresh["train"]) | paths(fresh["validation"])
    assert kept["base_split"]["validation_from_base"] == len(base["validation"])
    assert kept["base_split"]["base_trained_on_fresh_validation"] == len(main_validation(fresh) & paths(base["train"]))
    # Stored with the fine-tune's settings, the same split is rebuilt (fit_input_check and the reports do that).
    again = training_data(SplitSettings.from_stored({"data": settings.stored(), "training": {"seed": 42}}), progress=False)
    assert paths(again["validation"]) == paths(kept["validation"])
