"""One reader for eval_results.json: the current layout, old runs upgraded, malformed files refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from melanoma_screen.metrics import OPERATING_POINTS, at_operating_points
from melanoma_screen.results import EvalResultsError, load_eval_results

SHIPPED = Path(__file__).resolve().parents[1] / "model" / "eval_results.json"


def _block(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * 10)
    return at_operating_points(labels, np.clip(0.3 * labels + rng.uniform(0, 0.7, labels.size), 0, 1), 0.2, 0.8)


def _old_layout(test: dict, external: dict | None = None) -> dict:
    """What train_vit.py used to write: the test block flat, as test_at_*."""
    report = {"operating_points": {"screening_threshold": 0.2, "high_risk_threshold": 0.8}, "command": "python train_vit.py"}
    report.update({f"test_{key}": value for key, value in test.items()})
    if external is not None:
        report["external"] = external
    return report


def test_an_old_layout_file_is_upgraded_to_the_current_one(tmp_path):
    test, derm7pt = _block(0), _block(1)
    path = tmp_path / "eval_results.json"
    path.write_text(json.dumps(_old_layout(test, {"derm7pt": derm7pt})))
    results = load_eval_results(path)
    assert results["test"] == test and results["external"] == {"derm7pt": derm7pt}
    assert not any(key.startswith("test_at_") for key in results)
    assert results["operating_points"]["screening_threshold"] == 0.2
    # The file itself is left as it was (runs still training write it).
    assert "test_at_0_5" in json.loads(path.read_text())


def test_a_run_from_before_external_sets_reads_with_none():
    results = load_eval_results(_old_layout(_block(0)))
    assert results["external"] == {} and set(results["test"]) == set(OPERATING_POINTS)


def test_the_current_layout_reads_unchanged_and_a_dict_is_not_modified():
    report = {"test": _block(0), "external": {"derm7pt": _block(1)}, "command": "python train_vit.py"}
    before = json.dumps(report, sort_keys=True)
    assert load_eval_results(report) == report
    old = _old_layout(_block(0))
    load_eval_results(old)
    assert json.dumps(report, sort_keys=True) == before and "test_at_0_5" in old


def test_a_report_without_a_test_block_has_none():
    # A run without a test split, or Trainer's own eval_results.json in a downloaded folder.
    assert load_eval_results({"test": None})["test"] is None
    assert load_eval_results({"eval_loss": 0.3, "epoch": 2.0}) == {"eval_loss": 0.3, "epoch": 2.0, "test": None,
                                                                  "external": {}}


@pytest.mark.parametrize("report, needle", [
    ({"test_at_0_5": {}, "test_at_screening_threshold": {}}, "old-layout test block (test_at_*) has no at_high_risk_threshold"),
    ({"test": {"at_0_5": {}}}, "\"test\" block has no at_screening_threshold, at_high_risk_threshold"),
    ({"test": [1, 2]}, "\"test\" block has no at_0_5"),
    ({"test": {key: {} for key in OPERATING_POINTS}, "test_at_0_5": {}}, "both a \"test\" block and the old test_at_* keys"),
    ({"external": {"derm7pt": {"roc_auc": 0.7}}}, "external set 'derm7pt' has no at_0_5"),
    ({"external": [1]}, "\"external\" must map"),
])
def test_a_malformed_report_is_refused_with_the_file_named(tmp_path, report, needle):
    path = tmp_path / "run" / "eval_results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    with pytest.raises(EvalResultsError) as error:
        load_eval_results(path)
    assert str(error.value).startswith(str(path)) and needle in str(error.value)


def test_a_file_that_is_not_a_json_object_is_refused_with_its_name(tmp_path):
    for text, needle in (("{not json", "cannot be read as JSON"), ("[1, 2]", "holds a JSON list")):
        path = tmp_path / "eval_results.json"
        path.write_text(text)
        with pytest.raises(EvalResultsError, match=needle) as error:
            load_eval_results(path)
        assert str(path) in str(error.value)


def test_the_shipped_report_is_in_the_current_layout_with_the_figures_it_had():
    shipped = json.loads(SHIPPED.read_text())
    assert load_eval_results(SHIPPED) == shipped and set(shipped["test"]) == set(OPERATING_POINTS)
    # The figures the README and the card quote.
    assert round(shipped["test"]["at_0_5"]["roc_auc"], 3) == 0.930
    assert round(shipped["test"]["at_screening_threshold"]["sensitivity"], 3) == 0.972
    assert round(shipped["external"]["derm7pt"]["at_screening_threshold"]["specificity"], 3) == 0.078
