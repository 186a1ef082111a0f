"""The service's contract errors as exceptions, named as the provider functions name them.

A caller catches ``UpstreamUnavailable`` here exactly as a Step Functions state machine matches it on a
direct invocation; ``retry_after`` is the service's own ``Retry-After`` (seconds) when it gave one.
"""

from __future__ import annotations

from typing import Any


class TokenVendingError(Exception):
    """Base class: the contract's error ``code``, its HTTP ``status`` and a safe ``description``."""

    code = "internal_error"
    status = 500

    def __init__(self, description: str, *, provider: str | None = None, retry_after: int | None = None,
                 upstream_error: str | None = None, status: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.provider = provider
        self.retry_after = retry_after
        self.upstream_error = upstream_error
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, provider={self.provider!r})"


class InvalidRequest(TokenVendingError):
    code, status = "invalid_request", 400


class AccessDenied(TokenVendingError):
    """API Gateway refused the caller (403): unsigned, or not allowed ``execute-api:Invoke`` on the route."""

    code, status = "access_denied", 403


class UnknownProvider(TokenVendingError):
    code, status = "unknown_provider", 404


class Misconfigured(TokenVendingError):
    code, status = "misconfigured", 500


class InternalError(TokenVendingError):
    code, status = "internal_error", 500


class UpstreamRejected(TokenVendingError):
    code, status = "upstream_rejected", 502


class UpstreamInvalidResponse(TokenVendingError):
    code, status = "upstream_invalid_response", 502


class UpstreamUnavailable(TokenVendingError):
    code, status = "upstream_unavailable", 503


class UpstreamTimeout(TokenVendingError):
    code, status = "upstream_timeout", 504


ERRORS: tuple[type[TokenVendingError], ...] = (
    InvalidRequest, AccessDenied, UnknownProvider, Misconfigured, InternalError, UpstreamRejected,
    UpstreamInvalidResponse, UpstreamUnavailable, UpstreamTimeout)
BY_CODE = {cls.code: cls for cls in ERRORS}
BY_NAME = {cls.__name__: cls for cls in ERRORS}


def from_body(cls: type[TokenVendingError], body: Any, *, provider: str, status: int | None = None,
              retry_after: int | None = None) -> TokenVendingError:
    """Build ``cls`` from a contract error body (dict) or whatever else came back."""
    document = body if isinstance(body, dict) else {}
    description = document.get("error_description") or document.get("message") or cls.code
    if retry_after is None and isinstance(document.get("retry_after"), int):
        retry_after = document["retry_after"]
    upstream = document.get("upstream_error")
    return cls(str(description)[:300], provider=provider, retry_after=retry_after,
               upstream_error=upstream if isinstance(upstream, str) else None, status=status)
