"""Image prompts: three formats, a pixel cap before decoding, a small square out."""

import io
import time
import tracemalloc

import pytest
from PIL import Image

from ml_backend.image_prompts import STORED_SIDE, ImagePromptError, decode_square, normalize
from tests.ml_backend import hostile_images as hostile


@pytest.mark.parametrize("fmt", sorted(hostile.REFUSED_FORMATS))
def test_only_png_jpeg_and_webp_are_read(fmt: str) -> None:
    with pytest.raises(ImagePromptError, match="not a readable PNG, JPEG or WebP"):
        normalize(hostile.REFUSED_FORMATS[fmt])


@pytest.mark.parametrize("name", sorted(hostile.BOMBS))
def test_pixel_bombs_are_refused_before_decoding(name: str) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImagePromptError, match="megapixels"):
            normalize(hostile.BOMBS[name])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB allocated to refuse {name}"


@pytest.mark.parametrize("name", sorted(hostile.BROKEN))
def test_broken_files_are_one_clear_error(name: str) -> None:
    with pytest.raises(ImagePromptError, match="not a readable"):
        normalize(hostile.BROKEN[name])


@pytest.mark.parametrize(("fmt", "mode", "size", "expected"), [
    ("JPEG", "RGB", (3000, 2000), STORED_SIDE),   # reduced to the stored square
    ("PNG", "RGBA", (900, 1600), STORED_SIDE),
    ("PNG", "P", (120, 90), 90),                  # small: kept as is, cropped square
    ("WEBP", "RGB", (640, 480), STORED_SIDE),
    ("PNG", "L", (5, 500), 5),
])
def test_accepted_pictures_become_a_small_square_png(fmt: str, mode: str, size: tuple,
                                                      expected: int) -> None:
    stored = normalize(hostile.picture(fmt, size, mode))
    with Image.open(io.BytesIO(stored)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (expected, expected))


def test_the_centre_is_what_is_kept() -> None:
    wide = Image.new("RGB", (300, 100), "red")
    wide.paste(Image.new("RGB", (100, 100), "blue"), (100, 0))
    out = io.BytesIO()
    wide.save(out, format="PNG")
    square = decode_square(out.getvalue(), side=50)
    assert square.size == (50, 50) and square.getpixel((25, 25)) == (0, 0, 255)
