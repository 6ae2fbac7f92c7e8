"""Which BatchNorm statistics to adapt, and how far: the measurements behind site_adaptation.ADAPTATION_RULE.

    python benchmarks/site_adaptation_rules.py --model model --json runs/site_adaptation_rules.json

Each set (derm7pt, the 10k test split, and each of ham10000's three
acquisitions, none of which the shipped model was trained on) is read once as
the app reads it; pictures its input check refuses are left out. The set is
split into two stratified halves; for each rule the statistics are estimated
on one half's pictures (labels unused) and the other half is scored, then the
other way round, and both folds are pooled: sensitivity and specificity at the
model's own screening threshold and ROC AUC, before and after. The guard's
figure (the rank correlation of the adaptation half's scores before and after)
is printed beside them. derm7pt is used here under the issue's explicit 2-fold
protocol only: nothing is fitted on the half that is scored.

The model inputs are cached (--cache-dir) so a second run reads no image.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from common import IMAGE_SUFFIXES, SHARED_DATA, DATASET, REPO_ROOT, halves  # noqa: F401  (puts the repository on sys.path)

from melanoma_screen import metrics  # noqa: E402
from melanoma_screen.inference import FAST, ScreeningModel  # noqa: E402
from melanoma_screen.site_adaptation import (adapt, batches, estimate_site_statistics, gather_pixels, measure_reference,  # noqa: E402
                                             malignant_probabilities, rank_correlation)

# "replace": the site's statistics replace the stored ones, as published AdaBN does (calibrate_site.py's rule);
# "relative": only the site's difference from 2,000 training pictures' statistics is applied.
RULES = {"replace, all layers": {"layers": None, "mix": 1.0}, "replace, mix 0.75": {"layers": None, "mix": 0.75},
         "replace, mix 0.5": {"layers": None, "mix": 0.5}, "replace, first 16": {"layers": 16, "mix": 1.0},
         "replace, first 4 (patch embedding)": {"layers": 4, "mix": 1.0},
         "relative, all layers": {"layers": None, "mix": 1.0, "relative": True},
         "relative, mix 0.75": {"layers": None, "mix": 0.75, "relative": True},
         "relative, mix 0.5": {"layers": None, "mix": 0.5, "relative": True},
         "relative, first 16": {"layers": 16, "mix": 1.0, "relative": True}}


def labelled_sets():
    """{name: [(path, label), ...]}: derm7pt, the test split, and ham10000 per acquisition."""
    sets = {}
    for name, folder in (("derm7pt", SHARED_DATA / "derm7pt"), ("10k test", DATASET / "test")):
        sets[name] = [(path, int(label == "malignant")) for label in ("benign", "malignant")
                      for path in sorted(p for p in (folder / label).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)]
    ham = SHARED_DATA / "ham10000"
    with open(ham / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            sets.setdefault(f"ham10000 {row['source']}", []).append((ham / row["file"], int(row["label"] == "malignant")))
    return sets


def cached_inputs(model, name, items, cache_dir: Path):
    path = cache_dir / f"{model.version}-{name.replace(' ', '_')}.npz"
    if path.is_file():
        data = np.load(path)
        return data["pixels"].astype(np.float32), data["labels"]
    pixels, _, _, accepted = gather_pixels(model, [p for p, _ in items], desc=f"reading {name}")
    labels = np.asarray([label for _, label in items])[accepted]
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, pixels=pixels.astype(np.float16), labels=labels)
    return pixels, labels


def figures(labels, probabilities, threshold):
    malignant, benign = probabilities[labels == 1], probabilities[labels == 0]
    return {"sensitivity": float(np.mean(malignant >= threshold)), "specificity": float(np.mean(benign < threshold)),
            "roc_auc": metrics.binary_metrics(labels, probabilities)["roc_auc"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model", help="model folder (default: model)")
    parser.add_argument("--sets", nargs="*", default=None, help="only these sets (default: all)")
    parser.add_argument("--rules", nargs="*", default=list(RULES), help=f"default: {list(RULES)}")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / "runs" / "site_adaptation_cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import copy

    screening = ScreeningModel.load(args.model, **FAST)
    network = screening.model
    threshold = screening.screening_threshold
    # The training pictures' statistics, for the "relative" rules: 2,000 of the 10k train split, half of each class.
    reference_statistics, _ = measure_reference(screening, DATASET / "train", 2000)
    results = {"model_version": screening.version, "screening_threshold": threshold, "sets": {}}
    for name, items in labelled_sets().items():
        if args.sets and name not in args.sets:
            continue
        pixels, labels = cached_inputs(screening, name, items, Path(args.cache_dir))
        first = halves(labels, args.seed)
        source = malignant_probabilities(network, pixels, screening.temperature)
        row = {"n": {"malignant": int(labels.sum()), "benign": int((labels == 0).sum())},
               "source": figures(labels, source, threshold), "rules": {}}
        print(f"\n{name}: {row['n']}; source sens {row['source']['sensitivity']:.3f} spec "
              f"{row['source']['specificity']:.3f} AUC {row['source']['roc_auc']:.3f}", flush=True)
        for rule_name in args.rules:
            rule = RULES[rule_name]
            reference = reference_statistics if rule.get("relative") else None
            adapted = np.zeros_like(source)
            correlations = []
            for fit_half in (first, ~first):
                copy_ = copy.deepcopy(network)
                adapt(copy_, estimate_site_statistics(copy_, pixels[fit_half]), rule, reference)
                adapted[~fit_half] = malignant_probabilities(copy_, pixels[~fit_half], screening.temperature)
                correlations.append(rank_correlation(source[fit_half],
                                                     malignant_probabilities(copy_, pixels[fit_half], screening.temperature)))
            row["rules"][rule_name] = dict(figures(labels, adapted, threshold), guard_rank_correlation=correlations)
            r = row["rules"][rule_name]
            print(f"  {rule_name:36s} sens {r['sensitivity']:.3f} spec {r['specificity']:.3f} AUC {r['roc_auc']:.3f} "
                  f"rank corr {correlations[0]:.3f} / {correlations[1]:.3f}", flush=True)
        results["sets"][name] = row
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
