"""Numbers written as text, read one way everywhere: ASCII decimal notation only.

``str.isdigit`` is true for superscripts and other scripts' digits (``"²"``, ``"٣"``) that ``int`` then refuses or
reads as a number nobody typed, and ``float`` accepts ``"1_000"``, ``"inf"`` and ``"nan"``. Provider answers
(``expires_in``, ``Retry-After``) and operator settings are read with these two functions instead, so a value is
either a plain decimal number or refused with the contract's error, never an unexpected exception.
"""

from __future__ import annotations

import math
import re

_WHOLE = re.compile(r"[0-9]{1,30}", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
MAX_TEXT = 64
"""Longer text is no number a provider or an operator means (and is never parsed digit by digit)."""


def parse_whole(text: str) -> int | None:
    """A non-negative whole number in ASCII digits (surrounding blanks allowed), else ``None``."""
    text = text.strip()
    if len(text) > MAX_TEXT or not _WHOLE.fullmatch(text):
        return None
    return int(text)


def parse_decimal(text: str) -> float | None:
    """A finite decimal number as JSON writes one (``3600``, ``3600.5``, ``1e3``), leading zeros and a sign
    allowed, in ASCII only; else ``None``."""
    text = text.strip()
    if len(text) > MAX_TEXT or not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
