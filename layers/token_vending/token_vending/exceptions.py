"""The service's error types: one class per contract error code.

The class name is the contract's error code in PascalCase because AWS Lambda reports an unhandled
exception's class name as ``errorType``: a Step Functions ``Retry``/``Catch`` matches on it, and the
token API function maps it back to an HTTP status. ``str(exc)`` is the JSON error body, so the same
``{"error", "error_description", "provider"}`` document reaches both kinds of caller.
"""

from __future__ import annotations

import json
import re
from typing import Any

_UNSAFE = re.compile(r"[^\x20-\x7e]")
MAX_DESCRIPTION = 200


def sanitise(text: object, limit: int = MAX_DESCRIPTION) -> str:
    """Printable ASCII only, bounded: upstream text must not smuggle control characters into logs."""
    cleaned = _UNSAFE.sub("?", str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


class TokenVendingError(Exception):
    """Base class: carries the contract's status, error code and a safe description."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, description: str, *, provider: str | None = None, provider_fault: bool = True,
                 **extra: Any) -> None:
        self.description = sanitise(description)
        self.provider = provider
        self.provider_fault = provider_fault
        """``False`` when the provider was not (or not fully) asked: our own lack of time, Secrets Manager
        down. Only a real provider failure starts a cool-down or counts as ``UpstreamFailure``."""
        self.extra = {key: value for key, value in extra.items() if value is not None}
        super().__init__(self.description)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.description, "provider": self.provider,
                **self.extra}

    @classmethod
    def from_body(cls, body: dict[str, Any], provider: str | None) -> TokenVendingError:
        """Rebuild the error a provider function raised, from the body in Lambda's ``errorMessage``."""
        return cls(str(body.get("error_description", "")), provider=provider)

    def __str__(self) -> str:
        return json.dumps(self.body(), separators=(",", ":"))


class InvalidRequest(TokenVendingError):
    status = 400
    code = "invalid_request"


class UnknownProvider(TokenVendingError):
    status = 404
    code = "unknown_provider"


class Misconfigured(TokenVendingError):
    """Secret or settings missing or malformed. Names the field, never its value."""

    status = 500
    code = "misconfigured"


class UpstreamRejected(TokenVendingError):
    """The provider refused the credentials or the request; ``upstream_error`` is its own code."""

    status = 502
    code = "upstream_rejected"

    def __init__(self, description: str, *, upstream_error: str, upstream_status: int | None = None,
                 provider: str | None = None) -> None:
        super().__init__(description, provider=provider, upstream_error=sanitise(upstream_error, 64),
                         upstream_status=upstream_status)

    @property
    def upstream_error(self) -> str:
        return str(self.extra["upstream_error"])

    @property
    def upstream_status(self) -> int | None:
        status = self.extra.get("upstream_status")
        return status if isinstance(status, int) else None

    @classmethod
    def from_body(cls, body: dict[str, Any], provider: str | None) -> TokenVendingError:
        status = body.get("upstream_status")
        return cls(str(body.get("error_description", "")), upstream_error=str(body.get("upstream_error", "unknown")),
                   upstream_status=status if isinstance(status, int) else None, provider=provider)


class UpstreamInvalidResponse(TokenVendingError):
    status = 502
    code = "upstream_invalid_response"


class UpstreamUnavailable(TokenVendingError):
    """Unreachable, 5xx or 429 after retries; ``retry_after`` (seconds) when the provider said."""

    status = 503
    code = "upstream_unavailable"

    def __init__(self, description: str, *, retry_after: int | None = None, provider: str | None = None,
                 provider_fault: bool = True) -> None:
        super().__init__(description, provider=provider, provider_fault=provider_fault, retry_after=retry_after)

    @property
    def retry_after(self) -> int | None:
        value = self.extra.get("retry_after")
        return int(value) if value is not None else None

    @classmethod
    def from_body(cls, body: dict[str, Any], provider: str | None) -> TokenVendingError:
        retry_after = body.get("retry_after")
        return cls(str(body.get("error_description", "")), provider=provider,
                   retry_after=retry_after if isinstance(retry_after, int) and retry_after >= 0 else None)


class UpstreamTimeout(TokenVendingError):
    status = 504
    code = "upstream_timeout"


class InternalError(TokenVendingError):
    """A failure of this service itself (not of the provider); documented in the README."""

    status = 500
    code = "internal_error"


ERRORS_BY_TYPE: dict[str, type[TokenVendingError]] = {
    cls.__name__: cls
    for cls in (InvalidRequest, UnknownProvider, Misconfigured, UpstreamRejected,
                UpstreamInvalidResponse, UpstreamUnavailable, UpstreamTimeout, InternalError)
}
"""``errorType`` reported by Lambda -> error class, for the token API function."""

ERRORS_BY_CODE: dict[str, type[TokenVendingError]] = {cls.code: cls for cls in ERRORS_BY_TYPE.values()}
"""Contract error code -> error class, for errors stored as bodies (a failed refresh's cool-down)."""
