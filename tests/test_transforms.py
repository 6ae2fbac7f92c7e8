"""Training augmentation: output size, variety across workers and epochs, and label-safe colour."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from conftest import real_images
from melanoma_screen.transforms import (
    DermoscopyAugmentation, augmentation_rng, build_image_processor, color_constant_input, shades_of_gray,
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


def test_color_constant_input_resizes_like_the_processor_and_none_is_untouched():
    processor = build_image_processor(64)
    image = Image.open(real_images("test", "benign", 1)[0]).convert("RGB")
    assert color_constant_input(image, processor, "none") is image
    corrected = color_constant_input(image, processor, "shades_of_gray")
    assert corrected.size == (64, 64)
    expected = shades_of_gray(image.resize((64, 64), processor.resample))
    assert np.array_equal(np.asarray(corrected), np.asarray(expected))
