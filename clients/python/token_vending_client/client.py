"""Getting a token from the service, once per process and scope set, and keeping it while it is good.

Two ways in, as the service offers them: its HTTP API (``GET /token/{provider}``, SigV4-signed with the
caller's own AWS credentials) or a direct ``lambda:Invoke`` of the provider function (from inside the
account, e.g. a Lambda function behind Step Functions). Either way the answer is the same token body, and
failures are the same named errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from token_vending_client.errors import (
    BY_CODE,
    BY_NAME,
    AccessDenied,
    InternalError,
    TokenVendingError,
    UpstreamTimeout,
    from_body,
)

if TYPE_CHECKING:
    from collections.abc import Hashable

LOG = logging.getLogger("token_vending_client")
HTTP_TIMEOUT = 30.0
"""API Gateway ends a request at 29 s; the service answers before."""
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def _encode(value: str) -> str:
    """RFC 3986 percent-encoding, as SigV4 canonicalises: only unreserved characters stay as they are."""
    return quote(value, safe="-_.~")


def signable_query(params: dict[str, Any]) -> str:
    """The query string exactly as SigV4 canonicalises it (RFC 3986 encoded, sorted by key).

    botocore signs a URL's query as written; API Gateway decodes and re-encodes it before it verifies
    (``urlencode``'s ``a+b`` becomes ``a%2Bb``). Sending the canonical form makes the two agree, and
    urllib3 sends it unchanged (it has nothing left to encode).
    """
    pairs = {_encode(key): _encode(str(value).lower() if isinstance(value, bool) else str(value))
             for key, value in params.items()}
    return "&".join(f"{key}={value}" for key, value in sorted(pairs.items()))


def fingerprint(token: str) -> str:
    """What this library logs of a token: eight hex characters of its SHA-256, as the service does."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Token:
    """A vended token; ``expires_at`` is on this machine's clock (now + the service's ``expires_in``)."""

    provider: str
    access_token: str = field(repr=False)
    token_type: str
    expires_at: float
    scope: str | None

    @property
    def expires_in(self) -> int:
        return max(0, int(self.expires_at - time.time()))

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.access_token}"

    def lasts(self, seconds: float) -> bool:
        return self.expires_at - time.time() >= seconds

    @classmethod
    def from_body(cls, body: Any, provider: str) -> Token:
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise InternalError("the service returned no token", provider=provider)
        expires_in = body.get("expires_in")
        return cls(provider=provider, access_token=body["access_token"], token_type="Bearer",  # noqa: S106 - the OAuth token type
                   expires_at=time.time() + (expires_in if isinstance(expires_in, int) else 0),
                   scope=body.get("scope") if isinstance(body.get("scope"), str) else None)


def normalise_scope(scope: str | None) -> str:
    """The service's cache key: sorted, de-duplicated scopes."""
    return " ".join(sorted(set((scope or "").split())))


class TokenSource:
    """One provider and scope set, through one way in: the token, and the lock that makes its fetches one
    at a time in this process (a burst of threads on a cold start makes one request to the service)."""

    def __init__(self, provider: str, *, api_url: str | None, function_name: str | None, scope: str,
                 session: Any) -> None:
        if (api_url is None) == (function_name is None):
            raise ValueError("give exactly one of api_url and function_name")
        self.provider = provider
        self.api_url = api_url.rstrip("/") if api_url else None
        self.function_name = function_name
        self.scope = scope
        self._session = session
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._lambda: Any = None
        self._http: Any = None

    def __repr__(self) -> str:
        return (f"TokenSource(provider={self.provider!r}, scope={self.scope!r}, "
                f"via={'api' if self.api_url else 'lambda'})")

    def token(self, min_ttl: float, *, force_refresh: bool = False, refused: str | None = None) -> Token:
        """A token valid for at least ``min_ttl`` seconds.

        ``refused`` is the token a server just answered 401 to: if another thread already replaced it, the
        replacement is used without asking the service again, so a burst of 401s makes one forced refresh.
        """
        with self._lock:
            current = self._token
            if current is not None and current.lasts(min_ttl):
                if refused is not None and current.access_token != refused:
                    return current
                if not force_refresh:
                    return current
            token = self._fetch(min_ttl, force_refresh, refused)
            LOG.debug("token fetched", extra={"provider": self.provider, "token": fingerprint(token.access_token)})
            self._token = token
            return token

    # -- the two ways in --------------------------------------------------------------------------
    def _fetch(self, min_ttl: float, force_refresh: bool, refused: str | None = None) -> Token:
        params: dict[str, Any] = {"min_ttl": int(min_ttl)}
        if self.scope:
            params["scope"] = self.scope
        if force_refresh:
            # Naming the refused token lets the service serve its replacement when another caller already
            # forced one, instead of replacing that one too.
            params["force_refresh"] = fingerprint(refused) if refused is not None else True
        if self.api_url is not None:
            return self._from_api(params)
        return self._from_function(params)

    def _from_api(self, params: dict[str, Any]) -> Token:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = f"{self.api_url}/token/{_encode(self.provider)}?{signable_query(params)}"
        request = AWSRequest(method="GET", url=url)
        credentials = self._session.get_credentials()
        if credentials is not None:
            SigV4Auth(credentials.get_frozen_credentials(), "execute-api", self._region(url)).add_auth(request)
        response = self._pool().request("GET", url, headers=dict(request.headers.items()), timeout=HTTP_TIMEOUT,
                                        retries=False, redirect=False)
        try:
            body = json.loads(response.data)
        except ValueError:
            body = None
        if response.status == 200:
            return Token.from_body(body, self.provider)
        retry_after = response.headers.get("Retry-After")
        code = body.get("error") if isinstance(body, dict) else None
        cls = AccessDenied if response.status == 403 else BY_CODE.get(str(code), TokenVendingError)
        raise from_body(cls, body, provider=self.provider, status=response.status,
                        retry_after=int(retry_after) if retry_after and retry_after.isdigit() else None)

    def _from_function(self, params: dict[str, Any]) -> Token:
        client = self._lambda_client()
        response = client.invoke(FunctionName=self.function_name, Payload=json.dumps(params).encode())
        raw = response["Payload"].read()
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if not response.get("FunctionError"):
            return Token.from_body(document, self.provider)
        error_type = document.get("errorType") if isinstance(document, dict) else None
        message = document.get("errorMessage") if isinstance(document, dict) else None
        cls = BY_NAME.get(str(error_type))
        if cls is None:  # Lambda's own errors: Sandbox.Timedout, Runtime.*
            timed_out = isinstance(message, str) and "timed out" in message
            raise (UpstreamTimeout if timed_out else InternalError)("the provider function failed",
                                                                     provider=self.provider)
        try:
            body = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            body = None
        raise from_body(cls, body, provider=self.provider)

    # -- plumbing -----------------------------------------------------------------------------------
    def _region(self, url: str) -> str:
        match = _EXECUTE_API_HOST.match(urlsplit(url).hostname or "")
        if match:
            return match.group(1)
        region = getattr(self._session, "region_name", None)  # boto3.Session
        if region is None and hasattr(self._session, "get_config_variable"):  # botocore session
            region = self._session.get_config_variable("region")
        return str(region or "us-east-1")

    def _pool(self) -> Any:
        if self._http is None:
            import urllib3  # botocore's own HTTP client: no dependency beyond boto3

            self._http = urllib3.PoolManager(maxsize=4)
        return self._http

    def _lambda_client(self) -> Any:
        if self._lambda is None:
            from botocore.config import Config

            # A read timeout must not invoke the function a second time.
            config = Config(read_timeout=HTTP_TIMEOUT, retries={"mode": "standard", "max_attempts": 1})
            if hasattr(self._session, "client"):
                self._lambda = self._session.client("lambda", config=config)
            else:
                self._lambda = self._session.create_client("lambda", config=config)
        return self._lambda


_SOURCES: dict[Hashable, TokenSource] = {}
_SOURCES_LOCK = threading.Lock()


def source(provider: str, *, api_url: str | None = None, function_name: str | None = None,
           scope: str | None = None, session: Any = None) -> TokenSource:
    """The process-wide source for these arguments: every ``TokenVendingAuth`` and ``get_token`` call with
    the same provider, way in, scope set and session shares one token and one fetch at a time."""
    key = (provider, api_url, function_name, normalise_scope(scope), id(session) if session is not None else None)
    with _SOURCES_LOCK:
        found = _SOURCES.get(key)
        if found is None:
            found = TokenSource(provider, api_url=api_url, function_name=function_name,
                                scope=normalise_scope(scope), session=session or _default_session())
            _SOURCES[key] = found
        return found


def _default_session() -> Any:
    import boto3

    return boto3.Session()


def get_token(provider: str, *, api_url: str | None = None, function_name: str | None = None,
              scope: str | None = None, min_ttl: float = 60, force_refresh: bool = False,
              session: Any = None) -> Token:
    """A token for ``provider`` valid for at least ``min_ttl`` seconds, for code that is not an HTTP client.

    Kept in memory until less than ``min_ttl`` is left. Raises the contract's errors
    (:class:`~token_vending_client.errors.UpstreamUnavailable`, ...).
    """
    return source(provider, api_url=api_url, function_name=function_name, scope=scope,
                  session=session).token(min_ttl, force_refresh=force_refresh)


__all__ = ["Token", "TokenSource", "TokenVendingError", "fingerprint", "get_token", "source"]
