"""Gradio app (and Hugging Face Space) of the melanoma screening aid.

    python app.py                         # http://127.0.0.1:7860, model from ./model
    python app.py --model runs/vit-tiny   # a local folder or a Hub model id
    MODEL_ID=owner/name python app.py     # same, through the environment (Spaces)

The model is loaded once, when this module is imported; `demo` is the module-level
Blocks that Spaces (and `gradio app.py`) serve. When no model can be loaded the app
still starts and every request answers with one sentence on how to train one.

HTTP API: one public endpoint, `/predict`, takes an image file and returns JSON
(`{label, probabilities, risk_level, screening_threshold, high_risk_threshold,
model_id, model_version}`), or `{"error": "<message>", "reason": "<code>"}` for an
input it cannot use or that the input check refuses (melanoma_screen.input_check).
The page's own events are private, so the API page lists only `/predict`.
`python app.py` also serves GET /healthz: 200 once the model is loaded, else 503.

The same JSON comes from a lean route on the same server, for programs that
need no Gradio client: `POST /api/screen` with the image as the body (or as a
multipart file field), e.g. `curl --data-binary @lesion.jpg http://127.0.0.1:7860/api/screen`.
It skips Gradio's upload, queue and event stream, which cost most of the CPU of
a `/predict` call (benchmarks/README.md). `GET /api/timings` gives the CPU time
the model has spent per stage (decode, resize, statistics, model, feature space)
since start-up; benchmarks/load_test.py reads it.

Feedback ("Report a wrong prediction") is stored only when that button is pressed:
in FEEDBACK_DIR (default ./feedback), or in the Hub dataset FEEDBACK_DATASET when set.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import html
import logging
import os
import re
import sys
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
        return ScreeningModel.load(source, num_threads=ANALYSIS_THREADS, **FAST), None
    except Exception as error:  # missing folder, offline Hub id, broken files: the app still starts
        reason = no_model_reason(source, error)
        logger.warning("No model loaded (%s). Train one with: %s", reason, TRAIN_COMMAND)
        return None, reason


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

    def __init__(self, model: ScreeningModel | None, load_error: str | None = None,
                 feedback_dir: str | os.PathLike | None = None, feedback_dataset: str | None = None):
        self.model = model
        self.load_error = load_error if model is None else None
        if model is None and not self.load_error:
            self.load_error = "no model was given"
        self.feedback_dir = feedback_dir
        self.feedback_dataset = feedback_dataset
        self._store: FeedbackStore | None = None

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
        """The model's CPU seconds per stage since start-up, and how many pictures it scored."""
        if self.model is None:
            return {"images": 0, "cpu_seconds": {}}
        return self.model.clock.snapshot()

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
        f'<div class="risk-box" data-risk="{level}" role="status" style="background:{background};'
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

# The page's static texts as gr.I18n translations, so a browser set to French gets
# them in French from the first paint. gr.I18n follows the browser's locale only and
# Python cannot change it, so the explicit EN/FR switch (build_demo) re-renders these
# texts too, besides the panels built on the server (result, disclaimer, about).
# The upload Image is left out: Gradio 6.31 shows its gr.I18n label as "[object Object]".
# Dataset headers are plain strings in Gradio, which gr.I18n does not reach.
I18N_KEYS = ("heading", "analyse", "examples", "probabilities", "heatmap", "how_to_read", "feedback_title",
             "feedback_intro", "truth_label", "truth_choices", "comment", "comment_placeholder", "send", "about_title")


def i18n_translations() -> dict[str, dict[str, str]]:
    """{lang: {key: text}} for gr.I18n; a dict of choices becomes one key per choice ("truth_choices.benign")."""
    def flat(key, value):
        return {f"{key}.{choice}": text for choice, text in value.items()} if isinstance(value, dict) else {key: value}
    return {lang: {k: v for key in I18N_KEYS for k, v in flat(key, text[key]).items()} for lang, text in TEXT.items()}


I18N = gr.I18n(**i18n_translations())


def static_text(key, lang: str | None = None):
    """A component property's value for text `key` in `lang`; lang None: the first render, through gr.I18n
    where I18N_KEYS allows, else in English.

    A dict of texts gives radio choices in TRUE_LABELS order, a tuple of keys a list of texts.
    """
    if isinstance(key, tuple):
        return [static_text(k, lang) for k in key]
    value = TEXT[lang or "en"][key]
    i18n = lang is None and key in I18N_KEYS
    if isinstance(value, dict):
        return [(I18N(f"{key}.{code}") if i18n else value[code], code) for code in TRUE_LABELS]
    return I18N(key) if i18n else value


# The lean route: an image in the request body, /predict's JSON back (see the module's docstring).
SCREEN_ROUTE = "/api/screen"
TIMINGS_ROUTE = "/api/timings"
MAX_UPLOAD_BYTES = 30 * 1024 * 1024  # launch()'s max_file_size for the page's uploads


def add_lean_routes(app, screener: "Screener") -> None:
    """SCREEN_ROUTE and TIMINGS_ROUTE on the server's FastAPI app."""
    import anyio
    from fastapi import Request
    from fastapi.responses import JSONResponse

    # As many analyses at once as the Gradio queue runs; the others wait for a slot.
    limiter = anyio.CapacityLimiter(MODEL_CONCURRENCY)

    async def screen(request: Request):
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

    async def timings():
        return JSONResponse(screener.timings())

    app.add_api_route(SCREEN_ROUTE, screen, methods=["POST"], include_in_schema=False)
    app.add_api_route(TIMINGS_ROUTE, timings, methods=["GET"], include_in_schema=False)


class Page(gr.Blocks):
    """Blocks whose launch() brings the page's gr.I18n translations and the lean routes, however it is launched."""

    def launch(self, *args, i18n: gr.I18n | None = None, prevent_thread_lock: bool = False, **kwargs):
        # The server's FastAPI app exists once launch() has built it: started without
        # blocking, given the routes, then blocked on as launch() itself would.
        result = super().launch(*args, i18n=i18n or I18N, prevent_thread_lock=True, **kwargs)
        add_lean_routes(self.app, self.screener)
        if not prevent_thread_lock:
            self.block_thread()
        return result


def build_demo(model: ScreeningModel | None, load_error: str | None = None, *,
               feedback_dir: str | os.PathLike | None = None, feedback_dataset: str | None = None) -> gr.Blocks:
    """The Blocks app around `model` (None: the page explains how to train one).

    The Screener holding the event functions is `demo.screener`.
    """
    screener = Screener(model, load_error, feedback_dir=feedback_dir, feedback_dataset=feedback_dataset)
    initial = {"kind": "no_model", "reason": screener.load_error} if model is None else None
    localised = []  # (component, {property: text key}): what the language switch re-renders

    def static(component_class, texts: dict, **kwargs):
        component = component_class(**kwargs, **{prop: static_text(key) for prop, key in texts.items()})
        localised.append((component, texts))
        return component

    with Page(title="Melanoma screening aid", analytics_enabled=False) as demo:
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=240):
                static(gr.Markdown, {"value": "heading"}, elem_id="title")
            with gr.Column(scale=1, min_width=180):
                language = gr.Radio(LANGUAGES, value="en", label="Language / Langue", elem_id="language")
        disclaimer = gr.HTML(disclaimer_html("en"), elem_id="disclaimer")

        # On a phone the two columns stack: image, button, then the result right below,
        # before the examples.
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                image = static(
                    gr.Image, {"label": "image"}, sources=["upload", "webcam", "clipboard"], type="filepath",
                    image_mode=None, elem_id="lesion-image",
                    # On phones, use the back camera and do not mirror the picture.
                    webcam_options=gr.WebcamOptions(mirror=False, constraints={"video": {"facingMode": "environment"}}),
                )
                analyse_button = static(gr.Button, {"value": "analyse"}, variant="primary", elem_id="analyse")
            with gr.Column(scale=1, min_width=280):
                first = render_result(initial, "en")
                risk = gr.HTML(first["risk"], elem_id="risk")
                probabilities = static(gr.Label, {"label": "probabilities"}, num_top_classes=2, show_heading=False,
                                       elem_id="probabilities")
                heatmap = static(gr.Image, {"label": "heatmap"}, interactive=False, format="png", elem_id="heatmap",
                                 buttons=["download", "fullscreen"])
                static(gr.Markdown, {"value": "how_to_read"}, elem_id="how-to-read")

        # The second input only carries each example's true diagnosis into the table.
        true_diagnosis = gr.Textbox(label=TEXT["en"]["true_diagnosis"], visible=False)
        examples = gr.Examples(read_examples(), inputs=[image, true_diagnosis], label=static_text("examples"),
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

        result_state = gr.State(initial)

        # The public HTTP API: file in, JSON out. Its trigger is a hidden button the page
        # never clicks, so the page's own (private) events carry the heat map and texts.
        api_image = gr.Image(type="filepath", image_mode=None, visible=False, label="image")
        api_result = gr.JSON(visible=False, label="prediction")
        api_trigger = gr.Button(visible=False)
        api_trigger.click(
            screener.predict, inputs=api_image, outputs=api_result, api_name="predict",
            api_description=("Screen one dermoscopic image. Returns {label, probabilities: {benign, malignant}, "
                             "risk_level: low|moderate|high, screening_threshold, high_risk_threshold, model_id, "
                             "model_version}, or {error: message, reason: code} when the image cannot be used or "
                             f"the input check refuses it ({', '.join(REFUSALS)})."),
            preprocess=False, concurrency_id="model",
        )

        analysis = dict(fn=screener.analyse, inputs=[image, language],
                        outputs=[probabilities, risk, heatmap, result_state, feedback_status],
                        preprocess=False, api_visibility="private", concurrency_id="model")
        analyse_button.click(**analysis)
        examples.load_input_event.then(**analysis)

        send.click(screener.report, inputs=[result_state, truth, comment, language],
                   outputs=[feedback_status, result_state],
                   api_visibility="private", concurrency_limit=1)

        def switch_language(lang, state):
            lang = _lang(lang)
            view = render_result(state, lang)
            updates = {component: {prop: static_text(key, lang) for prop, key in texts.items()}
                       for component, texts in localised}
            # The panels the server renders: the result as it stands, the disclaimer, the model's figures.
            updates[probabilities]["value"] = view["probabilities"]
            updates |= {risk: {"value": view["risk"]}, disclaimer: {"value": disclaimer_html(lang)},
                        feedback_status: {"value": ""}, about: {"value": screener.about(lang)}}
            return {component: gr.update(**properties) for component, properties in updates.items()}

        language.change(
            switch_language, inputs=[language, result_state],
            outputs=[component for component, _ in localised] + [risk, disclaimer, feedback_status, about],
            api_visibility="private", queue=False,
        )
        # The page opens in the browser's language, the one gr.I18n showed the static texts in.
        demo.load(None, None, language, js="() => (navigator.language || '').toLowerCase().startsWith('fr') ? 'fr' : 'en'",
                  api_visibility="private", queue=False)

    # At most MODEL_CONCURRENCY images in the model at once, a bounded waiting line.
    demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=32)
    demo.screener = screener
    return demo


# ---------------------------------------------------------------------------- entry point


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the melanoma screening aid.")
    parser.add_argument("--model", default=None,
                        help="local model folder or Hub id (default: $MODEL_ID, else ./model)")
    # Spaces sets GRADIO_SERVER_NAME/PORT; keep them as the defaults so the Space runs unchanged.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    return parser.parse_args(argv)


# Only `python app.py` reads the command line; `import app` (tests, `gradio app.py`) uses the environment.
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
MODEL_SOURCE = ARGS.model or default_model_source()
MODEL, MODEL_ERROR = load_model(MODEL_SOURCE)
demo = build_demo(MODEL, MODEL_ERROR)
predict = demo.screener.predict


def health(request) -> JSONResponse:
    """GET /healthz, for a container's HEALTHCHECK: 200 once the model is loaded, 503 without one."""
    model = demo.screener.model
    if model is None:
        return JSONResponse({"status": "no_model", "reason": demo.screener.load_error}, status_code=503)
    return JSONResponse({"status": "ok", "model_id": MODEL_SOURCE, "model_version": model.version})


# A plain route, outside Gradio's queue: the check costs no analysis slot.
HEALTH_ROUTES = [Route("/healthz", health, methods=["GET"])]

if __name__ == "__main__":
    demo.launch(server_name=ARGS.host, server_port=ARGS.port, share=ARGS.share, max_file_size="30mb",
                app_kwargs={"routes": HEALTH_ROUTES})
