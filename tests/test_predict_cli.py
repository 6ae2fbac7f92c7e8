"""predict.py: a folder of real images with a corrupt and a text file in it, scored into a CSV."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, real_images

from melanoma_screen.images import ImageLoadError, load_rgb_image
from melanoma_screen.inference import FAST, ScreeningModel

COLUMNS = ["file", "label", "prob_benign", "prob_malignant", "risk_level", "error", "reason"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def image_error(path) -> str:
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(path)
    return str(caught.value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four real images, a truncated JPEG and a text file, in a folder and a subfolder."""
    root = tmp_path_factory.mktemp("to_score")
    (root / "more").mkdir()
    images = real_images("test", "benign", 2) + real_images("test", "malignant", 2)
    for i, image in enumerate(images):
        shutil.copy(image, (root if i % 2 else root / "more") / image.name)
    (root / "corrupt.jpg").write_bytes(images[0].read_bytes()[:1500])
    (root / "notes.txt").write_text("not an image\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: skipped
    return root


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ScreeningModel.load(str(tiny_model_dir), **FAST)


def test_folder_with_bad_files_gives_one_row_each(folder, tiny_model_dir, model, tmp_path):
    out = tmp_path / "out" / "preds.csv"
    # batch size 3: the bad files land in the middle of a batch of good ones
    result = run_cli(folder, "--model", tiny_model_dir, "--out", out, "--batch-size", 3, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 images scored, 2 could not be read or were refused" in result.stderr
    assert "img" in result.stderr  # the tqdm progress bar

    rows = read_rows(out)
    expected_files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert sorted(row["file"] for row in rows) == expected_files
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}

    for name in ("corrupt.jpg", "notes.txt"):
        row = by_name[name]
        assert row["error"] == image_error(folder / name)
        assert row["label"] == row["prob_benign"] == row["prob_malignant"] == row["risk_level"] == ""
    assert "not an image that can be read" in by_name["notes.txt"]["error"]
    assert (by_name["notes.txt"]["reason"], by_name["corrupt.jpg"]["reason"]) == ("not_an_image", "damaged")
    assert "damaged or truncated" in by_name["corrupt.jpg"]["error"]

    good = [row for row in rows if not row["error"]]
    assert len(good) == 4
    for row in good:
        prediction = model.predict(row["file"])
        assert row["label"] == prediction.label and row["risk_level"] == prediction.risk_level
        assert float(row["prob_benign"]) == pytest.approx(prediction.probabilities["benign"], abs=1e-6)
        assert float(row["prob_malignant"]) == pytest.approx(prediction.probabilities["malignant"], abs=1e-6)
        assert float(row["prob_benign"]) + float(row["prob_malignant"]) == pytest.approx(1, abs=2e-6)


def test_files_and_a_missing_file_in_the_order_given(folder, tiny_model_dir, tmp_path):
    files = sorted(folder.glob("*.jpg"))
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "preds.csv"
    result = run_cli(files[1], missing, files[0], "--model", tiny_model_dir, "--out", out,
                     "--engine", "torch", "--precision", "fp32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(out)
    assert [row["file"] for row in rows] == [str(files[1]), str(missing), str(files[0])]
    assert rows[1]["error"] == "File not found: missing.jpg."


def test_default_model_is_model_id_and_no_model_is_a_clear_error(folder, tiny_model_dir, tmp_path):
    out = tmp_path / "preds.csv"
    env_run = subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), str(folder / "notes.txt"), "--out", str(out)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "MODEL_ID": str(tiny_model_dir)})
    assert env_run.returncode == 0, env_run.stderr[-3000:]
    assert read_rows(out)[0]["error"]

    result = run_cli(folder, "--model", tmp_path / "no-such-model", "--out", tmp_path / "x.csv", cwd=tmp_path)
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_help():
    result = run_cli("--help", cwd=REPO_ROOT)
    assert result.returncode == 0
    for option in ("--model", "--out", "--batch-size", "IMAGES_OR_DIR"):
        assert option in result.stdout
