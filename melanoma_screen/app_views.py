"""What the app's page shows: the result panel, the about report, the disclaimer, the page's texts in either language.

Pure functions of a result state (app.py's analyse) and a language; app.py lays out the page and wires it.
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

from .feedback import TRUE_LABELS
from .inference import ModelLoadError, ScreeningModel
from .messages import render
from .ui_text import TEXT

# The quick model for when model/ is missing; README.md has the command of the shipped one.
TRAIN_COMMAND = ("python train_vit.py --data-dir ../shared/data/melanoma_cancer_dataset "
                 "--scratch-config tiny --image-size 64 --max-steps 20 --output-dir model")
RISK_COLOURS = {  # background, border; dark text reads on all three in light and dark themes
    "low": ("#e7f6ec", "#2e7d32"),
    "moderate": ("#fff4e0", "#b26a00"),
    "high": ("#fdeaea", "#c62828"),
}


def page_language(lang: str | None) -> str:
    """`lang` when the page has texts in it, else English."""
    return lang if lang in TEXT else "en"


def _number(value: float, lang: str, digits: int = 3) -> str:
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if lang == "fr" else text


def _percent(value: float, lang: str) -> str:
    # French writes 46,5 % (decimal comma, narrow no-break space before %).
    return _number(100 * value, lang, 1) + ("\u202f%" if lang == "fr" else "%")


def no_model_reason(source: str, error: Exception) -> str:
    """One line saying why `source` could not be loaded (no traceback)."""
    lines = str(error).strip().splitlines()
    if isinstance(error, ModelLoadError) and lines:
        return lines[0]  # already a sentence for people that names the source
    return f"could not load {source}: {type(error).__name__}" + (f": {lines[0]}" if lines else "")


def no_model_message(reason: str | None, lang: str = "en", markup: bool = True) -> str:
    message = TEXT[lang]["no_model"].format(reason=html.escape(reason or "no model"), command=TRAIN_COMMAND)
    return message if markup else re.sub(r"</?code>", "`", html.unescape(message))


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
        key = "about_site_shift" if adaptation.get("method") == "score shift" else "about_site_adaptation"
        lines += ["", text[key].format(n=adaptation.get("n_adapted", "?"), date=adaptation.get("date", "?"),
                                                            source=adaptation.get("source_model", "?"))]
    check = getattr(model, "input_check", None)
    accepted = (check.meta.get("validation_acceptance") if check is not None else None)
    lines += ["", text["about_no_check"] if check is None else
              text["about_check"].format(accepted="?" if accepted is None else _percent(accepted, lang))]
    lines += ["", text["about_limits"]]
    return "\n".join(lines)


def read_examples(folder: Path) -> list[list[str]]:
    """[[image path, true label], ...] from examples/labels.csv."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        return []
    with labels.open(newline="", encoding="utf-8") as handle:
        return [[str(folder / row["file"]), row["label"]] for row in csv.DictReader(handle)
                if (folder / row["file"]).is_file()]


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
