"""The benchmark scripts run end to end on the tiny model (no timing is asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, real_images

BENCHMARKS = REPO_ROOT / "benchmarks"


def run(script, *args, timeout=600):
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_images")
    for image in real_images("test", "benign", 2) + real_images("test", "malignant", 2):
        shutil.copy(image, folder / image.name)
    return folder


def test_bench_inference_prints_speedup_and_writes_json(tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench_inference.py", "--model", tiny_model_dir, "--images", image_folder, "--n", 3,
                 "--batch-size", 2, "--heatmaps", 2, "--warmup", 1, "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("speedup_vs_pipeline=") and float(last.split("=")[1]) > 0
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["single_image"]["pipeline"]["n"] == report["single_image"]["ours"]["n"] == 3
    assert set(report["batched_images_per_s"]) == {"pipeline", "ours"}
    assert report["heatmap_ours"]["p50_ms"] > 0
    assert report["max_abs_probability_difference"] < 0.1  # int8 moves probabilities a little, not a lot
    stages = report["stages_ours"]
    assert {"decode", "resize", "statistics", "model", "feature space"} <= set(stages)
    assert stages["model"]["ms_per_image"] > 0 and 0.99 < sum(row["share"] for row in stages.values()) < 1.01


def test_check_accuracy_compares_both_paths(tiny_model_dir, tmp_path):
    out = tmp_path / "accuracy.json"
    # Its own test split of real images, so it runs with or without the shared dataset.
    for label in ("benign", "malignant"):
        (tmp_path / "data" / "test" / label).mkdir(parents=True)
        for image in real_images("test", label, 3):
            shutil.copy(image, tmp_path / "data" / "test" / label / image.name)
    # In fp32 our path gives pipeline's numbers, so the AUCs agree exactly on any model.
    result = run("check_accuracy.py", "--model", tiny_model_dir, "--data-dir", tmp_path / "data", "--limit", 3,
                 "--engine", "torch", "--precision", "fp32", "--json", out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["n"] == 6 and report["passed"]
    assert abs(report["auc_difference"]) < 1e-9 and report["max_abs_probability_difference"] < 1e-4
    assert "auc_difference=" in result.stdout


def test_load_test_two_clients_no_errors(tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "load.json"
    result = run("load_test.py", "--model", tiny_model_dir, "--clients", 2, "--requests", 2, "--images", image_folder,
                 "--json", out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["requests"] == 8 and report["ok"] == 8 and report["errors"] == 0
    assert set(report["routes"]) == {"gradio", "lean"}
    for route in report["routes"].values():
        assert route["ok"] == 4 and route["latency"]["p95_ms"] > 0
        stages = route["server_cpu_ms_per_request_by_stage"]
        assert stages["model"] > 0 and "web framework and the rest" in stages
    assert report["app_first_answer_s"] >= report["app_startup_s"] > 0
    assert "errors=0" in result.stdout


@pytest.mark.parametrize("script", ["bench_inference.py", "load_test.py", "check_accuracy.py", "behaviour_snapshot.py"])
def test_help(script):
    result = run(script, "--help", timeout=120)
    assert result.returncode == 0 and "--model" in result.stdout
