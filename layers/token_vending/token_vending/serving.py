"""Which token a request may be served: the decisions every path of the provider function shares.

Why apart: the answer to "may this token be served for this request?" must be the same whether the token comes
from memory, DynamoDB, a refresh another environment finished, a fetch of our own or the degraded store -- a
fresh token is served, a forced refresh discards the one it names (within its rate limit), a token that is
current yet can never keep ``min_ttl`` is an error rather than a fetch per request, and a failed refresh falls
back on the old token while it still meets ``min_ttl`` (stale on error).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from token_vending.counting import count
from token_vending.exceptions import UpstreamInvalidResponse
from token_vending.freshness import RefreshPolicy
from token_vending.request import fingerprint, replaced

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from token_vending.cache import CachedToken
    from token_vending.exceptions import TokenVendingError
    from token_vending.request import TokenRequest
    from token_vending.settings import ProviderSettings


def serves_refused(token: CachedToken, request: TokenRequest, now: float) -> bool:
    """A forced refresh names the refused token, and ``token`` is another one: it already replaced the refused one,
    so it is served as long as it meets ``min_ttl`` -- inside its refresh margin too (its renewal is the one to
    replace it), whether or not the provider is up. The provider is not asked and no budget is spent: the caller's
    401 was for a token that is gone. Shared by the token API's own read and the provider function."""
    return replaced(token.access_token, request) and RefreshPolicy.is_usable(token, request.min_ttl, now)


def discards(token: CachedToken, request: TokenRequest) -> bool:
    """The caller wants ``token`` gone: a forced refresh, unless it names another token (then ``token`` replaced
    that one, and a fetch for it is not a forced refresh)."""
    return request.force_refresh and not replaced(token.access_token, request)


class ServeRules:
    def __init__(self, *, provider: str, settings: ProviderSettings, policy: RefreshPolicy, logger: Logger,
                 metrics: Metrics) -> None:
        self.provider = provider
        self.settings = settings
        self.policy = policy
        self.logger = logger
        self.metrics = metrics

    def acceptable(self, token: CachedToken, request: TokenRequest, now: float) -> bool:
        """Fresh for this request. A forced refresh discards the token unless it was itself fetched within
        the force-refresh interval: a burst of forced refreshes (every caller that got a 401) then makes
        one upstream call, not one each."""
        if self.forced(token, request, now):
            return False
        return self.policy.is_fresh(token, request.min_ttl, now) or serves_refused(token, request, now)

    def forced(self, token: CachedToken, request: TokenRequest, now: float) -> bool:
        """A forced refresh discards ``token``: unless it was fetched within the force-refresh interval, or it
        is not the token the caller names as refused (it already replaced that one)."""
        return discards(token, request) and now - token.fetched_at >= self.settings.cache.force_refresh_interval

    def acceptable_or_refuse(self, token: CachedToken, request: TokenRequest) -> bool:
        """Whether ``token`` may be served for ``request``; raises when it is current yet still cannot keep
        ``min_ttl``: the provider grants shorter tokens than its documented lifetime, and another fetch would
        bring the same, once per request. So the answer is an error without one -- the same answer a cold
        cache gets after its one fetch."""
        now = time.time()
        if self.acceptable(token, request, now):
            return True
        if self.forced(token, request, now):
            return False  # the caller wants a new token anyway
        if token.remaining(now) > self.policy.margin(token.lifetime) and self.policy.cannot_satisfy(
                token, request.min_ttl):
            raise self.too_short(token, request)
        return False

    def too_short(self, token: CachedToken, request: TokenRequest) -> UpstreamInvalidResponse:
        return UpstreamInvalidResponse(
            f"the provider's tokens live {token.lifetime} s, too short for min_ttl {request.min_ttl} (documented: "
            f"{self.settings.lifetime} s)", provider=self.provider)

    def serve_new(self, token: CachedToken, request: TokenRequest) -> CachedToken:
        """A token just fetched is served only if it keeps ``min_ttl``; it is stored for others either way."""
        if token.remaining(time.time()) < request.min_ttl or self.policy.cannot_satisfy(token, request.min_ttl):
            raise self.too_short(token, request)
        return token

    def serve_stale_or_raise(self, request: TokenRequest, stale: CachedToken | None,
                             error: TokenVendingError) -> CachedToken:
        if (stale is not None and not discards(stale, request)
                and self.policy.is_usable(stale, request.min_ttl, time.time())):
            count(self.metrics, "StaleServed")
            self.logger.warning("refresh failed; serving the cached token",
                                extra={"error": error.code, "token": fingerprint(stale.access_token),
                                       "expires_at": stale.expires_at})
            return stale
        raise error

    @staticmethod
    def newer(token: CachedToken, than: CachedToken | None) -> bool:
        return than is None or token.fetched_at > than.fetched_at
