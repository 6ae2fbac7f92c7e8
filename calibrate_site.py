"""Fit a model to a clinic's device: adapt it on undiagnosed pictures, refit its thresholds on diagnosed ones.

    python calibrate_site.py --model model --unlabeled-dir PICTURES --out-dir model-site
    python calibrate_site.py --model model --data-dir SITE --out-dir model-site
    python calibrate_site.py --model model --unlabeled-dir PICTURES --data-dir SITE --out-dir model-site
    python calibrate_site.py --model model --data-dir SITE --out-dir model-site --fit-temperature --overwrite

PICTURES is any folder of the site's dermoscopic pictures, flat or nested,
undiagnosed and with any names. By default (--method scores), the pictures its
input check accepts are scored and their scores placed against the model's
validation scores of each class (stored by experiments/fit_adapted_thresholds.py):
the thresholds move by the smallest shift the pictures do not rule out, never
past the source's high-risk threshold (melanoma_screen/score_shift.py); a site
whose plausible shifts include zero has no device shift to undo, is not
adapted, and says so. The weights are untouched, so the model ranks
the site's lesions as before. --method statistics re-estimates the BatchNorm
statistics instead (AdaBN; melanoma_screen/site_adaptation.py), unless the site
looks as familiar to the model as its own training sources (the input check's
distance, bounded by the same script) are: a guard checks
that the adapted model still orders the site's pictures as the source model did,
and as the same adaptation of the means alone does; when it trips, the means
alone are moved, then a half mix is tried, then adaptation is refused. On the
model shipped on 2026-12-05 the statistics re-order derm7pt's lesions (ROC AUC
0.804 -> 0.731) where the shift keeps them: docs/site_calibration.md has both.
No weight is trained and no label is used either way; the shift needs at least
60 accepted pictures, the statistics 30 (each the smallest sample measured to
hold). A model without BatchNorm (a ViT) can only be shifted.
With --data-dir too, the statistics are adapted first, the diagnosed images
decide whether the adapted model or the source ranks them better (ROC AUC), and
the thresholds are then refitted through that one (a shift would be replaced by
the refitted thresholds, so it is not tried).

Exit status: 0 when the folder is written; 3 when the site was not adapted
(nothing to undo: use the model as it is; no folder is written); 2 when the
command is refused, with the reason.

SITE holds benign/ and malignant/ folders of images diagnosed at the site (by
histology or follow-up), taken with the site's own device. Each image is decoded
and scored as the app does, through ScreeningModel and its input check; pictures
the input check refuses are counted and left out. The thresholds are then chosen
with the rules and targets of training (sensitivity target for the screening
threshold, specificity target for the high-risk one), and OUT_DIR gets a complete
model folder: the same weights, the new thresholds in config.json, the same input
check, and a card section with the counts and the figures, before and after, with
bootstrap 95% intervals. The app loads it with MODEL_ID=OUT_DIR. No image and no
file name is stored.

Thresholds: it refuses fewer than 20 melanomas or 50 benign lesions (why: see
melanoma_screen/site_calibration.py), never writes over its input model, and
never over an existing OUT_DIR without --overwrite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from data_prep import scan_label_folder
from melanoma_screen.calibration import stored_targets
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ModelLoadError, ScreeningModel
from melanoma_screen.site_calibration import (SiteCalibrationError, check_output_folder, fit_site, score_site,
                                              shortfall, site_report, write_site_model)
from melanoma_screen.score_shift import (MIN_SHIFT_PICTURES, fit_score_shift, require_reference, require_shift,
                                         shift_block, shifted_thresholds, write_shifted_model)
from melanoma_screen.site_adaptation import (MIN_PICTURES, NothingToAdapt, adaptation_block, adapt_to_site,
                                             find_pictures, gather_pixels, require_batchnorm, require_unfamiliar,
                                             too_few, write_adapted_model)

NOT_ADAPTED = 3  # the exit status of a site with nothing to undo


def scan_site_folder(folder, progress: bool = True):
    """The folder's decodable images, through data_prep's scan; a bad layout is a SiteCalibrationError."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SiteCalibrationError(f"{folder} is not a folder. Give a folder holding benign/ and malignant/ "
                                   "sub-folders of diagnosed images.")
    try:
        return scan_label_folder(folder, split="site", progress=progress)
    except ValueError as error:
        raise SiteCalibrationError(f"{error} Put each diagnosed image in {folder}/benign/ or {folder}/malignant/.") from error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model", help="input model folder (default: model)")
    parser.add_argument("--unlabeled-dir", default=None,
                        help="the site's undiagnosed pictures, flat or nested: move the thresholds to them (or adapt "
                             "the BatchNorm statistics, --method statistics)")
    parser.add_argument("--method", choices=("scores", "statistics"), default="scores",
                        help="--unlabeled-dir alone: 'scores' moves the thresholds to where the site's scores lie "
                             "(default); 'statistics' re-estimates the BatchNorm statistics (AdaBN)")
    parser.add_argument("--data-dir", default=None, help="the site's diagnosed images, in benign/ and malignant/: "
                                                         "refit the thresholds (after adapting, with --unlabeled-dir)")
    parser.add_argument("--out-dir", required=True, help="where the site-calibrated model folder is written")
    parser.add_argument("--fit-temperature", action="store_true",
                        help="also refit the calibration temperature on the site's images (folded into the classifier)")
    parser.add_argument("--min-sensitivity", type=float, default=None,
                        help="sensitivity the screening threshold must reach (default: the model's, from training)")
    parser.add_argument("--min-specificity", type=float, default=None,
                        help="specificity the high-risk threshold must reach (default: the model's, from training)")
    parser.add_argument("--site-name", default="site",
                        help="how the card names the site's data (default: 'site'; the folder name is not stored)")
    parser.add_argument("--name", default=None, help="model name in config.json and the card (default: OUT_DIR's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR when it exists")
    parser.add_argument("--engine", choices=ENGINES, default=FAST["engine"],
                        help=f"what scores the images (default: {FAST['engine']}, as in the app)")
    parser.add_argument("--precision", choices=PRECISIONS, default=FAST["precision"],
                        help=f"weights' precision (default: {FAST['precision']}, as in the app)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    args = parser.parse_args(argv)
    if not (args.unlabeled_dir or args.data_dir):
        parser.error("give --unlabeled-dir (undiagnosed pictures), --data-dir (diagnosed images), or both")
    if args.fit_temperature and not args.data_dir:
        parser.error("--fit-temperature needs diagnosed images: --data-dir")
    for name in ("min_sensitivity", "min_specificity"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 1]")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def print_report(report: dict) -> None:
    fitted, refused = report["n_fitted"], report["n_refused_by_input_check"]
    print(f"images found: {report['n_found']}; unreadable: {report['n_unreadable']}")
    print("refused by the input check (not fitted): "
          + (", ".join(f"{reason} {counts}" for reason, counts in refused.items()) or "none"))
    print(f"fitted on {fitted['malignant']} melanomas and {fitted['benign']} benign lesions; "
          f"site ROC AUC {report['roc_auc']['value']:.3f} (95% CI {report['roc_auc']['95ci'][0]:.3f}-"
          f"{report['roc_auc']['95ci'][1]:.3f})")
    if report["temperature_refitted"]:
        print(f"site temperature factor: {report['site_temperature']:.3f}")
    print(f"\n{'':34s} {'threshold':>9s} {'sensitivity (95% CI)':>22s} {'specificity (95% CI)':>22s}")
    for which, label in (("at_source_thresholds", "input model"), ("at_site_thresholds", "site-calibrated")):
        for key, point in (("at_screening_threshold", "screening"), ("at_high_risk_threshold", "high risk")):
            block = report[which][key]
            sens, spec = block["sensitivity_95ci"], block["specificity_95ci"]
            print(f"{label + ', ' + point:34s} {block['threshold']:9.4f} "
                  f"{block['sensitivity']:8.3f} ({sens[0]:.3f}-{sens[1]:.3f}) {block['specificity']:8.3f} "
                  f"({spec[0]:.3f}-{spec[1]:.3f})")
    expected = report["expected_on_new_images"]
    print("\nexpected on new images of the site (out-of-bag bootstrap, median and 95% interval): "
          + "; ".join(f"{key} {value['median']:.3f} ({value['95ci'][0]:.3f}-{value['95ci'][1]:.3f})"
                      for key, value in expected.items()))


def print_found(block: dict) -> None:
    """The counts line both label-free methods print from their site_adaptation block."""
    refused = block["n_refused_by_input_check"]
    print(f"pictures found: {block['n_found']}; unreadable: {block['n_unreadable']}; refused by the input check: "
          + (", ".join(f"{reason} {n}" for reason, n in refused.items()) or "none"))


def print_adaptation(block: dict) -> None:
    print_found(block)
    familiar = block.get("familiarity")
    if familiar:
        print(f"median input-check distance {familiar['median_distance']:.2f}, above {familiar['bound']:.2f} for a "
              "training source: adapted")
    guard = block["guard"]
    for item in guard["tried"]:
        with_means = item.get("variance_rank_correlation")
        print(f"{'statistics' if item.get('variances', True) else 'means only'}, mix {item['mix']:g}: rank correlation "
              f"before/after {item['rank_correlation']:.3f} (minimum {guard['minimum']:.2f})"
              + ("" if with_means is None else f", with the means moved alone {with_means:.3f} "
                 f"(minimum {guard['variance_minimum']:.2f})") + (" - tripped" if item["tripped"] else ""))
    print(f"adapted on {block['n_adapted']} pictures; int8 graph against PyTorch: largest P(malignant) difference "
          f"{block['onnx_int8_parity_max_difference']:.4f}")


def read_site(args, source: Path, require, minimum: int):
    """(the source ScreeningModel, pictures found, SitePictures of the accepted ones, what require returned).

    require(model) refuses a model the method cannot use, before minutes of reading pictures; minimum is the
    method's measured fewest accepted pictures.
    """
    paths = find_pictures(args.unlabeled_dir)
    problem = too_few(len(paths), "found", minimum)
    if problem:  # before loading the model: the input check can only lower the count
        raise SiteCalibrationError(problem)
    model = ScreeningModel.load(str(source), engine=args.engine, precision=args.precision)
    required = require(model)
    pictures = gather_pixels(model, paths, batch_size=args.batch_size)
    problem = too_few(len(pictures.pixels), "accepted by the input check", minimum)
    if problem:
        raise SiteCalibrationError(problem)
    return model, len(paths), pictures, required


def adapt(args, source: Path, out_dir: Path, overwrite: bool, name: str) -> Path:
    """--unlabeled-dir with --method statistics: the adapted folder written to out_dir."""
    model, n_found, pictures, _ = read_site(args, source,
                                            lambda model: require_batchnorm(model.model, model.model_id), MIN_PICTURES)
    familiar = require_unfamiliar(model.config, pictures.distances)
    network, rule, guard = adapt_to_site(model, pictures.pixels)
    block = dict(adaptation_block(model, n_found, pictures.unreadable, pictures.refused, len(pictures.pixels), rule,
                                  guard), familiarity=familiar)
    written = write_adapted_model(source, out_dir, model, network, pictures.pixels, block, overwrite=overwrite,
                                  name=name)
    print_adaptation(json.loads((written / "config.json").read_text(encoding="utf-8"))["site_adaptation"])
    return written


def shift(args, source: Path, out_dir: Path, overwrite: bool, name: str) -> Path:
    """--unlabeled-dir with --method scores: the source folder with its thresholds moved, written to out_dir."""
    model, n_found, pictures, reference = read_site(args, source,
                                                    lambda model: require_reference(model.config, model.model_id),
                                                    MIN_SHIFT_PICTURES)
    fitted = fit_score_shift(pictures.probabilities, reference)
    require_shift(fitted)
    thresholds = shifted_thresholds(model.screening_threshold, model.high_risk_threshold, fitted["shift"])
    block = shift_block(model, n_found, pictures.unreadable, pictures.refused, len(pictures.pixels), fitted,
                        thresholds)
    written = write_shifted_model(source, out_dir, block, overwrite=overwrite, name=name)
    print_shift(block)
    return written


def print_shift(block: dict) -> None:
    fit = block["fit"]
    print_found(block)
    print(f"{block['n_adapted']} pictures scored: their scores lie {fit['most_likely_shift']:+.2f} logits from the "
          f"validation scores at best fit (melanoma share {fit['melanoma_share']:.0%}), {fit['shift']:+.2f} to "
          f"{fit['largest_shift']:+.2f} by a one-sided 95% bound; "
          f"thresholds moved by {block['applied_shift']:+.2f}"
          + (" (stopped at the source's high-risk threshold)" if block["capped_at_source_high_risk"] else ""))
    source = block["source_thresholds"]
    print(f"screening threshold {source['screening_threshold']:.4f} -> {block['screening_threshold']:.4f}; "
          f"high-risk threshold {source['high_risk_threshold']:.4f} -> {block['high_risk_threshold']:.4f}")


def diagnosed_images(args):
    """--data-dir's scan, refused before any model is loaded when it has too few of a class."""
    scan = scan_site_folder(args.data_dir)
    problem = shortfall(scan.counts["site"])
    if problem:  # before loading the model: the input check can only lower these counts
        raise SiteCalibrationError(problem)
    return scan


def scored_by(args, folder: Path, scan):
    """(the folder's ScreeningModel, its SiteScores on the diagnosed images)."""
    model = ScreeningModel.load(str(folder), engine=args.engine, precision=args.precision)
    return model, score_site(model, scan.records, skipped=scan.skipped, batch_size=args.batch_size)


def refit_thresholds(args, source: Path, out_dir: Path, scored=None, label_free: dict | None = None) -> dict:
    """--data-dir: the thresholds refitted on the diagnosed images, into out_dir.

    scored: (model, scores) of source on them, when already computed (better_ranking). label_free: what became of
    the label-free adaptation in the combined mode, kept in the report (config.json and the card).
    """
    model, scores = scored or scored_by(args, source, diagnosed_images(args))
    stored_sensitivity, stored_specificity = stored_targets(model.config)
    min_sensitivity = args.min_sensitivity or stored_sensitivity
    min_specificity = args.min_specificity or stored_specificity
    fit = fit_site(scores, min_sensitivity, min_specificity, fit_temperature=args.fit_temperature)
    report = site_report(scores, fit, model, site_name=args.site_name)
    if label_free is not None:
        report["label_free_adaptation"] = label_free
    print_report(report)
    write_site_model(source, out_dir, model, fit, report, overwrite=args.overwrite, name=args.name or out_dir.name)
    return report


def better_ranking(args, source: Path, adapted: Path):
    """Of the source and the adapted folder, the one that ranks the site's diagnosed images better (ROC AUC),
    with its (model, scores) on them for refit_thresholds, and the comparison for the report.

    Adaptation moves the scores and can re-rank them; thresholds refitted on diagnosed images undo the move but
    not the re-ranking. On the model shipped on 2026-12-05 it cost derm7pt 0.07 of ROC AUC
    (docs/site_calibration.md), so the diagnosed images, which the combined mode has, decide.
    """
    from sklearn.metrics import roc_auc_score

    scan = diagnosed_images(args)
    folders = {"source": source, "adapted": adapted}
    scored = {name: scored_by(args, folder, scan) for name, folder in folders.items()}
    auc = {name: float(roc_auc_score(scores.labels, scores.probabilities)) for name, (_, scores) in scored.items()}
    keep = "adapted" if auc["adapted"] >= auc["source"] else "source"
    print(f"ROC AUC on the diagnosed images: source model {auc['source']:.3f}, adapted {auc['adapted']:.3f}; the "
          + ("adapted model is kept" if keep == "adapted" else "adaptation re-ranks them, so it is dropped and the "
             "thresholds are refitted on the source model"))
    outcome = {"kept": keep == "adapted", "roc_auc_on_diagnosed": {name: round(value, 4) for name, value in auc.items()}}
    if keep == "source":
        outcome["because"] = "it ranked the diagnosed images worse than the source model"
    return folders[keep], scored[keep], outcome


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir).expanduser()
    workspace = None
    try:
        source = Path(args.model).expanduser()
        if not source.is_dir():
            raise SiteCalibrationError(f"--model {args.model} is not a model folder; calibration writes a copy of a "
                                       "local folder (download a Hub model first).")
        check_output_folder(source, out_dir, args.overwrite)  # before minutes of scoring
        report = None
        if args.unlabeled_dir and args.data_dir:
            # The adapted folder is the thresholds' input model; it lives beside out_dir until they are refitted.
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            workspace = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-adapted-", dir=out_dir.parent))
            try:
                adapted = adapt(args, source, workspace / "adapted", False, args.name or out_dir.name)
                adapted, scored, outcome = better_ranking(args, source, adapted)
            except NothingToAdapt as reason:
                print(f"{reason} The thresholds are refitted on the source model.")
                adapted, scored, outcome = source, None, {"kept": False, "because": "the site's pictures are as "
                                                           "familiar to the model as its training sources'"}
            report = refit_thresholds(args, adapted, out_dir, scored, label_free=outcome)
        elif args.unlabeled_dir:
            label_free = shift if args.method == "scores" else adapt
            label_free(args, source, out_dir, args.overwrite, args.name or out_dir.name)
        else:
            report = refit_thresholds(args, source, out_dir)
    except NothingToAdapt as outcome:
        # Not an error: the clinic goes on with the model it has, and a script can tell this from a refusal.
        print(str(outcome), file=sys.stderr)
        return NOT_ADAPTED
    except (SiteCalibrationError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if workspace is not None:
            shutil.rmtree(workspace, ignore_errors=True)
    print(f"\nwrote {out_dir}; run the app on it with MODEL_ID={out_dir} python app.py")
    if report is not None:
        print(json.dumps({"screening_threshold": report["screening_threshold"],
                          "high_risk_threshold": report["high_risk_threshold"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
