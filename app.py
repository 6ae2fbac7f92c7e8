"""Gradio app (and Hugging Face Space) of the melanoma screening aid.

    python app.py                                    # http://127.0.0.1:7860, model from ./model
    MODEL_ID=runs/vit-tiny python app.py             # a local folder or a Hub model id
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7861 python app.py

Environment variables choose everything, as on Spaces: Gradio's own GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT and GRADIO_SHARE where it listens, MODEL_ID the model (`python app.py
--help` lists them all). The model is loaded once, when this module is imported; `demo` is
the module-level Blocks that Spaces (and `gradio app.py`) serve. When no model can be loaded
the app still starts and every request answers with one sentence on how to train one.

HTTP API: one public endpoint, `/predict`, takes an image file and returns JSON
(`{label, probabilities, risk_level, screening_threshold, high_risk_threshold,
model_id, model_version}`), or `{"error": "<message>", "reason": "<code>"}` for an
input it cannot use or that the input check refuses (melanoma_screen.input_check).
The page's own events are private, so the API page lists only `/predict`.
GET /healthz answers 200 once the model is loaded, else 503.

The same JSON comes from a lean route on the same server, for programs that
need no Gradio client: `POST /api/screen` with the image as the body (or as a
multipart file field), e.g. `curl --data-binary @lesion.jpg http://127.0.0.1:7860/api/screen`.
It skips Gradio's upload, queue and event stream, which cost most of the CPU of
a `/predict` call (benchmarks/README.md). `GET /api/timings` gives the CPU time
the model has spent per stage (decode, resize, statistics, model, feature space)
since start-up, and the live camera's frames judged and dropped; benchmarks/load_test.py and
benchmarks/live_load.py read it.

Feedback ("Report a wrong prediction") is stored only when that button is pressed:
in FEEDBACK_DIR (default ./feedback), or in the Hub dataset FEEDBACK_DATASET when set.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from melanoma_screen.explain import overlay_heatmap  # noqa: E402
from melanoma_screen.feedback import MAX_COMMENT_CHARS, TRUE_LABELS, FeedbackStore  # noqa: E402
from melanoma_screen.images import ImageLoadError, load_rgb_image  # noqa: E402
from melanoma_screen.input_check import REASONS as REFUSALS  # noqa: E402
from melanoma_screen.inference import (  # noqa: E402
    FAST, ModelLoadError, ScreeningModel, default_model_source,
)
from melanoma_screen.live import (  # noqa: E402
    LIVE_STREAM_EVERY, LIVE_TIME_LIMIT, FrameGate, captured_html, guidance_html, judge_frame, new_state,
)
from melanoma_screen.messages import render  # noqa: E402
from melanoma_screen.ui_text import LANGUAGES, TEXT  # noqa: E402

logger = logging.getLogger("app")

REPO_ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO_ROOT / "examples"
# The quick model for when model/ is missing; README.md has the command of the shipped one.
TRAIN_COMMAND = ("python train_vit.py --data-dir ../shared/data/melanoma_cancer_dataset "
                 "--scratch-config tiny --image-size 64 --max-steps 20 --output-dir model")
RISK_COLOURS = {  # background, border; dark text reads on all three in light and dark themes
    "low": ("#e7f6ec", "#2e7d32"),
    "moderate": ("#fff4e0", "#b26a00"),
    "high": ("#fdeaea", "#c62828"),
}
HEATMAP_MAX_SIDE = 1024
# Analyses that run at once; the rest wait in the queue (2 CPU cores: two).
MODEL_CONCURRENCY = 2
# Threads per analysis: the cores shared out between the concurrent analyses. With
# PyTorch's default, a thread per core for each analysis, two analyses put 4 threads
# on 2 cores that wait on each other at every operation: the heat-map's PyTorch pass
# went from 18 ms to 1.3 s (benchmarks/README.md). ONNX Runtime, which scores the
# images, uses one thread per image anyway. This is the only place the app sets threads.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
ANALYSIS_THREADS = max(1, _CORES // MODEL_CONCURRENCY)


def _lang(lang: str | None) -> str:
    return lang if lang in TEXT else "en"


def _number(value: float, lang: str, digits: int = 3) -> str:
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if lang == "fr" else text


def _percent(value: float, lang: str) -> str:
    # French writes 46,5 % (decimal comma, narrow no-break space before %).
    return _number(100 * value, lang, 1) + ("\u202f%" if lang == "fr" else "%")


# ---------------------------------------------------------------------------- model


def no_model_reason(source: str, error: Exception) -> str:
    """One line saying why `source` could not be loaded (no traceback)."""
    lines = str(error).strip().splitlines()
    if isinstance(error, ModelLoadError) and lines:
        return lines[0]  # already a sentence for people that names the source
    return f"could not load {source}: {type(error).__name__}" + (f": {lines[0]}" if lines else "")


def load_model(source: str) -> tuple[ScreeningModel | None, str | None]:
    """(model, None), or (None, a one-line reason) when the model cannot be loaded."""
    try:
        model = ScreeningModel.load(source, num_threads=ANALYSIS_THREADS, **FAST)
    except Exception as error:  # missing folder, offline Hub id, broken files: the app still starts
        reason = no_model_reason(source, error)
        logger.warning("No model loaded (%s). Train one with: %s", reason, TRAIN_COMMAND)
        return None, reason
    model.warm_up()  # the heat-map's PyTorch model, while the first pictures are scored without it
    return model, None


def no_model_message(reason: str | None, lang: str = "en", markup: bool = True) -> str:
    message = TEXT[lang]["no_model"].format(reason=html.escape(reason or "no model"), command=TRAIN_COMMAND)
    return message if markup else re.sub(r"</?code>", "`", html.unescape(message))


def image_source(payload):
    """The uploaded file behind an image payload: a path, bytes (data URL) or None.

    The events take raw payloads (preprocess=False) so that Gradio never decodes the
    file itself: a non-image, truncated file or decompression bomb reaches
    load_rgb_image, which turns it into a sentence for people.
    """
    if payload is None or payload == "":
        return None
    if isinstance(payload, (str, os.PathLike)):
        return str(payload)
    if isinstance(payload, (bytes, bytearray)):  # the lean route's request body
        return bytes(payload) or None
    if isinstance(payload, dict):
        if payload.get("path"):
            return str(payload["path"])
        url = payload.get("url") or ""
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.partition(",")[2], validate=False)
            except (binascii.Error, ValueError) as error:
                raise ImageLoadError("bad_data_url") from error
        return None
    raise ImageLoadError("bad_upload")


# ---------------------------------------------------------------------------- app logic


class Screener:
    """The functions behind the page and the API, bound to one (possibly missing) model."""

    def __init__(self, model: ScreeningModel | None, load_error: str | None = None, *, model_source: str | None = None,
                 feedback_dir: str | os.PathLike | None = None, feedback_dataset: str | None = None):
        self.model = model
        self.model_source = model_source  # what MODEL_ID named; /healthz reports it
        self.load_error = load_error if model is None else None
        if model is None and not self.load_error:
            self.load_error = "no model was given"
        self.feedback_dir = feedback_dir
        self.feedback_dataset = feedback_dataset
        self._store: FeedbackStore | None = None
        # Live frames get as many slots as analyses; one that finds them busy is dropped (melanoma_screen.live).
        self.live_gate = FrameGate(MODEL_CONCURRENCY)

    # -- API ------------------------------------------------------------------

    def predict(self, image) -> dict:
        """The `/predict` endpoint: the prediction as JSON, or {"error": message, "reason": code}."""
        if self.model is None:
            return {"error": no_model_message(self.load_error, markup=False), "reason": "no_model"}
        try:
            source = image_source(image)
            if source is None:
                return {"error": TEXT["en"]["no_image"], "reason": "no_image"}
            # A picture the input check refuses comes back as {"error", "reason", model_id, model_version}.
            return self.model.predict(source).to_json()
        except ImageLoadError as error:
            return {"error": str(error), "reason": error.reason}
        except Exception:
            logger.exception("prediction failed")
            return {"error": TEXT["en"]["internal"], "reason": "internal"}

    # -- page -----------------------------------------------------------------

    def analyse(self, image, lang):
        """Page event: (probabilities, risk box, heat map, result state, feedback status)."""
        lang = _lang(lang)
        state = self._analyse(image)
        view = render_result(state, lang)
        return view["probabilities"], view["risk"], state.pop("_heatmap", None), state, ""

    def live_frame(self, frame, live, lang):
        """Live camera event, per frame: (guidance, live state, captured frame, camera, restart button, then
        analyse's five outputs).

        Until a capture, and for a dropped frame, the result components keep what they show (gr.skip()).
        """
        lang = _lang(lang)
        keep = gr.skip()
        unchanged = (keep,) * 6
        live = live or new_state()
        if live.get("captured"):  # frames still in flight after the capture
            return (keep,) * 4 + unchanged
        if self.model is None:
            return (guidance_html("no_model", lang), live, keep, keep) + unchanged
        try:
            source = image_source(frame)
            if source is None:
                return (keep,) * 4 + unchanged
            judged, verdict = self.live_gate.try_run(judge_frame, self.model, source, live)
        except ImageLoadError:
            return (guidance_html("unreadable", lang), live, keep, keep) + unchanged
        except Exception:
            logger.exception("judging a live frame failed")  # the frame itself is never logged
            return (guidance_html("unreadable", lang), live, keep, keep) + unchanged
        if not judged:
            return (keep,) * 4 + unchanged
        guidance = guidance_html(verdict.state["guidance"], lang)
        if verdict.capture is None:
            return (guidance, verdict.state, keep, keep) + unchanged
        # The captured frame's bytes, scored exactly as an uploaded file is; the camera is
        # hidden, which ends its stream, until "Start again", which only now has something to restart.
        return (guidance, verdict.state, captured_html(verdict.capture), gr.update(visible=False),
                gr.update(visible=True), *self.analyse(verdict.capture, lang))

    def live_restart(self, lang):
        """Page event "Start again": a new live run, the camera shown, the button hidden until the next capture."""
        return guidance_html("start", _lang(lang)), new_state(), "", gr.update(visible=True), gr.update(visible=False)

    def show_mode_result(self, live, lang):
        """Page event, a tab chosen: the result panel shows that tab's result only, analyse's five outputs.

        The upload tab starts empty (its picture stays, one click from a result); the live tab
        shows its capture's result again, scored anew from the frame kept in the session's state.
        """
        lang = _lang(lang)
        captured = (live or {}).get("captured")
        if captured:
            return self.analyse(captured, lang)
        return None, render_result(None, lang)["risk"], None, None, ""

    def _analyse(self, image) -> dict:
        if self.model is None:
            return {"kind": "no_model", "reason": self.load_error}
        try:
            source = image_source(image)
            if source is None:
                return {"kind": "no_image"}
            # The same call as /predict and predict.py, so all three give the same numbers;
            # the full-size picture is decoded separately, only for the heat-map overlay.
            result = self.model.predict(source)
            if result.refused:
                return {"kind": "refused", "reason": result.input_check.reason}
            prediction = result.to_json()
            # Drafted like the model's decode: a 100 MP phone JPEG never exists at full size here.
            picture = load_rgb_image(source, draft_size=(HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE))
        except ImageLoadError as error:
            return {"kind": "bad_image", "code": error.code, "params": error.params}
        except Exception:
            logger.exception("analysis failed")
            return {"kind": "internal"}
        state = {"kind": "result", "prediction": prediction, "source": source}
        try:
            # The heat-map is for the eye: a phone photo is explained and shown at screen size,
            # not at 50 megapixels.
            shown = picture.copy()
            shown.thumbnail((HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE))
            state["_heatmap"] = overlay_heatmap(shown, self.model.explain(shown))
        except Exception:  # the prediction stands without its explanation
            logger.exception("heat map failed")
        return state

    def report(self, state, true_label, comment, lang):
        """Page event "Send report": the only place anything is stored.

        Returns (message, state); the state remembers the report so a second click
        does not store the same case twice.
        """
        text = TEXT[_lang(lang)]
        if not isinstance(state, dict) or state.get("kind") != "result":
            return text["analyse_first"], state
        if state.get("report_id"):
            return text["already_reported"].format(id=state["report_id"]), state
        if true_label not in TRUE_LABELS:
            return text["choose_truth"], state
        comment = (comment or "").strip()[:MAX_COMMENT_CHARS]
        try:
            # report() decodes the upload and keeps only its pixels (no EXIF, GPS or ICC).
            report_id = self.store().report(state["source"], state["prediction"], true_label, comment=comment,
                                            version=getattr(self.model, "version", None))
        except Exception as error:
            logger.exception("saving feedback failed")
            return text["feedback_failed"].format(reason=type(error).__name__), state
        return text["thanks"].format(id=report_id), {**state, "report_id": report_id}

    def store(self) -> FeedbackStore:
        # Created on the first report, so merely serving predictions never touches the disk.
        if self._store is None:
            dataset = self.feedback_dataset or os.environ.get("FEEDBACK_DATASET") or None
            self._store = FeedbackStore(folder=self.feedback_dir, hub_dataset_id=dataset)
        return self._store

    def timings(self) -> dict:
        """The model's CPU seconds per stage since start-up, how many pictures it scored, and the live frames."""
        live = {"live_frames": {"judged": self.live_gate.judged, "dropped": self.live_gate.dropped}}
        if self.model is None:
            return {"images": 0, "cpu_seconds": {}, **live}
        return {**self.model.clock.snapshot(), **live}

    def health(self) -> tuple[dict, int]:
        """GET /healthz, for a container's HEALTHCHECK: (JSON, 200) once the model is loaded, else 503."""
        if self.model is None:
            return {"status": "no_model", "reason": self.load_error}, 503
        # heatmap_ready: the PyTorch model behind the heat-map has been loaded (ScreeningModel.warm_up);
        # until then pictures are scored and a heat-map request waits for it.
        return {"status": "ok", "model_id": self.model_source or self.model.model_id,
                "model_version": self.model.version, "heatmap_ready": self.model.heatmap_ready}, 200

    def about(self, lang) -> str:
        return about_markdown(self.model, _lang(lang))


def render_result(state: dict | None, lang: str) -> dict:
    """The probabilities (gr.Label value) and the risk box (HTML) for a result state."""
    text = TEXT[lang]
    kind = (state or {}).get("kind")
    if kind == "result":
        prediction = state["prediction"]
        probabilities = {text["classes"].get(name, name): float(p) for name, p in prediction["probabilities"].items()}
        return {"probabilities": probabilities, "risk": risk_html(prediction, lang)}
    if kind is None:
        return {"probabilities": None, "risk": message_html(text["waiting"], "info")}
    if kind == "no_model":
        message = no_model_message(state.get("reason"), lang)
    elif kind == "no_image":
        message = html.escape(text["no_image"])
    elif kind == "bad_image":
        message = html.escape(text["bad_image"].format(reason=render(state["code"], state["params"], lang)))
    elif kind == "refused":
        reason = state.get("reason")
        message = (f'<strong>{html.escape(text["refused_title"])}</strong> '
                   f'<span class="refusal" data-reason="{html.escape(str(reason))}">'
                   f'{html.escape(render(reason, lang=lang))}</span>')
    else:
        message = html.escape(text["internal"])
    return {"probabilities": None, "risk": message_html(message, "error")}


def risk_html(prediction: dict, lang: str) -> str:
    text = TEXT[lang]
    level = prediction["risk_level"]
    background, border = RISK_COLOURS.get(level, ("#eef", "#335"))
    p = prediction["probabilities"]["malignant"]
    single = prediction["screening_threshold"] >= prediction["high_risk_threshold"]
    line = text["probability_line_one_threshold" if single else "probability_line"].format(
        p=_percent(p, lang), s=_percent(prediction["screening_threshold"], lang),
        h=_percent(prediction["high_risk_threshold"], lang))
    return (
        f'<div class="risk-box" data-risk="{level}" data-probability="{float(p)!r}" role="status" style="background:{background};'
        f'border-left:6px solid {border};color:#1b1b1b;padding:12px 16px;border-radius:8px">'
        f'<div style="font-size:1.25em">{html.escape(text["risk_title"])} '
        f'<strong>{html.escape(text["risk"][level])}</strong></div>'
        f'<p style="margin:6px 0 4px 0;font-size:1.1em">{html.escape(text["advice"][level])}</p>'
        f'<p style="margin:0;font-size:0.9em;opacity:0.85">{html.escape(line)}</p></div>'
    )


def message_html(message_markup: str, kind: str) -> str:
    style = ("background:#fdeaea;border-left:6px solid #c62828;color:#1b1b1b" if kind == "error"
             else "border:1px dashed #999;opacity:0.85")
    return (f'<div class="result-message" data-kind="{kind}" role="status" '
            f'style="{style};padding:12px 16px;border-radius:8px">{message_markup}</div>')


def disclaimer_html(lang: str) -> str:
    return ('<div class="disclaimer" role="note" style="background:#fff8e1;border:1px solid #f0b400;'
            'color:#1b1b1b;padding:10px 14px;border-radius:8px">⚠️ ' + TEXT[lang]["disclaimer"] + "</div>")


def metrics_by_source(report: dict, text: dict, lang: str) -> list[str]:
    """One column per evaluation set: the test split, then each external set scored at the same thresholds.

    The thresholds come from validation data of the training sources; the
    external columns show how far sensitivity and specificity move elsewhere.
    """
    test = report["test"]
    columns = [(text["test_column"], test)]
    columns += [(text["external_column"].format(name=name), result) for name, result in report["external"].items()]
    names = text["metrics"]
    t = _number(test["at_screening_threshold"]["threshold"], lang)
    h = _number(test["at_high_risk_threshold"]["threshold"], lang)

    def cell(result: dict, key: str, metric: str) -> str:
        value = (result.get(key) or {}).get(metric)
        return "n/a" if value is None else _number(value, lang)

    rows = [
        (names["images"], lambda r: f"{r['at_0_5'].get('n', '?')} ({r['at_0_5'].get('n_malignant', '?')})"),
        (names["roc_auc"], lambda r: cell(r, "at_0_5", "roc_auc")),
        (names["accuracy"], lambda r: cell(r, "at_0_5", "accuracy")),
        (names["sensitivity"].format(t=t), lambda r: cell(r, "at_screening_threshold", "sensitivity")),
        (names["specificity"].format(t=t), lambda r: cell(r, "at_screening_threshold", "specificity")),
        (names["sensitivity_high"].format(h=h), lambda r: cell(r, "at_high_risk_threshold", "sensitivity")),
        (names["specificity_high"].format(h=h), lambda r: cell(r, "at_high_risk_threshold", "specificity")),
        (names["ece"], lambda r: cell(r, "at_0_5", "ece")),
    ]
    lines = [text["about_metrics_intro"], "",
             f"| {text['metric']} | " + " | ".join(name for name, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(value(result) for _, result in columns) + " |" for label, value in rows]
    if len(columns) > 1:
        lines += ["", text["about_external_note"]]
    return lines


def site_thresholds_text(site: dict, screening: float, high: float, text: dict, lang: str) -> str:
    """The thresholds' sentence for a folder written by calibrate_site.py: refitted where, on how many images."""
    fitted = site.get("n_fitted") or {}
    at_site = site.get("at_site_thresholds") or {}
    sensitivity = (at_site.get("at_screening_threshold") or {}).get("sensitivity")
    specificity = (at_site.get("at_high_risk_threshold") or {}).get("specificity")

    def number(value):
        return "?" if value is None else _number(value, lang)

    return text["about_site_thresholds"].format(
        s=_number(screening, lang), h=_number(high, lang), n=sum(fitted.values()) or "?", m=fitted.get("malignant", "?"),
        b=fitted.get("benign", "?"), date=site.get("date", "?"), source=site.get("source_model", "?"),
        s0=number(site.get("source_screening_threshold")), h0=number(site.get("source_high_risk_threshold")),
        sens="?" if sensitivity is None else _percent(sensitivity, lang),
        spec="?" if specificity is None else _percent(specificity, lang))


def about_markdown(model: ScreeningModel | None, lang: str) -> str:
    text = TEXT[lang]
    if model is None:
        return text["no_model_about"]
    lines = [text["about_model"].format(id=model.model_id, version=getattr(model, "version", None) or "?",
                                        size=getattr(model, "image_size", "?")), ""]
    report = getattr(model, "eval_results", None)
    if not (report and report["test"]):
        lines.append(text["about_no_report"])
    else:
        lines += metrics_by_source(report, text, lang)
    config = getattr(model, "config", None)
    screening = getattr(config, "screening_threshold", None)
    high = getattr(config, "high_risk_threshold", None)
    site = getattr(config, "site_calibration", None)
    if screening is not None and high is not None and isinstance(site, dict):
        lines += ["", site_thresholds_text(site, screening, high, text, lang)]
    elif screening is not None and high is not None:
        lines += ["", text["about_thresholds"].format(s=_number(screening, lang), h=_number(high, lang))]
    adaptation = getattr(config, "site_adaptation", None)
    if isinstance(adaptation, dict):
        lines += ["", text["about_site_adaptation"].format(n=adaptation.get("n_adapted", "?"), date=adaptation.get("date", "?"),
                                                            source=adaptation.get("source_model", "?"))]
    check = getattr(model, "input_check", None)
    accepted = (check.meta.get("validation_acceptance") if check is not None else None)
    lines += ["", text["about_no_check"] if check is None else
              text["about_check"].format(accepted="?" if accepted is None else _percent(accepted, lang))]
    lines += ["", text["about_limits"]]
    return "\n".join(lines)


def read_examples(folder: Path = EXAMPLES_DIR) -> list[list[str]]:
    """[[image path, true label], ...] from examples/labels.csv."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        return []
    with labels.open(newline="", encoding="utf-8") as handle:
        return [[str(folder / row["file"]), row["label"]] for row in csv.DictReader(handle)
                if (folder / row["file"]).is_file()]


# ---------------------------------------------------------------------------- page

# One language mechanism, the EN/FR switch answered on the server, because it reaches
# every text on the page: the static ones and those the server writes after an event
# (the result, a refusal's reason from melanoma_screen.messages, the model's figures).
# gr.I18n reaches only static properties, follows nothing but the browser's locale, and
# Python cannot change it. The switch starts at the browser's language (demo.load), so
# a French browser still gets French, a moment after the first paint.


def static_text(key, lang: str = "en"):
    """A component property's value for text `key` in `lang`.

    A dict of texts gives radio choices in TRUE_LABELS order, a tuple of keys a list of texts.
    """
    if isinstance(key, tuple):
        return [static_text(k, lang) for k in key]
    value = TEXT[lang][key]
    return [(value[code], code) for code in TRUE_LABELS] if isinstance(value, dict) else value


# The plain routes beside Gradio's (see the module's docstring).
SCREEN_ROUTE = "/api/screen"
TIMINGS_ROUTE = "/api/timings"
HEALTH_ROUTE = "/healthz"
MAX_UPLOAD_BYTES = 30 * 1024 * 1024  # also launch()'s max_file_size for the page's uploads
# The examples as a grid of thumbnails, each over its true diagnosis: as a table, one example per
# full-width row, they took 1,300 px of a phone's screen. Gradio lays out a dataset of two
# components only as a table, so the table's rows become the grid's cells.
PAGE_CSS = """
#examples table { display: block; }
#examples thead { display: none; }
#examples tbody { display: grid; grid-template-columns: repeat(auto-fill, minmax(72px, 1fr)); gap: 4px; }
#examples tbody tr { display: flex; flex-direction: column; align-items: center; }
#examples tbody td { padding: 2px !important; border: none !important; text-align: center; font-size: 0.85em; }
#examples tbody td .container { width: 64px !important; height: 64px !important; }
"""


# Gradio writes "Click to Access Webcam" on its camera button in English, untranslated even for a French
# browser, and no property changes it: the page puts the chosen language's sentence in its place
# whenever the button is drawn again or the language changes.
WEBCAM_TEXT_JS = """() => {
    const texts = %s;
    const known = new Set(Object.values(texts));
    const translate = () => {
        const chosen = document.querySelector('#language input:checked');
        const label = chosen && chosen.closest('label');
        const lang = label && label.textContent.includes('Français') ? 'fr' : 'en';
        for (const button of document.querySelectorAll('#live-camera button, #lesion-image button')) {
            const walker = document.createTreeWalker(button, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                if (known.has(node.nodeValue.trim()) && node.nodeValue.trim() !== texts[lang]) node.nodeValue = ' ' + texts[lang];
            }
        }
    };
    new MutationObserver(translate).observe(document.body, {subtree: true, childList: true});
    document.addEventListener('change', translate);
    translate();
}""" % json.dumps({lang: TEXT[lang]["webcam_access"] for lang in TEXT}, ensure_ascii=False)


def server_routes(screener: "Screener") -> list[Route]:
    """SCREEN_ROUTE, TIMINGS_ROUTE and HEALTH_ROUTE, answered by `screener`."""
    import anyio

    # As many analyses at once as the Gradio queue runs; the others wait for a slot.
    limiter = anyio.CapacityLimiter(MODEL_CONCURRENCY)

    # Plain Starlette routes: they get the request itself, with no FastAPI parameter
    # parsing (which, under postponed annotations, read `request` as a query field).
    async def screen(request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return JSONResponse({"error": render("too_large_upload"), "reason": "too_large"}, status_code=413)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = next((value for value in form.values() if hasattr(value, "read")), None)
            body = await upload.read() if upload is not None else b""
        else:
            body = await request.body()
        if len(body) > MAX_UPLOAD_BYTES:
            return JSONResponse({"error": render("too_large_upload"), "reason": "too_large"}, status_code=413)
        return JSONResponse(await anyio.to_thread.run_sync(screener.predict, body, limiter=limiter))

    async def timings(request):
        return JSONResponse(screener.timings())

    # Outside Gradio's queue: a container's health check costs no analysis slot.
    async def health(request):
        payload, status = screener.health()
        return JSONResponse(payload, status_code=status)

    return [Route(SCREEN_ROUTE, screen, methods=["POST"], include_in_schema=False),
            Route(TIMINGS_ROUTE, timings, methods=["GET"], include_in_schema=False),
            Route(HEALTH_ROUTE, health, methods=["GET"], include_in_schema=False)]


class Page(gr.Blocks):
    """Blocks whose server carries server_routes and the upload limit, however it is launched."""

    screener: "Screener"

    def launch(self, *args, app_kwargs: dict | None = None, **kwargs):
        # Handed to the server's app as launch() builds it, before it listens: the routes
        # answer from the first request, with no moment when the page is up and they 404.
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["routes"] = [*server_routes(self.screener), *app_kwargs.get("routes", [])]
        kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
        kwargs.setdefault("pwa", True)  # a phone can install the page like an app
        kwargs["css"] = PAGE_CSS + (kwargs.get("css") or "")
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)


@dataclass
class Layout:
    """The page's components that events read or write, and the texts the language switch re-renders."""

    language: gr.Radio
    disclaimer: gr.HTML
    image: gr.Image
    analyse: gr.Button
    risk: gr.HTML
    probabilities: gr.Label
    heatmap: gr.Image
    examples: gr.Examples
    truth: gr.Radio
    comment: gr.Textbox
    send: gr.Button
    feedback_status: gr.Markdown
    about: gr.Markdown
    result: gr.State
    api_image: gr.Image
    api_result: gr.JSON
    api_trigger: gr.Button
    live_camera: gr.Image
    guidance: gr.HTML
    captured: gr.HTML
    restart: gr.Button
    live_state: gr.State
    upload_tab: gr.Tab
    live_tab: gr.Tab
    example_rows: list
    localised: list = field(default_factory=list)  # (component, {property: text key})


def lay_out(screener: "Screener", initial: dict | None) -> Layout:
    """The page's components, in English, inside the Blocks being built."""
    localised = []

    def static(component_class, texts: dict, **kwargs):
        component = component_class(**kwargs, **{prop: static_text(key) for prop, key in texts.items()})
        localised.append((component, texts))
        return component

    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=240):
            static(gr.Markdown, {"value": "heading"}, elem_id="title")
        with gr.Column(scale=1, min_width=180):
            language = gr.Radio(LANGUAGES, value="en", label="Language / Langue", elem_id="language")
    disclaimer = gr.HTML(disclaimer_html("en"), elem_id="disclaimer")

    # On a phone the two columns stack: image, button, then the result right below,
    # before the examples.
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280), gr.Tabs(elem_id="modes"):
            # On phones, use the back camera and do not mirror the picture.
            camera = gr.WebcamOptions(mirror=False, constraints={"video": {"facingMode": "environment"}})
            with static(gr.Tab, {"label": "tab_upload"}, elem_id="tab-upload") as upload_tab:
                image = static(gr.Image, {"label": "image"}, sources=["upload", "webcam", "clipboard"],
                               type="filepath", image_mode=None, elem_id="lesion-image", webcam_options=camera)
                analyse = static(gr.Button, {"value": "analyse"}, variant="primary", elem_id="analyse")
            with static(gr.Tab, {"label": "tab_live"}, elem_id="tab-live") as live_tab:
                live_camera = static(gr.Image, {"label": "live_camera"}, sources=["webcam"], streaming=True,
                                     elem_id="live-camera", webcam_options=camera)
                guidance = gr.HTML(guidance_html("start", "en"), elem_id="live-guidance")
                captured = gr.HTML("", elem_id="live-captured")
                restart = static(gr.Button, {"value": "live_restart"}, elem_id="live-restart", visible=False)
        with gr.Column(scale=1, min_width=280):
            risk = gr.HTML(render_result(initial, "en")["risk"], elem_id="risk")
            probabilities = static(gr.Label, {"label": "probabilities"}, num_top_classes=2, show_heading=False,
                                   elem_id="probabilities")
            heatmap = static(gr.Image, {"label": "heatmap"}, interactive=False, format="png", elem_id="heatmap",
                             buttons=["download", "fullscreen"])
            static(gr.Markdown, {"value": "how_to_read"}, elem_id="how-to-read")

    # The second input only carries each example's true diagnosis into the table.
    true_diagnosis = gr.Textbox(label=TEXT["en"]["true_diagnosis"], visible=False)
    example_rows = read_examples()
    examples = gr.Examples(example_rows, inputs=[image, true_diagnosis], label=static_text("examples"),
                           cache_examples=False, examples_per_page=8, elem_id="examples")
    headers = ("example", "true_diagnosis")  # short: fits a phone's width
    examples.dataset.headers = static_text(headers)
    localised.append((examples.dataset, {"label": "examples", "headers": headers}))

    with static(gr.Accordion, {"label": "feedback_title"}, open=False, elem_id="feedback"):
        static(gr.Markdown, {"value": "feedback_intro"})
        truth = static(gr.Radio, {"label": "truth_label", "choices": "truth_choices"}, elem_id="truth")
        comment = static(gr.Textbox, {"label": "comment", "placeholder": "comment_placeholder"}, lines=2,
                         max_length=MAX_COMMENT_CHARS, elem_id="comment")
        send = static(gr.Button, {"value": "send"}, elem_id="send-report")
        feedback_status = gr.Markdown("", elem_id="feedback-status")

    with static(gr.Accordion, {"label": "about_title"}, open=False, elem_id="about"):
        about = gr.Markdown(screener.about("en"), elem_id="about-model")

    # The public HTTP API's input and output, and its trigger: a hidden button the page
    # never clicks, so the page's own (private) events carry the heat map and texts.
    api_image = gr.Image(type="filepath", image_mode=None, visible=False, label="image")
    api_result = gr.JSON(visible=False, label="prediction")
    api_trigger = gr.Button(visible=False)
    return Layout(language=language, disclaimer=disclaimer, image=image, analyse=analyse, risk=risk,
                  probabilities=probabilities, heatmap=heatmap, examples=examples, truth=truth, comment=comment,
                  send=send, feedback_status=feedback_status, about=about, result=gr.State(initial),
                  api_image=api_image, api_result=api_result, api_trigger=api_trigger, live_camera=live_camera,
                  guidance=guidance, captured=captured, restart=restart, live_state=gr.State(new_state()),
                  upload_tab=upload_tab, live_tab=live_tab, example_rows=example_rows, localised=localised)


def wire(page: Layout, screener: "Screener", demo: gr.Blocks) -> None:
    """The events: the API, the analysis, the report and the language switch."""
    page.api_trigger.click(
        screener.predict, inputs=page.api_image, outputs=page.api_result, api_name="predict",
        api_description=("Screen one dermoscopic image. Returns {label, probabilities: {benign, malignant}, "
                         "risk_level: low|moderate|high, screening_threshold, high_risk_threshold, model_id, "
                         "model_version}, or {error: message, reason: code} when the image cannot be used or "
                         f"the input check refuses it ({', '.join(REFUSALS)})."),
        preprocess=False, concurrency_id="model",
    )

    analysis = dict(fn=screener.analyse, inputs=[page.image, page.language],
                    outputs=[page.probabilities, page.risk, page.heatmap, page.result, page.feedback_status],
                    preprocess=False, api_visibility="private", concurrency_id="model")
    page.analyse.click(**analysis)
    page.examples.load_input_event.then(**analysis)

    # Live camera: a few frames a second; the browser sends the next only once this one is answered.
    results = [page.probabilities, page.risk, page.heatmap, page.result, page.feedback_status]
    page.live_camera.stream(
        screener.live_frame, inputs=[page.live_camera, page.live_state, page.language],
        outputs=[page.guidance, page.live_state, page.captured, page.live_camera, page.restart, *results],
        stream_every=LIVE_STREAM_EVERY, time_limit=LIVE_TIME_LIMIT, preprocess=False, api_visibility="private",
        # No queue limit of its own: the server's FrameGate drops what it cannot judge at once.
        concurrency_limit=None, show_progress="hidden",
    )
    page.restart.click(screener.live_restart, inputs=page.language,
                       outputs=[page.guidance, page.live_state, page.captured, page.live_camera, page.restart],
                       api_visibility="private", queue=False)
    # Both tabs share the result panel: each shows its own result, never the other's.
    page.upload_tab.select(screener.show_mode_result, inputs=[gr.State(None), page.language], outputs=results,
                           api_visibility="private", queue=False)
    page.live_tab.select(screener.show_mode_result, inputs=[page.live_state, page.language], outputs=results,
                         api_visibility="private", concurrency_id="model")

    page.send.click(screener.report, inputs=[page.result, page.truth, page.comment, page.language],
                    outputs=[page.feedback_status, page.result], api_visibility="private", concurrency_limit=1)

    def switch_language(lang, state, live):
        lang = _lang(lang)
        view = render_result(state, lang)
        updates = {component: {prop: static_text(key, lang) for prop, key in texts.items()}
                   for component, texts in page.localised}
        # The panels the server renders: the result as it stands, the disclaimer, the model's figures.
        updates[page.probabilities]["value"] = view["probabilities"]
        # The examples' true diagnoses are cells of the table, not a property: the rows are given again.
        labels = TEXT[lang]["example_labels"]
        updates[page.examples.dataset]["samples"] = [[path, labels.get(label, label)]
                                                     for path, label in page.example_rows]
        updates |= {page.risk: {"value": view["risk"]}, page.disclaimer: {"value": disclaimer_html(lang)},
                    page.feedback_status: {"value": ""}, page.about: {"value": screener.about(lang)},
                    page.guidance: {"value": guidance_html((live or new_state())["guidance"], lang)}}
        return {component: gr.update(**properties) for component, properties in updates.items()}

    page.language.change(
        switch_language, inputs=[page.language, page.result, page.live_state],
        outputs=[component for component, _ in page.localised] + [page.risk, page.disclaimer, page.feedback_status,
                                                                   page.about, page.guidance],
        api_visibility="private", queue=False,
    )
    # The switch starts at the browser's language.
    demo.load(None, None, page.language, api_visibility="private", queue=False,
              js="() => (navigator.language || '').toLowerCase().startsWith('fr') ? 'fr' : 'en'")
    demo.load(None, None, None, api_visibility="private", queue=False, js=WEBCAM_TEXT_JS)


def build_demo(model: ScreeningModel | None, load_error: str | None = None, *, model_source: str | None = None,
               feedback_dir: str | os.PathLike | None = None, feedback_dataset: str | None = None) -> Page:
    """The Blocks app around `model` (None: the page explains how to train one).

    The Screener holding the event functions is `demo.screener`.
    """
    screener = Screener(model, load_error, model_source=model_source, feedback_dir=feedback_dir,
                        feedback_dataset=feedback_dataset)
    initial = {"kind": "no_model", "reason": screener.load_error} if model is None else None
    with Page(title="Melanoma screening aid", analytics_enabled=False) as demo:
        wire(lay_out(screener, initial), screener, demo)
    # At most MODEL_CONCURRENCY images in the model at once, a bounded waiting line.
    demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=32)
    demo.screener = screener
    return demo


# ---------------------------------------------------------------------------- entry point

# Gradio's own settings choose where the server listens, as on Spaces; ours, the model.
SETTINGS = {
    "MODEL_ID": "local model folder or Hugging Face Hub model id (default: ./model)",
    "GRADIO_SERVER_NAME": "address to listen on (default: 127.0.0.1; 0.0.0.0: every interface)",
    "GRADIO_SERVER_PORT": "port (default: 7860, or the next free one above it)",
    "GRADIO_SHARE": "True: also a public gradio.live link (default: off)",
    "FEEDBACK_DIR": "folder for reports of wrong predictions (default: ./feedback)",
    "FEEDBACK_DATASET": "Hub dataset the reports are also uploaded to (needs HF_TOKEN)",
}
# The command-line flags these settings replaced, refused with the setting to use.
MOVED_FLAGS = {"--model": "MODEL_ID", "--host": "GRADIO_SERVER_NAME", "--port": "GRADIO_SERVER_PORT",
               "--share": "GRADIO_SHARE"}


class MovedToEnvironment(argparse.Action):
    """An old flag: say which environment variable took its place, instead of ignoring it."""

    def __call__(self, parser, namespace, values, option_string=None):
        name = MOVED_FLAGS[option_string]
        value = "True" if option_string == "--share" else (values or "...")
        parser.error(f"{option_string} is gone: set the environment variable {name} instead, "
                     f"e.g. {name}={value} python app.py")


def parse_args(argv=None) -> argparse.Namespace:
    """Only --help: the app is configured by environment variables (SETTINGS)."""
    parser = argparse.ArgumentParser(
        description="Serve the melanoma screening aid (a Gradio app) on http://127.0.0.1:7860.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (environment variables):\n" + "".join(
            f"  {name:<20} {meaning}\n" for name, meaning in SETTINGS.items())
        + "\nexample: MODEL_ID=runs/vit-tiny GRADIO_SERVER_PORT=7861 python app.py")
    for flag in MOVED_FLAGS:
        parser.add_argument(flag, nargs=0 if flag == "--share" else "?", action=MovedToEnvironment,
                            help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # before the model loads: --help and a refused flag answer at once
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
MODEL_SOURCE = default_model_source()
MODEL, MODEL_ERROR = load_model(MODEL_SOURCE)
demo = build_demo(MODEL, MODEL_ERROR, model_source=MODEL_SOURCE)
predict = demo.screener.predict

if __name__ == "__main__":
    demo.launch()
