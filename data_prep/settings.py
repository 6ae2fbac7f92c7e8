"""The settings that decide which images train, validate and test a model: declared once, here.

train_vit.py and pretrain_mae.py parse SplitSettings with HfArgumentParser,
`python -m data_prep split` and `fit_input_check.py fit` with argparse through
add_split_arguments, and every one of them hands the result to
data_prep.training_data, so the same flags always give the same split.
eval_results.json stores them (settings.data, and the seed under
settings.training), and SplitSettings.from_stored reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

BALANCE_METHODS = ("none", "undersample", "class_weights", "source_class")


@dataclass
class SplitSettings:
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "Image folder laid out as {train,test}/{benign,malignant}/*.jpg."})
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "A Hugging Face Hub dataset id with 'image' and 'label' columns (needs network)."})
    extra_train_dir: Optional[list[str]] = field(
        default=None,
        metadata={"help": "More training data from other sources: {benign,malignant}/* folders, one or more (the flag "
                          "can be repeated). Audited with --data-dir: copies of its test images are dropped, one copy of "
                          "each training duplicate is kept.", "action": "extend"},
    )
    val_fraction: float = field(default=0.1, metadata={"help": "Share of train carved out, stratified, for validation."})
    seed: int = field(default=42, metadata={"help": "Seed of the validation split, the balancing and training."})
    drop_duplicates: bool = field(
        default=False, metadata={"help": "Drop train images that copy test images or each other (the audit finds them)."})
    audit_file: Optional[str] = field(
        default=None,
        metadata={"help": "Reuse a duplicate-audit report (`python -m data_prep audit`) instead of auditing again; "
                          "written there when missing."})
    balance: str = field(
        default="none",
        metadata={"help": "Class balancing for training. source_class: a weight per image so that inside every source "
                          "(an acquisition, where labels.csv names one) both classes weigh the same and each source keeps "
                          "its share, so no source's class balance can be learnt; then the classes are balanced overall.",
                  "choices": list(BALANCE_METHODS)})
    balance_diagnoses: bool = field(
        default=False,
        metadata={"help": "Weight the benign images whose diagnosis is known (labels.csv's dx) by sqrt(benign images "
                          "with a known diagnosis / images of that diagnosis), so keratoses, dermatofibromas and vascular "
                          "lesions are not drowned by nevi; the benign class keeps its total weight."})
    max_sample_weight: float = field(
        default=10.0,
        metadata={"help": "Cap on one image's weight relative to the mean (a source with 17 melanomas in 3,157 images "
                          "would otherwise weigh each of them ~90 times)."})
    hold_out_source: Optional[str] = field(
        default=None,
        metadata={"help": "Leave one source out of training and validation (e.g. ham10000/vienna_dias, a source as "
                          "`python -m data_prep split` names it) and score it at the end like an external set: does the "
                          "recipe hold on an acquisition it never saw?"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set (for quick runs)."})
    keep_split_of: Optional[str] = field(
        default=None,
        metadata={"help": "The stored split settings (eval_results.json's settings, as JSON) of the model this run "
                          "fine-tunes: its validation images stay in validation and the images it trained on stay in "
                          "training, so a fine-tune never validates on what its base learnt. train_vit.py sets it when "
                          "--model-name-or-path is a local run folder."})

    @classmethod
    def from_namespace(cls, namespace, **overrides) -> "SplitSettings":
        """From parsed arguments (or any object) that carry some of these fields; the rest keep their defaults."""
        values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
        return cls(**{**values, **overrides})

    @classmethod
    def from_stored(cls, settings: dict) -> "SplitSettings":
        """From the `settings` that train_vit.py stores in eval_results.json (the seed sits under `training`)."""
        data, training = dict(settings.get("data") or {}), settings.get("training") or {}
        if data.get("seed") is None and "seed" in training:
            data["seed"] = training["seed"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in names and value is not None})

    def stored(self) -> dict:
        """What eval_results.json keeps under settings.data: everything but the seed, which it keeps under training."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name != "seed"}


def add_split_arguments(parser: argparse.ArgumentParser, skip=(), aliases: dict | None = None,
                        stored_defaults: bool = False) -> None:
    """SplitSettings' flags on an argparse parser, with the help declared on the dataclass.

    skip: fields the caller declares itself (e.g. --data-dir in a group). aliases:
    more flags per field. stored_defaults: every default is None ("as stored"), for
    a command that reads the settings from a model folder and lets flags override them.
    """
    aliases = aliases or {}
    # Resolved here, not read from spec.type: HfArgumentParser rewrites the shared Field objects' types.
    hints = typing.get_type_hints(SplitSettings)
    for spec in dataclasses.fields(SplitSettings):
        if spec.name in skip:
            continue
        flags = ["--" + spec.name.replace("_", "-"), *aliases.get(spec.name, ())]
        help_text = spec.metadata.get("help", "")
        default = None if stored_defaults else spec.default
        help_text += " (default: as stored)" if stored_defaults else (f" (default: {spec.default})" if spec.default not in (None, False) else "")
        kwargs = {"dest": spec.name, "help": help_text.replace("%", "%%")}
        value_type = next((kind for kind in typing.get_args(hints[spec.name]) if kind is not type(None)),
                          hints[spec.name])
        if value_type is bool:
            parser.add_argument(*flags, action="store_true", default=None if stored_defaults else False, **kwargs)
            continue
        if spec.metadata.get("action") == "extend":
            kwargs.update(action="extend", nargs="+")
        else:
            kwargs["type"] = value_type
        if "choices" in spec.metadata:
            kwargs["choices"] = spec.metadata["choices"]
        parser.add_argument(*flags, default=default, **kwargs)
