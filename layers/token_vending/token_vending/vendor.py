"""The provider function's core: serve from cache, or refresh once for the whole fleet.

Order of preference for one request:

1. this execution environment's memory (a few seconds),
2. the DynamoDB item, if fresh,
3. on a miss, the secret is read (the connection's settings) and the request's scopes are checked against them;
   then a refresh under a DynamoDB lease (:mod:`token_vending.refresh`): exactly one environment calls the
   provider, the others poll the item with consistent reads and take over only if the holder's lease lapses,
4. on refresh failure, the old token if it still meets ``min_ttl`` (stale on error, :mod:`token_vending.serving`);
   the failed refresh's lease stays as a cool-down (:mod:`token_vending.cooldown`), so no caller asks the
   provider again until it lapses.

Every token request first spends one unit of the provider's hourly budget (:mod:`token_vending.fetch`); every
stored token arms its own renewal just before its refresh margin (:mod:`token_vending.renewer`), which renews it
only while its scope set is in use (:mod:`token_vending.usage`).

If DynamoDB itself is unavailable the function degrades to a per-environment cache
(:mod:`token_vending.degraded`): each environment fetches at most once per token lifetime, never once per request.

:class:`TokenVendor` only serves and wires the jobs together; each job lives in its own module.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from token_vending.cache import CachedToken, CacheUnavailable, TokenCache
from token_vending.counting import count
from token_vending.degraded import DegradedMode
from token_vending.exceptions import InvalidRequest, TokenVendingError
from token_vending.fetch import Fetcher
from token_vending.freshness import RefreshPolicy
from token_vending.memory import MemoryCache
from token_vending.refresh import LeasedRefresh
from token_vending.renewer import Renewer
from token_vending.serving import ServeRules
from token_vending.usage import UsageMarks

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools import Logger, Metrics

    from token_vending.connection_settings import ConnectionSettings
    from token_vending.credentials import CredentialStore
    from token_vending.profile import ClientCredentialsProfile
    from token_vending.renewal import Renewal, RenewalTimer
    from token_vending.request import TokenRequest
    from token_vending.settings import ProviderSettings
    from token_vending.upstream import UpstreamClient


class TokenVendor:
    def __init__(self, *, profile: ClientCredentialsProfile, settings: ProviderSettings, cache: TokenCache,
                 credentials: Callable[[], CredentialStore], upstream: Callable[[ConnectionSettings], UpstreamClient],
                 logger: Logger, metrics: Metrics, timer: RenewalTimer | None = None) -> None:
        """``credentials`` and ``upstream`` make the secret store and the HTTP client (for the settings the secret
        resolves to) on first use: a cold start answered from the cache needs neither. ``timer``: arms each new
        token's renewal (``None``: the scheduled run renews by its interval)."""
        self.profile = profile
        self.settings = settings
        self.cache = cache
        self.logger = logger
        self.metrics = metrics
        self.policy = RefreshPolicy(settings.cache.refresh_margin_seconds, settings.cache.refresh_margin_ratio)
        self.memory: MemoryCache[CachedToken] = MemoryCache(settings.cache.memory_cache_seconds)
        self.owner = f"{uuid.uuid4()}"
        self.usage = UsageMarks(cache, settings.cache.idle_seconds)
        self.fetcher = Fetcher(profile=profile, settings=settings, cache=cache, credentials=credentials,
                               upstream=upstream, logger=logger, metrics=metrics)
        self.rules = ServeRules(provider=profile.name, settings=settings, policy=self.policy, logger=logger,
                                metrics=metrics)
        self.degraded = DegradedMode(provider=profile.name, policy=self.policy, rules=self.rules, fetcher=self.fetcher,
                                     logger=logger, metrics=metrics)
        self.refresher = LeasedRefresh(provider=profile.name, settings=settings, policy=self.policy, cache=cache,
                                       memory=self.memory, rules=self.rules, fetcher=self.fetcher,
                                       degraded=self.degraded, timer=timer, owner=self.owner, logger=logger,
                                       metrics=metrics)
        self.renewer = Renewer(profile=profile, settings=settings, policy=self.policy, cache=cache, usage=self.usage,
                               refresher=self.refresher, rules=self.rules, fetcher=self.fetcher, timer=timer,
                               logger=logger, metrics=metrics)

    @property
    def credentials(self) -> CredentialStore:
        return self.fetcher.credentials

    @property
    def upstream(self) -> UpstreamClient:
        return self.fetcher.upstream

    def vend(self, request: TokenRequest, deadline: float) -> CachedToken:
        """Return a token that satisfies ``request`` or raise the contract's error."""
        key = request.scope_key
        if not request.force_refresh:
            remembered = self.memory.get(key)
            if remembered is not None and self.policy.is_fresh(remembered, request.min_ttl, time.time()):
                count(self.metrics, "CacheHitMemory")
                self._note_use(remembered)
                return remembered
        try:
            # Naming the refused token: only the latest stored one may be served in its place.
            cached = self.cache.get(self.profile.name, key, consistent=request.refused is not None)
        except CacheUnavailable as exc:
            return self.degraded.serve(request, deadline, str(exc))
        if cached is not None and self.rules.acceptable_or_refuse(cached, request):
            count(self.metrics, "CacheHitDynamoDB")
            self.memory.put(key, cached)
            self._note_use(cached)
            return cached
        count(self.metrics, "CacheMiss")
        try:
            # The connection's settings are its secret's: its scopes are checked once it is read, before any lease
            # or budget is taken (a scope it does not allow writes nothing).
            self.fetcher.check(request)
        except InvalidRequest:
            raise
        except TokenVendingError as exc:  # the secret cannot be read or is wrong: as a failed refresh would
            return self.rules.serve_stale_or_raise(request, cached, exc)
        try:
            return self.refresher.refresh(request, deadline, stale=cached)
        except CacheUnavailable as exc:
            return self.degraded.serve(request, deadline, str(exc))

    def refresh_ahead(self, deadline: float) -> dict[str, int]:
        """The scheduled run (:meth:`Renewer.refresh_ahead`)."""
        return self.renewer.refresh_ahead(deadline)

    def renew(self, renewal: Renewal, deadline: float) -> str:
        """A renewal timer went off (:meth:`Renewer.renew`)."""
        return self.renewer.renew(renewal, deadline)

    def _note_use(self, token: CachedToken) -> None:
        """A caller was served ``token``: mark its scope set in use (rarely a write, see :mod:`usage`)."""
        noted = self.usage.note(token, time.time())
        if noted is not token:
            self.memory.put(token.scope_key, noted)
