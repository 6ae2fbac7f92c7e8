"""A fake camera's film for Chromium (--use-file-for-fake-video-capture): a real lesion, filmed badly then well.

    from camera_clip import lesion_clip
    lesion_clip("examples/malignant_1.jpg", "clip.y4m", bad_seconds=3, good_seconds=8)

Used by tests/test_browser.py (guidance, then a capture) and benchmarks/live_load.py
(good_seconds=0: every frame is judged and none is captured, so the stream never stops).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter


def write_y4m(path, frames: list[Image.Image], fps: int) -> None:
    """An uncompressed YUV 4:2:0 clip, the format Chromium's fake camera plays (and loops)."""
    width, height = frames[0].size
    with Path(path).open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            luma, blue, red = frame.convert("YCbCr").split()
            out.write(b"FRAME\n" + luma.tobytes())
            for plane in (blue, red):
                out.write(plane.resize((width // 2, height // 2), Image.Resampling.BILINEAR).tobytes())


def lesion_clip(lesion_path, path, bad_seconds: float = 3, good_seconds: float = 8, fps: int = 10,
                size: tuple[int, int] = (480, 360)) -> Path:
    """`bad_seconds` of the lesion blurred and dark (refused), then `good_seconds` of it sharp, filling the frame."""
    width, height = size
    side = max(size)
    with Image.open(lesion_path) as image:
        sharp = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).crop(
            ((side - width) // 2, (side - height) // 2, (side + width) // 2, (side + height) // 2))
    bad = ImageEnhance.Brightness(sharp.filter(ImageFilter.GaussianBlur(10))).enhance(0.2)
    write_y4m(path, [bad] * round(bad_seconds * fps) + [sharp] * round(good_seconds * fps), fps)
    return Path(path)
