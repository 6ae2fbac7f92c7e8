"""Load a trained screening model once and score lesion images with it.

    model = ScreeningModel.load("runs/vit")          # or a Hub id
    prediction = model.predict("lesion.jpg")         # Prediction(label, probabilities, risk_level, ...)
    heatmap = model.explain("lesion.jpg")            # (H, W) float32 in [0, 1]

The probabilities are the ones `transformers.pipeline("image-classification")`
returns for the same folder: training folds the calibration temperature into
the classifier, so a plain softmax is already calibrated. Every image goes
through `load_rgb_image`, so a bad upload fails with a message for people.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import huggingface_hub
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTForImageClassification

from . import hub
from .calibration import risk_level, softmax_probs
from .explain import attention_rollout, upsample_heatmap
from .images import load_rgb_image

# What we fetch for a Hub id; the card, plots and checkpoints are not needed to predict.
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "eval_results.json"]
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
DEFAULT_THRESHOLD = 0.5


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one sentence for people."""


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    malignant_probability: float
    risk_level: str
    screening_threshold: float
    high_risk_threshold: float
    model_id: str

    def to_json(self) -> dict:
        # P(malignant) is already in `probabilities`; the JSON stays free of duplicates.
        data = asdict(self)
        del data["malignant_probability"]
        return data


def _hub_failure_reason(error: Exception) -> str:
    if hub._offline():
        return "offline"
    if isinstance(error, huggingface_hub.errors.RepositoryNotFoundError):
        return "no such model repository, or it is private"
    if isinstance(error, huggingface_hub.errors.LocalEntryNotFoundError):
        return "the Hub could not be reached"
    return hub._reason(error)


def _download(source: str) -> Path:
    def failure(reason: str) -> ModelLoadError:
        return ModelLoadError(
            f"Could not load model '{source}' from the Hugging Face Hub ({reason}); "
            "pass a local folder with --model or MODEL_ID."
        )

    if not _HUB_ID.match(source):
        raise ModelLoadError(f"Could not load model '{source}': there is no such folder.")
    try:
        # local_files_only: offline, a model already in the cache still loads.
        folder = huggingface_hub.snapshot_download(
            source, allow_patterns=MODEL_FILES, local_files_only=hub._offline(), token=hub.resolve_token()
        )
    except Exception as error:
        raise failure(_hub_failure_reason(error)) from error
    return Path(folder)


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


class ScreeningModel:
    def __init__(self, model, image_processor, model_id: str, version: str, eval_results: dict | None = None):
        self.model = model.eval()
        self.config = model.config
        self.image_processor = image_processor
        self.model_id = model_id
        self.version = version
        self.eval_results = eval_results

        labels = {name: index for index, name in self.config.id2label.items()}
        if set(labels) != {"benign", "malignant"}:
            raise ModelLoadError(f"Model '{model_id}' has labels {sorted(labels)}, expected benign and malignant.")
        self.malignant_index = int(labels["malignant"])

        names = ("screening_threshold", "high_risk_threshold")
        missing = [name for name in names if getattr(self.config, name, None) is None]
        if missing:
            # A model trained elsewhere: 0.5 is the plain argmax, not a chosen operating point.
            warnings.warn(f"Model '{model_id}' has no {' or '.join(missing)} in its config; using {DEFAULT_THRESHOLD}.")
        self.screening_threshold, self.high_risk_threshold = (
            DEFAULT_THRESHOLD if name in missing else float(getattr(self.config, name)) for name in names
        )
        if self.high_risk_threshold < self.screening_threshold:
            raise ModelLoadError(f"Model '{model_id}' has a high_risk_threshold below its screening_threshold.")

        # Our training folds T into the classifier; only a model calibrated
        # elsewhere and not folded needs the division here.
        folded = getattr(self.config, "temperature_folded_into_classifier", False)
        self.temperature = 1.0 if folded else float(getattr(self.config, "calibration_temperature", None) or 1.0)

        size = image_processor.size
        # The fast path covers what train_vit.py saves: a fixed height x width resize, no crop.
        self._fast = bool(image_processor.do_resize and size.get("height") and size.get("width")
                          and not getattr(image_processor, "do_center_crop", False))
        self.image_size = int(size.get("height") or size.get("shortest_edge"))
        if self._fast:
            # Rescale and normalise folded into one multiply-add per pixel.
            self._resize_to = (int(size["width"]), int(size["height"]))
            scale = image_processor.rescale_factor if image_processor.do_rescale else 1.0
            mean = np.asarray(image_processor.image_mean if image_processor.do_normalize else 0.0, dtype=np.float32)
            std = np.asarray(image_processor.image_std if image_processor.do_normalize else 1.0, dtype=np.float32)
            self._multiply = (scale / std).astype(np.float32)
            self._add = (-mean / std).astype(np.float32)

    @classmethod
    def load(cls, source: str, num_threads: int | None = None) -> "ScreeningModel":
        """A local model folder (as written by train_vit.py) or a Hub model id."""
        if num_threads:
            torch.set_num_threads(num_threads)  # process-wide: the app owns the process
        source = str(source)
        local = Path(source).expanduser()
        folder = local if local.is_dir() else _download(source)
        model_id = local.resolve().name if local.is_dir() else source
        for name in ("config.json", "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise ModelLoadError(f"Could not load model '{source}': {name} is missing.")
        version = weights_version(folder)
        try:
            # safetensors only: no pickle is ever unpickled, no remote code runs.
            model = ViTForImageClassification.from_pretrained(folder, use_safetensors=True)
            image_processor = AutoImageProcessor.from_pretrained(folder)
        except Exception as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ModelLoadError(f"Could not load model '{source}' ({type(error).__name__}: {detail}).") from error
        eval_path = folder / "eval_results.json"
        eval_results = json.loads(eval_path.read_text()) if eval_path.is_file() else None
        return cls(model, image_processor, model_id, version, eval_results)

    # ------------------------------------------------------------------ predict

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, 3, H, W) float32, equal to image_processor(images)["pixel_values"]."""
        if not self._fast:
            return self.image_processor(images, return_tensors="pt")["pixel_values"]
        batch = np.empty((len(images), self._resize_to[1], self._resize_to[0], 3), dtype=np.float32)
        for i, image in enumerate(images):
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            resized = rgb.resize(self._resize_to, self.image_processor.resample)
            np.multiply(np.asarray(resized), self._multiply, out=batch[i])
        batch += self._add
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def _predictions(self, pixel_values: torch.Tensor) -> list[Prediction]:
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values).logits
        probs = softmax_probs(logits.float(), self.temperature)
        id2label = self.config.id2label
        predictions = []
        for row in probs:
            malignant = float(row[self.malignant_index])
            predictions.append(Prediction(
                label=id2label[int(row.argmax())],
                probabilities={id2label[i]: float(p) for i, p in enumerate(row)},
                malignant_probability=malignant,
                risk_level=risk_level(malignant, self.screening_threshold, self.high_risk_threshold),
                screening_threshold=self.screening_threshold,
                high_risk_threshold=self.high_risk_threshold,
                model_id=self.model_id,
            ))
        return predictions

    def predict(self, image) -> Prediction:
        """image: path, bytes, PIL image or numpy array; raises ImageLoadError on bad input."""
        return self._predictions(self.preprocess([load_rgb_image(image)]))[0]

    def predict_batch(self, images, batch_size: int = 32) -> list[Prediction]:
        images = list(images)
        predictions = []
        for start in range(0, len(images), batch_size):
            # Decode chunk by chunk so a large batch never holds every full-size photo at once.
            chunk = [load_rgb_image(image) for image in images[start:start + batch_size]]
            predictions += self._predictions(self.preprocess(chunk))
        return predictions

    def explain(self, image) -> np.ndarray:
        """Attention-rollout heat-map, (H, W) float32 in [0, 1] at the decoded image's size."""
        decoded = load_rgb_image(image)
        grid = attention_rollout(self.model, self.preprocess([decoded]))
        return upsample_heatmap(grid, (decoded.height, decoded.width))
