"""A vended token on a request in one line.

``TokenVendingAuth`` is ``auth=`` for requests and httpx; ``get_token`` serves code that is not an HTTP
client. Both take the stack's ``ApiUrl`` output as ``api_url``, keep the token in memory until less than
``min_ttl`` is left, fetch it once at a time per provider, scope set and identity (credentials and target,
however many sessions carry them) in a process, and raise the service's errors by their contract names.
"""

from __future__ import annotations

from token_vending_client.auth import TokenVendingAuth
from token_vending_client.client import Token, get_token
from token_vending_client.errors import (
    AccessDenied,
    InternalError,
    InvalidRequest,
    Misconfigured,
    TokenVendingError,
    UnknownProvider,
    UpstreamInvalidResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__version__ = "0.3.0"  # the layer's token_vending.__version__: tests/unit/test_release.py holds them equal

__all__ = [
    "AccessDenied",
    "InternalError",
    "InvalidRequest",
    "Misconfigured",
    "Token",
    "TokenVendingAuth",
    "TokenVendingError",
    "UnknownProvider",
    "UpstreamInvalidResponse",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "get_token",
]
