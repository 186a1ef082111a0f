"""Which scope sets are in use: refresh ahead renews those, and leaves the others to expire.

A cache hit must not cost a write, so use is marked on the token item only when the mark it carries is older
than a quarter of ``REFRESH_AHEAD_IDLE_HOURS``; the execution environment then keeps the new mark on its own
copy. Each environment writes at most once per quarter of the idle period (and a token fetched for a caller
is stored already marked), while a scope set in use always carries a mark younger than the idle period.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from token_vending.cache import CachedToken, TokenCache

MARK_EVERY = 0.25
"""Share of the idle period after which a use is marked again."""


def last_use(token: CachedToken) -> float:
    """When the scope set was last used; a token item written before use was recorded counts from its fetch."""
    return token.used_at or token.fetched_at


MAX_REMEMBERED = 1000
"""Scope sets whose last mark this environment remembers (more are forgotten all at once: at worst a write more)."""


class UsageMarks:
    def __init__(self, cache: TokenCache, idle_seconds: float) -> None:
        self.cache = cache
        self.idle_seconds = idle_seconds
        self._attempted: dict[tuple[str, str], float] = {}
        """(provider, scope key) -> when this environment last tried to mark it, written or not."""

    def in_use(self, token: CachedToken, now: float) -> bool:
        return last_use(token) >= now - self.idle_seconds

    def note(self, token: CachedToken, now: float) -> CachedToken:
        """``token`` was just served to a caller: mark it if its mark is old, and return the copy to keep. One
        attempt per quarter idle period per scope set in this environment, written or not (denied, throttled, or
        a newer mark there): a failing write is not retried on every hit."""
        every = self.idle_seconds * MARK_EVERY
        key = (token.provider, token.scope_key)
        if now - last_use(token) < every or now - self._attempted.get(key, float("-inf")) < every:
            return token
        if len(self._attempted) >= MAX_REMEMBERED:
            self._attempted.clear()
        self._attempted[key] = now
        self.cache.record_use(token.provider, token.scope_key, now)
        return replace(token, used_at=now)
