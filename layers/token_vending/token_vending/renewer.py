"""Renewals: each stored token is replaced before callers find it inside its refresh margin.

Why a job of its own: renewals are not callers. A renewal timer (:mod:`token_vending.renewal`) renews its token only
if it is still the stored one and its scope set is in use (:mod:`token_vending.usage`); the scheduled run is the
safety net under the timers -- it re-arms any renewal that falls before its next run and renews what is already
due. Both go through the same lease as callers (:mod:`token_vending.refresh`), so a renewal never doubles a
caller's fetch, and a renewal that fails is armed again while its token lives.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from token_vending.cache import CacheUnavailable
from token_vending.counting import count
from token_vending.exceptions import TokenVendingError
from token_vending.profile import ClientAuth
from token_vending.renewal import Renewal, arm

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from token_vending.cache import CachedToken, TokenCache
    from token_vending.fetch import Fetcher
    from token_vending.freshness import RefreshPolicy
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.refresh import LeasedRefresh
    from token_vending.renewal import RenewalTimer
    from token_vending.serving import ServeRules
    from token_vending.settings import ProviderSettings
    from token_vending.usage import UsageMarks

SCHEDULE_SLACK = 1.5
"""The scheduled run looks this many intervals ahead (a late run must not miss a token)."""


class RenewalNotArmed(Exception):
    """A renewal failed and could not be armed again (SQS refused): the batch reports its message as failed, so SQS
    delivers it again after its visibility timeout, well within the queue's retention."""


class Renewer:
    def __init__(self, *, profile: ClientCredentialsProfile, settings: ProviderSettings, policy: RefreshPolicy,
                 cache: TokenCache, usage: UsageMarks, refresher: LeasedRefresh, rules: ServeRules, fetcher: Fetcher,
                 timer: RenewalTimer | None, logger: Logger, metrics: Metrics) -> None:
        self.profile = profile
        self.settings = settings
        self.policy = policy
        self.cache = cache
        self.usage = usage
        self.refresher = refresher
        self.rules = rules
        self.fetcher = fetcher
        self.timer = timer
        self.logger = logger
        self.metrics = metrics
        self._allowed: frozenset[str] | None = None
        """The connection's allowed scopes as last read from its secret (per scheduled run, or per renewal)."""

    def refresh_ahead(self, deadline: float) -> dict[str, int]:
        """The scheduled run, a safety net under the per-token renewals: every live token of a scope set in use
        whose renewal falls before the next run gets its renewal armed again (a lost one is replaced; a duplicate
        does nothing), and one already due is renewed now. Without a renewal queue the run renews, itself, every
        token that would enter its margin before the next run. Scope sets nobody used for the idle period are
        left to expire; so are sets no longer configured."""
        summary = {"renewed": 0, "armed": 0, "fresh": 0, "idle": 0, "failed": 0}
        self._allowed = None
        certificate = self._may_use_certificate()
        if certificate:
            self._read_secret()  # even with no token to renew: the alarm must see it
        now = time.time()
        interval = self.settings.cache.refresh_ahead_interval
        try:
            live = [token for token in self.cache.list_tokens(self.profile.name) if token.remaining(now) > 0]
        except CacheUnavailable as exc:
            count(self.metrics, "RefreshAheadFailure")
            self.logger.warning("refresh ahead could not list tokens", extra={"reason": str(exc)})
            summary["failed"] += 1
            return summary
        if live and not certificate:
            self._read_secret()  # the secret may name tls_client_auth; its settings judge the scope sets
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
        Returns what happened (``renewed``, ``replaced``, ``idle``, ``gone``, ``rearmed`` or ``failed``).
        Raises :class:`RenewalNotArmed` when it failed and could not be armed again: the batch then reports the
        message, which SQS delivers again."""
        try:
            token = self.cache.get(self.profile.name, renewal.scope_key, consistent=True)
        except CacheUnavailable as exc:
            count(self.metrics, "RefreshAheadFailure")
            self.logger.warning("renewal could not read the token", extra={"reason": str(exc)})
            outcome = "failed"
            self._retry(renewal, None)  # whether the token lives is unknown: try again, backing off
        else:
            outcome = self._decide(renewal, token, deadline)
        self.logger.info("renewal", extra={"scope_key": renewal.scope_key, "outcome": outcome,
                                           "attempt": renewal.attempt})
        return outcome

    def _decide(self, renewal: Renewal, token: CachedToken | None, deadline: float) -> str:
        now = time.time()
        if token is None:
            return "gone"  # expired or never stored: the next caller fetches one
        if not renewal.names(token):
            return "replaced"  # a caller or another renewal stored a newer token, which armed its own
        if renewal.due > now + 1:  # more than SQS's 15 minutes ahead (use is judged when it is due)
            if not self._arm(renewal):
                raise RenewalNotArmed(renewal.scope_key)
            return "rearmed"
        self._allowed = None  # read again: a renewal may come long after the last
        if not self._configured(token.scope_key) or not self.usage.in_use(token, now):
            return "idle"
        outcome = self._renew_token(token, deadline)
        if outcome == "failed":
            self._retry(renewal, token)
        return outcome

    def _retry(self, renewal: Renewal, token: CachedToken | None) -> None:
        """Arm the failed renewal again while its token lives: when the failure's cool-down lapses, backing off, and
        before the token expires. Raises :class:`RenewalNotArmed` when SQS refuses (the message is then delivered
        again): a renewal is never dropped while its token may live."""
        now = time.time()
        try:
            lease = self.cache.get_lease(self.profile.name, renewal.scope_key)
        except CacheUnavailable:
            lease = None
        retry = renewal.retry(now, lease.expires_at if lease is not None and lease.failure is not None else 0.0)
        if token is not None:
            last_chance = token.expires_at - 1.0
            if last_chance <= now:
                return  # the token is gone by then: the next caller fetches one
            retry = replace(retry, due=min(retry.due, last_chance))
        if not self._arm(retry):
            raise RenewalNotArmed(renewal.scope_key)

    def _renew_token(self, token: CachedToken, deadline: float) -> str:
        """Replace ``token`` (still stored, in use) under the usual lease; a newer one stored meanwhile counts."""
        from token_vending.request import TokenRequest
        from token_vending.scopes import parse_scope_set

        request = TokenRequest(provider=self.profile.name, scopes=parse_scope_set(token.scope_key), min_ttl=0,
                               force_refresh=False)
        try:
            renewed = self.refresher.refresh(request, deadline, stale=token, renewal=True)
        except (TokenVendingError, CacheUnavailable) as exc:
            renewed = None
            error = getattr(exc, "code", type(exc).__name__)
        else:
            error = "stale served"
        if renewed is not None and self.rules.newer(renewed, token):
            return "renewed"
        count(self.metrics, "RefreshAheadFailure")
        self.logger.warning("refresh ahead failed", extra={"scope_key": token.scope_key, "error": error})
        return "failed"

    def _arm(self, renewal: Renewal) -> bool:
        return arm(self.timer, renewal, logger=self.logger, metrics=self.metrics)

    def _may_use_certificate(self) -> bool:
        """Whether the environment says ``tls_client_auth`` (the catalogue's method or CLIENT_AUTH): the secret is
        then read on every run. A secret that says so itself is read when there are tokens to judge."""
        from token_vending.constants import CLIENT_AUTH_ENV

        return (self.profile.auth is ClientAuth.TLS_CLIENT_AUTH
                or self.settings.env(CLIENT_AUTH_ENV) == "tls_client_auth")

    def _read_secret(self) -> None:
        """Read the secret (its settings judge the scope sets) and report a client certificate's days left."""
        try:
            credentials = self.fetcher.credentials.get()
            self._allowed = self.fetcher.connection(credentials).allowed_scopes
            self.fetcher.report_certificate(credentials)
        except TokenVendingError as exc:
            self.logger.warning("could not read the secret", extra={"error": exc.code})

    def _configured(self, key: str) -> bool:
        """A stored scope set that is no longer allowed is never requested again (left to expire). The ``""`` key is
        the default scopes, whatever they are now. The allowed scopes are the secret's settings: when it cannot be
        read, the set is renewed, and the renewal fails as a caller's fetch would."""
        from token_vending.scopes import parse_scope_set

        if key == "":
            return True
        if self._allowed is None:
            try:
                self._allowed = self.fetcher.connection(self.fetcher.credentials.get()).allowed_scopes
            except TokenVendingError:
                return True
        try:
            return parse_scope_set(key) <= self._allowed
        except ValueError:
            return False
