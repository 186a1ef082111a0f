"""One token request to a provider: urllib3 with its retries, bounded as a whole by a deadline.

Per-socket timeouts bound each read, not the request: a provider that trickles its headers or body a
byte at a time would keep a fetch running past its lease, and a second environment would then send a
second token request. So every socket of a fetch is registered with a :class:`Watchdog` that shuts it
down at the deadline, whatever urllib3 is doing (connecting, TLS, headers, body, retry).

urllib3 is botocore's own HTTP client (always in the runtime) and is imported on first use, so a cold
start answered from the cache never pays for it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, urlsplit

from token_vending.aws_errors import error_code
from token_vending.documents import AmbiguousDocument, json_object
from token_vending.exceptions import (
    Misconfigured,
    TokenVendingError,
    UpstreamInvalidResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    sanitise,
)
from token_vending.lifetime import LifetimeError, beyond_sane_lifetime, jwt_expiry, lifetime_from
from token_vending.numbers import parse_whole
from token_vending.profile import BasicEncoding, ClientAuth, ScopeMode, basic_authorization

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from mypy_boto3_kms import KMSClient
    from urllib3 import BaseHTTPResponse
    from urllib3.util.retry import Retry

    from token_vending.assertion import KmsSigner
    from token_vending.connection_settings import ConnectionSettings
    from token_vending.credentials import ClientCredentials
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.settings import ProviderSettings

MAX_BODY_BYTES = 64 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MIN_READ_TIMEOUT = 0.5
MIN_LIFETIME = 30
"""A token that lives less than this is unusable here (refresh margins, caller min_ttl): a provider
fault (or a clock problem), not something to fetch again on every request."""
SAFETY_SECONDS = 1.0
"""Kept back from the deadline so the function can still write the cache and answer."""
B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
"""RFC 6750 section 2.1 ``b64token``: what may follow ``Bearer `` in an Authorization header. Anything else
(spaces, CR/LF, quotes) would let a provider inject headers into every caller's requests."""
MAX_TOKEN_LENGTH = 16384


@dataclass(frozen=True)
class TokenGrant:
    access_token: str = field(repr=False)
    token_type: str
    scope: str | None
    lifetime: int
    fetched_at: float
    expires_at: int


class Watchdog:
    """Shuts down every socket of one fetch when its deadline passes.

    ``shutdown`` (not ``close``) is safe from another thread: a ``recv`` blocked in the fetching thread
    returns at once, urllib3 reports a broken or timed-out connection, and :meth:`fired` tells the two
    apart. A socket opened after the deadline (a retry) is shut down as it is registered.
    """

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.fire)
        self._timer.daemon = True

    @property
    def fired(self) -> bool:
        return self._fired or time.monotonic() >= self._deadline

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self._fired
        if fired:
            _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            self._fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _watched_pool(url: str, watchdog: Watchdog, timeout: tuple[float, float], *,
                  ssl_context: ssl.SSLContext | None = None, ca_bundle: str = "") -> Any:
    """A one-connection urllib3 pool for ``url`` whose sockets ``watchdog`` can shut down."""
    from botocore.httpsession import where
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class WatchedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            watchdog.register(sock)
            return sock

    class WatchedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            watchdog.register(sock)
            return sock

    parts = urlsplit(url)
    host = parts.hostname or ""  # settings.check_token_url guarantees one
    pool_timeout = Timeout(connect=timeout[0], read=timeout[1])
    if parts.scheme == "https":
        pool: Any = HTTPSConnectionPool(host, parts.port, maxsize=1, timeout=pool_timeout,
                                        cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle or where(),
                                        ssl_context=ssl_context)
        pool.ConnectionCls = WatchedHTTPSConnection
    else:
        pool = HTTPConnectionPool(host, parts.port, maxsize=1, timeout=pool_timeout)
        pool.ConnectionCls = WatchedHTTPConnection
    return pool


def _budgeted_retry_class() -> type[Retry]:
    """urllib3 ``Retry`` that gives up instead of sleeping past the deadline.

    Plain ``Retry`` honours ``Retry-After`` however long it is; a fetch has a hard end (the lease and the
    invocation), so a wait that cannot finish in time ends the retries and the last response is reported
    (with its ``Retry-After``) to the caller instead.
    """
    from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
    from urllib3.util.retry import Retry

    class BudgetedRetry(Retry):
        def __init__(self, *args: Any, deadline: float | None = None, attempt_seconds: float = 0.0,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.deadline = deadline
            self.attempt_seconds = attempt_seconds

        def new(self, **kw: Any) -> BudgetedRetry:
            kw.setdefault("deadline", self.deadline)
            kw.setdefault("attempt_seconds", self.attempt_seconds)
            return super().new(**kw)

        def increment(
            self, method: str | None = None, url: str | None = None, response: Any = None,
                      error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None
                      ) -> BudgetedRetry:
            new = super().increment(method, url, response, error, _pool, _stacktrace)
            wait: float | None = None
            if response is not None and self.respect_retry_after_header:
                try:
                    wait = new.get_retry_after(response)
                except InvalidHeader:
                    wait = None
            if wait is None:
                wait = new.get_backoff_time()
            # The wait *and* a whole further attempt (connect + read timeouts) must fit before the deadline.
            needed = wait + self.attempt_seconds
            if self.deadline is not None and time.monotonic() + needed > self.deadline:
                raise MaxRetryError(_pool, url or "", error or ResponseError("retry budget exhausted"))
            return new

    return BudgetedRetry


def transport_error(exc: BaseException, *, timed_out: bool, provider: str) -> TokenVendingError:
    """The contract's answer to a failure below HTTP: the connection, TLS, or reading the answer.

    Read errors surface from urllib3 directly (reads are not retried) or wrapped in ``MaxRetryError``
    (connection errors after retries); the cause decides. Nothing here is this service's own fault, so
    nothing here is an ``internal_error``.
    """
    from urllib3.exceptions import (
        ConnectTimeoutError,
        DecodeError,
        InvalidHeader,
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
        SSLError,
    )

    reason: BaseException = exc
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    if timed_out:
        return UpstreamTimeout("the provider did not finish answering in the time left", provider=provider)
    if isinstance(reason, NewConnectionError):
        return UpstreamUnavailable("the provider is unreachable (connection failed)", provider=provider)
    if isinstance(reason, ConnectTimeoutError):
        return UpstreamTimeout("the provider did not accept a connection in time", provider=provider)
    if isinstance(reason, (ReadTimeoutError, TimeoutError)):
        return UpstreamTimeout("the provider did not answer in time", provider=provider)
    if isinstance(reason, InvalidHeader):  # e.g. two different Content-Length values: no framing to trust
        return UpstreamInvalidResponse("the provider's answer has conflicting or malformed headers",
                                       provider=provider)
    if isinstance(reason, DecodeError):
        return UpstreamInvalidResponse("the provider's answer could not be decoded (Content-Encoding)",
                                       provider=provider)
    alert = _client_certificate_alert(exc)
    if alert:
        return UpstreamRejected(f"the provider refused the TLS handshake ({alert}): client certificate missing, "
                                "unknown or expired", upstream_error="invalid_client", provider=provider)
    if isinstance(reason, SSLError):
        return UpstreamUnavailable("TLS with the provider failed", provider=provider)
    if isinstance(reason, ProtocolError):
        return UpstreamUnavailable("the provider's answer was cut short or malformed", provider=provider)
    return UpstreamUnavailable(f"the provider connection failed ({type(reason).__name__})", provider=provider)


CLIENT_CERTIFICATE_ALERTS = ("ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_EXPIRED", "ALERT_BAD_CERTIFICATE",
                             "ALERT_CERTIFICATE_UNKNOWN", "ALERT_CERTIFICATE_REQUIRED", "ALERT_CERTIFICATE_REVOKED",
                             "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED", "ALERT_HANDSHAKE_FAILURE")
"""TLS alerts a server sends about the client's certificate (missing, unknown, expired): refused credentials,
not an outage. Over TLS 1.2 a missing certificate is ``handshake_failure`` (RFC 5246 7.4.6), which also means
"no common cipher": both need a person, so both are rejections with the long cool-down. Our own check of the
server's certificate fails differently (CERTIFICATE_VERIFY_FAILED: 503)."""


def _client_certificate_alert(exc: BaseException) -> str | None:
    """The alert's name (for the operator: expired or unknown CA), if ``exc`` is one of those alerts."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        for alert in CLIENT_CERTIFICATE_ALERTS:
            if alert in str(current):
                return alert.removeprefix("ALERT_").lower()
        reason = getattr(current, "reason", None)
        stack.extend([reason if isinstance(reason, BaseException) else None, current.__cause__, current.__context__])
    return None


def time_left(deadline: float) -> float:
    """Seconds a fetch may take before ``deadline`` (the function still has to store and answer)."""
    return deadline - time.monotonic() - SAFETY_SECONDS


class UpstreamClient:
    """Calls one connection's token endpoint as its provider's profile and its settings say.

    A fresh one-connection pool per fetch: fetches are rare (about once per token lifetime), and each
    carries its own deadline (retries and watchdog).
    """

    def __init__(self, profile: ClientCredentialsProfile, settings: ProviderSettings, connection: ConnectionSettings,
                 kms: Callable[[], KMSClient] | None = None) -> None:
        """``profile`` is the effective one (its ``auth`` already the ``client_auth`` override, if any:
        :meth:`ConnectionSettings.profile`); ``settings`` gives the timeouts and retries, ``connection`` the token
        URL and the request's parameters; ``kms`` makes the KMS client on first use (only ``private_key_jwt`` with a
        KMS key needs one)."""
        self.profile = profile
        self.settings = settings
        self.connection = connection
        self._kms = kms
        self._retry_class: type[Retry] | None = None
        self._kms_signer: KmsSigner | None = None

    def _retry(self, deadline: float, attempt_seconds: float, retries: int | None = None) -> Retry:
        if self._retry_class is None:
            self._retry_class = _budgeted_retry_class()
        retries = self.settings.upstream_retries if retries is None else retries
        return self._retry_class(
            total=retries, connect=retries, read=False, status=retries, other=0, redirect=0,
            allowed_methods=frozenset({"POST"}), status_forcelist=RETRY_STATUSES,
            backoff_factor=0.25, backoff_max=5.0, backoff_jitter=0.25,
            respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
            deadline=deadline, attempt_seconds=attempt_seconds,  # type: ignore[call-arg]
        )

    @staticmethod
    def time_left(deadline: float) -> float:
        """Seconds a fetch may take before ``deadline`` (the function still has to store and answer)."""
        return time_left(deadline)

    def fetch(self, credentials: ClientCredentials, scope: str, deadline: float, *,
              retries: int | None = None) -> TokenGrant:
        """POST the token request; return the grant or raise the contract's upstream error.

        The whole exchange -- connect, TLS, headers, body, retries -- ends ``SAFETY_SECONDS`` before
        ``deadline``: the vendor passes the earlier of the invocation's end and its lease's end.
        """
        from urllib3.exceptions import HTTPError

        name = self.profile.name
        assertion = self._assertion(credentials) if self.profile.auth is ClientAuth.PRIVATE_KEY_JWT else ""
        ssl_context = self._tls_context(credentials) if self.profile.auth is ClientAuth.TLS_CLIENT_AUTH else None
        connection = self.connection
        headers, body = self.profile.build_request(
            client_id=credentials.client_id, client_secret=credentials.client_secret, scope=scope,
            audience=connection.audience, client_assertion=assertion, resource=connection.resource,
            extra_parameters=dict(connection.extra_parameters))
        end = deadline - SAFETY_SECONDS
        remaining = end - time.monotonic()
        if remaining <= MIN_READ_TIMEOUT:
            raise UpstreamTimeout("no time left to call the provider", provider=name, provider_fault=False)
        timeout = (min(self.settings.connect_timeout, remaining), min(self.settings.read_timeout, remaining))
        started = time.time()
        path = _path(connection.token_url)
        with Watchdog(end) as watchdog:
            try:
                pool = _watched_pool(connection.token_url, watchdog, timeout, ssl_context=ssl_context,
                                     ca_bundle=self.settings.ca_bundle)
                with pool:
                    response: BaseHTTPResponse = pool.urlopen(
                        "POST", path, body=body, headers=headers, retries=self._retry(end, sum(timeout), retries),
                        redirect=False, preload_content=False, assert_same_host=False)
                    try:
                        raw = response.read(MAX_BODY_BYTES + 1, decode_content=True)
                    except (HTTPError, OSError, ValueError):
                        if not _unavailable(response.status):
                            raise
                        raw = b""  # a 5xx or 429 cut short still says what it says, Retry-After included
                    finally:
                        response.release_conn()
            except (HTTPError, OSError, ValueError) as exc:
                raise transport_error(exc, timed_out=watchdog.fired, provider=name) from None
            if watchdog.fired:
                # Shut down mid-answer, the standard library may see an end of headers and an empty body: what
                # arrived is a fragment, whatever its status line said.
                raise UpstreamTimeout("the provider did not finish answering in the time left", provider=name)
        sent = [*_credential_forms(credentials), *([assertion] if assertion else [])]
        return self._interpret(response.status, response.headers, raw, sent=sent, scope=scope, started=started)

    # -- client authentication without a shared secret ---------------------------------------------------
    def _assertion(self, credentials: ClientCredentials) -> str:
        """A fresh RFC 7523 client assertion, signed in KMS (``SIGNING_KEY_ID``) or with the secret's PEM."""
        from botocore.exceptions import BotoCoreError, ClientError

        from token_vending.assertion import KmsSigner, PemSigner, SigningKeyError, client_assertion

        name = self.profile.name
        try:
            signer: KmsSigner | PemSigner
            if self.connection.signing_key_id:
                # The secret (read again every SecretMaxAge) names the algorithm: a change is signed with at once.
                if self._kms_signer is None or self._kms_signer.algorithm != credentials.algorithm:
                    if self._kms is None:
                        raise SigningKeyError("no KMS client for the signing key")
                    self._kms_signer = KmsSigner(self._kms(), self.connection.signing_key_id,
                                                 credentials.algorithm, max_age=self.settings.secret_max_age)
                signer = self._kms_signer
            else:
                signer = PemSigner(credentials.private_key, credentials.algorithm, credentials.kid or None)
            return client_assertion(signer, client_id=credentials.client_id,
                                    audience=self.connection.assertion_audience or self.connection.token_url)
        except SigningKeyError as exc:
            raise Misconfigured(str(exc), provider=name) from None
        except (ClientError, BotoCoreError) as exc:  # KMS refused or unreachable
            raise _kms_error(exc, name) from None

    def _tls_context(self, credentials: ClientCredentials) -> ssl.SSLContext:
        from botocore.httpsession import where

        from token_vending.tls import CertificateError, client_context

        if urlsplit(self.connection.token_url).scheme != "https":
            raise Misconfigured("tls_client_auth needs an https:// token URL", provider=self.profile.name)
        try:
            return client_context(credentials.certificate, credentials.private_key, credentials.ca_chain,
                                  cafile=self.settings.ca_bundle or where())
        except CertificateError as exc:
            raise Misconfigured(str(exc), provider=self.profile.name) from None

    def _interpret(self, status: int, headers: Any, raw: bytes, *, sent: list[str], scope: str,
                   started: float) -> TokenGrant:
        name = self.profile.name
        try:
            document = json_object(raw) if len(raw) <= MAX_BODY_BYTES else None
            ambiguous = False
        except AmbiguousDocument:
            document, ambiguous = None, True
        if _unavailable(status):
            raise UpstreamUnavailable(f"the provider answered HTTP {status}",
                                      retry_after=_retry_after(headers.get("Retry-After")), provider=name)
        if 400 <= status < 500:
            error = _error_code(document.get("error") if document else None, sent)
            if error is None:
                error = "invalid_client" if self.profile.is_credential_error(status, None) else f"http_{status}"
            description = _description(document, sent)
            raise UpstreamRejected(f"the provider rejected the token request: {description}",
                                   upstream_error=error, upstream_status=status, provider=name)
        if not 200 <= status < 300:
            raise UpstreamInvalidResponse(f"the provider answered HTTP {status}", provider=name)
        if ambiguous:
            raise UpstreamInvalidResponse("the provider's answer names a member twice (duplicate keys): ambiguous",
                                          provider=name)
        if document is None:
            raise UpstreamInvalidResponse("the provider's answer is not a JSON object", provider=name)
        token = document.get("access_token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise UpstreamInvalidResponse("the provider's answer has no usable access_token", provider=name)
        if not B64TOKEN.match(token):
            raise UpstreamInvalidResponse("the provider's access_token is not RFC 6750 b64token syntax",
                                          provider=name)
        token_type = document.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise UpstreamInvalidResponse("the provider's token_type is not Bearer", provider=name)
        expires_at = self._expiry(document, token, started)
        granted = document.get("scope")
        if isinstance(granted, str) and scope and self.profile.scope is not ScopeMode.OMIT:
            missing = set(scope.split()) - set(granted.split())
            if missing:
                # A narrower token cached under the requested set would fail its callers later.
                raise UpstreamRejected(f"the provider did not grant {len(missing)} of the requested scope(s)",
                                       upstream_error="invalid_scope", upstream_status=status, provider=name)
        return TokenGrant(
            access_token=token, token_type="Bearer",  # noqa: S106 - normalised OAuth token type
            scope=granted if isinstance(granted, str) else (scope or None),
            lifetime=max(0, expires_at - int(started)), fetched_at=started, expires_at=expires_at,
        )

    def _expiry(self, document: dict[str, Any], token: str, started: float) -> int:
        """The earliest of every expiry the answer states: ``expires_in`` (or the profile's lifetime field)
        and, for a JWT, its ``exp`` -- the one the provider's API enforces. A JWT that is expired or expires
        within ``MIN_LIFETIME`` is refused whatever ``expires_in`` says; with neither, the configured default.
        """
        name = self.profile.name
        try:
            lifetime = lifetime_from(document, self.profile.lifetime_fields)
        except LifetimeError as exc:
            raise UpstreamInvalidResponse(f"the provider's lifetime is unusable: {exc}", provider=name) from None
        candidates = [int(started) + (lifetime if lifetime is not None else self.settings.default_lifetime)]
        jwt_exp = jwt_expiry(token)
        if jwt_exp is not None and beyond_sane_lifetime(jwt_exp, started):
            if lifetime is None:
                raise UpstreamInvalidResponse("the provider's lifetime is unusable: JWT exp is out of range",
                                              provider=name)
            jwt_exp = None  # the stated expires_in is the earlier expiry, and the one scheduled by
        if jwt_exp is not None:
            if jwt_exp <= started + MIN_LIFETIME:
                raise UpstreamInvalidResponse("the provider's token is expired or about to (JWT exp)", provider=name)
            if lifetime is None:
                candidates = []  # the JWT states its own expiry: no need for the default
            candidates.append(jwt_exp)
        expires_at = min(candidates)
        if expires_at - int(started) < MIN_LIFETIME:
            raise UpstreamInvalidResponse(f"the provider granted a token that lives under {MIN_LIFETIME} s",
                                          provider=name)
        return expires_at


def _unavailable(status: int) -> bool:
    return status == 429 or status >= 500


def _path(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _retry_after(value: str | None) -> int | None:
    seconds = parse_whole(value) if value else None
    return None if seconds is None else min(seconds, 3600)


_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ECHO_WINDOW = 12
"""Any run of this many characters of a credential (in any encoding we send it) counts as an echo."""
REDACTED = "[description withheld: it repeated our credentials]"


def _credential_forms(credentials: ClientCredentials) -> list[str]:
    """Every way a secret travels to a provider, so an echo of any of them is recognised: the client secret
    (plain, form-, JSON- or Basic-encoded) and a private key's PEM body (the client id and the certificate are
    not secrets and are left alone)."""
    secret, client_id = credentials.client_secret, credentials.client_id
    forms: set[str] = set()
    if secret:
        forms |= {secret, quote(secret, safe=":"), quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
        forms |= {basic_authorization(client_id, secret, encoding).removeprefix("Basic ") for encoding in BasicEncoding}
    if credentials.private_key:
        forms |= {line for line in credentials.private_key.splitlines() if line and not line.startswith("-----")}
    return [form for form in forms if form]


def _echoes(text: str, sent: list[str]) -> bool:
    for form in sent:
        if len(form) <= ECHO_WINDOW:
            if form in text:
                return True
            continue
        if any(form[i:i + ECHO_WINDOW] in text for i in range(len(form) - ECHO_WINDOW + 1)):
            return True
    return False


def _error_code(value: Any, sent: list[str]) -> str | None:
    """The provider's OAuth ``error`` code, passed on only if it looks like one (RFC 6749 codes are
    short ASCII words) and does not repeat what we sent; otherwise the caller gets a status-based code."""
    if not isinstance(value, str) or not _ERROR_CODE.match(value) or _echoes(value, sent):
        return None
    return value


def _description(document: dict[str, Any] | None, sent: list[str]) -> str:
    """The provider's own description, sanitised and bounded; withheld whole if it echoes any part of a
    secret we sent, in any form we send it (plain, form- or JSON-encoded, HTTP Basic), a private key or the
    client assertion."""
    text = ""
    if document:
        for key in ("error_description", "message", "error"):
            if isinstance(document.get(key), str):
                text = document[key]
                break
    text = text or "no description"
    if _echoes(text, sent):
        return REDACTED
    return sanitise(text, 120)


KMS_MISCONFIGURATION_CODES = frozenset({
    "NotFoundException", "DisabledException", "KMSInvalidStateException", "InvalidKeyUsageException",
    "AccessDeniedException", "AccessDenied", "KMSInvalidSignatureException", "UnsupportedOperationException",
    "ValidationException"})


def _kms_error(exc: BaseException, provider: str) -> TokenVendingError:
    """KMS refused the signing key (a setting or a grant to fix) or could not be reached (not the provider's
    fault: no cool-down)."""
    code = error_code(exc)
    if code in KMS_MISCONFIGURATION_CODES:
        return Misconfigured(f"the signing key cannot be used ({code})", provider=provider)
    return UpstreamUnavailable(f"KMS is unavailable ({code or type(exc).__name__})", provider=provider,
                               provider_fault=False)
