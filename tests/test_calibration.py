import numpy as np
import pytest
import torch

from melanoma_screen.calibration import (
    RISK_LEVELS,
    choose_operating_points,
    fit_temperature,
    fold_temperature_into_classifier,
    high_risk_threshold,
    risk_level,
    screening_threshold,
    softmax_probs,
)
from melanoma_screen.metrics import expected_calibration_error

# 4 malignant, 4 benign.
Y = [1, 1, 1, 1, 0, 0, 0, 0]
P = [0.9, 0.8, 0.6, 0.3, 0.1, 0.2, 0.5, 0.7]


def sensitivity(t):
    return np.mean(np.array(P[:4]) >= t)


def specificity(t):
    return np.mean(np.array(P[4:]) < t)


def test_screening_threshold_is_highest_reaching_target():
    # 75% of 4 malignant = 3 flagged -> the 3rd highest malignant prob, 0.6
    t = screening_threshold(Y, P, min_sensitivity=0.75)
    assert t == 0.6
    assert sensitivity(t) == 0.75
    assert sensitivity(np.nextafter(t, 1.0)) == 0.5  # any higher threshold misses a second case
    # 95% of 4 = 3.8 -> all 4 -> the lowest malignant prob
    assert screening_threshold(Y, P, min_sensitivity=0.95) == 0.3
    assert screening_threshold(Y, P, min_sensitivity=1.0) == 0.3
    assert screening_threshold(Y, P, min_sensitivity=0.5) == 0.8


def test_screening_threshold_ties_and_exact_ratio():
    assert screening_threshold([1, 1, 1, 1], [0.9, 0.6, 0.6, 0.3], min_sensitivity=0.75) == 0.6
    # 19 / 20 == 0.95 exactly: must pick the 19th highest of 20, not the 20th
    probs = np.linspace(0.05, 1.0, 20)
    assert screening_threshold(np.ones(20), probs, 0.95) == pytest.approx(probs[1])


def test_screening_threshold_no_malignant():
    assert screening_threshold([0, 0], [0.1, 0.9]) == 0.5


def test_high_risk_threshold_is_lowest_reaching_target():
    # 75% of 4 benign = 3 below t -> t just above the 3rd lowest benign (0.5)
    t = high_risk_threshold(Y, P, min_specificity=0.75)
    assert t == np.nextafter(0.5, np.inf)
    assert specificity(t) == 0.75
    assert specificity(np.nextafter(t, 0.0)) == 0.5  # at exactly 0.5 the benign 0.5 counts as positive
    # all benign below t -> just above the highest benign, 0.7
    assert high_risk_threshold(Y, P, min_specificity=1.0) == np.nextafter(0.7, np.inf)
    assert high_risk_threshold(Y, P, min_specificity=0.95) == np.nextafter(0.7, np.inf)
    assert high_risk_threshold([1, 1], [0.2, 0.4]) == 0.5  # no benign cases


def test_choose_operating_points():
    points = choose_operating_points(Y, P, min_sensitivity=0.95, min_specificity=0.95)
    assert points == {
        "screening_threshold": 0.3,
        "high_risk_threshold": float(np.nextafter(0.7, np.inf)),
        "min_sensitivity": 0.95,
        "min_specificity": 0.95,
        "validation_sensitivity_at_screening": 1.0,
        "validation_specificity_at_high_risk": 1.0,
    }
    assert all(type(value) is float for value in points.values())


def test_high_risk_raised_to_screening_when_below():
    # Malignant probs are low, benign even lower: the 95%-specificity threshold
    # (just above 0.02) is below the 95%-sensitivity one (0.1).
    points = choose_operating_points([1, 1, 0, 0], [0.1, 0.9, 0.01, 0.02])
    assert points["screening_threshold"] == 0.1
    assert points["high_risk_threshold"] == 0.1
    assert points["validation_specificity_at_high_risk"] == 1.0


def test_risk_level_boundaries():
    s, h = 0.3, 0.7
    assert risk_level(0.0, s, h) == "low"
    assert risk_level(np.nextafter(s, 0), s, h) == "low"
    assert risk_level(s, s, h) == "moderate"
    assert risk_level(np.nextafter(h, 0), s, h) == "moderate"
    assert risk_level(h, s, h) == "high"
    assert risk_level(1.0, s, h) == "high"
    assert risk_level(0.5, 0.5, 0.5) == "high"  # empty moderate band
    assert set(RISK_LEVELS) == {"low", "moderate", "high"}
    with pytest.raises(ValueError):
        risk_level(0.5, 0.7, 0.3)


def _nll(logits, labels, temperature):
    probs = softmax_probs(logits, temperature)
    return -np.mean(np.log(probs[np.arange(len(labels)), labels]))


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, size=(20_000, 2))
    true_probs = softmax_probs(logits, temperature=2.5)
    labels = (rng.random(len(logits)) < true_probs[:, 1]).astype(int)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.10)
    assert fit_temperature(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)) == pytest.approx(2.5, rel=0.10)


def test_fit_temperature_reduces_nll_and_ece_when_overconfident():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0.0, 1.5, size=(5_000, 2))
    labels = (rng.random(len(true_logits)) < softmax_probs(true_logits)[:, 1]).astype(int)
    overconfident = 3.0 * true_logits
    t = fit_temperature(overconfident, labels)
    assert t > 2.0
    assert _nll(overconfident, labels, t) < _nll(overconfident, labels, 1.0)
    ece_before = expected_calibration_error(labels, softmax_probs(overconfident)[:, 1])
    ece_after = expected_calibration_error(labels, softmax_probs(overconfident, t)[:, 1])
    assert ece_after < ece_before / 2


def test_fit_temperature_tiny_inputs():
    separable = np.array([[2.0, -1.0], [1.0, 0.0], [-1.0, 3.0], [0.0, 0.5]])
    t = fit_temperature(separable, [0, 0, 1, 1])
    assert 0.05 <= t <= 20 and np.isfinite(t)
    assert t == pytest.approx(0.05)  # all right: NLL keeps falling as T -> 0, clipped
    assert fit_temperature(separable, [1, 1, 0, 0]) == pytest.approx(20.0)  # all wrong: T -> infinity, clipped
    assert fit_temperature(np.zeros((4, 2)), [0, 1, 0, 1]) == pytest.approx(1.0)  # no signal: stays at 1
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 2)), [])


def test_softmax_probs():
    probs = softmax_probs(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(softmax_probs([[0.0, 2.0]], temperature=2.0), softmax_probs([[0.0, 1.0]]))


def test_fold_temperature_into_tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16, num_labels=2)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.3, -0.2]))  # bias starts at 0; make folding it matter
        pixels = torch.randn(5, 3, 32, 32)
        before = model(pixel_values=pixels).logits.numpy()
        fold_temperature_into_classifier(model, 2.5)
        after = model(pixel_values=pixels).logits.numpy()
    np.testing.assert_allclose(softmax_probs(after), softmax_probs(before, 2.5), atol=1e-6)
    np.testing.assert_allclose(after, before / 2.5, atol=1e-5)
    with pytest.raises(ValueError):
        fold_temperature_into_classifier(model, 0.0)


def test_high_risk_raised_to_screening_at_75_percent():
    # raw high-risk threshold nextafter(0.5) < screening 0.6 -> raised to 0.6,
    # where benign 0.1, 0.2, 0.5 are below: specificity 3/4.
    points = choose_operating_points(Y, P, min_sensitivity=0.75, min_specificity=0.75)
    assert points["screening_threshold"] == points["high_risk_threshold"] == 0.6
    assert points["validation_specificity_at_high_risk"] == 0.75
