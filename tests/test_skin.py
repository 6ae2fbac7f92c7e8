"""melanoma_screen.skin on real dermoscopy: the lesion mask, the skin colour, its normalisation and recolouring."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

import evaluate_model
from conftest import real_images
from melanoma_screen import skin
from melanoma_screen.images import load_rgb_image
from melanoma_screen.inference import FAST, ModelLoadError, ScreeningModel
from melanoma_screen.transforms import DermoscopyAugmentation, build_image_processor, model_input

REFERENCE = (216.0, 170.0, 166.0)


@pytest.fixture(scope="module")
def lesions():
    return [load_rgb_image(path) for path in real_images("test", "benign", 4) + real_images("test", "malignant", 4)]


def test_the_lesion_is_darker_in_blue_than_its_skin_and_sits_in_the_frame(lesions):
    for image in lesions:
        masks = skin.lesion_and_skin_masks(image)
        assert masks.lesion.shape == masks.skin.shape == (image.height, image.width)
        assert masks.method == "outside lesion"
        assert not (masks.lesion & masks.skin).any()
        assert 0.005 < masks.lesion.mean() < 0.9 and masks.skin.mean() > skin.MIN_SKIN_FRACTION
        blue = np.asarray(image)[..., 2].astype(float)
        assert blue[masks.lesion].mean() < blue[masks.skin].mean() - 15


def test_masks_of_a_large_photo_are_computed_small_and_match(lesions):
    image = lesions[0]
    large = image.resize((image.width * 4, image.height * 4), Image.Resampling.BICUBIC)
    small_colour, large_colour = skin.skin_colour(image), skin.skin_colour(large)
    assert np.abs(small_colour - large_colour).max() < 4


def test_fallbacks_without_a_lesion_or_without_skin():
    plain = Image.new("RGB", (120, 120), (220, 180, 170))
    masks = skin.lesion_and_skin_masks(plain)
    assert masks.method == "no lesion found" and masks.skin.all() and not masks.lesion.any()
    assert np.allclose(skin.skin_colour(plain), (220, 180, 170))
    black = Image.new("RGB", (50, 50), (5, 5, 5))
    assert skin.lesion_and_skin_masks(black).method == "none" and skin.skin_colour(black) is None
    # Nothing to normalise to: the picture is left exactly as it was.
    assert np.array_equal(np.asarray(skin.normalise_skin_colour(black, REFERENCE)), np.asarray(black))
    assert np.array_equal(np.asarray(skin.recolour_skin(black, (200, 100, 100))), np.asarray(black))


def test_normalised_skin_takes_the_reference_colour(lesions):
    low, high = skin.GAIN_BOUNDS
    reachable = 0
    for image in lesions:
        cast = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) * (1.1, 1.0, 0.85), 0, 255).astype(np.uint8))
        within = {}
        for name, picture in (("image", image), ("cast", cast)):
            needed = np.asarray(REFERENCE) / skin.skin_colour(picture)
            within[name] = (needed >= low) & (needed <= high)
            error = np.abs(skin.skin_colour(skin.normalise_skin_colour(picture, REFERENCE)) - REFERENCE)
            # A channel that needs a gain past GAIN_BOUNDS is corrected only as far as the bound
            # (e.g. dark skin under a warm cast, in examples/): the others still reach the reference.
            assert error[within[name]].max(initial=0) < 10, (name, needed, error)
            reachable += int(within[name].all())
        if within["image"].all() and within["cast"].all():
            # The same lesion under another white balance comes out (nearly) the same.
            a = np.asarray(skin.normalise_skin_colour(image, REFERENCE), dtype=float)
            b = np.asarray(skin.normalise_skin_colour(cast, REFERENCE), dtype=float)
            assert np.abs(a - b).mean() < 4
    assert reachable >= len(lesions)  # most pictures need no gain past the bounds: the check above is not empty


def test_recolour_moves_the_skin_and_leaves_the_lesion(lesions):
    from scipy import ndimage
    target = skin.PROBE_TARGETS["whiter_yellower"]
    for image in lesions:
        masks = skin.lesion_and_skin_masks(image)
        recoloured = skin.recolour_skin(image, target, masks)
        pixels, moved = np.asarray(image, dtype=float), np.asarray(recoloured, dtype=float)
        # Within what saturating the brightest skin pixels at 255 allows.
        before, after = (np.abs(values[masks.skin].mean(axis=0) - target).max() for values in (pixels, moved))
        assert after < 20 and (after < before / 2 or after < 8)
        core = ndimage.binary_erosion(masks.lesion, iterations=12)  # past the feathered edge
        if core.any():
            assert np.abs(moved[core] - pixels[core]).mean() < 3


def test_reference_colour_is_the_median_over_images(lesions):
    colours = np.stack([skin.skin_colour(image) for image in lesions])
    reference = skin.reference_skin_colour(lesions)
    assert np.allclose(reference, np.median(colours, axis=0), atol=0.06)
    # Callables are loaded lazily: the same answer.
    assert skin.reference_skin_colour([lambda image=image: image for image in lesions]) == reference
    with pytest.raises(ValueError, match="no image had skin"):
        skin.reference_skin_colour([Image.new("RGB", (20, 20))])


def test_skin_recolour_augmentation_changes_the_skin_of_some_draws(lesions):
    augment = DermoscopyAugmentation(image_size=64, crop_scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0,
                                     skin_recolour=1.0)
    plain = DermoscopyAugmentation(image_size=64, crop_scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0)
    image = lesions[0]
    colours = [skin.skin_colour(augment(image, random.Random(seed))) for seed in range(6)]
    base = [skin.skin_colour(plain(image, random.Random(seed))) for seed in range(6)]
    assert np.std(np.stack(colours), axis=0).max() > 3 * max(np.std(np.stack(base), axis=0).max(), 1.0)


# ------------------------------------------------------------------ the model path


@pytest.fixture(scope="module")
def skin_model_dir(tiny_model_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("skinref") / "m"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "config.json").read_text())
    config.update(color_constancy="skin_reference", skin_reference_rgb=list(REFERENCE))
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_skin_reference_is_applied_on_every_path(skin_model_dir):
    model = ScreeningModel.load(str(skin_model_dir))
    assert model.color_constancy == "skin_reference" and model.skin_reference == REFERENCE
    paths = real_images("test", "benign", 2) + real_images("test", "malignant", 2)
    photos = [load_rgb_image(path) for path in paths]
    expected_inputs = [skin.normalise_skin_colour(photo.resize((64, 64), model.image_processor.resample), REFERENCE)
                       for photo in photos]
    reference = model.image_processor(expected_inputs, return_tensors="pt")["pixel_values"]
    assert float((model.preprocess(photos) - reference).abs().max()) < 1e-5
    classifier = pipeline("image-classification", model=str(skin_model_dir), device="cpu")
    for path, photo, image in zip(paths, photos, expected_inputs):
        assert np.array_equal(np.asarray(model.pipeline_input(path)), np.asarray(image))
        expected = {row["label"]: row["score"] for row in classifier(model.pipeline_input(path))}["malignant"]
        assert abs(model.predict(photo).malignant_probability - expected) < 1e-4
    fast = ScreeningModel.load(str(skin_model_dir), **FAST)
    assert float((fast.preprocess(photos) - reference).abs().max()) < 1e-5
    assert model_input(photos[0], build_image_processor(64), "skin_reference", skin_reference=REFERENCE).size == (64, 64)


@pytest.mark.parametrize("value", [None, [1, 2], "pink", [0, 300, 20]])
def test_a_bad_skin_reference_is_a_clear_load_error(skin_model_dir, tmp_path, value):
    copy = tmp_path / "odd"
    shutil.copytree(skin_model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["skin_reference_rgb"] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="skin_reference_rgb"):
        ScreeningModel.load(str(copy))


def test_skin_colour_probe_in_both_directions(tiny_model_dir):
    model = ScreeningModel.load(str(tiny_model_dir))
    paths = real_images("test", "benign", 3) + real_images("test", "malignant", 3)
    labels = np.asarray([0, 0, 0, 1, 1, 1])
    clean = evaluate_model.score(model, paths)
    probes = evaluate_model.shortcut_probes(model, paths, labels, clean)["skin_colour"]
    assert set(probes) == set(skin.PROBE_TARGETS)
    for direction, probe in probes.items():
        assert probe["target_rgb"] == list(skin.PROBE_TARGETS[direction])
        for name in ("benign", "malignant"):
            row = probe[name]
            assert row["n"] == 3
            assert row["mean_p_malignant_before"] == pytest.approx(clean[labels == (name == "malignant")].mean(), abs=1e-6)
            recoloured = [skin.recolour_skin(load_rgb_image(path), skin.PROBE_TARGETS[direction])
                          for path, label in zip(paths, labels) if label == (name == "malignant")]
            after = np.mean([p.malignant_probability for p in model.predict_batch(recoloured)])
            assert row["mean_p_malignant_after"] == pytest.approx(after, abs=1e-6)


def test_lesion_extent_boxes_the_lesion_mask_at_the_image_size(lesions):
    for image in lesions:
        extent = skin.lesion_extent(image)
        masks = skin.lesion_and_skin_masks(image)
        assert extent.share == pytest.approx(masks.lesion.mean(), abs=0.01)
        rows, cols = np.flatnonzero(masks.lesion.any(axis=1)), np.flatnonzero(masks.lesion.any(axis=0))
        left, top, right, bottom = extent.box
        assert abs(left - cols[0]) <= 3 and abs(top - rows[0]) <= 3
        assert abs(right - cols[-1] - 1) <= 3 and abs(bottom - rows[-1] - 1) <= 3
    assert skin.lesion_extent(Image.new("RGB", (80, 80), (210, 170, 160))) is None  # nothing darker stands out
    assert skin.lesion_extent(Image.new("RGB", (80, 80), (0, 0, 0))) is None        # nothing but a black field


def test_a_crop_around_the_lesion_keeps_all_of_it_when_it_fits(lesions):
    image = lesions[0]
    extent = skin.lesion_extent(image)
    left, top, right, bottom = extent.box
    rng = random.Random(3)
    for _ in range(20):
        x0, y0, x1, y1 = skin.crop_around_lesion(image, 0.5, 1.0, rng, extent)
        assert 0 <= x0 and 0 <= y0 and x1 <= image.width and y1 <= image.height
        assert (x1 - x0) * (y1 - y0) == pytest.approx(0.5 * image.width * image.height, rel=0.02)
        assert x0 <= left and y0 <= top and x1 >= right and y1 >= bottom


def test_magnifying_the_lesion_makes_it_fill_more_of_the_frame(lesions):
    for image in lesions[:4]:
        before = skin.lesion_extent(image).share
        magnified = skin.magnify_lesion(image, 1.5)
        assert magnified.size == image.size
        assert skin.lesion_extent(magnified).share > 1.5 * before


def test_lesion_size_probe_scores_each_class_with_its_lesion_magnified(tiny_model_dir):
    model = ScreeningModel.load(str(tiny_model_dir))
    paths = real_images("test", "benign", 2) + real_images("test", "malignant", 2)
    labels = np.asarray([0, 0, 1, 1])
    clean = evaluate_model.score(model, paths)
    probe = evaluate_model.shortcut_probes(model, paths, labels, clean)["lesion_size"]
    assert probe["magnification"] == evaluate_model.LESION_MAGNIFICATION
    for name, label in (("benign", 0), ("malignant", 1)):
        magnified = [skin.magnify_lesion(load_rgb_image(path), evaluate_model.LESION_MAGNIFICATION)
                     for path, y in zip(paths, labels) if y == label]
        after = np.mean([p.malignant_probability for p in model.predict_batch(magnified)])
        assert probe[name]["n"] == 2
        assert probe[name]["mean_p_malignant_after"] == pytest.approx(after, abs=1e-6)
