"""Temperature scaling and the two operating points of the screening aid.

The model's P(malignant) is turned into three risk levels with two thresholds
chosen on the validation split:

    low       p <  screening_threshold     (chosen for high sensitivity)
    moderate  screening <= p < high_risk
    high      p >= high_risk_threshold     (chosen for high specificity)

Both are chosen on *calibrated* probabilities, so temperature scaling comes
first and is then folded into the classifier so every consumer of the saved
model sees the same calibrated numbers.
"""

from __future__ import annotations

import math

import numpy as np

RISK_LEVELS = ("low", "moderate", "high")

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def _logits_array(logits) -> np.ndarray:
    if hasattr(logits, "detach"):  # a torch tensor; torch itself is imported only where it is needed
        logits = logits.detach().cpu().numpy()
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, n_classes >= 2), got {array.shape}.")
    return array


def softmax_probs(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) as an (N, n_classes) float64 array."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    scaled = _logits_array(logits) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)  # avoids overflow in exp
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits, labels, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017).

    Fit it on a held-out split (validation), never on the training set, where
    the network is overconfident by construction. T > 1 softens, T < 1
    sharpens; argmax, and so accuracy and ROC AUC, do not change.
    Returns a float clipped to [0.05, 20].
    """
    import torch

    z = torch.as_tensor(_logits_array(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64).ravel())
    if z.shape[0] == 0:
        raise ValueError("Cannot fit a temperature on zero samples.")
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"{z.shape[0]} logits but {y.shape[0]} labels.")

    # Optimising log T keeps T positive without constraints. Clamping inside
    # the objective bounds T: on tiny or perfectly separated sets the NLL
    # keeps falling as T -> 0, and the clamp turns that into a flat gradient
    # instead of an overflow.
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        temperature = torch.exp(log_t.clamp(low, high))
        loss = torch.nn.functional.cross_entropy(z / temperature, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = math.exp(float(log_t.detach().clamp(low, high)))
    return temperature if math.isfinite(temperature) else 1.0


def _split_by_class(y_true, prob_malignant) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(prob_malignant, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} labels but prob_malignant has {p.size} probabilities.")
    return p[y == 1], p[y == 0]


# Sensitivity/specificity are ratios of small integers; compare with a little
# slack so that e.g. 19/20 counts as reaching 0.95.
_TOLERANCE = 1e-12


def screening_threshold(y_true, prob_malignant, min_sensitivity: float = 0.95) -> float:
    """Highest t with sensitivity(prob >= t) >= min_sensitivity.

    t is always one of the observed malignant probabilities, so the malignant
    case sitting exactly at t is flagged. With no malignant cases returns 0.5.
    """
    if not 0 < min_sensitivity <= 1:
        raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}.")
    malignant, _ = _split_by_class(y_true, prob_malignant)
    if malignant.size == 0:
        return 0.5
    malignant = np.sort(malignant)
    candidates = np.unique(malignant)
    n_flagged = malignant.size - np.searchsorted(malignant, candidates, side="left")
    sensitivity = n_flagged / malignant.size
    # Sensitivity only falls as t rises, and the lowest candidate flags all.
    return float(candidates[sensitivity >= min_sensitivity - _TOLERANCE].max())


def high_risk_threshold(y_true, prob_malignant, min_specificity: float = 0.95) -> float:
    """Lowest t with specificity >= min_specificity, a benign case counting as
    correctly negative iff its prob < t.

    Specificity only steps up just *above* a benign probability, so the
    candidates include nextafter(benign prob) — the smallest float that
    clears it. Hence t may sit one ulp above an observed benign value, and
    with min_specificity = 1 and a benign case at p = 1.0, t is just above 1
    (no input reaches "high"). With no benign cases returns 0.5.
    """
    if not 0 <= min_specificity <= 1:
        raise ValueError(f"min_specificity must be in [0, 1], got {min_specificity}.")
    _, benign = _split_by_class(y_true, prob_malignant)
    if benign.size == 0:
        return 0.5
    observed = np.asarray(prob_malignant, dtype=np.float64).ravel()
    candidates = np.unique(np.concatenate([observed, np.nextafter(benign, np.inf)]))
    benign = np.sort(benign)
    n_cleared = np.searchsorted(benign, candidates, side="left")  # benign with prob < t
    specificity = n_cleared / benign.size
    # Specificity only rises with t, and nextafter(max benign) clears them all.
    return float(candidates[specificity >= min_specificity - _TOLERANCE].min())


def _sensitivity(malignant: np.ndarray, threshold: float) -> float:
    return float(np.mean(malignant >= threshold)) if malignant.size else 0.0


def _specificity(benign: np.ndarray, threshold: float) -> float:
    return float(np.mean(benign < threshold)) if benign.size else 0.0


def choose_operating_points(y_true, prob_malignant, min_sensitivity: float = 0.95, min_specificity: float = 0.95) -> dict:
    """Both thresholds plus what they achieve on the data they were chosen on.

    On a weak model the high-specificity threshold can fall below the
    high-sensitivity one; then high_risk_threshold is raised to
    screening_threshold, the "moderate" band is empty, and
    validation_specificity_at_high_risk reports the specificity actually
    achieved there (which may be above the target).
    """
    screening = screening_threshold(y_true, prob_malignant, min_sensitivity)
    high_risk = max(high_risk_threshold(y_true, prob_malignant, min_specificity), screening)
    malignant, benign = _split_by_class(y_true, prob_malignant)
    return {
        "screening_threshold": screening,
        "high_risk_threshold": high_risk,
        "min_sensitivity": float(min_sensitivity),
        "min_specificity": float(min_specificity),
        "validation_sensitivity_at_screening": _sensitivity(malignant, screening),
        "validation_specificity_at_high_risk": _specificity(benign, high_risk),
    }


def stored_targets(config) -> tuple[float, float]:
    """(min_sensitivity, min_specificity) a model's thresholds were chosen for, from its config; 0.95 each if unsaid."""
    return (float(getattr(config, "min_sensitivity", None) or 0.95),
            float(getattr(config, "min_specificity", None) or 0.95))


def operating_point_config(operating_points: dict, temperature: float | None = None) -> dict:
    """The config.json entries a model's operating points are stored in (train_vit.py, calibrate_site.py).

    With a temperature, it is recorded as folded into the classifier
    (fold_temperature_into_classifier), which is how every stored model holds it.
    """
    entries = {key: float(operating_points[key])
               for key in ("screening_threshold", "high_risk_threshold", "min_sensitivity", "min_specificity")}
    if temperature is not None:
        entries.update(calibration_temperature=float(temperature), temperature_folded_into_classifier=True)
    return entries


def risk_level(prob_malignant: float, screening_threshold: float, high_risk_threshold: float) -> str:
    """"low" below screening, "moderate" in [screening, high_risk), "high" at or above high_risk."""
    if high_risk_threshold < screening_threshold:
        raise ValueError(
            f"high_risk_threshold ({high_risk_threshold}) must not be below screening_threshold ({screening_threshold})."
        )
    if prob_malignant >= high_risk_threshold:
        return "high"
    if prob_malignant >= screening_threshold:
        return "moderate"
    return "low"


def fold_temperature_into_classifier(model, temperature: float) -> None:
    """Divide `model.classifier`'s weight and bias by T, in place. Call once.

    softmax((W h + b) / T) == softmax((W / T) h + b / T), so after folding the
    model's plain softmax is the calibrated one. That matters because
    `transformers.pipeline("image-classification")`, the Hub widget and any
    third-party code only ever apply a plain softmax to the saved logits:
    storing T beside the model would leave every such consumer showing the
    uncalibrated, overconfident scores that the thresholds were not chosen on.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}.")
    import torch

    classifier = classifier_linear(model)
    with torch.no_grad():
        classifier.weight.div_(temperature)
        if classifier.bias is not None:
            classifier.bias.div_(temperature)


def classifier_linear(model):
    """The last linear layer of a ViT's or LeViT's classification head, the one that makes the logits.

    LeViT's head is a batch norm then a linear layer; a ViT's is the linear layer itself.
    """
    import torch

    head = model.classifier
    head = getattr(head, "linear", head)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"model.classifier must be a torch.nn.Linear, got {type(head).__name__}.")
    return head
