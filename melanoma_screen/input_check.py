"""The input check: refuse a picture the model cannot judge, before any risk level is given.

A classifier trained on dermoscopy answers every picture, and a "low" on a photo
with no lesion in it is false reassurance. Two kinds of evidence decide:

* image statistics, computed on the decoded picture whatever the model:
  exposure, sharpness, how much structure there is, and its colours. They catch
  far too dark or bright pictures, heavy blur, empty frames and plain skin, and
  pictures whose colours no dermoscopic image has (grey pages, screenshots,
  scenery, noise);
* a Mahalanobis distance in the model's own feature space (the mean patch
  token after its middle encoder layer, onnx_engine.logits_and_embedding says
  why not the CLS token; class means and one shared, shrunk covariance, Lee et
  al. 2018). It catches pictures that look ordinary to the statistics but like
  nothing the model was trained on.

Every threshold is fitted on data, never typed in here: each statistic's bounds
are extreme quantiles of the training split, and the distance threshold is the
one that keeps `target_acceptance` of the validation split when combined with
them. They are stored in the model folder (input_check.safetensors, plus a
readable input_check.json) by train_vit.py, or refitted for an existing folder:

    python fit_input_check.py fit --model model     # the split stored in model/eval_results.json
    python fit_input_check.py check --model model photo.jpg more/   # the verdict per picture

The distance part belongs to one set of weights: the file records the weights'
hash, and after the model is replaced it is switched off (with a warning) until
`fit` is run again; the image statistics keep working meanwhile.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .messages import render

logger = logging.getLogger(__name__)

STATS_FILE = "input_check.safetensors"
REPORT_FILE = "input_check.json"
FORMAT_VERSION = "1"

# The statistics look at the picture at a fixed size, whatever the model's input,
# so that they mean the same for every model; 256 px keeps the edges of a lesion's
# border and of hairs that a heavy blur removes.
ANALYSIS_SIDE = 256
# The centre of the frame, where the lesion is: the dark corners of a dermatoscope's
# round field of view and rulers at the edges stay out of the statistics.
CENTRE = 0.7
# Structure is measured on a coarse grid: a lesion is a large blob that survives
# it, while skin texture, pores and sensor noise average away.
COARSE_SIDE = 16

FEATURES = (
    "brightness",        # median luminance of the centre
    "highlights",        # 90th percentile of luminance: low when even the bright parts are dark
    "edge_peak",         # 99th percentile of |Laplacian| / contrast: no sharp edge anywhere when low
    "edge_mean",         # mean |Laplacian| / contrast: fine texture everywhere (noise, text) when high
    "structure",         # luminance and colour range on the coarse grid: an empty frame when low
    "colourfulness",     # median chroma: grey pages, scans, screenshots and black-and-white photos when low
)

# (reason, feature, side), in the order they are tried: the first that trips
# names the reason. Exposure comes first; an empty frame is named before blur,
# since a blank wall has no edges either but "no lesion" is what is wrong with it. Bounds on redness and
# yellowness and an upper bound on chroma were tried and dropped: on the
# generated set they refused nothing that these and the distance did not, and
# they refused real dermoscopy from other clinics.
RULES = (
    ("too_dark", "highlights", "low"),
    ("too_bright", "brightness", "high"),
    ("no_lesion", "structure", "low"),
    ("blurred", "edge_peak", "low"),
    ("not_skin", "colourfulness", "low"),
    ("not_skin", "edge_mean", "high"),
)
UNFAMILIAR = "unfamiliar"

# Every refusal code, in the order reports list them; melanoma_screen.messages holds their sentences.
REASONS = ("too_dark", "too_bright", "blurred", "no_lesion", "not_skin", UNFAMILIAR)


# ---------------------------------------------------------------- statistics


def image_features(image: Image.Image) -> np.ndarray:
    """The statistics of FEATURES for one decoded RGB picture, float64."""
    rgb_image = image if image.mode == "RGB" else image.convert("RGB")
    # reducing_gap: a large phone photo is first shrunk by whole factors, which is fast and exact enough.
    small = rgb_image.resize((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    margin = int(round(ANALYSIS_SIDE * (1 - CENTRE) / 2))
    centre = rgb[margin:-margin, margin:-margin]
    # Quantiles over every other pixel: the same figures to a few thousandths, in a quarter of the time.
    sparse = centre[::2, ::2]
    red, green, blue = sparse[..., 0], sparse[..., 1], sparse[..., 2]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue

    full = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    laplacian = np.abs(4 * full[1:-1, 1:-1] - full[:-2, 1:-1] - full[2:, 1:-1] - full[1:-1, :-2] - full[1:-1, 2:])
    laplacian = laplacian[margin - 1:-(margin - 1), margin - 1:-(margin - 1)]
    # Divided by the contrast, so a low-contrast lesion is not taken for a blurred one;
    # the constant keeps a flat picture's sensor noise from looking like sharp detail.
    contrast = float(luminance.std()) + 0.02

    coarse = np.asarray(Image.fromarray((centre * 255).astype(np.uint8)).resize(
        (COARSE_SIDE, COARSE_SIDE), Image.Resampling.BOX), dtype=np.float32) / 255.0
    opponent = np.stack([0.299 * coarse[..., 0] + 0.587 * coarse[..., 1] + 0.114 * coarse[..., 2],
                         coarse[..., 0] - coarse[..., 1],
                         (coarse[..., 0] + coarse[..., 1]) / 2 - coarse[..., 2]], axis=-1).reshape(-1, 3)
    low, high = np.percentile(opponent, [5, 95], axis=0)
    structure = float(np.linalg.norm(high - low))

    return np.array([
        np.median(luminance),
        np.percentile(luminance, 90),
        np.percentile(laplacian[::2, ::2], 99) / contrast,
        laplacian.mean() / contrast,
        structure,
        np.median(np.hypot(red - green, (red + green) / 2 - blue)),
    ], dtype=np.float64)


# ---------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """ok, or the reason for refusing; details name what tripped, for logs and reports."""

    reason: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def message(self, lang: str = "en") -> str | None:
        return None if self.ok else render(self.reason, lang=lang)


class InputCheck:
    """Fitted bounds and feature-space statistics; `judge` turns measurements into verdicts."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, class_means: np.ndarray | None = None,
                 precision: np.ndarray | None = None, threshold: float | None = None,
                 model_version: str | None = None, meta: dict | None = None):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.class_means = None if class_means is None else np.asarray(class_means, dtype=np.float64)
        self.precision = None if precision is None else np.asarray(precision, dtype=np.float64)
        self.threshold = None if threshold is None or not np.isfinite(threshold) else float(threshold)
        self.model_version = model_version
        self.meta = dict(meta or {})

    @property
    def uses_features(self) -> bool:
        return self.class_means is not None and self.precision is not None and self.threshold is not None

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each embedding to the nearest class mean; NaN without fitted statistics."""
        embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        if self.class_means is None or self.precision is None:
            return np.full(len(embeddings), np.nan)
        distances = []
        for mean in self.class_means:
            centred = embeddings - mean
            distances.append(np.einsum("nd,de,ne->n", centred, self.precision, centred))
        return np.sqrt(np.maximum(np.min(distances, axis=0), 0.0))

    def judge(self, features: np.ndarray, embeddings: np.ndarray | None = None) -> list[Verdict]:
        """One verdict per row of features (N, len(FEATURES)) and embeddings (N, D)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        distances = (self.distance(embeddings) if embeddings is not None and self.uses_features
                     else np.full(len(features), np.nan))
        verdicts = []
        for row, distance in zip(features, distances):
            verdict = Verdict(details={"distance": None if np.isnan(distance) else round(float(distance), 3)})
            for reason, name, side in RULES:
                index = FEATURES.index(name)
                bound = (self.lower if side == "low" else self.upper)[index]
                if np.isnan(bound):
                    continue
                if (side == "low" and row[index] < bound) or (side == "high" and row[index] > bound):
                    verdict.reason = reason
                    verdict.details.update(statistic=name, value=round(float(row[index]), 4),
                                           bound=round(float(bound), 4), side=side)
                    break
            if verdict.ok and self.uses_features and distance > self.threshold:
                verdict.reason = UNFAMILIAR
                verdict.details.update(threshold=round(self.threshold, 3))
            verdicts.append(verdict)
        return verdicts

    # -------------------------------------------------------------- storage

    def save(self, folder) -> Path:
        from safetensors.numpy import save_file

        tensors = {"lower": self.lower, "upper": self.upper}
        if self.uses_features:
            tensors.update(class_means=self.class_means, precision=self.precision,
                           threshold=np.array([self.threshold], dtype=np.float64))
        metadata = {"format": FORMAT_VERSION, "features": json.dumps(FEATURES),
                    "model_version": self.model_version or "", "meta": json.dumps(self.meta)}
        path = Path(folder) / STATS_FILE
        save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, folder, model_version: str | None = None) -> "InputCheck | None":
        """The check stored in `folder`, or None when it has none.

        With `model_version` (the weights' hash) given and different from the one
        it was fitted for, only the image statistics are kept.
        """
        from safetensors import safe_open

        path = Path(folder) / STATS_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        if json.loads(metadata.get("features", "[]")) != list(FEATURES) or metadata.get("format") != FORMAT_VERSION:
            logger.warning("%s was written by another version of the input check; it is not used. Refit it with "
                           "`python fit_input_check.py fit --model %s --data-dir DATA`.", path, folder)
            return None
        fitted_for = metadata.get("model_version") or None
        check = cls(tensors["lower"], tensors["upper"], tensors.get("class_means"), tensors.get("precision"),
                    float(tensors["threshold"][0]) if "threshold" in tensors else None,
                    model_version=fitted_for, meta=json.loads(metadata.get("meta", "{}")))
        if model_version and fitted_for and fitted_for != model_version:
            logger.warning("%s was fitted for weights %s, not for these (%s): the feature-space check is off and "
                           "only the image statistics are used until `python fit_input_check.py fit "
                           "--model %s --data-dir DATA` is run.", path, fitted_for, model_version, folder)
            check.class_means = check.precision = check.threshold = None
        return check


# ---------------------------------------------------------------- fitting


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
    """Per statistic, the lower and upper bounds that each leave out a fraction alpha of the training pictures."""
    lower = np.full(len(FEATURES), np.nan)
    upper = np.full(len(FEATURES), np.nan)
    for _, name, side in RULES:
        index = FEATURES.index(name)
        target = lower if side == "low" else upper
        target[index] = _order_statistic(train_features[:, index], alpha, side)
    return lower, upper


def fit_feature_space(train_embeddings: np.ndarray, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision (inverse) of the shared within-class covariance, Ledoit-Wolf shrunk."""
    from sklearn.covariance import LedoitWolf

    embeddings = np.asarray(train_embeddings, dtype=np.float64)
    labels = np.asarray(train_labels)
    classes = sorted(set(labels.tolist()))
    means = np.stack([embeddings[labels == label].mean(axis=0) for label in classes])
    centred = embeddings - means[np.searchsorted(classes, labels)]
    # Shrinkage: a 192-dimensional covariance from a few thousand, correlated embeddings is
    # ill-conditioned, and its smallest directions would dominate an unshrunk distance.
    covariance = LedoitWolf(assume_centered=True).fit(centred)
    return means, covariance.precision_


def choose_threshold(distances: np.ndarray, stats_ok: np.ndarray, target_acceptance: float) -> float | None:
    """The distance above which pictures are refused, so that target_acceptance of validation stays accepted.

    The statistics spend part of the refusal budget first; the distance gets
    what is left, and at least refuses what lies beyond every validation
    picture. None when the validation split is too small to promise the target.
    """
    n = len(distances)
    if n == 0 or n < int(np.ceil(1 / max(1 - target_acceptance, 1e-9))) or not stats_ok.any():
        return None
    remaining = np.sort(distances[stats_ok])[::-1]
    extra = int(np.floor((1 - target_acceptance) * n)) - int((~stats_ok).sum())
    return float(remaining[min(max(extra, 0), len(remaining) - 1)])


def fit(train: dict, validation: dict, model_version: str | None = None, alpha: float = 0.002,
        target_acceptance: float = 0.99) -> tuple[InputCheck, dict]:
    """Fit the check from measurements of the training and validation splits.

    train, validation: {"features": (N, F), "embeddings": (N, D), "labels": (N,)}.
    alpha: the share of training pictures each statistic's bound may leave out.
    The distance threshold then refuses validation pictures until, with the
    statistics, target_acceptance of them is still accepted.
    """
    lower, upper = fit_bounds(np.asarray(train["features"]), alpha)
    check = InputCheck(lower, upper, model_version=model_version)
    stats_verdicts = check.judge(validation["features"])
    stats_ok = np.array([verdict.ok for verdict in stats_verdicts])
    if len(train["embeddings"]) and len(set(np.asarray(train["labels"]).tolist())) == 2:
        check.class_means, check.precision = fit_feature_space(train["embeddings"], train["labels"])
        check.threshold = choose_threshold(check.distance(validation["embeddings"]), stats_ok, target_acceptance)
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
        "model_version": model_version,
    }
    check.meta = {key: report[key] for key in ("alpha", "target_acceptance", "n_train", "n_validation",
                                               "validation_acceptance")}
    return check, report


def measure(model, sources, batch_size: int = 64, desc: str = "measuring", progress: bool = True) -> dict:
    """Statistics, embeddings and P(malignant) of each picture, through the model's own decoding.

    sources: paths or images. Pictures that cannot be decoded are skipped and counted.
    """
    from tqdm import tqdm

    from .images import ImageLoadError

    features, embeddings, probabilities, kept = [], [], [], []
    sources = list(sources)
    with tqdm(total=len(sources), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(sources), batch_size):
            images, positions = [], []
            for position, source in enumerate(sources[start:start + batch_size], start):
                try:
                    images.append(source if isinstance(source, Image.Image) else model.decode(source))
                    positions.append(position)
                except ImageLoadError:
                    continue
            if images:
                batch = model.measure_decoded(images)
                features.append(batch["features"])
                embeddings.append(batch["embeddings"])
                probabilities.append(batch["probabilities"])
                kept += positions
            bar.update(min(batch_size, len(sources) - start))
    width = len(FEATURES)
    return {
        "features": np.concatenate(features) if features else np.empty((0, width)),
        "embeddings": np.concatenate(embeddings) if embeddings else np.empty((0, 0)),
        "probabilities": np.concatenate(probabilities) if probabilities else np.empty(0),
        "kept": np.asarray(kept, dtype=int),
        "skipped": len(sources) - len(kept),
    }


def fit_screening_model(screening_model, train_records, validation_records, output_dir=None, alpha: float = 0.002,
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
            from .model_card import AT_END, upsert_card_section

            upsert_card_section(card_path, CARD_SECTION, card_markdown(report), heading=CARD_HEADING, add_at=AT_END)
        logger.info("input check fitted on %d training and %d validation pictures: %.1f%% of validation accepted; "
                    "saved to %s", report["n_train"], report["n_validation"],
                    100 * (report["validation_acceptance"] or 0), Path(output_dir) / STATS_FILE)
    return report


CARD_SECTION, CARD_HEADING = "input_check", "## Input check"
MISSES = ("It misses colour photographs whose colours and texture resemble skin (cats, a portrait, a cup of "
          "coffee, a stained tissue slide, a retina in the generated set), some blurred or over-exposed pale "
          "lesions, and anything that looks like dermoscopy without being a melanocytic lesion (other skin "
          "conditions, scars, tattoos): it judges whether a picture is like the training images, not what it "
          "shows. It also refuses many pictures the model still handles: a 2 px blur or a quarter of the "
          "resolution (about 58% refused on the test split), and +-35% exposure (24-35%).")


def card_markdown(report: dict, benchmark: dict | None = None) -> str:
    """The model card's input-check section: what was fitted, and the benchmark's rates when given."""
    refusals = ", ".join(f"{reason} {count}" for reason, count in report["validation_refusals"].items()) or "none"
    lines = [
        f"Pictures are refused, with a sentence saying why, when they are too dark, too bright, blurred, show no "
        f"lesion, do not look like skin, or lie too far from the training images in the model's feature space "
        f"(`{STATS_FILE}`, fitted on {report['n_train']} training and {report['n_validation']} validation images: "
        f"each image statistic's bounds leave out {100 * report['alpha']:g}% of the training images, and the "
        f"distance threshold, {report['distance_threshold'] if report['distance_threshold'] is None else round(report['distance_threshold'], 2)}, "
        f"was chosen so that {100 * report['target_acceptance']:g}% of validation is accepted).",
        "",
        f"Validation images accepted: {100 * (report['validation_acceptance'] or 0):.1f}% (refused: {refusals}).",
    ]
    if benchmark:
        lines += ["", "| set | images | accepted | refused |", "|---|---:|---:|---:|"]
        for name, row in benchmark["sets"].items():
            lines.append(f"| {name} | {row['n']} | {100 * row['accepted']:.1f}% | {100 * (1 - row['accepted']):.1f}% |")
        if benchmark.get("command"):
            lines += ["", f"Measured with `{benchmark['command']}`."]
    lines += ["", MISSES]
    return "\n".join(lines)


def refusal_report(reasons, labels, probabilities, threshold: float) -> dict:
    """How many pictures were refused and why, and the model's figures on the accepted and the refused ones.

    reasons: one refusal reason or None per picture. The refused pictures' scores
    are never shown to anyone; they say whether the refusals fall where the
    model errs (a higher ROC AUC on the accepted pictures than on the refused).
    """
    from . import metrics

    reasons = list(reasons)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    accepted = np.array([reason is None for reason in reasons], dtype=bool)

    def figures(mask):
        if not mask.any():
            return None
        m = metrics.binary_metrics(labels[mask], probabilities[mask], threshold)
        return {key: m[key] for key in ("n", "n_malignant", "roc_auc", "sensitivity", "specificity", "accuracy")}

    return {
        "n": len(reasons),
        "accepted": float(accepted.mean()) if reasons else None,
        "refused": int((~accepted).sum()),
        "reasons": {reason: reasons.count(reason) for reason in REASONS if reason in reasons},
        "accepted_pictures": figures(accepted),
        "refused_pictures": figures(~accepted),
    }


if __name__ == "__main__":
    sys.exit("The input check's command line moved: python fit_input_check.py fit --model MODEL "
             "(or check --model MODEL PICTURES).")
