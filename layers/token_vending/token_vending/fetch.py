"""One token request to the provider, as every path of the provider function makes it.

Why apart from the cache algorithm: whether a token comes from a caller's miss, a forced refresh, a renewal or
the degraded mode, its fetch is the same -- the secret is read (credentials and the connection's settings), the
scopes are resolved (none named: the default scopes) and checked, the hourly budget is spent
(:mod:`token_vending.budget`), a client certificate about to expire is reported, and a rejected credential is
retried once only if the secret changed (rotation). The secret store and the HTTP client are made on first use: a
cold start answered from the cache needs neither; the HTTP client is made again when a re-read secret changes the
settings it was made with.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from token_vending.budget import UpstreamBudget
from token_vending.cache import CachedToken, CacheUnavailable
from token_vending.counting import count
from token_vending.exceptions import Misconfigured, TokenVendingError, UpstreamRejected, UpstreamUnavailable
from token_vending.profile import ClientAuth
from token_vending.request import fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools import Logger, Metrics

    from token_vending.budget import Kind
    from token_vending.cache import TokenCache
    from token_vending.connection_settings import ConnectionSettings
    from token_vending.credentials import ClientCredentials, CredentialStore
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.request import TokenRequest
    from token_vending.settings import ProviderSettings
    from token_vending.upstream import UpstreamClient

CERTIFICATE_WARNING_DAYS = 21
"""Below this many days left, a client certificate is logged as a warning (and the template's alarm fires)."""


class Fetcher:
    def __init__(self, *, profile: ClientCredentialsProfile, settings: ProviderSettings, cache: TokenCache,
                 credentials: Callable[[], CredentialStore],
                 upstream: Callable[[ConnectionSettings], UpstreamClient], logger: Logger, metrics: Metrics) -> None:
        """``upstream`` makes the HTTP client for the settings a secret resolved to."""
        self.profile = profile
        self.settings = settings
        self._make_credentials = credentials
        self._make_upstream = upstream
        self._credentials: CredentialStore | None = None
        self._upstream: tuple[ConnectionSettings, UpstreamClient] | None = None
        self._environment_only: ConnectionSettings | None = None
        self.logger = logger
        self.metrics = metrics
        self.budget = UpstreamBudget(cache, profile.name, settings.upstream_budget)

    @property
    def credentials(self) -> CredentialStore:
        if self._credentials is None:
            self._credentials = self._make_credentials()
        return self._credentials

    @property
    def upstream(self) -> UpstreamClient:
        """The HTTP client for the secret's current settings (reads the secret: a fetch path only)."""
        return self.upstream_for(self.connection(self.credentials.get()))

    def upstream_for(self, connection: ConnectionSettings) -> UpstreamClient:
        """The HTTP client made with ``connection``, made again when the settings changed (a re-read secret)."""
        if self._upstream is None or self._upstream[0] != connection:
            self._upstream = (connection, self._make_upstream(connection))
        return self._upstream[1]

    def connection(self, credentials: ClientCredentials) -> ConnectionSettings:
        """The settings ``credentials`` were resolved with; a store made without a resolver (tests) gives the
        environment's alone."""
        if credentials.settings is not None:
            return credentials.settings
        if self._environment_only is None:
            from token_vending.connection_settings import resolve

            self._environment_only = resolve(self.settings, {}, self.profile)
        return self._environment_only

    @staticmethod
    def time_left(deadline: float) -> float:
        """Seconds a fetch may take before ``deadline`` (the function still has to store and answer)."""
        from token_vending.upstream import time_left

        return time_left(deadline)

    def check(self, request: TokenRequest) -> ConnectionSettings:
        """Read the secret and check the request's scopes against the connection's: a miss does so before it
        takes a lease or spends budget, so that a scope the connection does not allow never writes an item."""
        connection = self.connection(self.credentials.get())
        connection.scope(request.scopes, provider=self.profile.name)
        return connection

    def fetch(self, request: TokenRequest, deadline: float, retries: int | None = None,
              kind: Kind | None = "miss") -> CachedToken:
        """One upstream request; on a credentials error, re-read the secret and retry once if it
        changed (rotation). Retrying with credentials already refused would only count against us.
        ``retries``: instead of the configured number (none while backing off). ``kind``: what it spends the
        budget as (:mod:`token_vending.budget`); ``None``: no budget (DynamoDB is down, so it cannot count)."""
        credentials = self.credentials.get()
        self.report_certificate(credentials)
        try:
            return self._call(credentials, request, deadline, retries, kind)
        except UpstreamRejected as exc:
            if not self.profile.is_credential_error(exc.upstream_status or 0, exc.upstream_error):
                raise
            rotated = self.credentials.get(force_fetch=True)
            if rotated.fingerprint == credentials.fingerprint:
                raise
            self.logger.info("credentials were rejected and the secret has changed; retrying once")
            count(self.metrics, "SecretReloaded")
            return self._call(rotated, request, deadline, retries, kind)

    def _spend(self, kind: Kind) -> None:
        """Spend one fetch of the provider's hourly budget, or raise a 503 (not the provider's fault: no cool-down)
        whose ``Retry-After`` is the next hour. When DynamoDB cannot count, the fetch goes ahead: the token is the
        product, and the lease still bounds the fleet."""
        try:
            retry_after = self.budget.spend(kind)
        except CacheUnavailable as exc:
            self.logger.warning("could not count the token request against the budget", extra={"reason": str(exc)})
            return
        if retry_after is None:
            return
        count(self.metrics, "UpstreamBudgetExhausted")
        self.logger.warning("the provider's hourly token budget is spent",
                            extra={"budget": self.budget.per_hour, "kind": kind, "limit": self.budget.limit(kind)})
        share = {"renewal": "", "miss": "callers' share of ", "forced": "forced refreshes' share of "}[kind]
        raise UpstreamUnavailable(f"{share}the provider's budget of {self.budget.per_hour} token requests an hour is "
                                  "spent", retry_after=retry_after, provider=self.profile.name, provider_fault=False)

    def _call(self, credentials: ClientCredentials, request: TokenRequest, deadline: float,
              retries: int | None = None, kind: Kind | None = "miss") -> CachedToken:
        from aws_lambda_powertools.metrics import MetricUnit

        connection = self.connection(credentials)
        scope = connection.scope(request.scopes, provider=self.profile.name)  # checked before any budget is spent
        upstream = self.upstream_for(connection)
        if kind is not None:
            self._spend(kind)
        count(self.metrics, "UpstreamRequest")
        started = time.perf_counter()
        try:
            grant = upstream.fetch(credentials, scope, deadline, retries=retries)
        except TokenVendingError as exc:
            if not exc.provider_fault:
                raise
            count(self.metrics, "UpstreamFailure")  # the alarm's metric; the suffixed one tells the kind
            count(self.metrics, f"UpstreamFailure_{exc.code}")
            self.logger.warning("token request failed", extra={"error": exc.code,
                                                               "upstream_error": exc.extra.get("upstream_error")})
            raise
        finally:
            self.metrics.add_metric(name="UpstreamLatency", unit=MetricUnit.Milliseconds,
                                    value=(time.perf_counter() - started) * 1000)
        token = CachedToken(provider=self.profile.name, scope_key=request.scope_key,
                            access_token=grant.access_token, token_type=grant.token_type, scope=grant.scope,
                            expires_at=grant.expires_at, fetched_at=grant.fetched_at, lifetime=grant.lifetime)
        self.logger.info("fetched a new token", extra={"token": fingerprint(token.access_token),
                                                       "expires_at": token.expires_at,
                                                       "lifetime": token.lifetime})
        return token

    def report_certificate(self, credentials: ClientCredentials) -> None:
        """``ClientCertificateDaysLeft`` whenever a client certificate is about to be used (and on every
        scheduled run): operators alarm on it well before the provider starts refusing the handshake."""
        if self.connection(credentials).auth is not ClientAuth.TLS_CLIENT_AUTH or not credentials.certificate:
            return
        from aws_lambda_powertools.metrics import MetricUnit

        from token_vending.tls import CertificateError, days_left

        try:
            days = days_left(credentials.certificate, time.time())
        except CertificateError as exc:
            raise Misconfigured(str(exc), provider=self.profile.name) from None
        self.metrics.add_metric(name="ClientCertificateDaysLeft", unit=MetricUnit.Count, value=round(days, 2))
        if days < CERTIFICATE_WARNING_DAYS:
            self.logger.warning("the client certificate expires soon", extra={"days_left": round(days, 1)})
