"""Whole-process times of predict.py against a plain pipeline script, in one run: cold start and 1,000 images.

    python benchmarks/cold_start.py --model model --n 1000 --repeats 3
    python benchmarks/cold_start.py --model model --competing-job      # beside another CPU-bound job

Each measurement is a fresh Python process, from its start to its exit, the two
commands alternating (ABBA) so that a change in the machine's load hits both:

  one image   predict.py IMAGE        against benchmarks/pipeline_script.py IMAGE
  n images    predict.py FOLDER       against benchmarks/pipeline_script.py FOLDER

predict.py runs the app's path (ONNX Runtime int8, with the input check); the
pipeline script scores with transformers.pipeline and checks nothing. Medians
over --repeats; ratios are pipeline's time over predict.py's (above 1: predict.py
is faster). --importtime also prints predict.py's slowest imports (python -X importtime).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, competing_cpu_job, conditions, default_images_dir, list_images, take, write_json

from melanoma_screen.inference import default_model_source  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default=None, help="model folder (default: $MODEL_ID, else ./model)")
    parser.add_argument("--images", default=None, help="folder of images (default: the shared test split, else examples/)")
    parser.add_argument("--n", type=int, default=1000, help="images of the batch run (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command per measurement (default: 3)")
    parser.add_argument("--competing-job", action="store_true", help="one CPU-bound process per core meanwhile")
    parser.add_argument("--importtime", action="store_true", help="print predict.py's 12 slowest imports")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def seconds_of(command: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def compare(ours: list[str], baseline: list[str], repeats: int) -> dict:
    times = {"predict.py": [], "pipeline script": []}
    for i in range(repeats):
        order = [("predict.py", ours), ("pipeline script", baseline)]
        for name, command in order if i % 2 == 0 else order[::-1]:
            times[name].append(seconds_of(command))
    medians = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    return {"seconds": times, "median_s": medians, "ratio": medians["pipeline script"] / medians["predict.py"]}


def slowest_imports(model: str, image: Path, out: Path, count: int = 12) -> list[tuple[float, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "predict.py", str(image), "--model", model, "--out",
                           str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative) / 1e6, name))
    top_level = [row for row in rows if not row[1].startswith(" ")]
    return sorted(top_level, reverse=True)[:count]


def main(argv=None) -> int:
    args = parse_args(argv)
    model = args.model or default_model_source()
    images = take(list_images(args.images or default_images_dir()), args.n)
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder, competing_cpu_job(args.competing_job):
        batch = Path(folder) / "images"
        batch.mkdir()
        for i, path in enumerate(images):
            shutil.copy(path, batch / f"{i:05d}{path.suffix}")
        one = batch / sorted(os.listdir(batch))[0]
        out_ours, out_pipeline = Path(folder) / "ours.csv", Path(folder) / "pipeline.csv"

        def ours(target):
            return [python, "predict.py", str(target), "--model", model, "--out", str(out_ours)]

        def baseline(target):
            return [python, "benchmarks/pipeline_script.py", str(target), "--model", model, "--out", str(out_pipeline)]

        info = conditions()
        single = compare(ours(one), baseline(one), args.repeats)
        many = compare(ours(batch), baseline(batch), args.repeats)
        imports = slowest_imports(model, one, out_ours) if args.importtime else None

    result = {"model": model, "n": len(images), "repeats": args.repeats, "competing_job": args.competing_job,
              "conditions": info, "one_image": single, "n_images": many, "slowest_imports_s": imports}
    print(f"model {model}, {len(images)} images, medians of {args.repeats} runs, load average at start "
          f"{info['load_average_1min_at_start']}{', beside a competing CPU job' if args.competing_job else ''}")
    print(f"{'':24s} {'predict.py':>11s} {'pipeline':>10s} {'ratio':>7s}")
    for name, row in (("one image, cold (s)", single), (f"{len(images)} images (s)", many)):
        print(f"{name:24s} {row['median_s']['predict.py']:11.2f} {row['median_s']['pipeline script']:10.2f} "
              f"{row['ratio']:6.2f}x")
    for seconds, name in imports or ():
        print(f"  import {name}: {seconds:.2f} s")
    write_json(args.json, result)
    print(f"cold_start_ratio={single['ratio']:.2f} batch_ratio={many['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
