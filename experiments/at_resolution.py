"""Write a copy of a LeViT model folder that reads pictures at another size, for evaluate_model.py to score.

    python experiments/at_resolution.py --model model --image-size 192 --out runs/s18/at-192
    python evaluate_model.py --model runs/s18/at-192 --data-dir ../shared/data/derm7pt

A network trained on random crops down to a quarter of the picture sees lesions
larger in training than whole pictures show them at test time; scoring at a
higher resolution than training often ranks better (FixRes, Touvron et al.,
NeurIPS 2019). Only the attention-bias tables depend on the input size, and
they are resized the way fine-tuning at another size resizes them
(melanoma_screen.modeling.levit_at_resolution). The copy keeps the folder's
thresholds and eval_results.json but no input check or ONNX graph, which were
fitted for the original size: it is for comparing rankings, not for serving.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from melanoma_screen.model_folder import load_network, load_processor  # noqa: E402
from melanoma_screen.modeling import levit_at_resolution  # noqa: E402
from melanoma_screen.transforms import build_image_processor  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a LeViT model folder")
    parser.add_argument("--image-size", type=int, required=True, help="the input size of the copy, in pixels")
    parser.add_argument("--out", required=True, help="the folder to write")
    args = parser.parse_args(argv)

    source, out = Path(args.model), Path(args.out)
    network = load_network(source).eval()
    try:
        resized = levit_at_resolution(network, args.image_size)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    out.mkdir(parents=True, exist_ok=True)
    resized.save_pretrained(out)
    processor = load_processor(source)  # its normalisation kept, as train_vit.py's --image-size keeps it
    build_image_processor(args.image_size, processor.image_mean, processor.image_std).save_pretrained(out)
    if (source / "eval_results.json").is_file():
        shutil.copy(source / "eval_results.json", out / "eval_results.json")
    print(f"{out}: {source} at {args.image_size} px")


if __name__ == "__main__":
    main()
