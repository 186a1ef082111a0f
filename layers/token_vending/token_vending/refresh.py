"""Single-flight refresh: exactly one execution environment of the fleet asks the provider for a key at a time.

Why a lease: without one, every environment that finds the token stale asks the provider at once. The lease is a
conditional write in DynamoDB (:mod:`token_vending.cache`); its holder fetches, stores the token and arms its
renewal, while the others poll the item with consistent reads and take over only if the holder's lease lapses. A
failed refresh turns its lease into a cool-down record (:mod:`token_vending.cooldown`), so nobody asks again until
it lapses, and callers are answered with the old token while it meets ``min_ttl`` (stale on error) or the error.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from token_vending.cache import CacheUnavailable
from token_vending.cooldown import MIN_ATTEMPT_SECONDS, cool_down, no_time, stored_error
from token_vending.counting import count
from token_vending.exceptions import TokenVendingError, UpstreamUnavailable
from token_vending.renewal import Renewal, arm
from token_vending.serving import discards
from token_vending.usage import last_use

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from token_vending.budget import Kind
    from token_vending.cache import CachedToken, TokenCache
    from token_vending.degraded import DegradedMode
    from token_vending.fetch import Fetcher
    from token_vending.freshness import RefreshPolicy
    from token_vending.memory import MemoryCache
    from token_vending.renewal import RenewalTimer
    from token_vending.request import TokenRequest
    from token_vending.serving import ServeRules
    from token_vending.settings import ProviderSettings

POLL_FIRST = 0.05
POLL_MAX = 0.5
ARM_RESERVE_SECONDS = 2.0
"""A renewal is armed after a fetch only with this much of the fetch's time left (one SQS attempt of at most 1.5 s):
the caller's answer must not miss its deadline for it; the scheduled run re-arms what was skipped."""


class LeasedRefresh:
    def __init__(self, *, provider: str, settings: ProviderSettings, policy: RefreshPolicy, cache: TokenCache,
                 memory: MemoryCache[CachedToken], rules: ServeRules, fetcher: Fetcher, degraded: DegradedMode,
                 timer: RenewalTimer | None, owner: str, logger: Logger, metrics: Metrics) -> None:
        self.provider = provider
        self.settings = settings
        self.policy = policy
        self.cache = cache
        self.memory = memory
        self.rules = rules
        self.fetcher = fetcher
        self.degraded = degraded
        self.timer = timer
        self.owner = owner
        self.logger = logger
        self.metrics = metrics

    def refresh(self, request: TokenRequest, deadline: float, stale: CachedToken | None,
                renewal: bool = False) -> CachedToken:
        """``renewal``: asked by refresh ahead, not a caller (the new token is not a use of its scope set)."""
        from token_vending.tracing import subsegment

        with subsegment("## refresh", connection=self.provider):
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
            if self.fetcher.time_left(fetch_deadline) < MIN_ATTEMPT_SECONDS:
                return self.rules.serve_stale_or_raise(request, stale, no_time(self.provider))
            lease = self.cache.acquire_lease(self.provider, key, self.owner, lease_seconds)
            if lease.acquired:
                # The lease's own end bounds the whole fetch: no second environment can start one meanwhile.
                return self._refresh_holding_lease(request, fetch_deadline, stale, streak=lease.failures,
                                                   renewal=renewal)
            if lease.failure is not None:  # a refresh just failed: answer as it did, do not ask again
                return self.rules.serve_stale_or_raise(request, stale,
                                                       stored_error(lease.failure, lease.expires_at, self.provider))
            if not waited:
                waited = True
                count(self.metrics, "LeaseWait")
            # Someone else is refreshing: poll for their result until they finish, fail or vanish.
            while True:
                if time.monotonic() + poll >= deadline:
                    return self.rules.serve_stale_or_raise(
                        request, stale, UpstreamUnavailable("a refresh by another caller is still running",
                                                            retry_after=1, provider=self.provider,
                                                            provider_fault=False))
                time.sleep(poll * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not cryptography
                poll = min(poll * 2, POLL_MAX)
                latest = self.cache.get(self.provider, key, consistent=True)
                if (latest is not None and self.rules.newer(latest, stale)
                        and self.rules.acceptable_or_refuse(latest, request)):
                    self.memory.put(key, latest)
                    return latest
                holder = self.cache.get_lease(self.provider, key)
                if holder is not None and holder.failure is not None:
                    return self.rules.serve_stale_or_raise(request, stale,
                                                           stored_error(holder.failure, holder.expires_at,
                                                                        self.provider))
                if holder is None or holder.expires_at <= time.time():
                    break  # released without a usable token for us, or the holder died: take over
            if holder is not None:
                self.logger.warning("refresh lease lapsed; taking over", extra={"scope_key": key})

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
            latest = self.cache.get(self.provider, key, consistent=True)
            if (latest is not None and self.rules.newer(latest, stale)
                    and self.rules.acceptable_or_refuse(latest, request)):
                self.memory.put(key, latest)  # another environment refreshed between our read and lease
                return latest
            stale = latest or stale
            try:
                token = self.fetcher.fetch(request, deadline, retries=0 if streak else None,
                                           kind=self._kind(request, stale, renewal))
            except TokenVendingError as exc:
                until = cool_down(exc, streak)
                if until is not None:
                    self.cache.record_failure(self.provider, key, self.owner, until, exc.body(),
                                              failures=streak + 1)
                    release = False  # the lease stays as the cool-down record
                elif streak:
                    # Not the provider's fault (the budget, our own time, Secrets Manager): it says nothing about
                    # the provider, so the back-off is kept as it was -- a lapsed record with the same streak.
                    self.cache.record_failure(self.provider, key, self.owner, time.time(), exc.body(),
                                              failures=streak)
                    release = False
                return self.rules.serve_stale_or_raise(request, stale, exc)
            # A renewal carries the scope set's last use over; a caller's fetch is a use.
            used = last_use(stale) if stale is not None else 0.0
            token = replace(token, used_at=used if renewal else max(used, time.time()))
            try:
                if self.cache.put(token):
                    self._arm(token, deadline)
                else:
                    token = self.cache.get(self.provider, key, consistent=True) or token
            except CacheUnavailable as exc:
                # Keep what we paid for: this environment serves it from its degraded store. The write may have
                # landed all the same (a timeout): the token's renewal is armed either way (a renewal of a token
                # not stored does nothing).
                count(self.metrics, "CacheUnavailable")
                self.logger.warning("could not store the new token", extra={"reason": str(exc)})
                self.degraded.remember(key, token)
                self._arm(token, deadline)
                if renewal:
                    raise  # the stored token may still be the old one: the renewal failed, and is tried again
            self.memory.put(key, token)
            return self.rules.serve_new(token, request)
        finally:
            if release:
                self.cache.release_lease(self.provider, key, self.owner)

    def _arm(self, token: CachedToken, deadline: float) -> None:
        """Arm the renewal of ``token``, just stored, if the caller's answer can afford one SQS call."""
        if deadline - time.monotonic() >= ARM_RESERVE_SECONDS:
            arm(self.timer, Renewal.of(token, self.policy), logger=self.logger, metrics=self.metrics)
        else:
            self.logger.info("no time left to arm the renewal; the scheduled run will",
                             extra={"scope_key": token.scope_key})

    def _kind(self, request: TokenRequest, stale: CachedToken | None, renewal: bool) -> Kind:
        """What a fetch spends the budget as: a caller replacing a token that is still fresh (``force_refresh``,
        or a ``min_ttl`` it cannot keep) forces it, however it asks."""
        if renewal:
            return "renewal"
        if stale is None:
            return "forced" if request.force_refresh else "miss"
        if discards(stale, request) or self.policy.is_fresh(stale, 0, time.time()):
            return "forced"
        return "miss"
