"""Model sizes, initialisation, labels and checkpoint bookkeeping shared by the training scripts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .architectures import ADAPTERS
from .calibration import classifier_linear
from .labels import ID2LABEL, LABEL2ID  # noqa: F401  (re-exported: what train_vit.py gives a new config)
from .model_folder import load_network

logger = logging.getLogger(__name__)

# The standard ViT family (Dosovitskiy et al. 2021), with "tiny" from DeiT.
SCRATCH_CONFIGS = {
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}

# The architectures other than ViT that --scratch-config builds, from their adapters (melanoma_screen.architectures):
# the app serves a LeViT folder as it does a ViT one; MobileViTV2 is for comparing recipes only.
OTHER_ARCHITECTURES = {name: adapter.scratch for name, adapter in ADAPTERS.items() if adapter.scratch}


def build_other_architecture(name: str, image_size: int, **label_kwargs):
    import transformers

    config_class, model_class, settings = OTHER_ARCHITECTURES[name]
    config = getattr(transformers, config_class)(image_size=image_size, **settings, **label_kwargs)
    return getattr(transformers, model_class)(config)


@torch.no_grad()
def levit_at_resolution(model, image_size: int):
    """The same LeViT for another input size: each attention's bias table resized over its grid of offsets.

    A LeViT attention holds one learnt bias per head and (|dx|, |dy|) offset
    between positions, so its table is a grid as wide as the stage's token map;
    at another input size that map, and so the grid, changes size. Bicubic
    resizing keeps what was learnt about near and far (as DeiT does for position
    embeddings); the convolutions and the classifier do not depend on size.
    """
    import copy
    import math

    if model.config.model_type != "levit":
        raise ValueError(f"only a LeViT's resolution can be changed here, not a {model.config.model_type}'s")
    if int(model.config.image_size) == image_size:
        return model
    config = copy.deepcopy(model.config)
    config.image_size = image_size
    down_ops = copy.deepcopy(config.down_ops)
    resized = type(model)(config)
    resized.config.down_ops = down_ops  # LevitEncoder appends an entry to the config it is built from
    state = model.state_dict()
    for name, target in resized.state_dict().items():
        if name.endswith("attention_biases") and state[name].shape != target.shape:
            heads = state[name].shape[0]
            side, new_side = math.isqrt(state[name].shape[1]), math.isqrt(target.shape[1])
            grid = state[name].reshape(1, heads, side, side)
            state[name] = torch.nn.functional.interpolate(grid, size=(new_side, new_side), mode="bicubic",
                                                          align_corners=True).reshape(heads, -1)
    resized.load_state_dict(state)
    return resized


# Trockman & Kolter, "Mimetic Initialization of Self-Attention Layers" (ICML 2023): the
# (alpha, beta) pairs they use for ViT-Tiny, for W_q W_k^T and for W_v W_o.
MIMETIC_QUERY_KEY = (0.7, 0.7)
MIMETIC_VALUE_OUTPUT = (0.4, 0.4)


def _factor_pair(dim: int, alpha: float, beta: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R = alpha * Z + beta * I, Z ~ N(0, 1/dim), split evenly by the SVD."""
    target = alpha * torch.randn(dim, dim, generator=generator) / dim ** 0.5 + beta * torch.eye(dim)
    u, s, vh = torch.linalg.svd(target)
    root = torch.diag(s.sqrt())
    return u @ root, root @ vh


@torch.no_grad()
def mimetic_initialisation(model, seed: int = 0) -> None:
    """Give a from-scratch ViT's attention the structure a pretrained ViT's has.

    Pretrained ViTs' W_q W_k^T is close to a positive multiple of the identity
    (tokens attend to similar tokens, which with position embeddings means to
    nearby patches) and W_v W_o close to a negative one. Starting there costs
    nothing and helps a ViT trained from scratch on small data, which lacks the
    locality a convolution has built in. nn.Linear computes x W^T, hence the
    transposes.
    """
    generator = torch.Generator().manual_seed(seed)
    for layer in model.vit.layers:
        attention = layer.attention
        dim = attention.q_proj.weight.shape[1]
        left, right = _factor_pair(dim, *MIMETIC_QUERY_KEY, generator)
        attention.q_proj.weight.copy_(left.T)
        attention.k_proj.weight.copy_(right)
        alpha, beta = MIMETIC_VALUE_OUTPUT
        left, right = _factor_pair(dim, alpha, -beta, generator)
        attention.v_proj.weight.copy_(left.T)
        attention.o_proj.weight.copy_(right.T)


DIAGNOSIS_LABEL_PREFIX = "dx:"


@torch.no_grad()
def add_diagnosis_outputs(model, diagnoses) -> None:
    """Give the classifier one more output per diagnosis, after benign/malignant, for an auxiliary loss.

    The head shares everything up to its last linear layer with the
    benign/malignant outputs, so what it learns to tell a keratosis from a
    melanoma is learnt by the features the screening outputs read. The config
    names the new outputs so Trainer's checkpoints reload at their size;
    strip_diagnosis_outputs takes them away before the model is calibrated and saved.
    """
    old = classifier_linear(model)
    new = torch.nn.Linear(old.in_features, old.out_features + len(diagnoses))
    new.weight[: old.out_features] = old.weight
    new.bias[: old.out_features] = old.bias
    torch.nn.init.normal_(new.weight[old.out_features:], std=0.02)
    new.bias[old.out_features:] = 0
    id2label = {int(index): name for index, name in model.config.id2label.items()}
    id2label.update({old.out_features + i: DIAGNOSIS_LABEL_PREFIX + name for i, name in enumerate(diagnoses)})
    _set_classifier_linear(model, new)
    model.config.id2label = id2label
    model.config.label2id = {name: index for index, name in id2label.items()}


@torch.no_grad()
def strip_diagnosis_outputs(model) -> None:
    """Back to the screening outputs only, so the published model is one pipeline() reads as benign/malignant."""
    names = {int(index): name for index, name in model.config.id2label.items()}
    keep = sorted(index for index, name in names.items() if not str(name).startswith(DIAGNOSIS_LABEL_PREFIX))
    old = classifier_linear(model)
    if len(keep) == old.out_features:
        return
    new = torch.nn.Linear(old.in_features, len(keep))
    new.weight.copy_(old.weight[keep])
    new.bias.copy_(old.bias[keep])
    _set_classifier_linear(model, new)
    model.config.id2label = {i: names[index] for i, index in enumerate(keep)}
    model.config.label2id = {name: index for index, name in model.config.id2label.items()}


def _set_classifier_linear(model, linear) -> None:
    if isinstance(model.classifier, torch.nn.Linear):
        model.classifier = linear
    else:
        model.classifier.linear = linear
    model.config.num_labels = linear.out_features


def trainer_checkpoints(checkpoint_dir) -> list[str]:
    """Trainer checkpoints in `checkpoint_dir` (one per epoch, or per --eval-steps), oldest first."""
    paths = sorted(Path(checkpoint_dir).glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
    return [str(path) for path in paths]


def averaged_state_dict(model_class, checkpoints) -> dict[str, torch.Tensor]:
    """The element-wise mean of the checkpoints' weights (Izmailov et al. 2018, "SWA").

    Checkpoints from the tail of one cosine schedule sit in one basin, so their
    mean is a valid model that is usually flatter and more robust than any of them.
    Loaded through from_pretrained (model_folder.load_network) for the legacy key renaming (see below).
    """
    total = None
    for checkpoint in checkpoints:
        state = load_network(checkpoint, model_class).state_dict()
        if total is None:
            total = {name: tensor.detach().clone().double() for name, tensor in state.items()}
        else:
            for name, tensor in state.items():
                total[name] += tensor.double()
    return {name: (tensor / len(checkpoints)).float() for name, tensor in total.items()}


class CheckpointSafeTrainer(Trainer):
    """Trainer that reloads its own checkpoints through `from_pretrained`.

    transformers 5 saves ViT checkpoints under the legacy key names
    (`encoder.layer.N.attention.attention.query`) but Trainer reloads them
    with a raw `load_state_dict`, which skips the key renaming: every encoder
    weight stays random after `load_best_model_at_end` or `--resume`, with
    only a warning. `from_pretrained` applies the renaming.
    """

    def _load_weights(self, checkpoint: str) -> None:
        reloaded = load_network(checkpoint, type(self.model))
        self.model.load_state_dict(reloaded.state_dict(), strict=True)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_weights(resume_from_checkpoint)

    def _load_best_model(self):
        self._load_weights(self.state.best_model_checkpoint)


class TimeLimitCallback(TrainerCallback):
    """Ends training at the end of the first epoch past the time limit; that epoch is still validated and saved.

    For machines lent by the minute: the run then calibrates, reports and
    saves as usual instead of being killed with nothing written.
    """

    def __init__(self, minutes: float):
        self.limit_s = minutes * 60
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.started is not None and time.monotonic() - self.started > self.limit_s:
            logger.warning("time limit of %.1f min reached at epoch %.2f: stopping", self.limit_s / 60, state.epoch)
            control.should_training_stop = True
