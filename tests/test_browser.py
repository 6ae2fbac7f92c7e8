"""End to end in headless Chromium: the page a person sees, on a desktop and on a phone.

Runs `python app.py` with the tiny session model and drives it with Playwright.
Uses the system Chromium (Debian package `chromium`, installed by .ci/run), never
a browser downloaded by `playwright install`. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import base64
import json

import pytest
from PIL import Image

import camera_clip  # benchmarks/, on the path through conftest
from live_load import start_live_camera
from conftest import REPO_ROOT, free_port, wait_for_app

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

ARTIFACTS = REPO_ROOT / "test-artifacts"
EXAMPLES = REPO_ROOT / "examples"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser_feedback") / "reports"


@pytest.fixture(scope="module")
def checked_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with the shipped model's input check: its image statistics hold for any model
    (the feature-space part belongs to other weights and is switched off), so the page can refuse."""
    folder = tmp_path_factory.mktemp("browser_model") / "m"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copy(REPO_ROOT / "model" / "input_check.safetensors", folder / "input_check.safetensors")
    return folder


@pytest.fixture(scope="module")
def app_url(checked_model_dir, feedback_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("browser_app") / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "FEEDBACK_DIR": str(feedback_dir),
           "MODEL_ID": str(checked_model_dir), "GRADIO_SERVER_PORT": str(port)}
    env.pop("FEEDBACK_DATASET", None)
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_app(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def playwright():
    # One per module: Playwright's sync API cannot run twice at once in a thread.
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


def open_page(browser, url, **context_args):
    page = browser.new_context(**context_args).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    expect(page.locator("#analyse")).to_be_visible()
    return page


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def wait_for_result(page) -> str:
    """Waits for a risk level, the probabilities and the heat map; returns the risk level."""
    risk = page.locator("#risk [data-risk]")
    expect(risk).to_be_visible()
    expect(page.locator("#probabilities")).to_contain_text("%")
    heatmap = page.locator("#heatmap img")
    expect(heatmap).to_be_visible()
    assert heatmap.evaluate("img => img.complete && img.naturalWidth > 0")
    return risk.get_attribute("data-risk")


def upload(page, path: Path) -> None:
    """Chooses a file in the image input and waits until the upload shows in the preview."""
    page.locator("#lesion-image input[type=file]").set_input_files(str(path))
    expect(page.locator("#lesion-image img")).to_have_attribute("src", re.compile(re.escape(path.name)))


def test_example_result_french_and_report(browser, app_url, feedback_dir):
    page = open_page(browser, app_url, viewport={"width": 1280, "height": 900})
    expect(page.locator("#disclaimer")).to_contain_text("not a diagnosis")
    examples = page.locator("#examples")
    expect(examples).to_contain_text("benign")
    expect(examples).to_contain_text("malignant")

    # The fifth example is the first malignant one (examples/labels.csv order).
    examples.locator('[data-testid="dataset-cell-4-0"]').click()
    level = wait_for_result(page)
    assert level in ("low", "moderate", "high")
    expect(page.locator("#risk")).to_contain_text({"low": "Low", "moderate": "Moderate", "high": "High"}[level])
    expect(page.locator("#probabilities")).to_contain_text("malignant (melanoma)")
    page.locator("#about").get_by_text("About the model").click()
    expect(page.locator("#about-model")).to_contain_text("ROC AUC")
    screenshot(page, "app-desktop-en.png")
    assert not feedback_dir.exists()  # analysing stores nothing

    page.get_by_label("Français").check()
    expect(page.locator("#risk")).to_contain_text("Niveau de risque")
    expect(examples).to_contain_text("malin")  # the true diagnoses too, not only the headers
    expect(examples).to_contain_text("bénin")
    expect(examples).not_to_contain_text("malignant")
    expect(page.locator("#disclaimer")).to_contain_text("pas un diagnostic")
    expect(page.locator("#probabilities")).to_contain_text("malin (mélanome)")
    expect(page.locator("#analyse")).to_have_text("Analyser")
    expect(page.locator("#about-model")).to_contain_text("Sensibilité")

    page.locator("#feedback").get_by_text("Signaler une prédiction erronée").click()
    page.locator("#truth").get_by_label("Bénin").check()
    page.locator("#comment textarea").fill("biopsie : naevus bénin")
    page.locator("#send-report").click()
    expect(page.locator("#feedback-status")).to_contain_text("Merci")
    screenshot(page, "app-desktop-fr.png")
    assert len(list(feedback_dir.glob("*/report.json"))) == 1
    page.locator("#send-report").click()  # a second click stores nothing more
    expect(page.locator("#feedback-status")).to_contain_text("déjà été signalé")
    assert len(list(feedback_dir.glob("*/report.json"))) == 1
    page.context.close()


def test_a_french_browser_gets_every_text_in_french(browser, app_url):
    page = open_page(browser, app_url, viewport={"width": 1280, "height": 900}, locale="fr-FR")
    # The switch follows the browser's language, and with it the static texts and the server's panels.
    expect(page.get_by_label("Français")).to_be_checked()
    expect(page.locator("#analyse")).to_have_text("Analyser")
    expect(page.locator("#disclaimer")).to_contain_text("pas un diagnostic")
    expect(page.locator("#lesion-image")).to_contain_text("Image de la lésion")
    expect(page.locator("#examples")).to_contain_text("malin")
    page.locator("#analyse").click()  # empty submit: a sentence written by the server after the event
    expect(page.locator("#risk")).to_contain_text("Aucune image fournie")
    page.locator('#examples [data-testid="dataset-cell-4-0"]').click()
    wait_for_result(page)
    expect(page.locator("#risk")).to_contain_text("Niveau de risque")
    expect(page.locator("#probabilities")).to_contain_text("malin (mélanome)")
    expect(page.locator("#lesion-image")).to_contain_text("Image de la lésion")  # an example keeps the label French
    # The live tab: Gradio's own camera button in French too, and no trace of the upload's result
    # under it; back on the upload tab, that result is one click away again.
    page.locator("#modes [role=tab]").nth(1).click()
    expect(page.locator("#live-camera")).to_contain_text("Cliquez pour activer la caméra")
    expect(page.locator("#live-camera")).not_to_contain_text("Click to Access Webcam")
    expect(page.locator("#risk [data-risk]")).to_have_count(0)
    expect(page.locator("#probabilities")).not_to_contain_text("mélanome")
    expect(page.locator("#live-restart")).to_be_hidden()  # nothing taken yet, nothing to start again
    page.locator("#modes [role=tab]").nth(0).click()
    page.locator("#analyse").click()
    wait_for_result(page)
    page.get_by_label("English").check()  # and the person can still choose
    expect(page.locator("#risk")).to_contain_text("Risk level")
    expect(page.locator("#analyse")).to_have_text("Analyse")
    page.context.close()


def test_phone_layout(browser, app_url):
    page = open_page(browser, app_url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                     is_mobile=True, has_touch=True)
    page.locator('#examples [data-testid="dataset-cell-0-0"]').click()
    wait_for_result(page)
    # Responsive: nothing wider than the screen, so no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    # The result comes right after the Analyse button, above the examples.
    analyse_box = page.locator("#analyse").bounding_box()
    assert analyse_box["y"] < page.locator("#risk").bounding_box()["y"] < page.locator("#examples").bounding_box()["y"]
    # The eight examples are a grid of thumbnails with their true diagnosis, not eight screen-wide rows.
    examples = page.locator("#examples")
    expect(examples).to_contain_text("malignant")
    assert examples.bounding_box()["height"] < 0.6 * page.viewport_size["height"]
    screenshot(page, "app-phone.png")
    page.context.close()


def test_bad_uploads_show_a_message(browser, app_url, tmp_path):
    page = open_page(browser, app_url, viewport={"width": 1280, "height": 900})
    page.locator("#analyse").click()  # empty submit
    expect(page.locator("#risk")).to_contain_text("No image was given")

    text_as_jpeg = tmp_path / "holiday.jpg"
    text_as_jpeg.write_text("not really a JPEG\n")
    truncated = tmp_path / "truncated.jpg"
    data = (EXAMPLES / "benign_1.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path, words in ((text_as_jpeg, "not an image"), (truncated, "damaged or truncated")):
        upload(page, path)
        page.locator("#analyse").click()
        expect(page.locator("#risk")).to_contain_text(words)
        expect(page.locator("#risk")).to_contain_text("could not be analysed")

    # A good upload afterwards still works.
    upload(page, EXAMPLES / "benign_2.jpg")
    page.locator("#analyse").click()
    wait_for_result(page)
    screenshot(page, "app-after-bad-uploads.png")
    page.context.close()


def test_a_refused_picture_shows_why_and_how_to_retake_it(browser, app_url, tmp_path):
    page = open_page(browser, app_url, viewport={"width": 1280, "height": 900})
    wall = tmp_path / "wall.png"
    Image.new("RGB", (400, 300), (150, 150, 150)).save(wall)  # a grey wall: no skin, no lesion
    upload(page, wall)
    page.locator("#analyse").click()
    refusal = page.locator("#risk .refusal")
    expect(refusal).to_be_visible()
    expect(page.locator("#risk")).to_contain_text("This picture was not analysed")
    expect(page.locator("#risk [data-risk]")).to_have_count(0)  # no risk level at all
    reason = refusal.get_attribute("data-reason")
    assert reason == "no_lesion"
    screenshot(page, "app-refused-en.png")

    page.get_by_label("Français").check()
    expect(page.locator("#risk")).to_contain_text("Cette image n'a pas été analysée")
    screenshot(page, "app-refused-fr.png")
    page.context.close()


# ---------------------------------------------------------------------------- live camera

# What the guidance shows for a picture that is blurred or badly exposed (melanoma_screen.live.GUIDANCE).
RETAKE_GUIDANCE = {"hold_still", "more_light", "less_light"}


@pytest.fixture(scope="module")
def lesion_clip(tmp_path_factory) -> Path:
    """A real lesion filmed badly, then well: 3 s blurred and dark, then 8 s sharp (the camera loops it)."""
    return camera_clip.lesion_clip(EXAMPLES / "malignant_1.jpg", tmp_path_factory.mktemp("camera") / "lesion.y4m",
                                   bad_seconds=3, good_seconds=8)


@pytest.fixture(scope="module")
def camera_browser(playwright, lesion_clip):
    """Chromium whose camera films lesion_clip, with the permission prompt answered yes."""
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={lesion_clip}"]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        yield browser
    finally:
        browser.close()


# Every instruction the page shows, in order, recorded as it changes: "ready" lasts a frame or two.
RECORD_GUIDANCE = """() => {
    window.guidanceSeen = [];
    const note = () => {
        const shown = document.querySelector('#live-guidance [data-guidance]');
        const key = shown && shown.getAttribute('data-guidance');
        if (key && window.guidanceSeen[window.guidanceSeen.length - 1] !== key) window.guidanceSeen.push(key);
    };
    note();
    new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


@pytest.mark.parametrize("device", ["desktop-en", "phone-fr"])
def test_live_camera_guides_then_captures_and_scores_like_an_upload(camera_browser, browser, app_url, tmp_path, device):
    viewport = ({"viewport": {"width": 1280, "height": 900}} if device == "desktop-en" else
                {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                 "has_touch": True, "locale": "fr-FR"})
    page = open_page(camera_browser, app_url, **viewport)
    french = device.endswith("fr")
    expect(page.get_by_label("Français" if french else "English")).to_be_checked()
    expect(page.locator("#modes")).to_contain_text("Caméra en direct" if french else "Live camera")
    page.evaluate(RECORD_GUIDANCE)
    expect(page.locator("#live-restart")).to_be_hidden()
    start_live_camera(page)

    guidance = page.locator("#live-guidance [data-guidance]")
    expect(guidance).to_have_attribute("data-guidance", re.compile("|".join(RETAKE_GUIDANCE)))
    expect(page.locator("#live-guidance")).to_contain_text(
        re.compile("Plus de lumière|Ne bougez plus|Moins de lumière" if french else "More light|Hold still|Less light"))
    screenshot(page, f"app-live-guiding-{device}.png")
    expect(guidance).to_have_attribute("data-guidance", "captured", timeout=60_000)
    seen = page.evaluate("window.guidanceSeen")
    first_retake = next(i for i, key in enumerate(seen) if key in RETAKE_GUIDANCE)
    assert "ready" in seen[first_retake:], seen  # the sharp frames were called good before the capture

    level = wait_for_result(page)
    expect(page.locator("#risk")).to_contain_text("Niveau de risque" if french else "Risk level")
    expect(page.locator("#live-camera")).to_have_count(0)  # the camera is closed: no more frames
    live_probability = float(page.locator("#risk [data-risk]").get_attribute("data-probability"))
    expect(page.locator("#disclaimer")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    screenshot(page, f"app-live-{device}.png")

    # The captured frame, uploaded as a file on a fresh page, gets the very same score.
    source = page.locator("#live-captured-frame").get_attribute("src")
    assert source.startswith("data:image/jpeg;base64,")
    frame = tmp_path / "captured.jpg"
    frame.write_bytes(base64.b64decode(source.partition(",")[2]))
    upload_page = open_page(browser, app_url, viewport={"width": 1280, "height": 900})
    upload(upload_page, frame)
    upload_page.locator("#analyse").click()
    assert wait_for_result(upload_page) == level
    assert float(upload_page.locator("#risk [data-risk]").get_attribute("data-probability")) == live_probability
    upload_page.context.close()

    # Start again: the camera comes back, guidance starts over, and the result stays until the next capture.
    expect(page.locator("#live-restart")).to_be_visible()
    page.locator("#live-restart").click()
    expect(page.locator("#live-restart")).to_be_hidden()
    expect(guidance).to_have_attribute("data-guidance", "start")
    expect(page.locator("#live-camera")).to_be_visible()
    expect(page.locator("#live-captured-frame")).to_have_count(0)
    page.context.close()


def test_the_page_can_be_installed_as_an_app(browser, app_url):
    page = open_page(browser, app_url, viewport={"width": 390, "height": 844}, is_mobile=True)
    link = page.locator('link[rel="manifest"]')
    expect(link).to_have_count(1)
    response = page.request.get(page.evaluate("document.querySelector('link[rel=manifest]').href"))
    assert response.ok
    manifest = json.loads(response.text())
    assert manifest["name"] == "Melanoma screening aid"
    assert manifest["display"] == "standalone" and manifest["icons"]
    page.context.close()
