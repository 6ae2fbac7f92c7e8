"""The error catalogue: every code has its English and French sentence, and every error raised has a code in it."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import pytest
from PIL import Image

from conftest import REPO_ROOT
from melanoma_screen import input_check
from melanoma_screen.images import ImageLoadError, load_rgb_image
from melanoma_screen.messages import CATALOGUE, LANGUAGES, CodedError, reason, render, template_fields

# Raised by melanoma_screen.app_routes.open_upload; tests/test_app.py reaches them.
UPLOAD_CODES = {"bad_data_url", "bad_upload", "too_large_upload"}


def png_announcing(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    return bytes(png)


def image_inputs(folder) -> dict:
    """code -> an input that load_rgb_image refuses with that code."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not a JPEG\n")
    data = (REPO_ROOT / "examples" / "benign_1.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return {
        "no_image": None,
        "not_found": folder / "missing.jpg",
        "empty_file": folder / "empty.png",
        "too_large": png_announcing(10_000, 7_000),  # over MAX_PIXELS, under Pillow's own limit
        "decompression_bomb": png_announcing(40_000, 40_000),
        "not_an_image": folder / "text.jpg",
        "damaged": folder / "truncated.jpg",
        "too_small": Image.new("RGB", (1, 1)),
    }


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_every_code_has_both_languages_and_renders_with_its_declared_params(code):
    entry = CATALOGUE[code]
    params = {name: f"<{name}>" for name in entry.params}
    sentences = {}
    for lang in LANGUAGES:
        template = getattr(entry, lang)
        assert template.strip() and template_fields(template) == set(entry.params), (code, lang)
        sentences[lang] = render(code, params, lang)
        assert "{" not in sentences[lang] and all(value in sentences[lang] for value in params.values())
        assert sentences[lang].endswith(".")
    assert sentences["en"] != sentences["fr"]
    assert reason(code) and reason(code).isidentifier()


def test_every_code_raised_is_in_the_catalogue_and_every_entry_is_raised(tmp_path):
    raised = set()
    for code, source in image_inputs(tmp_path).items():
        with pytest.raises(ImageLoadError) as caught:
            load_rgb_image(source)
        assert caught.value.code == code and str(caught.value) == render(code, caught.value.params)
        assert caught.value.message("fr") == render(code, caught.value.params, "fr")
        raised.add(code)
    refusals = {rule[0] for rule in input_check.RULES} | {input_check.UNFAMILIAR}
    assert refusals == set(input_check.REASONS)
    assert raised | set(input_check.REASONS) | UPLOAD_CODES == set(CATALOGUE)


def test_the_public_reason_codes_stay_as_they_were():
    assert reason("too_large") == reason("decompression_bomb") == "too_large"
    assert reason("bad_data_url") == reason("bad_upload") == "unreadable"
    assert all(reason(code) == code for code in input_check.REASONS)


def test_an_unknown_code_or_wrong_params_fail_where_they_are_raised():
    with pytest.raises(KeyError):
        CodedError("no_such_code")
    with pytest.raises(TypeError):
        ImageLoadError("too_small", width=1)


def test_an_image_error_survives_pickling():
    error = ImageLoadError("too_small", width=1, height=2, min_side=32)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.code, copy.params, str(copy)) == (ImageLoadError, error.code, error.params, str(error))


def test_every_page_text_has_both_languages_with_the_same_fields():
    from melanoma_screen.feedback import TRUE_LABELS
    from melanoma_screen.ui_text import TEXT

    def flat(texts, prefix=""):
        out = {}
        for key, value in texts.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
        return out

    english, french = flat(TEXT["en"]), flat(TEXT["fr"])
    assert set(english) == set(french) and set(TEXT) == set(LANGUAGES)
    for key, text in english.items():
        assert text.strip() and french[key].strip(), key
        assert template_fields(text) == template_fields(french[key]), key
    assert all(tuple(TEXT[lang]["truth_choices"]) == TRUE_LABELS for lang in LANGUAGES)
