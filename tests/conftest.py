"""Shared fixtures: a tiny real-image dataset and a tiny model trained on it.

Real images come from the shared data folder, ../shared/data next to the
repository, or the folder named by the MELANOMA_SHARED_DATA environment
variable. Without it, the tests that need a model still run: their images
come from examples/ (four labelled test-split images per class), and only
tests that need more than examples/ holds, or another dataset, are skipped.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The load test starts the app on a free port and waits for it exactly as the app tests do.
sys.path.append(str(REPO_ROOT / "benchmarks"))
from load_test import free_port, heatmap_ready_s, wait_until_up  # noqa: E402

SHARED_DATA = Path(os.environ.get("MELANOMA_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
SHARED_DATASET = SHARED_DATA / "melanoma_cancer_dataset"
EXAMPLES = REPO_ROOT / "examples"


def example_images(label: str) -> list[Path]:
    """examples/'s images of one class, as labels.csv labels them (the file names are not trusted for it)."""
    with open(EXAMPLES / "labels.csv", newline="") as handle:
        return sorted(EXAMPLES / row["file"] for row in csv.DictReader(handle) if row["label"] == label)


def real_images(split: str, label: str, count: int) -> list[Path]:
    """Up to `count` real images of a split and class: the shared set's, else examples/ (test-split images)."""
    folder = SHARED_DATASET / split / label
    if folder.is_dir():
        return sorted(folder.glob("*.jpg"))[:count]
    if split != "test":
        pytest.skip(f"the shared dataset is not at {SHARED_DATASET}, and examples/ holds test images only")
    examples = example_images(label)
    if len(examples) < count:
        # A test that asks for more images than examples/ holds measures a rate or picks images
        # by a property; four cannot stand in for that.
        pytest.skip(f"the shared dataset is not at {SHARED_DATASET}, and examples/ holds {len(examples)} {label} "
                    f"images where the test needs {count}")
    return examples[:count]


def experiment_script(name: str):
    """A script of experiments/ (not a package) as a module, for tests to call its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_count(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """Real dermoscopy images in train/ and test/: 10 per label in each from the shared set.

    Without it, examples/'s four images per label are divided, never shared:
    three go to train/ (one of them to validation), one to test/. Enough for
    the smoke training, not for figures; tests read the counts from the folder.
    """
    root = tmp_path_factory.mktemp("tiny_dataset")
    for label in ("benign", "malignant"):
        if SHARED_DATASET.is_dir():
            chosen = {split: real_images(split, label, 10) for split in ("train", "test")}
        else:
            examples = example_images(label)
            chosen = {"train": examples[:-1], "test": examples[-1:]}
        for split, images in chosen.items():
            target = root / split / label
            target.mkdir(parents=True)
            for image in images:
                shutil.copy(image, target / image.name)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_image_folder, tmp_path_factory) -> Path:
    """A smoke-training command (20 steps, 64 px), run once for every test that needs a model."""
    output_dir = tmp_path_factory.mktemp("tiny_model") / "m"
    command = [
        sys.executable, str(REPO_ROOT / "train_vit.py"),
        "--data-dir", str(tiny_image_folder),
        "--scratch-config", "tiny", "--image-size", "64",
        "--max-steps", "20",
        "--output-dir", str(output_dir),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


def wait_for_app(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Block until the app subprocess answers at `url` and has its heat-map model; fail with its log if it dies or hangs.

    The app scores pictures as soon as it is up and loads the heat-map's PyTorch model in the background
    (/healthz says heatmap_ready): a browser test's first result, heat-map included, must not race that load.
    """
    try:
        wait_until_up(url, process, timeout)
    except RuntimeError as error:
        pytest.fail(f"the app did not start: {error}\n{log.read_text()}")
    if heatmap_ready_s(url, time.perf_counter(), timeout) is None:
        pytest.fail(f"the app's heat-map model was not loaded within {timeout:.0f} s\n{log.read_text()}")


def pytest_configure(config):
    config.addinivalue_line("markers", "container: builds and starts the Docker image with podman "
                            "(tests/test_container.py; minutes on a machine's first run)")
