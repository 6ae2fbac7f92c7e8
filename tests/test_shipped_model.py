"""The model committed in model/ is complete, small, and loads offline with transformers.pipeline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from transformers import pipeline

from conftest import REPO_ROOT, real_images
from melanoma_screen.inference import FAST, ScreeningModel
from melanoma_screen.metrics import expected_calibration_error

MODEL_DIR = REPO_ROOT / "model"
EXAMPLES = REPO_ROOT / "examples"


def test_shipped_model_folder_serves_from_its_own_files_and_within_size():
    model = ScreeningModel.load(str(MODEL_DIR), **FAST)
    # The stored int8 graph holds these weights (no rebuild), the input check is fitted, the figures are there.
    assert model._onnx.source == MODEL_DIR / "model.int8.onnx" and model.input_check is not None
    assert model.eval_results["test"]["at_0_5"]["roc_auc"] > 0.9
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (MODEL_DIR / "README.md").read_text())
    assert linked and all((MODEL_DIR / name).is_file() for name in linked), linked
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 25 * 1024 * 1024
    config = json.loads((MODEL_DIR / "config.json").read_text())
    report = json.loads((MODEL_DIR / "eval_results.json").read_text())
    assert config["screening_threshold"] == report["operating_points"]["screening_threshold"]
    assert config["high_risk_threshold"] == report["operating_points"]["high_risk_threshold"]
    assert report["split_sizes"]["test"] == 1000


def test_pipeline_scores_the_examples_with_the_shipped_model():
    classifier = pipeline("image-classification", model=str(MODEL_DIR), device="cpu")
    labels = dict(line.split(",")[:2] for line in (EXAMPLES / "labels.csv").read_text().splitlines()[1:])
    malignant_scores = {}
    for name, label in labels.items():
        scores = {s["label"]: s["score"] for s in classifier(str(EXAMPLES / name))}
        assert set(scores) == {"benign", "malignant"} and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        malignant_scores[name] = (label, scores["malignant"])
    benign = [p for label, p in malignant_scores.values() if label == "benign"]
    malignant = [p for label, p in malignant_scores.values() if label == "malignant"]
    # A trained model ranks the melanomas above the benign lesions on average.
    assert sum(malignant) / len(malignant) > sum(benign) / len(benign)


def test_shipped_model_is_calibrated_on_the_held_out_test_split():
    """ECE of the app's own path on 200 test images per class, which fitted neither the weights nor the temperature."""
    model = ScreeningModel.load(str(MODEL_DIR), **FAST)
    paths = real_images("test", "benign", 200) + real_images("test", "malignant", 200)
    labels = np.asarray([0] * 200 + [1] * 200)
    malignant = np.asarray([p.malignant_probability for p in model.predict_batch(paths)])
    assert expected_calibration_error(labels, malignant) < 0.08
