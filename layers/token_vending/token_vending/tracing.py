"""X-Ray tracing where the time goes: misses, renewals and forced refreshes -- not cache hits.

A hit is a DynamoDB read of a millisecond or two; Powertools' Tracer costs more than that at every cold start
(it imports the X-Ray SDK, in maintenance mode since February 2026, and patches botocore), and callers' cold
starts are mostly hits. So the Tracer is made on the first traced path of an execution environment, which then
records its subsegments (the lease, Secrets Manager, KMS, the token request, the token API's ``lambda:Invoke``)
under the segment Lambda's active tracing opens for each invocation. Hits are still traced by Lambda itself
(``Tracing: Active``: initialization, invocation, overhead), and botocore passes the trace header on to the
provider function (its recursion-detection handler sets ``X-Amzn-Trace-Id`` inside Lambda), so a miss is one
trace from API Gateway to the provider's token endpoint.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aws_lambda_powertools import Tracer

_lock = threading.Lock()
_tracer: Tracer | None = None


def tracer() -> Tracer:
    """This execution environment's Tracer, made (and botocore patched) on first use."""
    global _tracer  # noqa: PLW0603 - one per execution environment, as a module-level Tracer would be
    with _lock:
        if _tracer is None:
            from aws_lambda_powertools import Tracer

            _tracer = Tracer(patch_modules=("botocore",))  # the token request itself uses urllib3
        return _tracer


@contextmanager
def subsegment(name: str, **annotations: str) -> Iterator[Any]:
    """A subsegment of the current invocation's trace (a no-op where tracing is disabled, as outside Lambda)."""
    with tracer().provider.in_subsegment(name) as current:
        for key, value in annotations.items():
            current.put_annotation(key=key, value=value)
        yield current
