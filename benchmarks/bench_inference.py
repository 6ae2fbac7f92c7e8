"""Time the app's inference path against transformers.pipeline, in one run.

    python benchmarks/bench_inference.py --model model --n 200 --json bench.json
    python benchmarks/bench_inference.py --model model --n 200 --competing-job   # beside another CPU-bound job

Both sides run in this process with the same PyTorch threads, on the same JPEG
files, and the single-image calls alternate (pipeline, ours, ours, pipeline, ...)
so that a busy machine slows both alike; compare the ratio, not the milliseconds,
across machines. Measured:

  single image   p50/p95 of one call from a JPEG path to a calibrated risk level:
                 decode + preprocessing + model + softmax/thresholds
  batched        images/s over the n images, --batch-size at a time
                 (pipeline(paths, batch_size=...) against ScreeningModel.predict_batch)
  heat-map       ours only: decode + attention rollout + overlay, what the page shows
  stages         ours only: the share of predict_batch's CPU time spent decoding,
                 resizing, on the input check's image statistics, in the model,
                 in the feature-space distance and spread, and the rest (Python)

The last line is `speedup_vs_pipeline=X.XX`: pipeline's p50 over ours.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from common import (competing_cpu_job, conditions, default_images_dir, list_images, summary_ms, take,  # and the
                    write_json)  # repository on sys.path

from melanoma_screen.calibration import risk_level  # noqa: E402
from melanoma_screen.explain import overlay_heatmap  # noqa: E402
from melanoma_screen.images import load_rgb_image  # noqa: E402
from melanoma_screen.inference import ENGINES, FAST, PRECISIONS, ScreeningModel, default_model_source  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default=None, help="model folder (default: $MODEL_ID, else ./model)")
    parser.add_argument("--images", default=None,
                        help="folder of JPEG/PNG images (default: the shared dataset's test split, else examples/)")
    parser.add_argument("--n", type=int, default=200, help="images timed per measurement (default: 200)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--heatmaps", type=int, default=50, help="heat-maps timed (at most --n; default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first, per side")
    parser.add_argument("--engine", choices=ENGINES, default=FAST["engine"], help="our path's engine (default: the app's)")
    parser.add_argument("--precision", choices=PRECISIONS, default=FAST["precision"], help="our path's precision (default: the app's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch threads for both sides (default 1: what the app gives each of its two "
                             "concurrent analyses on 2 cores)")
    parser.add_argument("--competing-job", action="store_true",
                        help="run one CPU-bound process per core beside the benchmark, as another job would")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be at least 1")
    return args


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    args = parse_args(argv)
    with competing_cpu_job(args.competing_job):
        return measure(args)


def measure(args) -> int:
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    source = args.model or default_model_source()
    images_dir = args.images or default_images_dir()
    paths = take(list_images(images_dir), args.n)
    info = conditions()

    model = ScreeningModel.load(source, engine=args.engine, precision=args.precision)
    classifier = pipeline("image-classification", model=source, device="cpu")
    screening, high = model.screening_threshold, model.high_risk_threshold

    def baseline_one(path):
        # What the README's "Using the model" snippet does with pipeline's output.
        scores = {row["label"]: row["score"] for row in classifier(model.pipeline_input(path))}
        risk_level(scores["malignant"], screening, high)
        return scores["malignant"]

    def ours_one(path):
        return model.predict(path).malignant_probability

    def baseline_batch(batch):
        return classifier([model.pipeline_input(p) for p in batch], batch_size=args.batch_size)

    def ours_batch(batch):
        return model.predict_batch(batch, batch_size=args.batch_size)

    def heatmap(path):
        decoded = load_rgb_image(path)
        return overlay_heatmap(decoded, model.explain(decoded))

    for path in take(paths, args.warmup):
        baseline_one(path), ours_one(path), heatmap(path)
    baseline_batch(paths[:args.batch_size]), ours_batch(paths[:args.batch_size])

    # Single images, alternating which side goes first so drift in the machine's load hits both.
    single = {"pipeline": [], "ours": []}
    differences = []
    for i, path in enumerate(paths):
        order = (("pipeline", baseline_one), ("ours", ours_one))
        results = {}
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            seconds, results[name] = timed(fn, path)
            single[name].append(seconds)
        differences.append(abs(results["pipeline"] - results["ours"]))

    # Batched: two rounds in ABBA order; images/s over the total time of each side.
    batched = {"pipeline": 0.0, "ours": 0.0}
    for name, fn in (("pipeline", baseline_batch), ("ours", ours_batch), ("ours", ours_batch), ("pipeline", baseline_batch)):
        batched[name] += timed(fn, paths)[0]
    throughput = {name: 2 * len(paths) / seconds for name, seconds in batched.items()}

    heat = [timed(heatmap, path)[0] for path in paths[:max(1, min(args.heatmaps, args.n))]]

    # Where our batched CPU time goes: the model's own per-stage clock, the rest from the process's.
    model.clock.reset()
    cpu_start = time.process_time()
    ours_batch(paths)
    cpu_total = time.process_time() - cpu_start
    stage_seconds = model.clock.snapshot()["cpu_seconds"]
    stage_seconds["other (Python, softmax, verdicts)"] = max(cpu_total - sum(stage_seconds.values()), 0.0)
    stages = {name: {"ms_per_image": 1000 * seconds / len(paths), "share": seconds / max(cpu_total, 1e-12)}
              for name, seconds in stage_seconds.items()}

    result = {
        "model": str(source), "image_size": model.image_size, "engine": model.engine, "precision": model.precision,
        "images": str(images_dir), "n": len(paths), "batch_size": args.batch_size, "conditions": info,
        "single_image": {name: summary_ms(values) for name, values in single.items()},
        "batched_images_per_s": throughput,
        "heatmap_ours": summary_ms(heat),
        "max_abs_probability_difference": float(max(differences)),
        "stages_ours": stages, "competing_job": args.competing_job,
    }
    p50 = {name: result["single_image"][name]["p50_ms"] for name in single}
    p95 = {name: result["single_image"][name]["p95_ms"] for name in single}
    result["speedup_vs_pipeline"] = p50["pipeline"] / p50["ours"]
    result["batched_speedup"] = throughput["ours"] / throughput["pipeline"]

    print(f"model {source} ({model.image_size} px), ours: {model.engine} {model.precision}, {args.threads} PyTorch thread(s), "
          f"{len(paths)} images from {images_dir}, {info['cpu_count']} CPUs, load average {info['load_average_1min_at_start']}"
          f"{', beside a competing CPU job' if args.competing_job else ''}")
    print(f"{'':28s} {'pipeline':>10s} {'ours':>10s} {'ratio':>8s}")
    print(f"{'single image p50 (ms)':28s} {p50['pipeline']:10.2f} {p50['ours']:10.2f} {p50['pipeline'] / p50['ours']:7.2f}x")
    print(f"{'single image p95 (ms)':28s} {p95['pipeline']:10.2f} {p95['ours']:10.2f} {p95['pipeline'] / p95['ours']:7.2f}x")
    print(f"{f'batched, {args.batch_size} at a time (img/s)':28s} {throughput['pipeline']:10.1f} {throughput['ours']:10.1f} "
          f"{result['batched_speedup']:7.2f}x")
    print(f"{'heat-map p50 / p95 (ms)':28s} {'-':>10s} {result['heatmap_ours']['p50_ms']:10.2f} "
          f"{'':>8s} p95 {result['heatmap_ours']['p95_ms']:.2f}")
    print(f"max |P(malignant) ours - pipeline| = {result['max_abs_probability_difference']:.4f}")
    print("our batched CPU time by stage: " + ", ".join(
        f"{name} {100 * row['share']:.0f}% ({row['ms_per_image']:.2f} ms/img)" for name, row in stages.items()))
    write_json(args.json, result)
    print(f"speedup_vs_pipeline={result['speedup_vs_pipeline']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
