"""Shortcut audit: acquisition features that are not lesion properties but still predict the label.

A dataset assembled from several sources can let a model tell the classes
apart by *how* an image was taken. In the 10k Kaggle set a third of the
malignant images have a dermoscope's black circular field of view and almost
no benign ones do, so the vignette alone separates much of the data. This
audit measures such features per image, then per class and per split:

- dark corners: a circular field of view (melanoma_screen.field_of_view.has_dark_corners),
  and the mean luminance of the four corners;
- the skin around the lesion: mean luminance and R/G/B of the outer frame
  (10% of each side), leaving out the dark field-of-view pixels;
- width, height and JPEG quality (estimated from the quantisation table),
  only where they vary.

Each feature's ROC AUC on its own, max(auc, 1 - auc) with the direction, says
how well a one-feature classifier would predict the label; a standardised
logistic regression on all of them together, cross-validated, says how well a
model could do from acquisition alone. A feature at or above `warn_auc` gets
a plain warning sentence.

    report = shortcut_audit(records)        # JSON-able dict with a "warnings" list
    print(shortcut_markdown(report))        # the model card's table
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from melanoma_screen.field_of_view import DARK_LUMINANCE, corner_luminances, has_dark_corners
from melanoma_screen.images import luminance

from .folder import LABELS, ImageRecord

DEFAULT_WARN_AUC = 0.65
BORDER_FRACTION = 0.10  # the outer frame: mostly skin around a centred lesion
# Corner and border statistics need no fine detail: JPEGs are decoded at a
# reduced DCT scale (1/2 to 1/8) that keeps at least this many pixels on each
# side, which makes the audit several times faster. On 2,802 images of the 10k
# set, 5 (0.2%) got another dark-corner flag than at full size.
MIN_ANALYSIS_SIDE = 128
CV_FOLDS = 5

# The IJG (libjpeg) luminance quantisation table at quality 50, from which
# every libjpeg "quality" setting is scaled.
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((IJG_LUMINANCE * scale + 50) / 100), 1, 255)


# Sorted, so the comparison does not depend on whether a PIL version reports
# the table in zigzag or natural order.
_IJG_SORTED = {quality: np.sort(_ijg_table(quality)) for quality in range(1, 101)}


def estimate_jpeg_quality(quantization: dict | None) -> float | None:
    """The libjpeg quality (1-100) whose luminance table is closest to this JPEG's, or None for non-JPEGs.

    Encoders with their own tables (cameras, Photoshop) get the nearest IJG
    equivalent, which still ranks them by how hard they compress.
    """
    if not quantization or 0 not in quantization:
        return None
    return _nearest_quality(tuple(quantization[0]))


@functools.lru_cache(maxsize=256)
def _nearest_quality(luminance_table: tuple) -> float | None:
    # Cached: a dataset usually has a handful of distinct tables, one per encoder setting.
    table = np.sort(np.asarray(luminance_table, dtype=np.float64))
    if table.size != 64:
        return None
    errors = {quality: float(np.abs(table - reference).sum()) for quality, reference in _IJG_SORTED.items()}
    return float(min(errors, key=errors.get))


FEATURES = {
    # name: (label in sentences and tables, kind, unit in tables)
    "dark_corners": ("dark corners (a dermoscope's circular field of view, the vignette)", "binary", "share"),
    "corner_luminance": ("corner brightness (mean luminance of the four corners)", "continuous", "0-255"),
    "border_luminance": ("brightness of the skin border (outer 10% frame)", "continuous", "0-255"),
    "border_red": ("red level of the skin border", "continuous", "0-255"),
    "border_green": ("green level of the skin border", "continuous", "0-255"),
    "border_blue": ("blue level of the skin border", "continuous", "0-255"),
    "width": ("image width", "continuous", "px"),
    "height": ("image height", "continuous", "px"),
    "jpeg_quality": ("JPEG quality (estimated from the quantisation table)", "continuous", "1-100"),
}


def _open(record: ImageRecord) -> tuple[Image.Image, tuple[int, int], float | None]:
    """The decoded RGB image (maybe at reduced scale), its full size, and its JPEG quality."""
    if record.image is not None:
        image = record.image
        return image.convert("RGB"), image.size, estimate_jpeg_quality(getattr(image, "quantization", None))
    with Image.open(record.path) as image:
        quality = estimate_jpeg_quality(getattr(image, "quantization", None)) if image.format == "JPEG" else None
        transposed = (image.getexif() or {}).get(0x0112, 1) in (5, 6, 7, 8)
        size = image.size[::-1] if transposed else image.size
        if image.format == "JPEG":
            image.draft("RGB", (MIN_ANALYSIS_SIDE, MIN_ANALYSIS_SIDE))
        image = ImageOps.exif_transpose(image).convert("RGB")
    return image, size, quality


def acquisition_features(image: Image.Image, size: tuple[int, int] | None = None, jpeg_quality: float | None = None) -> dict:
    """The acquisition features of one decoded image (see FEATURES); border colours are NaN when the frame is all dark."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    lum = luminance(rgb)
    frame = np.ones((height, width), bool)
    margin_y, margin_x = max(1, int(round(height * BORDER_FRACTION))), max(1, int(round(width * BORDER_FRACTION)))
    frame[margin_y:height - margin_y, margin_x:width - margin_x] = False
    # The black field of view is not skin: counting it would just repeat the vignette feature.
    skin = frame & (lum >= DARK_LUMINANCE)
    border = rgb[skin].mean(axis=0) if skin.any() else np.full(3, np.nan, np.float32)
    full_width, full_height = size or image.size
    return {
        "dark_corners": float(has_dark_corners(image)),
        "corner_luminance": float(corner_luminances(image).mean()),
        "border_luminance": float(luminance(border)),
        "border_red": float(border[0]),
        "border_green": float(border[1]),
        "border_blue": float(border[2]),
        "width": float(full_width),
        "height": float(full_height),
        "jpeg_quality": np.nan if jpeg_quality is None else float(jpeg_quality),
    }


def _rounded(value, digits: int = 4):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


def _summary(values: np.ndarray) -> dict:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None}
    return {"n": int(values.size), "mean": _rounded(values.mean()), "std": _rounded(values.std()),
            "median": _rounded(np.median(values))}


def _auc(labels: np.ndarray, values: np.ndarray) -> float | None:
    """ROC AUC of `values` as a malignant score; None when a class is missing or the feature is constant."""
    known = ~np.isnan(values)
    labels, values = labels[known], values[known]
    if len(set(labels.tolist())) < 2 or np.ptp(values) == 0:
        return None
    return float(roc_auc_score(labels, values))


def _separation(auc: float | None) -> tuple[float | None, str | None]:
    """max(auc, 1 - auc) and which class has the higher values."""
    if auc is None:
        return None, None
    return max(auc, 1 - auc), ("higher in malignant" if auc >= 0.5 else "higher in benign")


def _combined(matrix: np.ndarray, labels: np.ndarray, names: list[str], seed: int) -> dict:
    """Cross-validated AUC of a standardised logistic regression on every varying feature."""
    counts = np.bincount(labels, minlength=2)
    folds = int(min(CV_FOLDS, counts.min()))
    if not names or folds < 2:
        return {"features": names, "cv_auc": None, "folds": folds,
                "note": "not fitted: needs a varying feature and at least two images of each class"}
    # NaN (an all-dark border) becomes the feature's median: it is rare and carries no colour.
    filled = np.where(np.isnan(matrix), np.nanmedian(matrix, axis=0), matrix)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, filled, labels, cv=splitter, method="predict_proba")[:, 1]
    fitted = classifier.fit(filled, labels)
    coefficients = fitted[-1].coef_[0]
    return {"features": names, "cv_auc": _rounded(roc_auc_score(labels, scores)), "folds": folds,
            "standardised_coefficients": {name: _rounded(c) for name, c in zip(names, coefficients)}}


def _describe_classes(name: str, entry: dict) -> str:
    benign, malignant = entry["per_class"]["benign"]["mean"], entry["per_class"]["malignant"]["mean"]
    if FEATURES[name][1] == "binary":
        return f"{malignant:.1%} of malignant images have them against {benign:.1%} of benign ones"
    return f"mean {malignant:.1f} in malignant images against {benign:.1f} in benign ones"


def shortcut_audit(records: list[ImageRecord], warn_auc: float = DEFAULT_WARN_AUC, progress: bool = True,
                   seed: int = 0) -> dict:
    """A JSON-able report of acquisition features that predict the label (see module docstring).

    Keys: n_images, n_unreadable, warn_auc, features (per feature: per_class,
    per_split, auc, direction, auc_by_split, varies), combined (cross-validated
    AUC of all varying features together) and warnings (plain sentences).
    """
    rows, labels, splits, sources, unreadable = [], [], [], [], []
    for record in tqdm(records, desc="Shortcut audit", unit="img", disable=not progress):
        try:
            image, size, quality = _open(record)
        except (OSError, ValueError, SyntaxError) as error:
            # The scan already decoded every file, so this is a file that changed since.
            unreadable.append({"path": record.path, "reason": str(error)})
            continue
        rows.append(acquisition_features(image, size, quality))
        labels.append(record.label)
        splits.append(record.split)
        sources.append(record.source or "all")
    labels = np.asarray(labels, dtype=int)
    sources = np.asarray(sources, dtype=object)
    # Inside one source the acquisition is (nearly) one device: a cue that still predicts the label
    # there is not the source's class balance speaking.
    two_class_sources = [source for source in sorted(set(sources.tolist()))
                         if min(np.bincount(labels[sources == source], minlength=2)) >= 2]
    splits = np.asarray(splits, dtype=object)
    split_names = list(dict.fromkeys(splits.tolist()))

    features, varying, warnings = {}, [], []
    for name, (description, kind, unit) in FEATURES.items():
        values = np.asarray([row[name] for row in rows], dtype=np.float64)
        known = values[~np.isnan(values)]
        varies = bool(known.size and np.ptp(known) > 0)
        entry = {
            "description": description, "kind": kind, "unit": unit, "varies": varies,
            "n_missing": int(np.isnan(values).sum()),
            "per_class": {label: _summary(values[labels == i]) for i, label in enumerate(LABELS)},
            "per_split": {split: {label: _summary(values[(splits == split) & (labels == i)])
                                  for i, label in enumerate(LABELS)} for split in split_names},
        }
        if not varies:
            entry["value"] = _rounded(known[0]) if known.size else None
        auc, direction = _separation(_auc(labels, values)) if varies else (None, None)
        entry["auc"], entry["direction"] = _rounded(auc), direction
        entry["auc_by_split"] = {split: _rounded(_separation(_auc(labels[splits == split], values[splits == split]))[0])
                                 for split in split_names} if varies else {}
        entry["auc_by_source"] = {source: _rounded(_separation(_auc(labels[sources == source], values[sources == source]))[0])
                                  for source in two_class_sources} if varies else {}
        features[name] = entry
        if varies:
            varying.append(name)
        if auc is not None and auc >= warn_auc:
            warnings.append(f"Shortcut: {description} predicts the label on its own with ROC AUC {auc:.2f} "
                            f"({_describe_classes(name, entry)}). A model can learn this acquisition cue "
                            f"instead of the lesion.")

    matrix = np.asarray([[row[name] for name in varying] for row in rows], dtype=np.float64).reshape(len(rows), len(varying))
    # A feature missing everywhere (no JPEG at all) cannot be imputed; drop it from the classifier.
    usable = [name for j, name in enumerate(varying) if not np.isnan(matrix[:, j]).all()]
    usable_matrix = matrix[:, [varying.index(name) for name in usable]]
    combined = _combined(usable_matrix, labels, usable, seed)
    combined_by_source = {source: _combined(usable_matrix[sources == source], labels[sources == source], usable, seed)["cv_auc"]
                          for source in two_class_sources}
    # The source alone, scored by its own share of malignant images: what a model learns if it
    # only recognises the camera.
    share = {source: labels[sources == source].mean() for source in set(sources.tolist())}
    source_alone_auc = _rounded(_auc(labels, np.asarray([share[source] for source in sources], dtype=np.float64)))
    if combined["cv_auc"] is not None and combined["cv_auc"] >= warn_auc:
        warnings.append(f"Shortcut: all acquisition features together ({', '.join(usable)}) predict the label with "
                        f"a cross-validated ROC AUC of {combined['cv_auc']:.2f}, without looking at the lesion.")
    return {
        "n_images": len(rows),
        "n_unreadable": len(unreadable),
        "unreadable": unreadable,
        "warn_auc": warn_auc,
        "counts": {split: {label: int(((splits == split) & (labels == i)).sum()) for i, label in enumerate(LABELS)}
                   for split in split_names},
        "features": features,
        "combined": combined,
        "combined_by_source": combined_by_source,
        "source_alone_auc": source_alone_auc,
        "source_counts": {source: {label: int(((sources == source) & (labels == i)).sum()) for i, label in enumerate(LABELS)}
                          for source in sorted(set(sources.tolist()))},
        "warnings": warnings,
    }


def _cell(entry: dict, summary: dict) -> str:
    if summary["mean"] is None:
        return "–"
    if entry["kind"] == "binary":
        return f"{summary['mean']:.1%}"
    return f"{summary['mean']:.1f} ± {summary['std']:.1f}"


def shortcut_markdown(report: dict) -> str:
    """The audit as a model-card table, with its warnings as a list."""
    lines = ["| acquisition feature | benign | malignant | ROC AUC alone | higher in |", "|---|---|---|---|---|"]
    constant = []
    for name, entry in report["features"].items():
        if not entry["varies"]:
            if entry.get("value") is not None:
                constant.append(f"{entry['description']} {entry['value']:g}")
            continue
        auc = "–" if entry["auc"] is None else f"{entry['auc']:.3f}"
        flag = " ⚠" if entry["auc"] is not None and entry["auc"] >= report["warn_auc"] else ""
        higher = "–" if entry["direction"] is None else entry["direction"].removeprefix("higher in ")
        lines.append(f"| {entry['description']} | {_cell(entry, entry['per_class']['benign'])} "
                     f"| {_cell(entry, entry['per_class']['malignant'])} | {auc}{flag} | {higher} |")
    combined = report["combined"]
    text = "\n".join(lines)
    text += (f"\n\nShares for binary features, mean ± standard deviation otherwise, over {report['n_images']} images. "
             "ROC AUC alone is max(AUC, 1 − AUC) of the feature as the only score.")
    if combined["cv_auc"] is not None:
        text += (f" A standardised logistic regression on all of them together reaches a {combined['folds']}-fold "
                 f"cross-validated ROC AUC of {combined['cv_auc']:.3f}.")
    if constant:
        text += " The same for every image: " + "; ".join(constant) + "."
    by_source = report.get("combined_by_source") or {}
    if len(report.get("source_counts", {})) > 1:
        text += (f" The source alone (each source's share of malignant images as the score) reaches ROC AUC "
                 f"{report['source_alone_auc']:.3f}")
        if by_source:
            text += "; inside each source with both classes, all features together reach " + ", ".join(
                f"{source} {'n/a' if auc is None else format(auc, '.3f')}" for source, auc in by_source.items())
        text += "."
    if report["warnings"]:
        text += "\n\n" + "\n".join(f"- {warning}" for warning in report["warnings"])
    else:
        text += f"\n\nNo acquisition feature reaches ROC AUC {report['warn_auc']:.2f} on its own."
    return text


def print_shortcut_audit(report: dict) -> None:
    splits = list(report["counts"])
    print(f"\nShortcut audit ({report['n_images']} images): acquisition features per class, and ROC AUC of each alone")
    header = f"  {'feature':18s} " + " ".join(f"{split + ' ' + label[:3]:>14s}" for split in splits for label in LABELS)
    print(header + f" {'AUC':>6s}  higher in")
    for name, entry in report["features"].items():
        if not entry["varies"]:
            print(f"  {name:18s} the same for every image: {entry.get('value')}")
            continue
        cells = []
        for split in splits:
            for label in LABELS:
                mean = entry["per_split"][split][label]["mean"]
                cells.append("–" if mean is None else (f"{mean:.1%}" if entry["kind"] == "binary" else f"{mean:.1f}"))
        auc = "   n/a" if entry["auc"] is None else f"{entry['auc']:6.3f}"
        print(f"  {name:18s} " + " ".join(f"{cell:>14s}" for cell in cells) + f" {auc}  "
              f"{(entry['direction'] or '').removeprefix('higher in ')}")
    combined = report["combined"]
    if combined["cv_auc"] is not None:
        print(f"  all together (logistic regression, {combined['folds']}-fold CV): ROC AUC {combined['cv_auc']:.3f}")
    if report.get("source_alone_auc") is not None and len(report.get("source_counts", {})) > 1:
        print(f"  the source alone (its share of malignant images as the score): ROC AUC {report['source_alone_auc']:.3f}")
    for source, auc in (report.get("combined_by_source") or {}).items():
        counts = report["source_counts"][source]
        strongest = max(((name, entry["auc_by_source"].get(source)) for name, entry in report["features"].items()
                         if entry["varies"] and entry["auc_by_source"].get(source) is not None),
                        key=lambda item: item[1], default=(None, None))
        print(f"  inside {source} ({counts['benign']} benign, {counts['malignant']} malignant): all together "
              + ("n/a" if auc is None else f"{auc:.3f}")
              + ("" if strongest[0] is None else f", strongest alone {strongest[0]} {strongest[1]:.3f}"))
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
