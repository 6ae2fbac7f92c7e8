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

    python evaluate_model.py --compare runs/a runs/b ... --card model/README.md

--compare evaluates nothing: it tabulates finished training runs (run folders,
or a folder of runs), from each run's eval_results.json (and robustness.json,
written by --robustness --out; by_source.json, written by
experiments/operating_points_by_source.py), with the recipe from the settings
each one stored; runs trained before settings were stored show their recipe as
unknown (—). It ranks the runs by the first external set's ROC AUC, and
--out writes the rows and that ranking as JSON.
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
from melanoma_screen.input_check import refusal_report
from melanoma_screen.labels import benign_diagnosis_group
from melanoma_screen.model_card import benign_group_table, upsert_card_section
from melanoma_screen.results import load_eval_results
from melanoma_screen.field_of_view import add_circular_vignette, fill_dark_border, has_dark_corners
from melanoma_screen.skin import PROBE_TARGETS, magnify_lesion, recolour_skin
from melanoma_screen.transforms import AUGMENTATION_DEFAULTS, COLOR_CONSTANCY_NAMES


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
        "input_check": refusal_report(reasons, labels, clean, model.screening_threshold),
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


SKIN_PROBE_NAMES = {"whiter_yellower": "whiter and yellower", "darker_pinker": "darker and pinker"}


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
            yield (f"skin around the lesion recoloured {SKIN_PROBE_NAMES[direction]} (RGB {target}), {name} images"
                   if markdown else f"skin {SKIN_PROBE_NAMES[direction]}, {name}"), probe[name], False
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


UNKNOWN = "—"  # a setting the run did not store, unlike "–", a setting that was off or empty

# --scratch-config's names, as the comparison's initialisation column writes them.
ARCHITECTURE_LABELS = {"tiny": "ViT-tiny", "small": "ViT-small", "base": "ViT-base", "levit": "LeViT-128S",
                       "mobilevitv2": "MobileViTV2-0.5"}
_RECIPE_COLUMNS = ("initialisation", "extra training data", "field of view", "colour constancy", "augmentation",
                   "balance", "selection")


def recipe(settings: dict | None) -> dict:
    """The comparison's recipe columns from the settings a run stored (None: all unknown)."""
    if settings is None:
        return dict.fromkeys(_RECIPE_COLUMNS, UNKNOWN)
    data_args, model_args = settings["data"], settings["model"]
    changed = {name.removeprefix("augment_"): data_args.get(name, default) for name, default in AUGMENTATION_DEFAULTS.items()
               if data_args.get(name, default) != default}
    color_constancy = model_args.get("color_constancy", "none")
    return dict(zip(_RECIPE_COLUMNS, (
        ("mimetic" if model_args.get("mimetic_init") else "random") + f", {ARCHITECTURE_LABELS.get(model_args['scratch_config'], model_args['scratch_config'])}"
        if model_args.get("scratch_config") else
        ("MAE encoder" if model_args.get("init_from") else
         # A local folder, such as the shipped model/, by its name: its absolute path says where it was, not what.
         f"fine-tuned from {Path(model_args['model_name_or_path']).name}/"
         if Path(str(model_args.get("model_name_or_path"))).is_absolute() else model_args.get("model_name_or_path")),
        ", ".join(Path(folder).name for folder in data_args.get("extra_train_dir") or []) or "–",
        f"mask r={model_args['field_of_view_mask']:g}" if model_args.get("field_of_view_mask") else "–",
        "–" if color_constancy == "none" else COLOR_CONSTANCY_NAMES[color_constancy],
        ", ".join(f"{k} {v:g}" + (" per class" if k == "vignette" and data_args.get("augment_vignette_balanced") else "")
                  for k, v in changed.items())
        + (", lesion size balanced per class" if data_args.get("augment_lesion_size_balanced") else "") or "default",
        (data_args.get("balance") or "none") + (" + diagnoses" if data_args.get("balance_diagnoses") else "")
        + (f", diagnosis head {settings['screening']['diagnosis_head_weight']:g}"
           if (settings.get("screening") or {}).get("diagnosis_head_weight") else ""),
        {"pooled": "pooled val AUC", "mean_source": "mean per-source val AUC", "worst_source": "worst per-source val AUC"}[
            (settings.get("screening") or {}).get("select_on") or "pooled"],
    )))


def describe_run(run_dir: Path) -> dict:
    """One row of the comparison: the recipe (from the settings the run stored) and its figures.

    Runs trained before the settings were stored as data show theirs as
    unknown: their command line is for people, and a renamed flag would
    misread it.
    """
    report = load_eval_results(run_dir / "eval_results.json")
    settings = report.get("settings")
    row = {"run": run_dir.name, **recipe(settings)}
    # Runs before train_vit.py took TrainingArguments stored "epochs"; later ones "num_train_epochs".
    training = (settings or {}).get("training", {})
    epochs = report.get("epochs_trained") or training.get("num_train_epochs", training.get("epochs"))
    selection = report.get("checkpoint_selection", {"chosen": "best checkpoint"})
    row.update({
        "epochs": UNKNOWN if epochs is None else f"{epochs:.3g}",
        "weights": f"mean of last {len(selection['average']['checkpoints'])}" if selection["chosen"] == "average" else "best epoch",
        "val AUC": report["validation_at_screening_threshold"]["roc_auc"],
        "val spec @ screening": report["validation_at_screening_threshold"]["specificity"],
    })
    if report["test"]:
        at_05, at_screening = report["test"]["at_0_5"], report["test"]["at_screening_threshold"]
        row.update({"test AUC": at_05["roc_auc"], "test acc": at_05["accuracy"],
                    "test sens / spec @ screening": (at_screening["sensitivity"], at_screening["specificity"]),
                    "test ECE": at_05["ece"]})
    # by_source.json: experiments/operating_points_by_source.py, for runs trained before training reported it.
    by_source_path = run_dir / "by_source.json"
    by_source = json.loads(by_source_path.read_text())["external"] if by_source_path.is_file() else {}
    for name, external in report["external"].items():
        row[f"{name} AUC"] = external["at_0_5"]["roc_auc"]
        row[f"{name} sens / spec @ screening"] = (external["at_screening_threshold"]["sensitivity"],
                                                  external["at_screening_threshold"]["specificity"])
        for group, result in (external.get("auc_by_benign_group") or {}).items():
            row[f"{name} AUC against {group}"] = result["roc_auc"]
        shift = external.get("by_source") or by_source.get(name)
        if shift and "specificity_at_sensitivity_0_90" in shift:
            row[f"{name} spec @ sens 0.90"] = shift["specificity_at_sensitivity_0_90"]
            row[f"{name} mean P(mal) of benign"] = shift["mean_p_malignant_benign"]
    for source, auc in (report.get("validation_auc_by_source") or {}).items():
        row[f"val AUC {source}"] = auc
    if report.get("train_minutes") is not None:
        row["train minutes"] = f"{report['train_minutes']:.0f}"
    robustness_path = run_dir / "robustness.json"
    if robustness_path.is_file():
        robustness = json.loads(robustness_path.read_text())
        shifts = robustness["robustness"]
        if shifts:  # empty after --shortcut-probes-only
            worst = min(shifts, key=lambda name: shifts[name]["roc_auc"])
            row["mean AUC under shifts"] = float(np.mean([shift["roc_auc"] for shift in shifts.values()]))
            row["worst shift"] = (worst, shifts[worst]["roc_auc"])
        vignette = (robustness.get("shortcut_probes") or {}).get("vignette")
        if vignette and vignette.get("n"):
            row["vignette probe: P(mal) / flagged change"] = (vignette["mean_p_malignant_change"],
                                                              vignette["flagged_change_points"] / 100)
        for direction, probe in ((robustness.get("shortcut_probes") or {}).get("skin_colour") or {}).items():
            if probe["benign"].get("n"):
                row[f"skin probe {SKIN_PROBE_NAMES[direction]}: benign P(mal) / flagged change"] = (
                    probe["benign"]["mean_p_malignant_change"], probe["benign"]["flagged_change_points"] / 100)
        lesion_size = ((robustness.get("shortcut_probes") or {}).get("lesion_size") or {}).get("benign") or {}
        if lesion_size.get("n"):
            row["lesion-size probe (1.5x larger): benign P(mal) / flagged change"] = (
                lesion_size["mean_p_malignant_change"], lesion_size["flagged_change_points"] / 100)
    return row


def run_folders(paths) -> list[Path]:
    """The training runs named: each path is a run folder, or a folder whose sub-folders are runs."""
    runs = []
    for path in map(Path, paths):
        if (path / "eval_results.json").is_file():
            runs.append(path)
        elif path.is_dir():
            runs += sorted(child for child in path.iterdir() if (child / "eval_results.json").is_file())
    return runs


def ranking_by_external_auc(runs: list[Path]) -> list[str]:
    """Run names by the first external set's ROC AUC, best first: for choosing which runs to look at closely.

    The external set is then no longer untouched, and reports say so.
    """
    aucs = {}
    for run in runs:
        external = next(iter(load_eval_results(run / "eval_results.json")["external"].values()), None)
        if external is not None:
            aucs[run.name] = external["at_0_5"]["roc_auc"]
    return sorted(aucs, key=lambda name: -(aucs[name] or 0))


def comparison_markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(name for row in rows for name in row))

    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, tuple):
            return " / ".join(cell(part) for part in value)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(name)) for name in columns) + " |" for row in rows]
    return "\n".join(lines)


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
    parser.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)  # the old spelling: refused below
    parser.add_argument("--without-color-constancy", action="store_true",
                        help="Skip the colour constancy the model was trained with, as a bare transformers pipeline does.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="Write the report (or the --compare table) as JSON here.")
    parser.add_argument("--card", default=None, help="Write the robustness (or --compare) table into this model card.")
    parser.add_argument("--compare", nargs="+", metavar="RUN_DIR",
                        help="Tabulate finished training runs instead: run folders, or folders of runs. With --out, "
                             "the rows and the ranking by external ROC AUC as JSON.")
    args = parser.parse_args(argv)
    if args.fast:
        parser.error(f"--fast is now --engine {FAST['engine']} --precision {FAST['precision']} "
                     "(the app's path, spelled as in predict.py and the benchmarks)")

    if args.compare:
        runs = run_folders(args.compare)
        if not runs:
            parser.error("--compare: none of " + ", ".join(args.compare) + " is a training run (no eval_results.json)")
        rows = [describe_run(run) for run in runs]
        table = comparison_markdown(rows)
        print(table)
        ranking = ranking_by_external_auc(runs)
        if ranking:
            print("ranking by external ROC AUC:", ", ".join(ranking))
        if args.out:
            Path(args.out).write_text(json.dumps({"rows": rows, "ranking": ranking}, indent=2) + "\n")
        if args.card:
            command = "python evaluate_model.py --compare " + " ".join(args.compare) + f" --card {args.card}"
            upsert_card_section(args.card, "comparison", f"{table}\n\nWritten by `{command}`.")
        return 0
    if not args.data_dir:
        parser.error("--data-dir is required (unless --compare)")

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
