"""Fitting the input check: its bounds and thresholds from a model's training and validation splits.

Every threshold is fitted on data, never typed in (the exceptions are definitions: the
ceiling of the "no colour" bound, GREY_CHROMA, a definition of grey, and
input_check.FIXED_BOUNDS, a face): each
statistic's bounds are extreme quantiles of the training split, and the distance
and spread thresholds are the ones that keep `target_acceptance` of the
validation split when combined with them. fit_input_check.py is the command line;
train_vit.py fits the check for each model it saves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .input_check import FIXED_BOUNDS, REASONS, REPORT_FILE, RULES, STATS_FILE, InputCheck, with_fixed_bounds
from .model_card import AT_END, INPUT_CHECK_HEADING, INPUT_CHECK_SECTION, input_check_markdown, upsert_card_section
from .picture_statistics import FEATURES, measure

logger = logging.getLogger(__name__)

# The "no colour" bound never lies above this 99th percentile of chroma (about 10 of 255
# levels between channels): below it the most colourful pixels of the centre are grey, as in a
# grayscale picture saved as RGB, give or take JPEG's rounding.
GREY_CHROMA = 0.04

# Seven bounds at 0.2% each spent the whole 1% refusal budget of a 99% validation acceptance on
# the statistics (13 of 1123 validation pictures), leaving none for the feature space, which alone
# catches photographs of people and things; at 0.1% each they leave it about a third.
DEFAULT_ALPHA = 0.001

# Statistics bounded at the training split's extreme instead of its alpha quantile. The streak of a
# camera shake (picture_statistics.STREAK_QUEFRENCIES): its training tail is small, sharp lesions on
# very smooth skin, not shaken pictures (a contact sheet of the eight highest), and at the 0.1%
# quantile it refused one such validation picture, which the rule of choose_thresholds then took
# from the feature space's budget: the distance and spread thresholds rose from 22.3 and 42.6 to
# 25.0 and 42.7, and a portrait and a drawn finger passed (session measurement). At the training
# maximum it refuses no validation picture, and catches the same shaken lesions (a shake's streak
# is far above any training picture's).
EXTREME_BOUNDS = ("streak",)


def _order_statistic(values: np.ndarray, alpha: float, side: str) -> float:
    """The bound that a fraction alpha of exchangeable new values falls outside (split conformal).

    NaN, meaning no bound, when there are too few values to promise alpha.
    """
    values = np.sort(values[np.isfinite(values)])
    rank = int(np.floor(alpha * (len(values) + 1)))  # the rank-th smallest: P(new < it) <= alpha
    if rank < 1:
        return float("nan")
    return float(values[rank - 1] if side == "low" else values[len(values) - rank])


def fit_bounds(train_features: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per statistic, the lower and upper bounds that each leave out a fraction alpha of the training pictures.

    "no colour" is the one bound that is a definition as well: it is never set above
    GREY_CHROMA, so that a dermoscopic picture merely paler than the training
    pictures is not told that it has no colour. The statistics in EXTREME_BOUNDS are bounded at the
    training extreme instead, and those of input_check.FIXED_BOUNDS are not fitted at all.
    """
    lower = np.full(len(FEATURES), np.nan)
    upper = np.full(len(FEATURES), np.nan)
    for _, name, side in RULES:
        if (name, side) in FIXED_BOUNDS:
            continue
        index = FEATURES.index(name)
        target = lower if side == "low" else upper
        # Rank 1, the extreme, only where alpha's own rank exists: with too few pictures the extreme
        # promises nothing, and there is no bound, as for the others.
        enough = alpha * (len(train_features) + 1) >= 1
        share = 1 / (len(train_features) + 1) if name in EXTREME_BOUNDS and enough else alpha
        target[index] = _order_statistic(train_features[:, index], share, side)
    colour_range = FEATURES.index("colour_range")
    lower[colour_range] = np.minimum(lower[colour_range], GREY_CHROMA)  # NaN (too few pictures) stays no bound
    # Set even with too few pictures for the others: a definition needs no data.
    return with_fixed_bounds(lower, upper)


def fit_feature_space(train_tokens: np.ndarray, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision (inverse) of the shared within-class covariance, Ledoit-Wolf shrunk.

    train_tokens: (N, P, D) patch tokens; a picture's embedding is their mean over P.
    """
    from sklearn.covariance import LedoitWolf

    embeddings = np.asarray(train_tokens).mean(axis=1, dtype=np.float32).astype(np.float64)
    labels = np.asarray(train_labels)
    classes = sorted(set(labels.tolist()))
    means = np.stack([embeddings[labels == label].mean(axis=0) for label in classes])
    centred = embeddings - means[np.searchsorted(classes, labels)]
    # Shrinkage: a 192-dimensional covariance from a few thousand, correlated embeddings is
    # ill-conditioned, and its smallest directions would dominate an unshrunk distance.
    covariance = LedoitWolf(assume_centered=True).fit(centred)
    return means, covariance.precision_


# Patches per training picture that the spread's covariance is estimated from: 10k pictures give
# 80k patch tokens, plenty for 192 dimensions, in a sixth of the memory of all 64 per picture.
SPREAD_PATCHES_PER_PICTURE = 8


def fit_spread(train_tokens: np.ndarray) -> np.ndarray:
    """The precision of patch tokens around their own picture's mean, Ledoit-Wolf shrunk (see InputCheck.spread)."""
    from sklearn.covariance import LedoitWolf

    tokens = np.asarray(train_tokens)
    step = max(1, tokens.shape[1] // SPREAD_PATCHES_PER_PICTURE)
    centred = (tokens[:, ::step].astype(np.float32) - tokens.mean(axis=1, keepdims=True, dtype=np.float32))
    return LedoitWolf(assume_centered=True).fit(centred.reshape(-1, tokens.shape[-1]).astype(np.float64)).precision_


def choose_thresholds(distances: np.ndarray, spreads: np.ndarray, stats_ok: np.ndarray,
                      target_acceptance: float) -> tuple[float | None, float | None]:
    """The distance and spread thresholds that, with the statistics, keep target_acceptance of validation.

    Both are the same quantile of the validation pictures the statistics accept,
    the highest quantile whose two thresholds together still refuse no more than
    the budget the statistics left: neither statistic is favoured. (None, None)
    when the validation split is too small to promise the target.
    """
    n = len(distances)
    if n == 0 or n < int(np.ceil(1 / max(1 - target_acceptance, 1e-9))) or not stats_ok.any():
        return None, None
    kept_distances, kept_spreads = distances[stats_ok], spreads[stats_ok]
    allowed = int(np.floor((1 - target_acceptance) * n)) - int((~stats_ok).sum())
    descending_distances, descending_spreads = np.sort(kept_distances)[::-1], np.sort(kept_spreads)[::-1]
    best = (float(descending_distances[0]), float(descending_spreads[0]))
    for rank in range(1, len(kept_distances)):
        thresholds = (float(descending_distances[rank]), float(descending_spreads[rank]))
        refused = int(((kept_distances > thresholds[0]) | (kept_spreads > thresholds[1])).sum())
        if refused > max(allowed, 0):
            break
        best = thresholds
    return best


def fit(train: dict, validation: dict, model_version: str | None = None, alpha: float = DEFAULT_ALPHA,
        target_acceptance: float = 0.99) -> tuple[InputCheck, dict]:
    """Fit the check from measurements of the training and validation splits.

    train, validation: {"features": (N, F), "embeddings": (N, P, D) patch tokens, "labels": (N,)}, as
    picture_statistics.measure gives them. alpha: the share of training pictures each statistic's bound may leave out.
    The distance and spread thresholds then refuse validation pictures until, with the
    fitted statistics, target_acceptance of them is still accepted; the fixed bounds (input_check.FIXED_BOUNDS)
    refuse on top of that.
    """
    lower, upper = fit_bounds(np.asarray(train["features"]), alpha)
    check = InputCheck(lower, upper, model_version=model_version)
    # The thresholds spend what the fitted bounds leave of the budget, and the fixed ones (a face) refuse on
    # top of it: with the face detector's few validation lesions in the budget (3 of 1,123 with 8 neighbours,
    # picture_statistics.FACE_NEIGHBOURS), the distance and spread thresholds rose from 22.3 and 42.6 to 37.4
    # and 45.1 and let portraits through (session measurement): a definition moved the weights' thresholds.
    fitted_only = InputCheck(*with_fixed_bounds(lower, upper, switched_off=True))
    stats_ok = np.array([verdict.ok for verdict in fitted_only.judge(validation["features"])])
    if len(train["embeddings"]) and np.ndim(train["embeddings"]) != 3:
        raise ValueError(f"the input check is fitted on (N, P, D) patch tokens, not on an array of shape "
                         f"{np.shape(train['embeddings'])}")
    if len(train["embeddings"]) and len(set(np.asarray(train["labels"]).tolist())) == 2:
        check.class_means, check.precision = fit_feature_space(train["embeddings"], train["labels"])
        check.spread_precision = fit_spread(train["embeddings"])
        check.threshold, check.spread_threshold = choose_thresholds(
            check.distance(validation["embeddings"]), check.spread(validation["embeddings"]), stats_ok,
            target_acceptance)
        if check.threshold is None:
            logger.warning("too few validation pictures (%d) to choose the distance threshold at %.1f%% "
                           "acceptance: the feature-space check is off.", len(stats_ok), 100 * target_acceptance)
    verdicts = check.judge(validation["features"], validation["embeddings"] if check.uses_features else None)
    reasons = [verdict.reason for verdict in verdicts]
    report = {
        "alpha": alpha,
        "target_acceptance": target_acceptance,
        "n_train": int(len(train["features"])),
        "n_validation": int(len(validation["features"])),
        "validation_acceptance": float(np.mean([reason is None for reason in reasons])) if reasons else None,
        "validation_refusals": {reason: reasons.count(reason) for reason in REASONS if reason in reasons},
        "bounds": {name: {"low": None if np.isnan(lower[i]) else float(lower[i]),
                          "high": None if np.isnan(upper[i]) else float(upper[i])} for i, name in enumerate(FEATURES)},
        "distance_threshold": check.threshold,
        "spread_threshold": check.spread_threshold,
        "model_version": model_version,
    }
    check.meta = {key: report[key] for key in ("alpha", "target_acceptance", "n_train", "n_validation",
                                               "validation_acceptance")}
    return check, report


def fit_screening_model(screening_model, train_records, validation_records, output_dir=None, alpha: float = DEFAULT_ALPHA,
                        target_acceptance: float = 0.99, progress: bool = True) -> dict:
    """Measure both splits with `screening_model`, fit, and save into output_dir (default: nowhere)."""
    def split(records, desc):
        records = list(records)
        measured = measure(screening_model, [record.image if getattr(record, "image", None) is not None
                                             else record.path for record in records], desc=desc, progress=progress)
        measured["labels"] = np.asarray([records[i].label for i in measured["kept"]])
        return measured

    train = split(train_records, "input check: training split")
    validation = split(validation_records, "input check: validation split")
    check, report = fit(train, validation, model_version=screening_model.version, alpha=alpha,
                        target_acceptance=target_acceptance)
    if output_dir is not None:
        check.save(output_dir)
        (Path(output_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        card_path = Path(output_dir) / "README.md"
        if card_path.is_file():
            upsert_card_section(card_path, INPUT_CHECK_SECTION, input_check_markdown(report),
                                heading=INPUT_CHECK_HEADING, add_at=AT_END)
        logger.info("input check fitted on %d training and %d validation pictures: %.1f%% of validation accepted; "
                    "saved to %s", report["n_train"], report["n_validation"],
                    100 * (report["validation_acceptance"] or 0), Path(output_dir) / STATS_FILE)
    return report
