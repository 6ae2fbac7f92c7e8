import io
import os
import subprocess
import json
import math
import shutil
import sys

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from melanoma_screen import model_folder
from melanoma_screen.calibration import softmax_probs
from melanoma_screen.images import ImageLoadError, load_rgb_image
from melanoma_screen.inference import FAST, ModelLoadError, Prediction, ScreeningModel
from melanoma_screen.transforms import shades_of_gray

from conftest import REPO_ROOT, real_images


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ScreeningModel.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def images():
    return real_images("test", "benign", 3) + real_images("test", "malignant", 3)


def jpeg_bytes(image, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ loading


def test_load_reads_folder_metadata(model, tiny_model_dir):
    assert model.model_id == tiny_model_dir.name
    assert len(model.version) == 12 and int(model.version, 16) >= 0
    assert model.image_size == 64
    assert model.eval_results is not None and "operating_points" in model.eval_results
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert model.screening_threshold == config["screening_threshold"]
    assert model.high_risk_threshold == config["high_risk_threshold"]
    assert model.temperature == 1.0  # folded into the classifier by training
    assert not model.model.training
    assert model.config._attn_implementation == "sdpa"


def test_version_changes_with_the_weights(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    original = ScreeningModel.load(str(copy)).version
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    assert ScreeningModel.load(str(copy)).version != original


def test_hub_id_offline_is_one_clear_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as caught:
        ScreeningModel.load("someone/melanoma-model-that-is-not-cached")
    message = str(caught.value)
    assert message == (
        "Could not load model 'someone/melanoma-model-that-is-not-cached' from the Hugging Face Hub (offline); "
        "pass a local folder with --model or MODEL_ID."
    )


def test_missing_folder_and_incomplete_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        ScreeningModel.load(str(tmp_path / "does not exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        ScreeningModel.load(str(tmp_path / "empty"))


def test_missing_thresholds_default_to_one_half_with_a_warning(tiny_model_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "config.json").read_text())
    for key in ("screening_threshold", "high_risk_threshold"):
        del config[key]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="screening_threshold"):
        model = ScreeningModel.load(str(copy))
    assert (model.screening_threshold, model.high_risk_threshold) == (0.5, 0.5)


def test_unfolded_temperature_is_applied(tiny_model_dir, tmp_path, images):
    copy = tmp_path / "unfolded"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "config.json").read_text())
    config.update(temperature_folded_into_classifier=False, calibration_temperature=2.0)
    (copy / "config.json").write_text(json.dumps(config))
    model = ScreeningModel.load(str(copy))
    with torch.no_grad():
        logits = model.model(pixel_values=model.preprocess([load_rgb_image(images[0])])).logits
    expected = softmax_probs(logits, 2.0)[0]
    got = model.predict(images[0]).probabilities
    np.testing.assert_allclose([got["benign"], got["malignant"]], expected, atol=1e-6)


# ------------------------------------------------------------------ predict


def test_predict_matches_transformers_pipeline(model, tiny_model_dir, images):
    classifier = pipeline("image-classification", model=str(tiny_model_dir), device="cpu")
    for path in images:
        expected = {row["label"]: row["score"] for row in classifier(str(path))}
        prediction = model.predict(path)
        assert set(prediction.probabilities) == {"benign", "malignant"}
        for label, probability in expected.items():
            assert abs(prediction.probabilities[label] - probability) < 1e-4
        assert prediction.label == max(expected, key=expected.get)
        assert prediction.malignant_probability == prediction.probabilities["malignant"]
        assert abs(sum(prediction.probabilities.values()) - 1) < 1e-9


def test_fast_preprocess_equals_image_processor(model, images):
    photo = load_rgb_image(images[0])
    batch = [photo, photo.crop((10, 20, 250, 140)), photo.resize((37, 90)), load_rgb_image(images[4])]
    fast = model.preprocess(batch)
    reference = model.image_processor(batch, return_tensors="pt")["pixel_values"]
    assert fast.dtype == torch.float32 and fast.shape == reference.shape == (4, 3, 64, 64)
    assert float((fast - reference).abs().max()) < 1e-5


def test_predict_batch_equals_predict(model, images):
    sources = [images[0], images[3].read_bytes(), Image.open(images[4]), np.asarray(Image.open(images[5]))]
    batched = model.predict_batch(sources, batch_size=3)
    assert len(batched) == len(sources)
    for source, prediction in zip(sources, batched):
        single = model.predict(source)
        assert single.label == prediction.label and single.risk_level == prediction.risk_level
        assert abs(single.malignant_probability - prediction.malignant_probability) < 1e-5


def test_to_json_has_exactly_the_documented_keys(model, images):
    prediction = model.predict(images[0])
    assert isinstance(prediction, Prediction)
    data = prediction.to_json()
    assert set(data) == {"label", "probabilities", "risk_level", "screening_threshold", "high_risk_threshold", "model_id",
                         "model_version"}
    json.dumps(data)  # plain Python types only


def test_risk_levels_at_and_around_both_thresholds(model, images, monkeypatch):
    p = model.predict(images[0]).malignant_probability
    eps = 1e-3
    cases = [
        ((p + eps, p + 2 * eps), "low"),       # below screening
        ((p, p + eps), "moderate"),            # exactly at screening
        ((p - eps, p + eps), "moderate"),      # between the two
        ((p - eps, p), "high"),                # exactly at high risk
        ((p - 2 * eps, p - eps), "high"),      # above high risk
        ((p, p), "high"),                      # empty moderate band
    ]
    for (screening, high_risk), expected in cases:
        monkeypatch.setattr(model, "screening_threshold", screening)
        monkeypatch.setattr(model, "high_risk_threshold", high_risk)
        prediction = model.predict(images[0])
        assert prediction.malignant_probability == p
        assert prediction.risk_level == expected, (screening, high_risk, p)
        assert (prediction.screening_threshold, prediction.high_risk_threshold) == (screening, high_risk)


# ------------------------------------------------------------------ inputs


def test_bad_inputs_raise_image_load_error(model, images, tmp_path):
    data = images[0].read_bytes()
    tiny = png_bytes(Image.new("RGB", (1, 1), (200, 100, 50)))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for bad in (data[: len(data) // 2], b"this is a text file, not an image\n", tiny, str(empty), None):
        with pytest.raises(ImageLoadError):
            model.predict(bad)
    with pytest.raises(ImageLoadError):
        model.predict_batch([images[0], b"not an image"])
    with pytest.raises(ImageLoadError):
        model.explain(b"not an image")


def test_exif_rotation_is_applied(model, images):
    photo = load_rgb_image(images[0]).crop((0, 0, 300, 200))  # not square, so a rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    decoded = load_rgb_image(jpeg_bytes(photo, exif=exif, quality=95))
    assert decoded.size == (200, 300)
    upright = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), dtype=np.float32)
    wrong_way = np.asarray(photo.transpose(Image.Transpose.ROTATE_90), dtype=np.float32)
    got = np.asarray(decoded, dtype=np.float32)
    assert np.abs(got - upright).mean() < 4 < np.abs(got - wrong_way).mean()
    assert model.predict(jpeg_bytes(photo, exif=exif)).label in ("benign", "malignant")


def test_unusual_image_formats_predict(model, images):
    photo = load_rgb_image(images[0])
    gray16 = Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif.getvalue())).n_frames == 2
    cases = {
        "grayscale": png_bytes(photo.convert("L")),
        "rgba": png_bytes(rgba),
        "cmyk jpeg": jpeg_bytes(photo.convert("CMYK")),
        "16-bit png": png_bytes(gray16),
        "animated gif": gif.getvalue(),
        "palette": photo.convert("P"),
        "float array": np.asarray(photo, dtype=np.float32) / 255,
    }
    assert Image.open(io.BytesIO(cases["16-bit png"])).mode.startswith("I")
    for name, source in cases.items():
        prediction = model.predict(source)
        probabilities = list(prediction.probabilities.values())
        assert np.all(np.isfinite(probabilities)) and abs(sum(probabilities) - 1) < 1e-9, name
        assert prediction.risk_level in ("low", "moderate", "high"), name


# ------------------------------------------------------------------ fast path


@pytest.fixture(scope="module")
def fast_model(tiny_model_dir):
    return ScreeningModel.load(str(tiny_model_dir), **FAST)


def test_fast_path_is_onnxruntime_int8_and_close_to_pipeline(fast_model, model, images, tiny_model_dir):
    assert (fast_model.engine, fast_model.precision) == (FAST["engine"], FAST["precision"])
    # int8 rounding happens before the folded temperature, which a tiny calibration set can push to
    # its floor (logits x20): compare the logit margin the network itself produced.
    temperature = json.loads((tiny_model_dir / "eval_results.json").read_text())["calibration_temperature"]

    def network_margin(probability: float) -> float:
        probability = min(max(probability, 1e-9), 1 - 1e-9)
        return math.log(probability / (1 - probability)) * temperature

    for path in images:
        fast, exact = fast_model.predict(path), model.predict(path)
        assert abs(network_margin(fast.malignant_probability) - network_margin(exact.malignant_probability)) < 0.08
        assert abs(sum(fast.probabilities.values()) - 1) < 1e-9
    heatmap = fast_model.explain(images[0])  # heat-maps come from the float PyTorch model
    np.testing.assert_array_equal(heatmap, model.explain(images[0]))


def test_the_int8_graph_is_stored_with_the_weights_hash_and_rebuilt_when_they_change(tiny_model_dir, tmp_path, images):
    import onnxruntime

    from melanoma_screen import onnx_engine

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.int8.onnx").unlink(missing_ok=True)
    first = ScreeningModel.load(str(folder), **FAST)
    stored = folder / "model.int8.onnx"
    assert first._onnx.source == stored and stored.is_file()
    stamp = onnxruntime.InferenceSession(str(stored)).get_modelmeta().custom_metadata_map
    assert stamp["weights_version"] == first.version and stamp["graph_format"] == onnx_engine.GRAPH_FORMAT
    built = stored.stat().st_mtime_ns
    # Loaded again: the stored graph is used as it is, and scores the same.
    again = ScreeningModel.load(str(folder), **FAST)
    assert stored.stat().st_mtime_ns == built
    assert again.predict(images[0]).malignant_probability == first.predict(images[0]).malignant_probability
    # Other weights under the same name: the stamp no longer matches, and the graph is rebuilt for them.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = next(key for key in weights if key.endswith("classifier.bias"))
    weights[name] = weights[name].clone()
    weights[name][first.malignant_index] += 2.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    changed = ScreeningModel.load(str(folder), **FAST)
    assert changed.version != first.version
    stamp = onnxruntime.InferenceSession(str(stored)).get_modelmeta().custom_metadata_map
    assert stamp["weights_version"] == changed.version
    # The rebuilt graph holds the new weights: the malignant logit is 2 higher, the other unchanged.
    pixels = first.preprocess([load_rgb_image(images[0])]).numpy()
    shift = (changed._onnx.with_patch_tokens(pixels)[0] - first._onnx.with_patch_tokens(pixels)[0])[0]
    assert abs(float(shift[changed.malignant_index]) - 2.0) < 1e-3 and abs(float(shift[1 - changed.malignant_index])) < 1e-3
    # A damaged file is rebuilt, not a failure.
    stored.write_bytes(b"not an onnx graph")
    assert ScreeningModel.load(str(folder), **FAST).predict(images[0]).label in ("benign", "malignant")


def test_onnxruntime_fp32_gives_pipeline_numbers(tiny_model_dir, model, images):
    onnx = ScreeningModel.load(str(tiny_model_dir), engine="onnxruntime", precision="fp32")
    assert onnx.engine == "onnxruntime"
    for exact, fast in zip(model.predict_batch(images), onnx.predict_batch(images, batch_size=4)):
        assert abs(exact.malignant_probability - fast.malignant_probability) < 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_scores_do_not_depend_on_the_batch(tiny_model_dir, images, threads):
    previous = torch.get_num_threads()
    try:
        fast = ScreeningModel.load(str(tiny_model_dir), num_threads=threads, **FAST)
        singles = [fast.predict(path).malignant_probability for path in images]
        for batch_size in (2, 5, len(images)):
            batched = [p.malignant_probability for p in fast.predict_batch(images, batch_size=batch_size)]
            assert batched == singles  # exactly: each image is quantised on its own
    finally:
        torch.set_num_threads(previous)


def test_without_onnxruntime_the_fast_path_falls_back_to_pytorch(tiny_model_dir, images, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with caplog.at_level("WARNING"):
        fallback = ScreeningModel.load(str(tiny_model_dir), **FAST)
    assert (fallback.engine, fallback.precision) == ("torch", "int8")
    assert "ONNX Runtime unavailable" in caplog.text
    assert fallback.predict(images[0]).label in ("benign", "malignant")


def test_large_jpeg_is_decoded_at_a_reduced_scale(model, images):
    large = jpeg_bytes(load_rgb_image(images[0]).resize((1600, 1200)), quality=95)
    assert model.decode(large).size == (400, 300)  # 1/4 scale: both sides stay >= 4 x 64
    assert model.decode(images[0]).size == load_rgb_image(images[0]).size  # 300 px: never drafted
    full = model.predict_decoded([load_rgb_image(large)])[0].malignant_probability
    assert abs(model.predict(large).malignant_probability - full) < 0.01


# ------------------------------------------------------------------ colour constancy


@pytest.fixture(scope="module")
def color_constant_model_dir(tiny_model_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("sog") / "m"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "config.json").read_text())
    config["color_constancy"] = "shades_of_gray"
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_color_constancy_from_the_config_is_applied_on_every_path(color_constant_model_dir, images):
    model = ScreeningModel.load(str(color_constant_model_dir))
    assert model.color_constancy == "shades_of_gray"
    photos = [load_rgb_image(path) for path in images[:4]]
    corrected = [shades_of_gray(photo.resize((64, 64), model.image_processor.resample)) for photo in photos]
    reference = model.image_processor(corrected, return_tensors="pt")["pixel_values"]
    assert float((model.preprocess(photos) - reference).abs().max()) < 1e-5
    # pipeline on the corrected images is what the model gives for the originals.
    classifier = pipeline("image-classification", model=str(color_constant_model_dir), device="cpu")
    for path, photo, image in zip(images, photos, corrected):
        assert np.array_equal(np.asarray(model.pipeline_input(path)), np.asarray(image))
        expected = {row["label"]: row["score"] for row in classifier(image)}["malignant"]
        assert abs(model.predict(photo).malignant_probability - expected) < 1e-4
    fast = ScreeningModel.load(str(color_constant_model_dir), **FAST)
    assert fast.color_constancy == "shades_of_gray"
    assert float((fast.preprocess(photos) - reference).abs().max()) < 1e-5


def test_color_constancy_makes_scores_insensitive_to_a_colour_cast(color_constant_model_dir, model, images):
    corrected_model = ScreeningModel.load(str(color_constant_model_dir))
    shifts = {"plain": [], "corrected": []}
    for path in images:
        photo = load_rgb_image(path)
        cast = Image.fromarray(np.clip(np.asarray(photo, dtype=np.float32) * (0.85, 1.0, 1.2), 0, 255).astype(np.uint8))
        for name, scorer in (("plain", model), ("corrected", corrected_model)):
            shifts[name].append(abs(scorer.predict(photo).malignant_probability - scorer.predict(cast).malignant_probability))
    assert np.mean(shifts["corrected"]) < np.mean(shifts["plain"]) / 2, shifts


def test_unknown_color_constancy_is_a_clear_load_error(tiny_model_dir, tmp_path):
    copy = tmp_path / "odd"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "config.json").read_text())
    config["color_constancy"] = "retinex"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="color_constancy"):
        ScreeningModel.load(str(copy))


def test_the_fast_path_with_a_stored_graph_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path, images):
    """A cold start of predict.py pays for PyTorch and transformers only when it needs them (a heat-map, a rebuild)."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    reference = ScreeningModel.load(str(folder), **FAST)  # builds and stores model.int8.onnx
    expected = [p.malignant_probability for p in reference.predict_batch(images[:3])]
    script = (
        "import json, sys\n"
        "from melanoma_screen.inference import FAST, ScreeningModel\n"
        f"model = ScreeningModel.load({str(folder)!r}, **FAST)\n"
        f"scores = [p.malignant_probability for p in model.predict_batch({[str(i) for i in images[:3]]!r})]\n"
        "loaded = [name for name in ('torch', 'transformers', 'sklearn') if name in sys.modules]\n"
        "model.explain(" + repr(str(images[0])) + ")\n"
        "print(json.dumps({'scores': scores, 'loaded': loaded, 'after_heatmap': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["after_heatmap"]  # the heat-map loaded the PyTorch model on demand
    assert report["scores"] == pytest.approx(expected, abs=1e-6)


def test_a_processor_config_left_to_transformers_defaults_is_read_by_transformers(tiny_model_dir, tmp_path, images):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    ScreeningModel.load(str(folder), **FAST)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert model_folder.read_model_json(folder) is not None
    del processor["image_mean"], processor["image_std"]  # ViT's defaults are 0.5, as ours
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    assert model_folder.read_model_json(folder) is None
    model = ScreeningModel.load(str(folder), **FAST)
    assert model._image_processor is not None  # loaded eagerly, by transformers
    assert model.predict(images[0]).label in ("benign", "malignant")
