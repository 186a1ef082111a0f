"""The provider's hourly budget of token requests, shared by the whole deployment.

Whatever goes wrong elsewhere -- a bug, callers forcing refreshes or asking for long ``min_ttl`` in a loop, many
scope sets failing at once -- the service starts no more token fetches in a clock hour than the provider's
budget (a fetch's own retries after a 5xx or 429, at most ``UpstreamRetries``, are not counted apart; Autopay
cuts off clients that over-request). One counter item per provider and clock hour in the provider's own
partition (``budget#<hour>``), spent with one conditional ``UpdateItem`` before each fetch; past it the service
serves cached tokens or answers 503 with ``Retry-After`` = the start of the next hour.

Three kinds of fetch, so that callers cannot starve renewals: a *renewal* may spend the whole budget; a caller's
*miss* (no usable token) only ``CALLER_SHARE`` of it; a *forced* fetch -- ``force_refresh``, or a ``min_ttl`` the
still-fresh token cannot keep -- also counts against ``FORCED_SHARE``, counted apart on the same item.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from token_vending.cache import TokenCache

Kind = Literal["renewal", "miss", "forced"]
WINDOW_SECONDS = 3600
DEFAULT_BUDGET_FLOOR = 60
"""No provider's default is below this many requests an hour (room for outages of a few scope sets, whose
back-off asks at most 30 times an hour each)."""
DEFAULT_BUDGET_SCOPE_SETS = 12
"""The default budget renews this many scope sets once per documented lifetime (short-lived tokens need more)."""
CALLER_SHARE = 0.75
"""The share of the budget callers' misses and forced fetches may spend: the rest is kept for renewals."""
FORCED_SHARE = 0.5
"""The share of the budget forced fetches may spend."""


def default_budget(lifetime: int) -> int:
    """Requests an hour a provider whose tokens live ``lifetime`` seconds gets unless configured otherwise:
    ``max(60, ceil(12 x 3600 / lifetime))`` -- 144 for 300 s tokens, 60 for 900 s and longer."""
    return max(DEFAULT_BUDGET_FLOOR, math.ceil(DEFAULT_BUDGET_SCOPE_SETS * WINDOW_SECONDS / max(lifetime, 1)))


class UpstreamBudget:
    def __init__(self, cache: TokenCache, provider: str, per_hour: int) -> None:
        self.cache = cache
        self.provider = provider
        self.per_hour = per_hour

    def limit(self, kind: Kind) -> int:
        """The most fetches of that kind an hour (for ``forced``: forced fetches among them)."""
        if kind == "renewal":
            return self.per_hour
        share = FORCED_SHARE if kind == "forced" else CALLER_SHARE
        return max(1, int(self.per_hour * share))

    def spend(self, kind: Kind, now: float | None = None) -> int | None:
        """Take one fetch of ``kind`` from this hour's budget: ``None`` when taken, else the seconds until the next
        hour's budget (the caller answers 503 with that ``Retry-After``, or serves a cached token).

        Raises :class:`~token_vending.cache.CacheUnavailable` when DynamoDB cannot count: the caller decides
        (the vendor fetches anyway -- the token is the product, and the lease still bounds the fleet)."""
        if self.per_hour <= 0:
            return None
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        total = self.per_hour if kind == "renewal" else self.limit("miss")
        forced = self.limit("forced") if kind == "forced" else None
        if self.cache.spend_budget(self.provider, window, total, forced_limit=forced,
                                   purge_at=window + 2 * WINDOW_SECONDS):
            return None
        return max(1, math.ceil(window + WINDOW_SECONDS - now))
