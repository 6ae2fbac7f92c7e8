"""Self-supervised masked-autoencoder pretraining of a ViT encoder on dermoscopy images.

No pretrained weights can be downloaded where this model is built, and a ViT
trained from scratch on 9.6k labelled images transfers poorly to other
clinics. MAE (He et al. 2022) learns an encoder from the images alone: no
labels are read, and only the train split is used, never test.

    python pretrain_mae.py --data-dir ../shared/data/melanoma_cancer_dataset --output-dir runs/mae --epochs 40
    python train_vit.py --data-dir ... --init-from runs/mae/encoder --output-dir runs/vit-mae

The encoder is saved in ViTModel format in OUTPUT/encoder, with its image
processor, so `train_vit.py --init-from` loads it like any ViT checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser, TrainingArguments, ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel, set_seed
from transformers.trainer_utils import get_last_checkpoint

import data_prep
from data_prep import SplitSettings, to_dataset
from melanoma_screen.images import load_rgb_image
from melanoma_screen.modeling import SCRATCH_CONFIGS, CheckpointSafeTrainer, TimeLimitCallback
from melanoma_screen.transforms import DermoscopyAugmentation, augmentation_rng, build_image_processor

logger = logging.getLogger("pretrain_mae")


@dataclass
class PretrainArguments:
    output_dir: str = field(metadata={"help": "Checkpoints go to OUTPUT/checkpoints, the encoder to OUTPUT/encoder."})
    scratch_config: str = field(default="tiny", metadata={"help": "Encoder size.", "choices": list(SCRATCH_CONFIGS)})
    image_size: int = field(default=128)
    patch_size: int = field(default=16)
    mask_ratio: float = field(default=0.75, metadata={"help": "Share of patches hidden from the encoder."})
    decoder_hidden_size: int = field(default=128)
    decoder_layers: int = field(default=4)
    epochs: float = field(default=40.0)
    max_steps: int = field(default=-1)
    batch_size: int = field(default=64)
    base_learning_rate: float = field(default=6e-4, metadata={"help": "Learning rate per 256 images of batch: the one used is this x batch-size / 256, as MAE scales it."})
    learning_rate: Optional[float] = field(default=None, metadata={"help": "Use this learning rate as it is instead of the scaled base."})
    weight_decay: float = field(default=0.05)
    warmup_ratio: float = field(default=0.05)
    max_train_minutes: float = field(default=0.0, metadata={"help": "Stop at the end of the first epoch past this many minutes (0 = no limit)."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps, so an interruption loses little."})
    num_workers: int = field(default=0)
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in OUTPUT/checkpoints."})


def build_mae(args: PretrainArguments) -> ViTMAEForPreTraining:
    encoder = SCRATCH_CONFIGS[args.scratch_config]
    config = ViTMAEConfig(
        **encoder,
        image_size=args.image_size,
        patch_size=args.patch_size,
        mask_ratio=args.mask_ratio,
        decoder_hidden_size=args.decoder_hidden_size,
        decoder_num_hidden_layers=args.decoder_layers,
        decoder_num_attention_heads=max(1, args.decoder_hidden_size // 32),
        decoder_intermediate_size=4 * args.decoder_hidden_size,
        # Per-patch normalised targets give better representations (MAE paper, Table 1d).
        norm_pix_loss=True,
    )
    return ViTMAEForPreTraining(config)


def export_encoder(mae: ViTMAEForPreTraining, args: PretrainArguments, target: Path) -> Path:
    """Save the MAE encoder as a plain ViTModel; the decoder is thrown away, as in the paper."""
    encoder_config = ViTConfig(**SCRATCH_CONFIGS[args.scratch_config], image_size=args.image_size, patch_size=args.patch_size)
    encoder = ViTModel(encoder_config, add_pooling_layer=False)
    prefix = "vit."
    weights = {key[len(prefix):]: value for key, value in mae.state_dict().items() if key.startswith(prefix)}
    encoder.load_state_dict(weights, strict=True)
    encoder.save_pretrained(target)
    build_image_processor(args.image_size).save_pretrained(target)
    return target


def main(argv=None):
    parser = HfArgumentParser((SplitSettings, PretrainArguments), description=__doc__.split("\n\n")[0])
    split, args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(split.seed)
    # The same split flags as train_vit.py's, so its validation images stay unseen; copies of
    # test images are always dropped: even unlabelled, one seen in pretraining would flatter the test report.
    try:
        data = data_prep.training_data(dataclasses.replace(split, drop_duplicates=True))
    except (ValueError, data_prep.DataSourceError) as error:
        raise SystemExit(f"error: {error}") from error
    train_records = data["train"]
    logger.info("pretraining on %d unlabelled train images: %s", len(train_records), data["sources"])

    processor = build_image_processor(args.image_size)
    augment = DermoscopyAugmentation(image_size=args.image_size, crop_scale=(0.3, 1.0))
    def transform(batch):
        images = [augment(load_rgb_image(image, min_side=1), augmentation_rng()) for image in batch["image"]]
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}

    dataset = to_dataset(train_records).with_transform(transform)
    output_dir = Path(args.output_dir)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate or args.base_learning_rate * args.batch_size / 256,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,
        lr_scheduler_type="cosine",
        adam_beta2=0.95,
        logging_steps=20,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        seed=split.seed,
        dataloader_num_workers=args.num_workers,
        remove_unused_columns=False,
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = CheckpointSafeTrainer(
        model=build_mae(args),
        args=training_args,
        train_dataset=dataset,
        data_collator=lambda examples: {"pixel_values": torch.stack([e["pixel_values"] for e in examples])},
        callbacks=[TimeLimitCallback(args.max_train_minutes)] if args.max_train_minutes else None,
    )
    resumable = args.resume and Path(training_args.output_dir).is_dir()
    trainer.train(resume_from_checkpoint=get_last_checkpoint(training_args.output_dir) if resumable else None)
    if trainer.is_world_process_zero():
        encoder_dir = export_encoder(trainer.model, args, output_dir / "encoder")
        logger.info("saved the encoder to %s; fine-tune it with train_vit.py --init-from %s", encoder_dir, encoder_dir)


if __name__ == "__main__":
    main()
