"""End to end: the smoke-training command produces a complete, loadable model folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import TrainerControl, TrainerState, ViTConfig, ViTForImageClassification, pipeline

import evaluate_model
import train_vit
from conftest import REPO_ROOT, SHARED_DATA, experiment_script, image_count, real_images
from melanoma_screen import modeling
from melanoma_screen.images import load_rgb_image
from melanoma_screen.inference import ModelLoadError, ScreeningModel
from melanoma_screen.metrics import OPERATING_POINTS, binary_metrics, expected_calibration_error
from melanoma_screen.modeling import averaged_state_dict
from melanoma_screen.field_of_view import dark_corner_count, has_dark_corners, mask_field_of_view
from melanoma_screen.transforms import build_image_processor


def test_output_folder_loads_and_its_card_shows_every_plot(tiny_model_dir):
    model = ScreeningModel.load(str(tiny_model_dir))
    assert model.eval_results["test"]["at_0_5"]["roc_auc"] is not None and model.input_check is not None
    assert not list(tiny_model_dir.glob("*.bin")) and not list(tiny_model_dir.glob("*.pkl"))
    # Every picture the card links is in the folder, a PNG large enough to read.
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (tiny_model_dir / "README.md").read_text())
    assert {"roc_curve.png", "confusion_matrix.png", "reliability_diagram.png"} <= set(linked)
    for name in linked:
        with Image.open(tiny_model_dir / name) as image:
            assert image.format == "PNG" and min(image.size) > 200, name


def test_config_holds_labels_thresholds_and_temperature(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "benign", "1": "malignant"}
    assert config["label2id"] == {"benign": 0, "malignant": 1}
    assert 0.0 <= config["screening_threshold"] <= config["high_risk_threshold"] <= 1.0
    assert config["calibration_temperature"] > 0 and config["temperature_folded_into_classifier"] is True


def test_eval_results_hold_thresholds_and_test_metrics(tiny_model_dir, tiny_image_folder):
    report = json.loads((tiny_model_dir / "eval_results.json").read_text())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    n_test = image_count(tiny_image_folder / "test")
    assert report["operating_points"]["screening_threshold"] == config["screening_threshold"]
    assert report["split_sizes"]["test"] == n_test
    # One layout: the test block holds what evaluate_model.py reports, like each external set.
    assert set(report["test"]) == set(OPERATING_POINTS) and not any(key.startswith("test_at_") for key in report)
    for key in ("at_0_5", "at_screening_threshold"):
        metrics = report["test"][key]
        for name in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "ece"):
            assert 0.0 <= metrics[name] <= 1.0, (key, name)
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]
        assert tn + fp + fn + tp == n_test
    assert report["test"]["at_screening_threshold"]["threshold"] == config["screening_threshold"]
    assert report["operating_points"]["high_risk_threshold"] == config["high_risk_threshold"]


def test_model_card_metadata_matches_eval_results(tiny_model_dir):
    card = ModelCard.load(tiny_model_dir / "README.md")
    report = json.loads((tiny_model_dir / "eval_results.json").read_text())
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification" and data["library_name"] == "transformers"
    results = data["model-index"][0]["results"][0]["metrics"]
    auc = [m["value"] for m in results if m["type"] == "roc_auc"]
    assert auc and auc[0] == pytest.approx(report["test"]["at_0_5"]["roc_auc"], abs=1e-3)
    assert "not a diagnosis" in card.text.lower()
    assert "train_vit.py" in card.text and "--scratch-config tiny" in card.text


def test_pipeline_gives_calibrated_probabilities_on_held_out_images(tiny_model_dir, tiny_image_folder):
    """The temperature is fitted on validation; the test images fitted nothing. pipeline's P(malignant) on them
    give the ECE the report stored, and it stays under a bound that an overconfident model exceeds."""
    classifier = pipeline("image-classification", model=str(tiny_model_dir), device="cpu")
    paths = sorted((tiny_image_folder / "test").rglob("*.jpg"))
    labels = np.asarray([int(path.parent.name == "malignant") for path in paths])
    malignant = np.asarray([next(s["score"] for s in classifier(str(path)) if s["label"] == "malignant")
                            for path in paths])
    ece = expected_calibration_error(labels, malignant)
    report = json.loads((tiny_model_dir / "eval_results.json").read_text())
    assert ece == pytest.approx(report["test"]["at_0_5"]["ece"], abs=1e-3)
    assert ece < 0.25
    # The same images with the folded temperature taken out again (logits x T): no better calibrated.
    temperature = json.loads((tiny_model_dir / "config.json").read_text())["calibration_temperature"]
    logit = np.log(malignant) - np.log1p(-malignant)
    assert expected_calibration_error(labels, 1 / (1 + np.exp(-logit * temperature))) >= ece - 0.02


def test_help_lists_every_knob():
    result = subprocess.run([sys.executable, "train_vit.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    # TrainingArguments' own names, as run_image_classification.py takes them, beside ours.
    for flag in ("--data_dir", "--dataset_name", "--model_name_or_path", "--scratch_config", "--image_size", "--init_from",
                 "--output_dir", "--num_train_epochs", "--max_steps", "--per_device_train_batch_size", "--learning_rate",
                 "--seed", "--push_to_hub", "--hub_model_id", "--drop_duplicates", "--balance", "--min_sensitivity",
                 "--max_train_minutes", "--mimetic_init", "--resume_from_checkpoint"):
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
               "--image-size", "32", "--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "2",
               "--save_strategy", "steps", "--save_steps", "2", "--color-constancy", "shades_of_gray",
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

    # evaluate_model.py applies the stored colour constancy and so reproduces the report; the switch turns it off.
    rerun, bare = tmp_path / "rerun.json", tmp_path / "bare.json"
    for out, extra in ((rerun, []), (bare, ["--without-color-constancy"])):
        assert evaluate_model.main(["--model", str(output_dir), "--data-dir", str(tiny_image_folder), "--split", "test",
                              "--out", str(out), *extra]) == 0
    rerun, bare = json.loads(rerun.read_text()), json.loads(bare.read_text())
    assert rerun["color_constancy"] == {"trained_with": "shades_of_gray", "applied": "shades_of_gray"}
    assert bare["color_constancy"] == {"trained_with": "shades_of_gray", "applied": "none"}
    for name in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        assert rerun["at_screening_threshold"][name] == pytest.approx(report["test"]["at_screening_threshold"][name], abs=0.005)


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


# ------------------------------------------------------------------ several sources, external sets, shortcuts

FIELD_OF_VIEW = 0.45


def _shared_images(dataset: str, label: str, count: int) -> list:
    folder = SHARED_DATA / dataset / label
    if not folder.is_dir():
        pytest.skip(f"{folder} is not there")
    return sorted(folder.glob("*.jpg"))[:count]


@pytest.fixture(scope="module")
def multi_source_run(tiny_image_folder, tmp_path_factory):
    """One tiny training run with every multi-source option: an extra training folder holding a copy of a main test
    image and a flipped copy of a main train image, an external folder, vignette augmentation, a smaller crop
    scale, a field-of-view mask and a time limit that ends training after its first epoch."""
    root = tmp_path_factory.mktemp("multi_source")
    extra, external = root / "isic2017", root / "derm7pt"
    for label, count in (("benign", 4), ("malignant", 2)):
        (extra / label).mkdir(parents=True)
        for path in _shared_images("isic2017", label, count):
            shutil.copy(path, extra / label / path.name)
    for label in ("benign", "malignant"):
        (external / label).mkdir(parents=True)
        for path in _shared_images("derm7pt", label, 3):
            shutil.copy(path, external / label / path.name)
    test_original = sorted((tiny_image_folder / "test" / "malignant").glob("*.jpg"))[0]
    train_original = sorted((tiny_image_folder / "train" / "benign").glob("*.jpg"))[0]
    copies = {"test": extra / "malignant" / "copy_of_a_test_image.jpg",
              "train": extra / "benign" / "flipped_train_image.png"}
    shutil.copy(test_original, copies["test"])
    Image.open(train_original).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copies["train"])

    output_dir = root / "model"
    train_vit.main([
        "--data-dir", str(tiny_image_folder), "--extra-train-dir", str(extra), "--external-dir", str(external),
        "--scratch-config", "tiny", "--image-size", "64", "--num_train_epochs", "3", "--per_device_train_batch_size", "32",
        "--max-train-minutes", "0.00001", "--augment-vignette", "1.0", "--augment-vignette-balanced", "--crop-scale-min", "0.3",
        "--augment-lesion-size-balanced", "--field-of-view-mask", str(FIELD_OF_VIEW), "--output-dir", str(output_dir),
    ])
    return {"dir": output_dir, "main": tiny_image_folder, "extra": extra, "external": external, "copies": copies,
            "report": json.loads((output_dir / "eval_results.json").read_text())}


def test_extra_copies_are_dropped_and_every_source_gets_validation(multi_source_run):
    report, main = multi_source_run["report"], multi_source_run["main"].name
    # 4 + 1 benign and 2 + 1 malignant in isic2017/: both copies go, the main dataset's images stay.
    assert report["dropped_duplicates"] == 2
    assert report["sources"] == {
        main: {"train": {"benign": 9, "malignant": 9}, "validation": {"benign": 1, "malignant": 1},
               "test": {"benign": 10, "malignant": 10}},
        "isic2017": {"train": {"benign": 3, "malignant": 1}, "validation": {"benign": 1, "malignant": 1}},
    }
    assert report["split_sizes"] == {"train": 22, "validation": 4, "test": 20}
    assert report["duplicate_audit"]["exact_cross_split"] == 1 and report["duplicate_audit"]["near_within_train"] == 1


def test_settings_config_and_time_limit_are_recorded(multi_source_run):
    report, output_dir = multi_source_run["report"], multi_source_run["dir"]
    settings = report["settings"]
    assert settings["data"]["extra_train_dir"] == [str(multi_source_run["extra"])]
    assert settings["data"]["external_dir"] == [str(multi_source_run["external"])]
    assert settings["data"]["augment_vignette"] == 1.0 and settings["data"]["crop_scale_min"] == 0.3
    assert settings["model"]["field_of_view_mask"] == FIELD_OF_VIEW and settings["model"]["image_size"] == 64
    # The per-class vignette reads the audit's natural rates; at probability 1 every image of either class gets one.
    dark_corners = report["shortcut_audit"]["features"]["dark_corners"]["per_split"]["train"]
    assert report["vignette_balance"]["natural_rates"] == {label: dark_corners[label]["mean"] for label in ("benign", "malignant")}
    assert report["vignette_balance"]["vignette_probabilities"] == {"benign": 1.0, "malignant": 1.0}
    # The size-balanced crop measured both classes' lesions and zooms the other class towards the larger one's.
    balance = report["lesion_size_balance"]
    assert settings["data"]["augment_lesion_size_balanced"] is True
    assert set(balance["median_lesion_share"]) == {"benign", "malignant"} and all(balance["images_measured"].values())
    larger = max(balance["median_lesion_share"], key=balance["median_lesion_share"].get)
    assert balance["zoomed_towards"] == larger
    assert len(balance["target_share_deciles"]) == 11 and balance["target_share_deciles"] == sorted(balance["target_share_deciles"])
    assert settings["screening"]["max_train_minutes"] == 0.00001 and settings["training"]["num_train_epochs"] == 3
    assert settings["training"]["per_device_train_batch_size"] == 32 and settings["training"]["seed"] == 42
    assert json.loads((output_dir / "config.json").read_text())["field_of_view_mask"] == FIELD_OF_VIEW
    # 22 training images at batch 32 are one step an epoch: the time limit stops the run after the first.
    assert report["epochs_trained"] == 1.0
    assert [p.name for p in (output_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]


def test_external_set_is_scored_with_the_model_as_saved(multi_source_run):
    report, output_dir = multi_source_run["report"], multi_source_run["dir"]
    assert list(report["external"]) == ["derm7pt"]
    external = report["external"]["derm7pt"]
    points = report["operating_points"]
    for key, threshold in (("at_0_5", 0.5), ("at_screening_threshold", points["screening_threshold"]),
                           ("at_high_risk_threshold", points["high_risk_threshold"])):
        assert external[key]["threshold"] == threshold
        assert (external[key]["n"], external[key]["n_malignant"], external[key]["n_benign"]) == (6, 3, 3)
    # The report's figures are what the saved model (field-of-view mask included) gives for those files.
    model = ScreeningModel.load(str(output_dir))
    assert model.field_of_view_mask == FIELD_OF_VIEW
    paths = sorted((multi_source_run["external"] / "benign").glob("*.jpg")) + \
        sorted((multi_source_run["external"] / "malignant").glob("*.jpg"))
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([p.malignant_probability for p in model.predict_batch(paths)])
    expected = binary_metrics(labels, probabilities, threshold=0.5)
    assert external["at_0_5"]["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert external["at_0_5"]["ece"] == pytest.approx(expected["ece"], abs=1e-4)


def test_model_card_lists_sources_external_results_and_shortcut_audit(multi_source_run):
    report, output_dir, main = multi_source_run["report"], multi_source_run["dir"], multi_source_run["main"].name
    card = ModelCard.load(output_dir / "README.md")
    external = report["external"]["derm7pt"]
    row = next(line for line in card.text.splitlines() if line.startswith("| derm7pt (external) |"))
    assert "| 6 (3 / 3) |" in row and f"| {external['at_0_5']['roc_auc']:.3f} |" in row
    assert f"| {main} | validation | 1 | 1 |" in card.text and "| isic2017 | train | 3 | 1 |" in card.text
    assert "extra training images from `isic2017`" in card.text
    # The model-index has the test split and the external set as two dataset entries.
    results = card.data.to_dict()["model-index"][0]["results"]
    by_dataset = {entry["dataset"]["name"]: {m["name"]: m["value"] for m in entry["metrics"]} for entry in results}
    assert set(by_dataset) == {"Melanoma Skin Cancer Dataset of 10000 Images", "derm7pt (external validation)"}
    assert by_dataset["derm7pt (external validation)"]["ROC AUC"] == pytest.approx(external["at_0_5"]["roc_auc"], abs=1e-4)
    assert by_dataset["derm7pt (external validation)"]["Specificity at screening threshold"] == \
        pytest.approx(external["at_screening_threshold"]["specificity"], abs=1e-4)
    assert by_dataset["Melanoma Skin Cancer Dataset of 10000 Images"]["ROC AUC"] == \
        pytest.approx(report["test"]["at_0_5"]["roc_auc"], abs=1e-4)

    # The shortcut audit covers train, validation and test, in eval_results.json and in the card.
    audit = report["shortcut_audit"]
    assert audit["n_images"] == 22 + 4 + 20
    assert audit["counts"] == {"train": {"benign": 14, "malignant": 12}, "test": {"benign": 10, "malignant": 10}}
    assert audit["features"]["dark_corners"]["varies"]
    shortcut_section = card.text.split("### Shortcut audit", 1)[1].split("## Limitations", 1)[0]
    assert "dark_corners" in shortcut_section or "dark corners" in shortcut_section.lower()
    assert "Not run." not in shortcut_section
    # Pipeline users are told about the field-of-view mask the model needs.
    assert f"radius {FIELD_OF_VIEW:g}" in card.text and "pipeline_input(path)" in card.text


def test_field_of_view_mask_is_applied_on_every_path(multi_source_run):
    output_dir = multi_source_run["dir"]
    model = ScreeningModel.load(str(output_dir))
    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    network = ViTForImageClassification.from_pretrained(output_dir).eval()
    for path in real_images("test", "benign", 1) + real_images("test", "malignant", 1):
        resized = load_rgb_image(path).resize((64, 64), model.image_processor.resample)
        masked = mask_field_of_view(resized, FIELD_OF_VIEW)
        assert has_dark_corners(masked)
        # pipeline_input hands pipeline the masked picture, and pipeline then agrees with predict.
        assert np.array_equal(np.asarray(model.pipeline_input(path)), np.asarray(masked))
        expected = {row["label"]: row["score"] for row in classifier(model.pipeline_input(path))}
        prediction = model.predict(path)
        for label, probability in expected.items():
            assert prediction.probabilities[label] == pytest.approx(probability, abs=1e-5)
        # The torch fp32 path is the network on the masked picture, not on the plain one.
        pixels = model.image_processor(masked, return_tensors="pt")["pixel_values"]
        plain = model.image_processor(resized, return_tensors="pt")["pixel_values"]
        assert torch.allclose(model.preprocess([load_rgb_image(path)]), pixels, atol=1e-5)
        assert not torch.allclose(pixels, plain, atol=0.1)
        with torch.no_grad():
            probability = torch.softmax(network(pixel_values=pixels).logits, dim=-1)[0, 1].item()
        assert prediction.malignant_probability == pytest.approx(probability, abs=1e-5)


@pytest.mark.parametrize("value", [1.5, -0.2, "wide"])
def test_a_bad_field_of_view_mask_is_a_load_error(multi_source_run, tmp_path, value):
    copy = tmp_path / "odd"
    shutil.copytree(multi_source_run["dir"], copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "config.json").read_text())
    config["field_of_view_mask"] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="field_of_view_mask"):
        ScreeningModel.load(str(copy))


def test_external_and_extra_dirs_can_be_repeated():
    data_args, *_ = train_vit.parse_args(["--data-dir", "d", "--output-dir", "o", "--external-dir", "a",
                                          "--external-dir", "b", "c", "--extra-train-dir", "e"])
    assert data_args.external_dir == ["a", "b", "c"] and data_args.extra_train_dir == ["e"]
    data_args, *_ = train_vit.parse_args(["--data-dir", "d", "--output-dir", "o"])
    assert data_args.external_dir is None and data_args.extra_train_dir is None


def test_one_seed_drives_the_split_and_training():
    data_args, _, _, training_args = train_vit.parse_args(["--data_dir", "d", "--output_dir", "o", "--seed", "7"])
    assert data_args.seed == training_args.seed == 7
    # Our defaults, not TrainingArguments' (3 epochs, batch 8, no validation).
    assert training_args.num_train_epochs == 10 and training_args.per_device_train_batch_size == 32
    assert training_args.eval_strategy == "epoch" and training_args.metric_for_best_model == "roc_auc"


def test_mimetic_initialisation_gives_attention_a_pretrained_like_structure():
    config = ViTConfig(**modeling.SCRATCH_CONFIGS["tiny"], image_size=32, patch_size=16, num_labels=2)
    model = ViTForImageClassification(config)
    modeling.mimetic_initialisation(model, seed=0)
    for layer in model.vit.layers:
        attention = layer.attention
        query_key = (attention.q_proj.weight.T @ attention.k_proj.weight).detach()
        value_output = (attention.v_proj.weight.T @ attention.o_proj.weight.T).detach()
        # alpha * Z + beta * I with Z ~ N(0, 1/d): the diagonal near beta, the rest small.
        assert torch.diagonal(query_key).mean() == pytest.approx(modeling.MIMETIC_QUERY_KEY[1], abs=0.05)
        assert torch.diagonal(value_output).mean() == pytest.approx(-modeling.MIMETIC_VALUE_OUTPUT[1], abs=0.05)
        off_diagonal = query_key - torch.diag(torch.diagonal(query_key))
        assert off_diagonal.abs().mean() < 0.1
    random_model = ViTForImageClassification(config)
    random_attention = random_model.vit.layers[0].attention
    assert torch.diagonal(random_attention.q_proj.weight.T @ random_attention.k_proj.weight).mean().abs() < 0.05


def _to_images(pixel_values) -> list:
    # The processor maps 0..255 to -1..1 (mean and std 0.5): undo it to look at the pictures.
    arrays = ((pixel_values.permute(0, 2, 3, 1).numpy() * 0.5 + 0.5) * 255).round().clip(0, 255).astype(np.uint8)
    return [Image.fromarray(array) for array in arrays]


def test_train_and_eval_transforms_follow_the_arguments():
    processor = build_image_processor(64)
    photos = [load_rgb_image(path) for path in real_images("test", "benign", 12)]
    photos = [photo for photo in photos if dark_corner_count(photo) == 0][:6]
    assert len(photos) >= 4
    batch = {"image": photos, "label": [0] * len(photos)}
    still = dict(augment_brightness=0, augment_contrast=0, augment_saturation=0, augment_hue=0, crop_scale_min=1.0)

    vignette, _ = train_vit.make_transforms(processor, train_vit.DataArguments(augment_vignette=1.0, **still))
    plain, _ = train_vit.make_transforms(processor, train_vit.DataArguments(augment_vignette=0.0, **still))
    assert all(dark_corner_count(image) >= 1 for image in _to_images(vignette(batch)["pixel_values"]))
    outputs = _to_images(plain(batch)["pixel_values"])
    assert all(dark_corner_count(image) == 0 for image in outputs)
    # A crop scale of 1 keeps the whole (square) frame: the output is a flip or rotation of the resized photo.
    for photo, output in zip(photos, outputs):
        reference = np.asarray(photo.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
        variants = [np.rot90(v, k) for v in (reference, reference[:, ::-1]) for k in range(4)]
        assert min(np.abs(np.asarray(output, dtype=np.int16) - v).max() for v in variants) <= 1

    masked_train, masked_eval = train_vit.make_transforms(processor, train_vit.DataArguments(**still), field_of_view_mask=0.45)
    assert all(has_dark_corners(image) for image in _to_images(masked_train(batch)["pixel_values"]))
    expected = processor([mask_field_of_view(photo.resize((64, 64), processor.resample), 0.45) for photo in photos],
                         return_tensors="pt")["pixel_values"]
    assert torch.allclose(masked_eval(batch)["pixel_values"], expected, atol=1e-6)


def test_time_limit_callback_stops_at_the_first_epoch_end_past_the_limit(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(modeling, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    callback, state, control = modeling.TimeLimitCallback(2), TrainerState(epoch=1.0), TrainerControl()
    callback.on_epoch_end(None, state, control)  # not started: no limit yet
    assert not control.should_training_stop
    callback.on_train_begin(None, state, control)
    clock[0] += 119
    callback.on_epoch_end(None, state, control)
    assert not control.should_training_stop
    clock[0] += 2
    callback.on_epoch_end(None, state, control)
    assert control.should_training_stop


def test_fine_tuning_does_not_inherit_the_base_models_name_and_version(tiny_model_dir, tmp_path):
    from melanoma_screen import identity

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    stamped = identity.stamp(base, "open-melanoma/some-base")
    assert json.loads((base / "config.json").read_text())["model_version"] == stamped["model_version"]
    model, _, _, description = train_vit.build_model(train_vit.ModelArguments(model_name_or_path=str(base)), seed=0)
    assert "fine-tuned from" in description
    saved = tmp_path / "fine-tuned"
    model.save_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    assert "model_version" not in config and "model_name" not in config
    assert config["id2label"] == {"0": "benign", "1": "malignant"}


def test_weight_interpolation_experiment_mixes_the_two_models(tiny_model_dir, tmp_path):
    """experiments/tta_and_averaging.py --interpolate-with: alpha * run + (1 - alpha) * base, per tensor."""
    experiment = experiment_script("tta_and_averaging")
    base = ViTForImageClassification.from_pretrained(str(tiny_model_dir)).eval()
    run = ViTForImageClassification.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        for parameter in run.parameters():
            parameter.add_(torch.randn_like(parameter))
    run.config.screening_threshold = 0.123
    base_state = {key: value.clone() for key, value in base.state_dict().items()}
    for alpha in (0.0, 0.25, 1.0):
        mixed = experiment.interpolated_network(run, tiny_model_dir, alpha).state_dict()
        for key, value in run.state_dict().items():
            torch.testing.assert_close(mixed[key], alpha * value + (1 - alpha) * base_state[key])
    assert experiment.interpolated_network(run, tiny_model_dir, 0.5).config.screening_threshold == 0.123


@pytest.mark.parametrize("architecture", ["levit", "mobilevitv2"])
def test_other_architectures_train_score_and_fold_their_temperature(architecture, tmp_path):
    """--scratch-config levit|mobilevitv2: within the app's 25 MB, calibrated like a ViT, scored by ScreeningModel and pipeline alike."""
    from fit_input_check import fit_after_training
    from melanoma_screen import calibration

    model, processor, base, description = train_vit.build_model(
        train_vit.ModelArguments(scratch_config=architecture, image_size=64), seed=0)
    assert base is None and "random initialisation" in description
    assert sum(p.numel() for p in model.parameters()) * 4 <= 25 * 1024**2
    model.eval()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        calibration.fold_temperature_into_classifier(model, 2.0)
        after = model(pixel_values=pixels).logits
    torch.testing.assert_close(after, before / 2.0, rtol=1e-4, atol=1e-5)

    folder = tmp_path / architecture
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if architecture == "mobilevitv2":
        assert fit_after_training(folder, [], []) is None  # no feature tokens the check reads: not fitted
    lesion = real_images("test", "malignant", 1)[0]
    screening = ScreeningModel.load(str(folder))
    ours = screening.predict(str(lesion))
    theirs = {row["label"]: row["score"] for row in pipeline("image-classification", model=str(folder))(str(lesion))}
    for label, probability in theirs.items():
        assert abs(ours.probabilities[label] - probability) < 1e-4, (label, ours.probabilities, theirs)


def test_mimetic_initialisation_is_refused_for_other_architectures():
    with pytest.raises(SystemExit, match="ViT attention"):
        train_vit.build_model(train_vit.ModelArguments(scratch_config="levit", image_size=64, mimetic_init=True), seed=0)


def test_resume_from_the_last_checkpoint_continues_the_run(tiny_image_folder, tmp_path):
    """--resume_from_checkpoint last finds the newest checkpoint with transformers' get_last_checkpoint."""
    output = tmp_path / "run"
    common = ["--data-dir", str(tiny_image_folder), "--scratch-config", "tiny", "--image-size", "32",
              "--per_device_train_batch_size", "8", "--eval_strategy", "steps", "--save_strategy", "steps",
              "--eval_steps", "2", "--save_steps", "2", "--save_total_limit", "5", "--output-dir", str(output)]
    train_vit.main(common + ["--max_steps", "2"])
    first = json.loads((output / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    train_vit.main(common + ["--max_steps", "4", "--resume_from_checkpoint", "last"])
    state = json.loads((output / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert first["global_step"] == 2 and state["global_step"] == 4
    # The resumed run kept the first run's log, so it went on from step 2 rather than starting over.
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [2, 4]
