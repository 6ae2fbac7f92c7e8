"""Tabulate finished training runs side by side, ranked by the first external set's ROC AUC.

    python experiments/compare_runs.py runs/a runs/b ... --card model/README.md
    python experiments/compare_runs.py runs/cpu --out runs/cpu/summary.json

Evaluates nothing: it reads each run's eval_results.json (and robustness.json,
written by `evaluate_model.py --robustness --out`; by_source.json, written by
experiments/operating_points_by_source.py), with the recipe from the settings
each one stored; runs trained before settings were stored show their recipe as
unknown (—). --out writes the rows and the ranking as JSON, --card the table
into a model card. experiments/compare_runs.sh runs the shortcut probes first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from melanoma_screen.architectures import adapter_for  # noqa: E402
from melanoma_screen.model_card import upsert_card_section  # noqa: E402
from melanoma_screen.results import load_eval_results  # noqa: E402
from melanoma_screen.skin import PROBE_NAMES  # noqa: E402
from melanoma_screen.transforms import AUGMENTATION_DEFAULTS, COLOR_CONSTANCY_NAMES  # noqa: E402

UNKNOWN = "—"  # a setting the run did not store, unlike "–", a setting that was off or empty



def scratch_label(scratch_config: str) -> str:
    """--scratch-config's name as the initialisation column writes it: an architecture's, or a ViT size's."""
    adapter = adapter_for(scratch_config)
    return adapter.short_name if adapter is not None else f"{adapter_for('vit').short_name}-{scratch_config}"
_RECIPE_COLUMNS = ("initialisation", "extra training data", "field of view", "colour constancy", "augmentation",
                   "balance", "selection")


def recipe(settings: dict | None) -> dict:
    """The comparison's recipe columns from the settings a run stored (None: all unknown)."""
    if settings is None:
        return dict.fromkeys(_RECIPE_COLUMNS, UNKNOWN)
    data_args, model_args = settings["data"], settings["model"]
    changed = {name.removeprefix("augment_"): data_args.get(name, default) for name, default in AUGMENTATION_DEFAULTS.items()
               if data_args.get(name, default) != default}
    color_constancy = model_args.get("color_constancy", "none")
    return dict(zip(_RECIPE_COLUMNS, (
        ("mimetic" if model_args.get("mimetic_init") else "random") + f", {scratch_label(model_args['scratch_config'])}"
        if model_args.get("scratch_config") else
        ("MAE encoder" if model_args.get("init_from") else
         # A local folder, such as the shipped model/, by its name: its absolute path says where it was, not what.
         f"fine-tuned from {Path(model_args['model_name_or_path']).name}/"
         if Path(str(model_args.get("model_name_or_path"))).is_absolute() else model_args.get("model_name_or_path")),
        ", ".join(Path(folder).name for folder in data_args.get("extra_train_dir") or []) or "–",
        f"mask r={model_args['field_of_view_mask']:g}" if model_args.get("field_of_view_mask") else "–",
        "–" if color_constancy == "none" else COLOR_CONSTANCY_NAMES[color_constancy],
        ", ".join(f"{k} {v:g}" + (" per class" if k == "vignette" and data_args.get("augment_vignette_balanced") else "")
                  for k, v in changed.items())
        + (", lesion size balanced per class" if data_args.get("augment_lesion_size_balanced") else "") or "default",
        (data_args.get("balance") or "none") + (" + diagnoses" if data_args.get("balance_diagnoses") else "")
        + (f", diagnosis head {settings['screening']['diagnosis_head_weight']:g}"
           if (settings.get("screening") or {}).get("diagnosis_head_weight") else ""),
        {"pooled": "pooled val AUC", "mean_source": "mean per-source val AUC", "worst_source": "worst per-source val AUC"}[
            (settings.get("screening") or {}).get("select_on") or "pooled"],
    )))


def describe_run(run_dir: Path) -> dict:
    """One row of the comparison: the recipe (from the settings the run stored) and its figures.

    Runs trained before the settings were stored as data show theirs as
    unknown: their command line is for people, and a renamed flag would
    misread it.
    """
    report = load_eval_results(run_dir / "eval_results.json")
    settings = report.get("settings")
    row = {"run": run_dir.name, **recipe(settings)}
    # Runs before train_vit.py took TrainingArguments stored "epochs"; later ones "num_train_epochs".
    training = (settings or {}).get("training", {})
    epochs = report.get("epochs_trained") or training.get("num_train_epochs", training.get("epochs"))
    selection = report.get("checkpoint_selection", {"chosen": "best checkpoint"})
    row.update({
        "epochs": UNKNOWN if epochs is None else f"{epochs:.3g}",
        "weights": f"mean of last {len(selection['average']['checkpoints'])}" if selection["chosen"] == "average" else "best epoch",
        "val AUC": report["validation_at_screening_threshold"]["roc_auc"],
        "val spec @ screening": report["validation_at_screening_threshold"]["specificity"],
    })
    if report["test"]:
        at_05, at_screening = report["test"]["at_0_5"], report["test"]["at_screening_threshold"]
        row.update({"test AUC": at_05["roc_auc"], "test acc": at_05["accuracy"],
                    "test sens / spec @ screening": (at_screening["sensitivity"], at_screening["specificity"]),
                    "test ECE": at_05["ece"]})
    # by_source.json: experiments/operating_points_by_source.py, for runs trained before training reported it.
    by_source_path = run_dir / "by_source.json"
    by_source = json.loads(by_source_path.read_text())["external"] if by_source_path.is_file() else {}
    for name, external in report["external"].items():
        row[f"{name} AUC"] = external["at_0_5"]["roc_auc"]
        row[f"{name} sens / spec @ screening"] = (external["at_screening_threshold"]["sensitivity"],
                                                  external["at_screening_threshold"]["specificity"])
        for group, result in (external.get("auc_by_benign_group") or {}).items():
            row[f"{name} AUC against {group}"] = result["roc_auc"]
        shift = external.get("by_source") or by_source.get(name)
        if shift and "specificity_at_sensitivity_0_90" in shift:
            row[f"{name} spec @ sens 0.90"] = shift["specificity_at_sensitivity_0_90"]
            row[f"{name} mean P(mal) of benign"] = shift["mean_p_malignant_benign"]
    for source, auc in (report.get("validation_auc_by_source") or {}).items():
        row[f"val AUC {source}"] = auc
    if report.get("train_minutes") is not None:
        row["train minutes"] = f"{report['train_minutes']:.0f}"
    robustness_path = run_dir / "robustness.json"
    if robustness_path.is_file():
        robustness = json.loads(robustness_path.read_text())
        shifts = robustness["robustness"]
        if shifts:  # empty after --shortcut-probes-only
            worst = min(shifts, key=lambda name: shifts[name]["roc_auc"])
            row["mean AUC under shifts"] = float(np.mean([shift["roc_auc"] for shift in shifts.values()]))
            row["worst shift"] = (worst, shifts[worst]["roc_auc"])
        vignette = (robustness.get("shortcut_probes") or {}).get("vignette")
        if vignette and vignette.get("n"):
            row["vignette probe: P(mal) / flagged change"] = (vignette["mean_p_malignant_change"],
                                                              vignette["flagged_change_points"] / 100)
        for direction, probe in ((robustness.get("shortcut_probes") or {}).get("skin_colour") or {}).items():
            if probe["benign"].get("n"):
                row[f"skin probe {PROBE_NAMES[direction]}: benign P(mal) / flagged change"] = (
                    probe["benign"]["mean_p_malignant_change"], probe["benign"]["flagged_change_points"] / 100)
        lesion_size = ((robustness.get("shortcut_probes") or {}).get("lesion_size") or {}).get("benign") or {}
        if lesion_size.get("n"):
            row["lesion-size probe (1.5x larger): benign P(mal) / flagged change"] = (
                lesion_size["mean_p_malignant_change"], lesion_size["flagged_change_points"] / 100)
    return row


def run_folders(paths) -> list[Path]:
    """The training runs named: each path is a run folder, or a folder whose sub-folders are runs."""
    runs = []
    for path in map(Path, paths):
        if (path / "eval_results.json").is_file():
            runs.append(path)
        elif path.is_dir():
            runs += sorted(child for child in path.iterdir() if (child / "eval_results.json").is_file())
    return runs


def ranking_by_external_auc(runs: list[Path]) -> list[str]:
    """Run names by the first external set's ROC AUC, best first: for choosing which runs to look at closely.

    The external set is then no longer untouched, and reports say so.
    """
    aucs = {}
    for run in runs:
        external = next(iter(load_eval_results(run / "eval_results.json")["external"].values()), None)
        if external is not None:
            aucs[run.name] = external["at_0_5"]["roc_auc"]
    return sorted(aucs, key=lambda name: -(aucs[name] or 0))


def comparison_markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(name for row in rows for name in row))

    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, tuple):
            return " / ".join(cell(part) for part in value)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(name)) for name in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of runs")
    parser.add_argument("--out", default=None, help="Write the rows and the ranking by external ROC AUC as JSON here.")
    parser.add_argument("--card", default=None, help="Write the table into this model card.")
    args = parser.parse_args(argv)
    runs = run_folders(args.runs)
    if not runs:
        parser.error("none of " + ", ".join(args.runs) + " is a training run (no eval_results.json)")
    rows = [describe_run(run) for run in runs]
    table = comparison_markdown(rows)
    print(table)
    ranking = ranking_by_external_auc(runs)
    if ranking:
        print("ranking by external ROC AUC:", ", ".join(ranking))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "ranking": ranking}, indent=2) + "\n")
    if args.card:
        command = "python experiments/compare_runs.py " + " ".join(args.runs) + f" --card {args.card}"
        upsert_card_section(args.card, "comparison", f"{table}\n\nWritten by `{command}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
