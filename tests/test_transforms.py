"""Training augmentation: output size, variety across workers and epochs, and label-safe colour."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import ViTConfig

from conftest import real_images
from melanoma_screen.images import load_rgb_image
from melanoma_screen.field_of_view import dark_corner_count, has_dark_corners, mask_field_of_view
from melanoma_screen.transforms import (
    balanced_vignette_probabilities,
    DermoscopyAugmentation, augmentation_rng, build_image_processor, field_of_view_mask_of,
    model_input, shades_of_gray,
)


def test_augmentation_gives_the_model_size_and_varies():
    image = Image.open(real_images("train", "malignant", 1)[0]).convert("RGB")
    augment = DermoscopyAugmentation(image_size=96)
    rng = random.Random(0)
    outputs = [np.asarray(augment(image, rng), dtype=np.float32) for _ in range(6)]
    assert all(o.shape == (96, 96, 3) for o in outputs)
    assert min(np.abs(a - b).mean() for a, b in zip(outputs, outputs[1:])) > 1.0
    # Mild colour jitter: the mean colour moves a little, never to another colour.
    reference = np.asarray(image.resize((96, 96)), dtype=np.float32).mean(axis=(0, 1))
    for output in outputs:
        assert np.abs(output.mean(axis=(0, 1)) - reference).max() < 60


class _Draws(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return augmentation_rng().random()


def test_augmentation_randomness_differs_across_workers_and_epochs():
    torch.manual_seed(0)
    loader = DataLoader(_Draws(), batch_size=1, num_workers=2)
    epochs = [[float(x) for batch in loader for x in batch] for _ in range(2)]
    assert len(set(epochs[0])) == 4, "workers repeat each other's augmentations"
    assert epochs[0] != epochs[1], "every epoch repeats the same augmentations"


def test_image_processor_resizes_and_normalises_to_minus_one_one():
    processor = build_image_processor(64)
    image = Image.open(real_images("test", "benign", 1)[0])
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 64, 64)
    assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0


# ------------------------------------------------------------------ colour constancy


def _cast(image: Image.Image, gains) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) * gains, 0, 255).astype(np.uint8))


def test_shades_of_gray_removes_a_colour_cast_from_a_real_lesion():
    image = Image.open(real_images("test", "malignant", 1)[0]).convert("RGB").resize((128, 128))
    corrected = np.asarray(shades_of_gray(image), dtype=np.float32)
    for gains in ((1.12, 1.0, 0.85), (0.88, 1.0, 1.15)):
        cast = _cast(image, gains)
        before = np.abs(np.asarray(cast, dtype=np.float32) - np.asarray(image, dtype=np.float32)).mean()
        after = np.abs(np.asarray(shades_of_gray(cast), dtype=np.float32) - corrected).mean()
        # Clipping at 255 keeps it from being exact; it still undoes most of the cast.
        assert after < before / 3, (gains, before, after)
    # The p-means of the channels come out (nearly) equal: a grey illuminant.
    p_means = np.power(np.mean(np.power(corrected.reshape(-1, 3), 6), axis=0), 1 / 6)
    assert p_means.max() - p_means.min() < 3


def test_shades_of_gray_leaves_grey_illuminated_images_and_size_alone():
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60), dtype=np.uint8)).convert("RGB")
    corrected = shades_of_gray(grey)
    assert corrected.mode == "RGB" and corrected.size == (60, 40)
    assert np.abs(np.asarray(corrected, dtype=np.int16) - np.asarray(grey, dtype=np.int16)).max() <= 1
    black = Image.new("RGB", (8, 8))
    assert np.asarray(shades_of_gray(black)).max() == 0


def test_model_input_with_colour_constancy_resizes_like_the_processor_and_none_is_untouched():
    processor = build_image_processor(64)
    image = Image.open(real_images("test", "benign", 1)[0]).convert("RGB")
    assert model_input(image, processor, "none") is image
    corrected = model_input(image, processor, "shades_of_gray")
    assert corrected.size == (64, 64)
    expected = shades_of_gray(image.resize((64, 64), processor.resample))
    assert np.array_equal(np.asarray(corrected), np.asarray(expected))


# ------------------------------------------------------------------ vignette augmentation and field of view


def _clean_benign_images(count: int = 8) -> list[Image.Image]:
    images = [Image.open(path).convert("RGB") for path in real_images("test", "benign", 20)]
    clean = [image for image in images if dark_corner_count(image) == 0]
    assert len(clean) >= count, "the test needs benign images without a dermoscope's dark corners"
    return clean[:count]


def test_vignette_augmentation_draws_dark_corners_with_its_probability():
    clean = _clean_benign_images()
    no_jitter = dict(brightness=0, contrast=0, saturation=0, hue=0)

    def outputs(**options) -> list[Image.Image]:
        augment, rng = DermoscopyAugmentation(image_size=64, **options), random.Random(1)
        return [augment(image, rng) for image in clean for _ in range(6)]

    def dark_share(images) -> float:
        return float(np.mean([has_dark_corners(image) for image in images]))

    vignetted = outputs(vignette=1.0, **no_jitter)
    # Every circle blackens a corner at least; the largest ones (radius up to 0.65 of the side, the
    # corners are at 0.71) only one, which the detector, asking for two, does not count.
    assert all(dark_corner_count(image) >= 1 for image in vignetted)
    assert dark_share(vignetted) >= 0.9
    # Colour jitter comes after the circle and may lift its black a little, rarely past the detector's level.
    assert dark_share(outputs(vignette=1.0)) >= 0.8
    # Without the vignette, the whole frame of a benign image never shows one, whatever the flips and colours.
    assert all(dark_corner_count(image) == 0 for image in outputs(vignette=0.0, crop_scale=(1.0, 1.0)))
    assert 0.3 <= dark_share(outputs(vignette=0.5, crop_scale=(1.0, 1.0), **no_jitter)) <= 0.7


def test_a_lower_crop_scale_zooms_further_in():
    image = _clean_benign_images(1)[0]
    reference = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    dihedral = [np.rot90(variant, k) for variant in (reference, reference[:, ::-1]) for k in range(4)]
    no_jitter = dict(brightness=0, contrast=0, saturation=0, hue=0)
    full = DermoscopyAugmentation(image_size=64, crop_scale=(1.0, 1.0), **no_jitter)
    rng = random.Random(0)
    for _ in range(8):
        # A square image and a crop of all of it: only the flips and rotations are left.
        output = np.asarray(full(image, rng), dtype=np.float32)
        assert min(np.abs(output - variant).max() for variant in dihedral) == 0
    zoomed = DermoscopyAugmentation(image_size=64, crop_scale=(0.2, 0.3), **no_jitter)
    for _ in range(8):
        output = np.asarray(zoomed(image, rng), dtype=np.float32)
        assert min(np.abs(output - variant).mean() for variant in dihedral) > 3


def test_model_input_resizes_then_corrects_then_masks():
    processor = build_image_processor(64)
    image = Image.open(real_images("test", "benign", 1)[0]).convert("RGB")
    assert model_input(image, processor) is image
    resized = image.resize((64, 64), processor.resample)
    masked = model_input(image, processor, field_of_view_mask=0.45)
    assert masked.size == (64, 64)
    assert np.array_equal(np.asarray(masked), np.asarray(mask_field_of_view(resized, 0.45)))
    assert has_dark_corners(masked) and not has_dark_corners(resized)
    pixels, original = np.asarray(masked, dtype=np.int16), np.asarray(resized, dtype=np.int16)
    assert pixels[0, 0].max() == 0 and np.array_equal(pixels[24:40, 24:40], original[24:40, 24:40])
    both = model_input(image, processor, "shades_of_gray", 0.45)
    assert np.array_equal(np.asarray(both), np.asarray(mask_field_of_view(shades_of_gray(resized), 0.45)))


@pytest.mark.parametrize("value,expected", [(None, 0.0), (0, 0.0), (0.45, 0.45), ("0.5", 0.5), (1, 1.0)])
def test_field_of_view_mask_of_reads_the_config(value, expected):
    config = ViTConfig(field_of_view_mask=value)
    assert field_of_view_mask_of(config) == expected


@pytest.mark.parametrize("value", [1.2, -0.1, float("nan"), "wide", [0.4], True])
def test_field_of_view_mask_of_refuses_bad_values(value):
    with pytest.raises(ValueError, match="field_of_view_mask"):
        field_of_view_mask_of(ViTConfig(field_of_view_mask=value))


def test_field_of_view_mask_of_a_config_without_one_is_off():
    assert field_of_view_mask_of(ViTConfig()) == 0.0


def test_balanced_vignette_probabilities_equalise_the_classes():
    natural = (0.02, 0.44)
    probabilities = balanced_vignette_probabilities(natural, 0.5)
    totals = [rate + (1 - rate) * p for rate, p in zip(natural, probabilities)]
    assert probabilities[1] == pytest.approx(0.5) and totals[0] == pytest.approx(totals[1])
    assert balanced_vignette_probabilities((0.1, 0.1), 0.3) == pytest.approx((0.3, 0.3))


def test_vignette_is_drawn_at_the_rate_of_the_image_label():
    image = Image.new("RGB", (64, 64), (200, 150, 140))
    augment = DermoscopyAugmentation(image_size=64, crop_scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0,
                                     vignette=0.5, vignette_by_label=(1.0, 0.0))
    rng = random.Random(0)
    with_label = [has_dark_corners(augment(image, rng, label)) for label in (0, 1) for _ in range(20)]
    assert all(with_label[:20]) and not any(with_label[20:])


def test_the_size_balanced_crop_makes_benign_lesions_fill_the_frame_like_melanomas():
    """On real images: after the ordinary crop a melanoma fills more of the frame than a benign lesion; the
    size-balanced crop brings the benign lesions' share up to theirs, so size stops separating the classes."""
    from melanoma_screen.skin import lesion_extent
    from melanoma_screen.transforms import cropped_lesion_shares

    benign = [load_rgb_image(path) for path in real_images("test", "benign", 4)]
    malignant = [load_rgb_image(path) for path in real_images("test", "malignant", 4)]
    rng = random.Random(0)
    targets = cropped_lesion_shares([lesion_extent(image).share for image in malignant], (0.25, 1.0), rng)
    assert len(targets) == 101 and list(targets) == sorted(targets)
    augment = DermoscopyAugmentation(image_size=128, crop_scale=(0.25, 1.0), lesion_share_by_label=(targets, None))

    def median_share(images, crop):
        shares = [getattr(lesion_extent(crop(image)), "share", 0.0) for image in images for _ in range(8)]
        return float(np.median(shares))

    ordinary_benign = median_share(benign, lambda image: augment.random_resized_crop(image, rng))
    ordinary_malignant = median_share(malignant, lambda image: augment.random_resized_crop(image, rng))
    balanced_benign = median_share(benign, lambda image: augment.size_balanced_crop(image, rng, targets))
    assert ordinary_benign < ordinary_malignant
    assert balanced_benign > ordinary_benign
    assert abs(balanced_benign - ordinary_malignant) < ordinary_malignant - ordinary_benign
    # The label picks the crop: a malignant image (None) gets the ordinary one.
    out = augment(benign[0], random.Random(1), 1)
    assert out.size == (128, 128)
