"""The contract's response documents: the token body, and API Gateway proxy responses."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from token_vending.exceptions import TokenVendingError, UpstreamUnavailable

if TYPE_CHECKING:
    from token_vending.cache import CachedToken

NO_STORE_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}


def token_body(token: CachedToken, now: float | None = None) -> dict[str, Any]:
    """``expires_in`` is what is left at response time, not the provider's original lifetime."""
    now = time.time() if now is None else now
    return {
        "provider": token.provider,
        "access_token": token.access_token,
        "token_type": "Bearer",
        "expires_in": max(0, int(token.expires_at - now)),
        "expires_at": datetime.fromtimestamp(token.expires_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scope": token.scope,
    }


def api_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**NO_STORE_HEADERS, **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def error_response(error: TokenVendingError) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if isinstance(error, UpstreamUnavailable) and error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return api_response(error.status, error.body(), headers)
