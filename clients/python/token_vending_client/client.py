"""Getting a token from the service, once per process, scope set and identity, and keeping it while it is good.

Two ways in, as the service offers them: its HTTP API (``GET /token/{provider}``, SigV4-signed with the
caller's own AWS credentials) or a direct ``lambda:Invoke`` of the provider function (from inside the
account, e.g. a Lambda function behind Step Functions). Either way the answer is the same token body, and
failures are the same named errors.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
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
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9-]+\.execute-api\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?$")
"""An execute-api host names its Region: ``{api}``, a private API's ``{api}-{vpce}`` alias, or an interface
endpoint's own ``{vpce}.execute-api.{region}.vpce.amazonaws.com``."""
MAX_SOURCES = 256
"""Token sources kept per process, least recently used dropped first: enough for every provider, scope set
and identity a process really uses, and a bound for code that makes sessions with ever new credentials."""
_IDENTITY_KEY = secrets.token_bytes(32)
"""Keys the digest of a secret access key in the sources' keys: a process-local HMAC, never the secret."""


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


def api_base(api_url: str) -> str:
    """The token API's base URL, ``{scheme}://{host}/{stage}``, from what a user was given.

    Accepted as is: the stack's ``ApiUrl`` output (``https://{api}.execute-api.{region}.amazonaws.com/
    {stage}/token/``, locally ``http://127.0.0.1:3000/v1/token/``) or that URL without ``token/``, with or
    without the trailing slash. The library appends ``/token/{provider}``.
    """
    parts = urlsplit(api_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("api_url: give the stack's ApiUrl output "
                         "(https://{api}.execute-api.{region}.amazonaws.com/{stage}/token/)")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/token")
    return f"{parts.scheme}://{parts.netloc}{path}"


def normalise_scope(scope: str | None) -> str:
    """The service's cache key: sorted, de-duplicated scopes."""
    return " ".join(sorted(set((scope or "").split())))


def way_in(api_url: str | None, function_name: str | None) -> str | None:
    """Checks that exactly one way in is given; the API's base URL (:func:`api_base`) if it is the API."""
    if (api_url is None) == (function_name is None):
        raise ValueError("give exactly one of api_url and function_name")
    return api_base(api_url) if api_url is not None else None


class TokenSource:
    """One provider and scope set, through one way in, for one identity (:func:`source` makes them): the
    token, and the lock that makes its fetches one at a time in this process (a burst of threads on a cold
    start makes one request to the service)."""

    def __init__(self, provider: str, *, api_url: str | None, function_name: str | None, scope: str,
                 session: Any) -> None:
        self.provider = provider
        self.api_url = api_url
        self.function_name = function_name
        self.scope = scope
        self._session = session
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._lambda: Any = None

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
            SigV4Auth(credentials.get_frozen_credentials(), "execute-api", signing_region(self._session, url)
                      ).add_auth(request)
        response = _pool().request("GET", url, headers=dict(request.headers.items()), timeout=HTTP_TIMEOUT,
                                        retries=False, redirect=False)
        try:
            body = json.loads(response.data)
        except ValueError:
            body = None
        if response.status == 200:
            return Token.from_body(body, self.provider)
        retry_after = (response.headers.get("Retry-After") or "").strip()
        code = body.get("error") if isinstance(body, dict) else None
        cls = AccessDenied if response.status == 403 else BY_CODE.get(str(code), TokenVendingError)
        plain = retry_after.isascii() and retry_after.isdigit() and len(retry_after) < 9
        seconds = int(retry_after) if plain else None
        raise from_body(cls, body, provider=self.provider, status=response.status, retry_after=seconds)

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


def _session_region(session: Any) -> str | None:
    region = getattr(session, "region_name", None)  # boto3.Session
    if region is None and hasattr(session, "get_config_variable"):  # botocore session
        region = session.get_config_variable("region")
    return str(region) if region else None


def signing_region(session: Any, url: str) -> str:
    """The region a request to ``url`` is signed for: an execute-api host names it, else the session's."""
    match = _EXECUTE_API_HOST.match(urlsplit(url).hostname or "")
    if match:
        return match.group(1)
    return _session_region(session) or "us-east-1"


def identity(session: Any, api_url: str | None) -> tuple[Hashable, ...]:
    """Who asks, and where the request goes: what decides which token a session may share.

    The resolved credentials (access key id, and a process-local HMAC of the secret key and session token:
    never the secret itself), and the target: with ``api_url``, the region the request is signed for;
    without (a direct invocation), the session's region, profile (its configured endpoint) and the
    endpoint the environment sets. Sessions alike in these get one token source however many are made.
    """
    credentials = session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials is not None else None
    who: tuple[str, str] | None = None
    if frozen is not None:
        secret = f"{frozen.secret_key}\n{frozen.token or ''}".encode()
        who = (frozen.access_key, hmac.new(_IDENTITY_KEY, secret, hashlib.sha256).hexdigest())
    if api_url is not None:
        return (who, signing_region(session, api_url))
    profile = getattr(session, "profile_name", None) or getattr(session, "profile", None)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_LAMBDA") or os.environ.get("AWS_ENDPOINT_URL")
    return (who, _session_region(session), profile, endpoint)


_SOURCES: OrderedDict[Hashable, TokenSource] = OrderedDict()
_SOURCES_LOCK = threading.Lock()
_DEFAULT_SESSION: list[Any] = []
_POOL: list[Any] = []
_LAZY_LOCK = threading.Lock()


def source(provider: str, *, api_url: str | None = None, function_name: str | None = None,
           scope: str | None = None, session: Any = None) -> TokenSource:
    """The process-wide source for these arguments: every ``TokenVendingAuth`` and ``get_token`` call with
    the same provider, way in, scope set and :func:`identity` shares one token and one fetch at
    a time, whether it passes one session or a new one per call. At most ``MAX_SOURCES`` are kept."""
    base = way_in(api_url, function_name)
    session = session if session is not None else _default_session()
    key = (provider, base, function_name, normalise_scope(scope), identity(session, base))
    with _SOURCES_LOCK:
        found = _SOURCES.get(key)
        if found is not None:
            _SOURCES.move_to_end(key)
            return found
        found = TokenSource(provider, api_url=base, function_name=function_name, scope=normalise_scope(scope),
                            session=session)
        _SOURCES[key] = found
        while len(_SOURCES) > MAX_SOURCES:
            _SOURCES.popitem(last=False)
        return found


def _default_session() -> Any:
    """One boto3 session for the calls that give none (the default credential chain, resolved once)."""
    with _LAZY_LOCK:
        if not _DEFAULT_SESSION:
            import boto3

            _DEFAULT_SESSION.append(boto3.Session())
        return _DEFAULT_SESSION[0]


def _pool() -> Any:
    """One connection pool for the process's requests to the token API, whatever the source."""
    with _LAZY_LOCK:
        if not _POOL:
            import urllib3  # botocore's own HTTP client: no dependency beyond boto3

            _POOL.append(urllib3.PoolManager(maxsize=4))
        return _POOL[0]


def get_token(provider: str, *, api_url: str | None = None, function_name: str | None = None,
              scope: str | None = None, min_ttl: float = 60, force_refresh: bool = False,
              session: Any = None) -> Token:
    """A token for ``provider`` valid for at least ``min_ttl`` seconds, for code that is not an HTTP client.

    ``api_url`` is the stack's ``ApiUrl`` output (:func:`api_base`); ``function_name`` invokes the provider
    function instead. Kept in memory until less than ``min_ttl`` is left, shared by every session with the
    same :func:`identity`. Raises the contract's errors
    (:class:`~token_vending_client.errors.UpstreamUnavailable`, ...).
    """
    return source(provider, api_url=api_url, function_name=function_name, scope=scope,
                  session=session).token(min_ttl, force_refresh=force_refresh)


__all__ = ["Token", "TokenSource", "TokenVendingError", "api_base", "fingerprint", "get_token", "source", "way_in"]
