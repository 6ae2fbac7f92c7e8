"""The "not a dermoscopic lesion" set: pictures the screening model must refuse to judge.

    from not_lesion_set import build_not_lesion_set
    samples = build_not_lesion_set(lesion_paths)      # [Sample(name, category, image), ...]

Built on the fly, so nothing large is committed: the sample photographs that
scikit-image (`skimage.data`, the bundled ones), matplotlib, scikit-learn and
Gradio ship (people, close-ups of their faces, animals, rooms and scenes,
objects, a real screenshot), plus
generated plain colours and skin tones, noise, gradients, rendered text and
mock-ups of this app's page, real lesions ruined on purpose (heavy blur,
far under- and over-exposed), and what a live camera shows between good
frames: real lesions with motion blur, out of focus, or half out of the frame,
fingers, fabric, and a plain outdoor scene drawn with shapes. `lesion_paths` supplies those real lesions; the
benchmark and the tests pass test-split images, which no threshold is fitted on.
Everything is seeded: the same call gives the same pictures.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

CATEGORIES = ("person", "animal", "room or scene", "object", "photo", "plain colour", "plain skin", "noise", "gradient", "text", "screenshot",
              "blurred lesion", "under-exposed lesion", "over-exposed lesion",
              "motion-blurred lesion", "defocused lesion", "lesion half out of frame", "fingers", "fabric",
              "outdoor scene")

# Bundled with scikit-image's wheel; the others in skimage.data need a download (pooch).
SKIMAGE_SAMPLES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
                   "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
                   "logo", "microaneurysms", "moon", "page", "retina", "rocket", "text", "binary_blobs",
                   "shepp_logan_phantom", "stereo_motorcycle")
MATPLOTLIB_SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
# Photographs other installed packages ship: (package, path inside it); the icons are too small to count.
PACKAGE_SAMPLES = (("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
                   ("gradio", "media_assets/images/cheetah.jpg"), ("gradio", "media_assets/images/cheetah1.jpg"),
                   ("gradio", "media_assets/images/lion.jpg"), ("gradio", "media_assets/images/groot.jpeg"),
                   ("gradio", "media_assets/images/tower.jpg"), ("gradio", "media_assets/images/screenshot.gif"))
# What each photograph shows; the rest are "photo" (textures, microscopy, astronomy, drawings).
SUBJECTS = {"skimage-astronaut": "person", "skimage-camera": "person", "matplotlib-grace_hopper": "person",
            "skimage-cat": "animal", "skimage-chelsea": "animal", "gradio-cheetah": "animal",
            "gradio-cheetah1": "animal", "gradio-lion": "animal",
            "skimage-stereo_motorcycle": "room or scene", "sklearn-china": "room or scene",
            "gradio-tower": "room or scene", "skimage-rocket": "room or scene",
            "skimage-coffee": "object", "skimage-clock": "object", "skimage-coins": "object",
            "matplotlib-Minduka_Present_Blue_Pack": "object", "sklearn-flower": "object", "gradio-groot": "object",
            "gradio-screenshot": "screenshot"}
# Head and shoulders filling the frame, as a phone's portrait would: (left, top, right, bottom) in the photograph.
FACE_CROPS = {"skimage-astronaut": (140, 20, 320, 220), "matplotlib-grace_hopper": (100, 60, 420, 420)}
# Light to dark skin, roughly the ten tones of the Monk skin tone scale.
SKIN_TONES = [(246, 237, 228), (243, 231, 219), (247, 234, 208), (234, 218, 186), (215, 189, 150),
              (160, 126, 86), (130, 92, 67), (96, 65, 52), (58, 49, 42), (41, 36, 32)]
LOREM = ("The quick brown fox jumps over the lazy dog. Patient referred for a pigmented lesion on the left "
         "shoulder, present for two years, recently darker. Dermoscopy shows an atypical network. "
         "Le rapport de consultation est joint ; merci de rappeler le cabinet pour un rendez-vous. ")


@dataclass
class Sample:
    name: str
    category: str
    image: Image.Image


def _to_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / (high - low or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(array)
    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def sample_photographs() -> list[Sample]:
    """What scikit-image, matplotlib, scikit-learn and Gradio ship; any may be missing, which only shrinks the set."""
    import importlib

    photographs = []  # (name, RGB image)
    try:
        import skimage.data
    except ImportError:
        skimage = None
    if skimage is not None:
        for name in SKIMAGE_SAMPLES:
            try:
                data = getattr(skimage.data, name)()
                # stereo_motorcycle is (left, right, disparity): the left view is the photograph.
                photographs.append((f"skimage-{name}", _to_rgb(data[0] if isinstance(data, tuple) else data)))
            except Exception:  # a sample that needs a download offline, or one a newer release dropped
                continue
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        folder = None
    for name in MATPLOTLIB_SAMPLES if folder else ():
        if (folder / name).is_file():
            with Image.open(folder / name) as image:
                photographs.append((f"matplotlib-{Path(name).stem}", _to_rgb(np.asarray(image))))
    for package, relative in PACKAGE_SAMPLES:
        try:
            path = Path(importlib.util.find_spec(package).origin).parent / relative
        except (AttributeError, ImportError, ValueError):
            continue
        if path.is_file():
            with Image.open(path) as image:
                photographs.append((f"{package}-{Path(relative).stem}", _to_rgb(np.asarray(image.convert("RGBA")))))
    samples = [Sample(name, SUBJECTS.get(name, "photo"), image) for name, image in photographs]
    by_name = dict(photographs)
    for name, box in FACE_CROPS.items():
        if name in by_name:
            samples.append(Sample(f"{name}-face", "person", by_name[name].crop(box)))
    return samples


def _plain_colours(rng) -> list[Sample]:
    samples = []
    for i in range(12):
        colour = rng.integers(0, 256, 3)
        array = np.broadcast_to(colour, (256, 256, 3)).astype(np.float32)
        if i % 2:  # near-uniform: a camera's sensor noise on a blank wall
            array = array + rng.normal(0, 3, array.shape)
        samples.append(Sample(f"colour-{i}", "plain colour", _to_rgb(np.clip(array, 0, 255).astype(np.uint8))))
    return samples


def _plain_skin(rng) -> list[Sample]:
    """Skin with no lesion: a tone, soft shading, pores and sensor noise."""
    samples = []
    for i, tone in enumerate(SKIN_TONES * 2):
        side = 300
        shade = np.asarray(Image.fromarray(rng.normal(0, 1, (8, 8)).astype(np.float32)).resize((side, side), Image.Resampling.BICUBIC))
        grain = Image.fromarray(np.clip(rng.normal(128, 40, (side, side)), 0, 255).astype(np.uint8))
        pores = (np.asarray(grain.filter(ImageFilter.GaussianBlur(1.2)), np.float32) - 128) / 40
        texture = 6 * shade[..., None] + (8 if i >= len(SKIN_TONES) else 3) * pores[..., None]
        array = np.asarray(tone, np.float32) * (1 + texture / 255) + rng.normal(0, 2, (side, side, 3))
        samples.append(Sample(f"skin-{i}", "plain skin", _to_rgb(np.clip(array, 0, 255).astype(np.uint8))))
    return samples


def _noise(rng) -> list[Sample]:
    makers = [
        lambda: rng.integers(0, 256, (256, 256, 3)),
        lambda: np.repeat(np.clip(rng.normal(128, 50, (256, 256, 1)), 0, 255), 3, axis=2),
        lambda: np.where(rng.random((256, 256, 1)) < 0.5, 0, 255).repeat(3, axis=2),
        lambda: np.clip(rng.normal(rng.integers(60, 200, 3), 30, (256, 256, 3)), 0, 255),
    ]
    samples = []
    for i in range(12):
        array = makers[i % len(makers)]().astype(np.uint8)
        image = _to_rgb(array)
        if i >= 8:  # smoothed noise: coloured blobs, the closest noise gets to a lesion
            image = image.filter(ImageFilter.GaussianBlur(2))
        samples.append(Sample(f"noise-{i}", "noise", image))
    return samples


def _gradients(rng) -> list[Sample]:
    samples = []
    y, x = np.mgrid[0:256, 0:256] / 255.0
    for i in range(12):
        a, b = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
        if i % 3 == 0:
            t = x
        elif i % 3 == 1:
            t = (x + y) / 2
        else:
            t = np.clip(np.hypot(x - 0.5, y - 0.5) * 1.6, 0, 1)
        array = a + (b - a) * t[..., None]
        samples.append(Sample(f"gradient-{i}", "gradient", _to_rgb(array.astype(np.uint8))))
    return samples


def _text(rng) -> list[Sample]:
    styles = [((255, 255, 255), (0, 0, 0)), ((250, 248, 240), (30, 30, 120)), ((20, 20, 20), (230, 230, 230)),
              ((255, 255, 200), (120, 0, 0))]
    samples = []
    for i in range(12):
        background, ink = styles[i % len(styles)]
        size = (16, 24, 40)[i % 3]
        image = Image.new("RGB", (480, 360), background)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=size)
        lines = textwrap.wrap(LOREM * 3, width=int(900 / size))
        for row, line in enumerate(lines[: 360 // int(size * 1.3)]):
            draw.text((12, 8 + row * size * 1.3), line, fill=ink, font=font)
        samples.append(Sample(f"text-{i}", "text", image))
    return samples


def _screenshots(lesions: list[Image.Image]) -> list[Sample]:
    """Mock-ups of this app's page, desktop and phone, English and French, with a lesion on it."""
    samples = []
    for i, (width, height, lang) in enumerate([(1280, 900, "en"), (1280, 900, "fr"), (390, 844, "en"), (390, 844, "fr"),
                                               (1024, 768, "en"), (768, 1024, "fr")]):
        page = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        title = "Melanoma screening aid" if lang == "en" else "Aide au dépistage du mélanome"
        draw.text((20, 16), title, fill=(20, 20, 20), font=ImageFont.load_default(size=28))
        body = ImageFont.load_default(size=14)
        draw.rectangle((20, 64, width - 20, 120), fill=(255, 248, 225), outline=(240, 180, 0))
        draw.text((30, 74), "Screening aid, not a diagnosis. A low score never rules out melanoma."[: width // 8],
                  fill=(27, 27, 27), font=body)
        panel = min(width - 40, 360)
        draw.rectangle((20, 140, 20 + panel, 140 + panel), outline=(200, 200, 200), fill=(245, 245, 245))
        if lesions:
            thumb = lesions[i % len(lesions)].resize((panel // 2, panel // 2))
            page.paste(thumb, (20 + panel // 4, 140 + panel // 4))
        button_top = 160 + panel
        draw.rectangle((20, button_top, 20 + panel, button_top + 44), fill=(249, 115, 22))
        draw.text((40, button_top + 12), "Analyse" if lang == "en" else "Analyser", fill=(255, 255, 255), font=body)
        for row in range(6):
            top = button_top + 70 + row * 26
            if top < height - 20:
                draw.text((20, top), ("Risk level: Moderate. " + LOREM)[row * 20: row * 20 + width // 9],
                          fill=(60, 60, 60), font=body)
        samples.append(Sample(f"screenshot-{i}", "screenshot", page))
    return samples


def _ruined_lesions(lesions: list[Image.Image]) -> list[Sample]:
    samples = []
    for i, lesion in enumerate(lesions):
        radius = 0.025 * min(lesion.size)  # 7.5 px on a 300 px image: the lesion's border is gone
        samples.append(Sample(f"blurred-{i}", "blurred lesion", lesion.filter(ImageFilter.GaussianBlur(radius))))
        samples.append(Sample(f"dark-{i}", "under-exposed lesion", ImageEnhance.Brightness(lesion).enhance(0.25)))
        samples.append(Sample(f"bright-{i}", "over-exposed lesion", ImageEnhance.Brightness(lesion).enhance(2.5)))
    return samples


def _motion_blur(image: Image.Image, length: int, vertical: bool) -> Image.Image:
    """A camera moved in a straight line while the shutter was open: a box blur along one axis."""
    from scipy.ndimage import uniform_filter1d

    array = uniform_filter1d(np.asarray(image, np.float32), size=length, axis=0 if vertical else 1, mode="reflect")
    return _to_rgb(np.clip(array, 0, 255).astype(np.uint8))


def _defocus(image: Image.Image, radius: float) -> Image.Image:
    """Out of focus: each point spread over a disc (a lens's blur), not a Gaussian."""
    from scipy.signal import fftconvolve

    r = int(np.ceil(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (np.hypot(x, y) <= radius).astype(np.float32)
    disc /= disc.sum()
    array = np.asarray(image, np.float32)
    blurred = np.stack([fftconvolve(array[..., c], disc, mode="same") for c in range(3)], axis=-1)
    # fftconvolve pads with black: divide by the disc's share inside the frame, so the edges keep their brightness.
    coverage = fftconvolve(np.ones(array.shape[:2], np.float32), disc, mode="same")
    return _to_rgb(np.clip(blurred / coverage[..., None], 0, 255).astype(np.uint8))


def _half_out_of_frame(lesion: Image.Image, side: str) -> Image.Image:
    """The camera close and aimed beside the lesion: the frame's edge cuts through the lesion's centre.

    The lesion sits in the middle of the photograph: shown twice as large, the window of the
    photograph's size whose `side` edge runs through that middle shows half of it.
    """
    width, height = lesion.size
    large = lesion.resize((2 * width, 2 * height), Image.Resampling.BICUBIC)
    left, top = {"left": (width, height // 2), "right": (0, height // 2),
                 "top": (width // 2, height), "bottom": (width // 2, 0)}[side]
    return large.crop((left, top, left + width, top + height))


def _camera_frames(lesions: list[Image.Image]) -> list[Sample]:
    samples = []
    sides = ("left", "right", "top", "bottom")
    for i, lesion in enumerate(lesions):
        side = min(lesion.size)
        samples.append(Sample(f"motion-{i}", "motion-blurred lesion",
                              _motion_blur(lesion, max(3, int(0.1 * side)), vertical=bool(i % 2))))
        samples.append(Sample(f"defocus-{i}", "defocused lesion", _defocus(lesion, 0.03 * side)))
        samples.append(Sample(f"half-{i}", "lesion half out of frame", _half_out_of_frame(lesion, sides[i % 4])))
    return samples


def _fingers(rng) -> list[Sample]:
    """Fingers in front of the lens: skin-toned, rounded, shaded, with nails, over a table or a sleeve."""
    samples = []
    backgrounds = [(60, 60, 70), (200, 200, 205), (120, 90, 60), (30, 40, 90), (235, 230, 220), (90, 110, 80)]
    for i in range(12):
        tone = np.asarray(SKIN_TONES[(i * 3) % len(SKIN_TONES)], np.float32)
        side = 320
        image = Image.new("RGB", (side, side), backgrounds[i % len(backgrounds)])
        draw = ImageDraw.Draw(image)
        count = 1 + i % 4
        width = int(side / (count + 1.2))
        for f in range(count):
            left = int(side * 0.08 + f * width * 1.05 + rng.integers(-8, 9))
            top = int(side * (0.05 + 0.1 * rng.random()))
            shade = tuple(int(c) for c in np.clip(tone * (0.9 + 0.15 * rng.random()), 0, 255))
            draw.rounded_rectangle((left, top, left + width, side + 40), radius=width // 2, fill=shade)
            nail = tuple(int(c) for c in np.clip(tone * 1.08 + 20, 0, 255))
            draw.rounded_rectangle((left + width // 5, top + width // 8, left + 4 * width // 5, top + width),
                                   radius=width // 4, fill=nail)
            for crease in range(2):
                y = top + int(width * (1.6 + 1.1 * crease))
                draw.line((left + width // 6, y, left + 5 * width // 6, y), fill=tuple(int(c * 0.8) for c in shade), width=2)
        # A lens this close blurs a little; the camera's sensor adds noise.
        image = image.filter(ImageFilter.GaussianBlur(1.5 + i % 3))
        array = np.asarray(image, np.float32) + rng.normal(0, 3, (side, side, 3))
        samples.append(Sample(f"fingers-{i}", "fingers", _to_rgb(np.clip(array, 0, 255).astype(np.uint8))))
    return samples


def _fabric(rng) -> list[Sample]:
    """Woven and knitted cloth close up, as a sleeve or a gown fills the frame: denim, wool, linen, cotton."""
    colours = [(50, 70, 120), (150, 40, 40), (210, 195, 165), (240, 240, 235), (70, 70, 75), (200, 160, 140),
               (90, 120, 70), (220, 180, 120)]
    samples = []
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    for i, colour in enumerate(colours + colours[:4]):
        period = (4, 6, 9)[i % 3]
        warp = np.sin(2 * np.pi * x / period)
        weft = np.sin(2 * np.pi * y / period)
        weave = np.where((np.floor(x / period) + np.floor(y / period)) % 2 == 0, warp, weft) if i % 2 else warp * weft
        light = 0.8 + 0.2 * np.asarray(Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32)).resize(
            (256, 256), Image.Resampling.BICUBIC))
        array = np.asarray(colour, np.float32) * (light * (0.85 + 0.15 * weave))[..., None]
        array += rng.normal(0, 4, array.shape)
        samples.append(Sample(f"fabric-{i}", "fabric", _to_rgb(np.clip(array, 0, 255).astype(np.uint8))))
    return samples


def _outdoor_scenes(rng) -> list[Sample]:
    """A plain outdoor scene drawn with shapes: a sky, grass, a sun, a house and its roof."""
    samples = []
    for i in range(6):
        width, height = 400, 300
        image = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(image)
        horizon = int(height * (0.55 + 0.1 * rng.random()))
        sky_top, sky_bottom = np.array([70, 130, 220]), np.array([170, 210, 250])
        for row in range(horizon):
            draw.line((0, row, width, row), fill=tuple(int(v) for v in sky_top + (sky_bottom - sky_top) * row / horizon))
        draw.rectangle((0, horizon, width, height), fill=(70 + 20 * (i % 3), 150, 60))
        sun = (int(width * (0.15 + 0.7 * rng.random())), int(horizon * 0.3))
        draw.ellipse((sun[0] - 25, sun[1] - 25, sun[0] + 25, sun[1] + 25), fill=(255, 220, 60))
        left = int(width * (0.2 + 0.4 * rng.random()))
        draw.rectangle((left, horizon - 70, left + 110, horizon + 10), fill=(220, 200, 170))
        draw.polygon([(left - 15, horizon - 70), (left + 55, horizon - 130), (left + 125, horizon - 70)],
                     fill=(170, 50, 40))
        draw.rectangle((left + 45, horizon - 35, left + 70, horizon + 10), fill=(110, 70, 40))
        if i % 2:  # a phone photo of the drawing: soft and noisy
            image = image.filter(ImageFilter.GaussianBlur(1))
        array = np.asarray(image, np.float32) + rng.normal(0, 2 + 2 * (i % 2), (height, width, 3))
        samples.append(Sample(f"outdoor-{i}", "outdoor scene", _to_rgb(np.clip(array, 0, 255).astype(np.uint8))))
    return samples


def build_not_lesion_set(lesion_paths=(), seed: int = 0) -> list[Sample]:
    """Every picture of the set, in a fixed order; lesion_paths are real lesions to ruin (20 are plenty)."""
    rng = np.random.default_rng(seed)
    lesions = []
    for path in lesion_paths:
        with Image.open(path) as image:
            lesions.append(image.convert("RGB"))
    return (sample_photographs() + _plain_colours(rng) + _plain_skin(rng) + _noise(rng) + _gradients(rng)
            + _text(rng) + _screenshots(lesions) + _ruined_lesions(lesions) + _camera_frames(lesions)
            + _fingers(rng) + _fabric(rng) + _outdoor_scenes(rng))
