"""Training augmentation: output size, variety across workers and epochs, and label-safe colour."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from conftest import real_images
from melanoma_screen.transforms import DermoscopyAugmentation, augmentation_rng, build_image_processor


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
