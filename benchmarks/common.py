"""What the benchmark scripts share: where the images are, and how to summarise timings."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/x.py` puts benchmarks/, not the root, on the path

# The shared data folder beside the repository, or the one MELANOMA_SHARED_DATA names (as the tests read it).
SHARED_DATA = Path(os.environ.get("MELANOMA_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
DATASET = SHARED_DATA / "melanoma_cancer_dataset"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def default_images_dir() -> Path:
    """Real test-split images when the shared dataset is there, else the app's examples."""
    test = DATASET / "test"
    return test if test.is_dir() else REPO_ROOT / "examples"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, benign and malignant interleaved so any prefix has both."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise SystemExit(f"No images (.jpg, .jpeg, .png) under {folder}.")
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    groups = list(by_folder.values())
    return [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]


def take(paths: list[Path], n: int) -> list[Path]:
    """n paths, cycling when there are fewer images than n."""
    return [paths[i % len(paths)] for i in range(n)]


def summary_ms(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean()), "n": int(values.size)}


def write_json(path: str | os.PathLike | None, result: dict) -> None:
    """The results as indented JSON at `path` (a benchmark's --json); nothing when path is None."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def conditions() -> dict:
    """What the numbers depend on, stored beside them."""
    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "python": platform.python_version(), "load_average_1min_at_start": load}


@contextlib.contextmanager
def competing_cpu_job(enabled: bool = True, processes: int | None = None):
    """While inside, one busy process per core (or `processes`), as another job on the machine would be.

    Plain Python loops at normal priority: they compete for the cores, not for memory.
    """
    if not enabled:
        yield []
        return
    count = processes or os.cpu_count() or 1
    workers = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()


def halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """A boolean mask of the first half, drawn per class so both halves keep the site's class balance."""
    rng = np.random.default_rng(seed)
    first = np.zeros(labels.size, dtype=bool)
    for label in (0, 1):
        indices = rng.permutation(np.flatnonzero(labels == label))
        first[indices[: indices.size // 2]] = True
    return first
