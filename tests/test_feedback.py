import io
import json
from pathlib import Path

import huggingface_hub
import pytest
from PIL import Image

from melanoma_screen import feedback
from melanoma_screen.feedback import FeedbackStore, strip_metadata
from melanoma_screen.images import ImageLoadError, load_rgb_image
from melanoma_screen.inference import ScreeningModel

from conftest import real_images

PREDICTION = {"label": "benign", "probabilities": {"benign": 0.8, "malignant": 0.2}, "risk_level": "low",
              "screening_threshold": 0.3, "high_risk_threshold": 0.7, "model_id": "vit-melanoma"}


def files_under(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture
def jpeg_with_exif():
    """A real lesion photo as a JPEG carrying camera, time and GPS tags and a colour profile."""
    photo = load_rgb_image(real_images("test", "malignant", 1)[0])
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"  # Make
    exif[0x0110] = "SecretModel"  # Model
    exif[0x0132] = "2024:05:01 10:11:12"  # DateTime
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 24.0)  # latitude
    gps[3], gps[4] = "E", (2.0, 21.0, 3.0)  # longitude
    buffer = io.BytesIO()
    # PIL copies an ICC profile into a PNG by itself; profiles can name the device.
    photo.save(buffer, format="JPEG", exif=exif, quality=95, icc_profile=b"SecretDeviceProfile" * 8)
    data = buffer.getvalue()
    reread = Image.open(io.BytesIO(data)).getexif()
    assert reread[0x010F] == "SecretCameraMaker" and reread.get_ifd(0x8825)  # the input really has them
    assert Image.open(io.BytesIO(data)).info["icc_profile"].startswith(b"SecretDeviceProfile")
    return data


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_nothing_is_written_by_constructing_or_predicting(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEEDBACK_DIR", raising=False)
    store = FeedbackStore()
    assert store.folder == Path("feedback")
    explicit = FeedbackStore(tmp_path / "reports", hub_dataset_id="someone/feedback")
    model = ScreeningModel.load(str(tiny_model_dir))
    model.predict(real_images("test", "benign", 1)[0])
    model.explain(real_images("test", "benign", 1)[0])
    assert files_under(tmp_path) == []
    assert store.count() == 0 and explicit.count() == 0


def test_feedback_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDBACK_DIR", str(tmp_path / "from-env"))
    assert FeedbackStore().folder == tmp_path / "from-env"


def test_report_writes_image_and_json(tmp_path, jpeg_with_exif):
    store = FeedbackStore(tmp_path / "reports")
    record_id = store.report(jpeg_with_exif, PREDICTION, "malignant", comment="biopsy said melanoma", version="abc123def456")
    assert files_under(tmp_path / "reports") == [record_id, f"{record_id}/image.png", f"{record_id}/report.json"]
    report = json.loads((tmp_path / "reports" / record_id / "report.json").read_text())
    assert set(report) == {"id", "time", "prediction", "true_label", "comment", "model_id", "version"}
    assert report["id"] == record_id and report["time"].endswith("+00:00")
    assert report["prediction"] == PREDICTION and report["true_label"] == "malignant"
    assert report["comment"] == "biopsy said melanoma"
    assert (report["model_id"], report["version"]) == ("vit-melanoma", "abc123def456")
    stored = Image.open(tmp_path / "reports" / record_id / "image.png")
    assert stored.format == "PNG" and stored.mode == "RGB"
    assert stored.tobytes() == load_rgb_image(jpeg_with_exif).tobytes()  # the same pixels, losslessly
    assert store.count() == 1
    second = store.report(jpeg_with_exif, PREDICTION, None)
    assert second != record_id and store.count() == 2
    assert json.loads((tmp_path / "reports" / second / "report.json").read_text())["true_label"] == "unknown"


def test_stored_png_has_no_exif_or_other_metadata(tmp_path, jpeg_with_exif):
    store = FeedbackStore(tmp_path)
    record_id = store.report(jpeg_with_exif, PREDICTION, "benign")
    path = tmp_path / record_id / "image.png"
    data = path.read_bytes()
    for marker in (b"eXIf", b"Exif", b"tEXt", b"iTXt", b"zTXt", b"iCCP", b"SecretCameraMaker", b"SecretModel"):
        assert marker not in data, marker
    stored = Image.open(path)
    assert not stored.getexif() and "exif" not in stored.info and "icc_profile" not in stored.info


def test_strip_metadata_keeps_pixels_only(jpeg_with_exif):
    image = Image.open(io.BytesIO(jpeg_with_exif))
    image.info["icc_profile"] = b"fake profile"
    clean = strip_metadata(image)
    assert clean.info == {} and not clean.getexif()
    assert clean.tobytes() == image.tobytes() and clean.size == image.size
    palette = image.convert("P")
    assert strip_metadata(palette).convert("RGB").tobytes() == palette.convert("RGB").tobytes()


def test_invalid_label_and_bad_image_write_nothing(tmp_path, jpeg_with_exif):
    store = FeedbackStore(tmp_path)
    with pytest.raises(ValueError, match="true_label"):
        store.report(jpeg_with_exif, PREDICTION, "melanoma?")
    with pytest.raises(ImageLoadError):
        store.report(b"not an image", PREDICTION, "benign")
    assert files_under(tmp_path) == []


def test_hub_offline_keeps_the_local_copy(tmp_path, jpeg_with_exif, offline):
    store = FeedbackStore(tmp_path, hub_dataset_id="someone/melanoma-feedback", token="hf_not_a_real_token")
    record_id = store.report(jpeg_with_exif, PREDICTION, "other")
    assert (tmp_path / record_id / "image.png").is_file() and (tmp_path / record_id / "report.json").is_file()
    assert store.count() == 1
    assert "offline" in store.last_warning and str(tmp_path / record_id) in store.last_warning


def test_any_hub_error_keeps_the_local_copy(tmp_path, jpeg_with_exif, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    class BrokenApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            calls.append(kwargs)

        def upload_folder(self, **kwargs):
            raise ConnectionError("connection refused")

    monkeypatch.setattr(feedback, "HfApi", BrokenApi)
    store = FeedbackStore(tmp_path, hub_dataset_id="someone/melanoma-feedback", token="hf_x")
    record_id = store.report(jpeg_with_exif, PREDICTION, "benign")
    assert store.count() == 1 and (tmp_path / record_id / "image.png").is_file()
    assert "ConnectionError" in store.last_warning
    assert calls[0]["repo_type"] == "dataset" and calls[0]["private"] is True


def test_hub_upload_sends_both_files_to_the_dataset(tmp_path, jpeg_with_exif, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    uploads = []

    class RecordingApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, *args, **kwargs):
            pass

        def upload_folder(self, folder_path, **kwargs):
            uploads.append((sorted(p.name for p in Path(folder_path).iterdir()), kwargs, self.token))

    monkeypatch.setattr(feedback, "HfApi", RecordingApi)
    store = FeedbackStore(tmp_path, hub_dataset_id="someone/melanoma-feedback", token="hf_x")
    record_id = store.report(jpeg_with_exif, PREDICTION, "benign")
    assert store.last_warning is None
    (files, kwargs, token), = uploads
    assert files == ["image.png", "report.json"] and token == "hf_x"
    assert kwargs["repo_id"] == "someone/melanoma-feedback" and kwargs["repo_type"] == "dataset"
    assert kwargs["path_in_repo"] == record_id
