"""Acquisition cues that are not properties of a lesion: the dermoscope's field of view.

A contact dermatoscope images through a round lens, so its photos have a black
circular vignette (dark corners). In the 10k Kaggle set that vignette appears
in about a third of the malignant images and almost none of the benign ones,
so a model can score "melanoma" from the corners alone. This module measures
that cue (for the data audit and the probes), draws it (for augmentation and
the vignette probe) and removes it (for the field-of-view probe), with numpy
and PIL only, so training, evaluation and the audit share one definition.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

# Luminance (0-255) under which a corner counts as outside the field of view.
# Vignettes in ISIC images sit at 0-30; the darkest skin in the 10k set's
# corners stays above 60, so 40 separates the two with room on both sides.
DARK_LUMINANCE = 40.0
# A corner patch is this share of the shorter side: big enough to average
# out hair and noise, small enough to stay outside a lesion that fills the frame.
CORNER_FRACTION = 0.08


def _luminance(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def corner_luminances(image: Image.Image) -> np.ndarray:
    """Median luminance (0-255) of the four corner patches: top-left, top-right, bottom-left, bottom-right."""
    lum = _luminance(image)
    height, width = lum.shape
    side = max(1, int(round(min(height, width) * CORNER_FRACTION)))
    patches = (lum[:side, :side], lum[:side, -side:], lum[-side:, :side], lum[-side:, -side:])
    return np.array([float(np.median(patch)) for patch in patches])


def dark_corner_count(image: Image.Image, threshold: float = DARK_LUMINANCE) -> int:
    return int(np.sum(corner_luminances(image) < threshold))


def has_dark_corners(image: Image.Image, threshold: float = DARK_LUMINANCE) -> bool:
    """True for a dermoscope's circular field of view (at least two black corners)."""
    return dark_corner_count(image, threshold) >= 2


def _circle_alpha(width: int, height: int, centre: tuple[float, float], radius: float, softness: float) -> np.ndarray:
    """1 inside the circle, 0 outside, with a linear ramp `softness` pixels wide at the edge."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    distance = np.sqrt((xs + 0.5 - centre[0]) ** 2 + (ys + 0.5 - centre[1]) ** 2)
    return np.clip((radius - distance) / max(softness, 1e-3) + 0.5, 0.0, 1.0)


def add_circular_vignette(image: Image.Image, rng: random.Random, radius_range=(0.45, 0.65),
                          centre_jitter: float = 0.06, softness_range=(0.01, 0.05), darkness=(0, 25)) -> Image.Image:
    """The image seen through a round dermatoscope lens: near-black outside a random circle.

    Radius, centre offset and edge softness are fractions of the shorter side
    (a radius of 0.5 touches the edges; 0.707 would reach the corners), so the
    vignette ranges from black corners only to a black rim all round, as in
    real dermatoscope photos.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    side = min(height, width)
    centre = (width / 2 + rng.uniform(-centre_jitter, centre_jitter) * side,
              height / 2 + rng.uniform(-centre_jitter, centre_jitter) * side)
    alpha = _circle_alpha(width, height, centre, rng.uniform(*radius_range) * side, rng.uniform(*softness_range) * side)
    level = rng.uniform(*darkness)
    out = rgb * alpha[..., None] + level * (1.0 - alpha[..., None])
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def mask_field_of_view(image: Image.Image, radius_fraction: float = 0.5, softness_fraction: float = 0.02) -> Image.Image:
    """Black outside one fixed centred circle, the same for every image.

    Applied identically in training and inference, it gives every image the
    same field of view, so a vignette larger than the circle is no longer
    visible and cannot tell the classes apart.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    side = min(height, width)
    alpha = _circle_alpha(width, height, (width / 2, height / 2), radius_fraction * side, softness_fraction * side)
    return Image.fromarray(np.clip(rgb * alpha[..., None] + 0.5, 0, 255).astype(np.uint8))


def _edge_connected(dark: np.ndarray) -> np.ndarray:
    """Dark pixels reached in a straight line from an image edge through dark pixels only.

    The outside of a circle is reachable that way from the nearest edge, while
    a dark lesion in the middle of the frame is not, so it is never painted over.
    """
    from_left = np.cumprod(dark, axis=1).astype(bool)
    from_right = np.cumprod(dark[:, ::-1], axis=1)[:, ::-1].astype(bool)
    from_top = np.cumprod(dark, axis=0).astype(bool)
    from_bottom = np.cumprod(dark[::-1], axis=0)[::-1].astype(bool)
    return from_left | from_right | from_top | from_bottom


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(steps):
        padded = np.pad(grown, 1)
        grown = grown | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return grown


def fill_dark_border(image: Image.Image, threshold: float = DARK_LUMINANCE) -> Image.Image:
    """The image with its dark field-of-view border painted in the colour of the skin next to it.

    Removes a vignette without cropping, so the lesion keeps its size in the
    frame (cropping would enlarge it, which is a cue of its own). The fill is
    the median colour of the skin just inside the field of view.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    side = min(lum.shape)
    border = _edge_connected(lum < threshold)
    if not border.any() or border.all():
        return image.convert("RGB")
    # The vignette's soft edge is darker than the skin but above the threshold: paint it too.
    painted = _dilate(border, max(1, side // 60))
    ring = _dilate(painted, max(2, side // 20)) & ~painted
    if ring.sum() < 10:
        return image.convert("RGB")
    fill = np.median(rgb[ring], axis=0)
    out = np.where(painted[..., None], fill, rgb)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
