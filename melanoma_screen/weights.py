"""Which weights a model folder holds: the hash that names them, and the error for a folder without them.

Its own module, below both the inference path and the ONNX graph builder, which
both stamp what they produce with this hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one sentence for people."""


def weights_version(folder: Path) -> str:
    """First 12 hex digits of the sha256 of model.safetensors: names the exact weights in reports."""
    path = folder / "model.safetensors"
    if not path.is_file():
        # Also refuses pickled pytorch_model.bin folders, which could run code on load.
        raise ModelLoadError(f"Could not load model from {folder}: it has no model.safetensors.")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
