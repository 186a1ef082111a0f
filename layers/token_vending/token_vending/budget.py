"""The provider's hourly budget of token requests, shared by the whole deployment.

Whatever goes wrong elsewhere -- a bug, a caller forcing refreshes in a loop, many scope sets failing at once --
the provider never sees more token requests in an hour than its budget (Autopay cuts off clients that
over-request). One counter item per provider and clock hour in the provider's own partition
(``budget#<hour>``), spent with one conditional ``UpdateItem`` before each token request; past the budget the
service serves cached tokens or answers 503 with ``Retry-After`` = the start of the next hour.

Forced refreshes may spend only half of it (counted apart on the same item): no caller can exhaust the budget by
forcing refreshes, the other half stays for renewals and misses.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from token_vending.cache import TokenCache

WINDOW_SECONDS = 3600
DEFAULT_BUDGET_FLOOR = 60
"""No provider's default is below this many requests an hour (room for outages of a few scope sets, whose
back-off asks at most 30 times an hour each)."""
DEFAULT_BUDGET_SCOPE_SETS = 12
"""The default budget renews this many scope sets once per documented lifetime (short-lived tokens need more)."""
FORCED_SHARE = 0.5
"""The share of the budget forced refreshes may spend."""


def default_budget(lifetime: int) -> int:
    """Requests an hour a provider whose tokens live ``lifetime`` seconds gets unless configured otherwise:
    ``max(60, ceil(12 x 3600 / lifetime))`` -- 144 for 300 s tokens, 60 for 900 s and longer."""
    return max(DEFAULT_BUDGET_FLOOR, math.ceil(DEFAULT_BUDGET_SCOPE_SETS * WINDOW_SECONDS / max(lifetime, 1)))


class UpstreamBudget:
    def __init__(self, cache: TokenCache, provider: str, per_hour: int) -> None:
        self.cache = cache
        self.provider = provider
        self.per_hour = per_hour

    def limit(self, *, forced: bool) -> int:
        """The most requests of that kind an hour: all of them, or the forced refreshes among them."""
        return max(1, int(self.per_hour * FORCED_SHARE)) if forced else self.per_hour

    def spend(self, *, forced: bool, now: float | None = None) -> int | None:
        """Take one token request from this hour's budget: ``None`` when taken, else the seconds until the next
        hour's budget (the caller answers 503 with that ``Retry-After``, or serves a cached token).

        Raises :class:`~token_vending.cache.CacheUnavailable` when DynamoDB cannot count: the caller decides
        (the vendor asks anyway -- the token is the product, and the lease still bounds the fleet)."""
        if self.per_hour <= 0:
            return None
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        if self.cache.spend_budget(self.provider, window, self.per_hour,
                                   forced_limit=self.limit(forced=True) if forced else None,
                                   purge_at=window + 2 * WINDOW_SECONDS):
            return None
        return max(1, math.ceil(window + WINDOW_SECONDS - now))
