"""Gradio app (and Hugging Face Space) of the melanoma screening aid.

    python app.py                                    # http://127.0.0.1:7860, model from ./model
    MODEL_ID=path/to/model-folder GRADIO_SERVER_PORT=7861 python app.py

settings (environment variables, as on Spaces):
  MODEL_ID             local model folder or Hugging Face Hub model id (default: ./model)
  GRADIO_SERVER_NAME   address to listen on (default: 127.0.0.1; 0.0.0.0: every interface)
  GRADIO_SERVER_PORT   port (default: 7860, or the next free one above it)
  GRADIO_SHARE         True: also a public gradio.live link (default: off)
  FEEDBACK_DIR         folder for reports of wrong predictions (default: ./feedback)
  FEEDBACK_DATASET     Hub dataset the reports are also uploaded to (needs HF_TOKEN)

The model is loaded once, at import; with none, every request says how to train one.
HTTP API: `/predict` (an image file in, JSON out: the prediction, or {"error", "reason"}),
the same JSON from `POST /api/screen` with the image as the body, no Gradio client needed
(`curl --data-binary @lesion.jpg http://127.0.0.1:7860/api/screen`), `GET /api/timings`,
`GET /healthz` (melanoma_screen/app_routes.py). Nothing uploaded is stored unless
"Report a wrong prediction" is pressed.
"""

import argparse
import logging
import os
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from gradio import FileData  # noqa: E402
from PIL import Image  # noqa: E402

from melanoma_screen.app_routes import API_DESCRIPTION, MAX_UPLOAD_BYTES, open_upload, server_routes  # noqa: E402
from melanoma_screen.app_views import (  # noqa: E402
    PAGE_CSS, TRAIN_COMMAND, WEBCAM_TEXT_JS, about_markdown, disclaimer_html, no_model_message, no_model_reason,
    page_language, read_examples, render_result, static_text,
)
from melanoma_screen.explain import overlay_heatmap  # noqa: E402
from melanoma_screen.feedback import MAX_COMMENT_CHARS, TRUE_LABELS, FeedbackStore  # noqa: E402
from melanoma_screen.images import ImageLoadError  # noqa: E402
from melanoma_screen.inference import FAST, ScreeningModel, default_model_source  # noqa: E402
from melanoma_screen.live import (  # noqa: E402
    LIVE_STREAM_EVERY, LIVE_TIME_LIMIT, FrameGate, captured_html, guidance_html, judge_frame, new_state,
)
from melanoma_screen.ui_text import LANGUAGES, TEXT  # noqa: E402

if __name__ == "__main__":  # before the model loads: --help answers at once
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

logger = logging.getLogger("app")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
HEATMAP_MAX_SIDE = 1024
# Analyses that run at once; the rest wait in the queue (2 CPU cores: two).
MODEL_CONCURRENCY = 2
# Threads per analysis: the cores shared out between the concurrent analyses. PyTorch's default, a thread
# per core each, put 4 threads on 2 cores that wait on each other: the heat-map's pass went from 18 ms to
# 1.3 s (benchmarks/README.md). ONNX Runtime scores with one thread per image anyway. Set only here.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
ANALYSIS_THREADS = max(1, _CORES // MODEL_CONCURRENCY)


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


MODEL_SOURCE = default_model_source()
MODEL, MODEL_ERROR = load_model(MODEL_SOURCE)
# Live frames get as many slots as analyses; one that finds them busy is dropped (melanoma_screen.live).
LIVE_GATE = FrameGate(MODEL_CONCURRENCY)


class Analysis(NamedTuple):
    """One upload's outcome: /predict's JSON, the page's result state, and the picture decoded for it."""
    answer: dict
    state: dict
    picture: Image.Image | None = None


def analyse(image, *, uploads_only: bool = False) -> Analysis:
    """The one analysis behind the page, /predict and /api/screen: the upload decoded once, checked and scored.

    The same model calls as predict.py, so all three give the same numbers.
    """
    if MODEL is None:
        return Analysis({"error": no_model_message(MODEL_ERROR, markup=False), "reason": "no_model"},
                        {"kind": "no_model", "reason": MODEL_ERROR})
    try:
        upload = open_upload(image, MODEL.decode, uploads_only=uploads_only)
        if upload is None:
            return Analysis({"error": TEXT["en"]["no_image"], "reason": "no_image"}, {"kind": "no_image"})
        prediction = MODEL.predict_decoded([upload.picture])[0]
    except ImageLoadError as error:
        return Analysis({"error": str(error), "reason": error.reason},
                        {"kind": "bad_image", "code": error.code, "params": error.params})
    except Exception:
        logger.exception("analysis failed")
        return Analysis({"error": TEXT["en"]["internal"], "reason": "internal"}, {"kind": "internal"})
    answer = prediction.to_json()  # a refused picture: {"error", "reason", "model_id", "model_version"}
    if prediction.refused:
        return Analysis(answer, {"kind": "refused", "reason": prediction.input_check.reason})
    return Analysis(answer, {"kind": "result", "prediction": answer, "source": upload.file}, upload.picture)


def predict(image: FileData | None) -> dict:
    """Screen one dermoscopic image (an uploaded file, or the body /api/screen received)."""
    return analyse(image, uploads_only=True).answer


def heatmap(picture: Image.Image | None) -> Image.Image | None:
    """The heat-map over the picture, at screen size: a phone photo is explained and shown, not at 50 megapixels."""
    if picture is None:
        return None
    try:
        shown = picture.copy()
        shown.thumbnail((HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE))
        return overlay_heatmap(shown, MODEL.explain_decoded(shown))
    except Exception:  # the prediction stands without its explanation
        logger.exception("heat map failed")
        return None


def show_analysis(image, lang):
    """Page event: (probabilities, risk box, heat-map, result state, emptied feedback status)."""
    analysis = analyse(image)
    view = render_result(analysis.state, page_language(lang))
    return view["probabilities"], view["risk"], heatmap(analysis.picture), analysis.state, ""


def live_frame(frame, live, lang):
    """Live camera event, per frame: (guidance, live state, capture, camera, restart button, *show_analysis)."""
    lang = page_language(lang)
    keep = gr.skip()
    live = live or new_state()
    if live.get("captured"):  # frames still in flight after the capture
        return (keep,) * 10
    if MODEL is None:
        return (guidance_html("no_model", lang), live) + (keep,) * 8
    try:
        judged, verdict = LIVE_GATE.try_run(judge_frame, MODEL, frame, live)
    except Exception as error:
        if not isinstance(error, ImageLoadError):
            logger.exception("judging a live frame failed")  # the frame itself is never logged
        return (guidance_html("unreadable", lang), live) + (keep,) * 8
    if not judged or verdict is None:  # dropped, or a payload without a picture
        return (keep,) * 10
    guidance = guidance_html(verdict.state["guidance"], lang)
    if verdict.capture is None:
        return (guidance, verdict.state) + (keep,) * 8
    # The captured frame's bytes, scored exactly as an uploaded file is; the camera is
    # hidden, which ends its stream, until "Start again", which only now has something to restart.
    return (guidance, verdict.state, captured_html(verdict.capture), gr.update(visible=False),
            gr.update(visible=True), *show_analysis(verdict.capture, lang))


def live_restart(lang):
    """Page event "Start again": a new live run, the camera shown, the button hidden until the next capture."""
    return guidance_html("start", page_language(lang)), new_state(), "", gr.update(visible=True), gr.update(visible=False)


def show_mode_result(live, lang):
    """Page event, a tab chosen: the result panel shows that tab's result only. The upload tab starts empty (its
    picture stays, one click away); the live tab scores its capture anew from the frame kept in the session."""
    captured = (live or {}).get("captured")
    if captured:
        return show_analysis(captured, lang)
    return None, render_result(None, page_language(lang))["risk"], None, None, ""


def report(state, true_label, comment, lang):
    """Page event "Send report", the only place anything is stored: (message, state remembering the report)."""
    text = TEXT[page_language(lang)]
    if not isinstance(state, dict) or state.get("kind") != "result":
        return text["analyse_first"], state
    if state.get("report_id"):  # a second click stores the same case once
        return text["already_reported"].format(id=state["report_id"]), state
    if true_label not in TRUE_LABELS:
        return text["choose_truth"], state
    try:
        # report() decodes the upload and keeps only its pixels (no EXIF, GPS or ICC).
        store = FeedbackStore(hub_dataset_id=os.environ.get("FEEDBACK_DATASET") or None)
        report_id = store.report(state["source"], state["prediction"], true_label,
                                 comment=(comment or "").strip()[:MAX_COMMENT_CHARS], version=MODEL.version)
    except Exception as error:
        logger.exception("saving feedback failed")
        return text["feedback_failed"].format(reason=type(error).__name__), state
    return text["thanks"].format(id=report_id), {**state, "report_id": report_id}


def timings() -> dict:
    """The model's CPU seconds per stage since start-up, how many pictures it scored, and the live frames."""
    live = {"live_frames": {"judged": LIVE_GATE.judged, "dropped": LIVE_GATE.dropped}}
    return {**(MODEL.clock.snapshot() if MODEL else {"images": 0, "cpu_seconds": {}}), **live}


def health() -> tuple[dict, int]:
    """GET /healthz, for a container's HEALTHCHECK: (JSON, 200) once the model is loaded, else 503."""
    if MODEL is None:
        return {"status": "no_model", "reason": MODEL_ERROR or "no model was given"}, 503
    # heatmap_ready: the heat-map's PyTorch model is loaded (ScreeningModel.warm_up); until then it waits for it.
    return {"status": "ok", "model_id": MODEL_SOURCE or MODEL.model_id, "model_version": MODEL.version,
            "heatmap_ready": MODEL.heatmap_ready}, 200


# ---------------------------------------------------------------------------- the page

# The EN/FR switch is answered on the server (why: melanoma_screen/app_views.py, static_text).
LOCALISED = []  # (component, {property: text key}): what the language switch writes again


def localised(component_class, texts: dict, **kwargs):
    component = component_class(**kwargs, **{prop: static_text(key) for prop, key in texts.items()})
    LOCALISED.append((component, texts))
    return component


EXAMPLE_ROWS = read_examples(EXAMPLES_DIR)
NO_RESULT = {"kind": "no_model", "reason": MODEL_ERROR} if MODEL is None else None

with gr.Blocks(title="Melanoma screening aid", analytics_enabled=False) as demo:
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=240):
            localised(gr.Markdown, {"value": "heading"}, elem_id="title")
        with gr.Column(scale=1, min_width=180):
            language = gr.Radio(LANGUAGES, value="en", label="Language / Langue", elem_id="language")
    disclaimer = gr.HTML(disclaimer_html("en"), elem_id="disclaimer")

    # On a phone the two columns stack: image, button, then the result right below, before the examples.
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280), gr.Tabs(elem_id="modes"):
            # On phones, use the back camera and do not mirror the picture.
            camera = gr.WebcamOptions(mirror=False, constraints={"video": {"facingMode": "environment"}})
            with localised(gr.Tab, {"label": "tab_upload"}, elem_id="tab-upload") as upload_tab:
                image = localised(gr.Image, {"label": "image"}, sources=["upload", "webcam", "clipboard"],
                                  type="filepath", image_mode=None, elem_id="lesion-image", webcam_options=camera)
                analyse_button = localised(gr.Button, {"value": "analyse"}, variant="primary", elem_id="analyse")
            with localised(gr.Tab, {"label": "tab_live"}, elem_id="tab-live") as live_tab:
                live_camera = localised(gr.Image, {"label": "live_camera"}, sources=["webcam"], streaming=True,
                                        elem_id="live-camera", webcam_options=camera)
                guidance = gr.HTML(guidance_html("start", "en"), elem_id="live-guidance")
                captured = gr.HTML("", elem_id="live-captured")
                restart = localised(gr.Button, {"value": "live_restart"}, elem_id="live-restart", visible=False)
        with gr.Column(scale=1, min_width=280):
            risk = gr.HTML(render_result(NO_RESULT, "en")["risk"], elem_id="risk")
            probabilities = localised(gr.Label, {"label": "probabilities"}, num_top_classes=2, show_heading=False,
                                      elem_id="probabilities")
            heatmap_image = localised(gr.Image, {"label": "heatmap"}, interactive=False, format="png",
                                      elem_id="heatmap", buttons=["download", "fullscreen"])
            localised(gr.Markdown, {"value": "how_to_read"}, elem_id="how-to-read")

    # The second input only carries each example's true diagnosis into the table.
    true_diagnosis = gr.Textbox(label=TEXT["en"]["true_diagnosis"], visible=False)
    examples = gr.Examples(EXAMPLE_ROWS, inputs=[image, true_diagnosis], label=static_text("examples"),
                           cache_examples=False, examples_per_page=8, elem_id="examples")
    examples.dataset.headers = static_text(("example", "true_diagnosis"))  # short: fits a phone's width
    LOCALISED.append((examples.dataset, {"label": "examples", "headers": ("example", "true_diagnosis")}))
    # An example's click re-sends its inputs' constructor props (English labels): drop those the language switch owns.
    for component, props in zip(examples.inputs_with_examples, examples.input_component_props):
        for prop in dict(LOCALISED).get(component, {}):
            props.pop(prop, None)

    with localised(gr.Accordion, {"label": "feedback_title"}, open=False, elem_id="feedback"):
        localised(gr.Markdown, {"value": "feedback_intro"})
        truth = localised(gr.Radio, {"label": "truth_label", "choices": "truth_choices"}, elem_id="truth")
        comment = localised(gr.Textbox, {"label": "comment", "placeholder": "comment_placeholder"}, lines=2,
                            max_length=MAX_COMMENT_CHARS, elem_id="comment")
        send = localised(gr.Button, {"value": "send"}, elem_id="send-report")
        feedback_status = gr.Markdown("", elem_id="feedback-status")

    with localised(gr.Accordion, {"label": "about_title"}, open=False, elem_id="about"):
        about = gr.Markdown(about_markdown(MODEL, "en"), elem_id="about-model")
    result = gr.State(NO_RESULT)
    live_state = gr.State(new_state())

    # ------------------------------------------------------------------------ events
    gr.api(predict, api_name="predict", api_description=API_DESCRIPTION, concurrency_id="model")

    results = [probabilities, risk, heatmap_image, result, feedback_status]
    analysis = dict(fn=show_analysis, inputs=[image, language], outputs=results, preprocess=False,
                    api_visibility="private", concurrency_id="model")
    analyse_button.click(**analysis)
    examples.load_input_event.then(**analysis)

    # Live camera: a few frames a second; the browser sends the next only once this one is answered.
    live_outputs = [guidance, live_state, captured, live_camera, restart]
    live_camera.stream(live_frame, inputs=[live_camera, live_state, language], outputs=live_outputs + results,
                       stream_every=LIVE_STREAM_EVERY, time_limit=LIVE_TIME_LIMIT, preprocess=False,
                       api_visibility="private", show_progress="hidden",
                       concurrency_limit=None)  # no queue limit of its own: LIVE_GATE drops what it cannot judge
    restart.click(live_restart, inputs=language, outputs=live_outputs, api_visibility="private", queue=False)
    # Both tabs share the result panel: each shows its own result, never the other's.
    upload_tab.select(show_mode_result, inputs=[gr.State(None), language], outputs=results,
                      api_visibility="private", queue=False)
    live_tab.select(show_mode_result, inputs=[live_state, language], outputs=results, api_visibility="private",
                    concurrency_id="model")

    send.click(report, inputs=[result, truth, comment, language], outputs=[feedback_status, result],
               api_visibility="private", concurrency_limit=1)

    def switch_language(lang, state, live):
        lang = page_language(lang)
        updates = {component: {prop: static_text(key, lang) for prop, key in texts.items()}
                   for component, texts in LOCALISED}
        view = render_result(state, lang)  # the result as it stands
        updates[probabilities]["value"] = view["probabilities"]
        # The examples' true diagnoses are cells of the table, not a property: the rows are given again.
        labels = TEXT[lang]["example_labels"]
        updates[examples.dataset]["samples"] = [[path, labels.get(label, label)] for path, label in EXAMPLE_ROWS]
        updates |= {risk: {"value": view["risk"]}, disclaimer: {"value": disclaimer_html(lang)},
                    feedback_status: {"value": ""}, about: {"value": about_markdown(MODEL, lang)},
                    guidance: {"value": guidance_html((live or new_state())["guidance"], lang)}}
        return {component: gr.update(**properties) for component, properties in updates.items()}

    language.change(switch_language, inputs=[language, result, live_state],
                    outputs=[component for component, _ in LOCALISED] + [risk, disclaimer, feedback_status, about,
                                                                         guidance],
                    api_visibility="private", queue=False)
    demo.load(None, None, language, api_visibility="private", queue=False,
              js="() => (navigator.language || '').toLowerCase().startsWith('fr') ? 'fr' : 'en'")
    demo.load(None, None, None, api_visibility="private", queue=False, js=WEBCAM_TEXT_JS)

# At most MODEL_CONCURRENCY images in the model at once, a bounded waiting line.
demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=32)


def launch_options() -> dict:
    """demo.launch()'s settings (Gradio 6 takes the page's CSS there), and the plain routes
    (melanoma_screen.app_routes), given to the server's app as it is built: they answer from
    the first request, with no moment when the page is up and they 404."""
    routes = server_routes(predict, timings, health, concurrency=MODEL_CONCURRENCY)
    return {"css": PAGE_CSS, "pwa": True, "max_file_size": MAX_UPLOAD_BYTES, "app_kwargs": {"routes": routes}}


if __name__ == "__main__":
    demo.launch(**launch_options())
