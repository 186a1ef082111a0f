"""Per-token renewal timers: each token is renewed as it reaches its refresh margin, not on a coarse schedule.

Why SQS delay queues: a token should be renewed once per ``lifetime - margin``, the physical limit, and no
caller should ever find it inside its margin. A rate schedule renews up to one interval early (Pyng's 900 s
tokens every 6 to 11 minutes with a 5-minute rate: 1.6 times the requests), and EventBridge Scheduler fires
anything, one-time ``at()`` schedules included, within 60 seconds of its time: for a 300 s token with a 60 s
margin, firing up to a minute early costs 1.33 times the ideal. An SQS message's ``DelaySeconds`` is honoured
to the second (up to 15 minutes), so each new token arms one delayed message -- :class:`Renewal` names the token
by its ``fetched_at`` -- which the provider function receives through its event source mapping ``LEAD_SECONDS``
before the margin; a renewal further away than 15 minutes is re-armed on receipt until it is due.

A renewal that finds another token stored (a caller or another timer replaced it), an idle scope set or no
token at all does nothing: duplicates are harmless, so the scheduled run may re-arm timers it cannot see. A renewal
that fails (provider down, cool-down, budget spent, DynamoDB throttled) is armed again for when the cool-down
lapses, backing off (10, 20, 40 ... 320 s) while the token lasts, rather than left to SQS's fixed redelivery; only
when SQS refuses that message too is the renewal reported failed, so that SQS delivers it again.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools import Logger, Metrics
    from mypy_boto3_sqs import SQSClient

    from token_vending.cache import CachedToken
    from token_vending.freshness import RefreshPolicy

LEAD_SECONDS = 10.0
"""Renew this long before the token enters its margin: SQS delivery, a cold start and the token request fit in
it, so callers never find the token inside its margin (ratio to the ideal: 240/230 for 300 s tokens)..."""
LEAD_SHARE = 0.2
"""... but never more than this share of the token's useful life (``lifetime - margin``): a 30 s token is not
renewed every 5 s."""
MAX_DELAY_SECONDS = 900
"""SQS's longest ``DelaySeconds``."""
RETRY_SECONDS = 10.0
MAX_RETRY_EXPONENT = 5


@dataclass(frozen=True)
class Renewal:
    scope_key: str
    fetched_at: float
    """Which token this renewal is for: another token stored under the key means it was already replaced."""
    due: float
    """Epoch seconds at which to renew."""
    attempt: int = 0
    """Renewals of this token that failed before this one."""

    @classmethod
    def of(cls, token: CachedToken, policy: RefreshPolicy) -> Renewal:
        useful = token.lifetime - policy.margin(token.lifetime)
        due = policy.enters_margin(token) - min(LEAD_SECONDS, LEAD_SHARE * useful)
        return cls(scope_key=token.scope_key, fetched_at=token.fetched_at, due=max(due, token.fetched_at))

    def retry(self, now: float, not_before: float = 0.0) -> Renewal:
        """The next try after this one failed: when the cool-down lapses, and not before the back-off."""
        backoff = RETRY_SECONDS * 2 ** min(self.attempt, MAX_RETRY_EXPONENT)
        return Renewal(self.scope_key, self.fetched_at, max(now + backoff, not_before), self.attempt + 1)

    def names(self, token: CachedToken) -> bool:
        """Whether ``token`` is the one this renewal was armed for (``fetched_at`` is stored to the millisecond)."""
        return abs(token.fetched_at - self.fetched_at) < 0.0015

    def delay(self, now: float) -> int:
        return max(0, min(MAX_DELAY_SECONDS, math.ceil(self.due - now)))

    def body(self) -> str:
        document: dict[str, Any] = {"renew": self.scope_key, "fetched_at": round(self.fetched_at, 3),
                                    "due": round(self.due, 3)}
        if self.attempt:
            document["attempt"] = self.attempt
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def from_body(cls, raw: Any) -> Renewal | None:
        """``None`` for anything that is not a renewal this code wrote (never an exception)."""
        try:
            document = json.loads(raw) if isinstance(raw, (str, bytes)) else None
            if not isinstance(document, dict) or not isinstance(document.get("renew"), str):
                return None
            fetched_at, due = float(document["fetched_at"]), float(document["due"])
            attempt = int(document.get("attempt", 0))
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError):  # nested past the parser
            return None
        if not (math.isfinite(fetched_at) and math.isfinite(due)) or attempt < 0:
            return None
        return cls(scope_key=document["renew"], fetched_at=fetched_at, due=due, attempt=attempt)


class RenewalTimer:
    """Arms renewals on the provider's SQS queue (``RENEWAL_QUEUE_URL``); the client is made on first use."""

    def __init__(self, queue_url: str, client: Callable[[], SQSClient]) -> None:
        self.queue_url = queue_url
        self._factory = client
        self._client: SQSClient | None = None

    def arm(self, renewal: Renewal, now: float | None = None) -> None:
        """Send the renewal with the delay it needs (at most 15 minutes: it is re-armed on receipt until due).

        Raises botocore's errors: the vendor logs and counts them; the scheduled run re-arms what is lost."""
        if self._client is None:
            self._client = self._factory()
        now = time.time() if now is None else now
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=renewal.body(),
                                  DelaySeconds=renewal.delay(now))


def arm(timer: RenewalTimer | None, renewal: Renewal, *, logger: Logger, metrics: Metrics) -> bool:
    """Arm ``renewal`` on the queue; ``False`` without a queue or when SQS refused (logged and counted: the
    scheduled run arms it again)."""
    if timer is None:
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    from token_vending.counting import count

    try:
        timer.arm(renewal)
    except (BotoCoreError, ClientError) as exc:
        count(metrics, "RefreshAheadFailure")
        logger.warning("could not arm the renewal", extra={"scope_key": renewal.scope_key,
                                                           "reason": type(exc).__name__})
        return False
    return True


def is_sqs_event(event: Any) -> bool:
    """Whether ``event`` is a batch from an SQS event source mapping (the renewal queue's)."""
    records = event.get("Records") if isinstance(event, dict) else None
    return isinstance(records, list) and bool(records) and all(
        isinstance(record, dict) and record.get("eventSource") == "aws:sqs" for record in records)
