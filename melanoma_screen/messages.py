"""The error catalogue: every reason a picture is not scored, as a code with parameters.

Errors carry a stable `code` and its `params`; each language renders its own
sentence from them here. Programs read the code, people read the sentence, and
rewording a sentence can no longer make another language fall back to English,
as matching the English text did.

`reason` is the coarser code that /predict and predict.py's CSV have always
returned; two sentences share "too_large" and the app's upload problems share
"unreadable", so a code names the sentence and `reason` stays what clients know.

The French image-error sentences start in lower case: the page shows them after
"Cette image n'a pas pu être analysée : ".
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import partial

LANGUAGES = ("en", "fr")


@dataclass(frozen=True)
class Message:
    en: str
    fr: str
    params: tuple[str, ...] = ()
    reason: str | None = None  # None: the code itself


CATALOGUE: dict[str, Message] = {
    # melanoma_screen.images.load_rgb_image
    "no_image": Message(
        "No image was given. Please upload a photo of the lesion.",
        "Aucune image fournie."),
    "not_found": Message(
        "File not found: {name}.",
        "fichier introuvable : {name}.", ("name",)),
    "empty_file": Message(
        "{name} is an empty file, not an image.",
        "{name} est un fichier vide, pas une image.", ("name",)),
    "too_large": Message(
        "The image is too large ({width}x{height} pixels). Please upload an image under {megapixels} megapixels.",
        "l'image est trop grande ({width}×{height} pixels). Importez une image de moins de {megapixels} mégapixels.",
        ("width", "height", "megapixels")),
    "decompression_bomb": Message(
        "The image is too large to process safely. Please upload a smaller image.",
        "l'image est trop grande pour être traitée sans risque. Importez une image plus petite.",
        reason="too_large"),
    "not_an_image": Message(
        "This file is not an image that can be read (use JPEG or PNG).",
        "ce fichier n'est pas une image lisible (utilisez JPEG ou PNG)."),
    "damaged": Message(
        "The image file is damaged or truncated and cannot be read ({detail}).",
        "le fichier image est endommagé ou tronqué et ne peut pas être lu ({detail}).", ("detail",)),
    "too_small": Message(
        "The image is too small ({width}x{height} pixels). Please upload an image at least {min_side}x{min_side} pixels.",
        "l'image est trop petite ({width}×{height} pixels). Importez une image d'au moins {min_side}×{min_side} pixels.",
        ("width", "height", "min_side")),
    # app's lean route: a body over launch()'s upload limit
    "too_large_upload": Message(
        "The upload is larger than 30 MB. Please upload a smaller image.",
        "l'envoi dépasse 30 Mo. Importez une image plus petite.", reason="too_large"),
    # app_routes.open_upload: an upload that is not a file
    "bad_data_url": Message(
        "The uploaded data is not a valid image.",
        "les données importées ne sont pas une image valide.", reason="unreadable"),
    "bad_upload": Message(
        "The upload could not be read as a file; please try again.",
        "l'envoi n'a pas pu être lu comme un fichier ; réessayez.", reason="unreadable"),
    # melanoma_screen.input_check refusals: what is wrong and how to retake the picture
    "too_dark": Message(
        "The picture is too dark to judge. Retake it with more light, or with the dermatoscope's light on.",
        "La photo est trop sombre pour être analysée. Reprenez-la avec plus de lumière, ou avec l'éclairage du "
        "dermatoscope allumé."),
    "too_bright": Message(
        "The picture is too bright (overexposed) to judge. Retake it with less light, without flash or direct sunlight.",
        "La photo est trop claire (surexposée) pour être analysée. Reprenez-la avec moins de lumière, sans flash ni "
        "soleil direct."),
    "blurred": Message(
        "The picture is too blurred to judge. Hold the camera still, let it focus on the lesion, and retake it.",
        "La photo est trop floue pour être analysée. Tenez l'appareil immobile, laissez-le faire la mise au point sur "
        "la lésion, puis reprenez-la."),
    "no_lesion": Message(
        "No lesion can be seen in the picture. Centre the lesion in the frame, close up, and retake it.",
        "Aucune lésion n'est visible sur la photo. Centrez la lésion dans le cadre, de près, puis reprenez-la."),
    "no_colour": Message(
        "This picture has no colour (it is black and white or grayscale), and a lesion is judged on its colours. "
        "Upload the original colour photo of the lesion, not a grayscale copy, scan or print.",
        "Cette image n'a pas de couleurs (elle est en noir et blanc ou en niveaux de gris), or une lésion s'analyse "
        "sur ses couleurs. Importez la photo couleur d'origine de la lésion, pas une copie en niveaux de gris, un "
        "scan ou une impression."),
    "not_skin": Message(
        "This does not look like a picture of skin. Upload a dermoscopic picture of the lesion itself.",
        "Cette image ne ressemble pas à une photo de peau. Importez une image dermoscopique de la lésion elle-même."),
    "unfamiliar": Message(
        "This picture is too unlike the dermoscopic images the model learned from for its result to mean anything. "
        "Upload a dermoscopic picture centred on the lesion.",
        "Cette image est trop différente des images dermoscopiques sur lesquelles le modèle a appris pour que son "
        "résultat ait un sens. Importez une image dermoscopique centrée sur la lésion."),
}


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def render(code: str, params: dict | None = None, lang: str = "en") -> str:
    """The sentence for `code` in `lang` (English for any other), filled with `params`."""
    entry = CATALOGUE[code]
    return (entry.fr if lang == "fr" else entry.en).format(**(params or {}))


def reason(code: str) -> str:
    """The code /predict and predict.py report for `code`."""
    return CATALOGUE[code].reason or code


class CodedError(ValueError):
    """An error whose message is rendered from the catalogue; str() is the English sentence."""

    def __init__(self, code: str, **params):
        entry = CATALOGUE[code]  # an unknown code fails here, where it is raised, not later in a page
        if set(params) != set(entry.params):
            raise TypeError(f"{code} takes the parameters {entry.params}, got {tuple(params)}")
        self.code, self.params = code, params
        super().__init__(render(code, params, "en"))

    def __reduce__(self):
        # The default rebuilds from args (the English sentence), which is not a code;
        # errors cross process boundaries in data_prep's worker pools.
        return (partial(type(self), self.code, **self.params), ())

    @property
    def reason(self) -> str:
        return reason(self.code)

    def message(self, lang: str = "en") -> str:
        return render(self.code, self.params, lang)
