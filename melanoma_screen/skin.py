"""The skin around a lesion: where it is, what colour it is, and changing that colour alone.

In the 10k Kaggle set the benign images have pinker skin around the lesion
than the malignant ones, and another clinic's dermatoscope shows whiter,
yellower skin; a model trained there reads whiter skin as melanoma. This
module gives training, inference, the probes and the audit one definition of
"the skin":

- `lesion_and_skin_masks`: the lesion is the darker part of the blurred blue
  channel (Otsu's threshold; pigment absorbs blue most), its largest
  connected component, dilated; the skin is what lies outside it, leaving out
  the near-black field of view of a dermatoscope.
- `skin_colour`: the mean RGB of those skin pixels.
- `normalise_skin_colour`: one gain per channel for the whole image, so its
  skin takes a reference colour (colour constancy with the skin as the white
  patch). Applied identically in training and inference.
- `recolour_skin`: the skin alone moved to another colour, the lesion left as
  it is: the augmentation that makes skin colour carry no class information,
  and the probe that measures whether it still does.

numpy, scipy.ndimage and PIL only; the masks are computed at most
`MASK_SIDE` pixels across, so a large photo costs what a small one does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .field_of_view import DARK_LUMINANCE
from .images import luminance

# The masks are computed on a copy at most this many pixels across: enough to
# find a lesion, and the same work for a 300 px dataset image and a 4000 px photo.
MASK_SIDE = 160
# Gaussian blur of the blue channel, as a share of the side: hairs and the
# pigment network blur away, the lesion's outline stays.
BLUR_FRACTION = 0.01
# Dilation of the lesion, as a share of the side: keeps the lesion's halo of
# lighter pigment and erythema out of the skin estimate.
DILATION_FRACTION = 0.05
# The lesion is taken to be the dark component that covers most of a central disc of
# this radius (share of the shorter side).
CENTRE_FRACTION = 0.3
# Otsu always finds a threshold; when the two classes' mean blue levels differ
# by less than this (0-255) there is no darker lesion to separate.
MIN_CONTRAST = 12.0
# Filling the lesion's holes may not make it cover more than this share of the field of view.
MAX_FILLED_FRACTION = 0.7
# Feathering of the recoloured skin's edge at the lesion, as a share of the side.
FEATHER_FRACTION = 0.012
# Under this share of the image, the skin estimate falls back to the outer band of
# the frame (a lesion that fills the frame leaves only its corners as skin).
MIN_SKIN_FRACTION = 0.03
BORDER_FRACTION = 0.1
# A gain past these bounds would be a picture that is not dermoscopy (a black frame,
# a saturated flash), and correcting it that far would invent colour.
GAIN_BOUNDS = (0.5, 2.0)

# Median skin colour around the lesion, measured with skin_colour on the named sets
# (an audit of the two sets' skin); the probe's targets and the recolour range come from them.
SKIN_10K_BENIGN = (216.0, 170.0, 166.0)
SKIN_DERM7PT = (238.0, 230.0, 214.0)
# The skin-colour probe moves skin towards each of these; "whiter and yellower" is
# derm7pt's skin, "darker and pinker" as far on the other side of the 10k benign skin.
PROBE_TARGETS = {
    "whiter_yellower": SKIN_DERM7PT,
    "darker_pinker": (196.0, 128.0, 126.0),
}
PROBE_NAMES = {"whiter_yellower": "whiter and yellower", "darker_pinker": "darker and pinker"}
# Recolour augmentation draws a random mix of these skin tones and illuminants,
# from very fair to dark skin, under warm, neutral and cool light.
RECOLOUR_ANCHORS = np.array([
    SKIN_10K_BENIGN, SKIN_DERM7PT,
    (246.0, 226.0, 216.0),  # very fair, neutral light
    (226.0, 150.0, 146.0),  # reddened, erythema
    (206.0, 160.0, 124.0),  # tan
    (160.0, 114.0, 86.0),   # brown
    (112.0, 76.0, 58.0),    # dark
    (204.0, 204.0, 218.0),  # cool, bluish light
    (240.0, 214.0, 170.0),  # warm, yellow light
], dtype=np.float32)


@dataclass
class SkinMasks:
    lesion: np.ndarray  # bool (H, W) at the image's size: the lesion itself, not dilated
    skin: np.ndarray    # bool (H, W) at the image's size: outside the dilated lesion and the black field of view
    # How the skin was found: "outside lesion", "no lesion found" (all of the
    # field of view is taken as skin), "frame border" (a lesion fills the frame),
    # or "none" (nothing but the black field of view: no skin colour to use).
    method: str


def _otsu_threshold(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold on 0-255 values, and the difference of the two classes' means."""
    histogram = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    total = histogram.sum()
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(histogram)
    weight_high = total - weight_low
    sum_low = np.cumsum(histogram * levels)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = int(np.argmax(between))
    return best + 0.5, float(mean_high[best] - mean_low[best])


def _working_copy(image: Image.Image) -> Image.Image:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = MASK_SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BILINEAR)
    return rgb


def _masks_at_working_size(small: Image.Image) -> tuple[np.ndarray, np.ndarray, str]:
    from scipy import ndimage  # here: scoring a model without skin colour constancy never needs scipy

    side = min(small.size)
    in_view = luminance(small) >= DARK_LUMINANCE
    if in_view.sum() < MIN_SKIN_FRACTION * in_view.size:
        return np.zeros_like(in_view), np.zeros_like(in_view), "none"
    blue = np.asarray(small.getchannel("B").filter(ImageFilter.GaussianBlur(max(1.0, BLUR_FRACTION * side))),
                      dtype=np.float32)
    threshold, contrast = _otsu_threshold(blue[in_view])
    lesion = np.zeros_like(in_view)
    if contrast >= MIN_CONTRAST:
        components, count = ndimage.label((blue < threshold) & in_view)
        if count:
            # A dermoscopic lesion sits near the centre; the darker shading of a lens's
            # edge is often larger, so the component that covers most of the centre wins.
            height, width = blue.shape
            ys, xs = np.ogrid[:height, :width]
            central = (ys + 0.5 - height / 2) ** 2 + (xs + 0.5 - width / 2) ** 2 <= (CENTRE_FRACTION * side) ** 2
            in_centre = np.bincount(components[central], minlength=count + 1)[1:]
            sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
            lesion = components == (1 + int(np.argmax(in_centre if in_centre.any() else sizes)))
            # The darkest pigment falls in the black field-of-view cut and a pale regression
            # area above the threshold: both are lesion, not holes in it.
            # A ring of darker skin just inside a lens's black edge encloses the whole view: not a lesion's hole.
            filled = ndimage.binary_fill_holes(lesion)
            lesion = filled if filled.sum() <= MAX_FILLED_FRACTION * in_view.sum() else lesion
    if not lesion.any():
        return lesion, in_view, "no lesion found"
    steps = max(1, round(DILATION_FRACTION * side))
    halo = ndimage.binary_dilation(lesion, structure=ndimage.generate_binary_structure(2, 1), iterations=steps)
    skin = in_view & ~halo
    if skin.sum() >= MIN_SKIN_FRACTION * skin.size:
        return lesion, skin, "outside lesion"
    band = max(1, round(BORDER_FRACTION * side))
    border = np.zeros_like(in_view)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    skin = border & in_view
    return lesion, skin, ("frame border" if skin.any() else "none")


def lesion_and_skin_masks(image: Image.Image) -> SkinMasks:
    """Where the lesion and the skin around it are, at the image's own size."""
    small = _working_copy(image)
    lesion, skin, method = _masks_at_working_size(small)
    if small.size != image.size:
        def grow(mask: np.ndarray) -> np.ndarray:
            return np.asarray(Image.fromarray(mask).resize(image.size, Image.Resampling.NEAREST))
        lesion, skin = grow(lesion), grow(skin)
    return SkinMasks(lesion=lesion, skin=skin, method=method)


def skin_colour(image: Image.Image) -> np.ndarray | None:
    """Mean RGB (0-255) of the skin around the lesion; None when there is no skin to measure."""
    small = _working_copy(image)
    _, skin, method = _masks_at_working_size(small)
    if method == "none":
        return None
    return np.asarray(small, dtype=np.float32)[skin].mean(axis=0)


def skin_gains(image: Image.Image, reference) -> np.ndarray:
    """Per-channel gains that bring the image's skin to `reference` (1, 1, 1 when it has no skin)."""
    colour = skin_colour(image)
    if colour is None:
        return np.ones(3, dtype=np.float32)
    gains = np.asarray(reference, dtype=np.float32) / np.maximum(colour, 1.0)
    return np.clip(gains, *GAIN_BOUNDS).astype(np.float32)


def _apply_gains(image: Image.Image, gains) -> Image.Image:
    matrix = (float(gains[0]), 0, 0, 0, 0, float(gains[1]), 0, 0, 0, 0, float(gains[2]), 0)
    return (image if image.mode == "RGB" else image.convert("RGB")).convert("RGB", matrix)


def normalise_skin_colour(image: Image.Image, reference) -> Image.Image:
    """The whole image scaled by one gain per channel so that its skin takes the reference colour.

    The lesion is scaled with the skin, as under another light: its colour
    relative to the skin, which is what a dermatologist reads, is kept.
    """
    return _apply_gains(image, skin_gains(image, reference))


def recolour_skin(image: Image.Image, target, masks: SkinMasks | None = None) -> Image.Image:
    """The skin alone moved to the `target` colour; the lesion keeps its own.

    The skin's colour is measured outside the dilated lesion, but every pixel
    outside the lesion itself is moved, with a narrow feathered edge, so no
    ring of the old skin colour is left around the lesion for a model to learn.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    masks = masks or lesion_and_skin_masks(rgb)
    if masks.method == "none":
        return rgb
    pixels = np.asarray(rgb, dtype=np.float32)
    colour = pixels[masks.skin].mean(axis=0)
    gains = np.clip(np.asarray(target, dtype=np.float32) / np.maximum(colour, 1.0), 0.4, 2.5)
    side = min(rgb.size)
    weight = Image.fromarray((~masks.lesion).astype(np.uint8) * 255).filter(
        ImageFilter.GaussianBlur(max(1.0, FEATHER_FRACTION * side)))
    alpha = (np.asarray(weight, dtype=np.float32) / 255.0)[..., None]
    out = pixels * (1.0 + alpha * (gains - 1.0))
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def random_skin_colour(rng: random.Random) -> np.ndarray:
    """A skin colour under some light, drawn from RECOLOUR_ANCHORS' span."""
    weights = np.array([rng.gammavariate(0.5, 1.0) for _ in range(len(RECOLOUR_ANCHORS))], dtype=np.float32)
    mix = (weights / max(float(weights.sum()), 1e-6)) @ RECOLOUR_ANCHORS
    return mix * np.array([rng.uniform(0.92, 1.08) for _ in range(3)], dtype=np.float32)


def reference_skin_colour(images, limit: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median skin colour over (a seeded sample of) images: the reference a model is normalised to."""
    images = list(images)
    if len(images) > limit:
        images = random.Random(seed).sample(images, limit)
    colours = [colour for colour in (skin_colour(image()) if callable(image) else skin_colour(image) for image in images)
               if colour is not None]
    if not colours:
        raise ValueError("no image had skin around its lesion to measure a reference colour on")
    median = np.median(np.stack(colours), axis=0)
    return tuple(round(float(value), 1) for value in median)


@dataclass
class LesionExtent:
    share: float                          # the lesion's share of the whole frame
    box: tuple[int, int, int, int]        # its bounding box (left, top, right, bottom) at the image's size


def lesion_extent(image: Image.Image) -> LesionExtent | None:
    """How much of the frame the lesion fills, and where; None when no darker lesion stands out.

    In the 10k training split a melanoma fills a median 26% of the frame and a
    benign lesion 6%, and derm7pt's benign lesions 34% (`python
    experiments/lesion_size.py`): the lesion's size in the frame, which depends
    on the dermatoscope's magnification as much as on the lesion, separates the
    10k classes with ROC AUC 0.80 (derm7pt's: 0.68). The size-balanced crop (transforms.DermoscopyAugmentation) and
    the lesion-size probe use this measure.
    """
    small = _working_copy(image)
    lesion, _, method = _masks_at_working_size(small)
    if method in ("none", "no lesion found"):
        return None
    rows, cols = np.flatnonzero(lesion.any(axis=1)), np.flatnonzero(lesion.any(axis=0))
    scale_x, scale_y = image.width / small.width, image.height / small.height
    box = (int(cols[0] * scale_x), int(rows[0] * scale_y),
           int(np.ceil((cols[-1] + 1) * scale_x)), int(np.ceil((rows[-1] + 1) * scale_y)))
    return LesionExtent(share=float(lesion.mean()), box=box)


def crop_around_lesion(image: Image.Image, area_fraction: float, aspect: float = 1.0,
                       rng: random.Random | None = None, extent: LesionExtent | None = None):
    """A crop box of area_fraction of the image, placed over the lesion.

    The box keeps as much of the lesion's bounding box as fits: anywhere that
    holds all of it (at random with rng, else centred on it), else centred on
    it. Without a lesion, the box is centred in the frame.
    """
    width, height = image.size
    crop_w = max(1, min(width, int(round(np.sqrt(area_fraction * aspect) * width))))
    crop_h = max(1, min(height, int(round(np.sqrt(area_fraction / aspect) * height))))
    extent = extent if extent is not None else lesion_extent(image)
    left, top, right, bottom = extent.box if extent is not None else (0, 0, width, height)

    def place(low, high, crop, side):
        # The range of starts whose crop covers [low, high), within the frame.
        start_min, start_max = max(0, high - crop), min(low, side - crop)
        if start_min > start_max:  # the lesion is wider than the crop: centre on it
            return int(min(max((low + high - crop) / 2, 0), side - crop))
        return rng.randint(start_min, start_max) if rng is not None else (start_min + start_max) // 2

    x0, y0 = place(left, right, crop_w, width), place(top, bottom, crop_h, height)
    return (x0, y0, x0 + crop_w, y0 + crop_h)


def magnify_lesion(image: Image.Image, factor: float) -> Image.Image:
    """The lesion shown `factor` times larger across, in a picture of the same size: the lesion-size probe."""
    box = crop_around_lesion(image, 1.0 / factor ** 2)
    return image.resize(image.size, Image.Resampling.BILINEAR, box=box)
