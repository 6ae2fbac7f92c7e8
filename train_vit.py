"""Fine-tune a Vision Transformer to tell benign from malignant skin lesions.

Reads top to bottom: arguments -> data -> model -> Trainer -> calibration and
operating points on validation -> final test report -> save -> model card ->
optional Hub push.

    python train_vit.py --data_dir ../shared/data/melanoma_cancer_dataset --output_dir runs/vit
    python train_vit.py --data_dir DIR --scratch_config tiny --image_size 64 --max_steps 20 --output_dir /tmp/m
    accelerate launch --cpu --num_processes 2 train_vit.py --data_dir DIR ...

Training takes transformers.TrainingArguments as run_image_classification.py does
(--num_train_epochs, --per_device_train_batch_size, --learning_rate, --seed,
--push_to_hub, --hub_model_id, ...); every flag also has a dashed spelling.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    EarlyStoppingCallback,
    HfArgumentParser,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

import data_prep
from data_prep import SplitSettings, source_class_groups, to_dataset
from data_prep.split import MIN_DIAGNOSIS_GROUP
from data_prep.shortcut_audit import print_shortcut_audit, shortcut_audit, shortcut_markdown
from melanoma_screen import calibration, metrics, plots
from melanoma_screen.hub import HubPushError, push_folder_to_hub
from melanoma_screen.images import load_rgb_image
from melanoma_screen.labels import benign_diagnosis_group, malignant_index
from melanoma_screen.architectures import ADAPTERS, adapter_for, display_name, resizable
from melanoma_screen.model_card import write_model_card
from melanoma_screen.model_folder import load_network, load_processor
from melanoma_screen.skin import lesion_extent, reference_skin_colour
from melanoma_screen.modeling import (
    ID2LABEL, LABEL2ID, OTHER_ARCHITECTURES, SCRATCH_CONFIGS, build_other_architecture, CheckpointSafeTrainer, TimeLimitCallback, add_diagnosis_outputs,
    averaged_state_dict, levit_at_resolution, mimetic_initialisation, strip_diagnosis_outputs, trainer_checkpoints,
)
from melanoma_screen.weights import weights_version
from melanoma_screen.transforms import (
    AUGMENTATION_DEFAULTS,
    COLOR_CONSTANCY_METHODS, COLOR_CONSTANCY_NAMES, DermoscopyAugmentation, Preprocess, augmentation_rng,
    balanced_vignette_probabilities, build_image_processor, correct, cropped_lesion_shares, processor_image_size,
)

logger = logging.getLogger("train_vit")

REPO_ROOT = Path(__file__).resolve().parent


@dataclass
class DataArguments(SplitSettings):
    """The split (data_prep.SplitSettings), the external sets and the augmentation."""

    # One --seed, TrainingArguments', seeds the split, the balancing and training alike.
    seed: int = field(default=42, init=False)

    external_dir: Optional[list[str]] = field(
        default=None,
        metadata={"help": "External validation sets ({benign,malignant}/* folders, one or more; the flag can be repeated), "
                          "scored at the end at 0.5 and both stored thresholds. Never trained on, nothing is fitted on them.",
                  "action": "extend"},
    )
    augment_brightness: float = field(default=AUGMENTATION_DEFAULTS["augment_brightness"], metadata={"help": "Random brightness factor range, 1 ± this."})
    augment_contrast: float = field(default=AUGMENTATION_DEFAULTS["augment_contrast"], metadata={"help": "Random contrast factor range, 1 ± this."})
    augment_saturation: float = field(default=AUGMENTATION_DEFAULTS["augment_saturation"], metadata={"help": "Random saturation factor range, 1 ± this."})
    augment_hue: float = field(default=AUGMENTATION_DEFAULTS["augment_hue"], metadata={"help": "Random hue shift, ± this fraction of the colour wheel."})
    augment_white_balance: float = field(default=AUGMENTATION_DEFAULTS["augment_white_balance"], metadata={"help": "Random per-channel gain, 1 ± this (another device's white balance)."})
    augment_vignette: float = field(
        default=AUGMENTATION_DEFAULTS["augment_vignette"],
        metadata={"help": "Probability of drawing a random black circular field of view on a training image of either "
                          "class, so a dermoscope's vignette carries no class information."},
    )
    augment_vignette_balanced: bool = field(
        default=False,
        metadata={"help": "Draw the --augment-vignette vignette more often on the class with fewer natural ones, so that "
                          "after augmentation both classes show a field of view equally often."},
    )
    augment_lesion_size_balanced: bool = field(
        default=False,
        metadata={"help": "Zoom in on the lesion of the classes whose lesions fill less of the frame (benign, in the "
                          "10k set) so that their lesions' share of the frame follows the class with the largest ones "
                          "after its ordinary crop: the lesion's size in the frame, which follows the dermatoscope's "
                          "magnification, then carries no class information."},
    )
    augment_skin_recolour: float = field(
        default=AUGMENTATION_DEFAULTS["augment_skin_recolour"],
        metadata={"help": "Probability of moving the skin around the lesion, and only the skin, to a random skin tone "
                          "under a random light, so the skin's colour carries no class information."},
    )
    augment_acquisition: float = field(
        default=AUGMENTATION_DEFAULTS["augment_acquisition"],
        metadata={"help": "Probability of passing a training image through another camera's chain (random down- and "
                          "up-scaling, blur or sharpening, JPEG quality 30-95), so that image size and compression, "
                          "which differ by source, carry no class information."},
    )
    crop_scale_min: float = field(
        default=AUGMENTATION_DEFAULTS["crop_scale_min"],
        metadata={"help": "Smallest share of the image a random crop keeps; lower lets small lesions fill the frame "
                          "as they do on other devices."},
    )
    shortcut_warn_auc: float = field(default=0.65, metadata={"help": "Warn when one acquisition feature alone predicts the label with this ROC AUC."})


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="google/vit-base-patch16-224-in21k", metadata={"help": "Pretrained ViT on the Hub or a local folder."})
    scratch_config: Optional[str] = field(
        default=None,
        metadata={"help": "Build a ViT (tiny, small, base) from its config instead (offline); levit builds a LeViT-128S the app serves "
                          "as it does a ViT; mobilevitv2 a MobileViTV2, for comparing recipes only (no heat-map, fast "
                          "path or input check).",
                  "choices": list(SCRATCH_CONFIGS) + list(OTHER_ARCHITECTURES)})
    init_from: Optional[str] = field(default=None, metadata={"help": "Local folder with ViT encoder weights we produced (e.g. MAE pretraining)."})
    image_size: Optional[int] = field(
        default=None,
        metadata={"help": "Input resolution: of the model --scratch-config builds (default 224), or a new one for a LeViT "
                          "fine-tuned from --model-name-or-path (its attention-bias tables are resized to the new token grid)."},
    )
    train_last_stages: int = field(
        default=0,
        metadata={"help": "Fine-tune only the last N stages of a LeViT and its heads; the convolutional stem and the "
                          "earlier stages keep their weights and normalisation statistics (surgical fine-tuning, Lee "
                          "et al. 2023). On the benign look-alikes it gained nothing: they are learnt in the early "
                          "layers (docs/model.md). 0 = all."},
    )
    early_learning_rate_scale: float = field(
        default=1.0,
        metadata={"help": "Multiply the learning rate of a LeViT's convolutional stem and first stage by this: "
                          "fine-tunes that froze them gained nothing on the benign look-alikes (docs/model.md), so "
                          "that is where they are learnt (1 = one rate for every layer)."},
    )
    patch_size: int = field(default=16, metadata={"help": "Patch size for --scratch-config."})
    dropout: float = field(default=0.1, metadata={"help": "Hidden and attention dropout for --scratch-config."})
    mimetic_init: bool = field(
        default=False,
        metadata={"help": "With --scratch-config: start each attention layer where a pretrained ViT's sits (W_q W_k^T near "
                          "+I, W_v W_o near -I; Trockman & Kolter 2023) instead of at random."},
    )
    field_of_view_mask: float = field(
        default=0.0,
        metadata={"help": "Black out everything outside one centred circle of this radius (share of the image side) in "
                          "training and inference; saved in the config (0 = off)."},
    )
    color_constancy: str = field(
        default="none",
        metadata={"help": "Colour constancy before the image processor; saved in the config, applied by the app, "
                          "predict.py and evaluate_model.py (a bare transformers pipeline gets it through "
                          "ScreeningModel.pipeline_input). skin_reference: one gain per channel so the skin around "
                          "the lesion takes --skin-reference-rgb.",
                  "choices": list(COLOR_CONSTANCY_METHODS)},
    )
    skin_reference_rgb: Optional[str] = field(
        default=None,
        metadata={"help": "R,G,B (0-255) the skin is normalised to with --color-constancy skin_reference; default: "
                          "the median skin colour of 2,000 training images, measured at the model's input size."},
    )


@dataclass
class ScreeningArguments:
    """What is ours on top of transformers.TrainingArguments: operating-point targets, time limit, averaging."""

    min_sensitivity: float = field(default=0.95, metadata={"help": "Sensitivity the screening threshold must reach on validation."})
    min_specificity: float = field(default=0.95, metadata={"help": "Specificity the high-risk threshold must reach on validation."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Validations without ROC AUC gain before stopping."})
    max_train_minutes: float = field(
        default=0.0,
        metadata={"help": "Stop training after this many minutes, at the next validation, and finish as usual (0 = no limit): "
                          "for a rented machine lent by the minute. The epochs reached are in eval_results.json."},
    )
    diagnosis_head_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an auxiliary loss over the diagnosis (labels.csv's dx: nv, bkl, df, vasc, mel) for "
                          "the training images that have one, from extra outputs of the classifier that are removed "
                          "before saving: the published model keeps its two labels (0 = off)."},
    )
    group_dro_step: float = field(
        default=0.0,
        metadata={"help": "Worst-group training (group DRO, Sagawa et al. 2020) over the (source, class) groups: after "
                          "each batch a group's weight grows by exp(step x its mean loss), and the loss is the weighted "
                          "mean of the groups' losses, so the group the model does worst on is pushed hardest. Inside "
                          "a group, images keep their --balance-diagnoses weights (0 = off; Sagawa et al. use 0.01)."},
    )
    group_dro_by_diagnosis: bool = field(
        default=False,
        metadata={"help": "With --group-dro-step: split each source's benign group by diagnosis group where labels.csv "
                          "names one (nevi; keratosis / lentigo; dermatofibroma / vascular), groups under "
                          f"{MIN_DIAGNOSIS_GROUP} images staying whole, so that the look-alike the model does worst on "
                          "is pushed hardest."},
    )
    lookalike_ranking_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of a pairwise ranking loss (the logistic surrogate of ROC AUC) between each batch's "
                          "melanomas and its benign look-alikes, the benign images whose labels.csv dx is a keratosis, "
                          "lentigo, dermatofibroma or vascular lesion: every melanoma is pushed above every look-alike, "
                          "the ranking the external sets need, whatever the class balance (0 = off)."},
    )
    select_on: str = field(
        default="pooled",
        metadata={"help": "Validation figure that picks the checkpoint (and stops early): pooled ROC AUC, or the mean or "
                          "the worst of the per-source ROC AUCs over sources with at least 10 images of each class in "
                          "validation. Pooled AUC also rewards telling sources apart where their class balances differ.",
                  "choices": ["pooled", "mean_source", "worst_source"]},
    )
    average_last: int = field(
        default=0,
        metadata={"help": "Also try the mean weights of the last N checkpoints; keep it if its validation ROC AUC "
                          "beats the best single checkpoint (0 = off)."},
    )


# Our defaults where TrainingArguments' suit a language model more than a small
# image classifier; every one can still be set on the command line.
TRAINING_DEFAULTS = dict(
    num_train_epochs=10.0,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    learning_rate=1e-4,
    weight_decay=0.05,
    warmup_steps=0.1,
    lr_scheduler_type="cosine",
    logging_steps=10,
    eval_strategy="epoch",
    save_strategy="epoch",
    load_best_model_at_end=True,
    metric_for_best_model="roc_auc",
    greater_is_better=True,
    report_to="none",
    dataloader_pin_memory=False,
    # Without a GPU, several launched processes then form a gloo group
    # (torchrun, or accelerate launch --multi_gpu) instead of each training alone.
    use_cpu=not torch.cuda.is_available(),
)

def parse_args(argv=None):
    """(data, model, screening, training) arguments; TrainingArguments' --seed also seeds the split."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((DataArguments, ModelArguments, ScreeningArguments, TrainingArguments),
                              description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.set_defaults(**TRAINING_DEFAULTS)
    data_args, model_args, screening_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.push_to_hub and not training_args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if training_args.eval_steps and training_args.eval_strategy == "epoch":
        parser.error("--eval_steps needs --eval_strategy steps --save_strategy steps --save_steps N (validation is per epoch by default)")
    data_args.seed = training_args.seed
    return data_args, model_args, screening_args, training_args


# ----------------------------------------------------------------------------- data


def base_split_settings(model_args: ModelArguments) -> Optional[str]:
    """The split settings stored by the run folder being fine-tuned, as JSON; None for a Hub id or a folder without them."""
    results = Path(model_args.model_name_or_path or "") / "eval_results.json"
    if model_args.scratch_config or model_args.init_from or not results.is_file():
        return None
    settings = json.loads(results.read_text()).get("settings") or {}
    if "data" not in settings:
        return None
    return json.dumps({"data": settings["data"], "training": {"seed": (settings.get("training") or {}).get("seed")}})


def load_records(data_args: DataArguments):
    try:
        data = data_prep.training_data(data_args, external_dirs=data_args.external_dir)
    except (ValueError, data_prep.DataSourceError) as error:
        raise SystemExit(f"error: {error}") from error
    for skipped in data["skipped"]:
        logger.warning("skipped %s: %s", skipped["path"], skipped["reason"])
    logger.info("valid images per split and label: %s", data["scan"].counts)
    for source, counts in data["extra_counts"].items():
        logger.info("extra training images from %s: %s", source, counts)
    if data["extra_counts"]:
        logger.info("extra training images dropped as copies of the main dataset's images or of each other: %d",
                    data["extra_dropped"])
    if data["base_split"]:
        summary = data["base_split"]
        logger.info("the base model's split kept: it trained on %d of the %d validation images a fresh split drew; "
                    "validation is now %d of its validation images and %d from sources it never saw",
                    summary["base_trained_on_fresh_validation"], summary["fresh_validation"],
                    summary["validation_from_base"], summary["validation_new"])
    logger.info("images per source and split after the audit: %s", data["sources"])
    logger.info("class counts used for training: %s (weights %s)", data["class_counts"], data["class_weights"])
    # Acquisition cues (a dermoscope's vignette, the skin's colour, image size)
    # that predict the label are shortcuts a model will learn: say so up front.
    data["shortcut_audit"] = shortcut_audit(data["train"] + data["validation"] + data["test"], warn_auc=data_args.shortcut_warn_auc)
    print_shortcut_audit(data["shortcut_audit"])
    for warning in data["shortcut_audit"]["warnings"]:
        logger.warning("shortcut audit: %s", warning)
    data["shortcut_markdown"] = shortcut_markdown(data["shortcut_audit"])
    return data


def natural_vignette_rates(shortcut_audit_report) -> tuple[float, float]:
    """Per label, the share of training images that already show a dermatoscope's field of view.

    Read from the shortcut audit, which measured dark corners on every training
    (and validation) image already.
    """
    train = shortcut_audit_report["features"]["dark_corners"]["per_split"]["train"]
    return tuple(float(train[ID2LABEL[label]]["mean"] or 0.0) for label in (0, 1))


LESION_SIZE_SAMPLE = 1000  # images per class measured for --augment-lesion-size-balanced


def lesion_size_balance(train_records, crop_scale: tuple[float, float], seed: int) -> dict:
    """Per label, the lesion shares to zoom towards (None: the ordinary crop), and what they were measured on.

    The label whose lesions fill most of the frame (median share, on a seeded
    sample of its training images) keeps the ordinary crop; every other label
    is zoomed towards that label's shares after its ordinary crop.
    """
    rng = random.Random(seed)
    shares = {}
    for label in sorted(ID2LABEL):
        paths = [record.path for record in train_records if record.label == label and not record.path.startswith("hub://")]
        sample = rng.sample(paths, min(LESION_SIZE_SAMPLE, len(paths)))
        extents = [lesion_extent(load_rgb_image(path)) for path in tqdm(sample, desc=f"lesion size ({ID2LABEL[label]})",
                                                                        unit="img", leave=False)]
        shares[label] = [extent.share for extent in extents if extent is not None]
    if not all(shares.values()):
        raise SystemExit("--augment-lesion-size-balanced: no lesion was found in one class's training images")
    largest = max(shares, key=lambda label: float(np.median(shares[label])))
    targets = cropped_lesion_shares(shares[largest], crop_scale, rng)
    return {
        "by_label": tuple(None if label == largest else targets for label in sorted(ID2LABEL)),
        "report": {"median_lesion_share": {ID2LABEL[label]: float(np.median(values)) for label, values in shares.items()},
                   "images_measured": {ID2LABEL[label]: len(values) for label, values in shares.items()},
                   "zoomed_towards": ID2LABEL[largest],
                   "target_share_deciles": [round(value, 4) for value in targets[::10]]},
    }


def make_transforms(image_processor, data_args: DataArguments, color_constancy: str = "none", field_of_view_mask: float = 0.0,
                    skin_reference=None, vignette_by_label=None, lesion_share_by_label=None):
    augment = DermoscopyAugmentation(
        image_size=processor_image_size(image_processor),
        crop_scale=(data_args.crop_scale_min, 1.0),
        vignette=data_args.augment_vignette,
        vignette_by_label=vignette_by_label,
        lesion_share_by_label=lesion_share_by_label,
        skin_recolour=data_args.augment_skin_recolour,
        brightness=data_args.augment_brightness,
        contrast=data_args.augment_contrast,
        saturation=data_args.augment_saturation,
        hue=data_args.augment_hue,
        white_balance=data_args.augment_white_balance,
        acquisition=data_args.augment_acquisition,
    )

    # Colour constancy comes after the augmentation, as it would after a real
    # device's colour shift: the jitter teaches what it cannot undo.
    def train_transform(batch):
        images = [correct(augment(load_rgb_image(image, min_side=1), augmentation_rng(), label), color_constancy,
                          field_of_view_mask, skin_reference)
                  for image, label in zip(batch["image"], batch["label"])]
        labels = batch["label"]
        if "sample_weight" in batch:  # packed for screening_loss: (label, diagnosis id or -1, weight, group id, look-alike)
            labels = [[label, dx, weight, group, lookalike] for label, dx, weight, group, lookalike
                      in zip(labels, batch["dx_id"], batch["sample_weight"], batch["group_id"], batch["lookalike"])]
        return {"pixel_values": image_processor(images, return_tensors="pt")["pixel_values"], "labels": labels}

    # The app's own preprocessing, so validation scores what the app will.
    preprocess = Preprocess(image_processor, color_constancy, field_of_view_mask, skin_reference)

    def eval_transform(batch):
        pixel_values, _ = preprocess([load_rgb_image(image, min_side=1) for image in batch["image"]])
        return {"pixel_values": torch.from_numpy(pixel_values), "labels": batch["label"]}

    return train_transform, eval_transform


def skin_reference_colour(model_args: ModelArguments, train_records, image_processor, seed: int) -> tuple:
    """--skin-reference-rgb, or the median skin colour of the training images as the model will see them (resized)."""
    if model_args.skin_reference_rgb:
        try:
            reference = tuple(float(value) for value in model_args.skin_reference_rgb.split(","))
        except ValueError:
            reference = ()
        if len(reference) != 3 or not all(1 <= value <= 255 for value in reference):
            raise SystemExit(f"--skin-reference-rgb {model_args.skin_reference_rgb!r}: give three numbers 1-255, e.g. 216,170,166")
        return reference
    size = processor_image_size(image_processor)
    local = [record for record in train_records if not record.path.startswith("hub://")]
    if not local:
        raise SystemExit("--color-constancy skin_reference on a Hub dataset needs --skin-reference-rgb R,G,B")

    def resized(path):
        return lambda: load_rgb_image(path).resize((size, size), image_processor.resample)

    return reference_skin_colour([resized(record.path) for record in local], seed=seed)


def collate(examples):
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


# ----------------------------------------------------------------------------- model


def stem_and_stages(model, option: str):
    """(stem, stages) of a model the staged options apply to (a LeViT); a clear exit for any other."""
    adapter = adapter_for(model)
    if adapter is None or adapter.stem_and_stages is None:
        raise SystemExit(f"{option} applies to a LeViT; this model is a {model.config.model_type}.")
    return adapter.stem_and_stages(model)


def train_only_last_stages(model, stages: int) -> str:
    """Freeze a LeViT's stem and all but its last `stages` stages, in place; a sentence for the card.

    The frozen BatchNorm layers normalise with their stored statistics in training too, as they will at inference:
    Trainer puts the whole model in training mode each step, and batch statistics of the new source mix would both
    move the stored ones and feed the trained stages inputs they never see afterwards.
    """
    stem, encoder_stages = stem_and_stages(model, "--train-last-stages")
    if not 0 < stages <= len(encoder_stages):
        raise SystemExit(f"--train-last-stages takes 1 to {len(encoder_stages)} for this LeViT, not {stages}.")
    frozen = [stem, *encoder_stages[:len(encoder_stages) - stages]]
    for part in frozen:
        for parameter in part.parameters():
            parameter.requires_grad_(False)
        for module in part.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(lambda layer, _: setattr(layer, "training", False))
    return f", only its last {stages} of {len(encoder_stages)} stages and heads trained"


def early_layer_optimizer(model, training_args, scale: float) -> torch.optim.Optimizer:
    """AdamW as Trainer builds it (biases not decayed), with a LeViT's stem and first stage at scale times the rate.

    Trainer's schedule multiplies each group's own rate, so the ratio holds through warm-up and decay.
    """
    stem, encoder_stages = stem_and_stages(model, "--early-learning-rate-scale")
    early = {id(parameter) for part in (stem, encoder_stages[0]) for parameter in part.parameters()}
    groups: dict = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in early, not name.endswith(".bias")), []).append(parameter)
    rate, decay = training_args.learning_rate, training_args.weight_decay
    return torch.optim.AdamW(
        [{"params": parameters, "lr": rate * (scale if is_early else 1.0), "weight_decay": decay if decayed else 0.0}
         for (is_early, decayed), parameters in groups.items()],
        lr=rate, betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon)


def build_model(model_args: ModelArguments, seed: int):
    """Returns (model, image_processor, base_model id or None, a sentence on the initialisation)."""
    label_kwargs = dict(num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID)
    scratch_size = model_args.image_size or 224
    if model_args.scratch_config in OTHER_ARCHITECTURES:
        if model_args.mimetic_init:
            raise SystemExit("--mimetic-init is defined for ViT attention layers; it does not apply to "
                             f"--scratch-config {model_args.scratch_config}.")
        model = build_other_architecture(model_args.scratch_config, scratch_size, **label_kwargs)
        return (model, build_image_processor(scratch_size), None,
                f"{type(model).__name__} ({model_args.scratch_config}) trained from random initialisation")
    if model_args.scratch_config:
        config = ViTConfig(
            **SCRATCH_CONFIGS[model_args.scratch_config],
            image_size=scratch_size,
            patch_size=model_args.patch_size,
            hidden_dropout_prob=model_args.dropout,
            attention_probs_dropout_prob=model_args.dropout,
            **label_kwargs,
        )
        model = ViTForImageClassification(config)
        processor = build_image_processor(scratch_size)
        if model_args.mimetic_init:
            mimetic_initialisation(model, seed)
            return model, processor, None, f"ViT-{model_args.scratch_config} trained from mimetic initialisation (Trockman & Kolter 2023)"
        return model, processor, None, f"ViT-{model_args.scratch_config} trained from random initialisation"
    source = model_args.init_from or model_args.model_name_or_path
    resized = ""
    if model_args.init_from and not Path(source).is_dir():
        raise SystemExit(f"--init-from {source} is not a folder with ViT encoder weights.")
    try:
        # Through the Auto class, so a LeViT folder (the shipped model/) fine-tunes like a ViT one.
        model = load_network(source, ignore_mismatched_sizes=True, **label_kwargs)
        # A fine-tuned model is not the one it started from: without this its config.json would
        # claim the base folder's published name and weights version (melanoma_screen.identity).
        for inherited in ("model_name", "model_version"):
            if hasattr(model.config, inherited):
                delattr(model.config, inherited)
        try:
            processor = load_processor(source)
        except OSError:
            processor = build_image_processor(int(model.config.image_size))
        if model_args.image_size and model_args.image_size != int(model.config.image_size):
            if not resizable(model):
                allowed = " or ".join(adapter.model_type for adapter in ADAPTERS.values() if adapter.resizable)
                raise SystemExit(f"--image-size changes the input size of a {allowed} only; "
                                 f"{source} is a {model.config.model_type}.")
            model = levit_at_resolution(model, model_args.image_size)
            resized = f", resized to {model_args.image_size} px"
            processor = build_image_processor(model_args.image_size, processor.image_mean, processor.image_std)
    except OSError as error:
        raise SystemExit(
            f"Could not load '{source}' ({error.__class__.__name__}). Offline, pass a local folder, "
            "--init-from DIR, or --scratch-config tiny|small|base."
        ) from error
    how = "initialised from our self-supervised encoder" if model_args.init_from else "fine-tuned from"
    name = display_name(model.config.model_type)
    local = Path(source).is_dir()
    # A folder's name says little once it is replaced (model/ is): its weights' version names it for good.
    has_weights = local and (Path(source) / "model.safetensors").is_file()
    origin = f"{source} (weights {weights_version(Path(source))})" if has_weights else source
    return model, processor, (None if local else source), f"{name} {how} {origin}{resized}"


# ----------------------------------------------------------------------------- metrics


def malignant_probability(logits, config, temperature: float = 1.0) -> np.ndarray:
    return calibration.softmax_probs(np.asarray(logits), temperature)[:, malignant_index(config)]


SELECTION_METRICS = {"pooled": "roc_auc", "mean_source": "mean_source_auc", "worst_source": "worst_source_auc"}
MIN_SOURCE_IMAGES_PER_CLASS = 10  # below this a source's validation AUC is noise, and left out of the selection


def validation_figures(labels, prob, sources) -> dict:
    """Pooled ROC AUC and the mean and worst of the per-source ones (sources with both classes in validation)."""
    report = metrics.binary_metrics(labels, prob)
    per_source = metrics.auc_per_source(labels, prob, sources, MIN_SOURCE_IMAGES_PER_CLASS)
    auc = report["roc_auc"]
    return {
        "roc_auc": float("nan") if auc is None else auc,
        "mean_source_auc": float(np.mean(list(per_source.values()))) if per_source else float("nan"),
        "worst_source_auc": min(per_source.values()) if per_source else float("nan"),
        "accuracy": report["accuracy"],
        "sensitivity": report["sensitivity"],
        "specificity": report["specificity"],
    }


def compute_validation_metrics(eval_prediction, sources):
    # The first two outputs: during training the classifier may carry diagnosis outputs after them.
    logits, labels = np.asarray(eval_prediction.predictions)[:, : len(ID2LABEL)], eval_prediction.label_ids
    return validation_figures(labels, calibration.softmax_probs(logits)[:, LABEL2ID["malignant"]], sources)


LOOKALIKE_GROUPS = ("keratosis / lentigo / melanosis", "dermatofibroma / vascular")


def is_lookalike(record) -> bool:
    """A benign image whose diagnosis is one the model reads as melanoma (a keratosis, lentigo, DF or vascular lesion)."""
    return record.label == LABEL2ID["benign"] and benign_diagnosis_group(record.dx) in LOOKALIKE_GROUPS


def screening_loss(class_weights, label_smoothing, diagnosis_weight: float = 0.0, group_names=(), group_dro_step: float = 0.0,
                   lookalike_ranking_weight: float = 0.0):
    """Cross-entropy on benign/malignant, weighted per class or per image, plus the diagnosis loss if asked.

    Training batches may carry labels packed as (label, diagnosis id or -1,
    image weight, group id, look-alike flag) rows (make_transforms); validation's are plain
    labels. With group_dro_step, the screening term is group DRO's: the groups'
    weighted mean losses, mixed by weights that the function keeps between
    batches (its group_weights attribute). With lookalike_ranking_weight, a
    pairwise term asks every melanoma of the batch to outscore every benign
    look-alike of it: cross-entropy scores each image alone, and the look-alikes
    are a few percent of a batch, so their ranking against melanoma barely
    moves it.
    """
    class_weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    group_weight = torch.full((len(group_names),), 1.0 / max(1, len(group_names)))

    def compute_loss(outputs, labels, num_items_in_batch=None):
        nonlocal group_weight
        logits = outputs["logits"]
        screening_logits = logits[:, : len(ID2LABEL)]
        if labels.dim() == 1:
            return torch.nn.functional.cross_entropy(
                screening_logits, labels,
                weight=None if class_weight is None else class_weight.to(logits.device), label_smoothing=label_smoothing)
        label, diagnosis, weight = labels[:, 0].long(), labels[:, 1].long(), labels[:, 2].float()
        per_image = torch.nn.functional.cross_entropy(screening_logits, label, reduction="none", label_smoothing=label_smoothing)
        if group_dro_step:
            # Each group is one class, so the class weights have nothing left to balance.
            group = labels[:, 3].long()
            one_hot = torch.nn.functional.one_hot(group, len(group_names)).float() * weight[:, None]
            present = one_hot.sum(0) > 0
            group_loss = (one_hot * per_image[:, None]).sum(0) / one_hot.sum(0).clamp(min=1e-12)
            group_weight = group_weight.to(logits.device)
            with torch.no_grad():
                grown = group_weight * torch.exp(group_dro_step * group_loss.detach() * present)
                group_weight = grown / grown.sum()
            mix = group_weight * present
            loss = (mix * group_loss).sum() / mix.sum()
            compute_loss.group_weights = dict(zip(group_names, group_weight.tolist()))
        else:
            if class_weight is not None:
                weight = weight * class_weight.to(logits.device)[label]
            loss = (weight * per_image).sum() / weight.sum()
        known = diagnosis >= 0
        if diagnosis_weight and known.any() and logits.shape[1] > len(ID2LABEL):
            per_dx = torch.nn.functional.cross_entropy(logits[known, len(ID2LABEL):], diagnosis[known], reduction="none")
            loss = loss + diagnosis_weight * (weight[known] * per_dx).sum() / weight[known].sum()
        if lookalike_ranking_weight and labels.shape[1] > 4:
            melanoma, lookalike = label == LABEL2ID["malignant"], labels[:, 4] > 0
            if melanoma.any() and lookalike.any():
                margin = screening_logits[:, LABEL2ID["malignant"]] - screening_logits[:, LABEL2ID["benign"]]
                pairs = margin[lookalike][None, :] - margin[melanoma][:, None]
                loss = loss + lookalike_ranking_weight * torch.nn.functional.softplus(pairs).mean()
        return loss

    return compute_loss


def score_external(trainer, dataset, records, operating_points) -> dict:
    labels = np.array([r.label for r in records])
    prob = malignant_probability(trainer.predict(dataset).predictions, trainer.model.config)
    screening, high_risk = operating_points["screening_threshold"], operating_points["high_risk_threshold"]
    report = metrics.at_operating_points(labels, prob, screening, high_risk)
    # Where the score shift shows: the benign lesions' mean score, and what 90% sensitivity would cost there.
    report["by_source"] = metrics.by_source(labels, prob, ["all"] * len(labels), screening, high_risk)["all"]
    # Melanoma against each group of benign look-alikes, where the set names diagnoses (derm7pt's labels.csv).
    report["auc_by_benign_group"] = metrics.auc_against_benign_groups(
        labels, prob, [benign_diagnosis_group(record.dx) for record in records])
    return report


def selection_score(trainer, val_dataset, val_records, select_on: str) -> float:
    """The --select-on validation figure of the model as it stands."""
    logits = np.asarray(trainer.predict(val_dataset).predictions)[:, : len(ID2LABEL)]
    figures = validation_figures([r.label for r in val_records], calibration.softmax_probs(logits)[:, LABEL2ID["malignant"]],
                                 [r.source for r in val_records])
    return figures[SELECTION_METRICS[select_on]]


def select_checkpoint_or_average(trainer, val_dataset, data, screening_args) -> dict:
    """Keep the best single checkpoint (already loaded) or the mean of the last N, by the --select-on validation figure."""
    best = {"checkpoint": trainer.state.best_model_checkpoint, "validation_roc_auc": trainer.state.best_metric,
            "metric": SELECTION_METRICS[screening_args.select_on]}
    if screening_args.average_last < 2:
        return {"chosen": "best checkpoint", "best_checkpoint": best}
    checkpoints = trainer_checkpoints(trainer.args.output_dir)[-screening_args.average_last:]
    if len(checkpoints) < 2:
        return {"chosen": "best checkpoint", "best_checkpoint": best, "average": "fewer than 2 checkpoints on disk"}
    best_state = {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(averaged_state_dict(type(trainer.model), checkpoints))
    averaged = {"checkpoints": [Path(path).name for path in checkpoints],
                "validation_roc_auc": selection_score(trainer, val_dataset, data["validation"], screening_args.select_on)}
    logger.info("validation ROC AUC: best checkpoint %.4f, mean of last %d checkpoints %.4f",
                best["validation_roc_auc"], len(checkpoints), averaged["validation_roc_auc"])
    if averaged["validation_roc_auc"] > best["validation_roc_auc"]:
        return {"chosen": "average", "best_checkpoint": best, "average": averaged}
    trainer.model.load_state_dict(best_state)
    return {"chosen": "best checkpoint", "best_checkpoint": best, "average": averaged}


# ----------------------------------------------------------------------------- train


def build_trainer(model, image_processor, train_dataset, val_dataset, val_records, class_weights, screening_args, training_args,
                  group_names=(), optimizer=None):
    """A Trainer that validates by ROC AUC each epoch (or as --eval_strategy says) and ends on the best checkpoint."""
    if training_args.save_total_limit is None:
        # Trainer counts a kept older best checkpoint against the limit: +1 leaves the last N.
        training_args.save_total_limit = max(2, screening_args.average_last + 1)
    logger.info("process %d of %d (%s)", training_args.process_index, training_args.world_size, training_args.parallel_mode)
    return CheckpointSafeTrainer(
        model=model,
        args=training_args,
        data_collator=collate,
        train_dataset=train_dataset,
        eval_dataset=val_dataset,
        processing_class=image_processor,
        compute_metrics=partial(compute_validation_metrics, sources=[record.source for record in val_records]),
        compute_loss_func=screening_loss(class_weights, training_args.label_smoothing_factor,
                                         screening_args.diagnosis_head_weight, group_names, screening_args.group_dro_step,
                                         screening_args.lookalike_ranking_weight),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=screening_args.early_stopping_patience),
                   *([TimeLimitCallback(screening_args.max_train_minutes)] if screening_args.max_train_minutes else [])],
        optimizers=(optimizer, None),
    )


# ----------------------------------------------------------------------------- calibrate and report


def calibrate(trainer, val_dataset, val_records, screening_args) -> dict:
    """Fit the temperature and both thresholds, fold them into the model and its config.

    Everything comes from validation only; the test split is touched once, in
    calibrate_and_report, for the report.
    """
    val_labels = np.array([record.label for record in val_records])
    val_logits = trainer.predict(val_dataset).predictions
    temperature = calibration.fit_temperature(val_logits, val_labels)
    val_prob = malignant_probability(val_logits, trainer.model.config, temperature)
    operating_points = calibration.choose_operating_points(
        val_labels, val_prob, min_sensitivity=screening_args.min_sensitivity, min_specificity=screening_args.min_specificity
    )
    val_sources = [record.source for record in val_records]
    calibration.fold_temperature_into_classifier(trainer.model, temperature)
    trainer.model.config.update(calibration.operating_point_config(operating_points, temperature))
    return {"temperature": temperature, "operating_points": operating_points,
            "validation": metrics.binary_metrics(val_labels, val_prob, threshold=operating_points["screening_threshold"]),
            "validation_by_source": metrics.by_source(val_labels, val_prob, val_sources, operating_points["screening_threshold"],
                                                      operating_points["high_risk_threshold"]),
            "validation_auc_by_source": metrics.auc_per_source(val_labels, val_prob, val_sources, MIN_SOURCE_IMAGES_PER_CLASS)}


def calibrate_and_report(trainer, data, val_dataset, test_dataset, eval_transform, args, checkpoint_selection, command):
    """(eval_results.json's content, (test labels, calibrated and uncalibrated P(malignant)) or None for the plots)."""
    data_args, model_args, screening_args, training_args = args
    calibrated = calibrate(trainer, val_dataset, data["validation"], screening_args)
    operating_points, temperature = calibrated["operating_points"], calibrated["temperature"]
    report = {
        "operating_points": operating_points,
        "calibration_temperature": temperature,
        "validation_at_screening_threshold": calibrated["validation"],
        # The thresholds are chosen on the pooled validation set; here is what they give on each of its sources.
        "validation_by_source": calibrated["validation_by_source"],
        "validation_auc_by_source": calibrated["validation_auc_by_source"],
        "sample_weights_by_group": data.get("weight_summary"),
        "diagnoses": data.get("diagnoses"),
        "class_counts_used": data["class_counts"],
        "class_weights": data["class_weights"],
        "split_sizes": {"train": len(data["train"]), "validation": len(data["validation"]), "test": len(data["test"])},
        "skipped_files": data["skipped"],
        "duplicate_audit": data["audit"]["summary"],
        "shortcut_audit": data["shortcut_audit"],
        "dropped_duplicates": len(data["dropped"]),
        "color_constancy": model_args.color_constancy,
        "vignette_balance": data.get("vignette_balance"),
        "lesion_size_balance": data.get("lesion_size_balance"),
        "checkpoint_selection": checkpoint_selection,
        "group_dro_weights": getattr(trainer.compute_loss_func, "group_weights", None),
        "epochs_trained": trainer.state.epoch,
        "train_minutes": next((entry["train_runtime"] / 60 for entry in reversed(trainer.state.log_history)
                               if "train_runtime" in entry), None),
        "command": command,
    }
    test_scores = None
    if test_dataset is not None:
        # The classifier now holds the temperature, so these logits are calibrated.
        test_logits = trainer.predict(test_dataset).predictions
        test_labels = np.array([r.label for r in data["test"]])
        test_prob = malignant_probability(test_logits, trainer.model.config)
        test_prob_uncalibrated = malignant_probability(test_logits * temperature, trainer.model.config)
        report["test"] = metrics.at_operating_points(test_labels, test_prob, operating_points["screening_threshold"],
                                                     operating_points["high_risk_threshold"])
        report["test_ece_uncalibrated"] = metrics.expected_calibration_error(test_labels, test_prob_uncalibrated)
        test_scores = (test_labels, test_prob, test_prob_uncalibrated)
    else:
        report["test"] = None
        logger.warning("no test split: the report holds validation figures only")
    # Scored with the thresholds from validation, as a user elsewhere would get
    # them: nothing is fitted here, so these figures show how far they move.
    report["external"] = {
        name: score_external(trainer, to_dataset(records).with_transform(eval_transform), records, operating_points)
        for name, records in data["external"].items()
    }
    report["sources"] = data["sources"]
    report["base_split"] = data["base_split"]
    # The seed sits under "training" with TrainingArguments', where SplitSettings.from_stored reads it.
    report["settings"] = {"data": data_args.stored(), "model": asdict(model_args), "screening": asdict(screening_args),
                          "training": training_args.to_dict()}
    return report, test_scores


def save_outputs(output_dir: Path, trainer, image_processor, report, test_scores, card_context, data) -> None:
    """The model folder: weights, eval_results.json, plots, model card and input check, then the summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    # save_pretrained rather than trainer.save_model: the latter adds a pickled training_args.bin.
    trainer.model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    (output_dir / "eval_results.json").write_text(json.dumps(report, indent=2))
    if test_scores is not None:
        test_labels, test_prob, test_prob_uncalibrated = test_scores
        plots.save_roc_curve(test_labels, test_prob, output_dir / "roc_curve.png", operating_points=report["operating_points"])
        plots.save_confusion_matrix(report["test"]["at_screening_threshold"]["confusion_matrix"], output_dir / "confusion_matrix.png")
        plots.save_reliability_diagram(test_labels, test_prob_uncalibrated, test_prob, output_dir / "reliability_diagram.png")
    write_model_card(output_dir, REPO_ROOT / "model_card.md", card_context)
    logger.info("saved model, eval_results.json, plots and model card to %s", output_dir)
    from fit_input_check import fit_after_training  # refuses what this model cannot judge (app, /predict)
    fit_after_training(output_dir, data["train"], data["validation"])
    print_summary(report)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    data_args, model_args, screening_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    command = "python " + " ".join(shlex.quote(arg) for arg in [Path(sys.argv[0]).name, *sys.argv[1:]])
    # The model folder stays what a user downloads; Trainer's checkpoints go one level down.
    training_args.output_dir = str(output_dir / "checkpoints")
    # The Hub push is ours, after the output is complete; Trainer's would try to
    # create the repo at start-up and die offline before training.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    # with_transform datasets hold only the raw 'image' column, which Trainer would drop.
    training_args.remove_unused_columns = False
    if screening_args.select_on != "pooled":
        training_args.metric_for_best_model = SELECTION_METRICS[screening_args.select_on]

    if data_args.keep_split_of is None:
        data_args.keep_split_of = base_split_settings(model_args)
    data = load_records(data_args)
    if not data["train"] or not data["validation"]:
        raise SystemExit("Not enough valid training images to carve a validation split.")
    model, image_processor, base_model, init_description = build_model(model_args, training_args.seed)
    if model_args.train_last_stages:
        init_description += train_only_last_stages(model, model_args.train_last_stages)
    model.config.color_constancy = model_args.color_constancy
    model.config.field_of_view_mask = model_args.field_of_view_mask
    skin_reference = None
    if model_args.color_constancy == "skin_reference":
        skin_reference = skin_reference_colour(model_args, data["train"], image_processor, training_args.seed)
        model.config.skin_reference_rgb = list(skin_reference)
        logger.info("skin reference colour (RGB): %s", skin_reference)
    if model_args.color_constancy != "none":
        init_description += f", inputs corrected with {COLOR_CONSTANCY_NAMES[model_args.color_constancy]} colour constancy"
        if skin_reference:
            init_description += " (skin around the lesion brought to RGB " + ", ".join(f"{c:g}" for c in skin_reference) + ")"
    if model_args.field_of_view_mask:
        init_description += f", every image masked to a centred circle of radius {model_args.field_of_view_mask:g} of its side"
    vignette_by_label = None
    if data_args.augment_vignette_balanced and data_args.augment_vignette > 0:
        natural = natural_vignette_rates(data["shortcut_audit"])
        vignette_by_label = balanced_vignette_probabilities(natural, data_args.augment_vignette)
        data["vignette_balance"] = {"natural_rates": dict(zip(ID2LABEL.values(), natural)),
                                    "vignette_probabilities": dict(zip(ID2LABEL.values(), vignette_by_label))}
        logger.info("vignette augmentation per label: %s", data["vignette_balance"])
    lesion_share_by_label = None
    if data_args.augment_lesion_size_balanced:
        balance = lesion_size_balance(data["train"], (data_args.crop_scale_min, 1.0), training_args.seed)
        lesion_share_by_label, data["lesion_size_balance"] = balance["by_label"], balance["report"]
        logger.info("lesion-size balanced crop: %s", data["lesion_size_balance"])
    train_transform, eval_transform = make_transforms(image_processor, data_args, model_args.color_constancy,
                                                      model_args.field_of_view_mask, skin_reference, vignette_by_label,
                                                      lesion_share_by_label)
    diagnoses = sorted({record.dx for record in data["train"] if record.dx}) if screening_args.diagnosis_head_weight else []
    if diagnoses:
        add_diagnosis_outputs(model, diagnoses)
        logger.info("auxiliary diagnosis outputs (weight %g): %s", screening_args.diagnosis_head_weight, diagnoses)
    packed, group_names = {}, []
    if data["sample_weights"] or diagnoses or screening_args.group_dro_step or screening_args.lookalike_ranking_weight:
        group_ids, group_names = source_class_groups(data["train"], by_diagnosis=screening_args.group_dro_by_diagnosis)
        packed = {"sample_weight": data["sample_weights"] or [1.0] * len(data["train"]),
                  "dx_id": [diagnoses.index(record.dx) if record.dx in diagnoses else -1 for record in data["train"]],
                  "group_id": group_ids, "lookalike": [int(is_lookalike(record)) for record in data["train"]]}
        if screening_args.group_dro_step:
            logger.info("group DRO (step %g) over %s", screening_args.group_dro_step, group_names)
    train_dataset = to_dataset(data["train"], **packed).with_transform(train_transform)
    val_dataset = to_dataset(data["validation"]).with_transform(eval_transform)
    test_dataset = to_dataset(data["test"]).with_transform(eval_transform) if data["test"] else None

    optimizer = None
    if model_args.early_learning_rate_scale != 1.0:
        optimizer = early_layer_optimizer(model, training_args, model_args.early_learning_rate_scale)
        init_description += f", its stem and first stage at {model_args.early_learning_rate_scale:g} times the learning rate"
    trainer = build_trainer(model, image_processor, train_dataset, val_dataset, data["validation"], data["class_weights"],
                            screening_args, training_args, group_names if screening_args.group_dro_step else (), optimizer)
    resume_from = training_args.resume_from_checkpoint
    if resume_from == "last":
        resume_from = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        logger.info("resuming from %s", resume_from or "scratch (no checkpoint found)")
    trainer.train(resume_from_checkpoint=resume_from)
    checkpoint_selection = select_checkpoint_or_average(trainer, val_dataset, data, screening_args)
    strip_diagnosis_outputs(trainer.model)
    # Its per-source figures are validation's; the test and external predictions compute their own.
    trainer.compute_metrics = None

    report, test_scores = calibrate_and_report(trainer, data, val_dataset, test_dataset, eval_transform,
                                               (data_args, model_args, screening_args, training_args),
                                               checkpoint_selection, command)
    if not trainer.is_world_process_zero():
        return
    save_outputs(output_dir, trainer, image_processor, report, test_scores,
                 model_card_context(screening_args, training_args, model_args, data_args, data, report, base_model,
                                    init_description, model, command, output_dir),
                 data)

    if push_to_hub:
        try:
            url = push_folder_to_hub(output_dir, training_args.hub_model_id, private=bool(training_args.hub_private_repo))
            logger.info("pushed to %s", url)
        except HubPushError as error:
            print(error, file=sys.stderr)
            raise SystemExit(2)


def model_card_context(screening_args, training_args, model_args, data_args, data, report, base_model, init_description,
                       model, command, output_dir):
    summary = data["audit"]["summary"]
    audit_summary = (
        f"{summary['exact_groups']} exact-duplicate groups ({summary['exact_cross_split']} across train/test) and "
        f"{summary['near_groups']} near-duplicate groups ({summary['near_cross_split']} across train/test); "
        f"duplicate groups were kept on one side of the validation split, and {len(data['dropped'])} train images "
        + ("were dropped (--drop-duplicates)." if data_args.drop_duplicates else "were dropped (run without --drop-duplicates).")
    )
    return dict(
        model_id=training_args.hub_model_id or output_dir.name,
        base_model=base_model,
        init_description=init_description,
        model_type=model.config.model_type,
        dataset_id=data_args.dataset_name or Path(data_args.data_dir).name,
        dataset_description="Melanoma Skin Cancer Dataset of 10000 Images (Kaggle, M. H. Javid), derived from the ISIC archive"
        + "".join(f"; extra training images from `{Path(folder).name}`" for folder in data_args.extra_train_dir or []),
        command=command,
        image_size=int(model.config.image_size),
        n_parameters=sum(p.numel() for p in model.parameters()),
        class_counts_used=data["class_counts"],
        split_sizes=report["split_sizes"],
        temperature=report["calibration_temperature"],
        screening_threshold=report["operating_points"]["screening_threshold"],
        high_risk_threshold=report["operating_points"]["high_risk_threshold"],
        min_sensitivity=screening_args.min_sensitivity,
        min_specificity=screening_args.min_specificity,
        test=report["test"],
        validation_metrics=report["validation_at_screening_threshold"],
        audit_summary=audit_summary,
        color_constancy=model_args.color_constancy,
        field_of_view_mask=model_args.field_of_view_mask,
        external=report.get("external"),
        sources=report.get("sources"),
        shortcut_audit=data.get("shortcut_markdown"),
        license="cc-by-nc-4.0",
        date=date.today().isoformat(),
    )


def print_summary(report):
    rows = [("validation @ screening", report["validation_at_screening_threshold"])]
    sets = ([("test", report["test"])] if report["test"] else []) + list(report["external"].items())
    for source, result in sets:
        rows += [(f"{source[:13]} @ 0.5", result["at_0_5"]), (f"{source[:13]} @ screening", result["at_screening_threshold"])]
    print(f"\n{'':24s} {'AUC':>6s} {'acc':>6s} {'sens':>6s} {'spec':>6s} {'ECE':>6s}")
    for name, m in rows:
        auc = "  n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        print(f"{name:24s} {auc:>6s} {m['accuracy']:6.3f} {m['sensitivity']:6.3f} {m['specificity']:6.3f} {m['ece']:6.3f}")
    points = report["operating_points"]
    print(f"temperature={report['calibration_temperature']:.3f} screening_threshold={points['screening_threshold']:.4f} "
          f"high_risk_threshold={points['high_risk_threshold']:.4f}")


if __name__ == "__main__":
    main()
