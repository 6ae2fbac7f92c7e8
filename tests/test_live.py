"""Guided live capture (melanoma_screen.live) with the shipped model and real lesion frames."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image, ImageEnhance, ImageFilter

from conftest import REPO_ROOT, real_images

from melanoma_screen.images import ImageLoadError
from melanoma_screen.inference import FAST, ScreeningModel
from melanoma_screen.live import (GUIDANCE, GUIDANCE_TEXT, PASSES_TO_CAPTURE, FrameGate, guidance_html, judge_frame,
                                  new_state, sharpness)
from melanoma_screen.input_check import REASONS


@pytest.fixture(scope="module")
def shipped():
    model = ScreeningModel.load(str(REPO_ROOT / "model"), **FAST)
    yield model
    model.close()


def jpeg(image: Image.Image) -> bytes:
    """A frame as the browser sends it: a JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def lesion():
    with Image.open(real_images("test", "malignant", 1)[0]) as image:
        return image.convert("RGB")


def test_every_refusal_has_an_instruction_in_both_languages():
    assert set(REASONS) | {None} <= set(GUIDANCE)
    for lang in ("en", "fr"):
        assert set(GUIDANCE.values()) <= set(GUIDANCE_TEXT[lang])
    assert 'data-guidance="hold_still"' in guidance_html("hold_still", "fr")
    assert "Ne bougez plus" in guidance_html("hold_still", "fr")


def test_bad_frames_are_told_what_is_wrong_and_break_the_run(shipped, lesion):
    dark = jpeg(ImageEnhance.Brightness(lesion).enhance(0.15))
    blurred = jpeg(lesion.filter(ImageFilter.GaussianBlur(0.05 * min(lesion.size))))
    good = jpeg(lesion)
    state = judge_frame(shipped, good, new_state()).state
    assert state["guidance"] == "ready" and len(state["streak"]) == 1
    state = judge_frame(shipped, dark, state).state
    assert state["guidance"] == "more_light" and state["streak"] == []
    verdict = judge_frame(shipped, blurred, state)
    assert verdict.state["guidance"] == "hold_still" and verdict.capture is None


def test_the_sharpest_of_the_passing_frames_in_a_row_is_captured(shipped, lesion, tmp_path):
    # Slightly softened frames still pass the check, but are less sharp than the original.
    frames = [jpeg(lesion.filter(ImageFilter.GaussianBlur(0.6))), jpeg(lesion), jpeg(lesion.filter(ImageFilter.GaussianBlur(0.9)))]
    assert len(frames) == PASSES_TO_CAPTURE
    state = new_state()
    for frame in frames[:-1]:
        verdict = judge_frame(shipped, frame, state)
        assert verdict.capture is None and verdict.state["guidance"] == "ready"
        state = verdict.state
    verdict = judge_frame(shipped, frames[-1], state)
    assert verdict.capture == frames[1]
    assert verdict.state["guidance"] == "captured" and verdict.state["streak"] == []
    # The capture is scored as the same frame saved and uploaded as a file: the same numbers.
    upload = tmp_path / "frame.jpg"
    upload.write_bytes(frames[1])
    assert shipped.predict(verdict.capture).to_json() == shipped.predict(upload).to_json()
    # Frames after the capture change nothing.
    assert judge_frame(shipped, frames[0], verdict.state).state == verdict.state


def test_sharpness_ranks_a_blurred_copy_below_its_original(lesion):
    assert sharpness(lesion) > sharpness(lesion.filter(ImageFilter.GaussianBlur(2)))


def test_a_frame_that_is_not_a_picture_raises_the_upload_error(shipped):
    with pytest.raises(ImageLoadError):
        judge_frame(shipped, b"not a jpeg", new_state())


def test_a_frame_that_finds_every_slot_busy_is_dropped_not_queued():
    gate = FrameGate(1, wait_s=0.01)
    inside, release = threading.Event(), threading.Event()

    def busy():
        inside.set()
        release.wait(10)
        return "judged"

    worker = threading.Thread(target=gate.try_run, args=(busy,))
    worker.start()
    inside.wait(10)
    assert gate.try_run(lambda: "second") == (False, None)
    release.set()
    worker.join(10)
    assert gate.try_run(lambda: "third") == (True, "third")
    assert (gate.judged, gate.dropped) == (2, 1)
