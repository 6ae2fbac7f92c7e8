"""The Gradio app: the /predict HTTP API, bad inputs, feedback, texts and start-up without a model.

The app runs in-process on a free port with the tiny session model and is called
through gradio_client, exactly as the HTTP API snippet in docs/app.md does.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATASET, free_port, wait_for_app
from odd_uploads import write_odd_uploads

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from melanoma_screen import app_views as views  # noqa: E402
from melanoma_screen.app_routes import HEALTH_ROUTE, SCREEN_ROUTE, TIMINGS_ROUTE, open_upload  # noqa: E402
from melanoma_screen.calibration import risk_level  # noqa: E402
from melanoma_screen.images import ImageLoadError  # noqa: E402
from melanoma_screen.ui_text import TEXT  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"
PREDICTION_KEYS = {"label", "probabilities", "risk_level", "screening_threshold", "high_risk_threshold", "model_id",
                   "model_version"}


def example_rows() -> list[dict]:
    with (EXAMPLES / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    """`import app` with MODEL_ID pointing at the tiny model (the Spaces way to choose one)."""
    previous = os.environ.get("MODEL_ID")
    os.environ["MODEL_ID"] = str(tiny_model_dir)
    try:
        sys.modules.pop("app", None)
        module = importlib.import_module("app")
    finally:
        if previous is None:
            os.environ.pop("MODEL_ID", None)
        else:
            os.environ["MODEL_ID"] = previous
    assert module.MODEL is not None, module.MODEL_ERROR
    return module


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feedback") / "reports"


@pytest.fixture(scope="module")
def server(app, feedback_dir):
    previous = os.environ.get("FEEDBACK_DIR")
    os.environ["FEEDBACK_DIR"] = str(feedback_dir)
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                    **app.launch_options())
    try:
        yield app.demo, f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()
        if previous is None:
            os.environ.pop("FEEDBACK_DIR", None)
        else:
            os.environ["FEEDBACK_DIR"] = previous


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def good_image() -> str:
    return str(EXAMPLES / "malignant_1.jpg")


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory, good_image) -> dict[str, Path]:
    """Inputs people upload by accident or on purpose, made from a real dermoscopic image."""
    files = write_odd_uploads(tmp_path_factory.mktemp("odd_inputs"), Path(good_image))
    assert Image.open(files["sixteen_bit"]).mode == "I;16"
    assert Image.open(files["cmyk"]).mode == "CMYK"
    assert Image.open(files["animated"]).is_animated
    return files


BAD_INPUTS = {  # file -> words the message must contain
    "not_an_image": "not an image",
    "text_named_jpg": "not an image",
    "truncated": "damaged or truncated",
    "empty": "empty file",
    "bomb": "too large",
    "one_pixel": "too small",
}
BAD_INPUT_REASONS = {"not_an_image": "not_an_image", "text_named_jpg": "not_an_image", "truncated": "damaged",
                     "empty": "empty_file", "bomb": "too_large", "one_pixel": "too_small"}
ODD_BUT_VALID = ["grayscale", "transparent", "cmyk", "sixteen_bit", "exif_rotated", "animated"]


def assert_prediction(result: dict, model) -> None:
    assert set(result) == PREDICTION_KEYS, result
    probabilities = result["probabilities"]
    assert set(probabilities) == {"benign", "malignant"}
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)
    assert result["label"] == max(probabilities, key=probabilities.get)
    assert result["screening_threshold"] == model.screening_threshold
    assert result["high_risk_threshold"] == model.high_risk_threshold
    assert result["risk_level"] == risk_level(probabilities["malignant"], result["screening_threshold"],
                                              result["high_risk_threshold"])
    assert result["model_id"] == model.model_id


# ---------------------------------------------------------------------------- the HTTP API


def test_api_exposes_only_predict(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/predict"}
    assert [p["parameter_name"] for p in endpoints["/predict"]["parameters"]] == ["image"]
    assert "filepath" in endpoints["/predict"]["parameters"][0]["python_type"]["type"]


@pytest.mark.parametrize("name", ["benign_1.jpg", "malignant_1.jpg"])
def test_predict_real_image(client, app, name):
    path = EXAMPLES / name
    result = client.predict(handle_file(str(path)), api_name="/predict")
    assert_prediction(result, app.MODEL)
    direct = app.MODEL.predict(str(path)).to_json()
    assert result["label"] == direct["label"] and result["risk_level"] == direct["risk_level"]
    for label, probability in direct["probabilities"].items():
        assert math.isclose(result["probabilities"][label], probability, abs_tol=1e-9)
    assert app.analyse(str(path)).answer == direct  # the module-level function all doors share


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_message_and_the_server_keeps_serving(client, app, server, odd_files, good_image, name):
    result = client.predict(handle_file(str(odd_files[name])), api_name="/predict")
    assert set(result) == {"error", "reason"}, result
    assert BAD_INPUTS[name] in result["error"] and "Traceback" not in result["error"]
    assert result["reason"] == BAD_INPUT_REASONS[name]
    assert_prediction(client.predict(handle_file(good_image), api_name="/predict"), app.MODEL)

    # The page's own event turns the same file into a message box, not an exception.
    probabilities, risk, heatmap, state, _ = app.show_analysis({"path": str(odd_files[name])}, "en")
    assert probabilities is None and heatmap is None and state["kind"] == "bad_image"
    assert 'data-kind="error"' in risk and BAD_INPUTS[name] in risk


@pytest.mark.parametrize("name", ODD_BUT_VALID)
def test_odd_but_valid_formats_predict(client, app, server, odd_files, name):
    result = client.predict(handle_file(str(odd_files[name])), api_name="/predict")
    assert_prediction(result, app.MODEL)
    assert result == app.MODEL.predict(str(odd_files[name])).to_json()
    probabilities, risk, heatmap, state, _ = app.show_analysis({"path": str(odd_files[name])}, "en")
    assert state["kind"] == "result" and f'data-risk="{result["risk_level"]}"' in risk
    assert isinstance(heatmap, Image.Image) and heatmap.mode == "RGB"


def test_exif_rotation_is_applied(client, odd_files):
    rotated = client.predict(handle_file(str(odd_files["exif_rotated"])), api_name="/predict")
    upright = client.predict(handle_file(str(odd_files["upright"])), api_name="/predict")
    assert rotated == upright


def test_empty_submit(client, server, good_image, app):
    result = client.predict(None, api_name="/predict")
    assert result == {"error": result["error"], "reason": "no_image"} and "No image" in result["error"]
    assert_prediction(client.predict(handle_file(good_image), api_name="/predict"), app.MODEL)
    probabilities, risk, heatmap, state, _ = app.show_analysis(None, "en")
    assert probabilities is None and state == {"kind": "no_image"} and "No image" in risk


@pytest.mark.parametrize("payload, code", [({"url": "data:image/png;base64,abc"}, "bad_data_url"), (42, "bad_upload")])
def test_an_upload_that_is_not_a_file_is_unreadable(app, payload, code):
    with pytest.raises(ImageLoadError) as caught:
        open_upload(payload, app.MODEL.decode)
    assert caught.value.code == code
    assert app.predict(payload) == {"error": str(caught.value), "reason": "unreadable"}


def test_an_upload_opens_into_its_file_and_its_picture_decoded_once(good_image):
    decoded = []

    def decode(file):
        decoded.append(file)
        return f"picture of {file!r}"

    upload = open_upload({"path": good_image, "meta": {"_type": "gradio.FileData"}}, decode, uploads_only=True)
    assert upload == (good_image, f"picture of {good_image!r}")
    assert open_upload({"url": "data:image/jpeg;base64,QUJD"}, decode) == (b"ABC", "picture of b'ABC'")
    for nothing in (None, "", b"", {}, {"url": ""}):
        assert open_upload(nothing, decode) is None
    assert decoded == [good_image, b"ABC"]


def test_the_api_reads_no_file_it_was_not_sent(app, good_image):
    # A bare path, or a file dict Gradio did not receive (no FileData meta), names a file of the server's.
    for payload in (good_image, {"path": good_image}):
        assert app.predict(payload)["reason"] == "unreadable"
    assert "label" in app.predict({"path": good_image, "meta": {"_type": "gradio.FileData"}})


def test_page_analysis_gives_probabilities_risk_and_heatmap(server, good_image, app):
    probabilities, risk, heatmap, state, status = app.show_analysis({"path": good_image}, "en")
    direct = app.MODEL.predict(good_image).to_json()
    assert probabilities == pytest.approx({"benign": direct["probabilities"]["benign"],
                                           "malignant (melanoma)": direct["probabilities"]["malignant"]})
    assert f'data-risk="{direct["risk_level"]}"' in risk
    assert heatmap.size == Image.open(good_image).size
    assert state["kind"] == "result" and state["prediction"] == direct and status == ""


def test_large_photo_is_analysed_and_its_heatmap_shown_at_screen_size(server, good_image, tmp_path, app):
    large = tmp_path / "large.png"
    Image.open(good_image).resize((3000, 2000)).save(large)
    _, risk, heatmap, state, _ = app.show_analysis({"path": str(large)}, "en")
    assert state["kind"] == "result" and state["prediction"] == app.MODEL.predict(str(large)).to_json()
    assert heatmap.size == (1024, 683)
    # A JPEG is decoded once, at the model's draft scale, and the heat-map drawn on that picture.
    jpeg = tmp_path / "large.jpg"
    Image.open(good_image).resize((3000, 2000)).save(jpeg, quality=90)
    _, _, heatmap, state, _ = app.show_analysis({"path": str(jpeg)}, "en")
    assert state["prediction"] == app.MODEL.predict(str(jpeg)).to_json()
    decoded = app.MODEL.decode(str(jpeg))
    decoded.thumbnail((1024, 1024))
    assert heatmap.size == decoded.size


def test_predicting_stores_nothing(client, server, app, feedback_dir, good_image, odd_files):
    client.predict(handle_file(good_image), api_name="/predict")
    app.show_analysis({"path": good_image}, "en")
    app.show_analysis({"path": str(odd_files["exif_rotated"])}, "fr")
    assert not feedback_dir.exists() or not any(feedback_dir.iterdir())


# ---------------------------------------------------------------------------- feedback


def test_report_stores_exactly_one_record_without_metadata(app, tmp_path, odd_files, monkeypatch):
    folder = tmp_path / "feedback"
    monkeypatch.setenv("FEEDBACK_DIR", str(folder))
    monkeypatch.delenv("FEEDBACK_DATASET", raising=False)
    # Nothing to report before an analysis, and a true diagnosis is required.
    assert "Analyse an image first" in app.report(None, "malignant", "", "en")[0]
    *_, state, _ = app.show_analysis({"path": str(odd_files["exif_rotated"])}, "en")
    assert "true diagnosis" in app.report(state, None, "", "en")[0]
    assert not folder.exists()

    message, reported = app.report(state, "malignant", "  biopsy: melanoma  ", "en")
    assert message.startswith("Thank you")
    # A second click on the same result stores nothing more.
    again, _ = app.report(reported, "malignant", "", "en")
    assert "already been reported" in again
    records = [path for path in folder.iterdir() if path.is_dir()]
    assert len(records) == 1 and records[0].name in message
    report = json.loads((records[0] / "report.json").read_text())
    assert report["true_label"] == "malignant" and report["comment"] == "biopsy: melanoma"
    assert report["prediction"] == state["prediction"] and report["version"] == app.MODEL.version
    with Image.open(records[0] / "image.png") as stored:
        assert not stored.getexif() and "exif" not in stored.info
        upright = Image.open(odd_files["upright"]).convert("RGB")
        assert stored.size == upright.size  # stored upright, as analysed
        assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(upright))


def test_report_folder_comes_from_feedback_dir(app, tmp_path, monkeypatch, good_image):
    monkeypatch.setenv("FEEDBACK_DIR", str(tmp_path / "from_env"))
    monkeypatch.delenv("FEEDBACK_DATASET", raising=False)
    *_, state, _ = app.show_analysis({"path": good_image}, "fr")
    assert app.report(state, "benign", "", "fr")[0].startswith("Merci")
    assert len(list((tmp_path / "from_env").glob("*/report.json"))) == 1


# ---------------------------------------------------------------------------- texts


def test_risk_levels_have_advice_in_both_languages(app):
    prediction = {"label": "malignant", "probabilities": {"benign": 0.3, "malignant": 0.7},
                  "screening_threshold": 0.2, "high_risk_threshold": 0.6, "model_id": "m"}
    expected = {"low": ("urgent", "urgent"), "moderate": ("doctor", "médecin"), "high": ("dermatologist", "dermatologue")}
    for level, (english, french) in expected.items():
        prediction["risk_level"] = level
        assert english in views.risk_html(prediction, "en") and f'data-risk="{level}"' in views.risk_html(prediction, "en")
        assert french in views.risk_html(prediction, "fr")
    assert "70.0%" in views.risk_html(prediction, "en") and "70,0\u202f%" in views.risk_html(prediction, "fr")
    assert set(TEXT["en"]) == set(TEXT["fr"])


def test_image_errors_are_shown_in_the_chosen_language(app, server, odd_files):
    *_, state, _ = app.show_analysis({"path": str(odd_files["one_pixel"])}, "en")
    assert state == {"kind": "bad_image", "code": "too_small", "params": {"width": 1, "height": 1, "min_side": 32}}
    french = html_unescape(views.render_result(state, "fr")["risk"])
    assert ("Cette image n'a pas pu être analysée : l'image est trop petite (1×1 pixels). "
            "Importez une image d'au moins 32×32 pixels.") in french
    assert "This image could not be analysed: The image is too small (1x1 pixels)." in views.render_result(state, "en")["risk"]


def test_about_shows_id_version_and_test_metrics(app):
    about = views.about_markdown(app.MODEL, "en")
    report = app.MODEL.eval_results
    for needle in (app.MODEL.model_id, app.MODEL.version, "ROC AUC", "Accuracy", "Sensitivity", "Specificity", "ECE",
                   f"{report['test']['at_screening_threshold']['sensitivity']:.3f}"):
        assert needle in about
    assert "Sensibilité" in views.about_markdown(app.MODEL, "fr")


def test_about_shows_external_sets_beside_the_test_split(app):
    report = app.MODEL.eval_results
    test = report["test"]
    external = {"at_0_5": dict(test["at_0_5"], roc_auc=0.6123, n=961, n_malignant=252),
                "at_screening_threshold": dict(test["at_screening_threshold"], sensitivity=0.8771, specificity=0.4321),
                "at_high_risk_threshold": dict(test["at_high_risk_threshold"], sensitivity=0.3456, specificity=0.9012)}
    lines = views.metrics_by_source(dict(report, external={"derm7pt": external}), TEXT["en"], "en")
    table = "\n".join(lines)
    assert "derm7pt (other clinic)" in table and "Test split (same source)" in table
    for needle in ("0.612", "0.877", "0.432", "0.346", "0.901", "961 (252)"):
        assert needle in table
    row = next(line for line in lines if line.startswith("| Specificity at the screening threshold"))
    assert row.endswith(f"| {test['at_screening_threshold']['specificity']:.3f} | 0.432 |")
    assert "autre clinique" in "\n".join(views.metrics_by_source(dict(report, external={"derm7pt": external}), TEXT["fr"], "fr"))


def test_examples_are_real_test_images_with_true_labels():
    rows = example_rows()
    labels = [row["label"] for row in rows]
    assert len(rows) >= 6 and labels.count("benign") >= 3 and labels.count("malignant") >= 3
    assert sum((EXAMPLES / row["file"]).stat().st_size for row in rows) < 1_000_000
    for row in rows:
        assert row["file"].startswith(row["label"])
        assert "/test/" in row["source"]
        original = SHARED_DATASET.parent / row["source"]
        if original.is_file():
            digest = hashlib.sha256((EXAMPLES / row["file"]).read_bytes()).hexdigest()
            assert digest == hashlib.sha256(original.read_bytes()).hexdigest(), row


def test_help_names_the_settings():
    # `python app.py` reads its command line before it loads any model.
    shown = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    for name in ("MODEL_ID", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "GRADIO_SHARE", "FEEDBACK_DIR"):
        assert name in shown.stdout


def test_screenshot_script_help_describes_it_and_takes_no_screenshot():
    # --help used to be taken for a plain run, which started the app and rewrote docs/app.png.
    pictures = [REPO_ROOT / "docs" / name for name in ("app.png", "app-live.png")]
    before = [path.stat().st_mtime_ns if path.exists() else None for path in pictures]
    shown = subprocess.run([sys.executable, "docs/make_screenshot.py", "--help"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "--live" in shown.stdout and "docs/app-live.png" in shown.stdout
    assert [path.stat().st_mtime_ns if path.exists() else None for path in pictures] == before
    refused = subprocess.run([sys.executable, "docs/make_screenshot.py", "--phone"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "unrecognized arguments: --phone" in refused.stderr


def test_health_and_lean_routes_are_on_any_launch(server, app):
    import httpx

    health = httpx.get(server[1] + "healthz", timeout=60)
    assert health.status_code == 200
    body = health.json()
    assert {key: body[key] for key in ("status", "model_id", "model_version")} == {
        "status": "ok", "model_id": app.MODEL_SOURCE, "model_version": app.MODEL.version}
    # The app loads the heat-map's PyTorch model in the background and says when it has.
    app.MODEL.warm_up().join(timeout=120)
    assert app.MODEL.heatmap_ready
    assert httpx.get(server[1] + "healthz", timeout=60).json()["heatmap_ready"] is True
    # Registered as the server's app is built, before it listens: ahead of Gradio's own routes.
    paths = [getattr(route, "path", None) for route in server[0].app.routes]
    assert paths[:3] == [SCREEN_ROUTE, TIMINGS_ROUTE, HEALTH_ROUTE]


# ---------------------------------------------------------------------------- no model


def test_offline_hub_id_gives_the_train_a_model_message(app, good_image, monkeypatch):
    model, reason = app.load_model("open-melanoma/vit-melanoma-screening")
    assert model is None and reason
    monkeypatch.setattr(app, "MODEL", None)
    monkeypatch.setattr(app, "MODEL_ERROR", reason)
    result = app.analyse(good_image).answer
    assert set(result) == {"error", "reason"} and result["reason"] == "no_model"
    assert "train_vit.py" in result["error"] and "--output-dir model" in result["error"]


def test_app_starts_without_a_model(tmp_path, good_image):
    port = free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "FEEDBACK_DIR": str(tmp_path / "feedback"), "MODEL_ID": str(tmp_path / "missing"),
           "GRADIO_SERVER_PORT": str(port)}
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_app(url, process, log)
        # The plain routes answer as soon as the page does (no 404 while they would be added).
        lean = urllib.request.Request(url + "api/screen", data=Path(good_image).read_bytes())
        with urllib.request.urlopen(lean, timeout=30) as response:
            assert json.loads(response.read())["reason"] == "no_model"
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(url + "healthz", timeout=30)
        assert unhealthy.value.code == 503 and json.loads(unhealthy.value.read())["status"] == "no_model"
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            assert "No model is loaded" in response.read().decode()  # shown on the page
        result = Client(url, verbose=False).predict(handle_file(good_image), api_name="/predict")
        assert set(result) == {"error", "reason"} and result["reason"] == "no_model"
        assert "No model is loaded" in result["error"] and "python train_vit.py" in result["error"]
        assert "--output-dir model" in result["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = log.read_text()
    assert "Traceback" not in output, output
    assert not (tmp_path / "feedback").exists()


# ---------------------------------------------------------------------------- the input check


@pytest.fixture
def refusing_app(app):
    """The running app's model with the shipped model's image statistics (they hold for any model)."""
    from melanoma_screen.input_check import InputCheck

    previous = app.MODEL.input_check
    app.MODEL.input_check = InputCheck.load(REPO_ROOT / "model", model_version=app.MODEL.version)
    try:
        yield app
    finally:
        app.MODEL.input_check = previous


def test_a_refused_picture_gives_error_and_reason_and_no_risk_level(client, server, refusing_app, good_image, tmp_path):
    from melanoma_screen.input_check import REASONS
    from melanoma_screen.messages import render

    wall = tmp_path / "wall.png"
    Image.new("RGB", (400, 300), (150, 150, 150)).save(wall)
    result = client.predict(handle_file(str(wall)), api_name="/predict")
    assert set(result) == {"error", "reason", "model_id", "model_version"}, result
    assert result["reason"] in REASONS and result["error"] == render(result["reason"])
    assert result["model_version"] == refusing_app.MODEL.version
    # A real lesion still gets its risk level through the same check.
    assert_prediction(client.predict(handle_file(good_image), api_name="/predict"), refusing_app.MODEL)

    probabilities, risk, heatmap, state, _ = refusing_app.show_analysis({"path": str(wall)}, "fr")
    assert probabilities is None and heatmap is None and state == {"kind": "refused", "reason": result["reason"]}
    assert "data-risk" not in risk and render(result["reason"], lang="fr") in html_unescape(risk)
    assert "pas été analysée" in html_unescape(risk)


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_predict_json_names_the_model_and_its_version(client, app, good_image):
    result = client.predict(handle_file(good_image), api_name="/predict")
    assert result["model_id"] == app.MODEL.model_id and result["model_version"] == app.MODEL.version


# ---------------------------------------------------------------------------- lean route


def test_the_lean_route_answers_with_the_same_json_as_predict(client, server, app, good_image, odd_files):
    import httpx

    base = server[1].rstrip("/")
    expected = client.predict(handle_file(good_image), api_name="/predict")
    data = Path(good_image).read_bytes()
    raw = httpx.post(f"{base}{SCREEN_ROUTE}", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
    form = httpx.post(f"{base}{SCREEN_ROUTE}", files={"image": ("lesion.jpg", data, "image/jpeg")}, timeout=60)
    assert raw.status_code == form.status_code == 200
    assert raw.json() == form.json() == expected
    # A bad file is a sentence and a code, as on /predict; an empty body is "no image".
    broken = httpx.post(f"{base}{SCREEN_ROUTE}", content=odd_files["truncated"].read_bytes(), timeout=60).json()
    assert broken == client.predict(handle_file(str(odd_files["truncated"])), api_name="/predict")
    assert httpx.post(f"{base}{SCREEN_ROUTE}", content=b"", timeout=60).json()["reason"] == "no_image"
    timings = httpx.get(f"{base}{TIMINGS_ROUTE}", timeout=60).json()
    assert timings["images"] >= 2 and timings["cpu_seconds"]["model"] > 0
    assert set(timings["cpu_seconds"]) == {"decode", "resize", "statistics", "model", "feature space"}


def test_live_frames_guide_then_the_capture_is_scored_like_the_same_file_uploaded(app, good_image, tmp_path):
    import base64

    import gradio as gr

    buffer = io.BytesIO()
    Image.open(good_image).convert("RGB").save(buffer, format="JPEG", quality=92)
    frame = buffer.getvalue()
    payload = {"url": "data:image/jpeg;base64," + base64.b64encode(frame).decode()}  # as the browser streams it
    live = None
    for _ in range(2):
        guidance, live, captured, camera, restart, *result = app.live_frame(payload, live, "fr")
        assert 'data-guidance="ready"' in guidance and "Prêt" in guidance
        # nothing is scored before the capture, and "Start again" stays hidden: there is nothing to restart
        assert [captured, camera, restart, *result] == [gr.skip()] * 8
    guidance, live, captured, camera, restart, probabilities, risk, heatmap, state, status = app.live_frame(
        payload, live, "fr")
    assert 'data-guidance="captured"' in guidance and base64.b64encode(frame).decode() in captured
    assert camera["visible"] is False and restart["visible"] is True  # the camera closes: no more frames
    upload = tmp_path / "frame.jpg"
    upload.write_bytes(frame)
    uploaded = app.show_analysis(str(upload), "fr")
    assert state["prediction"] == uploaded[3]["prediction"] and probabilities == uploaded[0] and risk == uploaded[1]
    assert heatmap is not None
    # Frames still in flight after the capture change nothing; "Start again" opens a new run.
    assert app.live_frame(payload, live, "fr") == (gr.skip(),) * 10
    # Back on the live tab after the upload tab: the capture's result again, not an upload's.
    again = app.show_mode_result(live, "fr")
    assert again[0] == probabilities and again[1] == risk and again[3]["prediction"] == state["prediction"]
    assert again[2] is not None
    guidance, fresh, captured, camera, restart = app.live_restart("en")
    assert 'data-guidance="start"' in guidance and fresh["captured"] is None and captured == "" and camera["visible"]
    assert restart["visible"] is False
    # A tab without a result of its own shows an empty panel.
    probabilities, risk, heatmap, state, status = app.show_mode_result(fresh, "en")
    assert probabilities is None and heatmap is None and state is None
    assert risk == views.render_result(None, "en")["risk"] and "data-risk" not in risk


def test_a_live_frame_that_cannot_be_read_or_judged_gets_a_sentence(app, monkeypatch):
    guidance, *_ = app.live_frame({"url": "data:image/jpeg;base64,AAAA"}, None, "en")
    assert 'data-guidance="unreadable"' in guidance
    monkeypatch.setattr(app, "MODEL", None)
    monkeypatch.setattr(app, "MODEL_ERROR", "no folder")
    guidance, *_ = app.live_frame({"url": "data:image/jpeg;base64,AAAA"}, None, "fr")
    assert 'data-guidance="no_model"' in guidance and "Aucun modèle" in guidance
