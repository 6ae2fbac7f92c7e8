"""Evaluation figures for the model card: ROC curve, confusion matrix, reliability diagram.

Each function writes one PNG and returns its path as a string. Figures are
closed after saving so a long training run does not accumulate them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # training machines and the app have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from .labels import BENIGN, MALIGNANT  # noqa: E402
from .metrics import expected_calibration_error, reliability_curve  # noqa: E402

DPI = 110


def _title(ax, title: str) -> None:
    # tight_layout does not shrink a title, so long ones are wrapped instead of cut off.
    ax.set_title(textwrap.fill(title, 42))


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return str(path)


def save_roc_curve(y_true, prob_malignant, path, operating_points: dict | None = None,
                   title: str = "ROC curve (test split)") -> str:
    """ROC curve with AUC in the legend; marks the screening and high-risk points if given."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob_malignant, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    both_classes = 0 < y.sum() < y.size
    if both_classes:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color="tab:blue", linewidth=2, label=f"model (AUC = {roc_auc_score(y, p):.3f})")
        # The operating points are thresholds on P(malignant); plot where each
        # one lands on *this* data, which is what a reader wants to compare.
        markers = {"screening_threshold": ("screening", "o", "tab:orange"),
                   "high_risk_threshold": ("high risk", "s", "tab:red")}
        for key, (name, marker, color) in markers.items():
            if operating_points and operating_points.get(key) is not None:
                threshold = float(operating_points[key])
                point_tpr = float(np.mean(p[y == 1] >= threshold))
                point_fpr = float(np.mean(p[y == 0] >= threshold))
                ax.plot(point_fpr, point_tpr, marker=marker, markersize=9, color=color, linestyle="none",
                        label=f"{name} (t = {threshold:.3f}): sens {point_tpr:.3f}, spec {1 - point_fpr:.3f}")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    _title(ax, title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def save_confusion_matrix(cm, path, title: str = "Confusion matrix (test split)") -> str:
    """cm is [[tn, fp], [fn, tp]]: rows true benign/malignant, columns predicted."""
    cm = np.asarray(cm, dtype=int)
    if cm.shape != (2, 2):
        raise ValueError(f"confusion matrix must be 2x2, got shape {cm.shape}.")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    row_totals = cm.sum(axis=1)
    for row in range(2):
        for col in range(2):
            count = cm[row, col]
            share = f"\n({count / row_totals[row]:.1%} of row)" if row_totals[row] else ""
            # Dark cells get white text so the numbers stay readable.
            color = "white" if count > cm.max() / 2 else "black"
            ax.text(col, row, f"{count}{share}", ha="center", va="center", color=color, fontsize=11)
    # Negative then positive, as the matrix is laid out, whatever a model's own class order.
    ax.set_xticks([0, 1], labels=[f"predicted\n{name}" for name in (BENIGN, MALIGNANT)])
    ax.set_yticks([0, 1], labels=[f"true\n{name}" for name in (BENIGN, MALIGNANT)])
    _title(ax, title)
    return _save(fig, path)


def save_reliability_diagram(y_true, prob_uncalibrated, prob_calibrated, path,
                             title: str = "Reliability diagram (test split)", n_bins: int = 10) -> str:
    """Observed malignant frequency vs mean predicted P(malignant) per bin.

    Shows the calibrated probabilities and, when given, the uncalibrated ones;
    the legend carries the top-label ECE of each. Marker area ~ bin count.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    curves = [("uncalibrated", prob_uncalibrated, "tab:red"), ("temperature-calibrated", prob_calibrated, "tab:blue")]
    for name, prob, color in curves:
        if prob is None:
            continue
        curve = reliability_curve(y_true, prob, n_bins=n_bins)
        ece = expected_calibration_error(y_true, prob)
        sizes = 15 + 200 * np.asarray(curve["counts"]) / max(sum(curve["counts"]), 1)
        ax.plot(curve["mean_predicted"], curve["observed_frequency"], color=color, linewidth=1.5,
                label=f"{name} (ECE = {ece:.3f})")
        ax.scatter(curve["mean_predicted"], curve["observed_frequency"], s=sizes, color=color, zorder=3)
    ax.set_xlim(-0.02, 1.02)  # room for markers of the end bins
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("Mean predicted P(malignant)")
    ax.set_ylabel("Observed fraction malignant")
    _title(ax, title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
