import re
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from melanoma_screen.calibration import choose_operating_points
from melanoma_screen.metrics import at_operating_points, binary_metrics
from melanoma_screen.model_card import (
    AT_END,
    UNDER_TITLE,
    upsert_card_section,
    PLOT_FILES,
    MissingPlaceholderError,
    external_table,
    render_model_card,
    replace_section,
    sources_table,
    write_model_card,
)
from melanoma_screen.plots import save_confusion_matrix, save_reliability_diagram, save_roc_curve

TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
DISCLAIMER = "It does NOT give a diagnosis and is not a medical device"


def _synthetic_split(seed, n=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.25, n), 0.001, 0.999)
    return y, prob


def make_context(**overrides):
    y_val, p_val = _synthetic_split(0)
    y_test, p_test = _synthetic_split(1)
    points = choose_operating_points(y_val, p_val)
    context = {
        "model_id": "someone/vit-melanoma-screening",
        "base_model": "google/vit-base-patch16-224-in21k",
        "init_description": "fine-tuned from google/vit-base-patch16-224-in21k",
        "dataset_id": "someone/melanoma-10000",
        "dataset_description": "9,600 training and 1,000 test dermoscopic images, 300x300 JPEG.",
        "command": "python train_vit.py --data data/melanoma_cancer_dataset --epochs 5 --push-to-hub",
        "image_size": 224,
        "n_parameters": 85_800_194,
        "class_counts_used": {"benign": 5000, "malignant": 4605},
        "split_sizes": {"train": 8165, "validation": 1440, "test": 1000},
        "temperature": 1.734,
        "screening_threshold": points["screening_threshold"],
        "high_risk_threshold": points["high_risk_threshold"],
        "min_sensitivity": 0.95,
        "min_specificity": 0.95,
        "test": at_operating_points(y_test, p_test, points["screening_threshold"], points["high_risk_threshold"]),
        "validation_metrics": binary_metrics(y_val, p_val, points["screening_threshold"]),
        "audit_summary": "12 exact duplicates found across train/test and removed from train.",
        "license": "cc-by-nc-4.0",
        "date": "2025-01-31",
    }
    context.update(overrides)
    return context


def test_front_matter_parses_and_matches_metrics():
    context = make_context()
    card = ModelCard(render_model_card(TEMPLATE, context))
    data = card.data
    assert data.license == "cc-by-nc-4.0"
    assert data.pipeline_tag == "image-classification"
    assert data.library_name == "transformers"
    assert data.datasets == ["someone/melanoma-10000"]
    assert data.base_model == "google/vit-base-patch16-224-in21k"
    assert data.model_name == "someone/vit-melanoma-screening"

    at_05 = context["test"]["at_0_5"]
    by_name = {result.metric_name: result for result in data.eval_results}
    expected = {"Accuracy": "accuracy", "ROC AUC": "roc_auc", "F1": "f1",
                "Sensitivity (recall of malignant)": "sensitivity", "Specificity": "specificity",
                "Precision": "precision", "Expected calibration error": "ece"}
    for name, key in expected.items():
        assert by_name[name].metric_value == pytest.approx(at_05[key], abs=1e-4), name
        assert by_name[name].task_type == "image-classification"
        assert by_name[name].dataset_split == "test"
    assert by_name["Sensitivity (recall of malignant)"].metric_type == "recall"
    at_screening = context["test"]["at_screening_threshold"]
    assert by_name["Sensitivity at screening threshold"].metric_value == pytest.approx(at_screening["sensitivity"], abs=1e-4)
    assert by_name["Sensitivity at screening threshold"].metric_args == {"threshold": at_screening["threshold"]}


def test_body_content():
    context = make_context()
    text = render_model_card(TEMPLATE, context)
    body = text.split("\n---\n", 1)[1].lstrip()
    assert body.splitlines()[0].startswith("> **Disclaimer:**") and DISCLAIMER in body.splitlines()[0]
    assert not re.search(r"\{\{\s*\w+\s*\}\}", body)  # every placeholder filled
    assert "this comment is dropped" not in body  # the template's editor note
    # The only comments left are the markers of the sections filled in after training.
    assert re.findall(r"<!--(.*?)-->", body) == [" begin robustness ", " end robustness ", " begin shortcut_probes ",
                                                 " end shortcut_probes ", " begin comparison ", " end comparison ",
                                                 " begin input_check ", " end input_check "]
    assert f'pipeline("image-classification", model="{context["model_id"]}")' in body
    assert context["command"] in body
    assert context["audit_summary"] in body
    for name in PLOT_FILES.values():
        assert f"]({name})" in body
    # metrics at 3 decimals, counts as integers
    assert f"{context['test']['at_0_5']['accuracy']:.3f}" in body
    tn, fp = context["test"]["at_0_5"]["confusion_matrix"][0]
    assert f"{tn} (true negative)" in body and f"{fp} (false positive)" in body
    assert "85,800,194" in body and "95%" in body
    for words in ("Intended use", "Out-of-scope", "Limitations", "HAM10000", "Codella", "isic-archive.com",
                  "Muhammad Hasnain Javid", "temperature", "Fitzpatrick"):
        assert words in body, words


def test_printed_thresholds_keep_their_guarantees():
    text = render_model_card(TEMPLATE, make_context(screening_threshold=0.123456, high_risk_threshold=0.654321))
    assert "p_malignant >= 0.1234" in text  # rounded down: flags at least as many
    assert "p_malignant >= 0.6544" in text  # rounded up: clears at least as many


def test_missing_placeholder_raises_naming_it():
    context = make_context()
    del context["command"]
    with pytest.raises(ValueError, match="command"):
        render_model_card(TEMPLATE, context)
    context = make_context()
    del context["validation_metrics"]
    with pytest.raises(KeyError, match="metrics_table.*validation_metrics"):
        render_model_card(TEMPLATE, context)


def test_missing_placeholder_in_custom_template(tmp_path):
    template = tmp_path / "card.md"
    template.write_text("# {{ model_id }}\n{{ not_in_context }} and {{ also_missing}}\n")
    with pytest.raises(MissingPlaceholderError, match="not_in_context, also_missing"):
        render_model_card(template, make_context())


def test_base_model_absent_when_none_and_local_dataset_not_listed(tmp_path):
    context = make_context(base_model=None, init_description="ViT-tiny from scratch", dataset_id=str(tmp_path))
    card = ModelCard(render_model_card(TEMPLATE, context))
    assert "base_model" not in card.data.to_dict()
    assert card.data.datasets is None  # a local folder is not a Hub dataset id
    assert "none (trained from scratch)" in card.text
    assert card.data.eval_results[0].dataset_type == "imagefolder"


@pytest.mark.parametrize("model_type, name, tag", [("vit", "A Vision Transformer (ViT) image classifier", "vit"),
                                                   ("levit", "A LeViT (a vision transformer", "levit")])
def test_card_names_and_tags_the_architecture_it_was_trained_as(model_type, name, tag):
    card = ModelCard(render_model_card(TEMPLATE, make_context(model_type=model_type)))
    assert name in card.text
    assert tag in card.data.tags and not ({"vit", "levit"} - {tag}) & set(card.data.tags)


def test_write_model_card_with_real_plots(tmp_path):
    context = make_context()
    y_test, p_test = _synthetic_split(1)
    out = tmp_path / "model"
    save_roc_curve(y_test, p_test, out / PLOT_FILES["roc_curve"], operating_points=context)
    save_confusion_matrix(context["test"]["at_screening_threshold"]["confusion_matrix"], out / PLOT_FILES["confusion_matrix"])
    save_reliability_diagram(y_test, p_test ** 0.5, p_test, out / PLOT_FILES["reliability_diagram"])
    readme = write_model_card(out, TEMPLATE, context)
    assert readme == out / "README.md"
    assert ModelCard.load(readme).data.license == "cc-by-nc-4.0"
    for name in PLOT_FILES.values():
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width > 300 and image.height > 300


def test_plots_tolerate_edge_cases(tmp_path):
    # one class only: ROC undefined but the figure is still written
    save_roc_curve([0, 0, 0], [0.1, 0.2, 0.3], tmp_path / "roc.png")
    save_reliability_diagram([0, 1], None, [0.2, 0.7], tmp_path / "rel.png")
    save_confusion_matrix([[0, 0], [0, 0]], tmp_path / "cm.png")
    for name in ("roc.png", "rel.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_run_without_test_split_renders_without_model_index():
    context = make_context(test=None)
    card = ModelCard(render_model_card(TEMPLATE, context))
    assert card.data.eval_results is None
    assert "model-index" not in card.content
    assert "Not evaluated: this run had no test split." in card.text
    assert "| Accuracy | n/a | n/a |" in card.text


def test_colour_constant_model_card_tells_pipeline_users_the_extra_step():
    plain = render_model_card(TEMPLATE, make_context())
    corrected = render_model_card(TEMPLATE, make_context(color_constancy="shades_of_gray"))
    assert "pipeline_input" not in plain
    assert "Shades of Gray colour constancy" in corrected and "pipeline_input(path)" in corrected


def test_measured_sections_are_replaced_in_place():
    card = render_model_card(TEMPLATE, make_context())
    assert "Not measured yet" in card and "Not written yet" in card
    updated = replace_section(card, "robustness", "| shift | ROC AUC |\n|---|---|\n| blur | 0.9 |")
    updated = replace_section(updated, "robustness", "| shift | ROC AUC |\n|---|---|\n| blur | 0.8 |")
    assert "| blur | 0.8 |" in updated and "| blur | 0.9 |" not in updated and "Not measured yet" not in updated
    assert "Not written yet" in updated
    with pytest.raises(ValueError, match="no <!-- begin nonsense -->"):
        replace_section(card, "nonsense", "x")


def test_one_upsert_adds_a_missing_section_where_asked_and_replaces_it_after(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("---\nlicense: mit\n---\n\n# tiny: a model\n\nbody\n\n<!-- begin robustness -->\nr\n<!-- end robustness -->\n\nlast\n")
    upsert_card_section(path, "identity", "**Name:** tiny", add_at=UNDER_TITLE)
    upsert_card_section(path, "probes", "p1", heading="### Probes", add_at="robustness")
    upsert_card_section(path, "input_check", "c1", heading="## Input check", add_at=AT_END)
    upsert_card_section(path, "input_check", "c2", heading="## Input check", add_at=AT_END)  # replaced, not added twice
    card = path.read_text()
    assert card.startswith("---\nlicense: mit\n---\n\n# tiny: a model\n\n<!-- begin identity -->\n**Name:** tiny\n")
    assert "<!-- end robustness -->\n\n### Probes\n\n<!-- begin probes -->\np1\n<!-- end probes -->\n\nlast" in card
    assert card.endswith("last\n\n## Input check\n\n<!-- begin input_check -->\nc2\n<!-- end input_check -->\n")
    assert card.count("## Input check") == 1 and "c1" not in card
    with pytest.raises(ValueError, match="no <!-- begin comparison -->"):
        upsert_card_section(path, "comparison", "x")  # no add_at: a missing section is not our card
    with pytest.raises(ValueError, match="nor a place for it: nowhere"):
        upsert_card_section(path, "other", "x", add_at="nowhere")


# ------------------------------------------------------------------ external validation and sources


def _external_result(seed: int, screening: float, high_risk: float) -> dict:
    y, p = _synthetic_split(seed, n=90)
    return at_operating_points(y, p, screening, high_risk)


def test_external_table_has_one_row_per_set_with_the_three_operating_points():
    derm7pt = _external_result(5, 0.2, 0.8)
    one_class = {key: binary_metrics([0, 0, 0], [0.1, 0.6, 0.9], t)
                 for key, t in (("at_0_5", 0.5), ("at_screening_threshold", 0.2), ("at_high_risk_threshold", 0.8))}
    table = external_table({"derm7pt": derm7pt, "benign_only": one_class})
    lines = table.splitlines()
    assert lines[0].startswith("| Set | Images (malignant / benign) | ROC AUC | ECE |") and len(lines) == 4
    m = derm7pt["at_0_5"]
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells == [
        "derm7pt (external)", f"{m['n']} ({m['n_malignant']} / {m['n_benign']})", f"{m['roc_auc']:.3f}", f"{m['ece']:.3f}",
        *(f"{derm7pt[key]['sensitivity']:.3f} / {derm7pt[key]['specificity']:.3f}"
          for key in ("at_0_5", "at_screening_threshold", "at_high_risk_threshold"))]
    # The screening threshold flags more than 0.5, the high-risk one fewer.
    assert derm7pt["at_screening_threshold"]["sensitivity"] >= m["sensitivity"] >= derm7pt["at_high_risk_threshold"]["sensitivity"]
    # With one class there is no ROC AUC: n/a, not a number.
    cells = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert cells[:3] == ["benign_only (external)", "3 (0 / 3)", "n/a"] and cells[6] == "0.000 / 0.667"
    assert "--external-dir" in external_table({})


def test_sources_table_has_a_row_per_source_and_split():
    sources = {"melanoma_cancer_dataset": {"train": {"benign": 4470, "malignant": 4122},
                                           "validation": {"benign": 497, "malignant": 458},
                                           "test": {"benign": 500, "malignant": 500}},
               "isic2017": {"train": {"benign": 1569, "malignant": 0}, "validation": {"benign": 174}}}
    lines = sources_table(sources).splitlines()
    assert lines[:2] == ["| Source | Split | Benign | Malignant |", "|---|---|---:|---:|"]
    assert lines[2:] == ["| melanoma_cancer_dataset | train | 4470 | 4122 |", "| melanoma_cancer_dataset | validation | 497 | 458 |",
                         "| melanoma_cancer_dataset | test | 500 | 500 |", "| isic2017 | train | 1569 | 0 |",
                         "| isic2017 | validation | 174 | 0 |"]
    assert sources_table({}) == ""


def test_card_with_external_sets_and_sources():
    context = make_context(dataset_id="../shared/data/melanoma_cancer_dataset")
    external = {"derm7pt": _external_result(5, context["screening_threshold"], context["high_risk_threshold"]),
                "independent": _external_result(6, context["screening_threshold"], context["high_risk_threshold"])}
    sources = {"melanoma_cancer_dataset": {"train": {"benign": 10, "malignant": 9}}, "isic2017": {"train": {"benign": 7, "malignant": 1}}}
    card = ModelCard(render_model_card(TEMPLATE, {**context, "external": external, "sources": sources}))
    section = card.text.split("### External validation", 1)[1].split("###", 1)[0]
    assert "| derm7pt (external) |" in section and "| independent (external) |" in section
    assert "| isic2017 | train | 7 | 1 |" in card.text
    # The model-index: the test split first, then one dataset entry per external set, with their own figures.
    results = card.data.to_dict()["model-index"][0]["results"]
    names = [entry["dataset"]["name"] for entry in results]
    assert names == ["Melanoma Skin Cancer Dataset of 10000 Images", "derm7pt (external validation)",
                     "independent (external validation)"]
    for entry, (name, result) in zip(results[1:], external.items()):
        assert entry["dataset"]["split"] == "all" and entry["dataset"]["type"] == "imagefolder"
        assert entry["dataset"]["config"] == name
        values = {metric["name"]: metric["value"] for metric in entry["metrics"]}
        assert len(values) == len(entry["metrics"]) == len(results[0]["metrics"])  # each set's figures, once
        assert values["ROC AUC"] == pytest.approx(result["at_0_5"]["roc_auc"], abs=1e-4)
        assert values["Specificity at screening threshold"] == pytest.approx(result["at_screening_threshold"]["specificity"], abs=1e-4)
    test_values = {metric["name"]: metric["value"] for metric in results[0]["metrics"]}
    assert test_values["ROC AUC"] == pytest.approx(context["test"]["at_0_5"]["roc_auc"], abs=1e-4)
    # Without external sets the card says how to add one, and the model-index keeps the test split alone.
    plain = ModelCard(render_model_card(TEMPLATE, context))
    assert "No external set was scored" in plain.text and len(plain.data.to_dict()["model-index"][0]["results"]) == 1


def test_card_tells_pipeline_users_about_the_field_of_view_mask():
    masked = render_model_card(TEMPLATE, make_context(field_of_view_mask=0.45))
    assert "radius 0.45" in masked and "`field_of_view_mask` in config.json" in masked and "pipeline_input(path)" in masked
    both = render_model_card(TEMPLATE, make_context(field_of_view_mask=0.45, color_constancy="shades_of_gray"))
    assert "Shades of Gray colour constancy" in both and "radius 0.45" in both and "these steps" in both
    assert "field_of_view_mask" not in render_model_card(TEMPLATE, make_context(field_of_view_mask=0.0))
