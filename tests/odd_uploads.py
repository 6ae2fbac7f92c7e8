"""The uploads people send by accident or on purpose, made from one real dermoscopic image.

Shared by tests/test_app.py and benchmarks/behaviour_snapshot.py, which compares two commits'
answers to them: the same bytes on every run.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_odd_uploads(folder: Path, good_image: Path) -> dict[str, Path]:
    """{name: file}: the broken uploads, then the odd but valid ones."""
    photo = Image.open(good_image).convert("RGB")
    files = {}

    def path(name):
        files[name.split(".")[0]] = folder / name
        return folder / name

    path("not_an_image.txt").write_text("hello, this is not an image\n")
    path("text_named_jpg.jpg").write_text("text pretending to be a JPEG\n")
    data = Path(good_image).read_bytes()
    path("truncated.jpg").write_bytes(data[: len(data) // 2])
    path("empty.png").write_bytes(b"")
    # A decompression bomb: a valid PNG header that announces 40000x40000 pixels.
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 40000, 40000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    path("bomb.png").write_bytes(bytes(png))
    Image.new("RGB", (1, 1), (200, 120, 90)).save(path("one_pixel.png"))

    photo.convert("L").save(path("grayscale.jpg"))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 128))
    rgba.save(path("transparent.png"))
    photo.convert("CMYK").save(path("cmyk.jpg"))
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(path("sixteen_bit.png"))
    # Lossless, so the EXIF-rotated file and the upright one hold the same pixels.
    photo.save(path("upright.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    exif[0x010F] = "PhoneMaker"  # camera make: must not reach the feedback folder
    photo.transpose(Image.Transpose.ROTATE_90).save(path("exif_rotated.png"), exif=exif)
    photo.save(path("animated.gif"), save_all=True, duration=200, loop=0,
               append_images=[photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    return files
