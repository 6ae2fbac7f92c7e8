"""Which end of the plausible shifts should calibrate_site.py apply? The score shift's rule, against variants.

    python benchmarks/score_shift_rules.py --model model --json runs/score_shift_rules.json

The sets (derm7pt; derm7pt's melanomas with only its keratoses, lentigines and
melanoses, a site the model ranks poorly, like independent set B; the 10k test
split, the training source) are scored once as the app scores them, input check
included. Each set is split into two stratified halves; each draw takes SIZE
pictures with SHARE melanomas from one half (labels unused by the fit), fits the
score shift, and scores the other half at the shifted screening threshold, both
ways round; --draws draws per cell are pooled.

Rules, each a lower end of the shifts the pictures do not rule out (one-sided
95% profile likelihood, score_shift.SHIFT_CHI2):
  shipped          every plausible shift counts, also one apart from the best
                   (what score_shift.fit_score_shift does);
  around the best  only the plausible shifts joined to the most likely one;
  share <= S       the melanoma share is bounded by S (a prior: no site
                   photographs mostly melanomas).
A sample's profile can have a second, separate island of plausible shifts at a
melanoma share of 100% and no shift: every picture a melanoma scored where
validation's melanomas lie. The shipped rule lets that island leave the site
unadapted; the variants do not, and then shift further on a site of mostly
melanomas, which costs sensitivity there. derm7pt is ours to compare on; none of
these numbers fitted anything the app uses.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from common import DATASET, halves, write_json  # noqa: F401  (puts the repository on sys.path)

from data_prep import ImageRecord  # noqa: E402
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ScreeningModel  # noqa: E402
from melanoma_screen.score_shift import (SHARE_GRID, SHIFT_CHI2, SHIFT_GRID, fit_score_shift, logit,  # noqa: E402
                                         profile_likelihood, require_reference, require_shift, shifted_thresholds,
                                         sigmoid)
from melanoma_screen.site_calibration import SiteCalibrationError, score_site  # noqa: E402

DERM7PT = DATASET.parent / "derm7pt"
KERATOSIS_GROUP = ("seborrheic keratosis", "lentigo", "melanosis")
RULES = {"shipped": (1.0, False), "around the best": (1.0, True), "share <= 0.9": (0.9, False),
         "share <= 0.75": (0.75, False)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model", help="model folder with a score_reference (default: model)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[30, 100, 300])
    parser.add_argument("--shares", type=float, nargs="*", default=[0.05, 0.30, 0.75])
    parser.add_argument("--draws", type=int, default=40, help="samples per half and cell (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=ENGINES, default=FAST["engine"])
    parser.add_argument("--precision", choices=PRECISIONS, default=FAST["precision"])
    parser.add_argument("--sets", nargs="*", choices=list(SETS), default=list(SETS), help="default: all three")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return parser.parse_args(argv)


def derm7pt_records(benign_diagnoses=None) -> list[ImageRecord]:
    with open(DERM7PT / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [ImageRecord(path=str(DERM7PT / row["file"]), label=int(row["label"] == "malignant"), split="site")
            for row in rows if benign_diagnoses is None or row["label"] == "malignant"
            or row["diagnosis"] in benign_diagnoses]


def test_records() -> list[ImageRecord]:
    return [ImageRecord(path=str(path), label=label, split="site")
            for label, name in enumerate(("benign", "malignant"))
            for path in sorted((DATASET / "test" / name).glob("*.jpg"))]


SETS = {"derm7pt": derm7pt_records,
        "derm7pt, melanomas and keratosis group only": lambda: derm7pt_records(KERATOSIS_GROUP),
        "10k test split": test_records}


def lower_shift(site_logits, reference, share_cap: float, joined: bool) -> float | None:
    """The rule's shift to apply; None when zero is plausible (not adapted) or the fit is off the grid.

    The shipped rule is calibrate_site.py's own code (fit_score_shift, require_shift); the variants are written here.
    """
    if share_cap >= 1.0 and not joined:
        try:
            fitted = fit_score_shift(sigmoid(site_logits), reference)
            require_shift(fitted)
        except SiteCalibrationError:  # NothingToAdapt, or scores off the grid (ScoreShiftError)
            return None
        return fitted["shift"]
    likelihood, _ = profile_likelihood(site_logits, reference, SHARE_GRID[SHARE_GRID <= share_cap + 1e-9])
    best = int(likelihood.argmax())
    plausible = 2 * (likelihood[best] - likelihood) <= SHIFT_CHI2
    if joined:
        low = best
        while low > 0 and plausible[low - 1]:
            low -= 1
        high = best
        while high < len(plausible) - 1 and plausible[high + 1]:
            high += 1
    else:
        low, high = np.flatnonzero(plausible)[[0, -1]]
    if low == 0 or high == len(SHIFT_GRID) - 1 or SHIFT_GRID[low] <= 0 <= SHIFT_GRID[high]:
        return None
    return float(SHIFT_GRID[low])


def cell(labels, probabilities, first, size, share, reference, points, rng, draws) -> dict:
    logits = logit(probabilities)
    results = {rule: {"flagged": [], "labels": [], "not_adapted": 0, "shifts": []} for rule in RULES}
    for fit_half in (first, ~first):
        malignant, benign = np.flatnonzero(fit_half & (labels == 1)), np.flatnonzero(fit_half & (labels == 0))
        n_malignant = max(1, int(round(size * share)))
        if n_malignant > malignant.size or size - n_malignant > benign.size:
            return {"skipped": "not enough pictures of a class in the half"}
        for _ in range(draws):
            sample = np.concatenate([rng.choice(malignant, n_malignant, replace=False),
                                     rng.choice(benign, size - n_malignant, replace=False)])
            for rule, (share_cap, joined) in RULES.items():
                shift = lower_shift(logits[sample], reference, share_cap, joined)
                moved = shifted_thresholds(*points, 0.0 if shift is None else shift)
                result = results[rule]
                result["not_adapted"] += shift is None
                result["shifts"].append(moved["applied_shift"])
                result["flagged"].append(probabilities[~fit_half] >= moved["screening_threshold"])
                result["labels"].append(labels[~fit_half])
    figures = {}
    for rule, result in results.items():
        flagged, held = np.concatenate(result["flagged"]), np.concatenate(result["labels"])
        figures[rule] = {"sensitivity": float(flagged[held == 1].mean()), "specificity": float(1 - flagged[held == 0].mean()),
                         "not_adapted": result["not_adapted"] / (2 * draws), "mean_shift": float(np.mean(result["shifts"]))}
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    model = ScreeningModel.load(args.model, engine=args.engine, precision=args.precision)
    reference = require_reference(model.config, args.model)
    points = (float(model.config.screening_threshold), float(model.config.high_risk_threshold))
    results = {"model": args.model, "seed": args.seed, "draws": args.draws, "sets": {}}
    for name in args.sets:
        scores = score_site(model, SETS[name](), progress=True)
        labels, probabilities = scores.labels, scores.probabilities
        first = halves(labels, args.seed)
        rng = np.random.default_rng(args.seed)
        print(f"\n{name}: {int(labels.sum())} melanomas, {int((labels == 0).sum())} benign accepted; held-out half "
              f"at each draw's shifted screening threshold, {args.draws} draws a half, both halves pooled")
        print(f"{'':22s}" + "".join(f"{rule:>30s}" for rule in RULES))
        print(f"{'':22s}" + f"{'sens/spec, share left alone':>30s}" * len(RULES))
        results["sets"][name] = {}
        for size in args.sizes:
            for share in args.shares:
                label = f"{size} pictures, {share:.0%}"
                figures = cell(labels, probabilities, first, size, share, reference, points, rng, args.draws)
                results["sets"][name][label] = figures
                if "skipped" in figures:
                    continue
                print(f"{label:22s}" + "".join(
                    f"{f['sensitivity']:>18.3f}/{f['specificity']:.3f} {f['not_adapted']:>5.0%}"
                    for f in figures.values()), flush=True)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
