"""The input check: refuse a picture the model cannot judge, before any risk level is given.

A classifier trained on dermoscopy answers every picture, and a "low" on a photo
with no lesion in it is false reassurance. Two kinds of evidence decide:

* image statistics, computed on the picture as the model is given it:
  exposure, sharpness and motion smear, how much structure there is, its colours,
  surfaces without grain and patterns that repeat one period. They catch
  far too dark or bright pictures, heavy blur, empty frames and plain skin,
  pictures without colour (a lesion saved in grayscale: its own reason, since
  the model judges colour), and pictures whose colours no dermoscopic image has
  (grey pages, screenshots, scenery, noise);
* two statistics in the model's own feature space, the patch tokens after its
  middle encoder layer (onnx_engine.logits_and_patch_tokens says why not the
  CLS token), taken from the same forward pass as the scores:
  - the Mahalanobis distance of their mean to the nearest class mean (one
    shared, shrunk covariance, Lee et al. 2018): pictures that look ordinary to
    the image statistics but like nothing the model was trained on;
  - their spread: how far the patches lie from their own mean (InputCheck.spread).
    A photograph of a person, a room or an animal holds many different things,
    whose average lands among the lesions' averages, which is why a portrait
    passed the distance alone; its patches spread far more than a lesion's.

Every threshold is fitted on data, never typed in here (the one exception is the
ceiling of the "no colour" bound, GREY_CHROMA, a definition of grey): each
statistic's bounds are extreme quantiles of the training split, and the distance
and spread thresholds are the ones that keep `target_acceptance` of the
validation split when combined with them. They are stored in the model folder (input_check.safetensors, plus a
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

from .images import LUMA_WEIGHTS, decode_batches
from .images import luminance as image_luminance
from .messages import render

logger = logging.getLogger(__name__)

STATS_FILE = "input_check.safetensors"
REPORT_FILE = "input_check.json"
FORMAT_VERSION = "4"

# The statistics are computed on the picture exactly as the model is given it
# (resized to its input, after any colour step of its preprocessing), a whole
# batch at once: the model judges those pixels, and they are already in memory.
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
    "colour_range",      # 99th percentile of chroma: no pixel has any colour (a grayscale picture) when low,
                         # pure colours no skin has (paint, clipped channels) when high
    "smear",             # log(sharpest / blurriest direction) of fine detail: motion blur when high
    "cool_share",        # share of pixels greener or bluer than red: sky, grass, denim when high
    "flatness",          # share of the 4x4 cells without any detail: drawn or plastic surfaces when high
    "periodicity",       # the strongest peak of the spectrum over its frequency's mean: woven cloth, screens when high
)

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
# Flatness and periodicity name what no skin shows at the model's scale: surfaces without any
# grain (a finger's nail, plastic held close) and one period repeated (woven cloth, screens).
RULES = (
    ("too_dark", "highlights", "low"),
    ("too_bright", "brightness", "high"),
    ("no_lesion", "structure", "low"),
    ("blurred", "edge_peak", "low"),
    ("blurred", "smear", "high"),
    ("not_skin", "edge_mean", "high"),
    ("not_skin", "cool_share", "high"),
    ("not_skin", "flatness", "high"),
    ("not_skin", "periodicity", "high"),
    ("no_colour", "colour_range", "low"),
    ("not_skin", "colourfulness", "low"),
    ("too_bright", "colour_range", "high"),
)
UNFAMILIAR = "unfamiliar"

# The "no colour" bound never lies above this 99th percentile of chroma (about 10 of 255
# levels between channels): below it the most colourful pixels of the centre are grey, as in a
# grayscale picture saved as RGB, give or take JPEG's rounding.
GREY_CHROMA = 0.04

# A pixel counts as cool when its green or blue channel exceeds its red by more than this (about
# 8 of 255 levels, past JPEG's rounding): skin, blood and melanin are red-dominant, so a lesion and
# its skin have few; sky, grass, denim and most rooms have many. A definition, like GREY_CHROMA;
# the bound on their share is fitted.
COOL_MARGIN = 0.03

# A 4x4 cell of the model's picture counts as flat when its luminance varies by less than this (about
# one level of 255): skin through a dermatoscope always has pores, hairs or grain at that scale, while
# a finger's nail, a painted wall or a plastic surface held close do not. A definition; the bound on the
# share of flat cells is fitted.
FLAT_CELL = 0.004
FLAT_SIDE = 4

# The spectrum's peak is compared with the mean power at its own frequency: a woven or knitted cloth,
# a screen or printed text repeats one period, while skin and lesions, however textured, spread their
# power over every direction of a frequency. Measured on the central PERIODIC_SIDE pixels (the whole
# lesion, without a ruler at the edge), at frequencies of at least MIN_PERIOD_FREQUENCY cycles across
# it: slower changes are the lesion's own shape and the lighting.
PERIODIC_SIDE = 96
MIN_PERIOD_FREQUENCY = 4

# Every refusal code, in the order reports list them; melanoma_screen.messages holds their sentences.
REASONS = ("too_dark", "too_bright", "blurred", "no_lesion", "no_colour", "not_skin", UNFAMILIAR)


# ---------------------------------------------------------------- statistics


def _frequency_rings(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a side x side spectrum: its indices sorted by frequency, where each frequency's ring starts, its window."""
    frequency_y, frequency_x = np.meshgrid(np.fft.fftfreq(side) * side, np.fft.fftfreq(side) * side, indexing="ij")
    radius = np.hypot(frequency_y, frequency_x).round().astype(int).ravel()
    kept = np.flatnonzero((radius >= MIN_PERIOD_FREQUENCY) & (radius < side // 2))
    order = kept[np.argsort(radius[kept], kind="stable")]
    starts = np.flatnonzero(np.diff(radius[order], prepend=-1))
    window = np.outer(np.hanning(side), np.hanning(side)).astype(np.float32)
    return order, starts, window


_RINGS = _frequency_rings(PERIODIC_SIDE)


def _periodicity(luminance: np.ndarray) -> np.ndarray:
    """log(the spectrum's strongest peak / the mean power of its frequency), over the central PERIODIC_SIDE pixels."""
    count, height, width = luminance.shape
    side = min(PERIODIC_SIDE, height, width)
    order, starts, window = _RINGS if side == PERIODIC_SIDE else _frequency_rings(side)
    top, left = (height - side) // 2, (width - side) // 2
    centre = luminance[:, top:top + side, left:left + side]
    centre = (centre - centre.mean(axis=(1, 2), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(centre)) ** 2).reshape(count, -1)[:, order]
    sizes = np.diff(np.append(starts, power.shape[1]))
    peaks = np.maximum.reduceat(power, starts, axis=1)
    means = np.add.reduceat(power, starts, axis=1) / sizes
    return np.log((peaks / (means + 1e-12)).max(axis=1) + 1e-12)


# Luminance, red-green, yellow-blue.
OPPONENT = np.stack([LUMA_WEIGHTS, [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]]).astype(np.float32)


def _block_means(values: np.ndarray, blocks: int) -> np.ndarray:
    """(N, H, W, C) -> (N, blocks, blocks, C): the mean of each cell of a blocks x blocks grid."""
    rows = np.linspace(0, values.shape[1], blocks + 1).astype(int)
    cols = np.linspace(0, values.shape[2], blocks + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(values, rows[:-1], axis=1), cols[:-1], axis=2)
    areas = np.diff(rows)[:, None] * np.diff(cols)[None, :]
    return sums / areas[None, :, :, None]


def batch_features(pixels: np.ndarray) -> np.ndarray:
    """The statistics of FEATURES for a batch of RGB pictures, (N, H, W, 3) uint8 -> (N, len(FEATURES)) float64.

    One set of array operations for the whole batch: no Python loop over images.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    rgb = pixels.astype(np.float32)
    rgb *= np.float32(1 / 255)
    count, height, width, _ = rgb.shape
    top, left = int(round(height * (1 - CENTRE) / 2)), int(round(width * (1 - CENTRE) / 2))
    full = image_luminance(rgb)
    centre_luminance = full[:, top:height - top, left:width - left]
    # Quantiles over every other pixel: the same figures to a few thousandths, in a quarter of the time.
    sparse = rgb[:, top:height - top:2, left:width - left:2]
    luminance = centre_luminance[:, ::2, ::2].reshape(count, -1)
    red, green, blue = sparse[..., 0], sparse[..., 1], sparse[..., 2]
    chroma = np.hypot(red - green, (red + green) / 2 - blue).reshape(count, -1)

    laplacian = np.abs(4 * full[:, 1:-1, 1:-1] - full[:, :-2, 1:-1] - full[:, 2:, 1:-1]
                       - full[:, 1:-1, :-2] - full[:, 1:-1, 2:])
    laplacian = laplacian[:, top - 1:height - top - 1, left - 1:width - left - 1]
    # Divided by the contrast, so a low-contrast lesion is not taken for a blurred one;
    # the constant keeps a flat picture's sensor noise from looking like sharp detail.
    contrast = centre_luminance.reshape(count, -1).std(axis=1) + 0.02

    coarse = _block_means(rgb[:, top:height - top, left:width - left], COARSE_SIDE) @ OPPONENT.T
    low, high = np.percentile(coarse.reshape(count, -1, 3), [5, 95], axis=1)
    structure = np.linalg.norm(high - low, axis=-1)

    # Motion blur smears detail along one direction only, so edge_peak (the sharpest edges in any
    # direction) misses it: compare the detail along the four directions instead, on 2x2 block
    # means, where sensor noise and JPEG blocks no longer add detail in every direction (at full
    # resolution the statistic caught 3 of 20 motion-blurred lesions the others missed, here 7).
    half = full[:, :height // 2 * 2, :width // 2 * 2].reshape(count, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
    centre = half[:, 1:-1, 1:-1]
    detail = np.stack([np.abs(half[:, 1:-1, 2:] + half[:, 1:-1, :-2] - 2 * centre).mean(axis=(1, 2)),
                       np.abs(half[:, 2:, 1:-1] + half[:, :-2, 1:-1] - 2 * centre).mean(axis=(1, 2)),
                       np.abs(half[:, 2:, 2:] + half[:, :-2, :-2] - 2 * centre).mean(axis=(1, 2)),
                       np.abs(half[:, 2:, :-2] + half[:, :-2, 2:] - 2 * centre).mean(axis=(1, 2))], axis=1)
    smear = np.log((detail.max(axis=1) + 1e-4) / (detail.min(axis=1) + 1e-4))
    # On the whole frame: the sky of an outdoor scene is at its top, outside the centre.
    cool = (np.maximum(rgb[..., 1], rgb[..., 2]) - rgb[..., 0] > COOL_MARGIN).mean(axis=(1, 2))

    # Flat cells of the whole frame, on whole FLAT_SIDE cells only (measured on the centre alone, the
    # share caught one drawn finger instead of five, and refused two test lesions).
    rows, cols = height // FLAT_SIDE * FLAT_SIDE, width // FLAT_SIDE * FLAT_SIDE
    cells = full[:, :rows, :cols].reshape(count, rows // FLAT_SIDE, FLAT_SIDE, cols // FLAT_SIDE, FLAT_SIDE)
    flatness = (cells.std(axis=(2, 4)) < FLAT_CELL).mean(axis=(1, 2))

    luminance_median, luminance_high = np.percentile(luminance, [50, 90], axis=1)
    chroma_median, chroma_high = np.percentile(chroma, [50, 99], axis=1)
    return np.stack([
        luminance_median,
        luminance_high,
        np.percentile(laplacian[:, ::2, ::2].reshape(count, -1), 99, axis=1) / contrast,
        laplacian.reshape(count, -1).mean(axis=1) / contrast,
        structure,
        chroma_median,
        chroma_high,
        smear,
        cool,
        flatness,
        _periodicity(full),
    ], axis=1).astype(np.float64)


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
        if json.loads(metadata.get("features", "[]")) != list(FEATURES) or metadata.get("format") != FORMAT_VERSION:
            logger.warning("%s was written by another version of the input check; it is not used. Refit it with "
                           "`python fit_input_check.py fit --model %s --data-dir DATA`.", path, folder)
            return None
        fitted_for = metadata.get("model_version") or None
        check = cls(tensors["lower"], tensors["upper"], tensors.get("class_means"), tensors.get("precision"),
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


# ---------------------------------------------------------------- fitting


# Seven bounds at 0.2% each spent the whole 1% refusal budget of a 99% validation acceptance on
# the statistics (13 of 1123 validation pictures), leaving none for the feature space, which alone
# catches photographs of people and things; at 0.1% each they leave it about a third.
DEFAULT_ALPHA = 0.001


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
    pictures is not told that it has no colour.
    """
    lower = np.full(len(FEATURES), np.nan)
    upper = np.full(len(FEATURES), np.nan)
    for _, name, side in RULES:
        index = FEATURES.index(name)
        target = lower if side == "low" else upper
        target[index] = _order_statistic(train_features[:, index], alpha, side)
    colour_range = FEATURES.index("colour_range")
    lower[colour_range] = np.minimum(lower[colour_range], GREY_CHROMA)  # NaN (too few pictures) stays no bound
    return lower, upper


def fit_feature_space(train_embeddings: np.ndarray, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision (inverse) of the shared within-class covariance, Ledoit-Wolf shrunk.

    train_embeddings: (N, D), or (N, P, D) patch tokens whose mean over P is the embedding.
    """
    from sklearn.covariance import LedoitWolf

    embeddings = np.asarray(train_embeddings)
    if embeddings.ndim == 3:
        embeddings = embeddings.mean(axis=1, dtype=np.float32)
    embeddings = embeddings.astype(np.float64)
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


def fit(train: dict, validation: dict, model_version: str | None = None, alpha: float = DEFAULT_ALPHA,
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
        distances = check.distance(validation["embeddings"])
        if np.ndim(train["embeddings"]) == 3:
            check.spread_precision = fit_spread(train["embeddings"])
            check.threshold, check.spread_threshold = choose_thresholds(
                distances, check.spread(validation["embeddings"]), stats_ok, target_acceptance)
        else:
            check.threshold = choose_threshold(distances, stats_ok, target_acceptance)
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


def measure(model, sources, batch_size: int = 64, desc: str = "measuring", progress: bool = True) -> dict:
    """Statistics, embeddings and P(malignant) of each picture, through the model's own decoding.

    sources: paths or images. Pictures that cannot be decoded are skipped and counted.
    """
    from tqdm import tqdm

    features, embeddings, probabilities, kept = [], [], [], []
    sources = list(sources)
    with tqdm(total=len(sources), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in decode_batches(sources, batch_size, model.decode_each):
            if batch.images:
                measured = model.measure_decoded(batch.images)
                features.append(measured["features"])
                embeddings.append(measured["embeddings"])
                probabilities.append(measured["probabilities"])
                kept += batch.positions
            bar.update(len(batch.sources))
    width = len(FEATURES)
    return {
        "features": np.concatenate(features) if features else np.empty((0, width)),
        "embeddings": np.concatenate(embeddings) if embeddings else np.empty((0, 0)),
        "probabilities": np.concatenate(probabilities) if probabilities else np.empty(0),
        "kept": np.asarray(kept, dtype=int),
        "skipped": len(sources) - len(kept),
    }


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
            from .model_card import AT_END, upsert_card_section

            upsert_card_section(card_path, CARD_SECTION, card_markdown(report), heading=CARD_HEADING, add_at=AT_END)
        logger.info("input check fitted on %d training and %d validation pictures: %.1f%% of validation accepted; "
                    "saved to %s", report["n_train"], report["n_validation"],
                    100 * (report["validation_acceptance"] or 0), Path(output_dir) / STATS_FILE)
    return report


CARD_SECTION, CARD_HEADING = "input_check", "## Input check"
MISSES = ("It misses colour photographs whose colours and texture resemble skin: in the generated set, every "
          "animal (fur: cats, cheetahs, a lion), a close-up of a face, a toy figure, a building, a stained tissue "
          "slide and a retina, one plain-skin frame and one picture of smoothed noise; of what a live camera shows "
          "between good frames, 19 of the 20 lesions half out of the frame (real dermoscopy has lesions cut by the "
          "frame too: a rule on where the lesion lies that refuses 5 to 12 of the 20 also refuses 3 to 9% of the "
          "10k set's test pictures, benchmarks/input_check_framing.py) and 6 of the 20 motion-blurred lesions (small lesions on smooth skin, which a "
          "smear hardly changes); and anything that looks "
          "like dermoscopy without being a melanocytic lesion (other skin conditions, scars, tattoos): it judges "
          "whether a picture is like the training images, not what it shows. Photographs of whole people and rooms "
          "are refused by the spread of their patch tokens, black-and-white pictures as having no colour, drawn "
          "fingers by their flat surfaces and cloth by its repeated weave. It also "
          "refuses some pictures the model still handles: heavy blur or a quarter of the resolution, and large "
          "exposure changes.")


def _rounded(value):
    return None if value is None else round(value, 2)


def card_markdown(report: dict, benchmark: dict | None = None) -> str:
    """The model card's input-check section: what was fitted, and the benchmark's rates when given."""
    refusals = ", ".join(f"{reason} {count}" for reason, count in report["validation_refusals"].items()) or "none"
    lines = [
        f"Pictures are refused, with a sentence saying why, when they are too dark, too bright, blurred, show no "
        f"lesion, have no colour, do not look like skin, or lie too far from the training images in the model's "
        f"feature space, by the distance of their mean patch token or by how far their patch tokens spread "
        f"(`{STATS_FILE}`, fitted on {report['n_train']} training and {report['n_validation']} validation images: "
        f"each image statistic's bounds leave out {100 * report['alpha']:g}% of the training images, and the "
        f"distance threshold, {_rounded(report.get('distance_threshold'))}, and spread threshold, "
        f"{_rounded(report.get('spread_threshold'))}, were chosen so that {100 * report['target_acceptance']:g}% "
        f"of validation is accepted).",
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
