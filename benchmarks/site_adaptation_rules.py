"""Which BatchNorm statistics to adapt, and how far: the measurements behind site_adaptation.ADAPTATION_RULE.

    python benchmarks/site_adaptation_rules.py --model model --json runs/site_adaptation_rules.json
    python benchmarks/site_adaptation_rules.py --model model --rules guarded --samples 30:0.05 100:0.05 300:0.05

Each set (derm7pt, the 10k test split, and each of ham10000's three
acquisitions, none of which the shipped model was trained on) is read once as
the app reads it; pictures its input check refuses are left out. The set is
split into two stratified halves; for each rule the statistics are estimated
on one half's pictures (labels unused) and the other half is scored, then the
other way round, and both folds are pooled: sensitivity and specificity at the
model's own screening threshold and ROC AUC, before and after. The guard's
figure (the rank correlation of the adaptation half's scores before and after)
is printed beside them, and for a rule that moves the variances the rank
correlation with the same rule moving the means alone (the guard's second
figure). "guarded" is what calibrate_site.py does: the rule, its guard and its
fallbacks (site_adaptation.adapt_to_site). With --samples SIZE:SHARE, each fold
adapts on --draws samples of SIZE pictures of its half, SHARE of them melanomas,
as a site with few pictures or few melanomas would, and the draws are averaged.
The rules and the guard's minimums are chosen on the 10k test split and
ham10000's acquisitions; derm7pt is only reported, under the issue's 2-fold
protocol: nothing is fitted on it.

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
from melanoma_screen.site_adaptation import (SiteAdaptationError, adapt, adapt_to_site, estimate_site_statistics,  # noqa: E402
                                             gather_pixels, malignant_probabilities, means_only, measure_reference,
                                             rank_correlation)

# "replace": the site's statistics replace the stored ones, as published AdaBN does; "means only" keeps the stored
# variances; "relative": only the site's difference from 2,000 training pictures' statistics is applied;
# "guarded": calibrate_site.py's rule, guard and fallbacks.
RULES = {"replace, all layers": {"layers": None, "mix": 1.0}, "replace, mix 0.75": {"layers": None, "mix": 0.75},
         "replace, mix 0.5": {"layers": None, "mix": 0.5}, "replace, first 16": {"layers": 16, "mix": 1.0},
         "replace, first 4 (patch embedding)": {"layers": 4, "mix": 1.0},
         "means only, all layers": {"layers": None, "mix": 1.0, "variances": False},
         "relative, all layers": {"layers": None, "mix": 1.0, "relative": True},
         "relative, mix 0.75": {"layers": None, "mix": 0.75, "relative": True},
         "relative, mix 0.5": {"layers": None, "mix": 0.5, "relative": True},
         "relative, first 16": {"layers": 16, "mix": 1.0, "relative": True},
         "guarded": {"guarded": True}}


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
    pixels, _, _, accepted, _, _ = gather_pixels(model, [p for p, _ in items], desc=f"reading {name}")
    labels = np.asarray([label for _, label in items])[accepted]
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, pixels=pixels.astype(np.float16), labels=labels)
    return pixels, labels


def figures(labels, probabilities, threshold):
    malignant, benign = probabilities[labels == 1], probabilities[labels == 0]
    return {"sensitivity": float(np.mean(malignant >= threshold)), "specificity": float(np.mean(benign < threshold)),
            "roc_auc": metrics.binary_metrics(labels, probabilities)["roc_auc"]}


def adapted_on(screening, pixels, rule, reference_statistics):
    """(the adapted network, its guard figures) for one fit sample; the source network when the guard refuses."""
    import copy

    network = screening.model
    if rule.get("guarded"):
        try:
            adapted, applied, guard = adapt_to_site(screening, pixels)
        except SiteAdaptationError:
            return network, {"applied": "refused"}
        last = guard["tried"][-1]
        return adapted, {"applied": f"{'statistics' if applied.get('variances', True) else 'means'} mix {applied['mix']:g}",
                         "rank_correlation": last["rank_correlation"],
                         "variance_rank_correlation": last["variance_rank_correlation"]}
    reference = reference_statistics if rule.get("relative") else None
    statistics = estimate_site_statistics(network, pixels)
    scores = {}
    for name, candidate in (("rule", rule), ("means", means_only(rule))):
        model = copy.deepcopy(network)
        adapt(model, statistics, candidate, reference)
        scores[name] = (model, malignant_probabilities(model, pixels, screening.temperature))
        if not rule.get("variances", True):
            break
    source = malignant_probabilities(network, pixels, screening.temperature)
    adapted, fit_scores = scores["rule"]
    return adapted, {"rank_correlation": rank_correlation(source, fit_scores),
                     "variance_rank_correlation": (rank_correlation(scores["means"][1], fit_scores)
                                                   if "means" in scores else None)}


def fit_samples(labels, fit_half, sample, draws, rng):
    """Index arrays to adapt on: the whole half, or `draws` samples of SIZE pictures with SHARE melanomas."""
    if sample is None:
        return [np.flatnonzero(fit_half)]
    size, share = sample
    malignant = np.flatnonzero(fit_half & (labels == 1))
    benign = np.flatnonzero(fit_half & (labels == 0))
    n_malignant = max(1, int(round(size * share)))
    if n_malignant > malignant.size or size - n_malignant > benign.size:
        return []
    return [np.concatenate([rng.choice(malignant, n_malignant, replace=False),
                            rng.choice(benign, size - n_malignant, replace=False)]) for _ in range(draws)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model", help="model folder (default: model)")
    parser.add_argument("--sets", nargs="*", default=None, help="only these sets (default: all)")
    parser.add_argument("--rules", nargs="*", default=list(RULES), help=f"default: {list(RULES)}")
    parser.add_argument("--samples", nargs="*", default=None, metavar="SIZE:SHARE",
                        help="adapt on samples of each half instead of the whole half, e.g. 100:0.05")
    parser.add_argument("--draws", type=int, default=3, help="samples drawn per fold with --samples (default: 3)")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / "runs" / "site_adaptation_cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    screening = ScreeningModel.load(args.model, **FAST)
    network = screening.model
    threshold = screening.screening_threshold
    # The training pictures' statistics, for the "relative" rules: 2,000 of the 10k train split, half of each class.
    reference_statistics = (measure_reference(screening, DATASET / "train", 2000)[0]
                            if any(RULES[name].get("relative") for name in args.rules) else None)
    samples = [None] if not args.samples else [(int(s.split(":")[0]), float(s.split(":")[1])) for s in args.samples]
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
        for sample in samples:
            for rule_name in args.rules:
                rng = np.random.default_rng(args.seed)  # the same samples for every rule
                draws = [fit_samples(labels, fit_half, sample, args.draws, rng) for fit_half in (first, ~first)]
                if not all(draws):
                    continue
                cells, guards = [], []
                for k in tqdm(range(len(draws[0])), desc=f"{name}, {rule_name}", leave=False, file=sys.stderr):
                    adapted = np.zeros_like(source)
                    for fit_half, chosen in zip((first, ~first), (draws[0][k], draws[1][k])):
                        model, guard = adapted_on(screening, pixels[chosen], RULES[rule_name], reference_statistics)
                        adapted[~fit_half] = malignant_probabilities(model, pixels[~fit_half], screening.temperature)
                        guards.append(guard)
                    cells.append(figures(labels, adapted, threshold))
                key = rule_name if sample is None else f"{rule_name}, {sample[0]} pictures, {sample[1]:.0%} melanomas"
                mean = {metric: float(np.mean([cell[metric] for cell in cells])) for metric in cells[0]}
                row["rules"][key] = dict(mean, draws=cells, guards=guards)
                shown = "; ".join(guard["applied"] if "applied" in guard and "rank_correlation" not in guard else
                                  (guard.get("applied", "") + f" {guard['rank_correlation']:.2f}"
                                   + ("" if guard["variance_rank_correlation"] is None
                                      else f"/{guard['variance_rank_correlation']:.2f}")).strip() for guard in guards)
                print(f"  {key:52s} sens {mean['sensitivity']:.3f} spec {mean['specificity']:.3f} "
                      f"AUC {mean['roc_auc']:.3f}  guard per fold (source/means-alone rank corr): {shown}", flush=True)
        results["sets"][name] = row
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
