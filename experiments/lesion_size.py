"""How much of the frame the lesion fills, per dataset and class, and how well that alone separates the classes.

    python experiments/lesion_size.py --data ../shared/data --n 250 [--json out.json]

The lesion is melanoma_screen.skin's mask (Otsu on the blurred blue channel);
its share of the frame follows the dermatoscope's magnification as much as the
lesion. In the 10k set melanomas fill far more of the frame than benign
lesions, and derm7pt's benign lesions fill more than the 10k set's melanomas:
a model that learnt "large in the frame" flags another clinic's nevi.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from melanoma_screen.images import load_rgb_image  # noqa: E402
from melanoma_screen.skin import lesion_extent  # noqa: E402

SETS = {  # name: (folder under --data, {class: subfolder})
    "10k train": ("melanoma_cancer_dataset/train", {"benign": "benign", "malignant": "malignant"}),
    "isic2017": ("isic2017", {"benign": "benign"}),
    "derm7pt": ("derm7pt", {"benign": "benign", "malignant": "malignant"}),
}


def shares(folder: Path, n: int, rng: random.Random, desc: str) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    sample = rng.sample(files, min(n, len(files)))
    # No lesion found counts as 0: such a picture shows no lesion to the model either.
    return np.asarray([getattr(lesion_extent(load_rgb_image(path)), "share", 0.0)
                       for path in tqdm(sample, desc=desc, unit="img", leave=False)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--n", type=int, default=250, help="images per class and set, seeded sample (default: 250)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    report = {}
    print(f"{'set':10s} {'class':10s} {'n':>4s} {'median share':>13s} {'quartiles':>14s}")
    for name, (folder, classes) in SETS.items():
        values = {label: shares(Path(args.data) / folder / sub, args.n, rng, f"{name} {label}") for label, sub in classes.items()}
        report[name] = {label: {"n": int(v.size), "median": float(np.median(v)),
                                "quartiles": [float(q) for q in np.percentile(v, [25, 75])]} for label, v in values.items()}
        for label, v in values.items():
            q1, q3 = np.percentile(v, [25, 75])
            print(f"{name:10s} {label:10s} {v.size:4d} {np.median(v):13.3f} {q1:6.3f}-{q3:6.3f}")
        if len(values) == 2:
            auc = roc_auc_score(np.r_[np.zeros(values["benign"].size), np.ones(values["malignant"].size)],
                                np.r_[values["benign"], values["malignant"]])
            report[name]["roc_auc_of_share_alone"] = float(auc)
            print(f"{name:10s} ROC AUC of the lesion's share of the frame alone, malignant against benign: {auc:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
