"""``auth=`` for requests and httpx: the vended token on every request, and one retry after a 401.

A 401 from the API being called means the token was refused (revoked, rotated at the provider): the
token is force-refreshed once -- naming the refused token, so that a burst of 401s in one process makes
one forced refresh -- and the request is sent once more. A second 401 is returned to the caller as is.
If the service hands back the refused token itself (it refreshes a provider's token at most once per
``ForceRefreshInterval``), the request is not sent again: the 401 is returned as is, and a warning naming
the provider and the token's fingerprint is logged (logger ``token_vending_client``).

httpx needs an ``httpx.Auth`` instance to retry; requests needs a callable. This class is both when httpx
is installed, and a plain callable otherwise, so neither library is a dependency.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from token_vending_client.client import LOG, fingerprint, normalise_scope, source, way_in

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator

try:  # pragma: no cover - depends on what the caller installed
    import httpx

    _BASES: tuple[type, ...] = (httpx.Auth,)
except ImportError:  # pragma: no cover
    _BASES = ()

RETRIED = "_token_vending_retried"


def _bearer(headers: Any) -> str | None:
    value = headers.get("Authorization") or ""
    return value[7:] if value.startswith("Bearer ") else None


class _TokenVendingAuth:
    requires_request_body = True  # httpx: the body must be replayable for the retry after a 401

    def __init__(self, provider: str, *, api_url: str | None = None, function_name: str | None = None,
                 scope: str | None = None, min_ttl: float = 60, session: Any = None) -> None:
        way_in(api_url, function_name)  # a wrong argument fails here, not on the first request
        self.provider = provider
        self.min_ttl = min_ttl
        self._way = {"api_url": api_url, "function_name": function_name, "scope": scope, "session": session}

    def __repr__(self) -> str:
        scope = normalise_scope(self._way["scope"])
        return f"TokenVendingAuth(provider={self.provider!r}, scope={scope!r}, min_ttl={self.min_ttl})"

    def authorization(self) -> str:
        """The header value. The token source is looked up on every request, so that the token lives in the
        process's bounded set of sources only, and follows the session's credentials when they change."""
        return source(self.provider, **self._way).token(self.min_ttl).authorization

    def replacement(self, refused: str | None) -> str | None:
        """After a 401 to ``refused``: the header value of another token (forcing a refresh once), or
        ``None`` when the service can only hand back the refused token, which would earn another 401."""
        token = source(self.provider, **self._way).token(self.min_ttl, force_refresh=True, refused=refused)
        if token.access_token != refused:
            return token.authorization
        LOG.warning("%s: token %s was answered 401 and the service has no other yet (a forced refresh is "
                    "rate-limited); the 401 is returned without retrying", self.provider, fingerprint(refused),
                    extra={"provider": self.provider, "token": fingerprint(refused)})
        return None

    # -- requests -------------------------------------------------------------------------------------
    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self.authorization()
        request.register_hook("response", self._requests_retry_on_401)
        return request

    def _requests_retry_on_401(self, response: Any, **kwargs: Any) -> Any:
        if response.status_code != 401 or getattr(response.request, RETRIED, False):
            return response
        authorization = self.replacement(_bearer(response.request.headers))
        if authorization is None:
            return response
        retry = response.request.copy()
        retry.headers["Authorization"] = authorization
        setattr(retry, RETRIED, True)
        response.content  # noqa: B018 - read and release the connection before sending again
        response.close()
        again = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again

    # -- httpx ----------------------------------------------------------------------------------------
    def auth_flow(self, request: Any) -> Generator[Any, Any]:
        request.headers["Authorization"] = self.authorization()
        response = yield request
        if response.status_code == 401:
            authorization = self.replacement(_bearer(request.headers))
            if authorization is not None:
                request.headers["Authorization"] = authorization
                yield request

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        """As ``auth_flow``; the token fetch (botocore, blocking) runs in a worker thread."""
        if self.requires_request_body:
            await request.aread()
        request.headers["Authorization"] = await asyncio.to_thread(self.authorization)
        response = yield request
        if response.status_code == 401:
            authorization = await asyncio.to_thread(self.replacement, _bearer(request.headers))
            if authorization is not None:
                request.headers["Authorization"] = authorization
                yield request


class TokenVendingAuth(_TokenVendingAuth, *_BASES):  # type: ignore[misc]
    """``auth=`` for ``requests`` and ``httpx``: a token from the service for ``provider`` (and ``scope``),
    through its API (``api_url``, SigV4-signed with ``session``'s credentials) or by invoking the provider
    function directly (``function_name``); kept in memory until less than ``min_ttl`` seconds are left.

    ``api_url`` is the stack's ``ApiUrl`` output as given
    (``https://{api}.execute-api.{region}.amazonaws.com/{stage}/token/``), or the same without ``token/``.
    """
