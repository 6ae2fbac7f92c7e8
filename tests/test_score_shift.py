"""The label-free score shift: the fit on scores drawn from known mixtures, then calibrate_site.py on real pictures.

calibrate_site.py --unlabeled-dir (its default method) on renamed derm7pt pictures, another clinic's
dermatoscope: the folder it writes, what it leaves alone and what it moves, judged on derm7pt pictures
the site folder does not hold.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED_DATA, SHARED_DATASET

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from melanoma_screen.score_shift import (REFERENCE_KEY, ScoreShiftError, fit_score_shift,  # noqa: E402
                                         require_shift, score_reference, shifted_thresholds)
from melanoma_screen.site_adaptation import NothingToAdapt  # noqa: E402
from test_site_adaptation import NAME_MARK, copy_pictures, derm7pt_pictures, run_cli  # noqa: E402

SHIPPED = REPO_ROOT / "model"
DERM7PT = SHARED_DATA / "derm7pt"


def mixture(rng, n: int, share: float, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(P(malignant), labels) of n pictures: benign logits N(-2.5, 1.2), malignant N(1.0, 1.3), all moved by shift."""
    malignant = rng.random(n) < share
    logits = np.where(malignant, rng.normal(1.0, 1.3, n), rng.normal(-2.5, 1.2, n)) + shift
    return 1 / (1 + np.exp(-logits)), malignant.astype(int)


@pytest.fixture(scope="module")
def reference() -> dict:
    probabilities, labels = mixture(np.random.default_rng(0), 1500, 0.3)
    return score_reference(probabilities, labels)


@pytest.mark.parametrize("true_shift", [0.0, 2.0])
def test_the_fit_finds_the_shift_and_applies_a_lower_bound(reference, true_shift):
    site, _ = mixture(np.random.default_rng(1), 600, 0.05, shift=true_shift)
    fitted = fit_score_shift(site, reference)
    assert abs(fitted["most_likely_shift"] - true_shift) < 0.3, fitted
    assert fitted["shift"] <= fitted["most_likely_shift"] and fitted["most_likely_shift"] - fitted["shift"] < 0.6
    assert fitted["melanoma_share"] < 0.15 and fitted["n"] == 600


def test_a_site_whose_scores_fit_no_shift_is_left_alone_and_one_that_moved_is_not(reference):
    unmoved, _ = mixture(np.random.default_rng(4), 300, 0.3)
    fitted = fit_score_shift(unmoved, reference)
    assert fitted["shift"] <= 0 <= fitted["largest_shift"]
    with pytest.raises(NothingToAdapt, match="Not adapted: the site's scores lie where"):
        require_shift(fitted)
    moved, _ = mixture(np.random.default_rng(4), 300, 0.3, shift=1.0)
    require_shift(fit_score_shift(moved, reference))


def test_the_bound_tightens_with_more_pictures(reference):
    gaps = []
    for n in (40, 1000):
        site, _ = mixture(np.random.default_rng(2), n, 0.05, shift=1.5)
        fitted = fit_score_shift(site, reference)
        gaps.append(1.5 - fitted["shift"])
    assert gaps[0] > gaps[1] > -0.2, gaps


def test_shifted_thresholds_keep_the_order_and_stop_at_the_high_risk_threshold():
    moved = shifted_thresholds(0.1, 0.5, 1.0)
    assert 0.1 < moved["screening_threshold"] < moved["high_risk_threshold"] < 1 and not moved["capped"]
    capped = shifted_thresholds(0.1, 0.5, 5.0)
    assert capped["capped"] and capped["screening_threshold"] == pytest.approx(0.5)
    lowered = shifted_thresholds(0.1, 0.5, -0.5)
    assert lowered["screening_threshold"] < 0.1 and not lowered["capped"]


def test_scores_no_device_could_give_are_refused(reference):
    site = np.full(200, 1 - 1e-6)  # every picture certain melanoma: past any shift of the grid
    with pytest.raises(ScoreShiftError, match="not the model's lesions on another device"):
        fit_score_shift(site, reference)


def test_the_reference_needs_both_classes_and_stays_small():
    probabilities, labels = mixture(np.random.default_rng(3), 400, 0.02)
    with pytest.raises(ScoreShiftError, match="malignant validation scores"):
        score_reference(probabilities, np.zeros_like(labels))
    probabilities, labels = mixture(np.random.default_rng(3), 5000, 0.3)
    block = score_reference(probabilities, labels)
    assert len(json.dumps(block)) < 12_000
    assert block["benign"]["n"] + block["malignant"]["n"] == 5000


# ------------------------------------------------------------------ calibrate_site.py on real pictures

needs_data = pytest.mark.skipif(not DERM7PT.is_dir() or not SHARED_DATASET.is_dir(),
                                reason="needs the shared derm7pt and 10k data")


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def spread_pictures(n_benign: int, n_malignant: int, start: int) -> list[Path]:
    """Every sixth derm7pt picture from start: its files are sorted by diagnosis, so a run of them is one kind."""
    return (sorted((DERM7PT / "benign").iterdir())[start::6][:n_benign]
            + sorted((DERM7PT / "malignant").iterdir())[start::6][:n_malignant])


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    if REFERENCE_KEY not in config_of(SHIPPED):
        pytest.skip("the shipped model stores no score reference (experiments/fit_adapted_thresholds.py)")
    import calibrate_site

    site = copy_pictures(spread_pictures(100, 20, start=0), tmp_path_factory.mktemp("clinic") / "pictures")
    out_dir = tmp_path_factory.mktemp("shifted") / "model-site"
    assert calibrate_site.main(["--model", str(SHIPPED), "--unlabeled-dir", str(site), "--out-dir", str(out_dir)]) == 0
    return out_dir


@needs_data
def test_only_the_thresholds_move(shifted):
    for name in ("model.safetensors", "model.int8.onnx", "input_check.safetensors", "preprocessor_config.json"):
        assert (hashlib.sha256((shifted / name).read_bytes()).digest()
                == hashlib.sha256((SHIPPED / name).read_bytes()).digest()), name
    source, result = config_of(SHIPPED), config_of(shifted)
    block = result["site_adaptation"]
    assert block["method"] == "score shift" and block["n_adapted"] >= 110 and block["n_found"] == 120
    assert source["screening_threshold"] < result["screening_threshold"] <= source["high_risk_threshold"]
    assert result["high_risk_threshold"] > source["high_risk_threshold"]
    assert block["fit"]["shift"] > 0.5  # derm7pt's scores lie well above the training sources'
    for key in set(source) - {"screening_threshold", "high_risk_threshold", "site_adaptation", "model_name"}:
        assert result[key] == source[key], key


@needs_data
def test_the_folder_stores_no_picture_or_name(shifted):
    for path in shifted.iterdir():
        assert NAME_MARK.encode() not in path.read_bytes(), path.name
    assert sorted(p.name for p in shifted.iterdir() if p.suffix in {".jpg", ".png", ".jpeg"}) == sorted(
        p.name for p in SHIPPED.iterdir() if p.suffix in {".jpg", ".png", ".jpeg"})


@needs_data
def test_held_out_pictures_keep_their_scores_and_more_benign_lesions_clear_the_threshold(shifted):
    """Pipeline-loaded, the folder scores exactly as the source; the moved threshold clears benign lesions the
    source flagged, and keeps most melanomas (derm7pt pictures the site folder does not hold)."""
    from transformers import pipeline

    held_out = spread_pictures(100, 40, start=3)
    labels = np.array([path.parent.name == "malignant" for path in held_out])
    scores = {}
    for name, folder in (("source", SHIPPED), ("shifted", shifted)):
        classify = pipeline("image-classification", model=str(folder))
        scores[name] = np.array([{r["label"]: r["score"] for r in classify(str(p))}["malignant"] for p in held_out])
    np.testing.assert_allclose(scores["shifted"], scores["source"], atol=1e-6)
    figures = {}
    for name, folder in (("source", SHIPPED), ("shifted", shifted)):
        flagged = scores[name] >= config_of(folder)["screening_threshold"]
        figures[name] = (flagged[labels].mean(), 1 - flagged[~labels].mean())
    assert figures["shifted"][1] >= figures["source"][1] + 0.3, figures
    assert figures["shifted"][0] >= 0.8, figures  # 40 melanomas: 0.80 is 32 of them


@needs_data
def test_card_and_about_panel_say_the_thresholds_moved(shifted):
    from melanoma_screen.app_views import about_markdown
    from melanoma_screen.inference import FAST, ScreeningModel

    card = (shifted / "README.md").read_text()
    assert "## Site adaptation" in card and "thresholds are moved to one site's device" in card
    n = config_of(shifted)["site_adaptation"]["n_adapted"]
    text = about_markdown(ScreeningModel.load(str(shifted), **FAST), "en")
    assert f"thresholds were moved to where {n} undiagnosed pictures" in text
    assert "seuils ont été déplacés" in about_markdown(ScreeningModel.load(str(shifted), **FAST), "fr")


@needs_data
def test_a_model_without_the_reference_is_refused_with_the_command_that_adds_it(tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    config = config_of(folder)
    config.pop(REFERENCE_KEY, None)
    (folder / "config.json").write_text(json.dumps(config))
    site = copy_pictures(derm7pt_pictures(45, 15), tmp_path / "pictures")
    status, err = run_cli(capsys, "--model", folder, "--unlabeled-dir", site, "--out-dir", tmp_path / "out")
    assert status == 2 and "fit_adapted_thresholds.py" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()



@needs_data
def test_a_sample_under_the_shifts_measured_minimum_is_refused_with_how_many_more(tmp_path, capsys):
    # Enough pictures for the statistics' minimum, too few for the shift's: at 30-40 pictures its bound is so wide that
    # the move falls short of the specificity target (docs/site_calibration.md), so it asks for more.
    from melanoma_screen.score_shift import MIN_SHIFT_PICTURES
    from melanoma_screen.site_adaptation import MIN_PICTURES

    n = MIN_SHIFT_PICTURES - 15
    assert n >= MIN_PICTURES
    site = copy_pictures(spread_pictures(n - 5, 5, start=1), tmp_path / "pictures")
    status, err = run_cli(capsys, "--model", SHIPPED, "--unlabeled-dir", site, "--out-dir", tmp_path / "out")
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{n} found" in err and f"at least {MIN_SHIFT_PICTURES}" in err and "add 15 more" in err, err
    assert not (tmp_path / "out").exists()
