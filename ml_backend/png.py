"""PNG encoding that records how a picture was made in its text chunks."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from PIL import Image, PngImagePlugin

__all__ = ["encode_png", "read_png_text"]


def encode_png(pixels: np.ndarray, text: Mapping[str, object] | None = None) -> bytes:
    """pixels: [H, W, 3] uint8 -> PNG bytes with one iTXt chunk per ``text`` entry."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        if value is not None:
            info.add_itxt(key, str(value))
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", pnginfo=info, optimize=False)
    return buf.getvalue()


def read_png_text(data: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(data)) as img:
        return dict(getattr(img, "text", {}))
