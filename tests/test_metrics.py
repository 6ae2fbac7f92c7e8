import json

import numpy as np
import pytest

from melanoma_screen.metrics import binary_metrics, expected_calibration_error, reliability_curve

# Hand-worked example: 4 malignant, 6 benign. No probability sits on a bin edge.
Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P = [0.95, 0.85, 0.55, 0.30, 0.70, 0.45, 0.25, 0.10, 0.05, 0.65]


def test_binary_metrics_hand_worked():
    m = binary_metrics(Y, P, threshold=0.5)
    # malignant: 0.95, 0.85, 0.55 >= 0.5 -> tp = 3; 0.30 -> fn = 1
    # benign:    0.70, 0.65 >= 0.5 -> fp = 2; 0.45, 0.25, 0.10, 0.05 -> tn = 4
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(7 / 10)       # (tp + tn) / n = (3 + 4) / 10
    assert m["precision"] == pytest.approx(3 / 5)       # tp / (tp + fp) = 3 / (3 + 2)
    assert m["sensitivity"] == pytest.approx(3 / 4)     # tp / (tp + fn) = 3 / (3 + 1)
    assert m["specificity"] == pytest.approx(4 / 6)     # tn / (tn + fp) = 4 / (4 + 2)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))  # = 6 / 9
    # AUC = fraction of (malignant, benign) pairs ranked correctly, 24 pairs:
    # 0.95 beats 6 benign, 0.85 beats 6, 0.55 beats 4 (not 0.70, 0.65), 0.30 beats 3 -> 19 / 24
    assert m["roc_auc"] == pytest.approx(19 / 24)
    assert (m["n"], m["n_malignant"], m["n_benign"], m["threshold"]) == (10, 4, 6, 0.5)
    assert m["ece"] == pytest.approx(expected_calibration_error(Y, P))
    json.dumps(m)  # plain Python types only
    assert all(type(m[k]) is float for k in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "ece"))


def test_threshold_is_inclusive():
    # At t = 0.30 the malignant case at exactly 0.30 is flagged: tp = 4;
    # benign 0.70, 0.65, 0.45 are >= 0.30 -> fp = 3, tn = 3.
    m = binary_metrics(Y, P, threshold=0.30)
    assert m["confusion_matrix"] == [[3, 3], [0, 4]]
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == pytest.approx(3 / 6)


def test_ece_hand_worked_5_bins():
    # confidence = max(p, 1 - p); predicted malignant iff p >= 0.5
    #   p:        0.95 0.85 0.55 0.30 | 0.70 0.45 0.25 0.10 0.05 0.65
    #   conf:     0.95 0.85 0.55 0.70 | 0.70 0.55 0.75 0.90 0.95 0.65
    #   correct:   y    y    y    n   |  n    y    y    y    y    n
    # bins (0.4,0.6]: {0.55, 0.55}             acc 1,    conf 0.55   -> |gap| 0.45,   n 2
    #      (0.6,0.8]: {0.70, 0.70, 0.75, 0.65} acc 1/4,  conf 0.70   -> |gap| 0.45,   n 4
    #      (0.8,1.0]: {0.95, 0.85, 0.90, 0.95} acc 1,    conf 0.9125 -> |gap| 0.0875, n 4
    # ECE = (2 * 0.45 + 4 * 0.45 + 4 * 0.0875) / 10 = 3.05 / 10
    assert expected_calibration_error(Y, P, n_bins=5) == pytest.approx(0.305)


def test_ece_hand_worked_default_15_bins():
    # With 15 bins every distinct confidence gets its own bin; per-sample gaps:
    # 0.55 x2 correct: 0.45 + 0.45; 0.65 wrong: 0.65; 0.70 x2 wrong: 0.70 + 0.70;
    # 0.75 correct: 0.25; 0.85: 0.15; 0.90: 0.10; 0.95 x2: 0.05 + 0.05 -> 3.55 / 10
    assert expected_calibration_error(Y, P) == pytest.approx(0.355)
    assert binary_metrics(Y, P)["ece"] == pytest.approx(0.355)


def test_ece_perfectly_confident_and_right_is_zero():
    assert expected_calibration_error([1, 0, 1], [1.0, 0.0, 1.0]) == 0.0
    assert expected_calibration_error([], []) == 0.0


def test_roc_auc_none_with_one_class():
    m = binary_metrics([0, 0, 0], [0.2, 0.6, 0.1])
    assert m["roc_auc"] is None
    assert json.loads(json.dumps(m))["roc_auc"] is None
    # no malignant cases: sensitivity undefined -> 0.0; fp = 1 so precision = 0 / 1
    assert m["sensitivity"] == 0.0 and m["precision"] == 0.0 and m["f1"] == 0.0
    assert m["specificity"] == pytest.approx(2 / 3)
    assert binary_metrics([1, 1], [0.9, 0.4])["roc_auc"] is None


def test_zero_division_gives_zero():
    # Nothing predicted malignant: tp + fp = 0 -> precision 0.0, and F1 0.0.
    m = binary_metrics([1, 0, 0], [0.1, 0.2, 0.3])
    assert m["confusion_matrix"] == [[2, 0], [1, 0]]
    assert (m["precision"], m["sensitivity"], m["f1"], m["specificity"]) == (0.0, 0.0, 0.0, 1.0)
    # Everything predicted malignant, no benign: specificity's tn + fp = 0.
    m = binary_metrics([1, 1], [0.9, 0.8])
    assert m["specificity"] == 0.0 and m["sensitivity"] == 1.0


def test_reliability_curve_bins():
    # 10 bins of P(malignant): 0.05, 0.10 -> (0, 0.1]; 0.25 -> (0.2, 0.3]; ...
    curve = reliability_curve(Y, P, n_bins=10)
    assert sum(curve["counts"]) == 10
    first = 0
    assert (curve["bin_lower"][first], curve["bin_upper"][first]) == (0.0, pytest.approx(0.1))
    assert curve["mean_predicted"][first] == pytest.approx(0.075)
    assert curve["observed_frequency"][first] == 0.0
    # (0.6, 0.7]: 0.70 and 0.65, both benign
    i = curve["bin_lower"].index(pytest.approx(0.6))
    assert curve["counts"][i] == 2 and curve["observed_frequency"][i] == 0.0
    assert curve["mean_predicted"] == sorted(curve["mean_predicted"])
    json.dumps(curve)


def test_input_validation():
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5, np.nan])
