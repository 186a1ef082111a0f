"""JSON objects read from outside (a provider's answer, a secret), one way everywhere.

A member named twice is ambiguous: RFC 8259 section 4 leaves which value counts to the parser (Python keeps the
last, others the first), so the writer's meaning cannot be known and the document is refused rather than guessed
at. Nesting past the parser's depth, invalid UTF-8 and non-JSON are no object at all.
"""

from __future__ import annotations

import json
from typing import Any


class AmbiguousDocument(ValueError):
    """A JSON object names one member twice."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise AmbiguousDocument("duplicate member names")
    return document


def json_object(raw: str | bytes) -> dict[str, Any] | None:
    """``raw`` as a JSON object; ``None`` when it is none. Raises :class:`AmbiguousDocument`."""
    try:
        value = json.loads(raw, object_pairs_hook=_unique_members)
    except AmbiguousDocument:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
