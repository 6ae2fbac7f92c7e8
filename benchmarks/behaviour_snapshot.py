"""Write what the shipped model answers into a folder, so two commits' answers can be compared byte for byte.

    python benchmarks/behaviour_snapshot.py --out /tmp/snapshot-new
    diff -r /tmp/snapshot-old /tmp/snapshot-new       # the same files, no difference: same behaviour

Run it from each commit's own checkout (it scores that checkout's code; an older checkout needs this file and
tests/odd_uploads.py copied in). It writes:

  predict/*.json     the app's /predict answer (over HTTP, through gradio_client) for the 8 examples,
                     the bad inputs and the odd but valid files the app tests use
  predict.csv        predict.py's CSV for the examples and the 10k test split (the app's fast path)
  eval_test.json     evaluate_model.py on the 10k test split (exact fp32: eval_results.json's figures)
  eval_derm7pt.json  evaluate_model.py on derm7pt (external set, melanoma against each benign group)
  heatmap/*.f32      the heat-map of each example, raw float32
  preprocess/*.f32   the model's pixel values for each example with colour constancy and a field-of-view
                     mask switched on (the shipped model has neither), and pipeline_input's picture
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATASET, REPO_ROOT, SHARED_DATA  # noqa: F401  (puts the repository on sys.path)

from load_test import free_port, start_app, wait_until_up  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"


def odd_files(folder: Path, good_image: Path) -> list[Path]:
    """The bad and odd uploads of tests/test_app.py (tests/odd_uploads.py), and a plain field the input check refuses."""
    from PIL import Image

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from odd_uploads import write_odd_uploads

    files = list(write_odd_uploads(folder, good_image).values())
    Image.new("RGB", (300, 300), (30, 160, 40)).save(folder / "green_field.png")
    return files + [folder / "green_field.png"]


def app_answers(model: str, files: list[Path], out: Path) -> None:
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        process = start_app(model, port, log)
        try:
            wait_until_up(url, process, timeout=300)
            client = Client(url, verbose=False)
            for path in files:
                answer = client.predict(handle_file(str(path)), api_name="/predict")
                (out / f"{path.name}.json").write_text(json.dumps(answer, indent=1, sort_keys=True) + "\n")
        finally:
            process.terminate()
            process.wait(timeout=60)


def without_paths(path: Path, replacements: dict) -> None:
    text = path.read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    path.write_text(text)


def run(command: list[str]) -> None:
    subprocess.run([sys.executable, *command], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)


def model_outputs(model_dir: str, out: Path) -> None:
    """Heat-maps, and the preprocessing with colour constancy and a mask the shipped model does not use."""
    import numpy as np

    from melanoma_screen.images import load_rgb_image
    from melanoma_screen.inference import ScreeningModel

    model = ScreeningModel.load(REPO_ROOT / model_dir)
    examples = sorted(EXAMPLES.glob("*.jpg"))
    (out / "heatmap").mkdir()
    for path in examples:
        (out / "heatmap" / f"{path.stem}.f32").write_bytes(np.asarray(model.explain(path), dtype=np.float32).tobytes())
    (out / "preprocess").mkdir()
    model.color_constancy, model.field_of_view_mask = "shades_of_gray", 0.9
    for path in examples:
        pixels = np.asarray(model.preprocess([load_rgb_image(path)]), dtype=np.float32)
        (out / "preprocess" / f"{path.stem}.pixels.f32").write_bytes(pixels.tobytes())
        (out / "preprocess" / f"{path.stem}.picture.u8").write_bytes(np.asarray(model.pipeline_input(path)).tobytes())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", required=True, help="folder to write (emptied first)")
    parser.add_argument("--model", default="model", help="model folder, from the repository root (default: model)")
    parser.add_argument("--skip-eval", action="store_true", help="leave out the two evaluate_model.py runs (minutes)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "predict").mkdir(parents=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    examples = sorted(EXAMPLES.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as scratch:
        odd = odd_files(Path(scratch), examples[0])
        app_answers(args.model, examples + odd, out / "predict")
        # Paths that do not name the checkout or the scratch folder, so two checkouts write the same file.
        inputs = [os.path.relpath(path, REPO_ROOT) for path in examples] + [str(path) for path in odd]
        run(["predict.py", *inputs, str(DATASET / "test"), "--model", args.model, "--out", str(out / "predict.csv")])
        without_paths(out / "predict.csv", {scratch: "SCRATCH"})
    if not args.skip_eval:
        for name, data in (("eval_test.json", [str(DATASET), "--split", "test"]),
                           ("eval_derm7pt.json", [str(SHARED_DATA / "derm7pt")])):
            run(["evaluate_model.py", "--model", args.model, "--data-dir", *data, "--out", str(out / name)])
            without_paths(out / name, {str(out): "OUT"})
    model_outputs(args.model, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
