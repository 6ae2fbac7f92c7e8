"""Safe image decoding shared by data preparation, training and the app.

Every entry point that touches an image file goes through `load_rgb_image`, so
a corrupt upload and a corrupt training file fail the same way: with an
`ImageLoadError` whose message can be shown to a person as it is.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .messages import CodedError

# A picture in a format that must be decoded at full size is refused above this,
# before decoding: 60 MP is 180 MB of RGB, and a decompression bomb announces
# hundreds of megapixels in its header.
MAX_PIXELS = 60_000_000
# JPEGs (phones take 48-200 MP pictures) are decoded at 1/2 to 1/8 scale in the
# DCT domain (Image.draft) instead, so they are accepted up to the size Pillow
# itself refuses as a decompression bomb (2 x Image.MAX_IMAGE_PIXELS, 179 MP by
# default), and never take more than MAX_PIXELS once decoded.
DRAFTABLE_FORMATS = ("JPEG", "MPO")


def jpeg_pixel_limit() -> int:
    """The largest JPEG accepted: where Pillow raises DecompressionBombError (read late: it can be changed)."""
    return 2 * int(Image.MAX_IMAGE_PIXELS or 0) or MAX_PIXELS
# Below this the model would be looking at upsampled noise.
MIN_SIDE = 32

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

# ITU-R BT.601 luma weights, the ones PIL's convert("L") uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(image: Image.Image | np.ndarray) -> np.ndarray:
    """Luma (BT.601) per pixel: of a PIL image as float32 0-255, or of an (..., 3) RGB array in its own scale."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"), dtype=np.float32)
    return image @ LUMA_WEIGHTS


class ImageLoadError(CodedError):
    """An input that cannot be used as a lesion image.

    `code` and `params` name the problem (melanoma_screen.messages renders them in
    each language); str() is the English sentence, and `reason` the code the app's
    /predict returns.
    """


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            # Gradio hands over float or 16-bit arrays for some PNGs.
            high = float(array.max()) if array.size else 0.0
            scale = 255.0 / 65535.0 if high > 255 else (255.0 if high <= 1.0 else 1.0)
            array = np.clip(array.astype(np.float64) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(array)
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError("not_found", name=path.name)
    if path.stat().st_size == 0:
        raise ImageLoadError("empty_file", name=path.name)
    return Image.open(path)


def load_rgb_image(source: ImageSource, min_side: int = MIN_SIDE,
                   draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `source` into an upright 8-bit RGB image, or raise ImageLoadError.

    Handles EXIF orientation, animated images (first frame), palette and
    transparent images (composited on white), grayscale, CMYK and 16-bit.

    draft_size=(width, height) lets a JPEG decode at 1/2, 1/4 or 1/8 scale in
    the DCT domain as long as both sides stay at least that large: a 12 MP
    phone photo that is going to be shrunk to the model's input anyway then
    decodes in a fraction of the time. Other formats ignore it. Without it, a
    JPEG over MAX_PIXELS is still decoded at the scale that brings it under.
    """
    if source is None:
        raise ImageLoadError("no_image")
    try:
        with warnings.catch_warnings():
            # Pillow warns from MAX_IMAGE_PIXELS and raises from twice that; the limits
            # below are ours (a drafted JPEG is small once decoded), its error stays.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(source)
            width, height = image.size
            draftable = image.format in DRAFTABLE_FORMATS and not isinstance(source, Image.Image)
            limit = jpeg_pixel_limit() if draftable else MAX_PIXELS
            if width * height > limit:
                raise ImageLoadError("too_large", width=width, height=height, megapixels=limit // 1_000_000)
            if getattr(image, "is_animated", False):
                image.seek(0)
            if draftable:
                target = _draft_target(width, height, draft_size)
                if target:
                    image.draft(None, target)  # no-op once loaded, or when no scale keeps target
            image.load()
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        if isinstance(error, UnidentifiedImageError):
            raise ImageLoadError("not_an_image") from error
        raise ImageLoadError("decompression_bomb") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError("damaged", detail=str(error)) from error

    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost the image itself
        pass
    image = _to_rgb(image)
    if min(image.size) < min_side:
        raise ImageLoadError("too_small", width=image.size[0], height=image.size[1], min_side=min_side)
    return image


def _draft_target(width: int, height: int, draft_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The size to ask Image.draft for: draft_size, capped so the decoded picture stays within MAX_PIXELS."""
    scale = 1
    while (width // scale) * (height // scale) > MAX_PIXELS and scale < 8:
        scale *= 2
    # draft() keeps both sides at least the requested size, so asking for the
    # scaled size (rounded up) lets it reach that scale and no further.
    needed = (-(-width // scale), -(-height // scale)) if scale > 1 else None
    if draft_size is None:
        return needed
    if needed is None:
        return tuple(draft_size)
    return (min(draft_size[0], needed[0]), min(draft_size[1], needed[1]))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / high), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image



def try_load_rgb_image(source: ImageSource):
    """load_rgb_image's image, or the exception it raised."""
    try:
        return load_rgb_image(source)
    except Exception as error:  # handed back: decode_batches' caller decides what a bad file means
        return error


@dataclass
class DecodedBatch:
    """One batch of decode_batches: the pictures that decoded, and the sources that did not, with why."""

    start: int  # index of the batch's first source among all the sources
    sources: list
    images: list[Image.Image] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # index among all the sources of each image
    failures: list[tuple[int, Exception]] = field(default_factory=list)  # (index among all the sources, error)


def decode_batches(sources: Iterable, batch_size: int, decode_each: Callable[[list], list] | None = None,
                   skip: type[Exception] | tuple[type[Exception], ...] = ImageLoadError) -> Iterator[DecodedBatch]:
    """The sources batch_size at a time, decoded: the one loop of every batch scorer over files that may be bad.

    decode_each(list of sources) gives a decoded image or the exception it raised per
    source (default: try_load_rgb_image on each; ScreeningModel.decode_each decodes as
    the model does, over its threads). A failure of a type in `skip` lands in the
    batch's `failures`; any other is raised, the first of the batch in order (skip=()
    raises every bad file). Batch by batch, so a long list never holds every
    full-size photo at once.
    """
    sources = list(sources)
    for start in range(0, len(sources), batch_size):
        batch = DecodedBatch(start, sources[start:start + batch_size])
        decoded = (decode_each or (lambda chunk: [try_load_rgb_image(source) for source in chunk]))(batch.sources)
        for position, image in enumerate(decoded, start):
            if not isinstance(image, Exception):
                batch.images.append(image)
                batch.positions.append(position)
            elif isinstance(image, skip):
                batch.failures.append((position, image))
            else:
                raise image
        yield batch
