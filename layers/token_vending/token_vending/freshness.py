"""When a cached token may be served, and when it must be replaced.

Shared by the provider functions (which refresh) and the token API function (which only answers
hits), so both judge a token the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from token_vending.cache import CachedToken


SHORT_LIFETIME_SLACK = 5
"""Seconds a new token loses between being issued and being served (request, store, answer)."""


@dataclass(frozen=True)
class RefreshPolicy:
    margin_seconds: float
    margin_ratio: float

    def margin(self, lifetime: float) -> float:
        """Refresh ahead by max(margin_seconds, ratio x lifetime), but never more than half the
        lifetime: a provider handing out very short tokens must not be asked for one per call."""
        return min(max(self.margin_seconds, self.margin_ratio * lifetime), lifetime / 2)

    def enters_margin(self, token: CachedToken) -> float:
        """When ``token`` enters its refresh margin: from then on it is renewed (epoch seconds)."""
        return token.expires_at - self.margin(token.lifetime)

    def min_ttl_limit(self, lifetime: int) -> int:
        """The largest ``min_ttl`` a token of ``lifetime`` seconds can keep outside its refresh margin.
        Applied to the *documented* lifetime before anything else, so it never depends on cache state."""
        return max(0, int(lifetime - self.margin(lifetime)))

    def cannot_satisfy(self, token: CachedToken, min_ttl: float) -> bool:
        """Even freshly issued, a token like this one would not keep ``min_ttl``: the provider grants shorter
        tokens than documented. Fetching again would only hammer it (one new token per request)."""
        return token.lifetime < min_ttl + SHORT_LIFETIME_SLACK

    def is_fresh(self, token: CachedToken, min_ttl: float, now: float) -> bool:
        """Servable without a refresh: outside the refresh margin and valid for ``min_ttl``."""
        remaining = token.remaining(now)
        return remaining > self.margin(token.lifetime) and remaining >= min_ttl and remaining > 0

    @staticmethod
    def is_usable(token: CachedToken, min_ttl: float, now: float) -> bool:
        """Still acceptable to a caller if no better token can be had (stale on error)."""
        remaining = token.remaining(now)
        return remaining > 0 and remaining >= min_ttl
