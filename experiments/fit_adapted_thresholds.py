"""Fit the thresholds a model's site-adapted folders get: each validation source adapted on its own pictures.

    python experiments/fit_adapted_thresholds.py model

Rebuilds the model's validation split from its eval_results.json (with
data_prep, as fit_input_check.py does; the stored paths are relative to where
training ran), keeps the pictures its input check accepts, groups them by
source, and writes melanoma_screen.site_adaptation.fit_adapted_operating_points'
result into the folder's config.json under "adapted_operating_points", and
under "site_familiarity" how far from the training pictures (the input check's
distance) a sample of each source's validation pictures lies: a site no farther
is not adapted (melanoma_screen.site_adaptation.require_unfamiliar), and under
"score_reference" the validation scores of each class, against which
calibrate_site.py's default label-free method places a site's scores
(melanoma_screen.score_shift).
calibrate_site.py --unlabeled-dir then gives those thresholds to the folders it
adapts from this model; without them an adapted folder keeps the source
model's thresholds. Nothing else in the folder changes. Why a model trained on
several sources needs it: docs/site_calibration.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python experiments/x.py` puts experiments/ on the path
import data_prep  # noqa: E402
from data_prep import SplitSettings  # noqa: E402
from melanoma_screen.calibration import stored_targets  # noqa: E402
from melanoma_screen.inference import FAST, ScreeningModel  # noqa: E402
from melanoma_screen.score_shift import REFERENCE_KEY, score_reference  # noqa: E402
from melanoma_screen.site_adaptation import (ADAPTED_POINTS_KEY, FAMILIARITY_KEY,  # noqa: E402
                                             fit_adapted_operating_points, familiarity_bounds, gather_pixels,
                                             batchnorm_layers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder with eval_results.json (its config.json is updated)")
    parser.add_argument("--max-per-source", type=int, default=None,
                        help="at most this many validation pictures of each source, every k-th (a quick run)")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    results = json.loads((folder / "eval_results.json").read_text())
    validation = data_prep.training_data(SplitSettings.from_stored(results["settings"]))["validation"]
    by_source = defaultdict(list)
    for record in validation:
        by_source[record.source].append(record)
    model = ScreeningModel.load(str(folder), **FAST)
    # Without BatchNorm (a ViT) there is nothing to adapt, but the score shift only needs the scores.
    with_batchnorm = bool(batchnorm_layers(model.model))
    sources, distances, probabilities = {}, {}, []
    for name, records in sorted(by_source.items()):
        if args.max_per_source and len(records) > args.max_per_source:
            records = records[:: len(records) // args.max_per_source][: args.max_per_source]
        pictures = gather_pixels(model, [record.path for record in records], desc=name)
        sources[name] = (pictures.pixels, np.asarray([record.label for record in records])[pictures.accepted])
        distances[name] = pictures.distances
        probabilities.append(pictures.probabilities)
    points = fit_adapted_operating_points(model, sources, *stored_targets(model.config)) if with_batchnorm else None
    familiar = familiarity_bounds(distances)
    reference = score_reference(np.concatenate(probabilities), np.concatenate([labels for _, labels in sources.values()]))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if points:
        config[ADAPTED_POINTS_KEY] = points
    config[FAMILIARITY_KEY] = familiar
    config[REFERENCE_KEY] = reference
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    print(f"source model: screening {model.screening_threshold:.4f}, high risk {model.high_risk_threshold:.4f}")
    if points is None:
        print(f"{model.model_id} has no BatchNorm layer: no thresholds for adapted statistics")
    for name, entry in (points or {}).get("sources", {}).items():
        print(f"  {name}: {entry['n']} pictures, {entry['n_malignant']} melanomas; "
              + (f"left out: {entry['left_out']}" if "left_out" in entry else
                 f"adapted with mix {entry['rule']['mix']:g}{'' if entry['rule']['variances'] else ', means only'}"))
    print("sites left as they are (median input-check distance at most, by sample size): "
          + ", ".join(f"{size} pictures {bound:.2f}" for size, bound in familiar["bounds_by_sample_size"].items())
          + "; training sources' medians: "
          + ", ".join(f"{name} {median:.2f}" for name, median in familiar["source_medians"].items()))
    if points:
        print(f"adapted folders: screening {points['screening_threshold']:.4f}, high risk "
              f"{points['high_risk_threshold']:.4f} (validation, each source adapted on its own: sensitivity "
              f"{points['validation_sensitivity_at_screening']:.3f}, specificity at high risk "
              f"{points['validation_specificity_at_high_risk']:.3f})")
    print(f"validation scores kept for the score shift: {reference['benign']['n']} benign, "
          f"{reference['malignant']['n']} malignant (as {reference['quantiles']} logit quantiles each)")
    print(f"wrote {', '.join(([ADAPTED_POINTS_KEY] if points else []) + [FAMILIARITY_KEY, REFERENCE_KEY])} "
          f"into {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
