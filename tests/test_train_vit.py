"""End to end: the smoke-training command produces a complete, loadable model folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, pipeline

import evaluate
from conftest import REPO_ROOT, real_images
from melanoma_screen.modeling import averaged_state_dict


def test_output_folder_is_complete(tiny_model_dir):
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "eval_results.json",
                 "roc_curve.png", "confusion_matrix.png", "reliability_diagram.png"):
        assert (tiny_model_dir / name).is_file(), name
    assert not list(tiny_model_dir.glob("*.bin")) and not list(tiny_model_dir.glob("*.pkl"))
    for png in tiny_model_dir.glob("*.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_config_holds_labels_thresholds_and_temperature(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "benign", "1": "malignant"}
    assert config["label2id"] == {"benign": 0, "malignant": 1}
    assert 0.0 <= config["screening_threshold"] <= config["high_risk_threshold"] <= 1.0
    assert config["calibration_temperature"] > 0 and config["temperature_folded_into_classifier"] is True


def test_eval_results_hold_thresholds_and_test_metrics(tiny_model_dir):
    report = json.loads((tiny_model_dir / "eval_results.json").read_text())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert report["operating_points"]["screening_threshold"] == config["screening_threshold"]
    assert report["split_sizes"]["test"] == 20
    for key in ("test_at_0_5", "test_at_screening_threshold"):
        metrics = report[key]
        for name in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "ece"):
            assert 0.0 <= metrics[name] <= 1.0, (key, name)
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]
        assert tn + fp + fn + tp == 20
    assert report["test_at_screening_threshold"]["threshold"] == config["screening_threshold"]
    assert report["operating_points"]["high_risk_threshold"] == config["high_risk_threshold"]


def test_model_card_metadata_matches_eval_results(tiny_model_dir):
    card = ModelCard.load(tiny_model_dir / "README.md")
    report = json.loads((tiny_model_dir / "eval_results.json").read_text())
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification" and data["library_name"] == "transformers"
    results = data["model-index"][0]["results"][0]["metrics"]
    auc = [m["value"] for m in results if m["type"] == "roc_auc"]
    assert auc and auc[0] == pytest.approx(report["test_at_0_5"]["roc_auc"], abs=1e-3)
    assert "not a diagnosis" in card.text.lower()
    assert "train_vit.py" in card.text and "--scratch-config tiny" in card.text


def test_pipeline_scores_a_dermoscopic_image_with_calibrated_probabilities(tiny_model_dir):
    classifier = pipeline("image-classification", model=str(tiny_model_dir), device="cpu")
    image_path = real_images("test", "malignant", 1)[0]
    scores = classifier(str(image_path))
    assert {s["label"] for s in scores} == {"benign", "malignant"}
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
    # The report's calibrated test probabilities come from this same saved model.
    malignant = next(s["score"] for s in scores if s["label"] == "malignant")
    assert 0.0 < malignant < 1.0


def test_help_lists_every_knob():
    result = subprocess.run([sys.executable, "train_vit.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--data-dir", "--dataset-name", "--model-name-or-path", "--scratch-config", "--image-size", "--init-from",
                 "--output-dir", "--epochs", "--max-steps", "--batch-size", "--learning-rate", "--seed",
                 "--push-to-hub", "--hub-model-id", "--drop-duplicates", "--balance"):
        assert flag in result.stdout, flag


def test_push_without_network_keeps_the_local_model(tiny_image_folder, tmp_path):
    output_dir = tmp_path / "pushed"
    command = [sys.executable, "train_vit.py", "--data-dir", str(tiny_image_folder), "--scratch-config", "tiny",
               "--image-size", "32", "--max-steps", "2", "--output-dir", str(output_dir),
               "--push-to-hub", "--hub-model-id", "someone/vit-melanoma"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "Hugging Face Hub" in last_line and str(output_dir) in last_line
    assert "Traceback" not in result.stderr
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()


def test_two_process_gloo_training_completes(tiny_image_folder, tmp_path):
    output_dir = tmp_path / "ddp"
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29531",
               "train_vit.py", "--data-dir", str(tiny_image_folder), "--scratch-config", "tiny", "--image-size", "32",
               "--max-steps", "4", "--output-dir", str(output_dir)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1 of 2 (ParallelMode.DISTRIBUTED)" in result.stderr
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "eval_results.json").is_file()


def test_color_constancy_and_checkpoint_averaging(tiny_image_folder, tmp_path):
    output_dir = tmp_path / "sog"
    command = [sys.executable, "train_vit.py", "--data-dir", str(tiny_image_folder), "--scratch-config", "tiny",
               "--image-size", "32", "--max-steps", "6", "--eval-steps", "2", "--color-constancy", "shades_of_gray",
               "--average-last", "3", "--output-dir", str(output_dir)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((output_dir / "config.json").read_text())
    report = json.loads((output_dir / "eval_results.json").read_text())
    assert config["color_constancy"] == report["color_constancy"] == "shades_of_gray"
    selection = report["checkpoint_selection"]
    assert selection["average"]["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    best, averaged = selection["best_checkpoint"]["validation_roc_auc"], selection["average"]["validation_roc_auc"]
    assert selection["chosen"] == ("average" if averaged > best else "best checkpoint")

    # The saved encoder is exactly the chosen one: the mean of the three, or the best checkpoint.
    checkpoints = [output_dir / "checkpoints" / name for name in selection["average"]["checkpoints"]]
    expected = averaged_state_dict(ViTForImageClassification, checkpoints) if selection["chosen"] == "average" \
        else ViTForImageClassification.from_pretrained(selection["best_checkpoint"]["checkpoint"]).state_dict()
    saved = ViTForImageClassification.from_pretrained(output_dir).state_dict()
    # The classifier also holds the folded temperature; the encoder must match as saved.
    encoder = [name for name in saved if not name.startswith("classifier")]
    assert encoder and all(torch.allclose(saved[name], expected[name], atol=1e-6) for name in encoder)

    # evaluate.py applies the stored colour constancy and so reproduces the report; the switch turns it off.
    rerun, bare = tmp_path / "rerun.json", tmp_path / "bare.json"
    for out, extra in ((rerun, []), (bare, ["--without-color-constancy"])):
        assert evaluate.main(["--model", str(output_dir), "--data-dir", str(tiny_image_folder), "--split", "test",
                              "--out", str(out), *extra]) == 0
    rerun, bare = json.loads(rerun.read_text()), json.loads(bare.read_text())
    assert rerun["color_constancy"] == {"trained_with": "shades_of_gray", "applied": "shades_of_gray"}
    assert bare["color_constancy"] == {"trained_with": "shades_of_gray", "applied": "none"}
    for name in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        assert rerun["at_screening_threshold"][name] == pytest.approx(report["test_at_screening_threshold"][name], abs=0.005)


def test_averaged_state_dict_is_the_mean_of_the_weights(tmp_path):
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                       num_labels=2)
    models = [ViTForImageClassification(config) for _ in range(3)]
    for index, model in enumerate(models):
        model.save_pretrained(tmp_path / f"checkpoint-{index}")
    averaged = averaged_state_dict(ViTForImageClassification, [tmp_path / f"checkpoint-{i}" for i in range(3)])
    states = [model.state_dict() for model in models]
    for name, tensor in averaged.items():
        assert torch.allclose(tensor, sum(state[name] for state in states) / 3, atol=1e-6), name
