"""Shared fixtures: a tiny real-image dataset and a tiny model trained on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The load test starts the app on a free port and waits for it exactly as the app tests do.
sys.path.append(str(REPO_ROOT / "benchmarks"))
from load_test import free_port, wait_until_up  # noqa: E402

SHARED_DATASET = REPO_ROOT.parent / "shared" / "data" / "melanoma_cancer_dataset"


def real_images(split: str, label: str, count: int) -> list[Path]:
    folder = SHARED_DATASET / split / label
    if not folder.is_dir():
        pytest.skip(f"the shared dataset is not at {SHARED_DATASET}")
    return sorted(folder.glob("*.jpg"))[:count]


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """40 real dermoscopy images: 10 per label in train/ and in test/."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    for split in ("train", "test"):
        for label in ("benign", "malignant"):
            target = root / split / label
            target.mkdir(parents=True)
            for image in real_images(split, label, 10):
                shutil.copy(image, target / image.name)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_image_folder, tmp_path_factory) -> Path:
    """The issue's smoke-training command, run once for every test that needs a model."""
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
    """Block until the app subprocess answers at `url`; fail with its log if it dies or hangs."""
    try:
        wait_until_up(url, process, timeout)
    except RuntimeError as error:
        pytest.fail(f"the app did not start: {error}\n{log.read_text()}")
