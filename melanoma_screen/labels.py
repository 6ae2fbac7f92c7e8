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


# The benign lesions that look like melanoma, grouped as the clinic would: a screening aid
# that ranks melanoma above common moles but below keratoses is of no use to an older patient.
# Keys are the diagnosis names of HAM10000 / isic2017 (`dx`) and of derm7pt (`diagnosis`).
BENIGN_DIAGNOSIS_GROUPS = {
    "nv": "nevi (all kinds)",
    "clark nevus": "Clark (common, dysplastic) nevi",
    "bkl": "keratosis / lentigo / melanosis",
    "seborrheic keratosis": "keratosis / lentigo / melanosis",
    "lentigo": "keratosis / lentigo / melanosis",
    "melanosis": "keratosis / lentigo / melanosis",
    "reed or spitz nevus": "other nevi (Spitz, blue, dermal, congenital, combined, recurrent)",
    "blue nevus": "other nevi (Spitz, blue, dermal, congenital, combined, recurrent)",
    "dermal nevus": "other nevi (Spitz, blue, dermal, congenital, combined, recurrent)",
    "congenital nevus": "other nevi (Spitz, blue, dermal, congenital, combined, recurrent)",
    "combined nevus": "other nevi (Spitz, blue, dermal, congenital, combined, recurrent)",
    "recurrent nevus": "other nevi (Spitz, blue, dermal, congenital, combined, recurrent)",
    "df": "dermatofibroma / vascular",
    "vasc": "dermatofibroma / vascular",
    "dermatofibroma": "dermatofibroma / vascular",
    "vascular lesion": "dermatofibroma / vascular",
}


def benign_diagnosis_group(diagnosis: str) -> str | None:
    """The mimic group of a benign diagnosis, None for an unknown or unlisted one."""
    return BENIGN_DIAGNOSIS_GROUPS.get((diagnosis or "").strip().lower())
