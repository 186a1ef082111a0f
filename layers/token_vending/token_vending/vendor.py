"""The provider function's core: serve from cache, or refresh once for the whole fleet.

Order of preference for one request:

1. this execution environment's memory (a few seconds),
2. the DynamoDB item, if fresh,
3. a refresh under a DynamoDB lease: exactly one environment calls the provider, the others poll
   the item with consistent reads and take over only if the holder's lease lapses,
4. on refresh failure, the old token if it still meets ``min_ttl`` (stale on error); the failed
   refresh's lease stays as a cool-down, so no caller asks the provider again until it lapses.

Every token request first spends one unit of the provider's hourly budget (:mod:`token_vending.budget`); every
stored token arms its own renewal just before its refresh margin (:mod:`token_vending.renewal`), which renews it
only while its scope set is in use (:mod:`token_vending.usage`).

If DynamoDB itself is unavailable the function degrades to a per-environment cache: each
environment fetches at most once per token lifetime, never once per request.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from token_vending.budget import UpstreamBudget
from token_vending.cache import CachedToken, CacheUnavailable, TokenCache
from token_vending.exceptions import (
    ERRORS_BY_CODE,
    InvalidRequest,
    Misconfigured,
    TokenVendingError,
    UpstreamInvalidResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from token_vending.freshness import RefreshPolicy
from token_vending.memory import MemoryCache
from token_vending.profile import ClientAuth
from token_vending.renewal import Renewal
from token_vending.request import fingerprint, replaced
from token_vending.usage import UsageMarks, last_use

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools import Logger, Metrics

    from token_vending.budget import Kind
    from token_vending.credentials import ClientCredentials, CredentialStore
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.renewal import RenewalTimer
    from token_vending.request import TokenRequest
    from token_vending.settings import ProviderSettings
    from token_vending.upstream import UpstreamClient

POLL_FIRST = 0.05
POLL_MAX = 0.5
COOL_DOWN_SECONDS = 10.0
"""After a failed refresh (timeout, 5xx, invalid answer), nobody asks the provider again for this long; it
doubles with every further failure in a row (10, 20, 40, 80 s, then the cap)."""
MAX_OUTAGE_COOL_DOWN_SECONDS = 150.0
"""The longest back-off after provider faults, a longer ``Retry-After`` included: a provider that is back is
asked again within this long, while one that stays down sees at most 30 token requests an hour per scope set
(28 attempts, the first with its retries)."""
REJECTED_COOL_DOWN_SECONDS = 60.0
"""After a rejection or misconfiguration: retrying cannot help until a person changes something."""
MAX_COOL_DOWN_SECONDS = 300.0
CERTIFICATE_WARNING_DAYS = 21
"""Below this many days left, a client certificate is logged as a warning (and the template's alarm fires)."""
MIN_ATTEMPT_SECONDS = 1.0
"""A fetch with less time than this left is not started (and is not the provider's fault)."""
ARM_RESERVE_SECONDS = 2.0
"""A renewal is armed after a fetch only with this much of the fetch's time left (one SQS attempt of at most 1.5 s):
the caller's answer must not miss its deadline for it; the scheduled run re-arms what was skipped."""
SCHEDULE_SLACK = 1.5
"""The scheduled run looks this many intervals ahead (a late run must not miss a token)."""


class TokenVendor:
    def __init__(self, *, profile: ClientCredentialsProfile, settings: ProviderSettings, cache: TokenCache,
                 credentials: Callable[[], CredentialStore], upstream: Callable[[], UpstreamClient], logger: Logger,
                 metrics: Metrics, timer: RenewalTimer | None = None) -> None:
        """``credentials`` and ``upstream`` make the secret store and the HTTP client on first use: a cold start
        answered from the cache needs neither. ``timer``: arms each new token's renewal (``None``: the scheduled
        run renews by its interval)."""
        self.profile = profile
        self.settings = settings
        self.cache = cache
        self._make_credentials = credentials
        self._make_upstream = upstream
        self._credentials: CredentialStore | None = None
        self._upstream: UpstreamClient | None = None
        self.logger = logger
        self.metrics = metrics
        self.policy = RefreshPolicy(settings.cache.refresh_margin_seconds, settings.cache.refresh_margin_ratio)
        self.memory: MemoryCache[CachedToken] = MemoryCache(settings.cache.memory_cache_seconds)
        self.degraded: MemoryCache[CachedToken] = MemoryCache(0)
        self.degraded_failures: MemoryCache[tuple[float, dict[str, Any]]] = MemoryCache(0)
        """Cool-downs while DynamoDB is unavailable: (until, error body) per key, this environment only."""
        self._local_lock = threading.Lock()
        self.owner = f"{uuid.uuid4()}"
        self.timer = timer
        self.budget = UpstreamBudget(cache, profile.name, settings.upstream_budget)
        self.usage = UsageMarks(cache, settings.cache.idle_seconds)

    @property
    def credentials(self) -> CredentialStore:
        if self._credentials is None:
            self._credentials = self._make_credentials()
        return self._credentials

    @property
    def upstream(self) -> UpstreamClient:
        if self._upstream is None:
            self._upstream = self._make_upstream()
        return self._upstream

    # -- public ---------------------------------------------------------------------------------
    def vend(self, request: TokenRequest, deadline: float) -> CachedToken:
        """Return a token that satisfies ``request`` or raise the contract's error."""
        key = request.scope_key
        if not request.force_refresh:
            remembered = self.memory.get(key)
            if remembered is not None and self.policy.is_fresh(remembered, request.min_ttl, time.time()):
                self._count("CacheHitMemory")
                self._note_use(remembered)
                return remembered
        try:
            # Naming the refused token: only the latest stored one may be served in its place.
            cached = self.cache.get(self.profile.name, key, consistent=request.refused is not None)
        except CacheUnavailable as exc:
            return self._degraded(request, deadline, str(exc))
        if cached is not None and self._acceptable_or_refuse(cached, request):
            self._count("CacheHitDynamoDB")
            self.memory.put(key, cached)
            self._note_use(cached)
            return cached
        self._count("CacheMiss")
        try:
            return self._refresh(request, deadline, stale=cached)
        except CacheUnavailable as exc:
            return self._degraded(request, deadline, str(exc))

    def _note_use(self, token: CachedToken) -> None:
        """A caller was served ``token``: mark its scope set in use (rarely a write, see :mod:`usage`)."""
        noted = self.usage.note(token, time.time())
        if noted is not token:
            self.memory.put(token.scope_key, noted)

    def refresh_ahead(self, deadline: float) -> dict[str, int]:
        """The scheduled run, a safety net under the per-token renewals: every live token of a scope set in use
        whose renewal falls before the next run gets its renewal armed again (a lost one is replaced; a duplicate
        does nothing), and one already due is renewed now. Without a renewal queue the run renews, itself, every
        token that would enter its margin before the next run. Scope sets nobody used for the idle period are
        left to expire; so are sets no longer configured."""
        summary = {"renewed": 0, "armed": 0, "fresh": 0, "idle": 0, "failed": 0}
        if self.profile.auth is ClientAuth.TLS_CLIENT_AUTH:
            try:
                self._report_certificate(self.credentials.get())
            except TokenVendingError as exc:
                self.logger.warning("could not read the client certificate", extra={"error": exc.code})
        now = time.time()
        interval = self.settings.cache.refresh_ahead_interval
        try:
            live = [token for token in self.cache.list_tokens(self.profile.name) if token.remaining(now) > 0]
        except CacheUnavailable as exc:
            self._count("RefreshAheadFailure")
            self.logger.warning("refresh ahead could not list tokens", extra={"reason": str(exc)})
            summary["failed"] += 1
            return summary
        for token in live:
            if not self._configured(token.scope_key) or not self.usage.in_use(token, now):
                summary["idle"] += 1
                continue
            renewal = Renewal.of(token, self.policy)
            if self.timer is None:
                # Fresh enough to last until the run after next, with room for a late schedule.
                margin = self.policy.margin(token.lifetime)
                min_ttl = int(min(margin + SCHEDULE_SLACK * interval, token.lifetime - margin))
                if self.policy.is_fresh(token, min_ttl, now):
                    summary["fresh"] += 1
                    continue
            elif renewal.due > now:
                if renewal.due >= now + SCHEDULE_SLACK * interval:
                    summary["fresh"] += 1
                elif self._arm(renewal):
                    summary["armed"] += 1
                else:
                    summary["failed"] += 1
                continue
            outcome = self._renew_token(token, deadline)
            summary["renewed" if outcome == "renewed" else "failed"] += 1
        self.logger.info("refresh ahead done", extra=summary)
        return summary

    def renew(self, renewal: Renewal, deadline: float) -> str:
        """A renewal timer went off: renew its token if it is still the stored one and its scope set is in use.
        Returns what happened (``renewed``, ``replaced``, ``idle``, ``gone``, ``rearmed`` or ``failed``)."""
        try:
            token = self.cache.get(self.profile.name, renewal.scope_key, consistent=True)
        except CacheUnavailable as exc:
            self._count("RefreshAheadFailure")
            self.logger.warning("renewal could not read the token", extra={"reason": str(exc)})
            return "failed"
        now = time.time()
        if token is None:
            outcome = "gone"  # expired or never stored: the next caller fetches one
        elif not renewal.names(token):
            outcome = "replaced"  # a caller or another renewal stored a newer token, which armed its own
        elif renewal.due > now + 1:  # more than SQS's 15 minutes ahead (use is judged when it is due)
            outcome = "rearmed" if self._arm(renewal) else "failed"
        elif not self._configured(token.scope_key) or not self.usage.in_use(token, now):
            outcome = "idle"
        else:
            outcome = self._renew_token(token, deadline)
            if outcome == "failed":
                self._retry(renewal, token)
        self.logger.info("renewal", extra={"scope_key": renewal.scope_key, "outcome": outcome,
                                           "attempt": renewal.attempt})
        return outcome

    def _retry(self, renewal: Renewal, token: CachedToken) -> None:
        """Arm the failed renewal again while its token lasts: when the failure's cool-down lapses, backing off."""
        now = time.time()
        try:
            lease = self.cache.get_lease(self.profile.name, token.scope_key)
        except CacheUnavailable:
            lease = None
        retry = renewal.retry(now, lease.expires_at if lease is not None and lease.failure is not None else 0.0)
        if retry.due < token.expires_at:
            self._arm(retry)

    def _renew_token(self, token: CachedToken, deadline: float) -> str:
        """Replace ``token`` (still stored, in use) under the usual lease; a newer one stored meanwhile counts."""
        from token_vending.request import TokenRequest
        from token_vending.scopes import parse_scope_set

        request = TokenRequest(provider=self.profile.name, scopes=parse_scope_set(token.scope_key), min_ttl=0,
                               force_refresh=False)
        try:
            renewed = self._refresh(request, deadline, stale=token, renewal=True)
        except (TokenVendingError, CacheUnavailable) as exc:
            renewed = None
            error = getattr(exc, "code", type(exc).__name__)
        else:
            error = "stale served"
        if renewed is not None and self._newer(renewed, token):
            return "renewed"
        self._count("RefreshAheadFailure")
        self.logger.warning("refresh ahead failed", extra={"scope_key": token.scope_key, "error": error})
        return "failed"

    def _arm(self, renewal: Renewal) -> bool:
        """Arm ``renewal`` on the queue; a failure is counted (the scheduled run arms it again)."""
        if self.timer is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.timer.arm(renewal)
        except (BotoCoreError, ClientError) as exc:
            self._count("RefreshAheadFailure")
            self.logger.warning("could not arm the renewal", extra={"scope_key": renewal.scope_key,
                                                                    "reason": type(exc).__name__})
            return False
        return True

    def _configured(self, key: str) -> bool:
        """A stored scope set that is no longer configured is never requested again (left to expire)."""
        from token_vending.scopes import parse_scope_set

        try:
            return parse_scope_set(key) <= self.settings.allowed_scopes
        except ValueError:
            return False

    # -- decisions ------------------------------------------------------------------------------
    def _acceptable(self, token: CachedToken, request: TokenRequest, now: float) -> bool:
        """Fresh for this request. A forced refresh discards the token unless it was itself fetched within
        the force-refresh interval: a burst of forced refreshes (every caller that got a 401) then makes
        one upstream call, not one each."""
        if self._forced(token, request, now):
            return False
        return self.policy.is_fresh(token, request.min_ttl, now)

    def _forced(self, token: CachedToken, request: TokenRequest, now: float) -> bool:
        """A forced refresh discards ``token``: unless it was fetched within the force-refresh interval, or it
        is not the token the caller names as refused (it already replaced that one)."""
        return (request.force_refresh and not replaced(token.access_token, request)
                and now - token.fetched_at >= self.settings.cache.force_refresh_interval)

    def _acceptable_or_refuse(self, token: CachedToken, request: TokenRequest) -> bool:
        """Whether ``token`` may be served for ``request``; raises when it is current yet still cannot keep
        ``min_ttl``: the provider grants shorter tokens than its documented lifetime, and another fetch would
        bring the same, once per request. So the answer is an error without one -- the same answer a cold
        cache gets after its one fetch."""
        now = time.time()
        if self._acceptable(token, request, now):
            return True
        if self._forced(token, request, now):
            return False  # the caller wants a new token anyway
        if token.remaining(now) > self.policy.margin(token.lifetime) and self.policy.cannot_satisfy(
                token, request.min_ttl):
            raise self._too_short(token, request)
        return False

    def _too_short(self, token: CachedToken, request: TokenRequest) -> UpstreamInvalidResponse:
        return UpstreamInvalidResponse(
            f"the provider's tokens live {token.lifetime} s, too short for min_ttl {request.min_ttl} (documented: "
            f"{self.settings.lifetime} s)", provider=self.profile.name)

    # -- refresh under a lease ------------------------------------------------------------------
    def _refresh(self, request: TokenRequest, deadline: float, stale: CachedToken | None,
                 renewal: bool = False) -> CachedToken:
        """``renewal``: asked by refresh ahead, not a caller (the new token is not a use of its scope set)."""
        from token_vending.tracing import subsegment

        with subsegment("## refresh", provider=self.profile.name):
            return self._refresh_under_lease(request, deadline, stale, renewal)

    def _refresh_under_lease(self, request: TokenRequest, deadline: float, stale: CachedToken | None,
                             renewal: bool) -> CachedToken:
        key = request.scope_key
        poll = POLL_FIRST
        waited = False
        while True:
            lease_seconds = self._lease_seconds(deadline)
            lease_started = time.monotonic()
            fetch_deadline = min(deadline, lease_started + lease_seconds)
            if self.upstream.time_left(fetch_deadline) < MIN_ATTEMPT_SECONDS:
                return self._serve_stale_or_raise(request, stale, self._no_time())
            lease = self.cache.acquire_lease(self.profile.name, key, self.owner, lease_seconds)
            if lease.acquired:
                # The lease's own end bounds the whole fetch: no second environment can start one meanwhile.
                return self._refresh_holding_lease(request, fetch_deadline, stale, streak=lease.failures,
                                                   renewal=renewal)
            if lease.failure is not None:  # a refresh just failed: answer as it did, do not ask again
                return self._serve_stale_or_raise(request, stale, self._stored_error(lease.failure, lease.expires_at))
            if not waited:
                waited = True
                self._count("LeaseWait")
            # Someone else is refreshing: poll for their result until they finish, fail or vanish.
            while True:
                if time.monotonic() + poll >= deadline:
                    return self._serve_stale_or_raise(
                        request, stale, UpstreamUnavailable("a refresh by another caller is still running",
                                                            retry_after=1, provider=self.profile.name,
                                                            provider_fault=False))
                time.sleep(poll * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not cryptography
                poll = min(poll * 2, POLL_MAX)
                latest = self.cache.get(self.profile.name, key, consistent=True)
                if latest is not None and self._newer(latest, stale) and self._acceptable_or_refuse(latest, request):
                    self.memory.put(key, latest)
                    return latest
                holder = self.cache.get_lease(self.profile.name, key)
                if holder is not None and holder.failure is not None:
                    return self._serve_stale_or_raise(request, stale,
                                                      self._stored_error(holder.failure, holder.expires_at))
                if holder is None or holder.expires_at <= time.time():
                    break  # released without a usable token for us, or the holder died: take over
            if holder is not None:
                self.logger.warning("refresh lease lapsed; taking over", extra={"scope_key": key})

    @staticmethod
    def _newer(token: CachedToken, than: CachedToken | None) -> bool:
        return than is None or token.fetched_at > than.fetched_at

    def _lease_seconds(self, deadline: float) -> float:
        """Shorter than what is left of this invocation, so a holder that dies frees the key."""
        left = deadline - time.monotonic()
        return max(1.0, min(self.settings.cache.lease_seconds, left))

    def _refresh_holding_lease(self, request: TokenRequest, deadline: float, stale: CachedToken | None,
                               streak: int = 0, renewal: bool = False) -> CachedToken:
        """``deadline`` is the earlier of the invocation's and the lease's end: the fetch never outlives
        the lease, so no second environment can start one while ours still runs. ``streak``: refreshes of
        this key that failed in a row before ours; after one, the fetch makes a single attempt (no retries)
        and another failure backs off longer."""
        key = request.scope_key
        release = True
        try:
            latest = self.cache.get(self.profile.name, key, consistent=True)
            if latest is not None and self._newer(latest, stale) and self._acceptable_or_refuse(latest, request):
                self.memory.put(key, latest)  # another environment refreshed between our read and lease
                return latest
            stale = latest or stale
            try:
                token = self._fetch(request, deadline, retries=0 if streak else None,
                                    kind=self._kind(request, stale, renewal))
            except TokenVendingError as exc:
                until = self._cool_down(exc, streak)
                if until is not None:
                    self.cache.record_failure(self.profile.name, key, self.owner, until, exc.body(),
                                              failures=streak + 1)
                    release = False  # the lease stays as the cool-down record
                elif streak:
                    # Not the provider's fault (the budget, our own time, Secrets Manager): it says nothing about
                    # the provider, so the back-off is kept as it was -- a lapsed record with the same streak.
                    self.cache.record_failure(self.profile.name, key, self.owner, time.time(), exc.body(),
                                              failures=streak)
                    release = False
                return self._serve_stale_or_raise(request, stale, exc)
            # A renewal carries the scope set's last use over; a caller's fetch is a use.
            used = last_use(stale) if stale is not None else 0.0
            token = replace(token, used_at=used if renewal else max(used, time.time()))
            try:
                if self.cache.put(token):
                    if deadline - time.monotonic() >= ARM_RESERVE_SECONDS:
                        self._arm(Renewal.of(token, self.policy))
                    else:
                        self.logger.info("no time left to arm the renewal; the scheduled run will",
                                         extra={"scope_key": key})
                else:
                    token = self.cache.get(self.profile.name, key, consistent=True) or token
            except CacheUnavailable as exc:
                # Keep what we paid for: this environment serves it from its degraded store.
                self._count("CacheUnavailable")
                self.logger.warning("could not store the new token", extra={"reason": str(exc)})
                self._remember_degraded(key, token)
            self.memory.put(key, token)
            return self._serve_new(token, request)
        finally:
            if release:
                self.cache.release_lease(self.profile.name, key, self.owner)

    def _serve_new(self, token: CachedToken, request: TokenRequest) -> CachedToken:
        """A token just fetched is served only if it keeps ``min_ttl``; it is stored for others either way."""
        if token.remaining(time.time()) < request.min_ttl or self.policy.cannot_satisfy(token, request.min_ttl):
            raise self._too_short(token, request)
        return token

    @staticmethod
    def _cool_down(error: TokenVendingError, streak: int = 0) -> float | None:
        """Until when nobody asks the provider again after ``error`` (a 503 then says so in its
        ``Retry-After``); ``None`` when the provider was not at fault (our own lack of time, Secrets Manager
        or KMS down, a bad setting): retrying those costs it nothing. ``streak`` failures in a row before this
        one double the wait each time (exponential back-off), up to the caps."""
        if not error.provider_fault or isinstance(error, (InvalidRequest, Misconfigured)):
            return None
        factor = 2.0 ** min(streak, 10)
        if isinstance(error, UpstreamRejected):
            # needs a person: a new secret or scope
            seconds = min(REJECTED_COOL_DOWN_SECONDS * factor, MAX_COOL_DOWN_SECONDS)
        else:
            asked = error.retry_after if isinstance(error, UpstreamUnavailable) else None
            seconds = min(max(COOL_DOWN_SECONDS * factor, float(asked or 0)), MAX_OUTAGE_COOL_DOWN_SECONDS)
        if isinstance(error, UpstreamUnavailable):
            error.extra["retry_after"] = math.ceil(seconds)
        return time.time() + seconds

    def _no_time(self) -> UpstreamTimeout:
        """Our own lack of time: not the provider's fault, so no lease, no cool-down, no failure metric."""
        return UpstreamTimeout("too little time left in this invocation to ask the provider",
                               provider=self.profile.name, provider_fault=False)

    def _stored_error(self, body: dict[str, Any], until: float) -> TokenVendingError:
        """The error of a failed refresh, replayed during its cool-down with the time really left."""
        cls = ERRORS_BY_CODE.get(str(body.get("error")), UpstreamUnavailable)
        error = cls.from_body(body, self.profile.name)
        if isinstance(error, UpstreamUnavailable):
            error.extra["retry_after"] = max(1, math.ceil(until - time.time()))
        return error

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
    def _remember_degraded(self, key: str, token: CachedToken) -> None:
        hold = token.remaining(time.time()) - self.policy.margin(token.lifetime)
        self.degraded.put(key, token, seconds=max(hold, 0.0))

    def _degraded(self, request: TokenRequest, deadline: float, reason: str) -> CachedToken:
        from token_vending.tracing import subsegment

        with subsegment("## degraded", provider=self.profile.name):
            return self._degraded_untraced(request, deadline, reason)

    def _degraded_untraced(self, request: TokenRequest, deadline: float, reason: str) -> CachedToken:
        """DynamoDB is unavailable: one fetch per environment, kept until its refresh margin in a store
        of its own, read only while DynamoDB fails (so it never shadows the table once it is back). A failed
        fetch starts a cool-down in this environment, as the lease would fleet-wide."""
        self._count("CacheUnavailable")
        self.logger.warning("token cache unavailable; using this environment's memory only",
                            extra={"reason": reason})
        key = request.scope_key
        with self._local_lock:
            remembered = self.degraded.get(key)
            if remembered is not None and self._acceptable_or_refuse(remembered, request):
                return remembered
            failure = self.degraded_failures.get(key)
            if failure is not None:
                return self._serve_stale_or_raise(request, remembered, self._stored_error(failure[1], failure[0]))
            if self.upstream.time_left(deadline) < MIN_ATTEMPT_SECONDS:
                return self._serve_stale_or_raise(request, remembered, self._no_time())
            try:
                token = self._fetch(request, deadline, kind=None)
            except TokenVendingError as exc:
                cooled = self._cool_down(exc)
                if cooled is not None:
                    self.degraded_failures.put(key, (cooled, exc.body()), seconds=cooled - time.time())
                return self._serve_stale_or_raise(request, remembered, exc)
            self._remember_degraded(key, token)
            return self._serve_new(token, request)

    # -- upstream -------------------------------------------------------------------------------
    def _kind(self, request: TokenRequest, stale: CachedToken | None, renewal: bool) -> Kind:
        """What a fetch spends the budget as: a caller replacing a token that is still fresh (``force_refresh``,
        or a ``min_ttl`` it cannot keep) forces it, however it asks."""
        if renewal:
            return "renewal"
        if request.force_refresh or (stale is not None and self.policy.is_fresh(stale, 0, time.time())):
            return "forced"
        return "miss"

    def _fetch(self, request: TokenRequest, deadline: float, retries: int | None = None,
               kind: Kind | None = "miss") -> CachedToken:
        """One upstream request; on a credentials error, re-read the secret and retry once if it
        changed (rotation). Retrying with credentials already refused would only count against us.
        ``retries``: instead of the configured number (none while backing off). ``kind``: what it spends the
        budget as (:mod:`token_vending.budget`); ``None``: no budget (DynamoDB is down, so it cannot count)."""
        credentials = self.credentials.get()
        self._report_certificate(credentials)
        try:
            return self._call(credentials, request, deadline, retries, kind)
        except UpstreamRejected as exc:
            if not self.profile.is_credential_error(exc.upstream_status or 0, exc.upstream_error):
                raise
            rotated = self.credentials.get(force_fetch=True)
            if rotated.fingerprint == credentials.fingerprint:
                raise
            self.logger.info("credentials were rejected and the secret has changed; retrying once")
            self._count("SecretReloaded")
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
        self._count("UpstreamBudgetExhausted")
        self.logger.warning("the provider's hourly token budget is spent",
                            extra={"budget": self.budget.per_hour, "kind": kind, "limit": self.budget.limit(kind)})
        share = {"renewal": "", "miss": "callers' share of ", "forced": "forced refreshes' share of "}[kind]
        raise UpstreamUnavailable(f"{share}the provider's budget of {self.budget.per_hour} token requests an hour is "
                                  "spent", retry_after=retry_after, provider=self.profile.name, provider_fault=False)

    def _call(self, credentials: ClientCredentials, request: TokenRequest, deadline: float,
              retries: int | None = None, kind: Kind | None = "miss") -> CachedToken:
        from aws_lambda_powertools.metrics import MetricUnit

        if kind is not None:
            self._spend(kind)
        self._count("UpstreamRequest")
        started = time.perf_counter()
        try:
            grant = self.upstream.fetch(credentials, request.scope_key, deadline, retries=retries)
        except TokenVendingError as exc:
            if not exc.provider_fault:
                raise
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

    def _report_certificate(self, credentials: ClientCredentials) -> None:
        """``ClientCertificateDaysLeft`` whenever a client certificate is about to be used (and on every
        scheduled run): operators alarm on it well before the provider starts refusing the handshake."""
        if self.profile.auth is not ClientAuth.TLS_CLIENT_AUTH or not credentials.certificate:
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

    def _count(self, name: str) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
