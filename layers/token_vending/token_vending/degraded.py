"""Degraded mode: how the provider function serves while DynamoDB itself is unavailable.

Why it exists: the token is the product, so a DynamoDB outage must not become a token outage -- nor a fetch per
request. Each execution environment then fetches at most once per token lifetime, keeps the token until its
refresh margin in a store of its own (read only while DynamoDB fails, so it never shadows the table once it is
back), and after a failed fetch keeps a cool-down of its own, as the lease would fleet-wide.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from token_vending.cooldown import MIN_ATTEMPT_SECONDS, cool_down, no_time, stored_error
from token_vending.counting import count
from token_vending.exceptions import TokenVendingError
from token_vending.memory import MemoryCache

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from token_vending.cache import CachedToken
    from token_vending.fetch import Fetcher
    from token_vending.freshness import RefreshPolicy
    from token_vending.request import TokenRequest
    from token_vending.serving import ServeRules

class DegradedMode:
    def __init__(self, *, provider: str, policy: RefreshPolicy, rules: ServeRules, fetcher: Fetcher, logger: Logger,
                 metrics: Metrics) -> None:
        self.provider = provider
        self.policy = policy
        self.rules = rules
        self.fetcher = fetcher
        self.logger = logger
        self.metrics = metrics
        self.tokens: MemoryCache[CachedToken] = MemoryCache(0)
        self.failures: MemoryCache[tuple[float, dict[str, Any]]] = MemoryCache(0)
        """Cool-downs while DynamoDB is unavailable: (until, error body) per key, this environment only."""
        self._lock = threading.Lock()

    def remember(self, key: str, token: CachedToken) -> None:
        """Keep ``token`` in this environment until its refresh margin (also when it was paid for but not stored)."""
        hold = token.remaining(time.time()) - self.policy.margin(token.lifetime)
        self.tokens.put(key, token, seconds=max(hold, 0.0))

    def serve(self, request: TokenRequest, deadline: float, reason: str) -> CachedToken:
        from token_vending.tracing import subsegment

        with subsegment("## degraded", connection=self.provider):
            return self._serve(request, deadline, reason)

    def _serve(self, request: TokenRequest, deadline: float, reason: str) -> CachedToken:
        """DynamoDB is unavailable: one fetch per environment, kept until its refresh margin. A failed fetch starts
        a cool-down in this environment."""
        count(self.metrics, "CacheUnavailable")
        self.logger.warning("token cache unavailable; using this environment's memory only",
                            extra={"reason": reason})
        key = request.scope_key
        with self._lock:
            remembered = self.tokens.get(key)
            if remembered is not None and self.rules.acceptable_or_refuse(remembered, request):
                return remembered
            failure = self.failures.get(key)
            if failure is not None:
                return self.rules.serve_stale_or_raise(request, remembered,
                                                       stored_error(failure[1], failure[0], self.provider))
            if self.fetcher.time_left(deadline) < MIN_ATTEMPT_SECONDS:
                return self.rules.serve_stale_or_raise(request, remembered, no_time(self.provider))
            try:
                token = self.fetcher.fetch(request, deadline, kind=None)
            except TokenVendingError as exc:
                cooled = cool_down(exc)
                if cooled is not None:
                    self.failures.put(key, (cooled, exc.body()), seconds=cooled - time.time())
                return self.rules.serve_stale_or_raise(request, remembered, exc)
            self.remember(key, token)
            return self.rules.serve_new(token, request)
