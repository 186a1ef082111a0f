"""JSON objects read from outside (a provider's answer, a secret), one way everywhere.

A member of the object named twice is ambiguous: RFC 8259 section 4 leaves which value counts to the parser (Python
keeps the last, others the first), so the writer's meaning cannot be known and the document is refused rather than
guessed at. Only the object's own members are read, so a duplicate nested inside one of them (an extension nobody
here reads) refuses nothing. Nesting past the parser's depth, invalid UTF-8 and non-JSON are no object at all.
"""

from __future__ import annotations

import json
from typing import Any


class AmbiguousDocument(ValueError):
    """A JSON object names one of its own members twice."""


class _Duplicated(dict[str, Any]):
    """An object that named a member twice (the last value kept): refused only if it is the document itself."""


def _marked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    return _Duplicated(document) if len(document) != len(pairs) else document


def json_object(raw: str | bytes) -> dict[str, Any] | None:
    """``raw`` as a JSON object; ``None`` when it is none. Raises :class:`AmbiguousDocument`."""
    try:
        value = json.loads(raw, object_pairs_hook=_marked)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(value, _Duplicated):
        raise AmbiguousDocument("duplicate member names")
    return value if isinstance(value, dict) else None
