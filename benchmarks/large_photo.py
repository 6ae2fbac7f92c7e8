"""Peak memory of one analysis of a large phone JPEG, decoded at reduced scale (Image.draft).

    python benchmarks/large_photo.py --model model

Writes a 63 MP (9000x7000) and a 168 MP (14000x12000) JPEG to a temporary folder,
then, in a fresh process each, loads the model, scores a small image (the
baseline), then the large one as the app does (the model's decode, then the
heat-map's decode at screen size), and prints the peak RSS before and after.
Without the reduced-scale decode the 168 MP picture alone would take 504 MB as
RGB. A PNG of the same size is still refused before decoding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT  # and the repository on sys.path

CHILD = r"""
import json, resource, sys
from melanoma_screen.images import load_rgb_image
from melanoma_screen.inference import FAST, ScreeningModel
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model = ScreeningModel.load(sys.argv[1], num_threads=1, **FAST)
model.predict(sys.argv[3])
before = peak()
prediction = model.predict(sys.argv[2])
shown = load_rgb_image(sys.argv[2], draft_size=(1024, 1024))
print(json.dumps({"baseline_peak_mb": before, "peak_mb": peak(), "decoded_size": list(model.decode(sys.argv[2]).size),
                  "heatmap_size": list(shown.size), "verdict": prediction.input_check.reason or "ok"}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default=str(REPO_ROOT / "model"), help="model folder (default: model/)")
    args = parser.parse_args(argv)
    from PIL import Image

    small = REPO_ROOT / "examples" / "benign_1.jpg"
    with tempfile.TemporaryDirectory() as folder:
        for width, height in ((9000, 7000), (14000, 12000)):
            path = Path(folder) / f"photo_{width}x{height}.jpg"
            # A real lesion scaled up: the JPEG has real content, not a flat colour that compresses to nothing.
            Image.open(small).convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)
            result = subprocess.run([sys.executable, "-c", CHILD, args.model, str(path), str(small)], cwd=REPO_ROOT,
                                    capture_output=True, text=True, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{width}x{height} ({width * height / 1e6:.0f} MP, {path.stat().st_size / 1e6:.1f} MB file): "
                  f"peak RSS {row['baseline_peak_mb']:.0f} MB after a 300x300 image, {row['peak_mb']:.0f} MB after "
                  f"this one; decoded for the model at {row['decoded_size'][0]}x{row['decoded_size'][1]}, for the "
                  f"heat-map at {row['heatmap_size'][0]}x{row['heatmap_size'][1]}; input check: {row['verdict']}")
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
