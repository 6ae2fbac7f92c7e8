"""Guided live capture: judge camera frames as they come, say what is wrong, keep the sharpest good one.

The page's live camera sends a JPEG frame every LIVE_STREAM_EVERY seconds. Each
frame goes through the model and its input check exactly as an upload does
(ScreeningModel.predict_decoded), and its verdict becomes one short instruction
(GUIDANCE). Once PASSES_TO_CAPTURE frames in a row pass, the sharpest of them is
the capture; the app then scores that frame's bytes as it scores an uploaded
file, so the live result and the same frame uploaded are the same numbers.

Frames live in memory only, in the session's state, and only the few of the
current run of passing frames: nothing is written to disk or logged.

Frames are dropped, not queued: the browser sends the next frame only once the
previous one is answered, and the server judges at most `slots` frames at once
across all users (FrameGate); a frame that finds every slot busy for longer than
FRAME_WAIT_S is answered without being judged, so a crowd of cameras never builds
a queue of stale frames in front of the uploads.
"""

from __future__ import annotations

import base64
import html
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .app_routes import open_upload
from .images import luminance

# Seconds between two frames the browser sends: a few a second, as many as two cores
# judge for a handful of users (docs/app.md, benchmarks/live_load.py).
LIVE_STREAM_EVERY = 0.3
# A live run stops after this many seconds (Gradio's time_limit), so one forgotten tab
# does not hold a slot forever; the restart button starts another.
LIVE_TIME_LIMIT = 120
# How long a frame may wait for a slot before it is dropped: about one frame's judging
# (benchmarks/live_load.py), so that frames arriving together are judged in turn rather than
# dropped while a core is idle, and none is judged once it is older than the next one.
FRAME_WAIT_S = 0.1
# Frames in a row that must pass: one good frame between blurred ones is often a
# moment of motion that happened to line up, three are a camera held still.
PASSES_TO_CAPTURE = 3

# Refusal reason (None: accepted) -> instruction key in GUIDANCE_TEXT.
GUIDANCE = {
    None: "ready",
    "blurred": "hold_still",
    "too_dark": "more_light",
    "too_bright": "less_light",
    "no_lesion": "centre",
    "no_colour": "colour",
    "not_skin": "not_lesion",
    "unfamiliar": "not_lesion",
}

GUIDANCE_TEXT = {
    "en": {
        "start": "Press the record button under the camera and point it at the lesion.",
        "ready": "Ready: hold still, taking the picture…",
        "hold_still": "Hold still: the picture is blurred.",
        "more_light": "More light, please: the picture is too dark.",
        "less_light": "Less light, please: the picture is too bright.",
        "centre": "Bring the lesion to the centre, closer.",
        "colour": "Colour is missing: use the colour camera.",
        "not_lesion": "This is not a skin lesion: point the camera at the lesion.",
        "captured": "Picture taken. Its result is shown; press “Start again” for another.",
        "busy": "The server is busy: waiting for the next frame…",
        "unreadable": "The camera's picture could not be read: waiting for the next frame…",
        "no_model": "No model is loaded, so nothing can be judged.",
    },
    "fr": {
        "start": "Appuyez sur le bouton d'enregistrement sous la caméra et visez la lésion.",
        "ready": "Prêt : ne bougez plus, prise de la photo…",
        "hold_still": "Ne bougez plus : l'image est floue.",
        "more_light": "Plus de lumière : l'image est trop sombre.",
        "less_light": "Moins de lumière : l'image est trop claire.",
        "centre": "Amenez la lésion au centre, plus près.",
        "colour": "Il manque la couleur : utilisez la caméra couleur.",
        "not_lesion": "Ce n'est pas une lésion de la peau : visez la lésion.",
        "captured": "Photo prise. Son résultat est affiché ; appuyez sur « Recommencer » pour une autre.",
        "busy": "Le serveur est occupé : attente de l'image suivante…",
        "unreadable": "L'image de la caméra n'a pas pu être lue : attente de l'image suivante…",
        "no_model": "Aucun modèle n'est chargé : rien ne peut être évalué.",
    },
}


def guidance_html(key: str, lang: str) -> str:
    """The instruction for `key` in `lang`; data-guidance carries the key for programs and tests."""
    text = GUIDANCE_TEXT.get(lang, GUIDANCE_TEXT["en"])[key]
    tone = {"ready": "#2e7d32", "captured": "#2e7d32", "start": "#555"}.get(key, "#b26a00")
    return (f'<div class="live-guidance" data-guidance="{key}" role="status" aria-live="polite" '
            f'style="border-left:6px solid {tone};padding:10px 14px;font-size:1.15em;font-weight:600">'
            f'{html.escape(text)}</div>')


def captured_html(frame: bytes | None) -> str:
    """The captured frame, shown from its own bytes: no copy of it is written anywhere."""
    if not frame:
        return ""
    data = base64.b64encode(frame).decode("ascii")
    return (f'<img id="live-captured-frame" alt="" src="data:image/jpeg;base64,{data}" '
            f'style="max-width:100%;max-height:240px;border-radius:8px">')


def sharpness(image: Image.Image, side: int = 256) -> float:
    """Mean |Laplacian| over the contrast, on a copy at most `side` pixels wide: higher is sharper.

    Divided by the contrast as the input check's edge statistics are, so a brighter
    frame does not win over a sharper one.
    """
    small = image.copy()
    small.thumbnail((side, side))
    grey = luminance(np.asarray(small, dtype=np.float32) / 255)
    laplacian = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    return float(laplacian.mean() / (grey.std() + 0.02))


def new_state() -> dict:
    """A live run's state: the guidance shown, the passing frames in a row, and the capture once taken."""
    return {"guidance": "start", "streak": [], "captured": None}


@dataclass
class FrameVerdict:
    """What one frame did to a live run: the next state, and the frame to score when it completes a capture."""

    state: dict
    capture: bytes | None = None


def judge_frame(model, frame, state: dict | None) -> FrameVerdict | None:
    """Judge one frame (as the browser sent it: a data URL, or the JPEG's bytes) and advance the run.

    A refused frame breaks the run of passing frames; the PASSES_TO_CAPTURE-th
    passing frame in a row completes it, and the sharpest of the run is the capture.
    None for a payload that holds no picture; raises ImageLoadError for one that is not a picture.
    """
    state = dict(state or new_state())
    if state.get("captured"):
        return FrameVerdict(state)
    upload = open_upload(frame, model.decode)
    if upload is None:
        return None
    prediction = model.predict_decoded([upload.picture])[0]
    reason = prediction.input_check.reason
    state["guidance"] = GUIDANCE.get(reason, "not_lesion")
    if reason is not None:
        state["streak"] = []
        return FrameVerdict(state)
    streak = [*state.get("streak", []), (sharpness(upload.picture), upload.file)][-PASSES_TO_CAPTURE:]
    state["streak"] = streak
    if len(streak) < PASSES_TO_CAPTURE:
        return FrameVerdict(state)
    best = max(streak, key=lambda pair: pair[0])[1]
    state.update(streak=[], captured=best, guidance="captured")
    return FrameVerdict(state, capture=best)


class FrameGate:
    """At most `slots` frames judged at once, server-wide; a frame that finds none free within `wait_s` is dropped."""

    def __init__(self, slots: int, wait_s: float = FRAME_WAIT_S):
        self._slots = threading.BoundedSemaphore(slots)
        self._count = threading.Lock()  # += on an attribute is not atomic across threads
        self.wait_s = wait_s
        self.judged = self.dropped = 0  # frames since start-up, for /api/timings and benchmarks/live_load.py

    def try_run(self, function, *args):
        """(True, function(*args)) when a slot came free within wait_s, else (False, None)."""
        if not self._slots.acquire(timeout=self.wait_s):
            with self._count:
                self.dropped += 1
            return False, None
        try:
            with self._count:
                self.judged += 1
            return True, function(*args)
        finally:
            self._slots.release()
