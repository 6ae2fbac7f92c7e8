"""The model committed in model/ is complete, small, and loads offline with transformers.pipeline."""

from __future__ import annotations

import json

import pytest
from transformers import pipeline

from conftest import REPO_ROOT

MODEL_DIR = REPO_ROOT / "model"
EXAMPLES = REPO_ROOT / "examples"


def test_shipped_model_folder_is_complete_and_within_size():
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "eval_results.json", "README.md",
                 "roc_curve.png", "confusion_matrix.png", "reliability_diagram.png", "robustness.json"):
        assert (MODEL_DIR / name).is_file(), name
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
