"""A model folder, read in one place: where it is, its config and processor settings, weights, version,
eval results, input check and stored ONNX graph.

A folder is what train_vit.py writes (or a Hub repository holding the same
files). Everything that loads one, ScreeningModel (the app, predict.py,
evaluate_model.py, calibrate_site.py, the benchmarks), the ONNX builder, site
calibration, training's fine-tuning and the experiments, goes through this
module, which is the only caller of `from_pretrained` on a folder
(tests/test_structure.py checks it), and which says where the ONNX graph built
for the folder's weights is kept (`onnx_graph_paths`; melanoma_screen.onnx_engine
opens it, checks its stamp, and builds it when it is missing or stale). Weights are read from safetensors only: no
pickle is ever unpickled, and no remote code runs.

Reading the JSON files, the version and the input check imports neither
PyTorch nor transformers, which the light start of the app needs
(melanoma_screen.inference); `network` and `processor` import them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

from .architectures import servable
from .input_check import STATS_FILE, InputCheck
from .results import EvalResultsError, load_eval_results
from .weights import ModelLoadError, weights_version

# What we fetch for a Hub id; the card, plots and checkpoints are not needed to predict (the int8
# graph is, when the repository has one: built otherwise, see melanoma_screen.onnx_engine).
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "eval_results.json", STATS_FILE,
               "model.int8.onnx"]
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# A site-adapted folder (melanoma_screen.site_adaptation) keeps its source's BatchNorm statistics here: the
# input check was fitted on the source's tokens, so it measures tokens computed with them.
SOURCE_STATISTICS_FILE = "input_check_batchnorm.safetensors"

logger = logging.getLogger(__name__)


def default_model_source() -> str:
    """The model app.py and predict.py use without --model: $MODEL_ID, else model/ in the repository."""
    return os.environ.get("MODEL_ID") or str(DEFAULT_MODEL_DIR)


def _hub_failure_reason(error: Exception) -> str:
    import huggingface_hub

    from . import hub

    if hub.hub_offline():
        return "offline"
    if isinstance(error, huggingface_hub.errors.RepositoryNotFoundError):
        return "no such model repository, or it is private"
    if isinstance(error, huggingface_hub.errors.LocalEntryNotFoundError):
        return "the Hub could not be reached"
    return hub.failure_reason(error)


def _download(source: str) -> Path:
    def failure(reason: str) -> ModelLoadError:
        return ModelLoadError(
            f"Could not load model '{source}' from the Hugging Face Hub ({reason}); "
            "pass a local folder with --model or MODEL_ID."
        )

    if not _HUB_ID.match(source):
        raise ModelLoadError(f"Could not load model '{source}': there is no such folder.")
    import huggingface_hub

    from . import hub

    try:
        # local_files_only: offline, a model already in the cache still loads.
        folder = huggingface_hub.snapshot_download(
            source, allow_patterns=MODEL_FILES, local_files_only=hub.hub_offline(), token=hub.resolve_token()
        )
    except Exception as error:
        raise failure(_hub_failure_reason(error)) from error
    return Path(folder)


# What the light start reads from preprocessor_config.json itself; a file that leaves any of
# them to transformers' defaults, or names another processor, is loaded by transformers.
_PROCESSOR_FIELDS = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                     "image_std")
_VIT_PROCESSORS = ("ViTImageProcessor", "ViTImageProcessorFast", "ViTImageProcessorPil")


def read_model_json(folder: Path):
    """config.json and preprocessor_config.json as plain objects, when transformers is not needed to read them.

    None when the model is not a classifier the app serves (architectures.servable) with an explicit
    ViT image processor (then transformers loads both, as pipeline would).
    """
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        processor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # transformers reports what is wrong with the file
    if not (isinstance(config, dict) and isinstance(processor, dict) and servable(config.get("model_type"))
            and processor.get("image_processor_type") in _VIT_PROCESSORS
            and all(name in processor for name in _PROCESSOR_FIELDS) and isinstance(config.get("id2label"), dict)):
        return None
    try:
        config["id2label"] = {int(index): name for index, name in config["id2label"].items()}
    except (TypeError, ValueError):
        return None
    return SimpleNamespace(**config), SimpleNamespace(**processor)


def onnx_graph_paths(folder, weights_version: str, precision: str) -> list[Path]:
    """Where the ONNX graph of these weights is looked for, and written when built: in the model folder
    (MODEL/model.int8.onnx), then in the user's cache, for a folder that cannot be written."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "melanoma_screen"
    return [Path(folder) / f"model.{precision}.onnx", cache / f"{weights_version}.{precision}.onnx"]


def load_error(source: str, error: Exception) -> ModelLoadError:
    """What transformers raised while reading a model folder, as one sentence for people."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return ModelLoadError(f"Could not load model '{source}' ({type(error).__name__}: {detail}).")


def attach_source_statistics(model, folder) -> None:
    """Gives an adapted model the copy of itself with its source's statistics that the input check's tokens need.

    Set outside the module registry, so it is neither saved with the model nor
    counted among its parameters. A folder without the file is left alone.
    """
    import copy

    import torch
    from safetensors.torch import load_file

    path = Path(folder) / SOURCE_STATISTICS_FILE
    if not path.is_file():
        return
    # No gradient: the graph exporter takes its weights as constants, and the heat-map differentiates the other copy.
    source = copy.deepcopy(model).eval().requires_grad_(False)
    state = source.state_dict()
    with torch.no_grad():
        for key, value in load_file(str(path)).items():
            state[key].copy_(value)
    object.__setattr__(model, "input_check_model", source)


def load_network(folder, model_class=None, **options):
    """The transformers model in a folder (or Hub id), through the Auto class unless model_class is given.

    options go to from_pretrained (ignore_mismatched_sizes and new labels, for fine-tuning).
    A site-adapted folder also gets its source's statistics (attach_source_statistics).
    """
    if model_class is None:
        from transformers import AutoModelForImageClassification as model_class
    network = model_class.from_pretrained(folder, use_safetensors=True, **options)
    if Path(str(folder)).is_dir():
        attach_source_statistics(network, folder)
    return network


def load_processor(folder):
    """The folder's transformers image processor, as pipeline() would load it."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)


class ModelFolder:
    """One model folder or Hub model id, found once; each file is read on first use and kept.

    source: what the user named (a folder or a Hub id); path: the local folder
    (downloaded for a Hub id); name: the folder's name or the Hub id.
    """

    def __init__(self, source):
        self.source = str(source)
        local = Path(self.source).expanduser()
        self.path = local if local.is_dir() else _download(self.source)
        self.name = local.resolve().name if local.is_dir() else self.source
        for name in ("config.json", "preprocessor_config.json"):
            if not (self.path / name).is_file():
                raise ModelLoadError(f"Could not load model '{self.source}': {name} is missing.")
        self.version = weights_version(self.path)

    @cached_property
    def light(self):
        """(config, processor settings) read as JSON without transformers, or None (read_model_json)."""
        return read_model_json(self.path)

    def network(self, num_threads: int | None = None):
        """The PyTorch model (safetensors only); any failure is a ModelLoadError for people."""
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        try:
            from transformers.utils import logging as transformers_logging

            if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
                transformers_logging.disable_progress_bar()
            # A ViT folder gives ViTForImageClassification; the Auto class also reads the experiments'
            # other architectures (architectures.ADAPTERS) for scoring.
            return load_network(self.path)
        except Exception as error:
            raise load_error(self.source, error) from error

    def processor(self):
        try:
            return load_processor(self.path)
        except Exception as error:
            raise load_error(self.source, error) from error

    def onnx_graphs(self, precision: str) -> list[Path]:
        """Where the stored ONNX graph of these weights is, or will be written (onnx_graph_paths)."""
        return onnx_graph_paths(self.path, self.version, precision)

    @cached_property
    def eval_results(self) -> dict | None:
        path = self.path / "eval_results.json"
        try:
            return load_eval_results(path) if path.is_file() else None
        except EvalResultsError as error:
            raise ModelLoadError(f"Could not load model '{self.source}': {error}") from error

    @cached_property
    def input_check(self) -> InputCheck | None:
        """The fitted input check, or None (then every decodable picture is scored, with a warning)."""
        check = InputCheck.load(self.path, model_version=self.version)
        if check is None:
            logger.warning("Model '%s' has no %s: pictures are scored without the input check. Fit it with "
                           "`python fit_input_check.py fit --model FOLDER --data-dir DATA`.",
                           self.source, STATS_FILE)
        return check

    def published_name(self, config) -> str:
        """The name it is published under when the folder was stamped with one (melanoma_screen.identity)."""
        stamped = getattr(config, "model_version", None)
        if stamped and stamped != self.version:
            logger.warning("config.json of %s names weights %s, but model.safetensors is %s; the weights' hash is "
                           "reported. Stamp it again: python -m melanoma_screen.identity --model %s",
                           self.source, stamped, self.version, self.source)
        return getattr(config, "model_name", None) or self.name
