"""OAuth 2.0 scope syntax (RFC 6749 section 3.3) and the normalised scope set used as cache key."""

from __future__ import annotations

import re

_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")
MAX_SCOPES = 32


def parse_scope_set(value: str) -> frozenset[str]:
    """Split on single spaces and validate each scope-token; raises ``ValueError`` on bad syntax.

    Only the RFC's scope-token characters are accepted (no CR/LF, quotes or backslashes); callers are
    further held to the configured scope set, so only operator-approved values reach a provider.
    """
    if not isinstance(value, str):
        raise ValueError("scope must be a string")
    tokens = [token for token in value.split(" ") if token]
    if len(tokens) > MAX_SCOPES:
        raise ValueError("too many scopes")
    for token in tokens:
        if not _SCOPE_TOKEN.match(token):
            raise ValueError("scope contains a character outside RFC 6749 scope-token")
    return frozenset(tokens)


def scope_key(scopes: frozenset[str]) -> str:
    """Sorted, de-duplicated, space-separated: the same set always gives the same cache key."""
    return " ".join(sorted(scopes))
