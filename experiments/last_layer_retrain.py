"""Does the model already see the look-alikes? Retrain only its last layer, group-balanced, and measure.

    python experiments/last_layer_retrain.py --model model --external-dir ../shared/data/derm7pt

Last-layer retraining on group-balanced data (DFR, Kirichenko et al. 2023) fixes
worst-group accuracy when the features already separate the groups and only the
classifier leans on the majority. Here the groups are (source, class, diagnosis)
of the training folders. The script rebuilds the model's own split (the settings
stored in its eval_results.json), takes the mean-pooled features the classifier
reads, prints how many directions carry them, and fits a logistic regression on
the training or validation features, each group weighing the same or every image,
at several strengths. It reports per-source validation, 10k test and external
ROC AUC, and the external set's melanoma-against-group AUCs. If no refit moves
them, the look-alikes are not told apart in the features, and only training the
backbone can help. The external set fits nothing here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python experiments/x.py` puts experiments/ on the path
from data_prep import SplitSettings, training_data  # noqa: E402
from melanoma_screen import metrics  # noqa: E402
from melanoma_screen.images import load_rgb_image  # noqa: E402
from melanoma_screen.inference import ScreeningModel  # noqa: E402
from melanoma_screen.labels import LABEL2ID, benign_diagnosis_group  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model", help="a LeViT model folder with its eval_results.json (default: model)")
    parser.add_argument("--external-dir", default="../shared/data/derm7pt", help="labelled set with a diagnosis column")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="logistic regression's C")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--earlier-stages", action="store_true",
                        help="also probe each earlier stage's tokens, averaged: is what the last stage lost there?")
    parser.add_argument("--stages-together", action="store_true",
                        help="also probe every stage's averaged tokens side by side, then with their spread over the "
                             "picture too: do the stages together tell the look-alikes apart where none does alone?")
    return parser.parse_args(argv)


MIN_SOURCE_IMAGES_PER_CLASS = 10  # as train_vit.py's checkpoint selection


@torch.no_grad()
def pooled_features(model: ScreeningModel, records, batch_size: int, desc: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each stage's tokens averaged, and their standard deviation over the picture (texture, which the mean hides).

    The last stage's average is what the classifier reads (LevitForImageClassification.forward).
    """
    network, means, spreads = model.model.eval(), [], []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, unit="batch", leave=False):
        pixels = model.preprocess([load_rgb_image(record.path) for record in records[start:start + batch_size]])
        output = network.levit(torch.as_tensor(pixels), output_hidden_states=True)
        states = [*output.hidden_states[:-1], output[0]]
        means.append([state.mean(1).numpy() for state in states])
        spreads.append([state.std(1).numpy() for state in states])
    return [np.concatenate(stage) for stage in zip(*means)], [np.concatenate(stage) for stage in zip(*spreads)]


def variance_shares(features: np.ndarray) -> str:
    """Variance carried by the first 1 / 2 / 5 / 10 directions, of the features as they are and standardised."""
    shares = []
    for x in (features, features / (features.std(0) + 1e-8)):
        variance = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        share = np.cumsum(variance) / variance.sum()
        shares.append(" / ".join(f"{share[k - 1]:.4f}" for k in (1, 2, 5, 10)))
    return f"{shares[0]} (standardised: {shares[1]})"


def figures(sets: dict, scores: dict) -> dict:
    validation = sets["validation"]
    labels, sources = np.array([r.label for r in validation]), np.array([r.source for r in validation])
    per_source = list(metrics.auc_per_source(labels, 1 / (1 + np.exp(-scores["validation"])), sources, MIN_SOURCE_IMAGES_PER_CLASS).values())
    external = sets["external"]
    labels_ext = np.array([r.label for r in external])
    groups = np.array([benign_diagnosis_group(r.dx) or "" for r in external])
    result = {"val, mean per source": float(np.mean(per_source)),
              "10k test": float(roc_auc_score([r.label for r in sets["test"]], scores["test"])),
              "external": float(roc_auc_score(labels_ext, scores["external"]))}
    for group in sorted(set(groups) - {""}):
        keep = (labels_ext == LABEL2ID["malignant"]) | (groups == group)
        result[group] = float(roc_auc_score(labels_ext[keep], scores["external"][keep]))
    return result


def group_balanced_weights(records) -> np.ndarray:
    """Each (source, class, diagnosis) group weighing the same in all, whatever its size."""
    groups = np.array([f"{r.source}|{r.label}|{r.dx}" for r in records])
    names, counts = np.unique(groups, return_counts=True)
    group_weight = dict(zip(names, len(groups) / (len(names) * counts)))
    return np.array([group_weight[g] for g in groups])


def refit_scores(features: dict, fit_on: str, labels, weight, strength: float) -> dict:
    """Every set's scores from a logistic regression fitted on features[fit_on], standardised."""
    scaler = StandardScaler().fit(features[fit_on])
    classifier = LogisticRegression(C=strength, max_iter=3000).fit(scaler.transform(features[fit_on]), labels,
                                                                   sample_weight=weight)
    return {name: classifier.decision_function(scaler.transform(x)) for name, x in features.items()}


def mixed_scores(own: dict, other: dict, share: float) -> dict:
    """(1 - share) of one score and share of another, each standardised on the validation split so that neither wins by scale."""
    def standardised(scores, name):
        return (scores[name] - scores["validation"].mean()) / scores["validation"].std()
    return {name: (1 - share) * standardised(own, name) + share * standardised(other, name) for name in own}


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = json.loads((Path(args.model) / "eval_results.json").read_text())["settings"]
    data = training_data(SplitSettings.from_stored(settings), external_dirs=[args.external_dir])
    sets = {"train": data["train"], "validation": data["validation"], "test": data["test"],
            "external": next(iter(data["external"].values()))}
    model = ScreeningModel.load(args.model)
    pooled = {name: pooled_features(model, records, args.batch_size, name) for name, records in sets.items()}
    stages = {name: means for name, (means, _) in pooled.items()}
    features = {name: stage[-1] for name, stage in stages.items()}
    print(f"pooled features: {features['train'].shape[1]} dimensions; variance carried by the first 1 / 2 / 5 / 10 "
          f"directions: {variance_shares(features['train'])}")

    rows = []
    with torch.no_grad():
        logits = {name: model.model.classifier(torch.as_tensor(x)).numpy() for name, x in features.items()}
    margin = {name: x[:, LABEL2ID["malignant"]] - x[:, LABEL2ID["benign"]] for name, x in logits.items()}
    rows.append(("the model's own classifier", figures(sets, margin)))
    fit_splits = {fit_on: ([r.label for r in sets[fit_on]], group_balanced_weights(sets[fit_on]))
                  for fit_on in ("train", "validation")}
    for fit_on, (labels, group_weight) in fit_splits.items():
        for weighting, weight in {"each group alike": group_weight, "each image alike": None}.items():
            for strength in args.strengths:
                scores = refit_scores(features, fit_on, labels, weight, strength)
                rows.append((f"refit on {fit_on}, {weighting}, C={strength:g}", figures(sets, scores)))
    # The earlier-stage and every-stage probes fit on the training split, each group alike.
    train_labels, train_weight = fit_splits["train"]
    if args.earlier_stages:
        for index in range(len(stages["train"]) - 1):
            earlier = {name: stage[index] for name, stage in stages.items()}
            print(f"hidden state {index}: {earlier['train'].shape[1]} dimensions, variance carried by the first "
                  f"1 / 2 / 5 / 10 directions: {variance_shares(earlier['train'])}")
            for strength in args.strengths:
                scores = refit_scores(earlier, "train", train_labels, train_weight, strength)
                rows.append((f"hidden state {index}, refit on train, each group alike, C={strength:g}", figures(sets, scores)))
    if args.stages_together:
        together = {"every stage's mean": {name: np.concatenate(means, 1) for name, (means, _) in pooled.items()},
                    "every stage's mean and spread": {name: np.concatenate(means + spreads, 1)
                                                      for name, (means, spreads) in pooled.items()}}
        for what, combined in together.items():
            print(f"{what}: {combined['train'].shape[1]} dimensions")
            for strength in args.strengths:
                scores = refit_scores(combined, "train", train_labels, train_weight, strength)
                rows.append((f"{what}, refit on train, each group alike, C={strength:g}", figures(sets, scores)))
                if what == "every stage's mean":
                    for share in (0.3, 0.5, 0.7):
                        mixed = mixed_scores(margin, scores, share)
                        rows.append((f"{1 - share:g} the model + {share:g} {what}, C={strength:g}", figures(sets, mixed)))

    columns = list(rows[0][1])
    print("ROC AUC; the external set's melanomas against each benign group:")
    print(" | ".join(["last layer", *columns]))
    for name, result in rows:
        print(" | ".join([name, *(f"{result[column]:.3f}" for column in columns)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
