"""botocore settings for the functions' AWS clients.

Defaults (60 s timeouts, legacy retries) would let one slow DynamoDB call eat a caller's whole
budget; the cache is an optimisation with fallbacks, so it gets short timeouts and standard retries.
"""

from __future__ import annotations

from botocore.config import Config

# ``total_max_attempts`` counts every attempt. botocore's client-config ``max_attempts`` counts *retries* (one
# attempt more than it says) and is rewritten in place when a client is made: never used here.

DYNAMODB_CONFIG = Config(connect_timeout=2, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 3})
API_DYNAMODB_CONFIG = Config(connect_timeout=0.5, read_timeout=0.5,
                             retries={"mode": "standard", "total_max_attempts": 1})
"""The token API only reads, and a failed read is not fatal (it delegates to the provider function): no retry,
whose back-off (up to 1 s, more with ``x-amz-retry-after``) would eat into API Gateway's 29 s."""
SECRETS_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 3})
LAMBDA_CONFIG = Config(connect_timeout=1, read_timeout=24, retries={"mode": "standard", "total_max_attempts": 1})
"""A provider function finishes its work ``RESPONSE_RESERVE_SECONDS`` (2 s) before its 25 s timeout; a read
timeout must not re-invoke it. Worst case of the token API: the DynamoDB read (0.5 + 0.5 s, one attempt) plus
this invoke (1 + 24 s) = 26 s, inside its own 28 s timeout (a read timeout is answered as upstream_timeout)."""
KMS_CONFIG = Config(connect_timeout=1, read_timeout=3, retries={"mode": "standard", "total_max_attempts": 2})
"""Signing a client assertion is one small call; it must leave the fetch most of its lease."""
SQS_CONFIG = Config(connect_timeout=0.5, read_timeout=1, retries={"mode": "standard", "total_max_attempts": 1})
"""Arming a renewal is one small send after the token is stored, while the caller waits: one attempt of at most
1.5 s, started only with ``ARM_RESERVE_SECONDS`` left; a lost one is re-armed by the scheduled run."""
