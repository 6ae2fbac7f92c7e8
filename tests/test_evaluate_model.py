"""The evaluation command reproduces training's test report and probes acquisition shifts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import evaluate_model
from conftest import experiment_script, image_count, real_images
from melanoma_screen.metrics import OPERATING_POINTS

compare_runs = experiment_script("compare_runs")


def test_rerun_on_the_test_split_matches_the_stored_report(tiny_model_dir, tiny_image_folder, tmp_path):
    out = tmp_path / "report.json"
    assert evaluate_model.main(["--model", str(tiny_model_dir), "--data-dir", str(tiny_image_folder), "--split", "test",
                          "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    stored = json.loads((tiny_model_dir / "eval_results.json").read_text())
    assert report["n_images"] == image_count(tiny_image_folder / "test")
    # The same keys: evaluate_model.py's report holds at its top level the block training stores as "test".
    assert set(stored["test"]) == set(OPERATING_POINTS) <= set(report)
    for key in OPERATING_POINTS:
        assert set(report[key]) == set(stored["test"][key]), key
    for key in ("at_0_5", "at_screening_threshold"):
        for name in ("roc_auc", "accuracy", "sensitivity", "specificity"):
            assert report[key][name] == pytest.approx(stored["test"][key][name], abs=0.005), (key, name)


def test_a_bare_label_folder_is_read_as_one_split(tiny_model_dir, tiny_image_folder, tmp_path):
    bare = tmp_path / "external_set"
    shutil.copytree(tiny_image_folder / "test", bare)
    out = tmp_path / "report.json"
    assert evaluate_model.main(["--model", str(tiny_model_dir), "--data-dir", str(bare), "--robustness",
                                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_images"] == image_count(tiny_image_folder / "test")
    assert report["data"]["counts"] == {"external_set": {label: image_count(tiny_image_folder / "test" / label)
                                                         for label in ("benign", "malignant")}}
    assert report["data"]["split"] is None and report["data"]["skipped"] == 0
    assert set(report["robustness"]) == set(evaluate_model.SHIFTS)
    for row in report["robustness"].values():
        assert 0.0 <= row["roc_auc"] <= 1.0
        assert row["auc_drop"] == pytest.approx(report["at_0_5"]["roc_auc"] - row["roc_auc"])


def test_an_empty_folder_is_refused_with_a_clear_message(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "benign").mkdir(parents=True)
    (empty / "malignant").mkdir()
    for extra in ([], ["--split", "test"]):
        with pytest.raises(SystemExit) as stop:
            evaluate_model.main(["--model", str(tiny_model_dir), "--data-dir", str(empty), *extra])
        assert stop.value.code == 2
        assert "holds no readable images in benign/ or malignant/ folders" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(evaluate_model.SHIFTS))
def test_every_shift_keeps_the_size_and_changes_the_pixels(name):
    image = Image.open(real_images("test", "benign", 1)[0]).convert("RGB")
    shifted = evaluate_model.SHIFTS[name](image)
    assert shifted.size == image.size and shifted.mode == "RGB"
    assert np.abs(np.asarray(shifted, dtype=np.float32) - np.asarray(image, dtype=np.float32)).mean() > 0.5


def test_robustness_table_goes_into_the_model_card(tiny_model_dir, tiny_image_folder, tmp_path):
    card = tmp_path / "README.md"
    shutil.copy(tiny_model_dir / "README.md", card)
    arguments = ["--model", str(tiny_model_dir), "--data-dir", str(tiny_image_folder), "--split", "test",
                 "--robustness", "--card", str(card)]
    assert evaluate_model.main(arguments) == 0
    first = card.read_text()
    assert "| darker (-35%) |" in first and "Not measured yet" not in first
    assert "python evaluate_model.py --model" in first
    # A rerun replaces the table rather than adding a second one.
    assert evaluate_model.main(arguments) == 0
    assert card.read_text().count("| darker (-35%) |") == 1


def test_compare_tabulates_runs_from_their_stored_settings(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "tiny-run"
    shutil.copytree(tiny_model_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    report = json.loads((run / "eval_results.json").read_text())
    card = tmp_path / "README.md"
    shutil.copy(tiny_model_dir / "README.md", card)
    assert compare_runs.main([str(run), "--card", str(card)]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| tiny-run |"))
    # initialisation, extra training data, field of view, colour constancy, augmentation, balance, selection
    assert "| random, ViT-tiny | – | – | – | default | none | pooled val AUC |" in row
    assert f"| {report['test']['at_0_5']['roc_auc']:.3f} |" in row
    assert row in card.read_text() and "Not written yet" not in card.read_text()

    # A run from before the settings were stored as data, in the old results layout: its recipe is unknown,
    # not re-parsed from the command; its figures are the same.
    old = {key: value for key, value in report.items() if key not in ("settings", "test")}
    old.update({f"test_{key}": value for key, value in report["test"].items()})
    (run / "eval_results.json").write_text(json.dumps(old))
    assert compare_runs.main([str(run)]) == 0
    old_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-run |"))
    assert "| tiny-run | — | — | — | — | — | — | — |" in old_row
    assert (old_row.split("| — | — | — | — | — | — | — |")[1]
            == row.split("| random, ViT-tiny | – | – | – | default | none | pooled val AUC |")[1])


def test_compare_reads_a_folder_of_runs_and_ranks_them_by_external_auc(tiny_model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, auc in (("weaker", 0.61), ("stronger", 0.83)):
        run = runs / name
        shutil.copytree(tiny_model_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
        report = json.loads((run / "eval_results.json").read_text())
        external = json.loads(json.dumps(report["test"]))  # a stand-in external set with a chosen ROC AUC
        external["at_0_5"]["roc_auc"] = auc
        report["external"] = {"derm7pt": external}
        (run / "eval_results.json").write_text(json.dumps(report))
    (runs / "not-a-run").mkdir()
    out = tmp_path / "summary.json"
    assert compare_runs.main([str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| stronger |" in printed and "| weaker |" in printed and "not-a-run" not in printed.split("ranking")[0]
    assert "ranking by external ROC AUC: stronger, weaker" in printed
    summary = json.loads(out.read_text())
    assert summary["ranking"] == ["stronger", "weaker"]
    assert [row["run"] for row in summary["rows"]] == ["stronger", "weaker"]
    assert summary["rows"][0]["derm7pt AUC"] == 0.83


def test_the_old_compare_flag_fails_naming_the_script_that_took_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_model.main(["--compare", "runs/a", "runs/b"])
    assert exit_info.value.code == 2
    assert "python experiments/compare_runs.py runs/a runs/b" in capsys.readouterr().err
