"""The provider function's core: serve from cache, or refresh once for the whole fleet.

Order of preference for one request:

1. this execution environment's memory (a few seconds),
2. the DynamoDB item, if fresh,
3. a refresh under a DynamoDB lease: exactly one environment calls the provider, the others poll
   the item with consistent reads and take over only if the holder's lease lapses,
4. on refresh failure, the old token if it still meets ``min_ttl`` (stale on error).

If DynamoDB itself is unavailable the function degrades to a per-environment cache: each
environment fetches at most once per token lifetime, never once per request.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING

from token_vending.cache import CachedToken, CacheUnavailable, TokenCache
from token_vending.exceptions import (
    InvalidRequest,
    TokenVendingError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from token_vending.freshness import RefreshPolicy
from token_vending.memory import MemoryCache

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from token_vending.credentials import ClientCredentials, CredentialStore
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.request import TokenRequest
    from token_vending.settings import ProviderSettings
    from token_vending.upstream import UpstreamClient

POLL_FIRST = 0.05
POLL_MAX = 0.5


def fingerprint(token: str) -> str:
    """Eight hex characters of SHA-256: enough to correlate log lines, useless to an attacker."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class TokenVendor:
    def __init__(self, *, profile: ClientCredentialsProfile, settings: ProviderSettings, cache: TokenCache,
                 credentials: CredentialStore, upstream: UpstreamClient, logger: Logger,
                 metrics: Metrics) -> None:
        self.profile = profile
        self.settings = settings
        self.cache = cache
        self.credentials = credentials
        self.upstream = upstream
        self.logger = logger
        self.metrics = metrics
        self.policy = RefreshPolicy(settings.cache.refresh_margin_seconds, settings.cache.refresh_margin_ratio)
        self.memory: MemoryCache[CachedToken] = MemoryCache(settings.cache.memory_cache_seconds)
        self._local_lock = threading.Lock()
        self.owner = f"{uuid.uuid4()}"

    # -- public ---------------------------------------------------------------------------------
    def vend(self, request: TokenRequest, deadline: float) -> CachedToken:
        """Return a token that satisfies ``request`` or raise the contract's error."""
        key = request.scope_key
        now = time.time()
        if not request.force_refresh:
            remembered = self.memory.get(key)
            if remembered is not None and self.policy.is_fresh(remembered, request.min_ttl, now):
                self._count("CacheHitMemory")
                return remembered
        try:
            cached = self.cache.get(self.profile.name, key)
        except CacheUnavailable as exc:
            return self._degraded(request, deadline, str(exc))
        if cached is not None and self._acceptable(cached, request, now):
            self._count("CacheHitDynamoDB")
            self.memory.put(key, cached)
            return cached
        self._count("CacheMiss")
        try:
            return self._refresh(request, deadline, stale=cached)
        except CacheUnavailable as exc:
            return self._degraded(request, deadline, str(exc))

    def refresh_ahead(self, deadline: float) -> dict[str, int]:
        """Scheduled renewal: every scope set with a live token (and the default set) whose token would
        enter the refresh margin before the next scheduled run is renewed now, under the same lease as
        caller-driven refreshes, so callers in steady state never wait on the provider."""
        from token_vending.request import TokenRequest
        from token_vending.scopes import parse_scope_set, scope_key

        now = time.time()
        interval = self.settings.cache.refresh_ahead_interval
        tokens: dict[str, CachedToken | None] = {
            token.scope_key: token for token in self.cache.list_tokens(self.profile.name) if token.remaining(now) > 0}
        tokens.setdefault(scope_key(self.settings.default_scopes), None)
        summary = {"renewed": 0, "fresh": 0, "failed": 0}
        for key, token in tokens.items():
            if token is not None:
                # Fresh enough to last until the run after next, with room for a late schedule.
                horizon = self.policy.margin(token.lifetime) + 1.5 * interval
                min_ttl = int(min(horizon, 0.75 * token.lifetime))
                if self.policy.is_fresh(token, min_ttl, now):
                    summary["fresh"] += 1
                    continue
            else:
                min_ttl = 0
            request = TokenRequest(provider=self.profile.name, scopes=parse_scope_set(key), min_ttl=min_ttl,
                                   force_refresh=False)
            try:
                self._refresh(request, deadline, stale=token)
                summary["renewed"] += 1
            except TokenVendingError as exc:
                summary["failed"] += 1
                self._count("RefreshAheadFailure")
                self.logger.warning("refresh ahead failed", extra={"scope_key": key, "error": exc.code})
        self.logger.info("refresh ahead done", extra=summary)
        return summary

    # -- decisions ------------------------------------------------------------------------------
    def _recent(self, token: CachedToken, now: float) -> bool:
        """Fetched so lately that asking the provider again would only hammer it; never longer than the
        refresh margin, so short-lived tokens are still renewed in time."""
        window = min(self.settings.cache.force_refresh_interval, self.policy.margin(token.lifetime))
        return now - token.fetched_at < window

    def _acceptable(self, token: CachedToken, request: TokenRequest, now: float) -> bool:
        """A forced refresh discards the token, unless it was itself fetched moments ago: a burst of
        forced refreshes (every caller that got a 401) then makes one upstream call, not one each."""
        if request.force_refresh and not self._recent(token, now):
            return False
        if self.policy.is_fresh(token, request.min_ttl, now):
            return True
        if self._recent(token, now):
            # Just fetched and still not fresh enough: the provider grants no longer lifetime, so
            # asking again would only hammer it.
            if self.policy.is_usable(token, request.min_ttl, now):
                return True
            raise InvalidRequest(f"min_ttl {request.min_ttl} exceeds the lifetime this provider grants "
                                 f"({token.lifetime} s)", provider=self.profile.name)
        return False

    # -- refresh under a lease ------------------------------------------------------------------
    def _refresh(self, request: TokenRequest, deadline: float, stale: CachedToken | None) -> CachedToken:
        key = request.scope_key
        poll = POLL_FIRST
        waited = False
        while True:
            lease = self.cache.acquire_lease(self.profile.name, key, self.owner,
                                             self._lease_seconds(deadline))
            if lease.acquired:
                try:
                    return self._refresh_holding_lease(request, deadline, stale)
                finally:
                    self.cache.release_lease(self.profile.name, key, self.owner)
            if not waited:
                waited = True
                self._count("LeaseWait")
            # Someone else is refreshing: poll for their result until their lease lapses.
            while time.time() < lease.expires_at:
                if time.monotonic() + poll >= deadline:
                    return self._serve_stale_or_raise(
                        request, stale, UpstreamUnavailable("a refresh by another caller is still running",
                                                            retry_after=1, provider=self.profile.name))
                time.sleep(poll * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
                poll = min(poll * 2, POLL_MAX)
                latest = self.cache.get(self.profile.name, key, consistent=True)
                if latest is not None and (stale is None or latest.fetched_at > stale.fetched_at) \
                        and self._acceptable(latest, request, time.time()):
                    self.memory.put(key, latest)
                    return latest
            self.logger.warning("refresh lease lapsed; taking over", extra={"scope_key": key})

    def _lease_seconds(self, deadline: float) -> float:
        """Shorter than what is left of this invocation, so a holder that dies frees the key."""
        left = deadline - time.monotonic()
        return max(1.0, min(self.settings.cache.lease_seconds, left))

    def _refresh_holding_lease(self, request: TokenRequest, deadline: float,
                               stale: CachedToken | None) -> CachedToken:
        key = request.scope_key
        latest = self.cache.get(self.profile.name, key, consistent=True)
        if latest is not None and (stale is None or latest.fetched_at > stale.fetched_at) \
                and self._acceptable(latest, request, time.time()):
            self.memory.put(key, latest)  # another environment refreshed between our read and lease
            return latest
        stale = latest or stale
        try:
            token = self._fetch(request, deadline)
        except TokenVendingError as exc:
            return self._serve_stale_or_raise(request, stale, exc)
        if not self.cache.put(token):
            newer = self.cache.get(self.profile.name, key, consistent=True)
            token = newer or token
        self.memory.put(key, token)
        if not self.policy.is_usable(token, request.min_ttl, time.time()):
            raise InvalidRequest(f"min_ttl {request.min_ttl} exceeds the lifetime this provider grants "
                                 f"({token.lifetime} s)", provider=self.profile.name)
        return token

    def _serve_stale_or_raise(self, request: TokenRequest, stale: CachedToken | None,
                              error: TokenVendingError) -> CachedToken:
        if (stale is not None and not request.force_refresh
                and self.policy.is_usable(stale, request.min_ttl, time.time())):
            self._count("StaleServed")
            self.logger.warning("refresh failed; serving the cached token",
                                extra={"error": error.code, "token": fingerprint(stale.access_token),
                                       "expires_at": stale.expires_at})
            return stale
        raise error

    # -- degraded mode --------------------------------------------------------------------------
    def _degraded(self, request: TokenRequest, deadline: float, reason: str) -> CachedToken:
        """DynamoDB is unavailable: one fetch per environment, kept in memory until its margin."""
        self._count("CacheUnavailable")
        self.logger.warning("token cache unavailable; using this environment's memory only",
                            extra={"reason": reason})
        key = request.scope_key
        with self._local_lock:
            remembered = self.memory.get(key)
            if remembered is not None and self._acceptable(remembered, request, time.time()):
                return remembered
            token = self._fetch(request, deadline)
            hold = token.remaining(time.time()) - self.policy.margin(token.lifetime)
            self.memory.put(key, token, seconds=max(hold, 0.0))
            return token

    # -- upstream -------------------------------------------------------------------------------
    def _fetch(self, request: TokenRequest, deadline: float) -> CachedToken:
        """One upstream request; on a credentials error, re-read the secret and retry once if it
        changed (rotation). Retrying with credentials already refused would only count against us."""
        credentials = self.credentials.get()
        try:
            return self._call(credentials, request, deadline)
        except UpstreamRejected as exc:
            if not self.profile.is_credential_error(exc.upstream_status or 0, exc.upstream_error):
                raise
            rotated = self.credentials.get(force_fetch=True)
            if rotated.fingerprint == credentials.fingerprint:
                raise
            self.logger.info("credentials were rejected and the secret has changed; retrying once")
            self._count("SecretReloaded")
            return self._call(rotated, request, deadline)

    def _call(self, credentials: ClientCredentials, request: TokenRequest, deadline: float) -> CachedToken:
        from aws_lambda_powertools.metrics import MetricUnit

        self._count("UpstreamRequest")
        started = time.perf_counter()
        try:
            grant = self.upstream.fetch(credentials, request.scope_key, deadline)
        except TokenVendingError as exc:
            self._count("UpstreamFailure")  # the alarm's metric; the suffixed one tells the kind
            self._count(f"UpstreamFailure_{exc.code}")
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

    def _count(self, name: str) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
