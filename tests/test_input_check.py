"""The input check: each refusal reason and each acceptance, with real dermoscopy and the generated set.

The shipped model (model/) carries a check fitted on the 10k set's training split;
the generated "not a lesion" set is benchmarks/not_lesion_set.py. The tiny session
model has too few images for bounds, which is itself tested: it then refuses nothing.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from conftest import REPO_ROOT, SHARED_DATASET, real_images
from not_lesion_set import CATEGORIES, build_not_lesion_set

from melanoma_screen import input_check, picture_statistics
from melanoma_screen.input_check_fitting import choose_thresholds, fit
from melanoma_screen.picture_statistics import FEATURES, batch_features, measure
from melanoma_screen.inference import FAST, ScreeningModel
from melanoma_screen.messages import render

MODEL_DIR = REPO_ROOT / "model"
EXAMPLES = REPO_ROOT / "examples"
DERM7PT = SHARED_DATASET.parent / "derm7pt"


@pytest.fixture(scope="module")
def shipped():
    model = ScreeningModel.load(str(MODEL_DIR), **FAST)
    assert model.input_check is not None and model.input_check.uses_features
    yield model
    model.close()


@pytest.fixture(scope="module")
def lesions():
    return [Image.open(path).convert("RGB") for path in real_images("test", "benign", 4) + real_images("test", "malignant", 4)]


def reasons(model, images) -> list:
    return [prediction.input_check.reason for prediction in model.predict_batch(images)]


# ---------------------------------------------------------------- acceptance


def test_real_dermoscopy_is_accepted(shipped):
    paths = real_images("test", "benign", 30) + real_images("test", "malignant", 30)
    verdicts = reasons(shipped, paths)
    assert verdicts.count(None) >= 57, Counter(verdicts)  # the benchmark's target is 98% of the whole split


def test_the_apps_examples_are_all_accepted(shipped):
    examples = sorted(EXAMPLES.glob("*.jpg"))
    assert reasons(shipped, examples) == [None] * len(examples)


def test_dermoscopy_from_another_clinic_is_accepted(shipped):
    if not DERM7PT.is_dir():
        pytest.skip(f"derm7pt is not at {DERM7PT}")
    paths = sorted((DERM7PT / "benign").glob("*.jpg"))[:20] + sorted((DERM7PT / "malignant").glob("*.jpg"))[:20]
    verdicts = reasons(shipped, paths)
    assert verdicts.count(None) >= 36, Counter(verdicts)  # target: 90% of derm7pt


def test_colour_casts_and_compression_are_accepted(shipped, lesions):
    # Shifts of the robustness probe (evaluate_model.SHIFTS) that the check lets through (>= 96% of the test split each).
    # A 2 px blur, 1/4 resolution and +-35% exposure are refused far more often: docs/input_check.md says so.
    import evaluate_model

    names = ("warm colour cast", "cool colour cast", "JPEG quality 20", "zoom in (70% centre crop)")
    shifted = [evaluate_model.SHIFTS[name](image) for name in names for image in lesions[:2]]
    assert reasons(shipped, shifted).count(None) >= 7


# ---------------------------------------------------------------- each refusal reason


def test_far_too_dark_is_refused_as_too_dark(shipped, lesions):
    assert set(reasons(shipped, [ImageEnhance.Brightness(image).enhance(0.25) for image in lesions])) == {"too_dark"}


def test_far_too_bright_is_refused_as_too_bright(shipped, lesions):
    verdicts = reasons(shipped, [ImageEnhance.Brightness(image).enhance(2.5) for image in lesions])
    # A pale lesion can keep a median under the bound: the benchmark counts 18 of 20 refused as too bright,
    # and the feature space may still find a washed-out lesion unfamiliar.
    assert verdicts.count("too_bright") >= 6 and set(verdicts) <= {"too_bright", "unfamiliar", None}, verdicts


def test_heavy_blur_is_refused_as_blurred(shipped, lesions):
    blurred = [image.filter(ImageFilter.GaussianBlur(12)) for image in lesions]
    assert set(reasons(shipped, blurred)) == {"blurred"}


def test_plain_skin_and_blank_frames_are_refused_as_no_lesion(shipped):
    rng = np.random.default_rng(1)
    skin = np.asarray([200, 160, 130], np.float32) + rng.normal(0, 2, (300, 300, 3))
    pictures = [Image.fromarray(np.clip(skin, 0, 255).astype(np.uint8)), Image.new("RGB", (300, 300), (230, 190, 160))]
    assert reasons(shipped, pictures) == ["no_lesion", "no_lesion"]


def test_a_page_of_text_is_refused_as_not_skin_and_a_black_and_white_photo_as_colourless(shipped):
    pictures = {sample.name: sample.image for sample in build_not_lesion_set() if sample.name in ("skimage-camera", "text-2")}
    verdicts = dict(zip(pictures, reasons(shipped, list(pictures.values()))))
    # Light text on a dark page is all fine edges, whatever its colours; dark text on white is first refused as too bright.
    assert verdicts["text-2"] == "not_skin"
    assert verdicts["skimage-camera"] == "no_colour"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_48_bit(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), from (H, W, 3) uint16."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type 2: RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_a_lesion_without_its_colours_is_refused_as_colourless_in_every_grey_format(shipped, lesions):
    grey = [image.convert("L") for image in lesions]
    sixteen_bit = [Image.fromarray(np.asarray(image, dtype=np.uint16) * 257) for image in grey]
    assert sixteen_bit[0].mode.startswith("I;16")
    with_alpha = [image.convert("LA") for image in grey]
    # RGB whose channels differ by a level or two, as a grayscale picture re-saved as a colour JPEG.
    rng = np.random.default_rng(0)
    nearly_grey = [Image.fromarray(np.clip(np.asarray(image.convert("RGB"), np.int16) + rng.integers(-2, 3, (1, 1, 3)),
                                           0, 255).astype(np.uint8)) for image in grey]
    for pictures in (grey, sixteen_bit, with_alpha, nearly_grey):
        # Through PNG files, as an upload arrives, so the decoder's handling of each mode is part of the test.
        predictions = shipped.predict_batch([png_bytes(picture) for picture in pictures])
        assert [p.input_check.reason for p in predictions] == ["no_colour"] * len(pictures), pictures[0].mode
    message = shipped.predict(png_bytes(grey[0])).to_json()
    assert message["reason"] == "no_colour" and "colour" in message["error"]
    assert render("no_colour", lang="fr").startswith("Cette image n'a pas de couleurs")


def test_a_colour_16_bit_png_is_decoded_and_scored_as_its_8_bit_original(shipped, lesions):
    for lesion in lesions[:4]:
        original = np.asarray(lesion)
        deep = shipped.predict(png_48_bit(original.astype(np.uint16) * 257))
        assert shipped.decode(png_48_bit(original.astype(np.uint16) * 257)).mode == "RGB"
        assert np.array_equal(np.asarray(shipped.decode(png_48_bit(original.astype(np.uint16) * 257))), original)
        eight_bit = shipped.predict(png_bytes(lesion))
        assert deep.input_check.reason == eight_bit.input_check.reason
        assert deep.malignant_probability == pytest.approx(eight_bit.malignant_probability, abs=1e-6)
    # The app's examples are all accepted, so the first ones are scored, not refused.
    assert not shipped.predict(png_48_bit(np.asarray(lesions[0]).astype(np.uint16) * 257)).refused


def test_a_picture_far_from_the_training_images_is_refused_as_unfamiliar(shipped):
    # Coloured photographs that pass every image statistic: only the feature-space distance catches them.
    # (Photographs of objects and scenes too: the image statistics added for the live camera now refuse
    # the textures and drawings of "photo", "noise" and "gradient" that the distance alone used to catch.)
    samples = [sample for sample in build_not_lesion_set()
               if sample.category in ("object", "room or scene", "photo", "noise", "gradient")]
    measured = measure(shipped, [sample.image for sample in samples], progress=False)
    verdicts = shipped.input_check.judge(measured["features"], measured["embeddings"])
    unfamiliar = [v for v in verdicts if v.reason == "unfamiliar"]
    assert unfamiliar, "no picture was refused by the feature space alone"
    for verdict in unfamiliar:
        assert verdict.details["statistic"] in ("distance", "spread") and "bound" not in verdict.details
        assert verdict.details[verdict.details["statistic"]] > verdict.details["threshold"]


def test_a_portrait_whose_mean_token_looks_ordinary_is_refused_by_the_spread_of_its_patches(shipped):
    # The mean patch token of a person's photograph lies among the lesions' (why a portrait passed
    # the distance); its patches spread far more than a lesion's.
    people = [sample for sample in build_not_lesion_set() if sample.category == "person"]
    measured = measure(shipped, [sample.image for sample in people], progress=False)
    check = shipped.input_check
    assert check.uses_spread
    distances, spreads = check.distance(measured["embeddings"]), check.spread(measured["embeddings"])
    assert (spreads > check.spread_threshold).any() and (distances[spreads > check.spread_threshold] <= check.threshold).any()
    assert [v.reason for v in check.judge(measured["features"], measured["embeddings"])].count(None) <= 1


# The people of the generated set whose face the detector finds: the close-up crops, and the whole Grace Hopper
# photograph (found since the window sizes are 1.25 apart). The astronaut's whole photograph is refused by the
# spread, the camera man as colourless.
FACES = ("skimage-astronaut-face", "matplotlib-grace_hopper-face", "matplotlib-grace_hopper")


def test_a_face_is_refused_as_not_skin_without_the_feature_space_and_real_lesions_show_none(shipped):
    people = [sample for sample in build_not_lesion_set() if sample.name in FACES]
    assert sorted(sample.name for sample in people) == sorted(FACES)
    # The same bounds without the distance and the spread: the face alone must refuse them, whatever the weights.
    statistics_only = input_check.InputCheck(shipped.input_check.lower, shipped.input_check.upper)
    assert not statistics_only.uses_features
    measured = measure(shipped, [sample.image for sample in people], progress=False)
    verdicts = statistics_only.judge(measured["features"])
    assert [(v.reason, v.details.get("statistic")) for v in verdicts] == [("not_skin", "face")] * len(people), verdicts
    index = FEATURES.index("face")
    assert (measured["features"][:, index] >= picture_statistics.FACE_SHARE).all()
    lesions = measure(shipped, real_images("test", "benign", 20) + real_images("test", "malignant", 20), progress=False)
    assert (lesions["features"][:, index] == 0).all(), lesions["features"][:, index]


def test_a_check_fitted_before_the_face_statistic_keeps_its_bounds_and_gains_the_fixed_face_bound(tmp_path, caplog):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    stored = MODEL_DIR / input_check.STATS_FILE
    with safe_open(str(stored), framework="numpy") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(stored))
    kept = [i for i, name in enumerate(FEATURES) if name != "face"]
    tensors["lower"], tensors["upper"] = tensors["lower"][kept], tensors["upper"][kept]
    metadata["features"] = json.dumps([FEATURES[i] for i in kept])
    save_file(tensors, str(tmp_path / input_check.STATS_FILE), metadata=metadata)
    old = input_check.InputCheck.load(tmp_path)
    assert "fitted without the statistics that came later (face)" in caplog.text
    current = input_check.InputCheck.load(MODEL_DIR)
    assert old.uses_spread and np.array_equal(old.lower, current.lower, equal_nan=True)
    assert np.array_equal(old.upper, current.upper, equal_nan=True) and old.upper[FEATURES.index("face")] == 0


def test_the_generated_not_a_lesion_set_is_mostly_refused(shipped):
    samples = build_not_lesion_set(real_images("test", "benign", 10) + real_images("test", "malignant", 10))
    assert {sample.category for sample in samples} == set(CATEGORIES)
    verdicts = reasons(shipped, [sample.image for sample in samples])
    by_category = Counter(zip([s.category for s in samples], verdicts))
    # What a live camera shows between good frames: benchmarks/input_check.py reports them per category.
    live_camera = {"motion-blurred lesion", "defocused lesion", "lesion half out of frame", "fingers", "fabric",
                   "outdoor scene"}
    uploads = [verdict for sample, verdict in zip(samples, verdicts) if sample.category not in live_camera]
    refused = sum(verdict is not None for verdict in uploads) / len(uploads)
    # benchmarks/input_check.py measures it against the 95% target; this guards against a collapse.
    assert refused >= 0.9, by_category
    # A defocused lesion has (nearly always) no sharp edge left, and a sky and grass are no skin colour.
    defocused = sum(s.category == "defocused lesion" for s in samples)
    assert by_category[("defocused lesion", "blurred")] >= 0.9 * defocused, by_category
    assert by_category[("outdoor scene", None)] == 0 and by_category[("outdoor scene", "not_skin")] > 0, by_category
    # Motion blur leaves the edges across its direction sharp; the smear statistic catches the strongest.
    assert by_category[("motion-blurred lesion", "blurred")] > 0, by_category
    # Drawn fingers: every one refused (flatness and the rest). Close-ups of cloth: all but one (periodicity and
    # the rest; the model shipped on 2026-12-05 lets one weave through that the model before it refused).
    assert by_category[("fingers", None)] == 0 and by_category[("fabric", None)] <= 1, by_category


def test_flat_surfaces_and_woven_cloth_are_refused_as_not_skin_and_real_lesions_are_neither(shipped, lesions):
    samples = [s for s in build_not_lesion_set() if s.category in ("fingers", "fabric")]
    predictions = shipped.predict_batch([sample.image for sample in samples])
    tripped = Counter((sample.category, p.input_check.details.get("statistic"))
                      for sample, p in zip(samples, predictions) if p.input_check.reason == "not_skin")
    # Each statistic refuses pictures that no earlier rule did (the first rule that trips names the reason).
    assert tripped[("fingers", "flatness")] >= 3 and tripped[("fabric", "periodicity")] >= 3, tripped
    check = shipped.input_check
    pictures = np.stack([np.asarray(image.resize((128, 128), Image.Resampling.BILINEAR)) for image in lesions])
    features = batch_features(pictures)
    for name in ("flatness", "periodicity"):
        index = FEATURES.index(name)
        assert (features[:, index] < check.upper[index]).all(), (name, features[:, index], check.upper[index])
    # The same lesions seen through a weave (a cloth's period of 3 px at the model's size) are over it.
    y, x = np.mgrid[0:128, 0:128]
    weave = (0.8 + 0.2 * np.sin(2 * np.pi * x / 3) * np.sin(2 * np.pi * y / 3))[None, ..., None]
    woven = np.clip(pictures * weave, 0, 255).astype(np.uint8)
    index = FEATURES.index("periodicity")
    assert (batch_features(woven)[:, index] > check.upper[index]).all()


def test_a_straight_camera_shake_leaves_a_streak_that_real_lesions_do_not(shipped, lesions):
    from scipy.ndimage import uniform_filter1d

    check = shipped.input_check
    index = FEATURES.index("streak")
    pictures = np.stack([np.asarray(image.resize((128, 128), Image.Resampling.BILINEAR)) for image in lesions])
    assert (batch_features(pictures)[:, index] < check.upper[index]).all()
    # Shaken along each axis by 8% of the frame, before the resize as a camera would: the sinc's evenly
    # spaced zeros make the cepstrum's dip, whatever detail the lesion has (the smear needs detail).
    for axis in (0, 1):
        shaken = [Image.fromarray(np.clip(uniform_filter1d(np.asarray(image, np.float32), size=int(0.08 * image.size[0]),
                                                           axis=axis, mode="reflect"), 0, 255).astype(np.uint8))
                  for image in lesions]
        shaken = np.stack([np.asarray(image.resize((128, 128), Image.Resampling.BILINEAR)) for image in shaken])
        assert (batch_features(shaken)[:, index] > check.upper[index]).mean() >= 0.75, batch_features(shaken)[:, index]


def test_every_reason_has_an_english_and_a_french_sentence():
    for reason in input_check.REASONS:
        english, french = render(reason, lang="en"), render(reason, lang="fr")
        assert english.endswith(".") and french.endswith(".") and english != french


# ---------------------------------------------------------------- fitting and storage


# Patch tokens shaped like production's, (pictures, patches, width): the LeViT's are (N, 64, 192), fewer here so
# the covariances fit in a second.
PATCHES, WIDTH = 16, 8


def measurements(rng, count: int) -> dict:
    features = rng.normal(0.5, 0.1, (count, len(FEATURES)))
    features[:, FEATURES.index("face")] = 0  # no picture of a lesion holds a face
    return {"features": features,
            "embeddings": rng.normal(0, 1, (count, PATCHES, WIDTH)).astype(np.float16), "labels": np.arange(count) % 2}


def test_bounds_and_thresholds_follow_the_data():
    rng = np.random.default_rng(0)
    train, validation = measurements(rng, 2000), measurements(rng, 500)
    check, report = fit(train, validation, alpha=0.001, target_acceptance=0.98)
    assert check.uses_features and check.uses_spread
    assert 0.98 <= report["validation_acceptance"] < 0.99
    assert report["distance_threshold"] == check.threshold and report["spread_threshold"] == check.spread_threshold
    index = FEATURES.index("highlights")
    assert check.lower[index] == pytest.approx(np.sort(train["features"][:, index])[1])  # floor(0.001 * 2001) = 2nd
    one = validation["embeddings"][:1].astype(np.float32)
    assert check.judge(validation["features"][:1], one)[0].ok
    assert check.judge(validation["features"][:1], one + 100)[0].details["statistic"] == "distance"
    # The same mean token, its patches scattered ten times wider: only the spread tells it from a lesion.
    scattered = one.mean(axis=1, keepdims=True) + 10 * (one - one.mean(axis=1, keepdims=True))
    verdict = check.judge(validation["features"][:1], scattered)[0]
    assert verdict.reason == "unfamiliar" and verdict.details["statistic"] == "spread"
    assert verdict.details["distance"] <= check.threshold


def test_faces_found_in_validation_pictures_refuse_them_without_moving_the_feature_space_thresholds():
    rng = np.random.default_rng(0)
    train, validation = measurements(rng, 2000), measurements(rng, 500)
    _, without_faces = fit(train, validation, alpha=0.001, target_acceptance=0.98)
    validation["features"][:3, FEATURES.index("face")] = 0.5
    _, with_faces = fit(train, validation, alpha=0.001, target_acceptance=0.98)
    for name in ("distance_threshold", "spread_threshold"):
        assert with_faces[name] == without_faces[name]
    assert with_faces["validation_acceptance"] < without_faces["validation_acceptance"]
    assert with_faces["bounds"]["face"] == {"low": None, "high": 0.0}


def test_the_two_thresholds_share_one_rank_and_spend_only_what_the_statistics_left():
    # 100 validation pictures at 95%: a budget of 5 refusals, 2 of them spent by the statistics.
    stats_ok = np.ones(100, dtype=bool)
    stats_ok[:2] = False
    distances = np.arange(100, dtype=float)
    # The same pictures furthest by both: each rank refuses one more, so rank 3 (refusing 3) is kept.
    assert choose_thresholds(distances, distances * 2, stats_ok, 0.95) == (96.0, 192.0)
    # Different pictures furthest by each: each rank refuses two more, so rank 1 (refusing 2) is the last within 3.
    assert choose_thresholds(distances, distances[::-1].copy(), stats_ok, 0.95) == (98.0, 96.0)
    # Statistics that spent the whole budget leave the thresholds at the furthest accepted picture: no more refusals.
    stats_ok[:10] = False
    assert choose_thresholds(distances, distances * 2, stats_ok, 0.95) == (99.0, 198.0)
    # 10 pictures cannot promise 95%.
    assert choose_thresholds(distances[:10], distances[:10], np.ones(10, dtype=bool), 0.95) == (None, None)


def test_one_embedding_per_picture_is_refused_since_the_spread_needs_the_patches():
    rng = np.random.default_rng(0)
    train = measurements(rng, 200)
    train["embeddings"] = train["embeddings"].mean(axis=1)
    with pytest.raises(ValueError, match="patch tokens"):
        fit(train, measurements(rng, 100))


def test_too_few_images_give_no_fitted_bounds_and_no_threshold():
    few = measurements(np.random.default_rng(0), 20)
    check, _ = fit(few, few, alpha=0.002)
    no_bounds = np.full(len(FEATURES), np.nan)
    fixed_lower, fixed_upper = input_check.with_fixed_bounds(no_bounds, no_bounds)
    assert np.array_equal(check.lower, fixed_lower, equal_nan=True)
    assert np.array_equal(check.upper, fixed_upper, equal_nan=True)
    assert check.threshold is None
    assert not check.uses_spread
    assert all(verdict.ok for verdict in check.judge(few["features"], few["embeddings"]))


def test_the_tiny_model_was_fitted_by_training_and_refuses_nothing(tiny_model_dir):
    check = input_check.InputCheck.load(tiny_model_dir)
    assert check is not None and not check.uses_features  # 2 validation images cannot set a 99% threshold
    report = json.loads((tiny_model_dir / input_check.REPORT_FILE).read_text())
    assert report["n_train"] > 0 and report["model_version"]


def test_statistics_from_other_weights_are_kept_without_the_distance(tiny_model_dir, tmp_path, caplog):
    copy = tmp_path / "tiny_with_shipped_check"
    shutil.copytree(tiny_model_dir, copy)
    shutil.copy(MODEL_DIR / input_check.STATS_FILE, copy / input_check.STATS_FILE)
    model = ScreeningModel.load(str(copy))
    assert "fitted for weights" in caplog.text
    assert model.input_check is not None and not model.input_check.uses_features
    assert model.predict(Image.new("RGB", (300, 300), (128, 128, 128))).input_check.reason is not None


def test_cli_fits_a_model_folder_from_its_stored_training_settings(tiny_model_dir, tiny_image_folder, tmp_path):
    copy = tmp_path / "refit"
    shutil.copytree(tiny_model_dir, copy)
    (copy / input_check.STATS_FILE).unlink()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "fit_input_check.py"), "fit", "--model", str(copy),
                             "--data-dir", str(tiny_image_folder)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (copy / input_check.STATS_FILE).is_file() and "input check: training split" in result.stderr
    check = subprocess.run([sys.executable, str(REPO_ROOT / "fit_input_check.py"), "check", "--model", str(copy),
                            str(EXAMPLES / "benign_1.jpg")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0 and "\tok\t" in check.stdout


@pytest.mark.parametrize("command", [[], ["fit"], ["check"]])
def test_help(command):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "fit_input_check.py"), *command, "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout


def test_the_framing_benchmark_has_help():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "input_check_framing.py"), "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--json" in result.stdout and "half out of the frame" in result.stdout


# ---------------------------------------------------------------- where the check is used


def test_predict_cli_fills_error_and_reason_for_a_refused_picture(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "benign_1.jpg", folder / "lesion.jpg")
    Image.new("RGB", (300, 300), (90, 160, 60)).save(folder / "lawn.png")
    out = tmp_path / "preds.csv"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), str(folder), "--model", str(MODEL_DIR),
                             "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import csv

    rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(out.open())}
    assert rows["lesion.jpg"]["risk_level"] and not rows["lesion.jpg"]["error"] and not rows["lesion.jpg"]["reason"]
    lawn = rows["lawn.png"]
    assert lawn["risk_level"] == "" and lawn["prob_malignant"] == ""
    assert lawn["reason"] in input_check.REASONS and lawn["error"] == render(lawn["reason"])


def test_evaluate_reports_the_refusal_rate(shipped):
    import evaluate_model

    if not SHARED_DATASET.is_dir():
        pytest.skip(f"the shared dataset is not at {SHARED_DATASET}: the rate needs more images than examples/ holds")
    scan = evaluate_model.data_prep.scan_image_folder(SHARED_DATASET, splits=("test",), progress=False)
    records = scan.records[:20] + scan.records[-20:]
    report = evaluate_model.evaluate(shipped, records)
    check = report["input_check"]
    assert check["n"] == 40 and 0.9 <= check["accepted"] <= 1.0
    assert check["accepted_pictures"]["n"] == 40 - check["refused"]
