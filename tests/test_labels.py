"""The class order is defined once and every consumer of a trained model reads the model's own id2label."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

import data_prep
import train_vit
from conftest import example_images
from melanoma_screen import modeling
from melanoma_screen.inference import ModelLoadError, ScreeningModel
from melanoma_screen.labels import CLASS_NAMES, ID2LABEL, LABEL2ID, malignant_index, model_label_order
from melanoma_screen.transforms import build_image_processor

REVERSED = {0: "malignant", 1: "benign"}


def test_one_order_for_new_configs_and_for_the_data_side():
    assert ID2LABEL == {0: "benign", 1: "malignant"} and LABEL2ID == {"benign": 0, "malignant": 1}
    assert modeling.ID2LABEL is ID2LABEL and data_prep.LABELS == CLASS_NAMES
    # Class ids are binary truth in metrics and calibration: malignant must be 1.
    assert CLASS_NAMES.index("malignant") == 1


def test_malignant_index_follows_the_config():
    assert malignant_index(ViTConfig(id2label=ID2LABEL)) == 1
    assert malignant_index(ViTConfig(id2label=REVERSED)) == 0
    # As read back from config.json, with string keys.
    assert model_label_order(ViTConfig(id2label={"0": "malignant", "1": "benign"})) == ("malignant", "benign")
    for wrong in ({0: "benign", 1: "melanoma"}, {0: "benign"}, {0: "benign", 2: "malignant"}):
        with pytest.raises(ValueError, match="expected the classes benign and malignant"):
            malignant_index(ViTConfig(id2label=wrong))


def test_training_reads_p_malignant_from_the_config_column():
    logits = np.array([[2.0, -1.0], [-3.0, 0.5]])
    usual = train_vit.malignant_probability(logits, ViTConfig(id2label=ID2LABEL))
    reversed_ = train_vit.malignant_probability(logits[:, ::-1], ViTConfig(id2label=REVERSED))
    np.testing.assert_allclose(usual, reversed_)
    assert usual[1] > 0.5 > usual[0]


def save_tiny_model(folder, id2label, weight=None, bias=None):
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16, num_labels=2, id2label=id2label,
                       label2id={name: index for index, name in id2label.items()},
                       screening_threshold=0.3, high_risk_threshold=0.7)
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    if weight is not None:
        model.classifier.weight.data, model.classifier.bias.data = weight, bias
    model.save_pretrained(folder)
    build_image_processor(32).save_pretrained(folder)
    return model


def test_a_model_listing_malignant_first_still_gives_p_malignant(tmp_path):
    usual = save_tiny_model(tmp_path / "usual", ID2LABEL)
    # The same network with its two output rows swapped, and its config saying so.
    save_tiny_model(tmp_path / "reversed", REVERSED, usual.classifier.weight.data.flip(0).clone(),
                    usual.classifier.bias.data.flip(0).clone())
    assert json.loads((tmp_path / "reversed" / "config.json").read_text())["id2label"] == {"0": "malignant", "1": "benign"}
    images = example_images("benign")[:1] + example_images("malignant")[:1]
    a = ScreeningModel.load(str(tmp_path / "usual")).predict_batch(images)
    b = ScreeningModel.load(str(tmp_path / "reversed")).predict_batch(images)
    for first, second in zip(a, b):
        assert second.malignant_probability == pytest.approx(first.malignant_probability, abs=1e-6)
        assert second.probabilities == pytest.approx(first.probabilities, abs=1e-6)
        assert second.label == first.label and second.risk_level == first.risk_level


def test_a_model_with_other_classes_is_refused(tmp_path):
    save_tiny_model(tmp_path / "other", {0: "benign", 1: "melanoma"})
    with pytest.raises(ModelLoadError, match="id2label"):
        ScreeningModel.load(str(tmp_path / "other"))
