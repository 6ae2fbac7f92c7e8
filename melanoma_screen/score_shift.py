"""Move the thresholds to a site's device without labels: where do the site's undiagnosed scores lie?

    reference = score_reference(validation_probabilities, validation_labels)   # stored in config.json
    shift = fit_score_shift(site_probabilities, reference)                     # no label, no weight changed
    shifted_thresholds(screening, high_risk, shift["shift"])

On another dermatoscope every score moves up (docs/site_calibration.md), so the
screening threshold flags nearly every benign lesion. Re-estimating the
BatchNorm statistics (melanoma_screen.site_adaptation) moves the scores back
but re-orders them too: on the model shipped on 2026-12-05 it cost derm7pt 0.07
of ROC AUC. This module leaves the model alone and moves the thresholds
instead, so the site's ranking is the model's, untouched.

The site's scores, as logits, are modelled as a mixture of the model's
validation logits of benign and of malignant lesions (kernel densities), both
moved by one shift, with an unknown melanoma share (Saerens et al. 2002 estimate
the share alone; the shift is what another device adds). The likelihood hardly
tells a large shift with few melanomas from a smaller one with more, and
overrating the shift costs melanomas. So the thresholds move by the
**smallest shift the pictures do not rule out** (a one-sided 95% bound of the
profile likelihood, SHIFT_CHI2), not by the most likely one, and never past
the source's high-risk threshold (see shifted_thresholds). Why these choices,
and what they give on derm7pt halves at 2-30% melanomas: docs/site_calibration.md.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from .site_adaptation import CARD_SECTION, CONFIG_KEY, NothingToAdapt
from .site_calibration import SiteCalibrationError, sha256_of, staged_output

REFERENCE_KEY = "score_reference"
# Validation logits stored per class as this many quantiles: a few kB of config.json, and kernel densities from
# them match those from every picture within the grid's resolution.
REFERENCE_QUANTILES = 401
# Shifts tried, in logits: a site whose scores moved beyond these is refused rather than extrapolated.
SHIFT_GRID = np.round(np.arange(-4.0, 6.0 + 1e-9, 0.025), 3)
SHARE_GRID = np.linspace(0.0, 1.0, 201)
DENSITY_GRID = np.linspace(-16.0, 16.0, 3201)
# Twice the log-likelihood drop allowed from the best shift: the chi-squared(1) 90% point, a one-sided 95% bound.
SHIFT_CHI2 = 2.706
# The fewest accepted pictures a shift is fitted on. Fewer leave the bound so wide that little of the move is made:
# over 40 draws a half of derm7pt (benchmarks/score_shift_rules.py, docs/site_calibration.md), samples with 2-10%
# melanomas clear at least 40% of the held-out benign lesions at sensitivity 0.85 or more from 60 pictures on, on
# two seeds of draws; at 30 and 40 pictures they clear 0.34-0.39. A sample size, not a fitted score or threshold.
MIN_SHIFT_PICTURES = 60


class ScoreShiftError(SiteCalibrationError):
    """The site's scores cannot be placed against the model's validation scores."""


def logit(probabilities) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


def sigmoid(logits) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))


def require_reference(config, model_name: str) -> dict:
    """The model's stored score_reference, or one sentence saying how to add it."""
    reference = getattr(config, REFERENCE_KEY, None)
    if not reference:
        raise ScoreShiftError(
            f"{model_name} stores no validation scores to place a site's scores against; add them with "
            f"`python experiments/fit_adapted_thresholds.py {model_name}` (it rebuilds the model's validation split, "
            "so it needs the training data), "
            "or adapt its BatchNorm statistics instead with --method statistics.")
    return reference


def score_reference(probabilities, labels, description: str = "validation split, every source pooled") -> dict:
    """config.json's score_reference block: the model's calibrated P(malignant) per class, as logit quantiles.

    The bandwidth of each class's kernel density (Scott's rule) is computed on every score, not on the quantiles.
    """
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=int)
    block = {"scores": description, "quantiles": REFERENCE_QUANTILES}
    for name, value in (("benign", 0), ("malignant", 1)):
        logits = logit(probabilities[labels == value])
        if len(logits) < 20:
            raise ScoreShiftError(f"Only {len(logits)} {name} validation scores: at least 20 are needed per class.")
        block[name] = {"n": int(len(logits)),
                       "bandwidth": round(float(logits.std(ddof=1) * len(logits) ** (-1 / 5)), 5),
                       "logit_quantiles": [round(float(q), 4) for q in
                                           np.quantile(logits, np.linspace(0, 1, REFERENCE_QUANTILES))]}
    return block


def _density(block: dict) -> np.ndarray:
    """The class's kernel density on DENSITY_GRID."""
    points, width = np.asarray(block["logit_quantiles"]), block["bandwidth"]
    values = np.exp(-0.5 * ((DENSITY_GRID[:, None] - points[None, :]) / width) ** 2).mean(axis=1)
    return values / (width * np.sqrt(2 * np.pi))


def profile_likelihood(site_logits: np.ndarray, reference: dict, shares: np.ndarray = SHARE_GRID
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood, best melanoma share among `shares`) of the site's logits at each shift of SHIFT_GRID."""
    benign, malignant = _density(reference["benign"]), _density(reference["malignant"])
    likelihood, best_shares = np.empty(len(SHIFT_GRID)), np.empty(len(SHIFT_GRID))
    for i, shift in enumerate(SHIFT_GRID):
        moved = site_logits - shift
        f_benign = np.interp(moved, DENSITY_GRID, benign, left=0.0, right=0.0)
        f_malignant = np.interp(moved, DENSITY_GRID, malignant, left=0.0, right=0.0)
        per_share = np.log((1 - shares[:, None]) * f_benign + shares[:, None] * f_malignant + 1e-300).sum(axis=1)
        best = int(per_share.argmax())
        likelihood[i], best_shares[i] = per_share[best], shares[best]
    return likelihood, best_shares


def fit_score_shift(site_probabilities, reference: dict) -> dict:
    """The shift (logits) by which the site's scores lie above the model's validation scores, and its bounds.

    "shift" is the one to apply: the smallest shift within SHIFT_CHI2 of the best, "largest_shift" the other end;
    "most_likely_shift" and "melanoma_share" are the maximum-likelihood fit, reported only.
    """
    site_logits = logit(site_probabilities)
    likelihood, shares = profile_likelihood(site_logits, reference)
    best = int(likelihood.argmax())
    plausible = np.flatnonzero(2 * (likelihood[best] - likelihood) <= SHIFT_CHI2)
    if plausible[0] == 0 or plausible[-1] == len(SHIFT_GRID) - 1:
        raise ScoreShiftError(
            f"The site's scores lie {'below' if plausible[0] == 0 else 'above'} any shift of "
            f"{SHIFT_GRID[0]:g} to {SHIFT_GRID[-1]:g} logits from the model's validation scores: these pictures are "
            "not the model's lesions on another device; use the model as it is, or refit its thresholds on the "
            "site's diagnosed images with --data-dir.")
    return {"shift": float(SHIFT_GRID[plausible[0]]), "largest_shift": float(SHIFT_GRID[plausible[-1]]),
            "most_likely_shift": float(SHIFT_GRID[best]), "melanoma_share": float(shares[best]),
            "n": int(len(site_logits)),
            "bound": "one-sided 95% profile-likelihood bound, the smallest shift the pictures do not rule out"}


def require_shift(fitted: dict) -> None:
    """NothingToAdapt when no shift is among the plausible ones: the site's scores lie where validation's do.

    This, not the input check's distance (site_adaptation.require_unfamiliar), is the score shift's gate: the
    distance's bound for small samples left most 30- and 100-picture derm7pt samples alone, while a shift of 0
    is simply what a training-like site's own scores show (the 10k test split: -0.2 to +0.3 logits).
    """
    if fitted["shift"] <= 0 <= fitted["largest_shift"]:
        raise NothingToAdapt(
            f"Not adapted: the site's scores lie where the model's validation scores do (any shift from "
            f"{fitted['shift']:+.2f} to {fitted['largest_shift']:+.2f} logits fits them, zero among them), so there is "
            "no device shift to undo; use the model as it is.")


def shifted_thresholds(screening: float, high_risk: float, shift: float) -> dict:
    """Both thresholds moved by shift logits; the screening one never past the source's high-risk threshold.

    A picture the source model calls high risk (past the threshold that clears 95% of its validation benign
    lesions) is never called low risk after a label-free shift: on derm7pt sites of mostly melanomas the fitted
    share falls far short and the shift overshoots (docs/site_calibration.md), and this cap is what keeps
    sensitivity there. The high-risk threshold moves by the same, capped shift.
    """
    cap = float(logit(high_risk) - logit(screening))
    applied = min(shift, cap)
    return {"screening_threshold": float(sigmoid(logit(screening) + applied)),
            "high_risk_threshold": float(sigmoid(logit(high_risk) + applied)),
            "applied_shift": applied, "capped": bool(shift > cap)}


# ------------------------------------------------------------------ the shifted folder

# The block and the card section are site_adaptation's (CONFIG_KEY, CARD_SECTION), so the app reads either method
# from one place; "method" tells them apart.
METHOD = "score shift"


def shift_block(screening_model, n_found: int, unreadable: int, refused: dict, n_scored: int, fitted: dict,
                thresholds: dict) -> dict:
    """config.json's site_adaptation block for a shifted folder: counts, provenance and the fit, never a name."""
    return {
        "method": METHOD,
        "date": datetime.date.today().isoformat(),
        "source_model": screening_model.model_id,
        "source_model_version": screening_model.version,
        "n_found": n_found, "n_unreadable": unreadable, "n_refused_by_input_check": refused, "n_adapted": n_scored,
        "fit": fitted,
        "applied_shift": thresholds["applied_shift"], "capped_at_source_high_risk": thresholds["capped"],
        "source_thresholds": {"screening_threshold": screening_model.screening_threshold,
                              "high_risk_threshold": screening_model.high_risk_threshold},
        "screening_threshold": thresholds["screening_threshold"],
        "high_risk_threshold": thresholds["high_risk_threshold"],
    }


def card_markdown(block: dict) -> str:
    fit, source = block["fit"], block["source_thresholds"]
    capped = (" The fitted shift would have moved the screening threshold past the source's high-risk threshold, so "
              "it was stopped there." if block["capped_at_source_high_risk"] else "")
    lines = [
        "## Site adaptation",
        "",
        f"**This folder's thresholds are moved to one site's device.** On {block['date']}, `calibrate_site.py "
        f"--unlabeled-dir` scored {block['n_adapted']} undiagnosed pictures of the site with `{block['source_model']}` "
        f"(version `{block['source_model_version']}`; {block['n_found']} found, {block['n_unreadable']} unreadable, "
        f"{sum(block['n_refused_by_input_check'].values())} refused by the input check) and placed their scores "
        "against the model's validation scores of benign and malignant lesions: they lie "
        f"{fit['most_likely_shift']:+.2f} logits from them at best fit (melanoma share {fit['melanoma_share']:.0%}), "
        f"and between {fit['shift']:+.2f} and {fit['largest_shift']:+.2f} by a one-sided 95% bound; the "
        f"smallest, {fit['shift']:+.2f}, is the one applied, since a shift overrated costs melanomas. Both thresholds moved by "
        f"{block['applied_shift']:+.2f} logits: risk is **low** below {block['screening_threshold']:.4f} (was "
        f"{source['screening_threshold']:.4f}) and **high** from {block['high_risk_threshold']:.4f} (was "
        f"{source['high_risk_threshold']:.4f}).{capped}",
        "",
        "The weights, the temperature and the input check are the source model's, byte for byte, so the model "
        "orders the site's lesions exactly as before; only where it draws the lines moved. The site's own figures "
        "are unknown without diagnosed cases: refit the thresholds on them with `--data-dir` when the site has them. "
        "No picture and no file name was stored; only the counts above.",
    ]
    return "\n".join(lines)


def write_shifted_model(source_dir, out_dir, block: dict, overwrite: bool = False, name: str | None = None) -> Path:
    """A complete model folder: the source's files with the moved thresholds, the block and a card section."""
    from .identity import stamp
    from .model_card import AT_END, UNDER_TITLE, upsert_card_section

    source_dir, out_dir = Path(source_dir), Path(out_dir).expanduser()
    with staged_output(source_dir, out_dir, overwrite, rewritten={"config.json"}) as staging:
        config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        config.update(screening_threshold=block["screening_threshold"], high_risk_threshold=block["high_risk_threshold"])
        config[CONFIG_KEY] = dict(block, source_weights_sha256=sha256_of(source_dir / "model.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if (staging / "README.md").is_file():
            upsert_card_section(staging / "README.md", CARD_SECTION, card_markdown(config[CONFIG_KEY]),
                                add_at=("identity", UNDER_TITLE, AT_END))
        stamp(staging, name or out_dir.name)
    return out_dir
