"""The input check: refuse a picture the model cannot judge, before any risk level is given.

A classifier trained on dermoscopy answers every picture, and a "low" on a photo
with no lesion in it is false reassurance. Two kinds of evidence decide:

* the picture statistics of melanoma_screen.picture_statistics, computed on the
  picture as the model is given it, each held between fitted bounds (RULES),
  or a bound that is a definition (FIXED_BOUNDS: a face);
* two statistics in the model's own feature space, the patch tokens after its
  middle encoder layer (architectures.logits_and_patch_tokens says why not the
  CLS token), taken from the same forward pass as the scores:
  - the Mahalanobis distance of their mean to the nearest class mean (one
    shared, shrunk covariance, Lee et al. 2018): pictures that look ordinary to
    the image statistics but like nothing the model was trained on;
  - their spread: how far the patches lie from their own mean (InputCheck.spread).
    A photograph of a person, a room or an animal holds many different things,
    whose average lands among the lesions' averages, which is why a portrait
    passed the distance alone; its patches spread far more than a lesion's.

The bounds and thresholds are fitted on data (melanoma_screen.input_check_fitting) and
stored in the model folder (input_check.safetensors, plus a readable input_check.json).
The distance part belongs to one set of weights: the file records the weights'
hash, and after the model is replaced it is switched off (with a warning) until
`python fit_input_check.py fit` is run again; the image statistics keep working meanwhile.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .messages import render
from .picture_statistics import FEATURES

logger = logging.getLogger(__name__)

STATS_FILE = "input_check.safetensors"
REPORT_FILE = "input_check.json"
FORMAT_VERSION = "5"

# (reason, feature, side), in the order they are tried: the first that trips
# names the reason. Exposure comes first; an empty frame is named before blur,
# since a blank wall has no edges either but "no lesion" is what is wrong with it.
# Fine texture everywhere (text, noise) is "not skin" whatever its colours; then a
# picture in which not even the most colourful pixels have colour is named for
# that, since a lesion saved in grayscale is skin, only without the colour the
# model needs; a picture with a little colour but less than any dermoscopy is "not skin".
# Colours no skin has: an upper bound on the most colourful pixels (colour_range) catches a lesion
# burnt out until its channels clip into pure colours (and a motorcycle's paint), at the cost of one
# derm7pt picture. In a picture of skin, pure colours come from too much light, so the sentence is
# "too bright": its advice (less light, no flash) is what a camera held over a lesion needs. Tried
# last, so that it names only what nothing else refuses: a page of text or a colour wheel keeps the
# reason it had. Bounds on redness and yellowness and an upper bound on the median chroma were
# tried and dropped: on the generated set they refused nothing that these and the distance did not
# (the median's bound took validation pictures from the distance's budget, which then let a
# portrait and a drawn finger through), and they refused real dermoscopy from other clinics.
# A straight camera shake over a faint lesion leaves too little detail to smear, but its streak
# (picture_statistics.STREAK_QUEFRENCIES) is there whatever the picture holds: "blurred" as well.
# Flatness and periodicity name what no skin shows at the model's scale: surfaces without any
# grain (a finger's nail, plastic held close) and one period repeated (woven cloth, screens).
# A face is tried first: whatever else is wrong with a photograph of a person, the advice that
# fits it (more light, hold still) would only have the user improve a photograph of themselves.
RULES = (
    ("not_skin", "face", "high"),
    ("too_dark", "highlights", "low"),
    ("too_bright", "brightness", "high"),
    ("no_lesion", "structure", "low"),
    ("blurred", "edge_peak", "low"),
    ("blurred", "smear", "high"),
    ("blurred", "streak", "high"),
    ("not_skin", "edge_mean", "high"),
    ("not_skin", "cool_share", "high"),
    ("not_skin", "flatness", "high"),
    ("not_skin", "periodicity", "high"),
    ("no_colour", "colour_range", "low"),
    ("not_skin", "colourfulness", "low"),
    ("too_bright", "colour_range", "high"),
)
UNFAMILIAR = "unfamiliar"

# Bounds that are definitions, not fitted: (feature, side) -> bound. The fitting writes them as they are
# (a quantile of training pictures would let through whatever faces the detector found in lesions), and
# `load` sets them in any stored check, so one fitted before the statistic existed refuses faces too. Any
# face the detector looks for (picture_statistics.FACE_SHARE of the short side or more) refuses.
FIXED_BOUNDS = {("face", "high"): 0.0}


def with_fixed_bounds(lower: np.ndarray, upper: np.ndarray,
                      switched_off: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the lower and upper bounds, (len(FEATURES),) each, with FIXED_BOUNDS in place (or none there)."""
    lower, upper = np.array(lower, dtype=np.float64), np.array(upper, dtype=np.float64)
    for (name, side), bound in FIXED_BOUNDS.items():
        (lower if side == "low" else upper)[FEATURES.index(name)] = np.nan if switched_off else bound
    return lower, upper

# Every refusal code, in the order reports list them; melanoma_screen.messages holds their sentences.
REASONS = ("too_dark", "too_bright", "blurred", "no_lesion", "no_colour", "not_skin", UNFAMILIAR)


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


_BLAS_LIMITED = False


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left @ right on the calling thread alone (one per analysis in the app).

    numpy's BLAS starts its own thread per core for each product: beside the app's
    concurrent analyses, or another job, they wait on each other (the same trap as
    PyTorch's threads in benchmarks/README.md), and the batch's spread cost more
    than its forward pass. So the first product limits BLAS to one thread for the
    process (threadpoolctl), which is what the callers of the check want anyway;
    PyTorch did this before, at the price of importing it (seconds of every cold start).
    """
    global _BLAS_LIMITED
    if not _BLAS_LIMITED:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        _BLAS_LIMITED = True
    return np.ascontiguousarray(left) @ np.ascontiguousarray(right)


def _whitening(check, name: str) -> np.ndarray:
    """W with W W^T = the precision check.<name>, computed once per precision matrix.

    A Mahalanobis distance is then a Euclidean one after one matrix product for the
    whole batch. From the eigenvectors rather than Cholesky: a shrunk precision can be
    positive definite only to rounding.
    """
    precision = getattr(check, name)
    cache = check.__dict__.setdefault("_whitenings", {})
    if name not in cache or cache[name][0] is not precision:
        values, vectors = np.linalg.eigh((precision + precision.T) / 2)
        cache[name] = (precision, vectors * np.sqrt(np.maximum(values, 0.0)))
    return cache[name][1]


class InputCheck:
    """Fitted bounds and feature-space statistics; `judge` turns measurements into verdicts."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, class_means: np.ndarray | None = None,
                 precision: np.ndarray | None = None, threshold: float | None = None,
                 model_version: str | None = None, meta: dict | None = None,
                 spread_precision: np.ndarray | None = None, spread_threshold: float | None = None):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.class_means = None if class_means is None else np.asarray(class_means, dtype=np.float64)
        self.precision = None if precision is None else np.asarray(precision, dtype=np.float64)
        self.threshold = None if threshold is None or not np.isfinite(threshold) else float(threshold)
        self.spread_precision = None if spread_precision is None else np.asarray(spread_precision, dtype=np.float64)
        self.spread_threshold = (None if spread_threshold is None or not np.isfinite(spread_threshold)
                                 else float(spread_threshold))
        self.model_version = model_version
        self.meta = dict(meta or {})

    @property
    def uses_features(self) -> bool:
        return self.class_means is not None and self.precision is not None and self.threshold is not None

    @property
    def uses_spread(self) -> bool:
        return self.uses_features and self.spread_precision is not None and self.spread_threshold is not None

    def spread(self, tokens: np.ndarray) -> np.ndarray:
        """How far a picture's patch tokens lie from their own mean: the median patch's Mahalanobis distance.

        tokens: (N, P, D). The mean token of a photograph of a person or a room is
        an average of face, hair, clothes and background, and averaging pulls it
        towards the middle of the training pictures, where the distance cannot
        tell it from a lesion; its patches, though, differ from each other far more
        than a lesion's and its skin do. NaN without fitted statistics.
        """
        tokens = np.asarray(tokens)
        if self.spread_precision is None or tokens.ndim != 3:
            return np.full(len(tokens), np.nan)
        whitening = _whitening(self, "spread_precision")
        centred = tokens.astype(np.float32) - tokens.mean(axis=1, keepdims=True, dtype=np.float32)
        count, patches, width = centred.shape
        whitened = _matmul(centred.reshape(count * patches, width), whitening.astype(np.float32))
        return np.median(np.sqrt((whitened ** 2).sum(axis=-1)).reshape(count, patches), axis=1).astype(np.float64)

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each embedding to the nearest class mean; NaN without fitted statistics.

        embeddings: (N, D), or (N, P, D) patch tokens, whose mean over P is the embedding.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim == 3:
            embeddings = embeddings.mean(axis=1, dtype=np.float32)
        embeddings = np.atleast_2d(embeddings.astype(np.float64))
        if self.class_means is None or self.precision is None:
            return np.full(len(embeddings), np.nan)
        whitening = _whitening(self, "precision")
        whitened = _matmul(np.concatenate([embeddings, self.class_means]), whitening)
        whitened, means = whitened[:len(embeddings)], whitened[len(embeddings):]
        squared = ((whitened[:, None, :] - means[None]) ** 2).sum(axis=-1)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def judge(self, features: np.ndarray, embeddings: np.ndarray | None = None) -> list[Verdict]:
        """One verdict per row of features (N, len(FEATURES)) and embeddings: (N, D), or (N, P, D) patch tokens.

        The spread of the patch tokens is judged only when they are given.
        """
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        distances = (self.distance(embeddings) if embeddings is not None and self.uses_features
                     else np.full(len(features), np.nan))
        spreads = (self.spread(embeddings) if embeddings is not None and self.uses_spread
                   else np.full(len(features), np.nan))
        verdicts = []
        for row, distance, spread in zip(features, distances, spreads):
            verdict = Verdict(details={"distance": None if np.isnan(distance) else round(float(distance), 3),
                                       "spread": None if np.isnan(spread) else round(float(spread), 3)})
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
                verdict.details.update(statistic="distance", threshold=round(self.threshold, 3))
            elif verdict.ok and self.uses_spread and spread > self.spread_threshold:
                verdict.reason = UNFAMILIAR
                verdict.details.update(statistic="spread", threshold=round(self.spread_threshold, 3))
            verdicts.append(verdict)
        return verdicts

    # -------------------------------------------------------------- storage

    def save(self, folder) -> Path:
        from safetensors.numpy import save_file

        tensors = {"lower": self.lower, "upper": self.upper}
        if self.uses_features:
            tensors.update(class_means=self.class_means, precision=self.precision,
                           threshold=np.array([self.threshold], dtype=np.float64))
        if self.uses_spread:
            tensors.update(spread_precision=self.spread_precision,
                           spread_threshold=np.array([self.spread_threshold], dtype=np.float64))
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
        stored = json.loads(metadata.get("features", "[]"))
        if not set(stored) <= set(FEATURES) or metadata.get("format") != FORMAT_VERSION:
            logger.warning("%s was written by another version of the input check; it is not used. Refit it with "
                           "`python fit_input_check.py fit --model %s --data-dir DATA`.", path, folder)
            return None
        lower, upper = np.full(len(FEATURES), np.nan), np.full(len(FEATURES), np.nan)
        positions = [FEATURES.index(name) for name in stored]
        lower[positions], upper[positions] = tensors["lower"], tensors["upper"]
        missing = [name for name in FEATURES if name not in stored]
        if missing:
            # A check fitted before a statistic was added keeps everything it has (the distance is still right for
            # its weights); the new statistic has no fitted bound, only a fixed one, until it is refitted.
            logger.warning("%s was fitted without the statistics that came later (%s): they have only their fixed "
                           "bounds, if any, until `python fit_input_check.py fit --model %s --data-dir DATA` is run.",
                           path, ", ".join(missing), folder)
        lower, upper = with_fixed_bounds(lower, upper)
        fitted_for = metadata.get("model_version") or None
        check = cls(lower, upper, tensors.get("class_means"), tensors.get("precision"),
                    float(tensors["threshold"][0]) if "threshold" in tensors else None,
                    model_version=fitted_for, meta=json.loads(metadata.get("meta", "{}")),
                    spread_precision=tensors.get("spread_precision"),
                    spread_threshold=float(tensors["spread_threshold"][0]) if "spread_threshold" in tensors else None)
        if model_version and fitted_for and fitted_for != model_version:
            logger.warning("%s was fitted for weights %s, not for these (%s): the feature-space check is off and "
                           "only the image statistics are used until `python fit_input_check.py fit "
                           "--model %s --data-dir DATA` is run.", path, fitted_for, model_version, folder)
            check.class_means = check.precision = check.threshold = None
            check.spread_precision = check.spread_threshold = None
        return check
