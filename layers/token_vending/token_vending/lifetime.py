"""A token's lifetime: ``expires_in`` (a number or a numeric string), else the JWT ``exp`` claim.

Both are bounded by ``MAX_SANE_LIFETIME``: a provider that states a lifetime of decades, or an expiry past the year
9999, states nothing a cache can schedule by (and a date that cannot even be written out).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import TYPE_CHECKING, Any

from token_vending.numbers import parse_decimal

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_SANE_LIFETIME = 400 * 24 * 3600
NUMERIC_DATE_LIMIT = 2**63 - 1
"""Bound of a JWT ``exp`` as read (seconds either side of the epoch): every clock comparison stays a number."""


class LifetimeError(ValueError):
    """The provider sent a lifetime that cannot be trusted (not a positive number)."""


def parse_expires_in(value: Any) -> int:
    """Accept a number and the same number quoted (``3600``, ``"3600"``, ``3600.5``, ``"1e3"``: some providers
    quote numbers), in whole seconds rounded down; refuse anything else, and anything outside
    (0, ``MAX_SANE_LIFETIME``]."""
    if isinstance(value, bool):
        raise LifetimeError("expires_in is a boolean")
    number: float | int | None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = value if math.isfinite(value) else None
    elif isinstance(value, str):
        number = parse_decimal(value)
    else:
        number = None
    if number is None:
        raise LifetimeError("expires_in is not a number")
    if not 0 < number <= MAX_SANE_LIFETIME or int(number) < 1:
        raise LifetimeError("expires_in is out of range")
    return int(number)


def lifetime_from(body: Mapping[str, Any], fields: tuple[str, ...]) -> int | None:
    """The first present lifetime field, parsed; ``None`` when none is present."""
    for name in fields:
        if name in body and body[name] is not None:
            return parse_expires_in(body[name])
    return None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """Claims of a JWT *without verifying it*: we only read ``exp`` to schedule a refresh; the
    provider's API verifies the signature. Returns ``None`` when the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 16384:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):  # nested past the parser's depth
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> int | None:
    """The ``exp`` claim in whole seconds, or ``None`` when the token is not a JWT or states no numeric ``exp``
    (a NumericDate, RFC 7519 section 2: a JSON number, possibly with a fraction)."""
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or (
            isinstance(exp, float) and not math.isfinite(exp)):
        return None
    # A JSON integer may have hundreds of digits, past what a float (the clock) can be compared with: clamped to
    # an int64 range, which is still past any sane lifetime (or long expired) and so refused as such.
    return max(-NUMERIC_DATE_LIMIT, min(int(exp), NUMERIC_DATE_LIMIT))


def beyond_sane_lifetime(expires_at: float, now: float) -> bool:
    """Whether an expiry lies further ahead than any lifetime the service trusts."""
    return expires_at - now > MAX_SANE_LIFETIME
