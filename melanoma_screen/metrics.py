"""Binary screening metrics for benign (0) vs malignant (1).

Everything returned is a plain Python float/int/list/None so it can go
straight into a JSON report or the model card without conversion.
"""

from __future__ import annotations

import numpy as np

from .input_check import REASONS


def _as_arrays(y_true, prob_malignant) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(prob_malignant, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} labels but prob_malignant has {p.size} probabilities.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (benign) and 1 (malignant).")
    if p.size and (np.isnan(p).any() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("prob_malignant must be probabilities in [0, 1] without NaN.")
    return y, p


def _ratio(numerator: int, denominator: int) -> float:
    # An undefined ratio (e.g. precision with no positive predictions) is
    # reported as 0.0 rather than NaN so reports stay valid JSON.
    return float(numerator) / float(denominator) if denominator else 0.0


def _equal_width_bin(values: np.ndarray, n_bins: int) -> np.ndarray:
    # Right-closed bins (lo, hi] as in Guo et al. 2017; a value of exactly 0
    # goes into the first bin.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)


def expected_calibration_error(y_true, prob_malignant, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017), in [0, 1].

    For each sample the predicted class is malignant iff p >= 0.5 and its
    confidence is max(p, 1 - p). Confidences are grouped into `n_bins`
    equal-width bins over [0, 1] (right-closed, (lo, hi]); with two classes
    only the bins above 0.5 can be populated. Then

        ECE = sum_b |accuracy_b - mean_confidence_b| * n_b / N

    i.e. the count-weighted gap between how often the predicted class is right
    and how sure the model claimed to be. Empty input gives 0.0.
    """
    y, p = _as_arrays(y_true, prob_malignant)
    if y.size == 0:
        return 0.0
    predicted = (p >= 0.5).astype(np.int64)
    confidence = np.maximum(p, 1.0 - p)
    correct = (predicted == y).astype(np.float64)
    bins = _equal_width_bin(confidence, n_bins)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.sum() / y.size
    return float(ece)


def reliability_curve(y_true, prob_malignant, n_bins: int = 10) -> dict:
    """Points of a reliability diagram: P(malignant) binned into equal-width bins.

    Only non-empty bins are returned. For each: its edges, the mean predicted
    P(malignant), the observed fraction of malignant cases, and the count.
    A calibrated model has observed_frequency == mean_predicted.
    """
    y, p = _as_arrays(y_true, prob_malignant)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = _equal_width_bin(p, n_bins)
    curve = {"bin_lower": [], "bin_upper": [], "mean_predicted": [], "observed_frequency": [], "counts": []}
    for b in range(n_bins):
        in_bin = bins == b
        if not in_bin.any():
            continue
        curve["bin_lower"].append(float(edges[b]))
        curve["bin_upper"].append(float(edges[b + 1]))
        curve["mean_predicted"].append(float(p[in_bin].mean()))
        curve["observed_frequency"].append(float(y[in_bin].mean()))
        curve["counts"].append(int(in_bin.sum()))
    return curve


def binary_metrics(y_true, prob_malignant, threshold: float = 0.5) -> dict:
    """Screening metrics with "malignant" predicted iff prob_malignant >= threshold.

    confusion_matrix is [[tn, fp], [fn, tp]]: rows are the true class
    (benign, malignant), columns the predicted class. Ratios with a zero
    denominator are 0.0; roc_auc is None when only one class is present.
    """
    y, p = _as_arrays(y_true, prob_malignant)
    predicted = p >= threshold
    malignant = y == 1
    tp = int(np.sum(predicted & malignant))
    fp = int(np.sum(predicted & ~malignant))
    tn = int(np.sum(~predicted & ~malignant))
    fn = int(np.sum(~predicted & malignant))

    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # = harmonic mean of precision and sensitivity
    # AUC is undefined with a single class; None serialises to JSON null.
    # Imported here: scikit-learn takes a second to import, and predicting (predict.py, the app) needs none of it.
    from sklearn.metrics import roc_auc_score

    roc_auc = float(roc_auc_score(y, p)) if 0 < malignant.sum() < y.size else None
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, y.size),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": f1,
        "roc_auc": roc_auc,
        "ece": expected_calibration_error(y, p),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(y.size),
        "n_malignant": int(malignant.sum()),
        "n_benign": int(y.size - malignant.sum()),
    }


OPERATING_POINTS = ("at_0_5", "at_screening_threshold", "at_high_risk_threshold")


def at_operating_points(y_true, prob_malignant, screening_threshold: float, high_risk_threshold: float) -> dict:
    """binary_metrics at 0.5 and at a model's two thresholds, keyed by OPERATING_POINTS.

    This is the block every report holds: evaluate_model.py's, and in
    eval_results.json the "test" entry and each "external" entry.
    """
    thresholds = (0.5, screening_threshold, high_risk_threshold)
    return {key: binary_metrics(y_true, prob_malignant, threshold=threshold)
            for key, threshold in zip(OPERATING_POINTS, thresholds)}


def by_source(y_true, prob_malignant, sources, screening_threshold: float, high_risk_threshold: float) -> dict:
    """Sensitivity and specificity at both thresholds for each source of a pooled set.

    Thresholds chosen on a pooled validation set can hold on one source and
    fail on another; this shows it. A source with one class only has the
    other rate undefined (None), not 0.
    """
    y_true, prob_malignant = _as_arrays(y_true, prob_malignant)
    sources = np.asarray(sources)
    report = {}
    for source in sorted(set(sources.tolist())):
        chosen = sources == source
        labels, probs = y_true[chosen], prob_malignant[chosen]
        n_malignant, n_benign = int(labels.sum()), int((labels == 0).sum())
        row = {"n_malignant": n_malignant, "n_benign": n_benign,
               "mean_p_malignant_benign": float(probs[labels == 0].mean()) if n_benign else None}
        for name, threshold in (("screening", screening_threshold), ("high_risk", high_risk_threshold)):
            flagged = probs >= threshold
            row[f"sensitivity_at_{name}"] = float(flagged[labels == 1].mean()) if n_malignant else None
            row[f"specificity_at_{name}"] = float((~flagged[labels == 0]).mean()) if n_benign else None
        if n_malignant and n_benign:
            # Where the threshold would have to sit on this source for 90% sensitivity, and what that leaves.
            at_90 = float(np.sort(probs[labels == 1])[::-1][int(np.ceil(0.9 * n_malignant)) - 1])
            row["threshold_for_sensitivity_0_90"] = at_90
            row["specificity_at_sensitivity_0_90"] = float((probs[labels == 0] < at_90).mean())
        report[source] = row
    return report


def auc_per_source(y_true, prob_malignant, sources, min_each_class: int = 10) -> dict:
    """{source: ROC AUC} for each source with at least min_each_class images of both classes.

    Pooled AUC over several sources also rewards telling the sources apart when
    their class balances differ; an AUC inside each source cannot.
    """
    from sklearn.metrics import roc_auc_score

    y_true, prob_malignant = _as_arrays(y_true, prob_malignant)
    sources = np.asarray(sources)
    report = {}
    for source in sorted(set(sources.tolist())):
        labels, probs = y_true[sources == source], prob_malignant[sources == source]
        if min(int(labels.sum()), int((labels == 0).sum())) >= min_each_class:
            report[source] = float(roc_auc_score(labels, probs))
    return report


def auc_against_benign_groups(y_true, prob_malignant, benign_groups) -> dict:
    """{group: {"roc_auc", "n_benign", "n_malignant"}}: every malignant image against the benign images of each group.

    benign_groups gives each image's group name (None for images in no group,
    and ignored for malignant ones). Where a model fails on the lesions that
    look like melanoma (keratoses, Spitz nevi), the pooled AUC hides it behind
    the common moles that make up most benign sets.
    """
    from sklearn.metrics import roc_auc_score

    y_true, prob_malignant = _as_arrays(y_true, prob_malignant)
    groups = np.asarray([group or "" for group in benign_groups], dtype=object)
    malignant = y_true == 1
    report = {}
    for group in sorted({g for g, label in zip(groups, y_true) if g and label == 0}):
        benign = (groups == group) & ~malignant
        chosen = benign | malignant
        if benign.sum() and malignant.sum():
            report[group] = {"roc_auc": float(roc_auc_score(y_true[chosen], prob_malignant[chosen])),
                             "n_benign": int(benign.sum()), "n_malignant": int(malignant.sum())}
    return report


def refusal_report(reasons, labels, probabilities, threshold: float) -> dict:
    """How many pictures were refused and why, and the model's figures on the accepted and the refused ones.

    reasons: one refusal reason or None per picture. The refused pictures' scores
    are never shown to anyone; they say whether the refusals fall where the
    model errs (a higher ROC AUC on the accepted pictures than on the refused).
    """
    reasons = list(reasons)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    accepted = np.array([reason is None for reason in reasons], dtype=bool)

    def figures(mask):
        if not mask.any():
            return None
        m = binary_metrics(labels[mask], probabilities[mask], threshold)
        return {key: m[key] for key in ("n", "n_malignant", "roc_auc", "sensitivity", "specificity", "accuracy")}

    return {
        "n": len(reasons),
        "accepted": float(accepted.mean()) if reasons else None,
        "refused": int((~accepted).sum()),
        "reasons": {reason: reasons.count(reason) for reason in REASONS if reason in reasons},
        "accepted_pictures": figures(accepted),
        "refused_pictures": figures(~accepted),
    }
