"""Read a run's eval_results.json in the one layout that training, evaluate_model.py, the app and the card share.

    results = load_eval_results("runs/vit/eval_results.json")
    results["test"]["at_screening_threshold"]["sensitivity"]   # results["test"] is None without a test split
    results["external"]["derm7pt"]["at_0_5"]["roc_auc"]

"test" and every "external" entry hold metrics.at_operating_points' block,
the keys evaluate_model.py reports at its top level.
"""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import OPERATING_POINTS

# Older runs kept the test block flat, as test_at_0_5 and so on.
_OLD_TEST_PREFIX = "test_"


class EvalResultsError(ValueError):
    """An eval_results.json in neither the current layout nor the old one; the message names the file."""


def load_eval_results(source, name: str | None = None) -> dict:
    """The results of a path to eval_results.json, or of its parsed dict, in the current layout.

    Old runs are upgraded in the returned copy (the file is left alone), so that
    folders written by older code, e.g. runs still training, stay readable. A
    file without any test block, such as Trainer's own eval_results.json, reads
    as a run without a test split. `name` is what messages call a dict source.
    """
    if isinstance(source, dict):
        where, results = name or "eval_results", dict(source)
    else:
        where = name or str(source)
        try:
            results = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EvalResultsError(f"{where} cannot be read as JSON ({error}).") from error
        if not isinstance(results, dict):
            raise EvalResultsError(f"{where} holds a JSON {type(results).__name__}, not the object train_vit.py writes.")
    old = {key: results.pop(_OLD_TEST_PREFIX + key) for key in OPERATING_POINTS if _OLD_TEST_PREFIX + key in results}
    if old:
        if results.get("test") is not None:
            raise EvalResultsError(f"{where} holds both a \"test\" block and the old test_at_* keys; keep one of them.")
        _check_block(old, "old-layout test block (test_at_*)", where)
        results["test"] = old
    results.setdefault("test", None)
    if results["test"] is not None:
        _check_block(results["test"], "\"test\" block", where)
    results.setdefault("external", {})
    if not isinstance(results["external"], dict):
        raise EvalResultsError(f"{where}: \"external\" must map each set's name to its results.")
    for set_name, block in results["external"].items():
        _check_block(block, f"external set {set_name!r}", where)
    return results


def _check_block(block, what: str, where: str) -> None:
    missing = [key for key in OPERATING_POINTS if not isinstance(block, dict) or not isinstance(block.get(key), dict)]
    if missing:
        raise EvalResultsError(f"{where}: the {what} has no {', '.join(missing)}; every results block holds "
                               f"{', '.join(OPERATING_POINTS)}, as melanoma_screen.metrics.at_operating_points writes them.")
