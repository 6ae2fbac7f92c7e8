"""Does calibrate_site.py's refit hold on images it was not fitted on? 2-fold cross-validation on a site.

    python benchmarks/site_calibration.py --model model
    python benchmarks/site_calibration.py --model model --fit-temperature --json site.json
    python benchmarks/site_calibration.py --model model --mode unlabeled      # calibrate_site.py --unlabeled-dir
    python benchmarks/site_calibration.py --model model --mode combined       # --unlabeled-dir and --data-dir

The site (default: derm7pt, another clinic's dermatoscope) is scored once, as
the app scores it, and split into two stratified halves. Each half in turn is
the site's calibration sample: the thresholds are fitted on it with
melanoma_screen.site_calibration.fit_site, the same code calibrate_site.py runs,
and measured on the other half, next to the input model's own thresholds on
that same half (the baseline). Then the same on the 10k test split, the
training source, where the refit should barely move anything, and the site's
thresholds carried to the test split, where they do not belong. Every figure
has a stratified bootstrap 95% interval. This is a documented demonstration:
the shipped model's thresholds are never fitted on derm7pt.

--mode unlabeled runs calibrate_site.py --unlabeled-dir (--method: the score
shift by default, or the BatchNorm statistics) itself: each half's
pictures are copied, renamed and without their labels, into one flat folder, the
model is adapted on them, and the other half is scored with transformers.pipeline
on the folder it wrote, at that folder's screening threshold; then the same from
samples of the half (--sizes pictures, --shares of them melanomas), as a site
with few pictures or few melanomas would have. --mode combined gives the half to
both --unlabeled-dir and --data-dir. Both folds are pooled. --source keeps one
acquisition of a folder whose labels.csv has a `source` column (ham10000).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common import DATASET, REPO_ROOT, halves, write_json  # noqa: F401  (puts the repository on sys.path)

import calibrate_site  # noqa: E402
from calibrate_site import scan_site_folder  # noqa: E402
from melanoma_screen import calibration  # noqa: E402
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ScreeningModel  # noqa: E402
import json  # noqa: E402

from melanoma_screen.site_adaptation import find_pictures  # noqa: E402
from melanoma_screen.site_calibration import (SiteCalibrationError, fit_site, operating_point_figures,  # noqa: E402
                                              roc_auc_figure, score_site,
                                              expected_on_new_images)

DERM7PT = DATASET.parent / "derm7pt"
TARGET_SENSITIVITY, TARGET_SPECIFICITY = 0.90, 0.45  # the target on a held-out half, at the screening threshold


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model", help="model folder (default: model)")
    parser.add_argument("--site-dir", default=str(DERM7PT), help="the site's {benign,malignant}/ folder (default: derm7pt)")
    parser.add_argument("--test-dir", default=str(DATASET / "test"), help="the training source's test split")
    parser.add_argument("--fit-temperature", action="store_true", help="refit the temperature too, as --fit-temperature does")
    parser.add_argument("--min-sensitivity", type=float, default=None, help="default: the model's training target")
    parser.add_argument("--min-specificity", type=float, default=None, help="default: the model's training target")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halves and the bootstrap")
    parser.add_argument("--engine", choices=ENGINES, default=FAST["engine"])
    parser.add_argument("--precision", choices=PRECISIONS, default=FAST["precision"])
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--mode", choices=("thresholds", "unlabeled", "combined"), default="thresholds",
                        help="thresholds: --data-dir (default); unlabeled: --unlabeled-dir; combined: both")
    parser.add_argument("--method", choices=("scores", "statistics"), default="scores",
                        help="unlabeled mode: calibrate_site.py's --method (default: scores, the threshold shift)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[30, 60, 100, 300],
                        help="unlabeled mode: sample sizes drawn from the adaptation half (default: 30 60 100 300)")
    parser.add_argument("--shares", type=float, nargs="*", default=[0.02, 0.05, 0.10, 0.30],
                        help="unlabeled mode: melanoma shares of those samples (default: 0.02 0.05 0.10 0.30)")
    parser.add_argument("--source", default=None, help="only this acquisition (labels.csv's source column)")
    parser.add_argument("--benign-diagnoses", nargs="*", default=None,
                        help="only these benign diagnoses (labels.csv's diagnosis column) beside every melanoma: a site "
                             "the model ranks poorly, e.g. 'seborrheic keratosis' on derm7pt")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "site_adaptation_benchmark"),
                        help="where the renamed copies and the adapted folders go (deleted after each fold)")
    return parser.parse_args(argv)


def held_out(fit_scores, held_scores, source_points: dict, targets: tuple[float, float], fit_temperature: bool, seed: int) -> dict:
    """Fit on one set, measure on the other: the site's thresholds and the input model's, on the same held-out images."""
    try:
        fit = fit_site(fit_scores, *targets, fit_temperature=fit_temperature)
    except SiteCalibrationError as error:  # a temperature at its limit: reported, as calibrate_site.py would refuse it
        return {"n_fitted": fit_scores.counts(), "n_held_out": held_scores.counts(), "refused": str(error)}
    probabilities = calibration.softmax_probs(held_scores.log_probabilities, fit.temperature)[:, held_scores.malignant_index]
    points = fit.operating_points
    return {
        "n_fitted": fit_scores.counts(), "n_held_out": held_scores.counts(), "site_temperature": fit.temperature,
        "held_out_roc_auc": roc_auc_figure(held_scores.labels, held_scores.probabilities, seed=seed),
        "site_thresholds": {key: points[key] for key in ("screening_threshold", "high_risk_threshold")},
        "site": operating_point_figures(held_scores.labels, probabilities, points["screening_threshold"],
                                        points["high_risk_threshold"], seed=seed),
        "source": operating_point_figures(held_scores.labels, held_scores.probabilities,
                                          source_points["screening_threshold"], source_points["high_risk_threshold"], seed=seed),
        # What the card of a folder fitted on this half promises for new images; the held-out half checks it.
        "expected_by_card": expected_on_new_images(fit_scores.labels, fit.probabilities, *targets, seed=seed),
    }


def cross_validate(scores, source_points, targets, fit_temperature, seed) -> list[dict]:
    first = halves(scores.labels, seed)
    return [held_out(scores.subset(fit_mask), scores.subset(~fit_mask), source_points, targets, fit_temperature, seed)
            for fit_mask in (first, ~first)]


def _cell(block: dict, metric: str) -> str:
    low, high = block[f"{metric}_95ci"]
    return f"{block[metric]:.3f} ({low:.3f}-{high:.3f})"


def print_rows(title: str, rows: list[tuple[str, dict, dict]]) -> None:
    print(f"\n{title}")
    print(f"{'':58s} {'screening':>9s} {'sens (95% CI)':>20s} {'spec (95% CI)':>20s} {'high risk':>9s} "
          f"{'sens (95% CI)':>20s} {'spec (95% CI)':>20s}")
    for name, thresholds, figures in rows:
        screening, high = figures["at_screening_threshold"], figures["at_high_risk_threshold"]
        print(f"{name:58s} {thresholds['screening_threshold']:9.4f} {_cell(screening, 'sensitivity'):>20s} "
              f"{_cell(screening, 'specificity'):>20s} {thresholds['high_risk_threshold']:9.4f} "
              f"{_cell(high, 'sensitivity'):>20s} {_cell(high, 'specificity'):>20s}")


def print_folds(name: str, folds: list[dict], source_points: dict) -> None:
    rows = []
    for k, fold in enumerate(folds, 1):
        if "refused" in fold:
            print(f"\n{name} half {k}: calibrate_site.py refuses the fit on the other half: {fold['refused']}")
            continue
        counts = fold["n_held_out"]
        tag = f"{name} half {k} ({counts['malignant']} mel / {counts['benign']} ben)"
        rows += [(f"{tag}: input model", source_points, fold["source"]),
                 (f"{tag}: site-calibrated", fold["site_thresholds"], fold["site"])]
    if rows:
        print_rows(f"{name}: fitted on one half, measured on the other (held-out figures, bootstrap 95% CI)", rows)
    for k, fold in enumerate(folds, 1):
        if "refused" in fold:
            continue
        site, source = fold["site"]["at_screening_threshold"], fold["source"]["at_screening_threshold"]
        expected = fold["expected_by_card"]
        auc = fold["held_out_roc_auc"]
        print(f"  half {k}: ROC AUC {auc['value']:.3f} ({auc['95ci'][0]:.3f}-{auc['95ci'][1]:.3f}); specificity at the screening threshold {site['specificity']:.3f} site vs "
              f"{source['specificity']:.3f} input model (ratio {site['specificity'] / max(source['specificity'], 1e-9):.2f}); "
              f"sensitivity {site['sensitivity']:.3f} vs {source['sensitivity']:.3f}; a folder fitted on the other half "
              f"expected sensitivity {expected['sensitivity_at_screening']['median']:.3f} "
              f"({expected['sensitivity_at_screening']['95ci'][0]:.3f}-{expected['sensitivity_at_screening']['95ci'][1]:.3f}) "
              f"and specificity {expected['specificity_at_screening']['median']:.3f} "
              f"({expected['specificity_at_screening']['95ci'][0]:.3f}-{expected['specificity_at_screening']['95ci'][1]:.3f})"
              + (f"; site temperature factor {fold['site_temperature']:.3f}" if fold["site_temperature"] != 1.0 else ""))


def score_folder(model, folder, what: str):
    scan = scan_site_folder(folder)
    print(f"{what}: {scan.counts['site']} readable images", file=sys.stderr)
    scores = score_site(model, scan.records, skipped=scan.skipped)
    refused = {reason: counts for reason, counts in scores.refused.items()}
    print(f"{what}: {scores.counts()} accepted by the input check; refused: {refused or 'none'}", file=sys.stderr)
    return scores


def labelled_pictures(folder, source: str | None = None, benign_diagnoses=None) -> list[tuple[Path, int]]:
    """[(path, 1 for malignant)] of a {benign,malignant}/ folder, one acquisition of it with `source`, and only the
    benign lesions whose labels.csv `diagnosis` is in benign_diagnoses when given (every melanoma is kept)."""
    import csv

    folder = Path(folder)
    if source or benign_diagnoses:
        with open(folder / "labels.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [(folder / row["file"], int(row["label"] == "malignant")) for row in rows
                if (not source or row["source"] == source)
                and (not benign_diagnoses or row["label"] == "malignant" or row["diagnosis"] in benign_diagnoses)]
    return [(path, label) for label, name in enumerate(("benign", "malignant"))
            for path in find_pictures(folder / name)]


def pipeline_scores(out_dir: Path, paths) -> np.ndarray:
    """P(malignant) from transformers.pipeline on a model folder, as a user of the published model gets it."""
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(out_dir), device="cpu")
    return np.asarray([{r["label"]: r["score"] for r in result}["malignant"]
                       for result in classifier([str(p) for p in paths], top_k=2, batch_size=32)])


def run_calibrate_site(args, fit_items, out_dir: Path, combined: bool) -> tuple[dict, int]:
    """calibrate_site.py on renamed, unlabeled copies (and, combined, the diagnosed ones): (its config, exit status)."""
    import contextlib
    import io
    import shutil

    work = out_dir.parent / "site"
    shutil.rmtree(work, ignore_errors=True)
    (work / "pictures").mkdir(parents=True)
    command = ["--model", args.model, "--unlabeled-dir", str(work / "pictures"), "--out-dir", str(out_dir), "--overwrite"]
    if not combined:
        command += ["--method", args.method]
    for i, (path, label) in enumerate(fit_items):
        shutil.copy(path, work / "pictures" / f"{i:05d}{path.suffix.lower()}")  # no name, no label
        if combined:
            target = work / "diagnosed" / ("malignant" if label else "benign")
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / f"{i:05d}{path.suffix.lower()}")
    if combined:
        command += ["--data-dir", str(work / "diagnosed")]
        for name in ("min_sensitivity", "min_specificity"):
            if getattr(args, name) is not None:
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        status = calibrate_site.main(command)
    shutil.rmtree(work, ignore_errors=True)
    if status != 0:
        return {"refused": printed.getvalue().strip().splitlines()[-1]}, status
    return json.loads((out_dir / "config.json").read_text()), status


def sample(items, size: int, share: float, rng) -> list:
    """size pictures of items with round(size * share) melanomas (at least one when share > 0)."""
    malignant = [item for item in items if item[1] == 1]
    benign = [item for item in items if item[1] == 0]
    n_malignant = max(1 if share > 0 else 0, int(round(size * share)))
    if n_malignant > len(malignant) or size - n_malignant > len(benign):
        return []
    return ([malignant[i] for i in rng.choice(len(malignant), n_malignant, replace=False)]
            + [benign[i] for i in rng.choice(len(benign), size - n_malignant, replace=False)])


ORACLE_SENSITIVITIES = (0.85, 0.90)  # the unlabeled and combined targets


def best_specificities(labels, scores) -> dict:
    """The highest specificity any threshold gives on these scores at each target sensitivity.

    An oracle: the threshold is chosen on the very labels it is measured on, so
    no rule can do better on the same scores. It tells whether a target is out
    of reach of the model's ranking on a site, whatever the thresholds.
    """
    malignant, benign = np.sort(scores[labels == 1]), scores[labels == 0]
    return {f"{target:.2f}": float(np.mean(benign < malignant[int(np.floor((1 - target) * malignant.size))]))
            for target in ORACLE_SENSITIVITIES}


def adaptation_cell(args, items, first, samples, combined: bool, seed: int) -> dict:
    """Adapt on (a sample of) one half, score the other half with pipeline; both folds pooled, with bootstrap CIs."""
    labels = np.asarray([label for _, label in items])
    work = Path(args.work_dir)
    pooled_labels, adapted, source, guards, refused, oracle = [], [], [], [], [], []
    screening = None
    for k, fit_mask in enumerate((first, ~first)):
        fit_items = [item for item, chosen in zip(items, fit_mask) if chosen]
        fit_items = samples(fit_items) if samples else fit_items
        if not fit_items:
            return {"skipped": "not enough pictures of a class in the half for this sample"}
        held = [item for item, chosen in zip(items, fit_mask) if not chosen]
        config, status = run_calibrate_site(args, fit_items, work / "out", combined)
        folder = work / "out"
        if status == calibrate_site.NOT_ADAPTED:
            # The method's gate left the site alone (combined mode refits on the source instead, status 0): the
            # clinic goes on with the input model as it is.
            because = {"scores": "scores where validation's lie", "statistics": "as familiar as a training source"}[
                args.method]
            folder, config = Path(args.model), json.loads((Path(args.model) / "config.json").read_text())
            guards.append({"not_adapted": because})
        elif status != 0:
            refused.append(config["refused"])
            continue
        elif "site_adaptation" not in config:  # combined, adaptation left out: thresholds refitted on the source
            guards.append({"not_adapted": config["site_calibration"]["label_free_adaptation"]["because"]})
        elif config["site_adaptation"].get("method") == "score shift":
            block = config["site_adaptation"]
            guards.append({"shift": block["fit"]["shift"], "most_likely_shift": block["fit"]["most_likely_shift"],
                           "melanoma_share": block["fit"]["melanoma_share"], "applied_shift": block["applied_shift"]})
        else:
            block = config["site_adaptation"]
            guards.append({"rank_correlation": block["guard"]["rank_correlation"], "fell_back": block["fell_back"],
                           "variance_rank_correlation": block["guard"].get("variance_rank_correlation"),
                           "rule": block["rule"]})
        screening = config["screening_threshold"]
        scores = pipeline_scores(folder, [path for path, _ in held])
        adapted.append((scores, config["screening_threshold"]))
        pooled_labels.append(labels[~fit_mask])
        oracle.append(best_specificities(labels[~fit_mask], scores))
        source.append(held)
    if not adapted:
        return {"refused": refused}
    y = np.concatenate(pooled_labels)
    # Each fold's held-out half at its own folder's screening threshold: flagged or not, pooled.
    flagged = np.concatenate([scores >= threshold for scores, threshold in adapted]).astype(float)
    figures = operating_point_figures(y, flagged, 0.5, 0.5, seed=seed)["at_screening_threshold"]
    scores = np.concatenate([scores for scores, _ in adapted])
    return {"n_held_out": {"malignant": int(y.sum()), "benign": int((y == 0).sum())}, "folds_refused": refused,
            "sensitivity": figures["sensitivity"], "sensitivity_95ci": figures["sensitivity_95ci"],
            "specificity": figures["specificity"], "specificity_95ci": figures["specificity_95ci"],
            "roc_auc": roc_auc_figure(y, scores, seed=seed), "guards": guards, "screening_threshold": screening,
            "best_specificity_per_held_out_half": oracle}


def adaptation_main(args) -> int:
    items = labelled_pictures(args.site_dir, args.source, args.benign_diagnoses)
    labels = np.asarray([label for _, label in items])
    first = halves(labels, args.seed)
    rng = np.random.default_rng(args.seed)
    name = (Path(args.site_dir).name + (f" {args.source}" if args.source else "")
            + (f" (benign: {', '.join(args.benign_diagnoses)})" if args.benign_diagnoses else ""))
    # The baseline: the input model through pipeline on every picture, at its own threshold, as the folds pool.
    model_config = json.loads((Path(args.model) / "config.json").read_text())
    base_scores = pipeline_scores(Path(args.model), [path for path, _ in items])
    base = operating_point_figures(labels, (base_scores >= model_config["screening_threshold"]).astype(float), 0.5, 0.5,
                                   seed=args.seed)["at_screening_threshold"]
    results = {"model": args.model, "mode": args.mode, "method": args.method, "site": name, "seed": args.seed,
               "input_model": dict(base, roc_auc=roc_auc_figure(labels, base_scores, seed=args.seed)), "cells": {}}

    def show(label, cell):
        if "sensitivity" not in cell:
            print(f"{label:34s} {cell}", flush=True)
            return
        auc = cell["roc_auc"]
        guards = ", ".join(f"not adapted ({g['not_adapted']})" if g.get("not_adapted") else
                           f"shift {g['applied_shift']:+.2f} (best {g['most_likely_shift']:+.2f}, share "
                           f"{g['melanoma_share']:.0%})" if "applied_shift" in g else
                           f"{g['rank_correlation']:.2f}"
                           + (f"/{g['variance_rank_correlation']:.2f}" if g.get("variance_rank_correlation") else "")
                           + (f" fell back to {'means only' if not g['rule'].get('variances', True) else 'statistics'}"
                              f" mix {g['rule']['mix']:g}" if g["fell_back"] else "") for g in cell["guards"])
        oracle = "; ".join(", ".join(f"{spec:.3f} at {sens}" for sens, spec in half.items())
                           for half in cell.get("best_specificity_per_held_out_half", []))
        print(f"{label:34s} {_cell(cell, 'sensitivity'):>20s} {_cell(cell, 'specificity'):>20s} "
              f"{auc['value']:.3f} ({auc['95ci'][0]:.3f}-{auc['95ci'][1]:.3f})  guard {guards}"
              + (f"; refused: {cell['folds_refused']}" if cell["folds_refused"] else "")
              + (f"; best specificity any threshold gives per held-out half: {oracle}" if oracle else ""), flush=True)

    print(f"{name}: {int(labels.sum())} melanomas, {int((labels == 0).sum())} benign; {args.mode} mode, held-out halves "
          "pooled, at each folder's screening threshold (bootstrap 95% CI)")
    print(f"{'':34s} {'sensitivity':>20s} {'specificity':>20s} ROC AUC")
    results["input_model"]["best_specificity_per_held_out_half"] = [
        best_specificities(labels[mask], base_scores[mask]) for mask in (~first, first)]
    show("input model, all pictures", dict(results["input_model"], guards=[], folds_refused=[]))
    cells = [("whole half", None)]
    if args.mode == "unlabeled":
        cells += [(f"{size} pictures, {share:.0%} melanomas",
                   (lambda size, share: lambda fit: sample(fit, size, share, rng))(size, share))
                  for share in args.shares for size in args.sizes]
    from tqdm import tqdm

    for label, draw in tqdm(cells, desc="cells", unit="cell", file=sys.stderr):
        results["cells"][label] = adaptation_cell(args, items, first, draw, args.mode == "combined", args.seed)
        show(label, results["cells"][label])
    write_json(args.json, results)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode != "thresholds":
        return adaptation_main(args)
    model = ScreeningModel.load(args.model, engine=args.engine, precision=args.precision)
    stored = calibration.stored_targets(model.config)
    targets = (args.min_sensitivity or stored[0], args.min_specificity or stored[1])
    source_points = {"screening_threshold": model.screening_threshold, "high_risk_threshold": model.high_risk_threshold}
    try:
        site = score_folder(model, args.site_dir, "site")
        test = score_folder(model, args.test_dir, "test split")
        results = {
            "model": args.model, "model_version": model.version, "scored_with": f"{model.engine} {model.precision}",
            "targets": {"min_sensitivity": targets[0], "min_specificity": targets[1]},
            "fit_temperature": args.fit_temperature, "seed": args.seed, "source_thresholds": source_points,
            "site_refused": site.refused, "test_refused": test.refused,
            "site_folds": cross_validate(site, source_points, targets, args.fit_temperature, args.seed),
            "test_folds": cross_validate(test, source_points, targets, args.fit_temperature, args.seed),
            # The whole site as the calibration sample, carried to the training source's test split.
            "site_thresholds_on_test": held_out(site, test, source_points, targets, args.fit_temperature, args.seed),
        }
    except SiteCalibrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"model {args.model} ({model.version}, scored with {model.engine} {model.precision}); targets: sensitivity "
          f"{targets[0]:g} at screening, specificity {targets[1]:g} at high risk"
          + ("; temperature refitted" if args.fit_temperature else ""))
    print_folds(Path(args.site_dir).name, results["site_folds"], source_points)
    print_folds("10k test split", results["test_folds"], source_points)
    carried = results["site_thresholds_on_test"]
    if "refused" in carried:
        print(f"\nthresholds fitted on the whole site: refused: {carried['refused']}")
    else:
        print_rows("thresholds fitted on the whole site, carried to the 10k test split (a site they were not fitted on)",
                   [("test split: input model", source_points, carried["source"]),
                    ("test split: site-calibrated on " + Path(args.site_dir).name, carried["site_thresholds"],
                     carried["site"])])

    met = ["refused" not in fold and fold["site"]["at_screening_threshold"]["sensitivity"] >= TARGET_SENSITIVITY
           and fold["site"]["at_screening_threshold"]["specificity"] >= TARGET_SPECIFICITY for fold in results["site_folds"]]
    results["target_met"] = met
    print(f"\ntarget on each held-out half of the site (sensitivity >= {TARGET_SENSITIVITY} with specificity >= "
          f"{TARGET_SPECIFICITY} at the screening threshold): {', '.join('met' if ok else 'missed' for ok in met)}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
