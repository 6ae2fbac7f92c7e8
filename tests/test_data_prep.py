"""Tests for data_prep on real dermoscopy images copied from the shared dataset."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import data_prep.__main__ as cli
from conftest import SHARED_DATASET
from data_prep import (LABELS, DataSourceError, ImageRecord, audit_duplicates, balance, group_ids,
                       leaked_paths, load_hub_dataset, scan_image_folder, train_val_split, training_data)
from data_prep.settings import SplitSettings

REPO = Path(__file__).resolve().parents[1]


def dataset_root() -> Path:
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"shared dataset not found at {SHARED_DATASET}")
    return SHARED_DATASET


def real_images(split: str, label: str, count: int, skip: int = 0) -> list[Path]:
    folder = dataset_root() / split / label
    return sorted(folder.iterdir())[skip:skip + count]


def place(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


def save(image: Image.Image, destination: Path, **options) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    image.save(destination, **options)
    return destination


def records_of(paths_and_labels, split="train"):
    return [ImageRecord(path=path, label=label, split=split) for path, label in paths_and_labels]


# --- scanning and validation ------------------------------------------------------------------

def test_scan_counts_valid_images_and_reports_bad_files(tmp_path):
    for source in real_images("train", "benign", 3):
        place(source, tmp_path / "train/benign" / source.name)
    for source in real_images("train", "malignant", 2):
        place(source, tmp_path / "train/Malignant" / source.name)  # class folders match case-insensitively
    place(real_images("test", "benign", 1)[0], tmp_path / "test/benign/a.jpg")
    place(real_images("test", "malignant", 1)[0], tmp_path / "test/malignant/b.jpeg")

    good = real_images("train", "benign", 1, skip=5)[0].read_bytes()
    (tmp_path / "train/benign/truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "train/benign/notes.jpg").write_text("this is not a picture")
    (tmp_path / "train/benign/empty.jpg").write_bytes(b"")
    (tmp_path / "train/benign/.DS_Store").write_bytes(b"\0\0junk")
    (tmp_path / "train/README.txt").write_text("stray file outside a class folder")

    report = scan_image_folder(tmp_path, progress=False)

    assert report.counts == {"train": {"benign": 3, "malignant": 2}, "test": {"benign": 1, "malignant": 1}}
    assert len(report.records) == 7
    assert all(Path(record.path).is_absolute() and record.image is None for record in report.records)
    reasons = {Path(item["path"]).name: item["reason"] for item in report.skipped}
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "empty.jpg", "README.txt"}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "empty file" in reasons["empty.jpg"]
    assert "class folder" in reasons["README.txt"]
    skipped_notes = next(item for item in report.skipped if item["path"].endswith("notes.jpg"))
    assert skipped_notes["split"] == "train" and skipped_notes["label"] == "benign"
    json.dumps(report.to_dict(include_records=True))  # the report is JSON-able as is


def test_scan_without_test_split_and_without_train(tmp_path):
    place(real_images("train", "benign", 1)[0], tmp_path / "only/train/benign/x.jpg")
    (tmp_path / "only/train/malignant").mkdir()
    report = scan_image_folder(tmp_path / "only", progress=False)
    assert report.counts == {"train": {"benign": 1, "malignant": 0}}

    (tmp_path / "no_train/test/benign").mkdir(parents=True)
    with pytest.raises(ValueError, match="No 'train' folder"):
        scan_image_folder(tmp_path / "no_train", progress=False)


def test_class_folders_that_are_not_the_model_classes_fail_loudly(tmp_path):
    image = real_images("train", "benign", 1)[0]
    place(image, tmp_path / "unknown/train/benign/a.jpg")
    place(image, tmp_path / "unknown/train/malignant/b.jpg")
    place(image, tmp_path / "unknown/train/nevus/c.jpg")
    with pytest.raises(ValueError, match=r"unknown class folder\(s\) nevus: .* exactly benign, malignant"):
        scan_image_folder(tmp_path / "unknown", progress=False)

    place(image, tmp_path / "missing/train/benign/a.jpg")
    place(image, tmp_path / "missing/test/benign/b.jpg")
    place(image, tmp_path / "missing/test/Malignant/c.jpg")
    with pytest.raises(ValueError, match=r"train has no malignant folder"):
        scan_image_folder(tmp_path / "missing", progress=False)
    # The command line says it in one line, without a traceback.
    result = run_cli("validate", "--data-dir", str(tmp_path / "missing"))
    assert result.returncode != 0 and "no malignant folder" in result.stderr and "Traceback" not in result.stderr


# --- duplicate audit ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Real images plus planted copies of them; returns (scan report, {name: path})."""
    root = tmp_path_factory.mktemp("planted")
    benign = real_images("train", "benign", 7)
    malignant = real_images("train", "malignant", 4)
    paths = {}

    def put(name, source, split, label):
        paths[name] = str(place(source, root / split / label / f"{name}.jpg"))

    def put_image(name, image, split, label, **options):
        suffix = ".jpg" if options else ".png"
        paths[name] = str(save(image, root / split / label / f"{name}{suffix}", **options))

    for name, source in zip("abcdefg", benign):
        put(name, source, "train", "benign")
    for name, source in zip("hijk", malignant):
        put(name, source, "test", "malignant")  # unrelated test images

    image = {name: Image.open(path).convert("RGB") for name, path in paths.items()}
    put_image("a_hflip", image["a"].transpose(Image.Transpose.FLIP_LEFT_RIGHT), "train", "benign")
    put_image("b_rot90", image["b"].transpose(Image.Transpose.ROTATE_90), "test", "benign")
    put_image("c_rot270", image["c"].transpose(Image.Transpose.ROTATE_270), "train", "benign")
    put_image("d_transposed", image["d"].transpose(Image.Transpose.TRANSPOSE), "test", "benign")
    put("e_copy", Path(paths["e"]), "test", "benign")
    put_image("f_q70", image["f"], "train", "benign", quality=70)
    (root / "train" / "malignant").mkdir()  # a train split names every class, even one left empty here
    return scan_image_folder(root, progress=False), paths


@pytest.fixture(scope="module")
def planted_audit(planted):
    report, _ = planted
    return audit_duplicates(report.records, progress=False)


def test_audit_finds_each_planted_copy_in_the_right_group(planted, planted_audit):
    _, paths = planted
    exact = [group for group in planted_audit["exact_duplicate_groups"]]
    near = {frozenset(group["paths"]): group for group in planted_audit["near_duplicate_groups"]}

    assert [set(group["paths"]) for group in exact] == [{paths["e"], paths["e_copy"]}]
    assert exact[0]["cross_split"] and not exact[0]["label_conflict"]

    expected_near = {  # pair -> crosses the train/test split
        ("a", "a_hflip"): False, ("b", "b_rot90"): True, ("c", "c_rot270"): False,
        ("d", "d_transposed"): True, ("f", "f_q70"): False,
    }
    assert set(near) == {frozenset((paths[x], paths[y])) for x, y in expected_near}
    for (x, y), crosses in expected_near.items():
        group = near[frozenset((paths[x], paths[y]))]
        assert group["cross_split"] is crosses
        assert group["splits"] == [("train" if p.split("/")[-3] == "train" else "test") for p in group["paths"]]
        assert group["max_distance"] <= planted_audit["settings"]["hash_distance"]

    summary = planted_audit["summary"]
    assert summary["exact_groups"] == 1 and summary["exact_cross_split"] == 1
    assert summary["near_groups"] == 5 and summary["near_cross_split"] == 2 and summary["near_within_train"] == 3
    assert summary["images_in_groups"] == 12
    # Unrelated real images (g and the four test images h-k) are in no group.
    grouped = {path for group in exact + list(near.values()) for path in group["paths"]}
    assert not grouped & {paths[name] for name in "ghijk"}
    json.dumps(planted_audit)


def test_leaked_paths_drops_train_side_of_cross_split_groups_and_repeats_within_train(planted, planted_audit):
    _, paths = planted
    dropped = leaked_paths(planted_audit)
    # Cross-split: every train member goes. Within train: all but the first sorted path go.
    assert dropped == {paths["b"], paths["d"], paths["e"], paths["a_hflip"], paths["c_rot270"], paths["f_q70"]}
    assert leaked_paths(planted_audit, drop="cross_split") == {paths["b"], paths["d"], paths["e"]}
    test_paths = {record.path for record in planted[0].records if record.split == "test"}
    assert not dropped & test_paths
    with pytest.raises(ValueError):
        leaked_paths(planted_audit, drop="everything")


def test_audit_finds_real_cross_split_copies_in_the_dataset(tmp_path):
    root = dataset_root()
    known = {  # found by the full-data audit and checked by eye
        "exact_train": "train/benign/melanoma_2812.jpg", "exact_test": "test/benign/melanoma_10003.jpg",
        "near_train": "train/malignant/melanoma_5866.jpg", "near_test": "test/malignant/melanoma_10276.jpg",
    }
    # Different lesions whose pHashes are only 2 bits apart: small nevi on plain skin look alike
    # at 32x32. The detail check must keep them apart, or pHash alone would flag them.
    look_alikes = ["test/benign/melanoma_10049.jpg", "train/benign/melanoma_401.jpg",
                   "test/benign/melanoma_10064.jpg", "train/benign/melanoma_3752.jpg",
                   "test/benign/melanoma_9662.jpg", "train/benign/melanoma_3556.jpg"]
    for relative in list(known.values()) + look_alikes:
        place(root / relative, tmp_path / relative)
    for source in real_images("train", "malignant", 4, skip=10):
        place(source, tmp_path / "train/malignant" / source.name)
    report = scan_image_folder(tmp_path, progress=False)
    audit = audit_duplicates(report.records, progress=False)
    hash_only = audit_duplicates(report.records, progress=False, min_detail_correlation=-1)
    flagged_by_hash = {Path(p).name for group in hash_only["near_duplicate_groups"] for p in group["paths"]}
    assert {Path(relative).name for relative in look_alikes} <= flagged_by_hash

    def names(groups):
        return [sorted(Path(p).name for p in group["paths"]) for group in groups]

    assert names(audit["exact_duplicate_groups"]) == [["melanoma_10003.jpg", "melanoma_2812.jpg"]]
    assert names(audit["near_duplicate_groups"]) == [["melanoma_10276.jpg", "melanoma_5866.jpg"]]
    assert audit["summary"]["test_images_with_train_copy"] == 2


# --- splitting and balancing ----------------------------------------------------------------------

def synthetic_records(n_benign: int, n_malignant: int) -> list[ImageRecord]:
    labels = [0] * n_benign + [1] * n_malignant
    return records_of((f"/data/train/{LABELS[label]}/{i:04d}.jpg", label) for i, label in enumerate(labels))


def test_group_aware_stratified_split(tmp_path):
    records = synthetic_records(200, 100)
    # Duplicate groups as an audit would report them: pairs and a triple of benign images.
    audit = {"exact_duplicate_groups": [{"paths": [records[0].path, records[1].path]}],
             "near_duplicate_groups": [{"paths": [records[2 * i].path, records[2 * i + 1].path]} for i in range(1, 40)]
             + [{"paths": [records[250].path, records[251].path, records[252].path]}]}
    groups = group_ids(records, audit)
    assert groups[0] == groups[1] and groups[250] == groups[252] and groups[0] != groups[2]
    assert len(set(groups)) == 300 - 40 - 2

    train, validation = train_val_split(records, val_fraction=0.1, seed=7, groups=groups)
    assert len(train) + len(validation) == 300 and not {r.path for r in train} & {r.path for r in validation}
    assert sum(r.label == 0 for r in validation) == 20 and sum(r.label == 1 for r in validation) == 10

    side = {r.path: "val" for r in validation} | {r.path: "train" for r in train}
    for members in audit["near_duplicate_groups"] + audit["exact_duplicate_groups"]:
        assert len({side[path] for path in members["paths"]}) == 1

    again, _ = train_val_split(list(reversed(records)), val_fraction=0.1, seed=7, groups=list(reversed(groups)))
    assert {r.path for r in again} == {r.path for r in train}  # same seed, same split, whatever the order
    other, _ = train_val_split(records, val_fraction=0.1, seed=8, groups=groups)
    assert {r.path for r in other} != {r.path for r in train}


def test_split_of_tiny_datasets_keeps_both_classes_on_both_sides():
    train, validation = train_val_split(synthetic_records(10, 10), val_fraction=0.1)
    assert sorted(r.label for r in validation) == [0, 1] and len(train) == 18

    train, validation = train_val_split(synthetic_records(2, 3), val_fraction=0.1)
    assert sorted(r.label for r in validation) == [0, 1]
    assert sorted(r.label for r in train) == [0, 1, 1]

    train, validation = train_val_split(synthetic_records(5, 1), val_fraction=0.2)
    assert [r.label for r in validation] == [0] and sum(r.label == 1 for r in train) == 1


def test_balance_undersample_and_class_weights():
    records = synthetic_records(100, 60)

    kept, weights, counts = balance(records, "undersample", seed=3)
    assert weights is None and counts == {"benign": 60, "malignant": 60} and len(kept) == 120
    assert {r.path for r in kept} <= {r.path for r in records}
    assert [r.path for r in balance(records, "undersample", seed=3)[0]] == [r.path for r in kept]
    assert {r.path for r in records[100:]} <= {r.path for r in kept}  # the minority class is kept whole

    kept, weights, counts = balance(records, "class_weights")
    assert kept == records and counts == {"benign": 100, "malignant": 60}
    assert weights == pytest.approx([0.75, 1.25])  # inverse frequency, mean 1

    assert balance(records, "none") == (records, None, {"benign": 100, "malignant": 60})
    with pytest.raises(ValueError):
        balance(synthetic_records(3, 0), "undersample")


# --- command line and data sources ------------------------------------------------------------------

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "data_prep", *args, "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_audit_writes_json_and_split_summarises(tmp_path):
    data = tmp_path / "data"
    for source in real_images("train", "benign", 4):
        place(source, data / "train/benign" / source.name)
    for source in real_images("train", "malignant", 4):
        place(source, data / "train/malignant" / source.name)
    copied = place(real_images("train", "benign", 1)[0], data / "test/benign/copy.jpg")
    place(real_images("test", "malignant", 1)[0], data / "test/malignant/m.jpg")
    (data / "train/benign/broken.jpg").write_text("not an image")

    result = run_cli("audit", "--data-dir", str(data), "--out", str(tmp_path / "audit.json"))
    assert result.returncode == 0, result.stderr
    assert "1 across train/test" in result.stdout and "broken.jpg" in result.stdout
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["scan"]["counts"]["train"] == {"benign": 4, "malignant": 4}
    assert audit["scan"]["skipped"][0]["path"].endswith("broken.jpg")
    assert audit["summary"]["exact_cross_split"] == 1

    result = run_cli("split", "--data-dir", str(data), "--out", str(tmp_path / "summary.json"),
                     "--audit", str(tmp_path / "audit.json"), "--drop-duplicates", "--balance", "undersample")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    original = str(data / "train/benign" / real_images("train", "benign", 1)[0].name)
    assert summary["dropped"] == [{"path": original, "reason": "copy of a test image"}]
    assert "Dropped 1 training image(s); 1 as copy of a test image." in result.stdout
    # 3 benign + 4 malignant remain; one of each goes to validation; undersampling evens out 2 vs 3.
    assert summary["counts"] == {"train": {"benign": 2, "malignant": 2}, "validation": {"benign": 1, "malignant": 1},
                                 "test": {"benign": 1, "malignant": 1}}
    assert summary["class_counts_used"] == {"benign": 2, "malignant": 2}
    assert summary["sources"]["data"]["test"] == {"benign": 1, "malignant": 1}
    assert "for inspection only" in summary["note"].lower() or "inspection" in summary["note"]

    result = run_cli("validate", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode != 0 and "does not exist" in result.stderr


def test_cli_split_is_training_data_and_keeps_duplicate_groups_together(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    benign = [place(source, data / "train/benign" / source.name) for source in real_images("train", "benign", 6)]
    for source in real_images("train", "malignant", 6):
        place(source, data / "train/malignant" / source.name)
    place(real_images("test", "benign", 1)[0], data / "test/benign/t.jpg")
    place(real_images("test", "malignant", 1)[0], data / "test/malignant/m.jpg")
    # A flipped repeat of each of five benign images: without --audit or --drop-duplicates the old
    # command ignored such groups; now every split audits, as training does.
    for path in benign[:5]:
        save(Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT), path.with_name(path.stem + "_flip.png"))

    calls = []

    def recording(settings, **kwargs):
        calls.append(settings)
        calls.append(training_data(settings, **kwargs))
        return calls[-1]

    monkeypatch.setattr(cli, "training_data", recording)
    out = tmp_path / "summary.json"
    cli.main(["split", "--data-dir", str(data), "--no-progress", "--seed", "3", "--val-fraction", "0.3",
              "--out", str(out)])

    settings, result = calls
    assert settings == SplitSettings(data_dir=str(data), seed=3, val_fraction=0.3)
    # What train_vit.py gets with the same settings, image for image.
    again = training_data(SplitSettings(data_dir=str(data), seed=3, val_fraction=0.3), progress=False)
    for name in ("train", "validation", "test"):
        assert [r.path for r in result[name]] == [r.path for r in again[name]]
    side = {r.path: "train" for r in result["train"]} | {r.path: "validation" for r in result["validation"]}
    assert result["audit"]["summary"]["near_groups"] == 5
    for group in result["audit"]["near_duplicate_groups"]:
        assert len({side[path] for path in group["paths"]}) == 1
    assert any(side[str(path)] == "validation" for path in benign[:5])  # a group was moved, not just left alone
    summary = json.loads(out.read_text())
    assert summary["duplicate_audit"]["near_groups"] == 5 and summary["dropped"] == []
    assert summary["counts"]["validation"] == {name: sum(r.label_name == name for r in result["validation"])
                                               for name in LABELS}


def test_cli_split_help_says_the_output_is_for_inspection():
    result = subprocess.run([sys.executable, "-m", "data_prep", "split", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "for inspection only" in text and "data_prep.training_data" in text
    for flag in ("--out", "--val-fraction", "--seed", "--audit-file", "--drop-duplicates", "--balance",
                 "--max-train-samples", "--extra-train-dir"):
        assert flag in text, flag


def test_hub_dataset_offline_raises_clear_error():
    # datasets reads HF_HUB_OFFLINE when it is imported, so the check runs in a fresh interpreter.
    code = ("from data_prep import load_hub_dataset, DataSourceError\n"
            "try:\n    load_hub_dataset('someone/melanoma-images', progress=False)\n"
            "except DataSourceError as error:\n    print(type(error).__mro__[1].__name__, '|', error)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    base, message = result.stdout.strip().split(" | ")
    assert base == "RuntimeError"
    assert message == ("Could not load dataset 'someone/melanoma-images' from the Hugging Face Hub (offline or "
                       "unreachable); download it or pass --data-dir with a local image folder.")


def test_hub_loader_decodes_examples_and_maps_label_names(tmp_path):
    # A local folder loads through the same datasets code path as a hub id, with no network.
    data = tmp_path / "data"
    place(real_images("train", "benign", 1)[0], data / "train/Benign/x.jpg")
    place(real_images("train", "malignant", 1)[0], data / "train/malignant/y.jpg")
    good = real_images("train", "malignant", 1, skip=1)[0].read_bytes()
    (data / "train/malignant/z.jpg").write_bytes(good[: len(good) // 3])
    place(real_images("test", "benign", 1)[0], data / "test/Benign/t.jpg")

    report = load_hub_dataset(str(data), progress=False, cache_dir=str(tmp_path / "cache"))

    assert report.counts == {"train": {"benign": 1, "malignant": 1}, "test": {"benign": 1, "malignant": 0}}
    assert len(report.skipped) == 1 and "truncated" in report.skipped[0]["reason"]
    assert all(record.path.startswith("hub://") and record.image.mode == "RGB" for record in report.records)
    audit = audit_duplicates(report.records, progress=False)  # hub records audit from memory, not files
    assert audit["n_images"] == 3

    with pytest.raises(DataSourceError):
        load_hub_dataset(str(tmp_path / "missing"), progress=False, cache_dir=str(tmp_path / "cache"))
