"""Decoding an uploaded image prompt with bounded work, shared by both sides.

An image file says its own size, and a few hundred KB of PNG can claim 20000×20000
pixels (1.6 GB decoded); Pillow also reads EPS (Ghostscript), TIFF, ICO and dozens
more formats whose decoders nobody here needs. So: three formats, a pixel cap checked
before decoding, and the picture reduced at once to what CLIP looks at, a centred
square. The web side does it once at submission and stores the small PNG; the ML
side runs the same function on what it is given, so neither trusts the other's input.

Pillow only, no numpy or torch: the web process imports this.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

__all__ = ["FORMATS", "MAX_PIXELS", "MAX_SIDE", "STORED_SIDE", "ImagePromptError",
           "decode_square", "normalize"]

FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 6000 * 6000           # a 36 MP phone photo; Pillow's own cap is 89 MP
MAX_SIDE = 12_000                  # a panorama may be long, not absurd
STORED_SIDE = 448                  # what is kept: 2× CLIP ViT-B/32's input, square


class ImagePromptError(ValueError):
    """An image prompt that cannot be used; the message says what to send instead."""


def decode_square(data: bytes, *, side: int) -> Image.Image:
    """The centred square of ``data``, as RGB, at most ``side`` pixels wide.

    Raises :class:`ImagePromptError` for anything but a PNG, JPEG or WebP within the
    size limits, including truncated files and decoder errors.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                width, height = img.size
                if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
                    raise ImagePromptError(
                        f"image prompt is {width}×{height} pixels; send at most "
                        f"{MAX_PIXELS // 1_000_000} megapixels (it is reduced to "
                        f"{STORED_SIDE}×{STORED_SIDE} anyway)")
                crop = min(width, height)
                box = ((width - crop) // 2, (height - crop) // 2,
                       (width - crop) // 2 + crop, (height - crop) // 2 + crop)
                img.draft("RGB", (side, side))  # JPEG: decode at 1/2..1/8 scale when it can
                scale_x, scale_y = img.size[0] / width, img.size[1] / height
                box = (int(box[0] * scale_x), int(box[1] * scale_y),
                       int(box[2] * scale_x), int(box[3] * scale_y))
                rgb = img.convert("RGB")
        square = rgb.crop(box)
        if square.width > side:
            square = square.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return square
    except ImagePromptError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImagePromptError(f"image prompt claims too many pixels; send at most "
                               f"{MAX_PIXELS // 1_000_000} megapixels") from None
    except Exception as exc:  # Pillow decoders raise OSError, SyntaxError, ValueError...
        raise ImagePromptError(f"image prompt is not a readable PNG, JPEG or WebP image "
                               f"({type(exc).__name__})") from None


def normalize(data: bytes) -> bytes:
    """What the web side stores for an image prompt: a small square PNG."""
    out = io.BytesIO()
    decode_square(data, side=STORED_SIDE).save(out, format="PNG")
    return out.getvalue()
