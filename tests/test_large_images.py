"""Phone-sized JPEGs are decoded at reduced scale up to Pillow's bomb limit; other formats keep the 60 MP limit."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from conftest import REPO_ROOT

from melanoma_screen.images import MAX_PIXELS, ImageLoadError, jpeg_pixel_limit, load_rgb_image


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header announces width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 120, 100)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def phone_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("phone") / "phone_9000x7000.jpg"
    Image.new("RGB", (9000, 7000), (190, 140, 120)).save(path, quality=85)  # 63 MP: over the 60 MP limit
    return path


def test_a_63_megapixel_jpeg_is_decoded_at_reduced_scale(phone_jpeg):
    image = load_rgb_image(phone_jpeg)
    assert image.width * image.height <= MAX_PIXELS and image.size == (4500, 3500)
    assert load_rgb_image(phone_jpeg, draft_size=(512, 512)).size == (1125, 875)


def test_decoding_it_keeps_memory_bounded(phone_jpeg):
    # Fully decoded it would be 189 MB of RGB; drafted for the model it is 3 MB.
    code = ("import json, resource, sys\n"
            "from melanoma_screen.images import load_rgb_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "load_rgb_image(sys.argv[1], draft_size=(512, 512))\n"
            "print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024))\n")
    result = subprocess.run([sys.executable, "-c", code, str(phone_jpeg)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    assert json.loads(result.stdout) < 60  # MB of peak RSS added


def test_a_real_jpeg_bomb_is_still_refused():
    side = int((jpeg_pixel_limit() * 1.1) ** 0.5)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(jpeg_claiming(side, side))
    assert "too large" in str(caught.value) and caught.value.reason == "too_large"


def test_a_large_png_keeps_the_limit():
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 9000, 7000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(bytes(png))
    assert "under 60 megapixels" in str(caught.value)
