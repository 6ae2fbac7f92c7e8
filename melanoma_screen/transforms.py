"""Image processor and training augmentation, with PIL and numpy only.

torchvision cannot be installed beside this project's torch build, so the
augmentations are written out here. Evaluation preprocessing (Preprocess) gives
the saved image processor's pixel values (to float rounding), which is what
`transformers.pipeline` applies, so the numbers we report are the numbers
pipeline users get.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .field_of_view import add_circular_vignette, mask_field_of_view
from .skin import crop_around_lesion, lesion_extent, normalise_skin_colour, random_skin_colour, recolour_skin

# Mean/std of 0.5 is what google/vit-base-patch16-224-in21k uses, so a scratch
# model and a fine-tuned one see inputs on the same scale.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def build_image_processor(image_size: int, image_mean=DEFAULT_MEAN, image_std=DEFAULT_STD):
    """A ViTImageProcessorPil (transformers is imported here: inference's fast path does without it)."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )


COLOR_CONSTANCY_METHODS = ("none", "shades_of_gray", "skin_reference")
COLOR_CONSTANCY_NAMES = {"none": "none", "shades_of_gray": "Shades of Gray",
                         "skin_reference": "skin-referenced colour gain"}
# Minkowski norm p = 6 is what Barata et al. (2015) found best for dermoscopy
# and what ISIC 2017-2019 winning entries used.
SHADES_OF_GRAY_POWER = 6


def shades_of_gray(image: Image.Image, power: float = SHADES_OF_GRAY_POWER) -> Image.Image:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004).

    Estimates the illuminant as the Minkowski p-mean of each channel and
    divides it out, so the same lesion under a warmer or cooler light, or
    through another dermatoscope's white balance, gives the same colours. The
    gains are scaled so that a grey illuminant leaves the image unchanged:
    overall brightness is kept.
    """
    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float32)
    illuminant = np.power(np.mean(np.power(rgb.reshape(-1, 3), power), axis=0), 1.0 / power)
    illuminant = np.maximum(illuminant, 1e-3)
    gains = np.linalg.norm(illuminant) / (np.sqrt(3.0) * illuminant)
    return Image.fromarray(np.clip(rgb * gains + 0.5, 0, 255).astype(np.uint8))


def color_constancy_of(config) -> str:
    """The colour constancy a model was trained with, from its config ("none" for models from elsewhere)."""
    method = getattr(config, "color_constancy", None) or "none"
    if method not in COLOR_CONSTANCY_METHODS:
        raise ValueError(f"unknown color_constancy {method!r} in the model config; expected one of {COLOR_CONSTANCY_METHODS}")
    return method


def skin_reference_of(config):
    """The skin colour a "skin_reference" model normalises to, from its config: (R, G, B) in 0-255, else None."""
    if color_constancy_of(config) != "skin_reference":
        return None
    value = getattr(config, "skin_reference_rgb", None)
    try:
        reference = tuple(float(channel) for channel in value)
    except (TypeError, ValueError):  # absent, or a string in a hand-edited config.json
        reference = ()
    if len(reference) != 3 or not all(1.0 <= channel <= 255.0 for channel in reference):
        raise ValueError(f"skin_reference_rgb {value!r} in the model config must be three numbers between 1 and 255")
    return reference


def apply_color_constancy(image: Image.Image, method: str, skin_reference=None) -> Image.Image:
    if method == "shades_of_gray":
        return shades_of_gray(image)
    if method == "skin_reference":
        if skin_reference is None:
            raise ValueError("skin_reference colour constancy needs the reference skin colour (skin_reference_rgb)")
        return normalise_skin_colour(image, skin_reference)
    return image


def field_of_view_mask_of(config) -> float:
    """The radius of the field-of-view mask a model was trained with, from its config (0 = none)."""
    value = getattr(config, "field_of_view_mask", 0.0) or 0.0
    try:
        radius = float(value)
    except (TypeError, ValueError):  # a string or a list in a hand-edited config.json
        raise ValueError(f"field_of_view_mask {value!r} in the model config must be a number between 0 and 1") from None
    if isinstance(value, bool) or not 0.0 <= radius <= 1.0:
        raise ValueError(f"field_of_view_mask {radius!r} in the model config must lie between 0 and 1")
    return radius


def apply_field_of_view_mask(image: Image.Image, radius: float) -> Image.Image:
    return mask_field_of_view(image, radius) if radius > 0 else image


def correct(image: Image.Image, color_constancy: str = "none", field_of_view_mask: float = 0.0,
            skin_reference=None) -> Image.Image:
    """The model's own preprocessing after the resize: colour constancy, then the field-of-view mask.

    Training applies it after its augmentation (which resizes), everything else through Preprocess.
    """
    return apply_field_of_view_mask(apply_color_constancy(image, color_constancy, skin_reference), field_of_view_mask)


@dataclass(frozen=True)
class Preprocess:
    """From a decoded picture to the model's input: the one preprocessing of training's evaluation, both
    inference engines and `pipeline_input`.

    The picture is resized as the processor would, colour-corrected, then masked
    to the model's field of view (`correct`). Correcting after the resize keeps
    it cheap on large photos and makes training, evaluation and the app estimate
    the illuminant from the same pixels. processor: the transformers image
    processor, or its settings as read from preprocessor_config.json; with a
    fixed height x width resize and no crop (what train_vit.py saves), the
    rescale and normalisation are one multiply-add per pixel, without transformers.
    """

    processor: object
    color_constancy: str = "none"
    field_of_view_mask: float = 0.0
    skin_reference: tuple | None = None

    @property
    def fixed_size(self) -> bool:
        size = self.processor.size
        return bool(self.processor.do_resize and size.get("height") and size.get("width")
                    and not getattr(self.processor, "do_center_crop", False))

    def resized(self, image: Image.Image) -> Image.Image:
        size = self.processor.size
        resized = image.resize((int(size["width"]), int(size["height"])), Image.Resampling(int(self.processor.resample)))
        return correct(resized, self.color_constancy, self.field_of_view_mask, self.skin_reference)

    def picture(self, image: Image.Image) -> Image.Image:
        """What `pipeline` must be given to score as the model does; untouched when the model has neither step."""
        if self.color_constancy == "none" and not self.field_of_view_mask:
            return image
        return self.resized(image)

    def __call__(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 pixel values, and the (N, H, W, 3) uint8 pictures they were made from."""
        if not self.fixed_size:
            images = [self.picture(image) for image in images]
            pixel_values = self.processor(images, return_tensors="np")["pixel_values"].astype(np.float32)
            size = (int(pixel_values.shape[3]), int(pixel_values.shape[2]))
            pictures = np.stack([np.asarray((image if image.mode == "RGB" else image.convert("RGB")).resize(
                size, Image.Resampling.BILINEAR)) for image in images])
            return pixel_values, pictures
        size = self.processor.size
        pictures = np.empty((len(images), int(size["height"]), int(size["width"]), 3), dtype=np.uint8)
        for i, image in enumerate(images):
            pictures[i] = np.asarray(self.resized(image if image.mode == "RGB" else image.convert("RGB")))
        processor = self.processor
        scale = processor.rescale_factor if processor.do_rescale else 1.0
        mean = np.asarray(processor.image_mean if processor.do_normalize else 0.0, dtype=np.float32)
        std = np.asarray(processor.image_std if processor.do_normalize else 1.0, dtype=np.float32)
        # Rescale and normalise folded into one multiply-add per pixel, shaped (3, 1, 1) for channel-first pixels,
        # straight from the (N, H, W, 3) bytes: one pass, no intermediate float image, no torch permute copy.
        multiply = np.broadcast_to(scale / std, (3,)).astype(np.float32).reshape(3, 1, 1)
        add = np.broadcast_to(-mean / std, (3,)).astype(np.float32).reshape(3, 1, 1)
        batch = np.multiply(pictures.transpose(0, 3, 1, 2), multiply[None], dtype=np.float32)
        batch += add[None]
        return batch, pictures


def model_input(image: Image.Image, image_processor, color_constancy: str = "none",
                field_of_view_mask: float = 0.0, skin_reference=None) -> Image.Image:
    """Preprocess.picture, for one picture."""
    return Preprocess(image_processor, color_constancy, field_of_view_mask, skin_reference).picture(image)


def processor_image_size(image_processor) -> int:
    size = image_processor.size
    return int(size["height"] if "height" in size else size["shortest_edge"])


def balanced_vignette_probabilities(natural_rates, probability: float) -> tuple[float, ...]:
    """Per class, how often to draw a vignette so that every class ends up with one equally often.

    natural_rates: the share of each class's training images that already show a
    dermatoscope's field of view. Drawn at one rate on every class, the vignette
    still follows the class with more natural ones (in the 10k set, most are
    malignant), and a model without the skin-colour cue leans on it. Here the
    class with the most natural vignettes gets `probability`, and each other
    class as much as brings it to the same total share.
    """
    most = max(natural_rates)
    target = most + (1.0 - most) * probability
    return tuple(float(min(1.0, max(0.0, (target - rate) / (1.0 - rate)))) if rate < 1.0 else 0.0 for rate in natural_rates)


LESION_SHARE_QUANTILES = 101


def cropped_lesion_shares(shares, crop_scale: tuple[float, float], rng: random.Random) -> tuple[float, ...]:
    """The lesion shares of the frame after the ordinary random crop, as quantiles.

    A crop of area fraction a that keeps the lesion raises its share s to s / a;
    drawn once per share, with a uniform in crop_scale as random_resized_crop
    draws it. These are what the size-balanced crop zooms the other classes towards.
    """
    after = np.minimum(1.0, np.asarray(shares, dtype=np.float64) /
                       np.asarray([rng.uniform(*crop_scale) for _ in shares], dtype=np.float64))
    return tuple(float(q) for q in np.quantile(after, np.linspace(0.0, 1.0, LESION_SHARE_QUANTILES)))


@dataclass
class DermoscopyAugmentation:
    """Augmentations that keep a dermoscopic image plausible.

    A lesion has no canonical orientation, so all eight flips/90° rotations
    are equally likely. The crop range simulates different zoom levels and
    framing; colour jitter stays mild by default because colour is diagnostic
    (blue-white veil, regression) and a strong hue shift would change the
    label's meaning. white_balance scales each channel independently by up to
    that fraction, as another device's white balance or illuminant would.
    vignette is the probability of drawing a dermatoscope's black circular
    field of view, on either class, so that the vignette stops being evidence.
    skin_recolour is the probability of moving the skin around the lesion, and
    only the skin, to a random skin tone under a random light
    (melanoma_screen.skin), so that the skin's colour stops being evidence.
    """

    image_size: int
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.02
    white_balance: float = 0.0
    vignette: float = 0.0
    skin_recolour: float = 0.0
    # Probability of passing the image through another camera's chain: down- and up-scaling,
    # blur or sharpening, JPEG compression (acquisition_chain).
    acquisition: float = 0.0
    # Per label, in place of `vignette` (balanced_vignette_probabilities).
    vignette_by_label: tuple[float, ...] | None = None
    # Per label, the lesion shares of the frame (quantiles, cropped_lesion_shares) to zoom
    # that label's images towards, or None for the ordinary random crop.
    lesion_share_by_label: tuple[tuple[float, ...] | None, ...] | None = None
    # The size-balanced crop may keep down to this share of the image (a 300 px image's 95 px,
    # upsampled by a third at 128 px): held at crop_scale's floor (0.25), a small benign lesion
    # cannot be zoomed far enough to look like a melanoma's size (tests/test_transforms.py).
    lesion_zoom_min_area: float = 0.1

    def __call__(self, image: Image.Image, rng: random.Random, label: int | None = None) -> Image.Image:
        targets = None if self.lesion_share_by_label is None or label is None else self.lesion_share_by_label[label]
        image = self.size_balanced_crop(image, rng, targets) if targets else self.random_resized_crop(image, rng)
        # Before the vignette, so the skin is measured and moved inside the picture's own field of view.
        if self.skin_recolour > 0 and rng.random() < self.skin_recolour:
            image = recolour_skin(image, random_skin_colour(rng))
        # After the crop, so the circle sits in the frame the model sees, as a lens's would.
        vignette = self.vignette if self.vignette_by_label is None or label is None else self.vignette_by_label[label]
        if vignette > 0 and rng.random() < vignette:
            image = add_circular_vignette(image, rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        quarter_turns = rng.randrange(4)
        if quarter_turns:
            image = image.transpose(
                (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[quarter_turns - 1]
            )
        image = self.colour_jitter(image, rng)
        if self.acquisition > 0 and rng.random() < self.acquisition:
            image = self.acquisition_chain(image, rng)
        return image

    @staticmethod
    def acquisition_chain(image: Image.Image, rng: random.Random) -> Image.Image:
        """The image as a cheaper or older camera, or another site's export settings, would have left it.

        Each source of the training data has its own resolution, optics and
        JPEG quality, and its own class balance, so sharpness and compression
        artefacts predict the label unless every class gets every kind. The
        last step is compression, as in any device's pipeline.
        """
        size = image.size
        if rng.random() < 0.5:
            factor = rng.uniform(0.35, 0.9)
            small = (max(8, round(size[0] * factor)), max(8, round(size[1] * factor)))
            image = image.resize(small, Image.Resampling.BILINEAR).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            if rng.random() < 0.5:
                image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
            else:
                image = image.filter(ImageFilter.UnsharpMask(radius=rng.uniform(0.8, 2.0), percent=int(rng.uniform(40, 150)), threshold=2))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rng.randint(30, 95))
        buffer.seek(0)
        with Image.open(buffer) as compressed:
            return compressed.convert("RGB")

    def random_resized_crop(self, image: Image.Image, rng: random.Random) -> Image.Image:
        width, height = image.size
        area = width * height
        for _ in range(10):
            target_area = area * rng.uniform(*self.crop_scale)
            log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_w = int(round(math.sqrt(target_area * aspect)))
            crop_h = int(round(math.sqrt(target_area / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left = rng.randint(0, width - crop_w)
                top = rng.randint(0, height - crop_h)
                box = (left, top, left + crop_w, top + crop_h)
                break
        else:
            side = min(width, height)
            box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
        return image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR, box=box)

    def size_balanced_crop(self, image: Image.Image, rng: random.Random, target_shares) -> Image.Image:
        """A crop over the lesion that makes it fill a share of the frame drawn from target_shares.

        So that how much of the frame a lesion fills, which follows the
        dermatoscope's magnification and, in the 10k set, the class, stops being
        evidence. The crop keeps at least lesion_zoom_min_area of the image; a lesion already at or above its drawn share gets
        the ordinary crop.
        """
        extent = lesion_extent(image)
        target = target_shares[rng.randrange(len(target_shares))]
        if extent is None or extent.share <= 0 or target <= extent.share:
            return self.random_resized_crop(image, rng)
        area_fraction = min(1.0, max(self.lesion_zoom_min_area, extent.share / target))
        aspect = math.exp(rng.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        box = crop_around_lesion(image, area_fraction, aspect, rng, extent)
        return image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR, box=box)

    def colour_jitter(self, image: Image.Image, rng: random.Random) -> Image.Image:
        for enhancer, strength in (
            (ImageEnhance.Brightness, self.brightness),
            (ImageEnhance.Contrast, self.contrast),
            (ImageEnhance.Color, self.saturation),
        ):
            if strength > 0:
                image = enhancer(image).enhance(rng.uniform(1 - strength, 1 + strength))
        if self.hue > 0:
            shift = int(round(rng.uniform(-self.hue, self.hue) * 255))
            if shift:
                hue, sat, val = image.convert("HSV").split()
                hue = hue.point(lambda value: (value + shift) % 256)
                image = Image.merge("HSV", (hue, sat, val)).convert("RGB")
        if self.white_balance > 0:
            gains = [rng.uniform(1 - self.white_balance, 1 + self.white_balance) for _ in range(3)]
            image = image.convert("RGB", (gains[0], 0, 0, 0, 0, gains[1], 0, 0, 0, 0, gains[2], 0))
        return image


_rng_cache: dict[int, random.Random] = {}


# train_vit.py's augmentation flags and their defaults, which are DermoscopyAugmentation's own:
# experiments/compare_runs.py names a recipe by what it changed from these, without importing the script.
_DEFAULT_AUGMENTATION = DermoscopyAugmentation(image_size=1)
AUGMENTATION_DEFAULTS = {
    "augment_brightness": _DEFAULT_AUGMENTATION.brightness,
    "augment_contrast": _DEFAULT_AUGMENTATION.contrast,
    "augment_saturation": _DEFAULT_AUGMENTATION.saturation,
    "augment_hue": _DEFAULT_AUGMENTATION.hue,
    "augment_white_balance": _DEFAULT_AUGMENTATION.white_balance,
    "augment_vignette": _DEFAULT_AUGMENTATION.vignette,
    "augment_skin_recolour": _DEFAULT_AUGMENTATION.skin_recolour,
    "augment_acquisition": _DEFAULT_AUGMENTATION.acquisition,
    "crop_scale_min": _DEFAULT_AUGMENTATION.crop_scale[0],
}


def augmentation_rng() -> random.Random:
    """A random generator for augmentation that differs per DataLoader worker and per epoch.

    A Random built once in the main process is copied into every worker at
    each fork with the same state, so every worker and every epoch would see
    the same crops and flips. torch gives each worker a fresh seed per epoch
    (and the main process the one from set_seed), so key the generator on it.
    """
    import torch

    seed = torch.initial_seed()
    if seed not in _rng_cache:
        _rng_cache.clear()
        _rng_cache[seed] = random.Random(seed)
    return _rng_cache[seed]
