"""The class names, defined once, and how a trained model's own order is read.

CLASS_NAMES is the order a *new* model is given (train_vit.py writes it into
config.json as id2label) and the class id the data side gives each image.
Everything that uses a trained model reads that model's id2label instead, so
a model trained elsewhere with its classes in another order still scores
P(malignant), not P(benign).

Kept free of torch and transformers so data_prep can import it cheaply.
"""

from __future__ import annotations

BENIGN, MALIGNANT = "benign", "malignant"

# Class ids double as binary truth (1 = malignant) in metrics and calibration,
# which take a record's label as y_true: the order is a contract, not a taste.
CLASS_NAMES = (BENIGN, MALIGNANT)
ID2LABEL = dict(enumerate(CLASS_NAMES))
LABEL2ID = {name: index for index, name in ID2LABEL.items()}


def model_label_order(config) -> tuple[str, ...]:
    """A model's class names by output column, from its config's id2label (keys may be str after a JSON round trip)."""
    id2label = {int(index): name for index, name in (getattr(config, "id2label", None) or {}).items()}
    if sorted(id2label) != list(range(len(id2label))) or sorted(id2label.values()) != sorted(CLASS_NAMES):
        raise ValueError(f"the model's id2label is {dict(sorted(id2label.items()))}; expected the classes "
                         f"{' and '.join(CLASS_NAMES)}, one output each")
    return tuple(id2label[index] for index in range(len(id2label)))


def malignant_index(config) -> int:
    """The output column holding P(malignant) for a model with this config."""
    return model_label_order(config).index(MALIGNANT)
