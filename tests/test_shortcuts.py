"""The field-of-view helpers and the data_prep shortcut audit, on real dermoscopy images."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, real_images
from data_prep import ImageRecord
from data_prep.shortcut_audit import estimate_jpeg_quality, shortcut_audit, shortcut_markdown
from melanoma_screen.field_of_view import (add_circular_vignette, corner_luminances, dark_corner_count, fill_dark_border,
                                      has_dark_corners)


def open_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def clean_benign(count: int) -> list[Image.Image]:
    """Benign test images without a vignette (most of them; the few with one are skipped)."""
    images = [open_rgb(path) for path in real_images("test", "benign", count + 10)]
    clean = [image for image in images if not has_dark_corners(image)][:count]
    assert len(clean) == count
    return clean


def vignetted_malignant(count: int) -> list[Image.Image]:
    """Real malignant test images that were taken through a round dermatoscope lens (all four corners black)."""
    images = [open_rgb(path) for path in real_images("test", "malignant", 60)]
    dark = [image for image in images if dark_corner_count(image) == 4][:count]
    assert len(dark) == count, "the 10k test split should have malignant images with dark corners"
    return dark


def centre(image: Image.Image, fraction: float = 0.4) -> np.ndarray:
    array = np.asarray(image)
    height, width = array.shape[:2]
    top, left = int(height * (1 - fraction) / 2), int(width * (1 - fraction) / 2)
    return array[top:height - top, left:width - left]


# --- melanoma_screen.field_of_view ----------------------------------------------------------------

def test_a_vignette_added_to_a_benign_image_is_detected_and_the_clean_image_is_not():
    for index, image in enumerate(clean_benign(5)):
        assert not has_dark_corners(image)
        for seed in range(10):
            vignetted = add_circular_vignette(image, random.Random(index * 100 + seed))
            assert vignetted.size == image.size
            assert has_dark_corners(vignetted), (index, seed, corner_luminances(vignetted))
            # The lesion in the middle stays as it was.
            assert np.array_equal(centre(vignetted, 0.5), centre(image, 0.5))


def test_the_same_seed_draws_the_same_vignette():
    image = clean_benign(1)[0]
    first = add_circular_vignette(image, random.Random(7))
    assert np.array_equal(np.asarray(first), np.asarray(add_circular_vignette(image, random.Random(7))))
    assert not np.array_equal(np.asarray(first), np.asarray(add_circular_vignette(image, random.Random(8))))


@pytest.mark.parametrize("source", ["added", "real"])
def test_fill_dark_border_removes_the_vignette_and_leaves_the_lesion_untouched(source):
    if source == "added":
        images = [add_circular_vignette(image, random.Random(i)) for i, image in enumerate(clean_benign(5))]
    else:
        images = vignetted_malignant(5)
    for image in images:
        assert has_dark_corners(image)
        filled = fill_dark_border(image)
        assert filled.size == image.size
        assert not has_dark_corners(filled), corner_luminances(filled)
        assert np.array_equal(centre(filled), centre(image))


def test_fill_dark_border_leaves_an_image_without_a_border_as_it_is():
    image = clean_benign(1)[0]
    assert np.array_equal(np.asarray(fill_dark_border(image)), np.asarray(image))


def test_fill_dark_border_spares_a_dark_lesion_that_touches_the_lens_outline():
    # A melanoma that fills most of a small field of view and merges with the black rim on one side.
    path = real_images("test", "malignant", 1)[0].parent / "melanoma_10241.jpg"
    if not path.is_file():
        pytest.skip("melanoma_10241.jpg is not in the shared test split")
    image = open_rgb(path)
    filled = fill_dark_border(image)
    assert not has_dark_corners(filled)
    assert np.array_equal(centre(filled, 0.3), centre(image, 0.3))


# --- data_prep.shortcut_audit ----------------------------------------------------------------------

def test_jpeg_quality_is_read_back_from_the_quantisation_table(tmp_path):
    image = clean_benign(1)[0]
    for quality in (30, 75, 95):
        image.save(tmp_path / f"q{quality}.jpg", quality=quality)
        assert estimate_jpeg_quality(Image.open(tmp_path / f"q{quality}.jpg").quantization) == quality
    image.save(tmp_path / "x.png")
    assert estimate_jpeg_quality(getattr(Image.open(tmp_path / "x.png"), "quantization", None)) is None


@pytest.fixture(scope="module")
def confounded(tmp_path_factory) -> list[ImageRecord]:
    """Benign images labelled benign, and other benign images behind a vignette labelled malignant:
    only the vignette (and nothing about the lesion) tells the classes apart."""
    root = tmp_path_factory.mktemp("confounded")
    images = clean_benign(24)
    records = []
    for index, image in enumerate(images):
        label = index % 2
        if label:
            image = add_circular_vignette(image, random.Random(index))
        path = root / f"{index}.jpg"
        image.save(path, quality=75)
        records.append(ImageRecord(str(path), label, "train" if index < 16 else "test"))
    return records


def test_the_audit_names_the_vignette_when_it_gives_the_label_away(confounded):
    report = shortcut_audit(confounded, progress=False)
    json.dumps(report)  # JSON-serialisable as it is
    dark = report["features"]["dark_corners"]
    assert dark["per_class"]["benign"]["mean"] == 0.0 and dark["per_class"]["malignant"]["mean"] == 1.0
    assert dark["auc"] == 1.0 and dark["direction"] == "higher in malignant"
    assert set(dark["per_split"]) == {"train", "test"} and dark["per_split"]["test"]["malignant"]["n"] == 4
    assert any("vignette" in warning for warning in report["warnings"])
    assert report["combined"]["cv_auc"] > 0.9
    # Every image is 300x300 at quality 75: reported once, not scored.
    for name in ("width", "height", "jpeg_quality"):
        assert not report["features"][name]["varies"] and report["features"][name]["auc"] is None
    assert report["features"]["jpeg_quality"]["value"] == 75
    markdown = shortcut_markdown(report)
    assert "| dark corners" in markdown and "| 0.0% | 100.0% | 1.000 ⚠ | malignant |" in markdown
    assert "vignette" in markdown.split("\n\n")[-1]


def test_no_warning_when_the_labels_do_not_follow_acquisition(tmp_path):
    images = clean_benign(12)
    records = []
    for index, image in enumerate(images):
        # Each class gets the same mix of sizes and vignettes, so no feature separates them.
        if index % 4 >= 2:
            image = add_circular_vignette(image, random.Random(index))
        if index % 8 >= 4:
            image = image.resize((200, 200))
        path = tmp_path / f"{index}.jpg"
        image.save(path, quality=75)
        records.append(ImageRecord(str(path), index % 2, "train"))
    report = shortcut_audit(records, progress=False)
    assert report["features"]["width"]["varies"] and report["features"]["width"]["auc"] == 0.5
    assert report["features"]["dark_corners"]["auc"] == 0.5
    assert not [warning for warning in report["warnings"] if "vignette" in warning or "width" in warning]
    # warn_auc is a parameter: at 0.5 every varying feature warns.
    assert len(shortcut_audit(records, warn_auc=0.5, progress=False)["warnings"]) >= 4


def test_decoded_hub_records_are_audited_without_a_file(confounded):
    records = [ImageRecord(f"hub://x/train/{i}", r.label, r.split, image=Image.open(r.path)) for i, r in enumerate(confounded)]
    report = shortcut_audit(records, progress=False)
    assert report["features"]["dark_corners"]["auc"] == 1.0 and report["n_unreadable"] == 0


def test_the_audit_command_prints_and_stores_the_shortcut_report(confounded, tmp_path):
    data = tmp_path / "data"
    for record in confounded:
        target = data / record.split / ("malignant" if record.label else "benign") / Path(record.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(record.path).read_bytes())
    result = subprocess.run([sys.executable, "-m", "data_prep", "audit", "--data-dir", str(data), "--no-progress",
                             "--out", str(tmp_path / "audit.json"), "--warn-auc", "0.7"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Shortcut audit (24 images)" in result.stdout and "WARNING: Shortcut: dark corners" in result.stdout
    report = json.loads((tmp_path / "audit.json").read_text())["shortcuts"]
    assert report["warn_auc"] == 0.7 and report["counts"]["train"] == {"benign": 8, "malignant": 8}
