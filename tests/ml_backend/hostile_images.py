"""Image files an attacker would upload: formats nobody needs and pixel bombs.

Bombs are built by hand (a header claiming huge dimensions over a few bytes of
data), so making one costs nothing; shared by the ML and web tests.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def picture(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "#a4c").save(out, format=fmt)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header for width×height RGB, with rows of zeros that compress
    to almost nothing (the real bomb: 20000² in a few hundred KB)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * min((width * 3 + 1) * 8, 1 << 20), 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows)
            + _chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to claim width×height."""
    data = bytearray(picture("JPEG", (16, 16)))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 16]) + data[middle + 16:]


REFUSED_FORMATS = {fmt: picture(fmt) for fmt in ("TIFF", "BMP", "ICO", "GIF", "PPM", "TGA",
                                                 "PCX", "EPS")}
BOMBS = {
    "png-20000": png_claiming(20_000, 20_000),      # over Pillow's own bomb limit: was a 500
    "png-12000": png_claiming(12_000, 12_000),      # under it: was accepted, 1.6 GB to decode
    "png-long": png_claiming(60_000, 10),           # few pixels, absurd side
    "jpeg-20000": jpeg_claiming(20_000, 20_000),
    "jpeg-8000": jpeg_claiming(8_000, 8_000),
}
BROKEN = {
    "truncated-png": picture("PNG", (300, 300))[:200],
    "truncated-jpeg": picture("JPEG", (300, 300))[:300],
    "png-corrupt-data": _corrupt_middle(picture("PNG", (300, 300))),
    "empty": b"",
    "text": b"definitely not a picture",
}
