"""A token's lifetime: ``expires_in`` (integer or numeric string), else the JWT ``exp`` claim."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_SANE_LIFETIME = 400 * 24 * 3600


class LifetimeError(ValueError):
    """The provider sent a lifetime that cannot be trusted (not a positive number)."""


def parse_expires_in(value: Any) -> int:
    """Accept ``3600`` and ``"3600"`` (some providers quote numbers); refuse anything else."""
    if isinstance(value, bool):
        raise LifetimeError("expires_in is a boolean")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and math.isfinite(value):
        seconds = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        seconds = int(value.strip())
    else:
        raise LifetimeError("expires_in is not a number")
    if not 0 < seconds <= MAX_SANE_LIFETIME:
        raise LifetimeError("expires_in is out of range")
    return seconds


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
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> int | None:
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return int(exp)
