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

from .images import luminance

# Luminance (0-255) under which a corner counts as outside the field of view.
# Vignettes in ISIC images sit at 0-30; the darkest skin in the 10k set's
# corners stays above 60, so 40 separates the two with room on both sides.
DARK_LUMINANCE = 40.0
# A corner patch is this share of the shorter side: big enough to average
# out hair and noise, small enough to stay outside a lesion that fills the frame.
CORNER_FRACTION = 0.08


def corner_luminances(image: Image.Image) -> np.ndarray:
    """Median luminance (0-255) of the four corner patches: top-left, top-right, bottom-left, bottom-right."""
    lum = luminance(image)
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
    # JPEG resizing leaves a bright line one or two pixels wide along some edges,
    # which would hide the whole border behind it: the frame takes the value just inside.
    dark = dark.copy()
    dark[:, :2] |= dark[:, 2:3]
    dark[:, -2:] |= dark[:, -3:-2]
    dark[:2] |= dark[2:3]
    dark[-2:] |= dark[-3:-2]
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


def _ellipse_from_conic(coefficients: np.ndarray) -> np.ndarray:
    """(k, 4) centre x, centre y, semi-axis x, semi-axis y of A x^2 + C y^2 + D x + E y + F = 0; NaN if not an ellipse."""
    a, c, d, e, f = coefficients.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x0, y0 = -d / (2 * a), -e / (2 * c)
        g = a * x0**2 + c * y0**2 - f
        result = np.stack([x0, y0, np.sqrt(g / a), np.sqrt(g / c)], axis=1)
    result[~((a * c > 0) & (g / a > 0))] = np.nan
    return result


def _conic_rows(points: np.ndarray) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    return np.stack([x * x, y * y, x, y, np.ones_like(x)], axis=-1)


def _ellipse_residuals(ellipses: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Approximate distance, in the points' units, of every point (n, 2) from every ellipse (k, 4): (k, n)."""
    x0, y0, ax, ay = (ellipses[:, i, None] for i in range(4))
    rho = np.hypot((points[None, :, 0] - x0) / ax, (points[None, :, 1] - y0) / ay)
    return (rho - 1) * np.sqrt(ax * ay)


def _fit_field_of_view(border: np.ndarray, trials: int = 400, angle_bins: int = 180) -> np.ndarray | None:
    """The round field of view whose outside is `border`: centre x, centre y, semi-axis x, semi-axis y
    in pixels, or None when the border is not round.

    An axis-aligned ellipse rather than a circle, because the 10k set squeezed
    non-square photos into 300x300 and so turned their lens circles into
    ellipses. The boundary between the dark border and the image is the lens
    outline, except where a dark lesion touches the border: there it runs
    round the lesion instead. A RANSAC fit follows the outline and ignores
    those stretches, so the lesion is not mistaken for border.
    """
    height, width = border.shape
    side = float(min(height, width))
    edge = border & _dilate(~border, 1)
    ys, xs = np.nonzero(edge)
    if xs.size < 20:
        return None
    # Where a dark lesion merges with the border, its ragged outline can outnumber
    # the lens's arc. Seen from the middle of the field of view, the arc is the
    # farthest boundary in each direction, so only that point per direction is kept.
    inside_ys, inside_xs = np.nonzero(~border)
    middle_x, middle_y = inside_xs.mean(), inside_ys.mean()
    bins = ((np.arctan2(ys - middle_y, xs - middle_x) + np.pi) / (2 * np.pi) * angle_bins).astype(int) % angle_bins
    reach = np.hypot(xs - middle_x, ys - middle_y)
    order = np.lexsort((-reach, bins))
    first = order[np.r_[True, bins[order][1:] != bins[order][:-1]]]
    # In units of the shorter side, so the conic's coefficients are of similar size.
    points = np.stack([xs[first], ys[first]], axis=1).astype(np.float64) / side
    if len(points) < 10:
        return None
    rng = np.random.default_rng(0)  # fixed: the same image always gets the same fill
    samples = _conic_rows(points[rng.integers(0, len(points), size=(trials, 4))])
    ellipses = _ellipse_from_conic(np.linalg.svd(samples)[2][:, -1])
    axes = ellipses[:, 2:]
    plausible = (np.isfinite(ellipses).all(axis=1) & (axes.min(axis=1) > 0.25) & (axes.max(axis=1) < 1.5)
                 & (axes.max(axis=1) < 2 * axes.min(axis=1)))
    if not plausible.any():
        return None
    ellipses = ellipses[plausible]
    inliers = np.abs(_ellipse_residuals(ellipses, points)) < max(2.0 / side, 0.015)
    best = int(inliers.sum(axis=1).argmax())
    # A straight or ragged border (a ruler, a shadow, a lesion filling the frame) fits no lens outline.
    if inliers[best].sum() < 0.5 * len(points):
        return None
    refined = _ellipse_from_conic(np.linalg.svd(_conic_rows(points[inliers[best]]))[2][-1][None])[0]
    if not np.isfinite(refined).all():
        refined = ellipses[best]
    return refined * side


def fill_dark_border(image: Image.Image, threshold: float = DARK_LUMINANCE) -> Image.Image:
    """The image with its dark field-of-view border painted in the colour of the skin next to it.

    Removes a vignette without cropping, so the lesion keeps its size in the
    frame (cropping would enlarge it, which is a cue of its own). The fill is
    the median colour of the skin just inside the field of view. Only the
    outside of the fitted lens outline is painted, so a dark lesion that
    touches the border keeps its pixels; a dark border that is not round (a
    lesion or shadow reaching the edge) is left as it is.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    lum = luminance(rgb)
    height, width = lum.shape
    side = min(height, width)
    border = _edge_connected(lum < threshold)
    if not border.any() or border.all():
        return image.convert("RGB")
    lens = _fit_field_of_view(border)
    if lens is None:
        return image.convert("RGB")
    soft_edge = max(1, side // 60)
    # The vignette's soft edge is darker than the skin but above the threshold: paint it too,
    # but nothing well inside the lens outline, where a dark lesion may touch the border.
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    outside = _ellipse_residuals(lens[None], points)[0].reshape(height, width) > -soft_edge
    painted = _dilate(border, soft_edge) & outside
    if not painted.any():
        return image.convert("RGB")
    ring = _dilate(painted, max(2, side // 20)) & ~painted
    # Sample the skin, not a dark lesion that reaches the rim.
    skin = ring & (lum >= threshold)
    sample = skin if skin.sum() >= 10 else ring
    if sample.sum() < 10:
        return image.convert("RGB")
    fill = np.median(rgb[sample], axis=0)
    out = np.where(painted[..., None], fill, rgb)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
