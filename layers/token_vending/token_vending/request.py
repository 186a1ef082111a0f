"""The caller's request (scope, min_ttl, force_refresh), validated the same way for both entry points.

API Gateway delivers strings in ``queryStringParameters``; direct invocation delivers JSON values.
Both end as a :class:`TokenRequest` or an :class:`~token_vending.exceptions.InvalidRequest`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from token_vending import constants
from token_vending.exceptions import InvalidRequest
from token_vending.scopes import parse_scope_set, scope_key

PARAMETERS = ("scope", "min_ttl", "force_refresh")
MAX_PARAMETER_LENGTH = 2048


FINGERPRINT = re.compile(r"^[0-9a-f]{8}$")
"""``force_refresh=<fingerprint>``: the first eight hex digits of the SHA-256 of the refused access token."""


@dataclass(frozen=True)
class TokenRequest:
    provider: str
    scopes: frozenset[str]
    min_ttl: int
    force_refresh: bool
    refused: str | None = None
    """With ``force_refresh``, the fingerprint of the token the caller was refused with, when it named it: a
    cached token with another fingerprint has already replaced that one and is served as it is, so callers
    that all got a 401 for the same token cause one refresh, however late they ask."""

    @property
    def scope_key(self) -> str:
        """The cache key: the normalised set, or ``""`` for a request naming none (the connection's default
        scopes, resolved when a token is fetched)."""
        return scope_key(self.scopes)


def _scopes(raw: Any, provider: str, takes_scope: bool) -> frozenset[str]:
    """Syntax only: which scopes a connection allows is its own setting, checked by its function on a miss
    (:func:`check_scopes`). No scope is the empty set: the ``""`` key, the connection's default scopes."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, str):
        raise InvalidRequest("scope must be a space-separated string", provider=provider)
    if len(raw) > MAX_PARAMETER_LENGTH:
        raise InvalidRequest(f"scope is too long: at most {MAX_PARAMETER_LENGTH} characters", provider=provider)
    try:
        requested = parse_scope_set(raw)
    except ValueError as exc:
        raise InvalidRequest(f"scope is invalid: {exc}", provider=provider) from None
    if requested and not takes_scope:
        raise InvalidRequest("this provider takes no scope", provider=provider)
    return requested


def check_scopes(requested: frozenset[str], allowed: frozenset[str], *, provider: str) -> None:
    """Refuse scopes the connection does not allow (its function, on a miss, once its settings are read)."""
    if not requested:
        return
    if not allowed:
        raise InvalidRequest("this provider takes no scope", provider=provider)
    outside = requested - allowed
    if outside:
        # Name how many, not which: the values are caller input and are not echoed back. The allowed ones are
        # configuration, not secrets: naming them tells the caller what to ask for.
        raise InvalidRequest(f"scope names {len(outside)} scope(s) outside the configured set; this provider "
                             f"allows: {' '.join(sorted(allowed))}", provider=provider)


def _min_ttl(raw: Any, provider: str, limit: int) -> int:
    """``limit`` comes from configuration only (the documented lifetime minus its refresh margin), never
    from what the cache holds: the same request gets the same answer on a cold or a warm cache."""
    if raw is None:
        return min(constants.DEFAULT_MIN_TTL, limit)  # never a client error for a parameter not sent
    allowed = (f"min_ttl must be between 0 and {limit} seconds for this provider (its tokens are documented to "
               f"live long enough for that, refresh margin included)")
    if isinstance(raw, bool):
        raise InvalidRequest(f"min_ttl must be a whole number of seconds; {allowed.removeprefix('min_ttl must be ')}",
                             provider=provider)
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.removeprefix("-").isdigit() and len(raw) <= 10:
        value = int(raw)  # a negative number is a number out of range, and is told so
    else:
        raise InvalidRequest(f"min_ttl must be a whole number of seconds; {allowed.removeprefix('min_ttl must be ')}",
                             provider=provider)
    if not 0 <= value <= limit:
        raise InvalidRequest(allowed, provider=provider)
    return value


def _force_refresh(raw: Any, provider: str) -> tuple[bool, str | None]:
    if raw is None or raw is False:
        return False, None
    if raw is True:
        return True, None
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true", None
    if isinstance(raw, str) and FINGERPRINT.fullmatch(raw):
        return True, raw
    raise InvalidRequest("force_refresh must be true, false or the refused token's fingerprint (8 lowercase hex "
                         "digits of its SHA-256)", provider=provider)


def parse_request(params: Mapping[str, Any] | None, *, provider: str, min_ttl_limit: int,
                  takes_scope: bool = True) -> TokenRequest:
    """Validate caller parameters; unknown parameters are refused rather than silently ignored.

    ``min_ttl_limit`` is :meth:`RefreshPolicy.min_ttl_limit` of the provider's documented lifetime;
    ``takes_scope`` is ``False`` for a provider that takes no scope (``ScopeMode.OMIT``): any scope is refused.
    """
    params = params or {}
    if not isinstance(params, Mapping):
        raise InvalidRequest("the request must be a JSON object", provider=provider)
    unknown = [key for key in params if key not in PARAMETERS]
    if unknown:
        raise InvalidRequest(f"unknown parameter(s); expected only {', '.join(PARAMETERS)}",
                             provider=provider)
    force_refresh, refused = _force_refresh(params.get("force_refresh"), provider)
    return TokenRequest(
        provider=provider,
        scopes=_scopes(params.get("scope"), provider, takes_scope),
        min_ttl=_min_ttl(params.get("min_ttl"), provider, min_ttl_limit),
        force_refresh=force_refresh,
        refused=refused,
    )


def fingerprint(token: str) -> str:
    """Eight hex characters of SHA-256: enough to correlate log lines or name a refused token, useless to an
    attacker."""
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:8]


def replaced(token: str, request: TokenRequest) -> bool:
    """Whether ``token`` already replaced the one the caller was refused with (so a forced refresh is moot)."""
    return request.refused is not None and fingerprint(token) != request.refused
