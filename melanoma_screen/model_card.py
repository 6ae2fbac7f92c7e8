"""Render the Hub model card (README.md) from the `model_card.md` template.

The YAML front matter is built with huggingface_hub's ModelCardData so the
Hub can parse the license, pipeline tag and the model-index with the real test
metrics. The body is the template with `{{ name }}` placeholders substituted.

Context keys (all required unless marked):
    model_id, base_model (str or None), init_description, dataset_id,
    dataset_description, command, image_size, n_parameters,
    class_counts_used (dict), split_sizes (dict), temperature,
    screening_threshold, high_risk_threshold, min_sensitivity, min_specificity,
    test (metrics.at_operating_points' block, as in eval_results.json; None without a test split),
    validation_metrics (from metrics.binary_metrics), audit_summary (str),
    license (optional, default cc-by-nc-4.0), date (optional, default today),
    model_type (optional, default "vit": config.model_type, which names the architecture and its Hub tag),
    color_constancy and field_of_view_mask (optional, the preprocessing pipeline users must add),
    external (optional, {name: at_operating_points block}) and sources (optional), for the
    external-validation and per-source tables,
    tags (optional list), dataset_name (optional, for the model-index).
Plots are linked by the fixed names in PLOT_FILES, next to README.md.
"""

from __future__ import annotations

import datetime
import re
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from .architectures import adapter_for, display_name
from .input_check import STATS_FILE as INPUT_CHECK_FILE
from .transforms import COLOR_CONSTANCY_NAMES

PLOT_FILES = {"roc_curve": "roc_curve.png", "confusion_matrix": "confusion_matrix.png",
              "reliability_diagram": "reliability_diagram.png"}
DEFAULT_LICENSE = "cc-by-nc-4.0"  # ISIC images are mostly CC-BY-NC
DEFAULT_DATASET_NAME = "Melanoma Skin Cancer Dataset of 10000 Images"
NOT_EVALUATED = "Not evaluated: this run had no test split."
# The architecture's own tag (architectures.Architecture.card_tag) follows "image-classification".
DEFAULT_TAGS = ["vision", "image-classification", "medical-imaging", "dermatology", "dermoscopy", "melanoma",
                "skin-lesion"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class MissingPlaceholderError(ValueError, KeyError):
    """A template placeholder with no value in the context. Also a KeyError, for callers expecting one."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return ValueError.__str__(self)


# ---------------------------------------------------------------- formatting

def format_value(value) -> str:
    """Metrics with 3 decimals, counts as integers, missing values as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _rounded(value: float, rounding: str, places: str = "0.0001") -> str:
    return str(Decimal(repr(float(value))).quantize(Decimal(places), rounding=rounding))


def format_screening_threshold(value: float) -> str:
    # Rounded *down*: a reader who copies the printed threshold flags at least
    # the cases the exact one did, so the sensitivity guarantee still holds.
    return _rounded(value, ROUND_FLOOR)


def format_high_risk_threshold(value: float) -> str:
    # Rounded *up*, for the same reason on the specificity side.
    return _rounded(value, ROUND_CEILING)


def _percent(value: float) -> str:
    return f"{100 * float(value):g}%"


_METRIC_ROWS = [("accuracy", "Accuracy"), ("sensitivity", "Sensitivity (recall of malignant)"),
                ("specificity", "Specificity"), ("precision", "Precision (PPV)"), ("f1", "F1"),
                ("roc_auc", "ROC AUC"), ("ece", "ECE (top-label, 15 bins)"), ("n", "Images"),
                ("n_malignant", "Malignant"), ("n_benign", "Benign")]


def metrics_table(columns: dict[str, dict | None]) -> str:
    """Markdown table, one column per metrics dict (from binary_metrics); None shows as n/a."""
    lines = ["| Metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key, name in _METRIC_ROWS:
        lines.append(f"| {name} | " + " | ".join(format_value((m or {}).get(key)) for m in columns.values()) + " |")
    return "\n".join(lines)


def confusion_table(cm) -> str:
    """[[tn, fp], [fn, tp]] as a Markdown table with labelled rows and columns."""
    if cm is None:
        return NOT_EVALUATED
    (tn, fp), (fn, tp) = cm
    return "\n".join([
        "| | predicted benign | predicted malignant |",
        "|---|---:|---:|",
        f"| **true benign** | {tn} (true negative) | {fp} (false positive) |",
        f"| **true malignant** | {fn} (false negative) | {tp} (true positive) |",
    ])


def counts_table(counts: dict, key_header: str, value_header: str) -> str:
    lines = [f"| {key_header} | {value_header} |", "|---|---:|"]
    lines += [f"| {key} | {format_value(value)} |" for key, value in counts.items()]
    lines.append(f"| **total** | {sum(counts.values())} |")
    return "\n".join(lines)


def _n_parameters(n: int) -> str:
    return f"{int(n):,} ({int(n) / 1e6:.1f} M)"


def _base_model_link(base_model) -> str:
    if not base_model:
        return "none (trained from scratch)"
    return f"[{base_model}](https://huggingface.co/{base_model})"


def _test_at(context: dict, point: str) -> dict | None:
    # The test block is None when the run had no test split.
    return None if context["test"] is None else context["test"][point]


def _test(context: dict, point: str, metric: str):
    metrics = _test_at(context, point)
    return None if metrics is None else metrics[metric]


def _metrics_columns(c: dict) -> str:
    def at(metrics: dict | None) -> str:
        return "n/a" if metrics is None else f"{metrics['threshold']:.4g}"

    at_05, at_screening = _test_at(c, "at_0_5"), _test_at(c, "at_screening_threshold")
    return metrics_table({
        f"Test @ {at(at_05)}": at_05,
        f"Test @ screening ({at(at_screening)})": at_screening,
        f"Validation @ {at(c['validation_metrics'])}": c["validation_metrics"],
    })


# Placeholders computed from the context: name -> (context keys needed, formatter).
# Anything else is looked up in the context directly and formatted by format_value.
_DERIVED = {
    "screening_threshold": (("screening_threshold",), lambda c: format_screening_threshold(c["screening_threshold"])),
    "high_risk_threshold": (("high_risk_threshold",), lambda c: format_high_risk_threshold(c["high_risk_threshold"])),
    "min_sensitivity": (("min_sensitivity",), lambda c: _percent(c["min_sensitivity"])),
    "min_specificity": (("min_specificity",), lambda c: _percent(c["min_specificity"])),
    "n_parameters": (("n_parameters",), lambda c: _n_parameters(c["n_parameters"])),
    "base_model_link": (("base_model",), lambda c: _base_model_link(c["base_model"])),
    "metrics_table": (("test", "validation_metrics"), _metrics_columns),
    "confusion_matrix_at_05": (("test",), lambda c: confusion_table(_test(c, "at_0_5", "confusion_matrix"))),
    "confusion_matrix_at_screening": (("test",), lambda c: confusion_table(_test(c, "at_screening_threshold", "confusion_matrix"))),
    "test_n": (("test",), lambda c: format_value(_test(c, "at_0_5", "n"))),
    "test_n_malignant": (("test",), lambda c: format_value(_test(c, "at_0_5", "n_malignant"))),
    "test_n_benign": (("test",), lambda c: format_value(_test(c, "at_0_5", "n_benign"))),
    "class_counts_table": (("class_counts_used",), lambda c: counts_table(c["class_counts_used"], "Class", "Images")),
    "split_sizes_table": (("split_sizes",), lambda c: counts_table(c["split_sizes"], "Split", "Images")),
    "audit_summary": (("audit_summary",), lambda c: str(c["audit_summary"]).strip() or "not run"),
    "color_constancy_note": (("image_size",), lambda c: _color_constancy_note(c.get("color_constancy", "none"), c["image_size"],
                                                                              c.get("field_of_view_mask") or 0.0)),
    "external_table": ((), lambda c: external_table(c.get("external") or {})),
    "sources_table": ((), lambda c: sources_table(c.get("sources") or {})),
    "shortcut_audit": ((), lambda c: str(c.get("shortcut_audit") or "Not run.").strip()),
}


def external_table(external: dict) -> str:
    """One row per evaluation set: ROC AUC, then sensitivity/specificity at 0.5, screening and high-risk thresholds."""
    if not external:
        return "No external set was scored in this run (`train_vit.py --external-dir DIR`)."

    def cells(result: dict) -> list[str]:
        row = [format_value(result["at_0_5"]["roc_auc"]), format_value(result["at_0_5"].get("ece"))]
        for key in ("at_0_5", "at_screening_threshold", "at_high_risk_threshold"):
            m = result.get(key)
            row.append("n/a" if m is None else f"{format_value(m['sensitivity'])} / {format_value(m['specificity'])}")
        return row

    lines = ["| Set | Images (malignant / benign) | ROC AUC | ECE | sens / spec @ 0.5 | sens / spec @ screening | sens / spec @ high-risk |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, result in external.items():
        m = result["at_0_5"]
        lines.append(f"| {name} (external) | {m['n']} ({m['n_malignant']} / {m['n_benign']}) | " + " | ".join(cells(result)) + " |")
    groups = [(name, result["auc_by_benign_group"]) for name, result in external.items() if result.get("auc_by_benign_group")]
    if groups:
        lines += ["", benign_group_table(groups)]
    return "\n".join(lines)


def benign_group_table(groups) -> str:
    """[(set name, {group: {"roc_auc", "n_benign", "n_malignant"}})] as melanoma-against-each-group rows.

    The pooled AUC is mostly melanoma against common moles; these rows are the
    lesions that look like melanoma, where a screening aid earns its keep.
    """
    lines = ["| Set | Melanoma against | Benign images | ROC AUC |", "|---|---|---:|---:|"]
    for name, by_group in groups:
        for group, row in by_group.items():
            lines.append(f"| {name} | {group} | {row['n_benign']} | {format_value(row['roc_auc'])} |")
    return "\n".join(lines)


def sources_table(sources: dict) -> str:
    """{source: {split: {label: n}}} as one row per source and split."""
    if not sources:
        return ""
    lines = ["| Source | Split | Benign | Malignant |", "|---|---|---:|---:|"]
    for source, splits in sources.items():
        for split, counts in splits.items():
            lines.append(f"| {source} | {split} | {counts.get('benign', 0)} | {counts.get('malignant', 0)} |")
    return "\n".join(lines)


def _color_constancy_note(method: str, image_size: int, field_of_view_mask: float = 0.0) -> str:
    """What a bare `pipeline` user must add: the colour constancy and the field-of-view mask in config.json."""
    titles, steps = [], []
    if method != "none":
        titles.append("Colour constancy")
        if method == "skin_reference":
            steps.append("scaled by one gain per channel so that the skin around the lesion (found by "
                         "`melanoma_screen.skin`) takes the reference colour `skin_reference_rgb` in config.json "
                         "(`color_constancy` = `skin_reference`)")
        else:
            steps.append(f"corrected with {COLOR_CONSTANCY_NAMES[method]} colour constancy (`color_constancy` in config.json)")
    if field_of_view_mask:
        titles.append("Field-of-view mask")
        steps.append(f"masked to a centred circle of radius {field_of_view_mask:g} of the side, black outside "
                     "(`field_of_view_mask` in config.json)")
    if not steps:
        return ""
    these, them = ("this step", "it") if len(steps) == 1 else ("these steps", "them")
    title = " and ".join(titles[:1] + [later.lower() for later in titles[1:]])
    return (
        f"\n**{title}.** This model was trained on images resized to {image_size}x{image_size}, then "
        f"{', then '.join(steps)}. `pipeline` does not know {these}: the app, predict.py and evaluate_model.py apply {them}; "
        "with a bare pipeline pass `ScreeningModel.load(MODEL).pipeline_input(path)` from this project's "
        "`melanoma_screen.inference` instead of the path.\n"
    )


def _with_defaults(context: dict) -> dict:
    context = dict(context)
    context.setdefault("license", DEFAULT_LICENSE)
    context.setdefault("date", datetime.date.today().isoformat())
    context.setdefault("model_type", "vit")
    context.setdefault("architecture", display_name(context["model_type"]))
    return context


def substitute(template: str, context: dict, source: str = "template") -> str:
    """Replace every {{ name }} in one pass; raise MissingPlaceholderError naming all missing ones."""
    missing = []

    def value_for(name: str) -> str | None:
        if name in _DERIVED:
            needed, formatter = _DERIVED[name]
            absent = [key for key in needed if key not in context]
            if absent:
                missing.append(f"{name} (needs context key {', '.join(absent)})")
                return None
            return formatter(context)
        if name not in context:
            missing.append(name)
            return None
        return format_value(context[name])

    values = {name: value_for(name) for name in dict.fromkeys(_PLACEHOLDER.findall(template))}
    if missing:
        raise MissingPlaceholderError(f"{source} uses placeholders missing from the context: {', '.join(missing)}.")
    # A single regex pass, so a substituted value containing "{{" is left alone.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


# ------------------------------------------------------------- front matter

def _looks_like_hub_dataset(dataset_id: str) -> bool:
    # The Hub's `datasets:` field must hold Hub repo ids; a local folder path
    # (which may also contain a slash) would render as a broken dataset link.
    return bool(_HUB_REPO_ID.match(dataset_id)) and not Path(dataset_id).exists()


def _eval_results(context: dict) -> list[EvalResult]:
    dataset_id = str(context["dataset_id"])
    common = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": dataset_id if _looks_like_hub_dataset(dataset_id) else "imagefolder",
        "dataset_name": context.get("dataset_name", DEFAULT_DATASET_NAME),
        "dataset_split": "test",
    }
    if context["test"] is None:
        return []  # no test split: no model-index rather than made-up numbers
    rows = [("accuracy", "accuracy", "Accuracy"), ("roc_auc", "roc_auc", "ROC AUC"), ("f1", "f1", "F1"),
            ("sensitivity", "recall", "Sensitivity (recall of malignant)"),
            ("specificity", "specificity", "Specificity"), ("precision", "precision", "Precision"),
            ("ece", "ece", "Expected calibration error")]
    # External sets are a second dataset entry of the model-index: the figures
    # a user elsewhere should expect, next to the in-distribution ones.
    # huggingface_hub groups results into dataset entries by type, config and split, not by
    # name: the config keeps each external set its own entry (and its own figures).
    blocks = [(common, context["test"])] + [
        (dict(common, dataset_type="imagefolder", dataset_name=f"{name} (external validation)", dataset_config=name,
              dataset_split="all"), external)
        for name, external in (context.get("external") or {}).items()]
    results = []
    for entry, block in blocks:
        at_05, at_screening = block["at_0_5"], block["at_screening_threshold"]
        results += [
            EvalResult(**entry, metric_type=metric_type, metric_name=name, metric_value=round(float(at_05[key]), 4),
                       metric_args={"threshold": at_05["threshold"]})
            for key, metric_type, name in rows if at_05.get(key) is not None  # roc_auc is None with one class
        ]
        # The screening operating point is what the tool is used at; report it too.
        for key, metric_type, name in [("sensitivity", "recall", "Sensitivity at screening threshold"),
                                       ("specificity", "specificity", "Specificity at screening threshold")]:
            results.append(EvalResult(**entry, metric_type=metric_type, metric_name=name,
                                      metric_value=round(float(at_screening[key]), 4), metric_config="screening_threshold",
                                      metric_args={"threshold": at_screening["threshold"]}))
    return results


def _tags(context: dict) -> list[str]:
    adapter = adapter_for(context.get("model_type", "vit"))
    tags = DEFAULT_TAGS[:2] + ([adapter.card_tag] if adapter is not None else []) + DEFAULT_TAGS[2:]
    return tags + [tag for tag in context.get("tags", []) if tag not in tags]


def card_metadata(context: dict) -> ModelCardData:
    context = _with_defaults(context)
    missing = [key for key in ("model_id", "dataset_id", "test") if key not in context]
    if missing:
        raise MissingPlaceholderError(f"model card metadata needs context keys missing from the context: {', '.join(missing)}.")
    dataset_id = str(context["dataset_id"])
    return ModelCardData(
        model_name=str(context["model_id"]),
        license=context["license"],
        base_model=context.get("base_model") or None,  # omitted from the YAML when None
        datasets=[dataset_id] if _looks_like_hub_dataset(dataset_id) else None,
        metrics=["accuracy", "roc_auc", "f1", "recall", "specificity", "precision", "ece"],
        pipeline_tag="image-classification",
        library_name="transformers",
        tags=_tags(context),
        eval_results=_eval_results(context) or None,
    )


# ------------------------------------------------------------------ sections

def _markers(name: str) -> tuple[str, str]:
    return f"<!-- begin {name} -->", f"<!-- end {name} -->"


def replace_section(card: str, name: str, markdown: str) -> str:
    """Put markdown between the card's `<!-- begin NAME -->` and `<!-- end NAME -->` markers.

    Tables measured after training (robustness, comparison of runs) go into the
    rendered card this way, and a rerun replaces them instead of appending.
    """
    begin, end = _markers(name)
    if begin not in card or end not in card:
        raise ValueError(f"the model card has no {begin} ... {end} section")
    head, rest = card.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{markdown.strip()}\n{end}{tail}"


UNDER_TITLE, AT_END = "under the title", "at the end"


def upsert_card_section(card_path, name: str, markdown: str, heading: str | None = None,
                        add_at: str | tuple | None = None) -> None:
    """Write markdown into the card's NAME section, adding the section when the card has none.

    A card rendered before a section existed gets it added where `add_at` says:
    UNDER_TITLE, AT_END, or after the end of the section of that name; a tuple
    of these is tried in order. The `heading` line goes above the new section.
    Without add_at, a missing section is an error (the template has it, so its
    absence means this is not our card).
    """
    path = Path(card_path)
    card = path.read_text(encoding="utf-8")
    begin, end = _markers(name)
    places = (add_at,) if isinstance(add_at, str) else tuple(add_at or ())
    if begin not in card and places:
        empty = (f"{heading}\n\n" if heading else "") + f"{begin}\n{end}"
        for place in places:
            if place == UNDER_TITLE and re.search(r"^# ", card, flags=re.MULTILINE):
                card = re.sub(r"^(# .*\n)", lambda match: f"{match.group(1)}\n{empty}\n", card, count=1,
                              flags=re.MULTILINE)
                break
            if place == AT_END:
                card = card.rstrip("\n") + f"\n\n{empty}\n"
                break
            anchor = _markers(place)[1]
            if place not in (UNDER_TITLE, AT_END) and anchor in card:
                card = card.replace(anchor, f"{anchor}\n\n{empty}", 1)
                break
        else:
            raise ValueError(f"the model card has no {begin} ... {end} section, nor a place for it: "
                             + ", ".join(str(place) for place in places))
    path.write_text(replace_section(card, name, markdown), encoding="utf-8")


# ------------------------------------------------------------------ public

def render_model_card(template_path, context: dict) -> str:
    """YAML front matter + the template body with placeholders filled in."""
    template = Path(template_path).read_text(encoding="utf-8")
    # A leading HTML comment is a note to template editors, not card content.
    if template.lstrip().startswith("<!--"):
        template = template.split("-->", 1)[1].lstrip("\n")
    context = _with_defaults(context)
    body = substitute(template, context, source=f"Model card template {template_path}")
    return f"---\n{card_metadata(context).to_yaml()}\n---\n\n{body}"


def write_model_card(output_dir, template_path, context: dict) -> Path:
    """Render the card and write it to OUTPUT_DIR/README.md, where the Hub looks for it."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(template_path, context), encoding="utf-8")
    return path


INPUT_CHECK_SECTION, INPUT_CHECK_HEADING = "input_check", "## Input check"
INPUT_CHECK_MISSES = ("It misses colour photographs whose colours and texture resemble skin: in the generated set, "
                      "every animal (fur: cats, cheetahs, a lion), a close-up of a face, a toy figure, a building, "
                      "a stained tissue slide and a retina, one plain-skin frame and one picture of smoothed "
                      "noise; of what a live camera shows between good frames, 19 of the 20 lesions half out of "
                      "the frame (real dermoscopy has lesions cut by the frame too: a rule on where the lesion "
                      "lies that refuses 5 to 12 of the 20 also refuses 3 to 9% of the 10k set's test pictures, "
                      "benchmarks/input_check_framing.py; a detector trained on cut training lesions did no better) "
                      "and 1 of the 20 motion-blurred lesions (the others by their smear or the streak a straight "
                      "shake leaves in the spectrum); and anything that looks like dermoscopy without "
                      "being a melanocytic lesion (other skin conditions, scars, tattoos): it judges whether a "
                      "picture is like the training images, not what it shows. Photographs of whole people and "
                      "rooms are refused by the spread of their patch tokens, black-and-white pictures as having "
                      "no colour, drawn fingers by their flat surfaces and cloth by its repeated weave. It also "
                      "refuses some pictures the model still handles: heavy blur or a quarter of the resolution, "
                      "and large exposure changes.")


def _two_places(value):
    return None if value is None else round(value, 2)


def input_check_markdown(report: dict, benchmark: dict | None = None) -> str:
    """The model card's input-check section: what was fitted, and the benchmark's rates when given."""
    refusals = ", ".join(f"{reason} {count}" for reason, count in report["validation_refusals"].items()) or "none"
    lines = [
        f"Pictures are refused, with a sentence saying why, when they are too dark, too bright, blurred, show no "
        f"lesion, have no colour, do not look like skin, show a face, or lie too far from the training images in the "
        f"model's feature space, by the distance of their mean patch token or by how far their patch tokens spread "
        f"(`{INPUT_CHECK_FILE}`, fitted on {report['n_train']} training and {report['n_validation']} validation images: "
        f"each image statistic's bounds leave out {100 * report['alpha']:g}% of the training images, and the "
        f"distance threshold, {_two_places(report.get('distance_threshold'))}, and spread threshold, "
        f"{_two_places(report.get('spread_threshold'))}, were chosen so that {100 * report['target_acceptance']:g}% "
        f"of validation is accepted with the fitted statistics; a face, found by a detector, refuses on top of that).",
        "",
        f"Validation images accepted: {100 * (report['validation_acceptance'] or 0):.1f}% (refused: {refusals}).",
    ]
    if benchmark:
        lines += ["", "| set | images | accepted | refused |", "|---|---:|---:|---:|"]
        for name, row in benchmark["sets"].items():
            lines.append(f"| {name} | {row['n']} | {100 * row['accepted']:.1f}% | {100 * (1 - row['accepted']):.1f}% |")
        if benchmark.get("command"):
            lines += ["", f"Measured with `{benchmark['command']}`."]
    lines += ["", INPUT_CHECK_MISSES]
    return "\n".join(lines)
