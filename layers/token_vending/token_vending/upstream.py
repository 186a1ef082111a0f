"""One token request to a provider, with urllib3's retries bounded by the invocation's deadline.

``requests`` is imported on first use, not at module import, so a cold start that is answered from
the cache never pays for it.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

from token_vending.exceptions import (
    UpstreamInvalidResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    sanitise,
)
from token_vending.lifetime import LifetimeError, jwt_expiry, lifetime_from
from token_vending.profile import ScopeMode

if TYPE_CHECKING:
    from urllib3.util.retry import Retry

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


@dataclass(frozen=True)
class TokenGrant:
    access_token: str = field(repr=False)
    token_type: str
    scope: str | None
    lifetime: int
    fetched_at: float
    expires_at: int


def _budgeted_retry_class() -> type[Retry]:
    """urllib3 ``Retry`` that gives up instead of sleeping past the invocation's deadline.

    Plain ``Retry`` honours ``Retry-After`` however long it is; a Lambda function has a hard timeout,
    so a wait that cannot finish in time ends the retries and the last response is reported (with its
    ``Retry-After``) to the caller instead.
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
            needed = wait + self.attempt_seconds + SAFETY_SECONDS
            if self.deadline is not None and time.monotonic() + needed > self.deadline:
                raise MaxRetryError(_pool, url or "", error or ResponseError("retry budget exhausted"))
            return new

    return BudgetedRetry


class UpstreamClient:
    """Calls one provider's token endpoint as its profile says.

    A fresh ``requests`` session per fetch: fetches are rare (once per token lifetime), and urllib3's
    ``Retry`` has to carry this invocation's deadline anyway.
    """

    def __init__(self, profile: ClientCredentialsProfile, settings: ProviderSettings) -> None:
        self.profile = profile
        self.settings = settings
        self._retry_class: type[Retry] | None = None

    def _retry(self, deadline: float, attempt_seconds: float) -> Retry:
        if self._retry_class is None:
            self._retry_class = _budgeted_retry_class()
        retries = self.settings.upstream_retries
        return self._retry_class(
            total=retries, connect=retries, read=False, status=retries, other=0, redirect=0,
            allowed_methods=frozenset({"POST"}), status_forcelist=RETRY_STATUSES,
            backoff_factor=0.25, backoff_max=5.0, backoff_jitter=0.25,
            respect_retry_after_header=True, raise_on_status=False, raise_on_redirect=False,
            deadline=deadline, attempt_seconds=attempt_seconds,  # type: ignore[call-arg]
        )

    def fetch(self, credentials: ClientCredentials, scope: str, deadline: float) -> TokenGrant:
        """POST the token request; return the grant or raise the contract's upstream error."""
        import requests
        from requests.adapters import HTTPAdapter

        headers, body = self.profile.build_request(
            client_id=credentials.client_id, client_secret=credentials.client_secret, scope=scope,
            audience=self.settings.audience)
        remaining = deadline - time.monotonic() - SAFETY_SECONDS
        if remaining <= MIN_READ_TIMEOUT:
            raise UpstreamTimeout("no time left to call the provider", provider=self.profile.name)
        timeout = (min(self.settings.connect_timeout, remaining), min(self.settings.read_timeout, remaining))
        started = time.time()
        try:
            with requests.Session() as session:
                adapter = HTTPAdapter(max_retries=self._retry(deadline, sum(timeout)), pool_connections=1,
                                      pool_maxsize=1)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                response = session.post(self.settings.token_url, data=body, headers=headers, timeout=timeout,
                                        allow_redirects=False, stream=True)
                try:
                    raw = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
                finally:
                    response.close()
        except requests.exceptions.ConnectTimeout:
            raise UpstreamTimeout("the provider did not accept a connection in time",
                                  provider=self.profile.name) from None
        except (requests.exceptions.ReadTimeout, TimeoutError):
            raise UpstreamTimeout("the provider did not answer in time", provider=self.profile.name) from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamUnavailable(f"the provider is unreachable ({type(exc).__name__})",
                                      provider=self.profile.name) from None
        except OSError as exc:  # urllib3 read errors surfacing from raw.read
            if "timed out" in str(exc):
                raise UpstreamTimeout("the provider did not answer in time",
                                      provider=self.profile.name) from None
            raise UpstreamUnavailable(f"the provider connection failed ({type(exc).__name__})",
                                      provider=self.profile.name) from None
        return self._interpret(response.status_code, response.headers, raw, credentials=credentials, scope=scope,
                               started=started)

    def _interpret(self, status: int, headers: Any, raw: bytes, *, credentials: ClientCredentials, scope: str,
                   started: float) -> TokenGrant:
        name = self.profile.name
        document = _json_object(raw) if len(raw) <= MAX_BODY_BYTES else None
        if status == 429 or status >= 500:
            raise UpstreamUnavailable(f"the provider answered HTTP {status}",
                                      retry_after=_retry_after(headers.get("Retry-After")), provider=name)
        if 400 <= status < 500:
            error = _error_code(document.get("error") if document else None, credentials)
            if error is None:
                error = "invalid_client" if self.profile.is_credential_error(status, None) else f"http_{status}"
            description = _description(document, credentials)
            raise UpstreamRejected(f"the provider rejected the token request: {description}",
                                   upstream_error=error, upstream_status=status, provider=name)
        if not 200 <= status < 300:
            raise UpstreamInvalidResponse(f"the provider answered HTTP {status}", provider=name)
        if document is None:
            raise UpstreamInvalidResponse("the provider's answer is not a JSON object", provider=name)
        token = document.get("access_token")
        if not isinstance(token, str) or not token.strip() or len(token) > 16384:
            raise UpstreamInvalidResponse("the provider's answer has no usable access_token", provider=name)
        token_type = document.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise UpstreamInvalidResponse("the provider's token_type is not Bearer", provider=name)
        try:
            lifetime = lifetime_from(document, self.profile.lifetime_fields)
        except LifetimeError as exc:
            raise UpstreamInvalidResponse(f"the provider's lifetime is unusable: {exc}", provider=name) from None
        expires_at: int | None = int(started) + lifetime if lifetime is not None else None
        jwt_exp = jwt_expiry(token)
        if jwt_exp is not None and jwt_exp > started + MIN_LIFETIME:
            # The earlier of the two: a JWT's exp is what the provider's API will enforce. An exp that is
            # already (nearly) past is a clock or encoding problem, not the lifetime: expires_in rules.
            expires_at = jwt_exp if expires_at is None else min(expires_at, jwt_exp)
        if expires_at is None:
            if jwt_exp is not None:
                raise UpstreamInvalidResponse("the provider's token has already expired (JWT exp)", provider=name)
            expires_at = int(started) + self.settings.default_lifetime
        if expires_at - int(started) < MIN_LIFETIME:
            raise UpstreamInvalidResponse(f"the provider granted a token that lives under {MIN_LIFETIME} s",
                                          provider=name)
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


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _retry_after(value: str | None) -> int | None:
    if value and value.strip().isdigit():
        return min(int(value.strip()), 3600)
    return None


_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ECHO_WINDOW = 12
"""Any run of this many characters of a credential (in any encoding we send it) counts as an echo."""
REDACTED = "[description withheld: it repeated our credentials]"


def _credential_forms(credentials: ClientCredentials) -> list[str]:
    """Every way the client secret travels to a provider, so an echo of any of them is recognised
    (the client id is not a secret and is left alone)."""
    secret, client_id = credentials.client_secret, credentials.client_id
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")
    return [form for form in {secret, quote(secret, safe=":"), quote_plus(secret), json.dumps(secret)[1:-1],
                              basic} if form]


def _echoes_credentials(text: str, credentials: ClientCredentials) -> bool:
    for form in _credential_forms(credentials):
        if len(form) <= ECHO_WINDOW:
            if form in text:
                return True
            continue
        if any(form[i:i + ECHO_WINDOW] in text for i in range(len(form) - ECHO_WINDOW + 1)):
            return True
    return False


def _error_code(value: Any, credentials: ClientCredentials) -> str | None:
    """The provider's OAuth ``error`` code, passed on only if it looks like one (RFC 6749 codes are
    short ASCII words) and does not repeat our credentials; otherwise the caller gets a status-based code."""
    if not isinstance(value, str) or not _ERROR_CODE.match(value) or _echoes_credentials(value, credentials):
        return None
    return value


def _description(document: dict[str, Any] | None, credentials: ClientCredentials) -> str:
    """The provider's own description, sanitised and bounded; withheld whole if it echoes any part
    of our credentials in any form we send them (plain, form- or JSON-encoded, HTTP Basic)."""
    text = ""
    if document:
        for key in ("error_description", "message", "error"):
            if isinstance(document.get(key), str):
                text = document[key]
                break
    text = text or "no description"
    if _echoes_credentials(text, credentials):
        return REDACTED
    return sanitise(text, 120)
