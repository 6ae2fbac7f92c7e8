"""Load a trained screening model once and score lesion images with it.

    model = ScreeningModel.load("runs/vit")          # or a Hub id
    prediction = model.predict("lesion.jpg")         # Prediction(label, probabilities, risk_level, ...)
    heatmap = model.explain("lesion.jpg")            # (H, W) float32 in [0, 1]

The probabilities are calibrated: training folds the calibration temperature
into the classifier, so a plain softmax is. With the defaults (engine="torch",
precision="fp32") they are exactly the ones
`transformers.pipeline("image-classification")` returns for the same folder.
The app and predict.py load the fast CPU path instead, FAST = ONNX Runtime with
int8 encoder weights: 2.17x faster than PyTorch for one image of the shipped LeViT on one core, scores within a
few thousandths of pipeline's, the same test ROC AUC (benchmarks/README.md has
the measurements).
With FAST and a stored ONNX graph that holds the folder's weights, loading and
scoring import neither PyTorch nor transformers (several seconds of a cold
start): config.json and preprocessor_config.json are read as JSON, and the
PyTorch model, which the heat-map needs, is loaded on first use.
Every image goes through `load_rgb_image`, so a bad upload fails with a
message for people. Every decoded picture then goes through the model folder's
input check (melanoma_screen.input_check): a picture the model cannot judge
gets a Prediction with `input_check.reason` set, and no risk level in its JSON.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from .calibration import risk_level, softmax_probs
from .images import decode_batches, load_rgb_image
from .input_check import InputCheck, Verdict
from .picture_statistics import batch_features
from .labels import malignant_index
from .model_folder import ModelFolder, load_processor, onnx_graph_paths
# Re-exported: app.py, predict.py, calibrate_site.py and the benchmarks import them from here.
from .model_folder import default_model_source  # noqa: F401
from .weights import ModelLoadError, weights_version  # noqa: F401
from .transforms import Preprocess, color_constancy_of, field_of_view_mask_of, skin_reference_of

DEFAULT_THRESHOLD = 0.5
ENGINES = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "int8")
# What the app and predict.py run; benchmarks/README.md has the measurements behind it.
FAST = {"engine": "onnxruntime", "precision": "int8"}
# A JPEG at least this many times the model's input on both sides is decoded at a
# reduced scale (Image.draft). With 4x to spare, the bilinear resize that follows
# still averages many source pixels per input pixel, so the scores barely move,
# and the 300x300 dataset images are never drafted for models of 64 px and up.
DRAFT_MARGIN = 4

logger = logging.getLogger(__name__)


class StageClock:
    """CPU seconds spent in each stage of scoring, summed over the threads that ran it.

    Thread CPU time (time.thread_time), so a busy machine's waiting is not counted
    as work: benchmarks/bench_inference.py and the app's /api/timings report the
    share of each stage from it.
    """

    STAGES = ("decode", "resize", "statistics", "model", "feature space")

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.seconds = dict.fromkeys(self.STAGES, 0.0)
            self.images = 0

    @contextmanager
    def stage(self, name: str):
        start = time.thread_time()
        try:
            yield
        finally:
            spent = time.thread_time() - start
            with self._lock:
                self.seconds[name] += spent

    def count(self, images: int) -> None:
        with self._lock:
            self.images += images

    def snapshot(self) -> dict:
        with self._lock:
            return {"images": self.images, "cpu_seconds": dict(self.seconds)}


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    malignant_probability: float
    risk_level: str
    screening_threshold: float
    high_risk_threshold: float
    model_id: str
    model_version: str
    # The input check's verdict; when it refuses, the scores above are kept for
    # evaluation (how the model does on what is refused) but never shown.
    input_check: Verdict = field(default_factory=Verdict)

    @property
    def refused(self) -> bool:
        return not self.input_check.ok

    def to_json(self) -> dict:
        """What /predict returns: the prediction, or {"error", "reason"} when the input check refuses the picture."""
        if self.refused:
            return {"error": self.input_check.message("en"), "reason": self.input_check.reason,
                    "model_id": self.model_id, "model_version": self.model_version}
        # P(malignant) is already in `probabilities`; the JSON stays free of duplicates.
        data = asdict(self)
        del data["malignant_probability"], data["input_check"]
        return data


def quantize_encoder(model):
    """int8 weights for the encoder's nn.Linear layers, activations quantised on the fly.

    The linear layers hold nearly all of a ViT's (and LeViT's) arithmetic. The classifier stays
    float: it is tiny, and it carries the folded calibration temperature.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        # base_model is the encoder (model.vit, model.levit), without the classifier.
        torch.ao.quantization.quantize_dynamic(model.base_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def _default_threads() -> int:
    """PyTorch's own default when it is loaded already, else the cores this process may use."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _import_torch():
    import torch

    return torch


class ScreeningModel:
    def __init__(self, model, image_processor, model_id: str, version: str, eval_results: dict | None = None,
                 engine: str = "torch", precision: str = "fp32", input_check: InputCheck | None = None,
                 folder=None, config=None, onnx=None, num_threads: int | None = None):
        """model: the transformers model, or a zero-argument callable that loads it; image_processor: the
        transformers processor, or its settings read from preprocessor_config.json (model_folder.read_model_json). With the
        callable, config (read from config.json) and onnx (a stored OnnxClassifier) are given."""
        if engine not in ENGINES or precision not in PRECISIONS:
            raise ValueError(f"engine must be one of {ENGINES} and precision one of {PRECISIONS}, "
                             f"got {engine!r} and {precision!r}.")
        self._lock = threading.Lock()
        self._load_model = model if callable(model) and not hasattr(model, "config") else None
        self._model = None if self._load_model is not None else model.eval()
        # The processor's settings are all the fast path reads; the transformers processor itself is loaded on demand.
        self._processor_settings = image_processor
        self._image_processor = None if isinstance(image_processor, SimpleNamespace) else image_processor
        self.config = config if config is not None else self.model.config
        self.model_id = model_id
        self.version = version
        self.eval_results = eval_results
        # The model folder: where the ONNX graph built for these weights is kept (model_folder.onnx_graph_paths).
        self.folder = folder
        # None: the folder has no fitted check, and every decodable picture is scored.
        self.input_check = input_check
        self.clock = StageClock()

        try:
            self.malignant_index = malignant_index(self.config)
        except ValueError as error:
            raise ModelLoadError(f"Could not load model '{model_id}': {error}.") from error

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

        # Part of the model's preprocessing, stored in its config by train_vit.py;
        # set it to "none" to score what a bare transformers pipeline would.
        try:
            self.color_constancy = color_constancy_of(self.config)
            self.field_of_view_mask = field_of_view_mask_of(self.config)
            self.skin_reference = skin_reference_of(self.config)
        except ValueError as error:
            raise ModelLoadError(f"Could not load model '{model_id}': {error}.") from error

        size = self._processor_settings.size
        # Preprocess's fast path covers what train_vit.py saves: a fixed height x width resize, no crop.
        self._fast = Preprocess(self._processor_settings).fixed_size
        self.image_size = int(size.get("height") or size.get("shortest_edge"))
        side = DRAFT_MARGIN * max(int(size["width"]), int(size["height"])) if self._fast else None
        self._draft_size = (side, side) if side else None
        self._num_threads = num_threads
        self._start_engine(engine, precision, onnx)

    @property
    def model(self):
        """The PyTorch model, ViT or LeViT (loaded on first use when the ONNX graph was stored)."""
        return self._model if self._model is not None else self._load("model")

    @property
    def image_processor(self):
        """The transformers image processor (loaded on first use when preprocessor_config.json was read as JSON)."""
        return self._image_processor if self._image_processor is not None else self._load("image_processor")

    def _load(self, name: str):
        with self._lock:  # one load, however many threads ask at once
            if getattr(self, f"_{name}") is None:
                if name == "model":
                    loaded = self._load_model().eval()
                else:
                    loaded = load_processor(self.folder)
                setattr(self, f"_{name}", loaded)
            return getattr(self, f"_{name}")

    @property
    def heatmap_ready(self) -> bool:
        """Whether the PyTorch model the heat-map needs is loaded (a heat-map now would not wait for it)."""
        return self._model is not None

    def warm_up(self) -> threading.Thread:
        """Loads the PyTorch model the heat-map needs in a background thread, so the first heat-map does not wait."""
        def load():
            try:
                self.model
            except Exception as error:  # reported again, as a sentence, when a heat-map asks for it
                logger.warning("the heat-map's PyTorch model could not be loaded: %s", error)

        thread = threading.Thread(target=load, name="load-pytorch-model", daemon=True)
        thread.start()
        return thread

    def _start_engine(self, engine: str, precision: str, onnx=None) -> None:
        self._onnx, self._pool = onnx, None
        if engine == "onnxruntime" and onnx is None:
            try:
                from .onnx_engine import OnnxClassifier

                graphs = onnx_graph_paths(self.folder, self.version, precision) if self.folder is not None else ()
                self._onnx = OnnxClassifier(lambda: self.model, precision, graphs, weights_version=self.version)
            except Exception as error:  # no onnxruntime, or an exporter that changed: slower, still right
                logger.warning("ONNX Runtime unavailable (%s: %s); predicting with PyTorch.", type(error).__name__, error)
                engine = "torch"
        if engine == "torch" and precision == "int8":
            quantize_encoder(self.model)
        # With ONNX Runtime the PyTorch model stays float: the heat-maps come from it.
        self.engine, self.precision = engine, precision
        self._workers = (self._num_threads or _default_threads()) if self._onnx is not None else 1
        if self._workers > 1:
            # ONNX Runtime runs each image on one core (a second core does not make one image
            # of this small model faster); a batch is spread over the cores instead.
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="onnxruntime")

    @classmethod
    def load(cls, source: str, num_threads: int | None = None, engine: str = "torch",
             precision: str = "fp32") -> "ScreeningModel":
        """A local model folder (as written by train_vit.py) or a Hub model id.

        num_threads sets PyTorch's intra-op threads for the whole process (the
        caller owns the process: app.py, predict.py) and, with ONNX Runtime, how
        many images of a batch are scored at once, one per core.
        engine="torch", precision="fp32": pipeline's numbers exactly;
        **FAST: the fast CPU path.
        """
        if engine not in ENGINES or precision not in PRECISIONS:
            raise ValueError(f"engine must be one of {ENGINES} and precision one of {PRECISIONS}, "
                             f"got {engine!r} and {precision!r}.")
        folder = ModelFolder(source)
        # FAST with a graph stored for exactly these weights: no PyTorch, no transformers until a heat-map.
        light = folder.light if engine == "onnxruntime" else None
        onnx = None
        if light is not None:
            try:
                from .onnx_engine import OnnxClassifier

                onnx = OnnxClassifier.stored(folder.onnx_graphs(precision), folder.version, precision)
            except ImportError:
                onnx = None
        if onnx is not None:
            model, (config, image_processor) = (lambda: folder.network(num_threads)), light
        else:
            model = folder.network(num_threads)
            config = model.config
            image_processor = folder.processor()
        eval_results = folder.eval_results
        model_id = folder.published_name(config)
        return cls(model, image_processor, model_id, folder.version, eval_results, engine=engine, precision=precision,
                   input_check=folder.input_check, folder=folder.path, config=config, onnx=onnx,
                   num_threads=num_threads)

    def close(self) -> None:
        """Stops the batch threads; the model cannot score afterwards."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ predict

    def decode(self, source) -> Image.Image:
        """load_rgb_image, with large JPEGs decoded at a reduced scale (see DRAFT_MARGIN)."""
        with self.clock.stage("decode"):
            return load_rgb_image(source, draft_size=self._draft_size)

    def decode_each(self, sources) -> list:
        """decode for each source, over the batch threads: a decoded image, or the exception it raised, per source."""
        def attempt(source):
            try:
                return self.decode(source)
            except Exception as error:  # handed back: the caller decides what a bad file means
                return error

        sources = list(sources)
        if self._pool is not None and len(sources) > 1:
            return list(self._pool.map(attempt, sources))
        return [attempt(source) for source in sources]

    def pipeline_input(self, source):
        """What to hand `transformers.pipeline` so it scores `source` as this model does.

        The path itself for a model without colour constancy; otherwise the
        decoded image, resized and colour-corrected, since pipeline knows
        nothing of the `color_constancy` or `field_of_view_mask` in the config.
        """
        if self.color_constancy == "none" and not self.field_of_view_mask:
            return str(source) if isinstance(source, Path) else source
        return self._preprocess().picture(load_rgb_image(source))

    def preprocess(self, images: list[Image.Image]):
        """(N, 3, H, W) float32 torch tensor, equal to image_processor(images)["pixel_values"] after the model's colour constancy."""
        torch = _import_torch()
        with self.clock.stage("resize"):
            pixel_values, _ = self._preprocess()(images)
        return torch.from_numpy(pixel_values)

    def _preprocess(self) -> Preprocess:
        # Built per call: evaluate_model.py --without-color-constancy changes color_constancy after loading.
        return Preprocess(self._processor_settings if self._fast else self.image_processor, self.color_constancy,
                          self.field_of_view_mask, self.skin_reference)

    def _torch_forward(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The PyTorch engine: (N, 2) logits and (N, P, D) patch tokens, as OnnxClassifier.with_patch_tokens."""
        from .architectures import logits_and_patch_tokens

        torch = _import_torch()
        with torch.inference_mode():
            logits, tokens = logits_and_patch_tokens(self.model, torch.from_numpy(np.ascontiguousarray(pixel_values)))
        return logits.float().numpy(), tokens.float().numpy()

    def forward(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass over decoded pictures: what the input check measures and what the model answers.

        (N, len(FEATURES)) picture statistics of the pictures as the model is given them
        (picture_statistics.batch_features), (N, classes) calibrated probabilities and the
        (N, P, D) patch tokens, all from one preprocessing and one forward pass.
        """
        with self.clock.stage("resize"):
            pixels, pictures = self._preprocess()(images)
        run = self._onnx.with_patch_tokens if self._onnx is not None else self._torch_forward

        def timed(part):
            with self.clock.stage("model"):
                return run(part)

        if self.precision == "int8":
            # Dynamic quantisation picks one activation scale per input tensor: one image
            # at a time, a score never depends on the other images in its batch.
            parts = [pixels[i:i + 1] for i in range(len(pixels))]
        else:
            parts = [part for part in np.array_split(np.arange(len(pixels)), self._workers) if len(part)]
            parts = [pixels[part[0]:part[-1] + 1] for part in parts]
        if self._pool is not None and len(parts) > 1:
            outputs = list(self._pool.map(timed, parts))
        else:
            outputs = [timed(part) for part in parts]
        logits = np.concatenate([logits for logits, _ in outputs])
        tokens = np.concatenate([tokens for _, tokens in outputs])
        with self.clock.stage("statistics"):
            features = batch_features(pictures)
        return features, softmax_probs(logits, self.temperature), tokens

    def measure_decoded(self, images: list[Image.Image]) -> dict:
        """What the input check looks at, with P(malignant): {"features", "embeddings", "probabilities"} arrays.

        "embeddings" are the (N, P, D) patch tokens, in float16 to keep a training split's in memory.
        """
        features, probabilities, tokens = self.forward(images)
        return {"features": features, "embeddings": tokens.astype(np.float16),
                "probabilities": probabilities[:, self.malignant_index]}

    def predict_decoded(self, images: list[Image.Image]) -> list[Prediction]:
        """One forward pass over images already decoded by `decode` (or load_rgb_image)."""
        if not images:
            return []
        features, probs, tokens = self.forward(images)
        self.clock.count(len(images))
        if self.input_check is not None:
            with self.clock.stage("feature space"):
                verdicts = self.input_check.judge(features, tokens)
        else:
            verdicts = [Verdict() for _ in images]
        id2label = self.config.id2label
        predictions = []
        for row, verdict in zip(probs, verdicts):
            malignant = float(row[self.malignant_index])
            predictions.append(Prediction(
                label=id2label[int(row.argmax())],
                probabilities={id2label[i]: float(p) for i, p in enumerate(row)},
                malignant_probability=malignant,
                risk_level=risk_level(malignant, self.screening_threshold, self.high_risk_threshold),
                screening_threshold=self.screening_threshold,
                high_risk_threshold=self.high_risk_threshold,
                model_id=self.model_id,
                model_version=self.version,
                input_check=verdict,
            ))
        return predictions

    def predict(self, image) -> Prediction:
        """image: path, bytes, PIL image or numpy array; raises ImageLoadError on bad input."""
        return self.predict_decoded([self.decode(image)])[0]

    def predict_batch(self, images, batch_size: int = 32) -> list[Prediction]:
        """Like predict for each image, batch_size at a time; the first bad image raises."""
        predictions = []
        for batch in decode_batches(images, batch_size, self.decode_each, skip=()):
            predictions += self.predict_decoded(batch.images)
        return predictions

    def explain(self, image) -> np.ndarray:
        """Heat-map (explain.heatmap_grid), (H, W) float32 in [0, 1] at the decoded image's size."""
        return self.explain_decoded(load_rgb_image(image))

    def explain_decoded(self, picture: Image.Image) -> np.ndarray:
        """explain for a picture already decoded by `decode` (or load_rgb_image)."""
        from .explain import heatmap_grid, upsample_heatmap

        grid = heatmap_grid(self.model, self.preprocess([picture]))
        return upsample_heatmap(grid, (picture.height, picture.width))
