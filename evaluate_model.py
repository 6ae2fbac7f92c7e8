"""Evaluate a saved model on a labelled image folder, optionally under acquisition shifts.

    python evaluate_model.py --model model --data-dir ../shared/data/melanoma_cancer_dataset --split test
    python evaluate_model.py --model model --data-dir ../shared/data/melanoma_cancer_dataset --split test --robustness
    python evaluate_model.py --model model --data-dir /path/to/external_set       # {benign,malignant}/*.jpg

The model is scored through melanoma_screen's ScreeningModel at 0.5 and at
the two thresholds stored with it. By default it runs in exact fp32 mode,
which gives `transformers.pipeline`'s numbers and so reproduces training's
eval_results.json (the rerun is compared with it); --engine onnxruntime
--precision int8 scores the path that the app and predict.py use.

--robustness scores the same images again under shifts that another clinic's
dermatoscope or a phone would cause (colour casts, exposure, blur, zoom,
framing, JPEG compression, low resolution) and reports the ROC AUC drop.
It also probes the dermoscope-vignette shortcut: benign images with a black
circular field of view added, malignant images with theirs painted out, and
the metrics of images with and without dark corners; and the skin-colour
shortcut: every image with the skin around its lesion recoloured towards
whiter and yellower, and towards darker and pinker skin ("shortcut_probes").
--card MODEL/README.md writes both tables into the model card.

To tabulate finished training runs side by side: experiments/compare_runs.py.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

import data_prep
from melanoma_screen import metrics
from melanoma_screen.images import decode_batches, load_rgb_image
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ScreeningModel
from melanoma_screen.labels import benign_diagnosis_group
from melanoma_screen.model_card import benign_group_table, upsert_card_section
from melanoma_screen.field_of_view import add_circular_vignette, fill_dark_border, has_dark_corners
from melanoma_screen.skin import PROBE_NAMES, PROBE_TARGETS, magnify_lesion, recolour_skin


def _colour_cast(gains):
    def shift(image: Image.Image) -> Image.Image:
        array = np.asarray(image, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    return shift


def _zoom(fraction: float):
    def shift(image: Image.Image) -> Image.Image:
        width, height = image.size
        crop_w, crop_h = int(width * fraction), int(height * fraction)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return image.resize(image.size, Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    return shift


def _off_centre_crop(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.crop((width // 4, 0, width, height * 3 // 4)).resize(image.size, Image.Resampling.BILINEAR)


def _zoom_out(image: Image.Image) -> Image.Image:
    # A wider field of view: the lesion gets smaller, surrounded by more skin (edge-padded).
    small = np.asarray(image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.Resampling.BILINEAR))
    pad_h, pad_w = (image.height - small.shape[0]) // 2, (image.width - small.shape[1]) // 2
    padded = np.pad(small, ((pad_h, image.height - small.shape[0] - pad_h), (pad_w, image.width - small.shape[1] - pad_w), (0, 0)), mode="edge")
    return Image.fromarray(padded)


def _jpeg(quality: int):
    def shift(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return shift


def _low_resolution(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 4, image.height // 4), Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)


# Magnitudes are what one sees between dermatoscopes and phone set-ups, not
# adversarial extremes: a warm or cool white balance, a stop of exposure, a
# slightly defocused lens, another zoom or framing, a messaging app's JPEG.
SHIFTS = {
    "warm colour cast": _colour_cast((1.12, 1.0, 0.85)),
    "cool colour cast": _colour_cast((0.88, 1.0, 1.15)),
    "brighter (+35%)": lambda image: ImageEnhance.Brightness(image).enhance(1.35),
    "darker (-35%)": lambda image: ImageEnhance.Brightness(image).enhance(0.65),
    "lower contrast (-40%)": lambda image: ImageEnhance.Contrast(image).enhance(0.6),
    "gaussian blur (r=2)": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "zoom in (70% centre crop)": _zoom(0.7),
    "zoom out (lesion at 2/3 size)": _zoom_out,
    "off-centre crop": _off_centre_crop,
    "JPEG quality 20": _jpeg(20),
    "low resolution (1/4)": _low_resolution,
}


def score(model: ScreeningModel, paths, shift=None, batch_size: int = 32, desc: str = "scoring",
          refusals: list | None = None) -> np.ndarray:
    """P(malignant) of every image, refused or not; `refusals` collects each one's input-check reason (None: ok)."""
    return score_each(model, paths, None if shift is None else (lambda index, image: shift(image)), batch_size, desc,
                      refusals)


def score_each(model: ScreeningModel, paths, change=None, batch_size: int = 32, desc: str = "scoring",
               refusals: list | None = None) -> np.ndarray:
    """Like score, with change(index, image) applied: each image can get its own seeded random shift."""
    probabilities = []
    batches = tqdm(decode_batches(paths, batch_size, skip=()), total=-(-len(paths) // batch_size), desc=desc,
                   unit="batch", leave=False)
    # Decoded at full size (no JPEG draft), as the metrics in eval_results.json always were;
    # a file that cannot be read stops the evaluation, since its metrics would leave it out.
    for batch in batches:
        images = batch.images if change is None else [change(i, image) for i, image in zip(batch.positions, batch.images)]
        predictions = model.predict_batch(images, batch_size=batch_size)
        probabilities += [p.malignant_probability for p in predictions]
        if refusals is not None:
            refusals += [p.input_check.reason for p in predictions]
    return np.asarray(probabilities)


# The lesion-size probe shows each lesion this many times larger across (2.25 times the area):
# about the step from the 10k benign median share of the frame to derm7pt's benign lesions.
LESION_MAGNIFICATION = 1.5
VIGNETTE_SEED = 20240901  # each benign image i gets the vignette drawn by random.Random(VIGNETTE_SEED + i)


def _before_after(before: np.ndarray, after: np.ndarray, threshold: float) -> dict:
    if before.size == 0:
        return {"n": 0}
    flagged_before, flagged_after = float(np.mean(before >= threshold)), float(np.mean(after >= threshold))
    return {
        "n": int(before.size),
        "mean_p_malignant_before": float(before.mean()),
        "mean_p_malignant_after": float(after.mean()),
        "mean_p_malignant_change": float(after.mean() - before.mean()),
        "flagged_before": flagged_before,
        "flagged_after": flagged_after,
        "flagged_change_points": 100 * (flagged_after - flagged_before),
    }


def _subgroup(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    if labels.size == 0:
        return {"n": 0, "n_malignant": 0, "n_benign": 0}
    m = metrics.binary_metrics(labels, probabilities, threshold)
    return {
        "n": m["n"], "n_malignant": m["n_malignant"], "n_benign": m["n_benign"],
        # A rate over an absent class is undefined, not 0.
        "sensitivity_at_screening": m["sensitivity"] if m["n_malignant"] else None,
        "specificity_at_screening": m["specificity"] if m["n_benign"] else None,
        "roc_auc": m["roc_auc"],
        "mean_p_malignant": float(probabilities.mean()),
    }


def shortcut_probes(model: ScreeningModel, paths, labels: np.ndarray, clean: np.ndarray, batch_size: int = 32) -> dict:
    """Does the model read the dermoscope's black field of view as evidence of melanoma?

    vignette: benign images without dark corners, scored again with a black
    circular vignette added (random radius, centre and soft edge, seeded per
    image). field_of_view: malignant images with dark corners, scored again
    with the border painted in skin colour (no crop, so the lesion keeps its
    size). A model that looks at the lesion barely moves in either.
    by_dark_corners: the clean metrics of images with and without dark corners.
    """
    threshold = model.screening_threshold
    dark = np.asarray([has_dark_corners(load_rgb_image(path))
                       for path in tqdm(paths, desc="dark corners", unit="img", leave=False)], dtype=bool)
    benign = np.flatnonzero((labels == 0) & ~dark)
    vignetted = score_each(model, [paths[i] for i in benign],
                           lambda index, image: add_circular_vignette(image, random.Random(VIGNETTE_SEED + index)),
                           batch_size=batch_size, desc="vignette probe")
    malignant = np.flatnonzero((labels == 1) & dark)
    still_dark = []

    def fill(index, image):
        filled = fill_dark_border(image)
        still_dark.append(has_dark_corners(filled))
        return filled

    filled = score_each(model, [paths[i] for i in malignant], fill, batch_size=batch_size, desc="field-of-view probe")
    skin_colour = {}
    for direction, target in PROBE_TARGETS.items():
        recoloured = score_each(model, paths, lambda index, image: recolour_skin(image, target),
                                batch_size=batch_size, desc=f"skin-colour probe ({direction})")
        skin_colour[direction] = {
            "target_rgb": list(target),
            **{name: _before_after(clean[labels == label], recoloured[labels == label], threshold)
               for name, label in (("benign", 0), ("malignant", 1))},
        }
    magnified = score_each(model, paths, lambda index, image: magnify_lesion(image, LESION_MAGNIFICATION),
                           batch_size=batch_size, desc="lesion-size probe")
    lesion_size = {"magnification": LESION_MAGNIFICATION,
                   **{name: _before_after(clean[labels == label], magnified[labels == label], threshold)
                      for name, label in (("benign", 0), ("malignant", 1))}}
    return {
        "screening_threshold": threshold,
        "vignette": {**_before_after(clean[benign], vignetted, threshold),
                     "images": "benign images without dark corners, with a black circular vignette added",
                     "n_benign_with_dark_corners_left_out": int(((labels == 0) & dark).sum())},
        "field_of_view": {**_before_after(clean[malignant], filled, threshold),
                          "images": "malignant images with dark corners, with the dark border painted in skin colour",
                          # fill_dark_border leaves a border alone when it is not round (a lesion or shadow at the edge).
                          "n_still_dark_after_fill": int(sum(still_dark))},
        # The skin around the lesion (melanoma_screen.skin) moved to another colour, the lesion left as it is.
        "skin_colour": skin_colour,
        # The same picture cropped around the lesion (skin.magnify_lesion): another dermatoscope's magnification.
        "lesion_size": lesion_size,
        "by_dark_corners": {"with": _subgroup(labels[dark], clean[dark], threshold),
                            "without": _subgroup(labels[~dark], clean[~dark], threshold)},
    }


def evaluate(model: ScreeningModel, records, robustness: bool = False, batch_size: int = 32,
             probes_only: bool = False) -> dict:
    paths = [record.path for record in records]
    labels = np.asarray([record.label for record in records])
    reasons = []
    clean = score(model, paths, batch_size=batch_size, desc="clean", refusals=reasons)
    report = {
        "model_id": model.model_id,
        "model_version": model.version,
        "engine": f"{model.engine} {model.precision}",
        "n_images": len(paths),
        **metrics.at_operating_points(labels, clean, model.screening_threshold, model.high_risk_threshold),
        # The metrics above score every image, as training's report does; the app refuses some of them.
        "input_check": metrics.refusal_report(reasons, labels, clean, model.screening_threshold),
    }
    if any(record.dx for record in records):
        # Where the folder's labels.csv names diagnoses: melanoma against each benign diagnosis, and each mimic group.
        report["auc_by_benign_diagnosis"] = metrics.auc_against_benign_groups(labels, clean, [record.dx for record in records])
        report["auc_by_benign_group"] = metrics.auc_against_benign_groups(
            labels, clean, [benign_diagnosis_group(record.dx) for record in records])
    if robustness:
        clean_auc = report["at_0_5"]["roc_auc"]
        report["robustness"] = {}
        for name, shift in ({} if probes_only else SHIFTS).items():
            shifted = score(model, paths, shift=shift, batch_size=batch_size, desc=name)
            at_screening = metrics.binary_metrics(labels, shifted, model.screening_threshold)
            report["robustness"][name] = {
                "roc_auc": at_screening["roc_auc"],
                "auc_drop": None if clean_auc is None else clean_auc - at_screening["roc_auc"],
                "sensitivity_at_screening": at_screening["sensitivity"],
                "specificity_at_screening": at_screening["specificity"],
                "ece": at_screening["ece"],
            }
        report["shortcut_probes"] = shortcut_probes(model, paths, labels, clean, batch_size=batch_size)
    return report


def print_report(report: dict, stored: dict | None) -> None:
    print(f"\n{report['model_id']} ({report['model_version']}) on {report['n_images']} images")
    print(f"{'':28s} {'AUC':>6s} {'acc':>6s} {'sens':>6s} {'spec':>6s} {'F1':>6s} {'ECE':>6s}")
    for key, name in (("at_0_5", "threshold 0.5"), ("at_screening_threshold", "screening threshold"),
                      ("at_high_risk_threshold", "high-risk threshold")):
        m = report[key]
        auc = "   n/a" if m["roc_auc"] is None else f"{m['roc_auc']:6.3f}"
        print(f"{name + ' (' + format(m['threshold'], '.3f') + ')':28s} {auc} {m['accuracy']:6.3f} "
              f"{m['sensitivity']:6.3f} {m['specificity']:6.3f} {m['f1']:6.3f} {m['ece']:6.3f}")
    check = report.get("input_check")
    if check and check["n"]:
        auc = lambda part: "n/a" if not part or part["roc_auc"] is None else f"{part['roc_auc']:.3f}"  # noqa: E731
        print(f"input check: {100 * check['accepted']:.1f}% accepted, {check['refused']} refused {check['reasons'] or ''}; "
              f"ROC AUC on accepted {auc(check['accepted_pictures'])}, on refused {auc(check['refused_pictures'])}")
    for key, heading in (("auc_by_benign_diagnosis", "benign diagnosis"), ("auc_by_benign_group", "benign group")):
        if report.get(key):
            print(f"\nmelanoma against each {heading}:")
            for name, row in report[key].items():
                print(f"  {name:66s} {row['n_benign']:5d} benign  ROC AUC {row['roc_auc']:.3f}")
    if "robustness" in report:
        print(f"\n{'shift':32s} {'AUC':>6s} {'drop':>6s} {'sens@scr':>9s} {'spec@scr':>9s}")
        for name, row in report["robustness"].items():
            print(f"{name:32s} {row['roc_auc']:6.3f} {row['auc_drop']:+6.3f} {row['sensitivity_at_screening']:9.3f} "
                  f"{row['specificity_at_screening']:9.3f}")
    if "shortcut_probes" in report:
        print_shortcut_probes(report["shortcut_probes"])
    if stored and stored["test"]:
        largest = max(
            abs(report[key][name] - stored["test"][key][name])
            for key in ("at_0_5", "at_screening_threshold")
            for name in ("accuracy", "sensitivity", "specificity", "roc_auc")
            if stored["test"][key].get(name) is not None
        )
        print(f"\nlargest difference from the stored eval_results.json: {largest * 100:.2f} points")


def robustness_markdown(report: dict) -> str:
    clean = report["at_screening_threshold"]
    lines = ["| shift | ROC AUC | AUC drop | sensitivity @ screening | specificity @ screening |", "|---|---|---|---|---|",
             f"| none | {clean['roc_auc']:.3f} | – | {clean['sensitivity']:.3f} | {clean['specificity']:.3f} |"]
    for name, row in report["robustness"].items():
        lines.append(f"| {name} | {row['roc_auc']:.3f} | {row['auc_drop']:.3f} | {row['sensitivity_at_screening']:.3f} "
                     f"| {row['specificity_at_screening']:.3f} |")
    return "\n".join(lines) + f"\n\nMeasured on {report['n_images']} images with `{report.get('command', 'evaluate_model.py --robustness')}`."


def _rate(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _probe_rows(probes: dict, markdown: bool):
    """(label, before/after row, shown even when empty) of each probe, in the order both tables list them."""
    for key, text, sentence in (("vignette", "vignette added to benign images",
                                 "black circular vignette added to benign images"),
                                ("field_of_view", "dark border painted out, malignant images",
                                 "dark field-of-view border painted out of malignant images")):
        yield (sentence if markdown else text), probes[key], True
    for direction, probe in (probes.get("skin_colour") or {}).items():
        target = ", ".join(f"{value:g}" for value in probe["target_rgb"])
        for name in ("benign", "malignant"):
            yield (f"skin around the lesion recoloured {PROBE_NAMES[direction]} (RGB {target}), {name} images"
                   if markdown else f"skin {PROBE_NAMES[direction]}, {name}"), probe[name], False
    lesion_size = probes.get("lesion_size") or {}
    for name in ("benign", "malignant"):
        if name in lesion_size:
            magnification = lesion_size["magnification"]
            yield (f"lesion shown {magnification:g}× larger (cropped around it), {name} images" if markdown
                   else f"lesion {magnification:g}x larger, {name}"), lesion_size[name], False


def print_shortcut_probes(probes: dict) -> None:
    print(f"\nshortcut probes at the screening threshold ({probes['screening_threshold']:.3f})")
    print(f"{'probe':44s} {'n':>5s} {'mean P before':>14s} {'after':>6s} {'change':>7s} "
          f"{'flagged before':>15s} {'after':>6s} {'change':>8s}")
    for label, row, shown_empty in _probe_rows(probes, markdown=False):
        if row.get("n"):
            print(f"{label:44s} {row['n']:5d} {row['mean_p_malignant_before']:14.3f} {row['mean_p_malignant_after']:6.3f} "
                  f"{row['mean_p_malignant_change']:+7.3f} {row['flagged_before']:15.1%} {row['flagged_after']:6.1%} "
                  f"{row['flagged_change_points']:+7.1f}p")
        elif shown_empty:
            print(f"{label:44s} {0:5d}")
    print(f"\n{'subgroup':22s} {'n':>5s} {'malig':>6s} {'benign':>7s} {'sens@scr':>9s} {'spec@scr':>9s} {'AUC':>6s}")
    for key in ("with", "without"):
        row = probes["by_dark_corners"][key]
        print(f"{key + ' dark corners':22s} {row['n']:5d} {row['n_malignant']:6d} {row['n_benign']:7d} "
              f"{_rate(row.get('sensitivity_at_screening')):>9s} {_rate(row.get('specificity_at_screening')):>9s} "
              f"{_rate(row.get('roc_auc')):>6s}")


def shortcut_probes_markdown(report: dict) -> str:
    probes = report["shortcut_probes"]
    lines = ["| probe | images | mean P(malignant) before → after | flagged at screening before → after |",
             "|---|---|---|---|"]
    for label, row, shown_empty in _probe_rows(probes, markdown=True):
        if row.get("n"):
            lines.append(f"| {label} | {row['n']} | {row['mean_p_malignant_before']:.3f} → {row['mean_p_malignant_after']:.3f} "
                         f"({row['mean_p_malignant_change']:+.3f}) | {row['flagged_before']:.1%} → {row['flagged_after']:.1%} "
                         f"({row['flagged_change_points']:+.1f} points) |")
        elif shown_empty:
            lines.append(f"| {label} | 0 | – | – |")
    lines += ["", "| subgroup | images | malignant / benign | sensitivity @ screening | specificity @ screening | ROC AUC |",
              "|---|---|---|---|---|---|"]
    for key in ("with", "without"):
        row = probes["by_dark_corners"][key]
        lines.append(f"| {key} dark corners | {row['n']} | {row['n_malignant']} / {row['n_benign']} "
                     f"| {_rate(row.get('sensitivity_at_screening'))} | {_rate(row.get('specificity_at_screening'))} "
                     f"| {_rate(row.get('roc_auc'))} |")
    return ("\n".join(lines) + f"\n\nA model that reads the lesion, not the dermatoscope's field of view or the skin's "
            f"colour or how much of the frame it fills, barely moves in any probe. The skin probe moves only the skin "
            f"outside the lesion mask (`melanoma_screen.skin`); the lesion-size probe crops around that mask. Screening threshold {probes['screening_threshold']:.3f}; vignettes seeded per image; measured "
            f"with `{report.get('command', 'evaluate_model.py --robustness')}`.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="model", help="Model folder (or Hub id).")
    parser.add_argument("--data-dir", help="Image folder: {split}/{benign,malignant}/* or {benign,malignant}/*.")
    parser.add_argument("--split", default=None, help="Split folder to score, e.g. test (omit when --data-dir holds the label folders).")
    parser.add_argument("--robustness", action="store_true", help="Also score under acquisition shifts.")
    parser.add_argument("--shortcut-probes-only", action="store_true",
                        help="With --robustness: the shortcut probes without the acquisition shifts (a quick recipe comparison).")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="What runs the model (default: torch, which gives transformers.pipeline's numbers; "
                             f"the app uses {FAST['engine']}).")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help=f"fp32 (default) or int8 weights (the app uses {FAST['precision']}).")
    parser.add_argument("--without-color-constancy", action="store_true",
                        help="Skip the colour constancy the model was trained with, as a bare transformers pipeline does.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="Write the report as JSON here.")
    parser.add_argument("--card", default=None, help="Write the robustness table into this model card.")
    parser.add_argument("--compare", nargs="+", metavar="RUN_DIR", help=argparse.SUPPRESS)  # moved: refused below
    args = parser.parse_args(argv)
    if args.compare:
        parser.error("--compare is now its own script: python experiments/compare_runs.py "
                     + " ".join(shlex.quote(run) for run in args.compare) + " [--out FILE] [--card CARD]")

    if not args.data_dir:
        parser.error("--data-dir is required")

    if args.shortcut_probes_only and not args.robustness:
        parser.error("--shortcut-probes-only needs --robustness")
    if args.card and args.shortcut_probes_only:
        parser.error("--card writes the whole robustness table: run without --shortcut-probes-only")

    data_dir = Path(args.data_dir)
    try:
        if args.split is None:
            # A bare {benign,malignant} folder, as external sets usually come, read as one split named after
            # the folder: the report's counts keep the keys they had.
            scan = data_prep.scan_label_folder(data_dir, split=data_dir.resolve().name)
        else:
            scan = data_prep.scan_image_folder(data_dir, splits=(args.split,))
            if not scan.records:
                raise ValueError(f"{data_dir / args.split} holds no readable images in benign/ or malignant/ folders.")
    except ValueError as error:
        parser.error(str(error))
    for skipped in scan.skipped:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    model = ScreeningModel.load(args.model, engine=args.engine, precision=args.precision)
    trained_with = model.color_constancy
    if args.without_color_constancy:
        model.color_constancy = "none"
    report = evaluate(model, scan.records, robustness=args.robustness, batch_size=args.batch_size,
                      probes_only=args.shortcut_probes_only)
    report["color_constancy"] = {"trained_with": trained_with, "applied": model.color_constancy}
    report["data"] = {"data_dir": str(data_dir), "split": args.split, "counts": scan.counts, "skipped": len(scan.skipped)}
    report["command"] = "python evaluate_model.py " + " ".join(shlex.quote(arg) for arg in (argv if argv is not None else sys.argv[1:]))
    print_report(report, model.eval_results if args.split == "test" and model.color_constancy == trained_with else None)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.card and not args.robustness and "auc_by_benign_group" not in report:
        parser.error("--card writes the robustness table (--robustness) or, for a folder whose labels.csv names "
                     "diagnoses, melanoma against each benign group; this folder has neither")
    if args.card and "auc_by_benign_group" in report:
        name = data_dir.resolve().name
        upsert_card_section(args.card, "benign_groups",
                            f"{benign_group_table([(name, report['auc_by_benign_group'])])}\n\nMeasured with "
                            f"`{report['command']}` (the score against each group's benign images and every melanoma).",
                            heading="### Melanoma against the benign look-alikes", add_at=("comparison", "robustness"))
    if args.card and args.robustness:
        upsert_card_section(args.card, "robustness", robustness_markdown(report))
        upsert_card_section(args.card, "shortcut_probes", shortcut_probes_markdown(report), heading="### Shortcut probes",
                            add_at="robustness")
    return 0


if __name__ == "__main__":
    sys.exit(main())
