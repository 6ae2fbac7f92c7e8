"""How well the input check separates dermoscopy from what the model cannot judge.

    python benchmarks/input_check.py --model model
    python benchmarks/input_check.py --model model --card model/README.md --json model/input_check_benchmark.json

Three rates, with the model's own input check (MODEL/input_check.safetensors):
the share of the 10k set's test split accepted (target >= 98%), of derm7pt, real
dermoscopy from another clinic, accepted (target >= 98%), and of the generated
"not a dermoscopic lesion" set refused (target >= 95%, benchmarks/not_lesion_set.py,
per category too). None of these was used to fit a threshold. For the two real
sets it also gives the model's ROC AUC on the accepted and on the refused images:
whether the refusals fall where the model is unreliable. --card writes the table
into the model card's input-check section.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from common import DATASET, SHARED_DATA, list_images, write_json  # and the repository on sys.path
from not_lesion_set import CATEGORIES, build_not_lesion_set

from melanoma_screen.input_check import REPORT_FILE, STATS_FILE  # noqa: E402
from melanoma_screen.picture_statistics import measure  # noqa: E402
from melanoma_screen.metrics import refusal_report  # noqa: E402
from melanoma_screen.model_card import (AT_END, INPUT_CHECK_HEADING, INPUT_CHECK_SECTION,  # noqa: E402
                                        input_check_markdown, upsert_card_section)
from melanoma_screen.inference import FAST, ScreeningModel, default_model_source  # noqa: E402

DERM7PT = SHARED_DATA / "derm7pt"


def labelled(folder: Path) -> tuple[list[Path], list[int]]:
    paths = [path for path in list_images(folder) if path.parent.name in ("benign", "malignant")]
    return paths, [int(path.parent.name == "malignant") for path in paths]


def real_set(model, folder: Path, name: str) -> dict:
    paths, labels = labelled(folder)
    measured = measure(model, paths, desc=name)
    verdicts = model.input_check.judge(measured["features"], measured["embeddings"])
    kept_labels = [labels[i] for i in measured["kept"]]
    report = refusal_report([v.reason for v in verdicts], kept_labels, measured["probabilities"],
                                        model.screening_threshold)
    report["unreadable"] = measured["skipped"]
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default=None, help="model folder (default: $MODEL_ID, else ./model)")
    parser.add_argument("--test-dir", default=str(DATASET / "test"), help="the 10k set's test split")
    parser.add_argument("--external-dir", default=str(DERM7PT), help="{benign,malignant}/ of another clinic (derm7pt)")
    parser.add_argument("--card", default=None, help="write the table into this model card's input-check section")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    source = args.model or default_model_source()
    model = ScreeningModel.load(source, **FAST)
    if model.input_check is None:
        print(f"{source} has no {STATS_FILE}: run `python fit_input_check.py fit --model {source}`.",
              file=sys.stderr)
        return 2
    results = {"model": model.model_id, "model_version": model.version, "sets": {}}
    test = real_set(model, Path(args.test_dir), "test split")
    external = real_set(model, Path(args.external_dir), "derm7pt") if Path(args.external_dir).is_dir() else None

    test_paths, _ = labelled(Path(args.test_dir))
    samples = build_not_lesion_set(test_paths[::50][:20])
    generated = measure(model, [sample.image for sample in samples], desc="not a lesion")
    verdicts = model.input_check.judge(generated["features"], generated["embeddings"])
    by_category = {category: [] for category in CATEGORIES}
    accepted_names = {category: [] for category in CATEGORIES}
    for sample, verdict in zip(samples, verdicts):
        by_category[sample.category].append(verdict.reason)
        if verdict.ok:
            accepted_names[sample.category].append(sample.name)
    refused = sum(reason is not None for reason in [v.reason for v in verdicts])

    results["sets"]["test split (10k set)"] = {"n": test["n"], "accepted": test["accepted"]}
    if external:
        results["sets"]["derm7pt (another clinic)"] = {"n": external["n"], "accepted": external["accepted"]}
    results["sets"]["not a lesion (generated)"] = {"n": len(samples), "accepted": 1 - refused / len(samples)}
    results["test"], results["external"] = test, external
    results["not_a_lesion"] = {category: {"n": len(reasons), "refused": sum(r is not None for r in reasons),
                                          "reasons": dict(Counter(r or "accepted" for r in reasons)),
                                          "accepted": accepted_names[category]}
                               for category, reasons in by_category.items() if reasons}
    results["command"] = "python benchmarks/input_check.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def auc(part):
        return "n/a" if not part or part["roc_auc"] is None else f"{part['roc_auc']:.3f}"

    print(f"\n{model.model_id} ({model.version})")
    print(f"test split accepted:      {100 * test['accepted']:.1f}% of {test['n']} (target >= 98%); refused {test['reasons']}")
    if external:
        print(f"derm7pt accepted:         {100 * external['accepted']:.1f}% of {external['n']} (target >= 98%); "
              f"refused {external['reasons']}")
    print(f"not-a-lesion set refused: {100 * refused / len(samples):.1f}% of {len(samples)} (target >= 95%)")
    for category, row in results["not_a_lesion"].items():
        print(f"    {category:22s} {row['refused']:3d}/{row['n']:<3d} {row['reasons']}"
              + (f"; still accepted: {', '.join(row['accepted'])}" if row["accepted"] else ""))
    check = model.input_check
    def rounded(value):
        return None if value is None else round(value, 1)

    print(f"photographs of people (distance threshold {rounded(check.threshold)}, spread threshold "
          f"{rounded(check.spread_threshold)}):")
    for sample, verdict in zip(samples, verdicts):
        if sample.category == "person":
            print(f"    {sample.name:30s} distance {verdict.details.get('distance')}, spread "
                  f"{verdict.details.get('spread')}: {verdict.reason or 'accepted'}")
    results["people"] = {sample.name: {**verdict.details, "reason": verdict.reason}
                         for sample, verdict in zip(samples, verdicts) if sample.category == "person"}
    for name, part in (("test split", test), ("derm7pt", external)):
        if part:
            print(f"ROC AUC on {name}: accepted {auc(part['accepted_pictures'])}, refused {auc(part['refused_pictures'])} "
                  f"({part['refused']} refused)")
    write_json(args.json, results)
    if args.card:
        report_path = Path(source) / REPORT_FILE
        fit_report = json.loads(report_path.read_text())
        upsert_card_section(args.card, INPUT_CHECK_SECTION, input_check_markdown(fit_report, results),
                            heading=INPUT_CHECK_HEADING, add_at=AT_END)
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
