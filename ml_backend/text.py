"""Text the service stores and streams, and the one way to read a decimal number.

Two small definitions that every door uses, so a class of input is handled once:

* :func:`plain_text`: what a prompt, a seed name or a key's name may hold. Line and
  paragraph breaks of every kind become spaces (``\\n``, ``\\r``, tabs, and Unicode's
  LINE SEPARATOR and PARAGRAPH SEPARATOR, which ``str.splitlines`` and so many line
  readers split on: one in a prompt cut a server-sent event in two for httpx); other
  control characters are refused (they end up in logs, PNG metadata and other people's
  pages).
* :func:`parse_decimal`: ASCII digits only. ``str.isdigit`` is true for ``"²"`` and
  ``"①"``, which ``int()`` then refuses: a check and a parse that disagree are a crash
  waiting for its input.

Stdlib only (part of the contract both sides import without torch).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["LINE_BREAKS", "line_safe_json", "parse_decimal", "plain_text"]

# every character str.splitlines() breaks on (and so httpx's and many other line readers)
LINE_BREAKS: Final = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_AS_SPACE: Final = {ord(c): " " for c in "\t\n\r\v\f\u2028\u2029"}
_DECIMAL: Final = re.compile(r"[0-9]+", re.ASCII)
# JSON escapes every control character below U+0020 but leaves these raw
_RAW_BREAKS: Final = {ord("\x85"): "\\u0085", ord("\u2028"): "\\u2028",
                      ord("\u2029"): "\\u2029"}


def plain_text(text: str) -> str:
    """Text as stored and shown: tabs and line or paragraph breaks become spaces, other
    control characters are refused."""
    text = text.replace("\r\n", " ").translate(_AS_SPACE)
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"control character U+{ord(bad):04X} is not allowed in text")
    return text


def parse_decimal(text: str, *, max_digits: int = 19) -> int | None:
    """``text`` as a non-negative integer if it is 1..``max_digits`` ASCII digits, else
    None (a sign, spaces, Unicode digits and superscripts are not numbers here)."""
    if len(text) > max_digits or not _DECIMAL.fullmatch(text):
        return None
    return int(text)


def line_safe_json(document: str) -> str:
    """A JSON document with no character any line reader breaks on: the few JSON leaves
    raw (NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR) are written as escapes, which mean the
    same characters to a JSON parser. For one-line framings: SSE ``data:``, NDJSON."""
    return document.translate(_RAW_BREAKS)
