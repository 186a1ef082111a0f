"""Cool-downs and back-off after a failed refresh: how long nobody asks the provider again, and what callers hear.

A failed refresh leaves its lease in place as a cool-down record (or, while DynamoDB is down, an entry in one
execution environment): until it lapses, callers get the failure's answer -- or a still-usable token -- at once,
and the provider is not asked again. The wait doubles with every failure in a row. Faults that are not the
provider's (our own lack of time, Secrets Manager down, a bad setting) start no cool-down: retrying them costs
the provider nothing.
"""

from __future__ import annotations

import math
import time
from typing import Any

from token_vending.exceptions import (
    ERRORS_BY_CODE,
    InvalidRequest,
    Misconfigured,
    TokenVendingError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

COOL_DOWN_SECONDS = 10.0
"""After a failed refresh (timeout, 5xx, invalid answer), nobody asks the provider again for this long; it
doubles with every further failure in a row (10, 20, 40, 80 s, then the cap)."""
MAX_OUTAGE_COOL_DOWN_SECONDS = 150.0
"""The longest back-off after provider faults, a longer ``Retry-After`` included: a provider that is back is
asked again within this long, while one that stays down sees at most 30 token requests an hour per scope set
(28 attempts, the first with its retries)."""
REJECTED_COOL_DOWN_SECONDS = 60.0
"""After a rejection: retrying cannot help until a person changes something."""
MAX_COOL_DOWN_SECONDS = 300.0
MIN_ATTEMPT_SECONDS = 1.0
"""A fetch with less time than this left is not started (and is not the provider's fault)."""


def cool_down(error: TokenVendingError, streak: int = 0) -> float | None:
    """Until when nobody asks the provider again after ``error`` (a 503 then says so in its ``Retry-After``);
    ``None`` when the provider was not at fault (our own lack of time, Secrets Manager or KMS down, a bad
    setting): retrying those costs it nothing. ``streak`` failures in a row before this one double the wait each
    time (exponential back-off), up to the caps."""
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


def stored_error(body: dict[str, Any], until: float, provider: str) -> TokenVendingError:
    """The error of a failed refresh, replayed during its cool-down with the time really left."""
    cls = ERRORS_BY_CODE.get(str(body.get("error")), UpstreamUnavailable)
    error = cls.from_body(body, provider)
    if isinstance(error, UpstreamUnavailable):
        error.extra["retry_after"] = max(1, math.ceil(until - time.time()))
    return error


def no_time(provider: str) -> UpstreamTimeout:
    """Our own lack of time: not the provider's fault, so no lease, no cool-down, no failure metric."""
    return UpstreamTimeout("too little time left in this invocation to ask the provider",
                           provider=provider, provider_fault=False)
