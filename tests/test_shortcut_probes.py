"""evaluate_model.py --robustness probes the dermoscope-vignette shortcut, on real images with the tiny trained model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import evaluate_model
from conftest import real_images
from melanoma_screen.field_of_view import dark_corner_count, has_dark_corners


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory):
    """test/ with 6 benign images without a vignette, and 3 malignant ones with a round field of view and 3 without."""
    root = tmp_path_factory.mktemp("probe_data")
    benign = [path for path in real_images("test", "benign", 12) if not has_dark_corners(Image.open(path))][:6]
    malignant = real_images("test", "malignant", 80)
    round_view = [path for path in malignant if dark_corner_count(Image.open(path)) == 4][:3]
    plain = [path for path in malignant if not has_dark_corners(Image.open(path))][:3]
    assert len(benign) == 6 and len(round_view) == 3 and len(plain) == 3
    for label, paths in (("benign", benign), ("malignant", round_view + plain)):
        (root / "test" / label).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, root / "test" / label / path.name)
    return root


@pytest.fixture(scope="module")
def probe_report(tiny_model_dir, probe_folder):
    model = evaluate_model.ScreeningModel.load(str(tiny_model_dir))
    scan = evaluate_model.data_prep.scan_image_folder(probe_folder, splits=("test",))
    return model, scan, evaluate_model.evaluate(model, scan.records, robustness=True)


def test_vignette_probe_scores_the_clean_benign_images_again_behind_a_vignette(probe_report):
    model, scan, report = probe_report
    probes = report["shortcut_probes"]
    json.dumps(probes)
    row = probes["vignette"]
    assert row["n"] == 6 and row["n_benign_with_dark_corners_left_out"] == 0
    benign = [record.path for record in scan.records if record.label == 0]
    assert row["mean_p_malignant_before"] == pytest.approx(evaluate_model.score(model, benign).mean(), abs=1e-5)
    for key in ("mean_p_malignant_before", "mean_p_malignant_after", "flagged_before", "flagged_after"):
        assert 0.0 <= row[key] <= 1.0
    assert row["mean_p_malignant_change"] == pytest.approx(row["mean_p_malignant_after"] - row["mean_p_malignant_before"])
    assert row["flagged_change_points"] == pytest.approx(100 * (row["flagged_after"] - row["flagged_before"]))
    # Seeded per image: a rerun draws the same vignettes and gets the same scores.
    again = evaluate_model.shortcut_probes(model, [r.path for r in scan.records], np.asarray([r.label for r in scan.records]),
                                     evaluate_model.score(model, [r.path for r in scan.records]))
    assert again["vignette"]["mean_p_malignant_after"] == pytest.approx(row["mean_p_malignant_after"], abs=1e-6)


def test_field_of_view_probe_and_dark_corner_subgroups(probe_report):
    model, scan, report = probe_report
    probes = report["shortcut_probes"]
    fov = probes["field_of_view"]
    assert fov["n"] == 3 and fov["n_still_dark_after_fill"] == 0
    assert 0.0 <= fov["mean_p_malignant_after"] <= 1.0
    assert probes["screening_threshold"] == model.screening_threshold
    with_dark, without = probes["by_dark_corners"]["with"], probes["by_dark_corners"]["without"]
    assert (with_dark["n"], with_dark["n_malignant"], with_dark["n_benign"]) == (3, 3, 0)
    assert (without["n"], without["n_malignant"], without["n_benign"]) == (9, 3, 6)
    # One class only: specificity and AUC are undefined there, not 0.
    assert with_dark["specificity_at_screening"] is None and with_dark["roc_auc"] is None
    assert 0.0 <= with_dark["sensitivity_at_screening"] <= 1.0 and 0.0 <= without["roc_auc"] <= 1.0


def test_probes_print_and_go_into_the_model_card(tiny_model_dir, probe_folder, tmp_path, capsys):
    card = tmp_path / "README.md"
    shutil.copy(tiny_model_dir / "README.md", card)
    arguments = ["--model", str(tiny_model_dir), "--data-dir", str(probe_folder), "--split", "test",
                 "--robustness", "--card", str(card), "--out", str(tmp_path / "robustness.json")]
    assert evaluate_model.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "vignette added to benign images" in printed and "with dark corners" in printed
    assert "shortcut_probes" in json.loads((tmp_path / "robustness.json").read_text())
    text = card.read_text()
    assert text.count("| black circular vignette added to benign images | 6 |") == 1
    assert "| with dark corners | 3 | 3 / 0 |" in text and "Not probed yet" not in text
    assert evaluate_model.main(arguments) == 0
    assert card.read_text().count("| black circular vignette added to benign images |") == 1

    # A card rendered before the section existed gets it after the robustness table.
    old = text.split("<!-- begin shortcut_probes -->")[0].rsplit("### Shortcut probes", 1)[0] + \
        text.split("<!-- end shortcut_probes -->")[1]
    card.write_text(old)
    assert evaluate_model.main(arguments) == 0
    updated = card.read_text()
    assert updated.index("<!-- end robustness -->") < updated.index("### Shortcut probes") < \
        updated.index("| black circular vignette added to benign images |")
