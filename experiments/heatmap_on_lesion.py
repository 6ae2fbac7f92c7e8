"""Does the heat-map fall on the lesion or on the skin around it? Per model and set.

    python experiments/heatmap_on_lesion.py model runs/compare/shipped-9b884bde079c --data ../shared/data --n 100

For each image, the app's heat-map (ScreeningModel.explain: attention rollout for
a ViT, token attribution for a LeViT) and melanoma_screen.skin's lesion mask (Otsu
on the blurred blue channel). It reports the heat's share on the lesion, the
lesion's share of the frame, their ratio (1: the heat is spread as if blind to the
lesion; above 1: concentrated on it), the heat's share on the skin around it, and
how often the hottest point lies on the lesion. Images where no lesion is found are
left out and counted. --vit-attribution maps a ViT folder with the LeViT's method
instead (gradient x activation at the middle encoder layer's patch tokens, the
ones its input check reads), to tell the model from the method. The issue on the skin-colour shortcut found the ViT's map
warmest on the skin at the frame's edge for a derm7pt nevus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from melanoma_screen.images import load_rgb_image  # noqa: E402
from melanoma_screen.inference import ScreeningModel  # noqa: E402
from melanoma_screen.skin import lesion_and_skin_masks  # noqa: E402

SETS = {"10k test": "melanoma_cancer_dataset/test", "derm7pt": "derm7pt"}


def vit_token_attribution(model: ScreeningModel, image) -> np.ndarray:
    """explain.token_attribution's map for a ViT: at the patch tokens after its middle encoder layer."""
    import torch

    from melanoma_screen.explain import attribution_grid, patch_grid, upsample_heatmap
    from melanoma_screen.architectures import embedding_layer

    network = model.model
    with torch.enable_grad():
        outputs = network(pixel_values=model.preprocess([image]), output_hidden_states=True)
        tokens = outputs.hidden_states[embedding_layer(network.config)]
        logits = outputs.logits[0]
        malignant = model.malignant_index
        (gradient,) = torch.autograd.grad(logits[malignant] - logits[1 - malignant], tokens)
    grid = attribution_grid(tokens[:, 1:], gradient[:, 1:], patch_grid(network.config))  # the CLS token is no patch
    return upsample_heatmap(grid, (image.height, image.width))


def measure(model: ScreeningModel, paths, vit_attribution: bool = False) -> dict:
    rows, skipped = [], 0
    for path in tqdm(paths, desc=model.model_id, leave=False):
        image = load_rgb_image(str(path))
        masks = lesion_and_skin_masks(image)
        if masks.method != "outside lesion":
            skipped += 1
            continue
        heat = vit_token_attribution(model, image) if vit_attribution else model.explain(image)
        total = float(heat.sum())
        if total <= 0:
            skipped += 1
            continue
        hottest = np.unravel_index(int(heat.argmax()), heat.shape)
        rows.append((heat[masks.lesion].sum() / total, masks.lesion.mean(), heat[masks.skin].sum() / total,
                     bool(masks.lesion[hottest])))
    values = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return {
        "n": len(rows), "left_out": skipped,
        "heat_on_lesion": float(values[:, 0].mean()),
        "lesion_area": float(values[:, 1].mean()),
        "concentration": float((values[:, 0] / np.maximum(values[:, 1], 1e-6)).mean()),
        "heat_on_skin": float(values[:, 2].mean()),
        "hottest_on_lesion": float(values[:, 3].mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="+", help="model folders")
    parser.add_argument("--data", default="../shared/data", help="folder holding the sets (default: ../shared/data)")
    parser.add_argument("--n", type=int, default=100, help="images per class and set, the first in name order")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--vit-attribution", action="store_true",
                        help="map ViT folders by token attribution instead of attention rollout")
    args = parser.parse_args(argv)

    results = {}
    print(f"{'model':<28} {'set / class':<20} {'n':>4} {'heat on lesion':>15} {'lesion area':>12} "
          f"{'concentration':>14} {'heat on skin':>13} {'hottest on lesion':>18}")
    for folder in args.models:
        model = ScreeningModel.load(folder)
        vit_attribution = args.vit_attribution and model.config.model_type == "vit"
        for set_name, subfolder in SETS.items():
            for label in ("benign", "malignant"):
                paths = sorted((Path(args.data) / subfolder / label).glob("*.jpg"))[: args.n]
                row = measure(model, paths, vit_attribution)
                name = Path(folder).name + (" (attribution)" if vit_attribution else "")
                results[f"{name} | {set_name} | {label}"] = row
                print(f"{name[:28]:<28} {set_name + ' / ' + label:<20} {row['n']:>4} "
                      f"{row['heat_on_lesion']:>15.3f} {row['lesion_area']:>12.3f} {row['concentration']:>14.2f} "
                      f"{row['heat_on_skin']:>13.3f} {row['hottest_on_lesion']:>18.2f}")
        model.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
