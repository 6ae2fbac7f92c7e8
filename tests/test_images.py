"""decode_batches: the one loop over image files that may fail to decode (predict.py, evaluation, input check)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES

from melanoma_screen.images import ImageLoadError, decode_batches, load_rgb_image


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory) -> list:
    """Real examples with bad files between them: text named .jpg, a truncated JPEG, a missing file."""
    folder = tmp_path_factory.mktemp("mixed")
    (folder / "notes.jpg").write_text("not an image\n")
    data = (EXAMPLES / "malignant_3.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return [EXAMPLES / "benign_1.jpg", folder / "notes.jpg", EXAMPLES / "malignant_1.jpg", folder / "truncated.jpg",
            EXAMPLES / "benign_2.jpg", folder / "missing.jpg", EXAMPLES / "malignant_2.jpg"]


def test_batches_hold_the_decoded_images_and_the_failures_in_order(mixed_sources):
    batches = list(decode_batches(mixed_sources, batch_size=3))
    assert [(batch.start, len(batch.sources)) for batch in batches] == [(0, 3), (3, 3), (6, 1)]
    assert [p for batch in batches for p in batch.positions] == [0, 2, 4, 6]
    failures = {i: error for batch in batches for i, error in batch.failures}
    assert {i: error.code for i, error in failures.items()} == {1: "not_an_image", 3: "damaged", 5: "not_found"}
    for batch in batches:
        for position, image in zip(batch.positions, batch.images):
            expected = load_rgb_image(mixed_sources[position])
            assert image.size == expected.size and np.array_equal(np.asarray(image), np.asarray(expected))


def test_failures_outside_skip_raise_the_first_of_the_batch(mixed_sources):
    with pytest.raises(ImageLoadError) as caught:
        for _ in decode_batches(mixed_sources, batch_size=3, skip=()):
            pass
    assert caught.value.code == "not_an_image"  # index 1, before the truncated file at 3


def test_an_unexpected_error_is_raised_unless_skipped():
    def decode_each(chunk):
        return [PermissionError("no read access") if source == "locked" else Image.new("RGB", (40, 40))
                for source in chunk]

    with pytest.raises(PermissionError):
        list(decode_batches(["a", "locked"], batch_size=4, decode_each=decode_each))
    (batch,) = decode_batches(["a", "locked"], batch_size=4, decode_each=decode_each, skip=Exception)
    assert batch.positions == [0] and [(i, type(e)) for i, e in batch.failures] == [(1, PermissionError)]
